//! Chaos: the linearizability traffic and checks (`linearizability::run_with`) against a
//! cluster on moto's S3 while a seeded nemesis combines many kinds of faults, each held
//! for a random time and then repaired: kill -9 of the leader or a follower, SIGTERM
//! hand-over of the leader, symmetric and one-way partitions, a follower restarted with an
//! empty disk, every member killed and restarted (with its disk, or, in `object-storage`
//! durability, with every disk empty so the cluster comes back from object storage),
//! object-store outages, slowness and lost responses, moto itself restarted (with its
//! objects: `Moto::restart_keeping`), a member's disk filled up, a member's fsync made
//! slow or failing, and a member's wall clock stepped by minutes.
//!
//! How the faults are made:
//! - every member's S3 endpoint is a proxy in front of moto (`common::s3proxy`);
//! - the last member's data directory is a small tmpfs (`common::tmpfs`; needs root)
//!   that a filler file runs out of space;
//! - every member runs under libfaketime (Debian package `faketime`) with its own
//!   `FAKETIME_TIMESTAMP_FILE` and `FAKETIME_DONT_FAKE_MONOTONIC=1`, so a step moves only
//!   its wall clock. A lease granted just before a step must not expire early;
//! - every member also preloads `netsy-fsync-fault` (`common::fsync_fault`), whose control
//!   file makes its fsync and fdatasync calls slow, or fail with EIO without syncing.
//!
//! Beyond the history check, the nemesis checks that writes acknowledged by the member
//! whose disk was full are kept, that leases expire neither early nor never, that a
//! member left without disk space or whose fsync failed stops or keeps serving (and serves
//! again once restarted), and that no member panicked.
//!
//! `three_members_on_s3_stay_linearizable_under_mixed_faults` runs in `make test`. The
//! long runs are ignored tests for `make chaos` (`SEED=`, `DURATION=`, `MEMBERS=`,
//! `DURABILITY=`), configured by `NETSY_CHAOS_SEED` and `NETSY_CHAOS_DURATION`. The
//! members' logs are kept in `NETSY_CHAOS_LOGS` (`make chaos`: target/chaos-logs), else in
//! target/tmp/chaos-logs.
//! The same seed gives the same fault sequence (and the same client operations).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::common::fsync_fault::{self, FsyncFault};
use crate::common::moto::{self, Moto};
use crate::common::s3proxy::{Mode, S3Proxy};
use crate::common::tmpfs::Tmpfs;
use crate::common::{etcdctl, wait_until, wall_clock, Cluster};
use crate::linearizability::run_with;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillLeader,
    KillFollower,
    SigtermLeader,
    IsolateLeader,
    IsolateFollower,
    OneWay,
    WipeFollower,
    FullRestart,
    FullWipe,
    S3Outage,
    S3Slow,
    S3LostResponses,
    MotoRestart,
    DiskFull,
    SlowFsync,
    FsyncError,
    ClockStep,
}

use Fault::*;

/// Every fault, for the long runs (`FullWipe` only in `object-storage` durability).
const ALL: [Fault; 17] = [
    KillLeader,
    KillFollower,
    SigtermLeader,
    IsolateLeader,
    IsolateFollower,
    OneWay,
    WipeFollower,
    FullRestart,
    FullWipe,
    S3Outage,
    S3Slow,
    S3LostResponses,
    MotoRestart,
    DiskFull,
    SlowFsync,
    FsyncError,
    ClockStep,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    Quorum,
    ObjectStorage,
}

impl Durability {
    fn name(self) -> &'static str {
        match self {
            Durability::Quorum => "quorum",
            Durability::ObjectStorage => "object-storage",
        }
    }
}

/// What a run does.
struct Plan {
    members: usize,
    durability: Durability,
    /// Faults injected once each first, in a seeded order (even past the deadline).
    cover: Vec<Fault>,
    /// Then faults drawn from here until the deadline.
    pool: Vec<Fault>,
    /// How long a fault is held, in milliseconds.
    hold_ms: Range<u64>,
    /// The pause before each fault, in milliseconds.
    pause_ms: Range<u64>,
}

/// The data directory of the member on a tmpfs is this large.
const DISK_MIB: u64 = 256;
/// Leases granted around clock steps live this much longer than the step.
const LEASE_EXTRA: Duration = Duration::from_secs(4);
/// A lease must be gone this long after its TTL (leader changes restart its TTL).
const LEASE_GRACE: Duration = Duration::from_secs(30);
const BUCKET: &str = "netsy";

/// What the nemesis saw, for the summary and the checks at the end.
#[derive(Default)]
struct Report {
    counts: BTreeMap<Fault, usize>,
    /// Members that exited by themselves (and were restarted, as a supervisor would).
    exits: Vec<String>,
    /// Writes to the member whose disk was full: acknowledged keys, and the errors.
    disk_acked: Vec<String>,
    disk_errors: BTreeMap<String, usize>,
    disk_probes: usize,
    /// NOSPACE alarms found (and disarmed) after a full disk.
    alarms: Vec<String>,
    /// Leases granted around clock steps: key, when granted (before the request), TTL.
    leases: Vec<(String, Instant, Duration)>,
    lease_reads: usize,
    /// Per failed-fsync fault: syncs that failed, and whether the member stopped.
    fsync_failures: Vec<(usize, bool)>,
    /// Objects moto kept across each of its restarts.
    moto_objects: Vec<usize>,
    /// The longest wait for the cluster to recover after a fault, and for what.
    longest_wait: Option<(&'static str, Duration)>,
}

/// The fault injectors a cluster is built with.
struct Rig {
    proxy: S3Proxy,
    /// Each member's libfaketime offset file.
    clocks: Vec<PathBuf>,
    /// Each member's fsync control file.
    fsync: Vec<FsyncFault>,
    /// The member whose data directory is a tmpfs.
    disk_member: usize,
    report: Mutex<Report>,
    _dir: tempfile::TempDir,
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// libfaketime from the Debian package `faketime`.
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib").ok().and_then(|dirs| {
        dirs.flatten()
            .map(|d| d.path().join("faketime/libfaketime.so.1"))
            .chain([PathBuf::from("/usr/lib/faketime/libfaketime.so.1")])
            .find(|p| p.exists())
    });
    found.expect("libfaketime.so.1 not found: install the Debian package `faketime` (make test and make chaos do)")
}

