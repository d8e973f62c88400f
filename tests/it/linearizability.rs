//! Linearizability of real netsy clusters under faults. Concurrent clients, each bound to
//! one member (so most requests are forwarded by followers), do puts, compare-and-set
//! transactions and linearizable reads on a few keys, recording when each was invoked
//! and when it returned, while a nemesis kills leaders, cuts a leader or a follower off
//! from the others, and restarts members with and without their disks. The recorded
//! history must have a linearization (`checker`), and every acknowledged write must be
//! explained by it.
//!
//! Every choice (operations, keys, values, faults, their targets and durations) comes
//! from one seed, printed at the start; rerun with `NETSY_LINZ_SEED=<seed>`.

mod checker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::Cluster;
use checker::{Op, Outcome, Record};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CLIENTS: usize = 6;
const KEYS: usize = 4;
const OP_TIMEOUT: Duration = Duration::from_secs(3);

fn seed() -> u64 {
    let seed = std::env::var("NETSY_LINZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (rerun with NETSY_LINZ_SEED={seed})");
    seed
}

fn value_of(kv: &KeyValue) -> String {
    String::from_utf8_lossy(kv.value()).into_owned()
}

/// One client's loop: until `stop`, random operations against its member; after an error
/// it moves to the next member.
/// Acknowledged writes and completed reads so far, across clients.
#[derive(Default)]
struct Progress {
    writes: std::sync::atomic::AtomicUsize,
    reads: std::sync::atomic::AtomicUsize,
}

impl Progress {
    fn enough(&self) -> bool {
        self.writes.load(Ordering::Relaxed) >= MIN_WRITES && self.reads.load(Ordering::Relaxed) >= MIN_READS
    }
}

/// A run is judged on at least this much history.
const MIN_WRITES: usize = 100;
const MIN_READS: usize = 100;

async fn client_loop(
    id: usize,
    seed: u64,
    endpoints: Vec<String>,
    start: Instant,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> (Vec<Record>, Errors) {
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut at = id % endpoints.len();
    let mut client: Option<Client> = None;
    let mut last_seen: Vec<Option<String>> = vec![None; KEYS];
    let mut history = Vec::new();
    let mut errors = BTreeMap::new();
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = client.as_mut() else {
            let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
            match tokio::time::timeout(OP_TIMEOUT, Client::connect([endpoints[at].clone()], Some(options))).await {
                Ok(Ok(c)) => client = Some(c),
                _ => {
                    at = (at + 1) % endpoints.len();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            continue;
        };
        let k = rng.random_range(0..KEYS);
        let key = format!("lin/{k}");
        seq += 1;
        let value = format!("c{id}-{seq}");
        let kind = rng.random_range(0..10);
        let call = start.elapsed().as_nanos() as u64;
        let (op, outcome) = match kind {
            0..=3 => {
                let r = tokio::time::timeout(OP_TIMEOUT, c.put(key.clone(), value.clone(), None)).await;
                note_failure(&mut errors, &r);
                (Op::Put { value }, matches!(r, Ok(Ok(_))).then_some(Outcome::Put))
            }
            4..=5 => {
                let expect = if rng.random_bool(0.7) { last_seen[k].clone() } else { None };
                let compare = match &expect {
                    Some(v) => Compare::value(key.clone(), CompareOp::Equal, v.clone()),
                    None => Compare::version(key.clone(), CompareOp::Equal, 0),
                };
                let txn = Txn::new()
                    .when([compare])
                    .and_then([TxnOp::put(key.clone(), value.clone(), None)])
                    .or_else([TxnOp::get(key.clone(), None)]);
                let r = tokio::time::timeout(OP_TIMEOUT, c.txn(txn)).await;
                note_failure(&mut errors, &r);
                let outcome = match r {
                    Ok(Ok(resp)) if resp.succeeded() => Some(Outcome::CasOk),
                    Ok(Ok(resp)) => {
                        let seen = resp.op_responses().into_iter().find_map(|op| match op {
                            TxnOpResponse::Get(g) => Some(g.kvs().first().map(value_of)),
                            _ => None,
                        });
                        seen.map(Outcome::CasFailed)
                    }
                    _ => None,
                };
                (Op::Cas { expect, value }, outcome)
            }
            _ => {
                let r = tokio::time::timeout(OP_TIMEOUT, c.get(key.clone(), None)).await;
                note_failure(&mut errors, &r);
                let outcome = match r {
                    Ok(Ok(resp)) => {
                        let seen = resp.kvs().first().map(value_of);
                        last_seen[k] = seen.clone();
                        Some(Outcome::Get(seen))
                    }
                    _ => None,
                };
                (Op::Get, outcome)
            }
        };
        let ret = start.elapsed().as_nanos() as u64;
        if outcome.is_none() {
            // Try the next member (this one may be down or cut off), after a pause.
            client = None;
            at = (at + 1) % endpoints.len();
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..300))).await;
        }
        match outcome {
            Some(outcome) => {
                match outcome {
                    Outcome::Get(_) => progress.reads.fetch_add(1, Ordering::Relaxed),
                    Outcome::Put | Outcome::CasOk => progress.writes.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
                history.push(Record {
                    client: id,
                    key,
                    op,
                    outcome,
                    call,
                    ret: Some(ret),
                })
            }
            // A failed read changed nothing; a failed write may or may not have happened.
            None if op == Op::Get => {}
            None => history.push(Record {
                client: id,
                key,
                op,
                outcome: Outcome::Unknown,
                call,
                ret: None,
            }),
        }
    }
    (history, errors)
}

