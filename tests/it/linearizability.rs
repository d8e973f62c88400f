//! Robustness of real netsy clusters under faults, judged the way etcd's robustness
//! suite judges etcd: concurrent clients issue Kubernetes-shaped and plain etcd traffic
//! (`traffic`), watches record everything they are given (`observe`), and a nemesis
//! injects faults meanwhile (by default: kills leaders, cuts a leader or a follower off
//! from the others, restarts followers with wiped disks). Then:
//!
//! - the registers' operations must have a linearization (`checker`), so no
//!   acknowledged write is lost and no read is stale;
//! - a reference history is rebuilt from an all-keys watch from revision 1 that runs
//!   through the whole run (`history`, which explains why it can be trusted: it must
//!   be gap-free, self-consistent, and agree with every acknowledged write and every
//!   read, list, count and historical read, which are each checked against it at their
//!   revision); revisions must respect real time;
//! - every other watch must keep etcd's watch guarantees against it (`watches`);
//! - leases must end whole (one revision) and never before their TTL has passed since
//!   their last acknowledged keep-alive;
//! - at the end every member must deliver the history again (a watch per member from
//!   the last compaction) and agree on HashKV at one revision.
//!
//! Compaction is kube-apiserver's (`traffic::compactor`), bounded by what the reference
//! watch has already been given, so the reference never has a hole; the watches under
//! test do get their revisions compacted away when they resume from old ones, and must
//! be told so truthfully.
//!
//! Every choice (operations, keys, values, faults, their targets and durations, watch
//! restarts) comes from one seed, printed at the start; rerun with
//! `NETSY_LINZ_SEED=<seed>`. Other nemeses plug in through `run_with`.

mod checker;
mod history;
mod observe;
mod stale_leader;
mod traffic;
mod watches;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::Cluster;
use checker::{Op, Outcome, Record, Then};
use etcd_client::{Client, ConnectOptions};
use history::{Compactions, History, KeyRange, Timed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use traffic::{ClientLoop, Progress, Recorded, OP_TIMEOUT, REGISTERS};
use watches::{Spec, WatchLog};

/// Injects faults into the cluster until the `Instant`, driven by the seed, leaving every
/// member running and connected; returns a description of each fault (its first word
/// is its kind, as counted in `Report::faults`).
pub type Nemesis = Box<dyn FnOnce(&mut Cluster, u64, Instant) -> Vec<String> + Send>;

/// What a cluster for `run_with` needs in its cluster file: progress notifications
/// every 500 ms (`Cluster::start(n, CLUSTER_CONFIG)`).
pub const CLUSTER_CONFIG: &str = r#""watch": { "progress_notify_interval": "500ms" }"#;

const CLIENTS: usize = 6;
const LEASE_CLIENTS: usize = 2;
const COMPACTORS: usize = 2;
/// A run is judged on at least this much history.
const MIN_WRITES: usize = 100;
const MIN_READS: usize = 100;

/// What a run did and checked.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub seed: u64,
    pub members: usize,
    /// Requests issued (writes, reads, lists, lease calls, compactions).
    pub operations: usize,
    pub acked_writes: usize,
    /// Reads checked (pages, counts, historical reads and their "compacted" answers).
    pub reads: usize,
    /// Writes whose outcome is unknown.
    pub unknown: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, usize>,
    pub watch_events: usize,
    /// Watch sessions after the first of each watch.
    pub watch_restarts: usize,
    pub progress_notifications: usize,
    /// Compactions reported to watches (each checked to be truthful).
    pub compactions_reported: usize,
    pub compactions: usize,
    /// Leases whose end was in the history and checked.
    pub leases_checked: usize,
    pub lists_checked: usize,
    /// Requests that failed, by error.
    pub errors: BTreeMap<String, usize>,
}

impl Report {
    /// The one-line summary a run prints.
    pub fn summary(&self, violations: usize) -> String {
        format!(
            "robustness: seed={} members={} ops={} acked_writes={} watch_events={} faults={} violations={violations}",
            self.seed,
            self.members,
            self.operations,
            self.acked_writes,
            self.watch_events,
            self.faults.values().sum::<usize>()
        )
    }
}