/// Starts the cluster of `plan` on moto behind the proxy, the last member on a tmpfs,
/// every member under libfaketime.
fn start(plan: &Plan) -> (Cluster, Arc<Rig>) {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let proxy = S3Proxy::start(moto.port);
    let dir = tempfile::tempdir().expect("tempdir");
    let clocks: Vec<PathBuf> = (0..plan.members).map(|i| dir.path().join(format!("clock-{i}"))).collect();
    for c in &clocks {
        std::fs::write(c, "+0").expect("write a clock offset");
    }
    let fsync: Vec<FsyncFault> = (0..plan.members)
        .map(|i| FsyncFault::new(dir.path().join(format!("fsync-{i}"))))
        .collect();
    let preload = format!("{} {}", libfaketime().display(), fsync_fault::library().display());
    let storage = format!(
        r#"{{ "provider": "s3", "bucket_name": "{BUCKET}", "key_prefix": "clusters/test", "region": "us-east-1",
             "endpoint": "http://127.0.0.1:{}", "force_path_style": true }}"#,
        proxy.port
    );
    // Small snapshot thresholds, so snapshots, their uploads and GC, and Raft snapshots
    // sent to wiped members happen during a run.
    let extra = format!(
        r#""durability": "{}", "archive": {{ "snapshot_entries": 1000 }}, "raft": {{ "snapshot_log_entries": 2000 }}, {},"#,
        plan.durability.name(),
        crate::linearizability::CLUSTER_CONFIG,
    );
    let env = |i: usize| {
        let mut env = vec![("NETSY_NODE_ID", format!("netsy-{i}"))];
        env.extend(moto::ENV.iter().map(|(k, v)| (*k, v.to_string())));
        env.push(("LD_PRELOAD", preload.clone()));
        env.push(("NETSY_FSYNC_FAULT_FILE", fsync[i].file.display().to_string()));
        env.push(("FAKETIME_TIMESTAMP_FILE", clocks[i].display().to_string()));
        env.push(("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()));
        env.push(("FAKETIME_CACHE_DURATION", "1".into()));
        env
    };
    let disk_member = plan.members - 1;
    let cluster = Cluster::start_on(
        plan.members,
        &extra,
        &storage,
        tempfile::tempdir().expect("tempdir"),
        Some(moto),
        &env,
        &[],
        &|i, node| {
            if i == disk_member {
                node.disk = Some(Tmpfs::mount(&node.data_dir(), DISK_MIB));
            }
        },
    );
    let rig = Rig {
        proxy,
        clocks,
        fsync,
        disk_member,
        report: Mutex::new(Report::default()),
        _dir: dir,
    };
    (cluster, Arc::new(rig))
}

/// The nemesis: `plan.cover` once each in a seeded order, then faults from `plan.pool`
/// until `until`; after each, members that exited are restarted and every member must
/// be a voter again. At the end every member serves, and the checks above run.
fn nemesis(c: &mut Cluster, rig: &Rig, plan: &Plan, seed: u64, until: Instant) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xC4A0_5C4A_05C4_A05C);
    let n = c.nodes.len();
    let mut cover = plan.cover.clone();
    cover.shuffle(&mut rng);
    let mut cover = cover.into_iter();
    let mut done = Vec::new();
    loop {
        let fault = match cover.next() {
            Some(f) => f,
            None if Instant::now() < until && !plan.pool.is_empty() => plan.pool[rng.random_range(0..plan.pool.len())],
            None => break,
        };
        // Every draw is made whatever the fault, so a seed gives one sequence.
        let pause = ms(rng.random_range(plan.pause_ms.clone()));
        let hold = ms(rng.random_range(plan.hold_ms.clone()));
        let r: [u64; 4] = rng.random();
        std::thread::sleep(pause);
        let started = Instant::now();
        let what = inject(c, rig, fault, hold, r);
        let repaired = Instant::now();
        supervise(c, rig);
        wait_voters(c, rig, n);
        let line = format!(
            "{fault:?} {what} [{:.1}s, then {:.1}s until every member was a voter]",
            repaired.duration_since(started).as_secs_f64(),
            repaired.elapsed().as_secs_f64()
        );
        println!("chaos fault {} at {}: {line}", done.len() + 1, wall_clock());
        done.push(line);
        *rig.report.lock().unwrap().counts.entry(fault).or_default() += 1;
    }
    settle(c, rig);
    let report = rig.report.lock().unwrap();
    println!(
        "chaos faults: {} injected: {:?}; members that exited by themselves: {:?}",
        done.len(),
        report.counts,
        report.exits
    );
    done
}

/// Every member's log is also linked (a hard link, so it outlives the member's temp
/// dir, also when the test fails) as `<dir>/<members>-<durability>-<seed>/netsy-<i>.log`,
/// where `<dir>` is `NETSY_CHAOS_LOGS` or else `chaos-logs` in Cargo's temp dir for tests
/// (target/tmp). Returns that directory, or None when a link cannot be made (another
/// filesystem).
fn keep_logs(c: &Cluster, plan: &Plan, seed: u64) -> Option<PathBuf> {
    let root = std::env::var("NETSY_CHAOS_LOGS").unwrap_or_else(|_| concat!(env!("CARGO_TARGET_TMPDIR"), "/chaos-logs").into());
    let dir = PathBuf::from(root).join(format!("{}-{}-{seed}", plan.members, plan.durability.name()));
    std::fs::create_dir_all(&dir).ok()?;
    for (i, node) in c.nodes.iter().enumerate() {
        let kept = dir.join(format!("netsy-{i}.log"));
        let _ = std::fs::remove_file(&kept);
        let log = node.dir.path().join(format!("netsy-{}.log", node.client_port));
        if let Err(e) = std::fs::hard_link(&log, &kept) {
            println!("chaos: the logs are not kept: link {} to {}: {e}", log.display(), kept.display());
            return None;
        }
    }
    Some(dir)
}