/// How many requests failed, by error.
type Errors = BTreeMap<String, usize>;

fn note_failure<T>(errors: &mut Errors, r: &Result<Result<T, etcd_client::Error>, tokio::time::error::Elapsed>) {
    let what = match r {
        Ok(Ok(_)) => return,
        Ok(Err(etcd_client::Error::GRpcStatus(s))) => format!("{:?}: {}", s.code(), s.message()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {OP_TIMEOUT:?}"),
    };
    *errors.entry(what).or_default() += 1;
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

/// Injects faults into the cluster until the deadline (cluster, seed, until); returns
/// descriptions of the faults injected. It must leave every member running.
pub type Nemesis = Box<dyn FnOnce(&mut Cluster, u64, Instant) -> Vec<String> + Send>;

/// A run: `nodes` members, clients and the nemesis for `length`, then final reads of every
/// key from every member, then the check.
pub async fn run_with(cluster: Cluster, seed: u64, length: Duration, nemesis: Nemesis) {
    let n = cluster.nodes.len();
    let endpoints = cluster.endpoints();
    let cluster = Arc::new(Mutex::new(cluster));
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client_loop(id, seed, endpoints.clone(), start, stop.clone(), progress.clone())))
        .collect();
    let nemesis = {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = cluster.lock().expect("cluster");
            nemesis(&mut c, seed, start + length)
        })
    };
    let faults = nemesis.await.expect("nemesis");
    // Some operations with everyone healthy again, and on until the history is long enough
    // to judge (a loaded machine makes less progress during the faults), within a bound.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let healthy_until = Instant::now() + Duration::from_secs(60);
    while !progress.enough() && Instant::now() < healthy_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut history = Vec::new();
    let mut errors = Errors::new();
    for c in clients {
        let (h, e) = c.await.expect("client");
        history.extend(h);
        for (what, count) in e {
            *errors.entry(what).or_default() += count;
        }
    }
    // Final reads through every member: each must see the last write of every key.
    for (i, endpoint) in endpoints.iter().enumerate() {
        let mut c = Client::connect([endpoint.clone()], None).await.expect("connect");
        for k in 0..KEYS {
            let key = format!("lin/{k}");
            let call = start.elapsed().as_nanos() as u64;
            let resp = c.get(key.clone(), None).await.expect("final read");
            let seen = resp.kvs().first().map(value_of);
            history.push(Record {
                client: CLIENTS + i,
                key,
                op: Op::Get,
                outcome: Outcome::Get(seen),
                call,
                ret: Some(start.elapsed().as_nanos() as u64),
            });
        }
    }

    let acked_writes = history
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Put | Outcome::CasOk))
        .count();
    let reads = history.iter().filter(|r| matches!(r.outcome, Outcome::Get(_))).count();
    let unknown = history.iter().filter(|r| r.outcome == Outcome::Unknown).count();
    println!(
        "{n} members, faults: {faults:?}\n{} operations: {acked_writes} acknowledged writes, {reads} reads, {unknown} unknown\nerrors: {errors:#?}",
        history.len()
    );
    assert!(faults.len() >= 2, "the nemesis ran too few faults: {faults:?}");
    assert!(
        acked_writes >= MIN_WRITES && reads >= MIN_READS,
        "too little progress to judge: {acked_writes} writes, {reads} reads"
    );
    let logs = cluster.lock().expect("cluster").logs();
    if let Err(violation) = checker::check(&history) {
        panic!("seed {seed}: {violation}\nfaults: {faults:?}\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_stay_linearizable_under_kills_partitions_and_wiped_disks() {
    let seed = seed();
    run_with(Cluster::start(3, ""), seed, Duration::from_secs(20), Box::new(nemesis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_members_on_s3_stay_linearizable_under_kills_partitions_and_wiped_disks() {
    let seed = seed();
    run_with(Cluster::start_s3(5, ""), seed, Duration::from_secs(20), Box::new(nemesis)).await;
}