fn seed() -> u64 {
    let seed = std::env::var("NETSY_LINZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (rerun with NETSY_LINZ_SEED={seed})");
    seed
}

/// A client to `endpoint` (`None` if it cannot connect in time).
async fn connect(endpoint: &str) -> Option<Client> {
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
    tokio::time::timeout(OP_TIMEOUT, Client::connect([endpoint.to_string()], Some(options)))
        .await
        .ok()?
        .ok()
}

/// Retries `f` against `endpoint` until it succeeds or `within` passes.
async fn retry<T, F, Fut>(endpoint: &str, within: Duration, mut f: F) -> Option<T>
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(c) = connect(endpoint).await {
            if let Ok(Ok(v)) = tokio::time::timeout(OP_TIMEOUT, f(c)).await {
                return Some(v);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// The watches: the reference (all keys, from revision 1), then the three under test.
fn watch_plans(n: usize) -> Vec<observe::Plan> {
    let plan = |name: &str, range: KeyRange, prev_kv, progress_notify, home, restarts, rewinds| observe::Plan {
        spec: Spec {
            name: name.into(),
            range,
            prev_kv,
        },
        progress_notify,
        home: home % n,
        first: 1,
        restarts,
        rewinds,
    };
    vec![
        plan("recorder", KeyRange::all(), false, true, n - 1, None, false),
        plan("prefix", KeyRange::prefix("lin/"), true, true, 0, None, false),
        plan("objects", KeyRange::prefix(traffic::OBJ_PREFIX), false, false, 1, None, false),
        plan("restarts", KeyRange::prefix("lin/reg/"), true, false, 2, Some((300, 2500)), true),
    ]
}

/// A run of `length` with `nemesis` against a fresh `cluster` (started with
/// `CLUSTER_CONFIG`), then the checks. Panics with the seed and every violation found.
pub async fn run_with(cluster: Cluster, seed: u64, length: Duration, nemesis: Nemesis) -> Report {
    let n = cluster.nodes.len();
    let endpoints = cluster.endpoints();
    let cluster = Arc::new(Mutex::new(cluster));
    let start = Instant::now();
    // The times in the report are seconds since this moment; the members' logs are in
    // wall-clock time.
    println!("robustness run: second 0 is {}", crate::common::wall_clock());
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let compactions = Arc::new(Mutex::new(Compactions::default()));

    let plans = watch_plans(n);
    let shared: Vec<Arc<observe::Shared>> = plans.iter().map(|p| observe::Shared::new(p.first)).collect();
    let recorder = shared[0].clone();
    let watchers: Vec<_> = plans
        .into_iter()
        .zip(&shared)
        .map(|(plan, s)| tokio::spawn(observe::run(plan, seed, endpoints.clone(), start, s.clone())))
        .collect();

    let mut traffic = Vec::new();
    for id in 0..CLIENTS {
        let client = ClientLoop {
            id,
            seed,
            endpoints: endpoints.clone(),
            start,
            stop: stop.clone(),
            progress: progress.clone(),
        };
        traffic.push(tokio::spawn(client.run()));
    }
    for id in 0..LEASE_CLIENTS {
        traffic.push(tokio::spawn(traffic::lease_loop(id, seed, endpoints.clone(), start, stop.clone())));
    }
    for id in 0..COMPACTORS {
        traffic.push(tokio::spawn(traffic::compactor(
            id,
            seed,
            endpoints.clone(),
            start,
            stop.clone(),
            recorder.clone(),
            compactions.clone(),
        )));
    }
    let faults = {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = cluster.lock().expect("cluster");
            nemesis(&mut c, seed, start + length)
        })
        .await
        .expect("nemesis")
    };
    // Some operations with everyone healthy again, and on until the history is long enough
    // to judge (a loaded machine makes less progress during the faults), within a bound.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let healthy_until = Instant::now() + Duration::from_secs(60);
    while (progress.writes.load(Ordering::Relaxed) < MIN_WRITES || progress.reads.load(Ordering::Relaxed) < MIN_READS)
        && Instant::now() < healthy_until
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut rec = Recorded::default();
    for t in traffic {
        rec.merge(t.await.expect("traffic"));
    }
    let mut violations: Vec<String> = Vec::new();

    // Final reads of every register through every member: each must see the last write.
    for (i, endpoint) in endpoints.iter().enumerate() {
        for k in 0..REGISTERS {
            let key = traffic::register(k);
            let call = start.elapsed().as_nanos() as u64;
            let got = retry(endpoint, Duration::from_secs(60), |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await;
            let ret = start.elapsed().as_nanos() as u64;
            let Some(resp) = got else {
                violations.push(format!("netsy-{i} did not answer a read of {key} within 60 s after the faults"));
                continue;
            };
            rec.reads.push(history::Read {
                call,
                ret,
                header_rev: resp.header().map_or(0, |h| h.revision()),
                at_rev: 0,
                range: KeyRange::key(&key),
                limit: 0,
                keys_only: false,
                count_only: false,
                kvs: resp.kvs().iter().map(history::Kv::from_client).collect(),
                count: resp.count(),
                more: resp.more(),
            });
            rec.register.push(Record {
                client: CLIENTS + i,
                key,
                op: Op::Get,
                outcome: Outcome::Get(resp.kvs().first().map(|kv| checker::Seen {
                    value: String::from_utf8_lossy(kv.value()).into_owned(),
                    mod_rev: kv.mod_revision(),
                })),
                call,
                ret: Some(ret),
            });
        }
    }

    // The last revision every watch must get to: a write after everything else.
    let final_rev = retry(&endpoints[0], Duration::from_secs(60), |mut c| async move {
        c.put("lin/final", "end", None).await
    })
    .await
    .map(|r| r.header().map_or(0, |h| h.revision()))
    .expect("a write after the run");
    for s in &shared[1..] {
        s.stop_at.store(final_rev, Ordering::Release);
    }
    let mut logs: Vec<WatchLog> = Vec::new();
    let mut watchers = watchers.into_iter();
    let recorder_task = watchers.next().expect("the recorder");
    for w in watchers {
        logs.push(w.await.expect("watch"));
    }
    // The recorder goes on until it has everything any watch was given.
    let delivered_max = logs
        .iter()
        .flat_map(|l| &l.sessions)
        .flat_map(|s| &s.responses)
        .filter_map(|r| match r {
            watches::Response::Events { events, .. } => events.iter().map(|e| e.rev()).max(),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    recorder.stop_at.store(final_rev.max(delivered_max), Ordering::Release);
    let recorder_log = recorder_task.await.expect("recorder");
    for (log, s) in std::iter::once(&recorder_log).chain(&logs).zip(&shared) {
        if s.covered() < final_rev {
            violations.push(format!(
                "watch {:?} got to revision {} only, not {final_rev}, within 30 s on a healthy cluster",
                log.spec.name,
                s.covered()
            ));
        }
    }
    let covered = recorder.covered();

    // Every member delivers the history again, from the last compaction asked for.
    let compactions = compactions.lock().expect("compactions").clone();
    let from = compactions.max_requested_before(u64::MAX).max(1);
    let finals: Vec<_> = (0..n)
        .map(|i| {
            let plan = observe::Plan {
                spec: Spec {
                    name: format!("final-netsy-{i}"),
                    range: KeyRange::all(),
                    prev_kv: true,
                },
                progress_notify: false,
                home: i,
                first: from,
                restarts: None,
                rewinds: false,
            };
            let s = observe::Shared::new(from);
            s.stop_at.store(covered, Ordering::Release);
            tokio::spawn(observe::run(plan, seed, endpoints.clone(), start, s))
        })
        .collect();
    let mut final_logs = Vec::new();
    for f in finals {
        final_logs.push(f.await.expect("final watch"));
    }

    // Every member agrees on HashKV at the final revision.
    let mut hashes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        hashes.clear();
        for endpoint in &endpoints {
            let h = retry(endpoint, Duration::from_secs(10), |mut c| async move { c.hash_kv(final_rev).await }).await;
            hashes.push(h.map(|h| (h.hash(), h.compact_version())));
        }
        let compacts: Vec<_> = hashes.iter().map(|h| h.map(|h| h.1)).collect();
        if compacts.iter().all(|c| c.is_some() && *c == compacts[0]) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if hashes.iter().any(|h| h.is_none() || *h != hashes[0]) {
        violations.push(format!(
            "members disagree on HashKV at revision {final_rev}: (hash, compact revision) by member {hashes:?}"
        ));
    }

    // The checks.
    let events: Vec<history::Event> = recorder_log
        .sessions
        .iter()
        .flat_map(|s| &s.responses)
        .flat_map(|r| match r {
            watches::Response::Events { events, .. } => events.clone(),
            _ => Vec::new(),
        })
        .collect();
    let history = match History::build(events, covered) {
        Ok(h) => h,
        Err(e) => {
            violations.push(e);
            History::default()
        }
    };
    let mut report = Report {
        seed,
        members: n,
        operations: rec.ops + endpoints.len() * REGISTERS + 1,
        acked_writes: rec.writes.len(),
        reads: rec.reads.len() + rec.compacted_reads.len(),
        unknown: rec.unknown,
        errors: rec.errors.clone(),
        compactions: compactions.0.len(),
        ..Default::default()
    };
    for f in &faults {
        let kind = f.split([' ', '(']).next().unwrap_or("?").to_string();
        *report.faults.entry(kind).or_default() += 1;
    }
    if history.covered > 0 {
        check_all(
            &history,
            &compactions,
            &rec,
            &recorder_log,
            &logs,
            &final_logs,
            &mut report,
            &mut violations,
        );
    }

    println!(
        "{n} members, faults: {faults:?}\n{} operations: {} acknowledged writes, {} reads ({} answered \"compacted\"), {} unknown; {} lists, {} of {} leases ended, {} compactions\nwatches: {} events, {} restarts, {} progress notifications, {} compactions reported\nerrors: {:#?}",
        report.operations,
        report.acked_writes,
        report.reads,
        rec.compacted_reads.len(),
        report.unknown,
        report.lists_checked,
        report.leases_checked,
        rec.leases.len(),
        report.compactions,
        report.watch_events,
        report.watch_restarts,
        report.progress_notifications,
        report.compactions_reported,
        report.errors
    );
    println!("{}", report.summary(violations.len()));
    if faults.len() < 2 {
        violations.push(format!("the nemesis ran too few faults to judge: {faults:?}"));
    }
    if report.acked_writes < MIN_WRITES || report.reads < MIN_READS {
        violations.push(format!(
            "too little progress to judge: {} writes, {} reads",
            report.acked_writes, report.reads
        ));
    }
    if !violations.is_empty() {
        // The members' logs first and the verdict last, so that the end of the output
        // (all a CI summary may show) says what failed and how to replay it.
        eprintln!("{}", cluster.lock().expect("cluster").logs());
        panic!(
            "seed {seed}: {} violation(s) (replay with NETSY_LINZ_SEED={seed}):\n{}\nfaults: {faults:?}",
            violations.len(),
            violations.join("\n")
        );
    }
    report
}

/// Every check of the recorded run against the history; the first failure of each kind
/// goes to `violations`.
#[allow(clippy::too_many_arguments)]
fn check_all(
    h: &History,
    compactions: &Compactions,
    rec: &Recorded,
    recorder: &WatchLog,
    logs: &[WatchLog],
    finals: &[WatchLog],
    report: &mut Report,
    violations: &mut Vec<String>,
) {
    let mut first = |what: &str, r: Result<(), String>| {
        if let Err(e) = r {
            violations.push(format!("{what}: {e}"));
            false
        } else {
            true
        }
    };
    // Watches, the recorder included (it must at least be a well-formed watch).
    let mut restarts = 0;
    let mut events = 0;
    let mut progress = 0;
    let mut reported = 0;
    for log in std::iter::once(recorder).chain(logs).chain(finals) {
        match watches::validate(h, compactions, log) {
            Ok(v) => {
                events += v.events;
                progress += v.progress;
                reported += v.compactions_reported;
            }
            Err(v) => {
                first("watch", Err(v.to_string()));
            }
        }
        restarts += log.sessions.len().saturating_sub(1);
    }
    report.watch_events = events;
    report.watch_restarts = restarts;
    report.progress_notifications = progress;
    report.compactions_reported = reported;

    first("acknowledged write", rec.writes.iter().try_for_each(|w| history::check_write(h, w)));
    first("read", rec.reads.iter().try_for_each(|r| history::check_read(h, r)));
    first(
        "compacted read",
        rec.compacted_reads
            .iter()
            .try_for_each(|(ret, at)| history::check_compacted_read(compactions, *at, *ret)),
    );
    if first("list", rec.lists.iter().try_for_each(|l| history::check_list(h, l))) {
        report.lists_checked = rec.lists.len();
    }
    let mut timed: Vec<Timed> = rec
        .reads
        .iter()
        .map(|r| Timed {
            call: r.call,
            ret: r.ret,
            rev: r.header_rev,
            write: false,
        })
        .collect();
    timed.extend(rec.writes.iter().map(|w| Timed {
        call: w.call,
        ret: w.ret,
        rev: w.rev,
        write: w.changed(),
    }));
    first("real time", history::check_real_time(&timed));

    // Leases: when each revision was first delivered, by any watch.
    let mut seen: BTreeMap<i64, u64> = BTreeMap::new();
    for log in std::iter::once(recorder).chain(logs) {
        for r in log.sessions.iter().flat_map(|s| &s.responses) {
            if let watches::Response::Events { at, events, .. } = r {
                for e in events {
                    let t = seen.entry(e.rev()).or_insert(*at);
                    *t = (*t).min(*at);
                }
            }
        }
    }
    let mut leases = 0;
    let lease_check = rec.leases.iter().try_for_each(|l| {
        if history::check_lease(h, l, &|rev| seen.get(&rev).copied())? {
            leases += 1;
        }
        Ok(())
    });
    first("lease", lease_check);
    report.leases_checked = leases;

    // The registers, with each write of unknown outcome placed at the revision the
    // history has it at (or left out, if the history has no such write).
    let mut register = rec.register.clone();
    for r in &mut register {
        if r.outcome != Outcome::Unknown {
            continue;
        }
        match &mut r.op {
            Op::Put { value, rev }
            | Op::Txn {
                then: Then::Put { value, rev },
                ..
            } => *rev = h.put_revision(&r.key, value),
            _ => {}
        }
    }
    if let Err(v) = checker::check(&register) {
        violations.push(format!("linearizability: {v}"));
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillLeader,
    IsolateLeader,
    IsolateFollower,
    WipeFollower,
}

/// Injects seeded faults until `until`, each held for a while and then repaired; leaves
/// every member running and connected. Returns what it did.
fn nemesis(cluster: &mut Cluster, seed: u64, until: Instant) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = cluster.nodes.len();
    let mut done = Vec::new();
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1200)));
        let fault = [Fault::KillLeader, Fault::IsolateLeader, Fault::IsolateFollower, Fault::WipeFollower][rng.random_range(0..4)];
        let hold = Duration::from_millis(rng.random_range(1000..3000));
        let leader = cluster.wait_leader();
        let follower = (leader + 1 + rng.random_range(0..n - 1)) % n;
        done.push(format!("{fault:?} (leader netsy-{leader}, follower netsy-{follower}, {hold:?})"));
        match fault {
            Fault::KillLeader => {
                cluster.nodes[leader].kill9();
                std::thread::sleep(hold);
                cluster.nodes[leader].spawn();
            }
            Fault::IsolateLeader => {
                cluster.net.isolate(leader, n);
                std::thread::sleep(hold);
                cluster.net.heal();
            }
            Fault::IsolateFollower => {
                cluster.net.isolate(follower, n);
                std::thread::sleep(hold);
                cluster.net.heal();
            }
            Fault::WipeFollower => {
                cluster.nodes[follower].kill9();
                cluster.nodes[follower].wipe();
                std::thread::sleep(hold);
                cluster.nodes[follower].spawn();
            }
        }
        cluster.wait_members(n);
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_stay_linearizable_under_kills_partitions_and_wiped_disks() {
    let seed = seed();
    run_with(Cluster::start(3, CLUSTER_CONFIG), seed, Duration::from_secs(20), Box::new(nemesis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_members_on_s3_stay_linearizable_under_kills_partitions_and_wiped_disks() {
    let seed = seed();
    run_with(
        Cluster::start_s3(5, CLUSTER_CONFIG),
        seed,
        Duration::from_secs(20),
        Box::new(nemesis),
    )
    .await;
}