/// How long the cluster may be without a leader, or without every member a voter, after
/// a fault: far more than an election takes, because on a loaded machine (heartbeats
/// time out at 100 ms) elections can fail again and again for tens of seconds. The
/// longest wait is reported.
const RECOVERY: Duration = Duration::from_secs(180);

/// The member that reports itself leader, if any (a member that cannot answer, e.g.
/// because it just stopped, is not).
fn leader_now(c: &Cluster) -> Option<usize> {
    c.nodes.iter().position(|node| {
        node.child.is_some()
            && crate::common::try_http_get(node.health_port, "/metrics").is_ok_and(|(_, body)| {
                body.lines()
                    .filter_map(|l| l.strip_prefix("etcd_server_is_leader "))
                    .any(|v| v.trim().parse() == Ok(1.0))
            })
    })
}

/// The current leader, waiting up to `RECOVERY` for one.
fn wait_leader(c: &Cluster, rig: &Rig) -> usize {
    let waiting = Instant::now();
    loop {
        if let Some(leader) = leader_now(c) {
            note_wait(rig, "a leader", waiting.elapsed());
            return leader;
        }
        assert!(waiting.elapsed() < RECOVERY, "no leader for {RECOVERY:?}\n{}", c.logs());
        std::thread::sleep(ms(50));
    }
}

/// Waits up to `RECOVERY` until a member lists `n` started voters.
fn wait_voters(c: &Cluster, rig: &Rig, n: usize) {
    let waiting = Instant::now();
    loop {
        let listed = (0..c.nodes.len()).filter(|&i| c.nodes[i].child.is_some()).find_map(|i| {
            let (ok, out, _) = ctl(c, i, &["member", "list"]);
            ok.then(|| out.lines().filter(|l| l.contains(", started, ") && l.ends_with("false")).count())
        });
        if listed == Some(n) {
            note_wait(rig, "every member a voter", waiting.elapsed());
            return;
        }
        assert!(
            waiting.elapsed() < RECOVERY,
            "fewer than {n} voters for {RECOVERY:?} ({listed:?})\n{}",
            c.logs()
        );
        std::thread::sleep(ms(100));
    }
}

fn note_wait(rig: &Rig, what: &'static str, waited: Duration) {
    let mut report = rig.report.lock().unwrap();
    if report.longest_wait.is_none_or(|(_, w)| waited > w) {
        report.longest_wait = Some((what, waited));
    }
}

/// Another member than `leader`, from `r`.
fn other(leader: usize, n: usize, r: u64) -> usize {
    (leader + 1 + (r % (n as u64 - 1)) as usize) % n
}

fn restart_all(c: &mut Cluster) {
    std::thread::scope(|s| {
        for node in c.nodes.iter_mut() {
            s.spawn(move || node.spawn());
        }
    });
}

/// Injects `fault`, holds it for `hold`, repairs it; returns what it did.
fn inject(c: &mut Cluster, rig: &Rig, fault: Fault, hold: Duration, r: [u64; 4]) -> String {
    let n = c.nodes.len();
    let leader = wait_leader(c, rig);
    let follower = other(leader, n, r[0]);
    match fault {
        KillLeader | KillFollower => {
            let i = if fault == KillLeader { leader } else { follower };
            c.nodes[i].kill9();
            std::thread::sleep(hold);
            c.nodes[i].spawn();
            format!("netsy-{i} for {hold:?}")
        }
        SigtermLeader => {
            let stopped = terminate(c, leader);
            let next = leader_now(c);
            std::thread::sleep(hold);
            let starting = Instant::now();
            c.nodes[leader].spawn();
            format!(
                "netsy-{leader} stopped in {stopped:.1?}, leader right after: {next:?}, down for {hold:?}, listening {:.1?} after its restart",
                starting.elapsed()
            )
        }
        IsolateLeader | IsolateFollower => {
            let mut side = vec![if fault == IsolateLeader { leader } else { follower }];
            if fault == IsolateLeader && n >= 5 && r[1].is_multiple_of(2) {
                side.push(follower); // a minority of two
            }
            c.net.partition(&side, n);
            std::thread::sleep(hold);
            c.net.heal();
            format!("{side:?} cut off for {hold:?}")
        }
        OneWay => {
            let what = match r[1] % 3 {
                0 => {
                    (0..n).filter(|&j| j != leader).for_each(|j| c.net.cut_one_way(leader, j));
                    format!("the leader netsy-{leader} cannot dial the others")
                }
                1 => {
                    (0..n).filter(|&j| j != leader).for_each(|j| c.net.cut_one_way(j, leader));
                    format!("no one can dial the leader netsy-{leader}")
                }
                _ => {
                    let from = (r[2] % n as u64) as usize;
                    let to = other(from, n, r[3]);
                    c.net.cut_one_way(from, to);
                    format!("netsy-{from} cannot dial netsy-{to}")
                }
            };
            std::thread::sleep(hold);
            c.net.heal();
            format!("{what}, for {hold:?}")
        }
        WipeFollower => {
            c.nodes[follower].kill9();
            c.nodes[follower].wipe();
            std::thread::sleep(hold);
            c.nodes[follower].spawn();
            format!("netsy-{follower}, down for {hold:?}")
        }
        FullRestart | FullWipe => {
            for node in c.nodes.iter_mut() {
                node.kill9();
                if fault == FullWipe {
                    node.wipe();
                }
            }
            std::thread::sleep(hold);
            let restarting = Instant::now();
            restart_all(c);
            wait_leader(c, rig);
            format!("down for {hold:?}, serving again {:.1?} after the restart", restarting.elapsed())
        }
        S3Outage | S3Slow | S3LostResponses => {
            let mode = match fault {
                S3Outage => Mode::Outage,
                S3Slow => Mode::Slow(ms(50 + r[1] % 350)),
                _ => Mode::LoseResponses,
            };
            let lost = rig.proxy.counters.lost_responses.load(std::sync::atomic::Ordering::Relaxed);
            rig.proxy.set_mode(mode);
            std::thread::sleep(hold);
            rig.proxy.set_mode(Mode::Pass);
            let lost = rig.proxy.counters.lost_responses.load(std::sync::atomic::Ordering::Relaxed) - lost;
            match mode {
                Mode::LoseResponses => format!("for {hold:?} ({lost} responses lost)"),
                _ => format!("{mode:?} for {hold:?}"),
            }
        }
        MotoRestart => {
            // No request reaches moto from here on, and those in flight get a moment to end.
            rig.proxy.set_mode(Mode::Outage);
            std::thread::sleep(ms(200));
            let kept = c.moto.as_mut().expect("moto").restart_keeping(BUCKET, hold);
            rig.proxy.set_mode(Mode::Pass);
            rig.report.lock().unwrap().moto_objects.push(kept);
            format!("down for {hold:?}, {kept} objects kept")
        }
        DiskFull => disk_full(c, rig, hold),
        SlowFsync => {
            let i = if r[1].is_multiple_of(2) { leader } else { follower };
            let delay = ms(20 + r[2] % 480);
            rig.fsync[i].delay(delay);
            std::thread::sleep(hold);
            rig.fsync[i].pass();
            format!("netsy-{i} ({}): each sync {delay:?} slower for {hold:?}", role(i, leader))
        }
        FsyncError => fsync_error(c, rig, if r[1].is_multiple_of(2) { leader } else { follower }, leader, hold),
        ClockStep => clock_step(c, rig, hold, r),
    }
}

/// Stops member `i` with SIGTERM (a graceful stop: the leader hands over first); returns
/// how long it took. A stop that takes over a minute is a hang.
fn terminate(c: &mut Cluster, i: usize) -> Duration {
    let stopping = Instant::now();
    let mut child = c.nodes[i].child.take().expect("a running member");
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(signalled.success(), "kill -TERM netsy-{i}");
    while child.try_wait().expect("wait for netsy").is_none() {
        if stopping.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("netsy-{i} did not stop within a minute of SIGTERM\n{}", c.nodes[i].log());
        }
        std::thread::sleep(ms(20));
    }
    stopping.elapsed()
}

/// Restarts every member that exited by itself, as Kubernetes would, and notes why it
/// exited.
fn supervise(c: &mut Cluster, rig: &Rig) {
    for (i, node) in c.nodes.iter_mut().enumerate() {
        if let Some(status) = node.exited() {
            let why = last_error(&node.log());
            rig.report.lock().unwrap().exits.push(format!("netsy-{i} ({status}): {why}"));
            node.child = None;
            node.spawn();
        }
    }
}

/// The last error a member logged.
fn last_error(log: &str) -> String {
    log.lines()
        .rev()
        .find(|l| l.contains("netsy failed") || l.contains("ERROR"))
        .unwrap_or("")
        .chars()
        .take(300)
        .collect()
}

/// etcdctl against member `i` with a short command timeout.
fn ctl(c: &Cluster, i: usize, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--command-timeout=3s"];
    all.extend_from_slice(args);
    etcdctl(&c.nodes[i].endpoint(), &all)
}

/// Fills the disk of the tmpfs member while writing through it; frees the space, disarms
/// a NOSPACE alarm if one was raised, and checks the member serves again (restarted if
/// it stopped).
fn disk_full(c: &mut Cluster, rig: &Rig, hold: Duration) -> String {
    let i = rig.disk_member;
    let role = role(i, leader_now(c).unwrap_or(usize::MAX));
    let log_before = c.nodes[i].log().len();
    let filled = c.nodes[i].disk.as_ref().expect("the disk member has a tmpfs").fill();
    // Hold at least until the member has had to write something.
    let until = Instant::now() + hold.max(Duration::from_secs(5));
    let (mut acked, mut failed) = (0, 0);
    while Instant::now() < until && c.nodes[i].exited().is_none() {
        let key = {
            let mut report = rig.report.lock().unwrap();
            report.disk_probes += 1;
            format!("chaos/disk/{}", report.disk_probes)
        };
        let (ok, _, err) = ctl(c, i, &["put", &key, &"x".repeat(1024)]);
        let mut report = rig.report.lock().unwrap();
        if ok {
            acked += 1;
            report.disk_acked.push(key);
        } else {
            failed += 1;
            let error = err.lines().rev().find(|l| l.starts_with("Error")).unwrap_or(err.trim()).to_string();
            *report.disk_errors.entry(error).or_default() += 1;
        }
        drop(report);
        std::thread::sleep(ms(200));
    }
    c.nodes[i].disk.as_ref().expect("the disk member has a tmpfs").free();
    // etcd requires disarming NOSPACE once space is back; netsy raises it only for the
    // quota, so none is expected.
    let any = (0..c.nodes.len()).find(|&j| j != i).expect("another member");
    let (_, alarms, _) = ctl(c, any, &["alarm", "list"]);
    if alarms.contains("NOSPACE") {
        rig.report.lock().unwrap().alarms.push(alarms.trim().to_string());
        let (ok, out, err) = ctl(c, any, &["alarm", "disarm"]);
        assert!(ok, "alarm disarm: {out} {err}");
    }
    // Space is back: the member serves or has stopped (and is restarted below).
    let stopped = serves_or_stops(c, i, "ran out of disk space");
    let complaints: Vec<String> = c.nodes[i].log()[log_before..]
        .lines()
        .filter(|l| l.contains(" ERROR netsy") || l.starts_with("netsy failed"))
        .map(|l| l.chars().take(300).collect())
        .collect();
    supervise(c, rig);
    format!(
        "netsy-{i} ({role}) filled with {} MiB for {hold:?}: {acked} writes through it acknowledged, {failed} failed; it {}{}",
        filled >> 20,
        if stopped { "stopped and was restarted" } else { "kept running" },
        complaints.iter().take(2).map(|l| format!("; {l}")).collect::<String>()
    )
}

/// Makes every sync of member `i` fail with EIO for `hold` (or until it stops); then the
/// member must serve again or have stopped (it is restarted).
fn fsync_error(c: &mut Cluster, rig: &Rig, i: usize, leader: usize, hold: Duration) -> String {
    let log_before = c.nodes[i].log().len();
    rig.fsync[i].fail();
    let until = Instant::now() + hold;
    while Instant::now() < until && c.nodes[i].exited().is_none() {
        std::thread::sleep(ms(50));
    }
    rig.fsync[i].pass();
    let stopped = serves_or_stops(c, i, "had its fsync fail");
    let failed = c.nodes[i].log()[log_before..].matches(fsync_fault::INJECTED).count();
    let why = last_error(&c.nodes[i].log()[log_before..]);
    rig.report.lock().unwrap().fsync_failures.push((failed, stopped));
    supervise(c, rig);
    format!(
        "netsy-{i} ({}): every sync failed for {hold:?}, {failed} did; it {}",
        role(i, leader),
        if stopped {
            format!("stopped ({why}) and was restarted")
        } else {
            "kept running".into()
        }
    )
}

fn role(i: usize, leader: usize) -> &'static str {
    if i == leader {
        "leader"
    } else {
        "follower"
    }
}

/// After a fault on member `i` is repaired, it serves (a linearizable read through it)
/// or has stopped (a supervisor restarts it); still running and not serving after a
/// minute is a hang. Returns whether it stopped.
fn serves_or_stops(c: &mut Cluster, i: usize, what: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if c.nodes[i].exited().is_some() {
            return true;
        }
        let (ok, _, last) = ctl(c, i, &["get", "chaos/serves"]);
        if ok {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "netsy-{i} {what} and neither serves nor stopped a minute after the fault was repaired: {last}\n{}",
            c.nodes[i].log()
        );
        std::thread::sleep(ms(250));
    }
}

/// Steps the wall clock of the leader or another member by minutes, with a lease granted
/// just before; the lease's key must stay until its TTL has passed; steps back after `hold`.
fn clock_step(c: &mut Cluster, rig: &Rig, hold: Duration, r: [u64; 4]) -> String {
    let n = c.nodes.len();
    let leader = wait_leader(c, rig);
    let target = if r[1].is_multiple_of(2) {
        leader
    } else {
        (r[2] % n as u64) as usize
    };
    let minutes = 1 + r[3] % 30;
    let sign = if r[3] % 4 < 2 { "+" } else { "-" };
    let ttl = Duration::from_secs(hold.as_secs() + LEASE_EXTRA.as_secs());
    let key = {
        let report = rig.report.lock().unwrap();
        format!("chaos/lease/{}", report.leases.len())
    };
    let granted_at = Instant::now();
    let id = grant(c, leader, ttl, &key);
    std::fs::write(&rig.clocks[target], format!("{sign}{}", minutes * 60)).expect("step the clock");
    let stepped_back_at = granted_at + hold;
    let mut stepped_back = false;
    let mut reads = 0;
    // Read the key until just before its TTL is up: it must be there.
    while granted_at.elapsed() + Duration::from_secs(1) < ttl {
        if !stepped_back && Instant::now() >= stepped_back_at {
            std::fs::write(&rig.clocks[target], "+0").expect("step the clock back");
            stepped_back = true;
        }
        let (ok, out, _) = ctl(c, leader, &["get", &key]);
        let returned = granted_at.elapsed();
        if ok && id.is_some() {
            reads += 1;
            assert!(
                out.contains(&key) || returned >= ttl,
                "lease {id:?} (TTL {ttl:?}) expired early: its key was gone {returned:?} after the grant was sent; \
                 netsy-{target}'s clock was stepped {sign}{minutes}m\n{}",
                c.logs()
            );
        }
        std::thread::sleep(ms(250));
    }
    if !stepped_back {
        std::fs::write(&rig.clocks[target], "+0").expect("step the clock back");
    }
    let mut report = rig.report.lock().unwrap();
    report.lease_reads += reads;
    if id.is_some() {
        report.leases.push((key, granted_at, ttl));
    }
    format!(
        "netsy-{target} ({}) stepped {sign}{minutes}m for {hold:?}, lease read {reads} times",
        role(target, leader)
    )
}

/// Grants a lease of `ttl` through member `i` and puts `key` on it; None if the cluster
/// did not answer (the check is then skipped).
fn grant(c: &Cluster, i: usize, ttl: Duration, key: &str) -> Option<String> {
    let (ok, out, _) = ctl(c, i, &["lease", "grant", &ttl.as_secs().to_string()]);
    // "lease 694d7ed1b8a5e009 granted with TTL(10s)"
    let id = out.split_whitespace().nth(1).filter(|_| ok)?.to_string();
    let (ok, _, _) = ctl(c, i, &["put", key, "leased", &format!("--lease={id}")]);
    ok.then_some(id)
}

/// After the last fault: every member serves; what the full disk acknowledged is there;
/// every lease expired (not never); no member panicked.
fn settle(c: &mut Cluster, rig: &Rig) {
    for clock in &rig.clocks {
        std::fs::write(clock, "+0").expect("reset a clock");
    }
    rig.fsync.iter().for_each(FsyncFault::pass);
    rig.proxy.set_mode(Mode::Pass);
    c.net.heal();
    supervise(c, rig);
    wait_voters(c, rig, c.nodes.len());
    for i in 0..c.nodes.len() {
        wait_until(RECOVERY, &format!("netsy-{i} to serve"), || ctl(c, i, &["get", "chaos/settle"]).0);
    }
    // The same leader for a few seconds, so the traffic ends on a settled cluster.
    let settling = Instant::now();
    let (mut leader, mut since) = (leader_now(c), Instant::now());
    while since.elapsed() < Duration::from_secs(3) {
        assert!(settling.elapsed() < RECOVERY, "the leader keeps changing\n{}", c.logs());
        let now = leader_now(c);
        if now.is_none() || now != leader {
            (leader, since) = (now, Instant::now());
        }
        std::thread::sleep(ms(100));
    }
    let report = rig.report.lock().unwrap();
    for key in &report.disk_acked {
        for i in 0..c.nodes.len() {
            let mut out = String::new();
            wait_until(RECOVERY, &format!("a read of {key} through netsy-{i}"), || {
                let (ok, o, _) = ctl(c, i, &["get", key]);
                out = o;
                ok
            });
            assert!(
                out.contains(key.as_str()),
                "{key}, acknowledged by netsy-{} while its disk was full, is missing at netsy-{i}",
                rig.disk_member
            );
        }
    }
    if let Some(last) = report.leases.iter().map(|(_, at, ttl)| *at + *ttl).max() {
        // Each new leader gives every lease a full TTL again (etcd's Promote): on a loaded
        // machine elections go on after the faults, so the deadline follows the term.
        let longest = report.leases.iter().map(|(_, _, ttl)| *ttl).max().unwrap_or_default();
        let mut deadline = last + LEASE_GRACE;
        let mut term = raft_term(c);
        loop {
            let (ok, out, err) = ctl(c, 0, &["get", "chaos/lease/", "--prefix", "--keys-only"]);
            if ok && out.trim().is_empty() {
                break;
            }
            let now_term = raft_term(c);
            if now_term > term {
                term = now_term;
                deadline = deadline.max(Instant::now() + longest + LEASE_GRACE);
            }
            assert!(
                Instant::now() < deadline,
                "leases never expired (term {term}): {out}{err}\n{}",
                c.logs()
            );
            std::thread::sleep(ms(500));
        }
    }
    for (i, node) in c.nodes.iter().enumerate() {
        let log = node.log();
        if let Some(at) = log.find("panicked at") {
            panic!("netsy-{i} panicked: {}", &log[at..log.len().min(at + 2000)]);
        }
    }
}

/// The highest Raft term a member reports (0 if none answers).
fn raft_term(c: &Cluster) -> u64 {
    (0..c.nodes.len())
        .filter_map(|i| {
            let (ok, out, _) = ctl(c, i, &["endpoint", "status", "-w", "json"]);
            let at = out.find("\"raft_term\":").filter(|_| ok)? + "\"raft_term\":".len();
            out[at..].split(|ch: char| !ch.is_ascii_digit()).next()?.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

fn seed() -> u64 {
    let seed = std::env::var("NETSY_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("chaos seed {seed} (rerun with NETSY_CHAOS_SEED={seed})");
    seed
}

/// `NETSY_CHAOS_DURATION`: `90s`, `10m`, `1h` or seconds; 10 minutes by default.
fn duration() -> Duration {
    let Ok(text) = std::env::var("NETSY_CHAOS_DURATION") else {
        return Duration::from_secs(600);
    };
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((at, u @ ('s' | 'm' | 'h'))) => (&text[..at], u),
        _ => (text, 's'),
    };
    let number: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("NETSY_CHAOS_DURATION={text}: expected e.g. 90s, 10m or 1h"));
    Duration::from_secs(number * [1, 60, 3600][['s', 'm', 'h'].iter().position(|&u| u == unit).unwrap_or(0)])
}

/// Runs `plan` for `length` with the linearizability traffic; prints one summary line.
async fn run(plan: Plan, seed: u64, length: Duration) {
    let (cluster, rig) = tokio::task::block_in_place(|| start(&plan));
    if let Some(dir) = keep_logs(&cluster, &plan, seed) {
        println!("chaos logs in {}", dir.display());
    }
    let (members, durability) = (plan.members, plan.durability);
    let started = Instant::now();
    let nemesis_rig = rig.clone();
    run_with(
        cluster,
        seed,
        length,
        Box::new(move |c: &mut Cluster, seed, until| nemesis(c, &nemesis_rig, &plan, seed, until)),
    )
    .await;
    let report = rig.report.lock().unwrap();
    let faults: usize = report.counts.values().sum();
    let counts: Vec<String> = report.counts.iter().map(|(f, k)| format!("{f:?}={k}")).collect();
    println!(
        "chaos summary: seed={seed} members={members} durability={} ran={:.0}s faults={faults} [{}] \
         exits={} disk_probes={} (acked {}, errors {:?}) nospace_alarms={} fsync_failures={:?} leases={} (reads {}) \
         moto_objects_kept={:?} longest_recovery=\"{}\" result=ok",
        durability.name(),
        started.elapsed().as_secs_f64(),
        counts.join(" "),
        report.exits.len(),
        report.disk_probes,
        report.disk_acked.len(),
        report.disk_errors,
        report.alarms.len(),
        report.fsync_failures,
        report.leases.len(),
        report.lease_reads,
        report.moto_objects,
        report
            .longest_wait
            .map(|(what, waited)| format!("{waited:.1?} for {what}"))
            .unwrap_or_default(),
    );
}

/// The short variant in `make test`: three members on moto (`object-storage`
/// durability), every fault kind below once in a seeded order (SIGTERM hand-over, the
/// object-store faults, a failing fsync and a full wipe included), then random ones until
/// 30 s have passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_on_s3_stay_linearizable_under_mixed_faults() {
    let seed = seed();
    let cover = vec![
        SigtermLeader,
        S3Outage,
        S3LostResponses,
        MotoRestart,
        OneWay,
        ClockStep,
        DiskFull,
        FsyncError,
    ];
    let plan = Plan {
        members: 3,
        durability: Durability::ObjectStorage,
        pool: vec![KillLeader, KillFollower, IsolateFollower, S3Slow, S3Outage, OneWay, SlowFsync],
        cover,
        hold_ms: 1000..2500,
        pause_ms: 200..800,
    };
    run(plan, seed, Duration::from_secs(30)).await;
}

async fn long(members: usize, durability: Durability) {
    let seed = seed();
    let pool: Vec<Fault> = ALL
        .into_iter()
        .filter(|&f| f != FullWipe || durability == Durability::ObjectStorage)
        .collect();
    let plan = Plan {
        members,
        durability,
        cover: pool.clone(),
        pool,
        hold_ms: 1000..6000,
        pause_ms: 300..1500,
    };
    run(plan, seed, duration()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: run by `make chaos`"]
async fn long_3_members_quorum() {
    long(3, Durability::Quorum).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: run by `make chaos`"]
async fn long_3_members_object_storage() {
    long(3, Durability::ObjectStorage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: run by `make chaos`"]
async fn long_5_members_quorum() {
    long(5, Durability::Quorum).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: run by `make chaos`"]
async fn long_5_members_object_storage() {
    long(5, Durability::ObjectStorage).await;
}

/// A member whose disk fills up stops, with an error that says why, instead of staying up
/// and answering "server stopped" to every request for ever (its Raft core had stopped on
/// the failed write, and nothing restarted it). The others keep serving; restarted once
/// space is freed, it catches up with every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_whose_disk_fills_up_stops_and_comes_back_once_space_is_freed() {
    use etcd_client::Client;
    let objects = tempfile::tempdir().expect("tempdir");
    let storage = format!(r#"{{ "provider": "file", "path": "{}" }}"#, objects.path().display());
    let env = |i: usize| vec![("NETSY_NODE_ID", format!("netsy-{i}"))];
    let mut c = tokio::task::block_in_place(|| {
        Cluster::start_on(3, "", &storage, objects, None, &env, &[], &|i, node| {
            if i == 2 {
                node.disk = Some(Tmpfs::mount(&node.data_dir(), 64));
            }
        })
    });
    c.wait_leader();
    let filled = c.nodes[2].disk.as_ref().expect("tmpfs").fill();
    assert!(c.nodes[2].disk.as_ref().expect("tmpfs").available() < 4096);
    let mut client = Client::connect([c.nodes[0].endpoint(), c.nodes[1].endpoint()], None)
        .await
        .expect("connect");
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let value = "v".repeat(4096);
    while c.nodes[2].exited().is_none() {
        assert!(
            Instant::now() < deadline,
            "netsy-2 still runs a minute after its disk ({filled} bytes filled) ran out; log:\n{}",
            c.nodes[2].log()
        );
        let key = format!("disk/{:05}", acked.len());
        // Writes go on through the others (after an election if netsy-2 led).
        if tokio::time::timeout(Duration::from_secs(5), client.put(key.clone(), value.clone(), None))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            acked.push(key);
        }
    }
    let status = c.nodes[2].exited().expect("exited");
    let log = c.nodes[2].log();
    assert!(!status.success(), "{status}");
    assert!(
        log.contains("Raft stopped on an error") && log.contains("disk is full"),
        "the log says why it stopped:\n{log}"
    );
    // The two others still take writes.
    let after = format!("disk/{:05}", acked.len());
    let put = tokio::time::timeout(Duration::from_secs(20), client.put(after.clone(), "after", None)).await;
    assert!(put.is_ok_and(|r| r.is_ok()), "a write through the other members");
    acked.push(after);

    c.nodes[2].disk.as_ref().expect("tmpfs").free();
    let keys = restart_and_list(&mut c, 2, "disk/").await;
    for key in &acked {
        assert!(keys.contains(key), "{key} was acknowledged but netsy-2 does not have it");
    }
}

/// A member whose fsync fails stops, with an error that says so, and acknowledges no
/// write it could not sync (etcd panics on a failed WAL sync for the same reason: after a
/// failed fsync, what reached the disk is unknown). Restarted with a working disk, it has
/// every write it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_whose_fsync_fails_stops_without_acknowledging_and_comes_back() {
    use etcd_client::Client;
    let objects = tempfile::tempdir().expect("tempdir");
    let storage = format!(r#"{{ "provider": "file", "path": "{}" }}"#, objects.path().display());
    let control = tempfile::tempdir().expect("tempdir");
    let fault = FsyncFault::new(control.path().join("fsync"));
    let env = |_: usize| {
        vec![
            ("NETSY_NODE_ID", "netsy-0".to_string()),
            ("LD_PRELOAD", fsync_fault::library().display().to_string()),
            ("NETSY_FSYNC_FAULT_FILE", fault.file.display().to_string()),
        ]
    };
    let mut c = tokio::task::block_in_place(|| Cluster::start_on(1, "", &storage, objects, None, &env, &[], &|_, _| {}));
    let mut client = Client::connect([c.nodes[0].endpoint()], None).await.expect("connect");
    for i in 0..20 {
        client
            .put(format!("sync/{i:02}"), "before", None)
            .await
            .expect("a put with a working disk");
    }
    fault.fail();
    let put = tokio::time::timeout(Duration::from_secs(20), client.put("sync/failed", "x", None)).await;
    assert!(
        !put.as_ref().is_ok_and(|r| r.is_ok()),
        "a put was acknowledged while every fsync failed: {put:?}\n{}",
        c.nodes[0].log()
    );
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(60), "netsy-0 to stop after its fsync failed", || {
            c.nodes[0].exited().is_some()
        })
    });
    let status = c.nodes[0].exited().expect("exited");
    let log = c.nodes[0].log();
    assert!(!status.success(), "{status}");
    assert!(
        log.contains(fsync_fault::INJECTED) && log.contains("Raft stopped on an error") && log.contains("disk I/O error"),
        "the log says why it stopped:\n{log}"
    );

    fault.pass();
    let keys = restart_and_list(&mut c, 0, "sync/").await;
    let mut back = etcd_client::Client::connect([c.nodes[0].endpoint()], None).await.expect("connect");
    for i in 0..20 {
        assert!(
            keys.contains(&format!("sync/{i:02}")),
            "sync/{i:02} was acknowledged but is gone: {keys:?}"
        );
    }
    back.put("sync/after", "after", None).await.expect("a put after the restart");
}

/// Restarts member `i`, which stopped by itself, waits until every member is a voter, and
/// lists the keys under `prefix` through it.
async fn restart_and_list(c: &mut Cluster, i: usize, prefix: &str) -> Vec<String> {
    c.nodes[i].child = None;
    tokio::task::block_in_place(|| {
        c.nodes[i].spawn();
        c.wait_members(c.nodes.len());
    });
    let mut back = etcd_client::Client::connect([c.nodes[i].endpoint()], None).await.expect("connect");
    let kvs = back
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix().with_keys_only()))
        .await
        .expect("a read through the restarted member");
    kvs.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).into_owned()).collect()
}

/// A member that lost its disk joins from a Raft snapshot (the leader's log no longer
/// starts at the beginning) and can restart with its disk afterwards. Its log store used
/// to skip the purge of the installed snapshot's entries (below the archive floor it
/// keeps entries for object storage, and a fresh member's floor is 0) without recording
/// it, so a restart read the log from index 0 and failed: "'LogIndex(0)' violates: 'try
/// to get log at index 0 but got None'".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_joined_from_a_raft_snapshot_restarts_with_its_disk() {
    use etcd_client::{Client, GetOptions};
    let mut c = tokio::task::block_in_place(|| Cluster::start(3, r#""raft": { "snapshot_log_entries": 50 },"#));
    let leader = c.wait_leader();
    let joiner = (leader + 1) % 3;
    let writer = (leader + 2) % 3;
    let mut client = Client::connect([c.nodes[writer].endpoint()], None).await.expect("connect");
    for i in 0..300 {
        client.put(format!("k{i:03}"), "v", None).await.expect("put");
    }
    tokio::task::block_in_place(|| {
        c.nodes[joiner].kill9();
        c.nodes[joiner].wipe();
        c.nodes[joiner].spawn();
        c.wait_members(3);
    });
    assert!(
        c.nodes[joiner].log().contains("installing raft snapshot"),
        "the joiner catches up from a snapshot:\n{}",
        c.nodes[joiner].log()
    );
    // Entries after the snapshot reach its log too.
    for i in 300..320 {
        client.put(format!("k{i:03}"), "v", None).await.expect("put");
    }
    tokio::task::block_in_place(|| {
        c.nodes[joiner].kill9();
        if let Err(log) = c.nodes[joiner].try_spawn() {
            panic!("the member does not start again with its disk:\n{log}");
        }
        c.wait_members(3);
    });
    let mut back = Client::connect([c.nodes[joiner].endpoint()], None).await.expect("connect");
    let keys = back
        .get("k", Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .expect("read through the restarted member");
    assert_eq!(keys.count(), 320);
}

/// `object-storage` durability on 3 members: while object storage is unreachable, a
/// write commits but no member shows it, followers included (they learn from the leader
/// how far the log is uploaded); once storage is back, every member does. A full wipe
/// would otherwise lose a write that readers had seen (30-minute chaos runs, seeds
/// 4177688484610873108 and 13300481717575952994).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_member_shows_a_write_before_it_is_in_object_storage() {
    use etcd_client::{Client, GetOptions};
    let plan = Plan {
        members: 3,
        durability: Durability::ObjectStorage,
        cover: vec![],
        pool: vec![],
        hold_ms: 0..1,
        pause_ms: 0..1,
    };
    let (c, rig) = tokio::task::block_in_place(|| start(&plan));
    let leader = tokio::task::block_in_place(|| wait_leader(&c, &rig));
    let mut writer = Client::connect([c.nodes[leader].endpoint()], None).await.expect("connect");
    writer.put("before", "v", None).await.expect("a put");
    let mut readers = Vec::new();
    for node in &c.nodes {
        readers.push(Client::connect([node.endpoint()], None).await.expect("connect"));
    }
    let seen = |mut r: Client| async move {
        r.get("held", Some(GetOptions::new().with_serializable()))
            .await
            .is_ok_and(|g| !g.kvs().is_empty())
    };

    rig.proxy.set_mode(Mode::Outage);
    let pending = tokio::spawn({
        let mut w = writer.clone();
        async move { w.put("held", "v", None).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (i, r) in readers.iter().enumerate() {
        assert!(!seen(r.clone()).await, "netsy-{i} shows a write that is not in object storage");
    }

    rig.proxy.set_mode(Mode::Pass);
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, r) in readers.iter().enumerate() {
        while !seen(r.clone()).await {
            assert!(Instant::now() < deadline, "netsy-{i} never showed the write once it was uploaded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let _ = pending.await.expect("the put task");
}
