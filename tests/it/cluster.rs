//! Multi-node, black-box: real netsy processes on loopback sharing one object store,
//! killed (-9), restarted with or without their disks, and fully restarted from object
//! storage alone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::{etcdctl, wait_until, Cluster};
use etcd_client::{Client, EventType, GetOptions, WatchOptions};

async fn client(endpoint: &str) -> Client {
    Client::connect([endpoint], None).await.expect("connect")
}

async fn value(c: &mut Client, key: &str, serializable: bool) -> Option<String> {
    let opts = serializable.then(|| GetOptions::new().with_serializable());
    let resp = c.get(key, opts).await.expect("get");
    resp.kvs().first().map(|kv| kv.value_str().expect("utf8").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_member_serves_writes_reads_leases_and_membership() {
    let c = Cluster::start(3, "");
    let leader = c.wait_leader();
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let mut f0 = client(&c.nodes[followers[0]].endpoint()).await;
    let mut f1 = client(&c.nodes[followers[1]].endpoint()).await;

    // A write through a follower is visible to a linearizable read at the other one.
    let put = f0.put("k", "v1", None).await.expect("put via follower");
    assert_eq!(value(&mut f1, "k", false).await.as_deref(), Some("v1"));
    // ...and at the writing follower itself at once, even serializably.
    assert_eq!(value(&mut f0, "k", true).await.as_deref(), Some("v1"));
    let rev = put.header().expect("header").revision();
    let txn = etcd_client::Txn::new()
        .when([etcd_client::Compare::mod_revision("k", etcd_client::CompareOp::Equal, rev)])
        .and_then([etcd_client::TxnOp::put("k", "v2", None)]);
    assert!(f1.txn(txn).await.expect("txn via follower").succeeded());

    // Leases: granted at one follower, kept alive at the other, TTL from the leader.
    let lease = f0.lease_grant(5, None).await.expect("grant").id();
    f1.put("leased", "x", Some(etcd_client::PutOptions::new().with_lease(lease)))
        .await
        .expect("put with lease");
    let (mut keeper, mut responses) = f1.lease_keep_alive(lease).await.expect("keep-alive stream");
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        keeper.keep_alive().await.expect("keep alive");
        let r = responses.message().await.expect("response").expect("keep-alive response");
        assert_eq!(r.ttl(), 5);
    }
    // 8 s after the grant, a 5 s lease is still alive thanks to keep-alives via a follower.
    let mut l = client(&c.nodes[leader].endpoint()).await;
    let ttl = l.lease_time_to_live(lease, None).await.expect("ttl");
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 5, "{}", ttl.ttl());
    assert_eq!(value(&mut l, "leased", false).await.as_deref(), Some("x"));
    drop(keeper);
    // Without keep-alives the leader expires it, and every member sees the key go.
    wait_until(Duration::from_secs(15), "lease expiry", || {
        etcdctl(&c.nodes[followers[1]].endpoint(), &["get", "leased", "--consistency=s"])
            .1
            .trim()
            .is_empty()
    });

    // A revoke through one follower ends keep-alives through the other at once (the
    // leader's deadlines follow the revoke, whichever member it came through).
    let lease2 = f0.lease_grant(30, None).await.expect("grant").id();
    let (mut keeper, mut responses) = f1.lease_keep_alive(lease2).await.expect("keep-alive stream");
    keeper.keep_alive().await.expect("keep alive");
    let r = responses.message().await.expect("response").expect("keep-alive response");
    assert_eq!(r.ttl(), 30);
    f0.lease_revoke(lease2).await.expect("revoke via follower");
    // (etcd-client sends the first keep-alive itself and reports TTL 0 as not found.)
    match f1.lease_keep_alive(lease2).await {
        Err(etcd_client::Error::LeaseKeepAliveError(m)) => assert_eq!(m, "lease not found"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a revoked lease was kept alive"),
    }

    // Membership: three voters with their URLs; every member names the same leader.
    let members = f0.member_list().await.expect("member list");
    assert_eq!(members.members().len(), 3);
    for m in members.members() {
        assert!(!m.is_learner());
        assert!(m.name().starts_with("netsy-"));
        assert_eq!(m.client_urls().len(), 1);
    }
    let mut leaders = Vec::new();
    for n in &c.nodes {
        let status = client(&n.endpoint()).await.status().await.expect("status");
        leaders.push(status.leader());
    }
    assert!(leaders.iter().all(|l| *l == leaders[0] && *l != 0), "{leaders:?}");
}

/// Writers putting keys through chosen members until stopped: when each acknowledged
/// write was sent and acknowledged, and how many attempts failed.
struct Writers {
    acked: Arc<Mutex<BTreeMap<String, (Instant, Instant)>>>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A 3-member cluster whose followers take writes from `Writers` (100 already done).
fn three_members_writing_through_followers(what: &str) -> (Cluster, usize, Writers) {
    let c = Cluster::start(3, "");
    let leader = c.wait_leader();
    let followers: Vec<String> = (0..3).filter(|i| *i != leader).map(|i| c.nodes[i].endpoint()).collect();
    let writers = Writers::start(followers);
    writers.wait_for(100, Duration::from_secs(20), what);
    (c, leader, writers)
}

impl Writers {
    /// One writer per endpoint.
    fn start(endpoints: Vec<String>) -> Writers {
        let mut w = Writers {
            acked: Arc::default(),
            failed: Arc::default(),
            stop: Arc::default(),
            tasks: Vec::new(),
        };
        for (n, endpoint) in endpoints.into_iter().enumerate() {
            let (acked, failed, stop) = (w.acked.clone(), w.failed.clone(), w.stop.clone());
            w.tasks.push(tokio::spawn(async move {
                let mut c: Option<Client> = None;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let Some(client) = c.as_mut() else {
                        let opts = etcd_client::ConnectOptions::new()
                            .with_connect_timeout(Duration::from_millis(500))
                            .with_timeout(Duration::from_secs(3));
                        c = Client::connect([endpoint.as_str()], Some(opts)).await.ok();
                        if c.is_none() {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        continue;
                    };
                    let key = format!("w{n}/{i:06}");
                    i += 1;
                    let sent = Instant::now();
                    match client.put(key.as_str(), "v", None).await {
                        Ok(_) => {
                            acked.lock().expect("lock").insert(key, (sent, Instant::now()));
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await
                        }
                    }
                }
            }));
        }
        w
    }

    fn count(&self) -> usize {
        self.acked.lock().expect("lock").len()
    }

    /// Waits (blocking this worker thread) until `n` writes were acknowledged.
    fn wait_for(&self, n: usize, timeout: Duration, what: &str) {
        tokio::task::block_in_place(|| wait_until(timeout, what, || self.count() >= n));
    }

    /// Of the writes sent after `t`: the (sent, acknowledged) times.
    fn sent_after(&self, t: Instant) -> Vec<(Instant, Instant)> {
        self.acked
            .lock()
            .expect("lock")
            .values()
            .filter(|(sent, _)| *sent > t)
            .copied()
            .collect()
    }

    /// Stops the writers; returns the acknowledged keys and the failed attempts.
    async fn finish(self) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("writer");
        }
        let keys = self.acked.lock().expect("lock").keys().cloned().collect();
        (keys, self.failed.load(Ordering::Relaxed))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_loses_no_acknowledged_write_and_a_new_leader_takes_over() {
    let (mut c, leader, writers) = three_members_writing_through_followers("writes before the kill");

    let killed_at = Instant::now();
    c.nodes[leader].kill9();
    let before = writers.count();
    writers.wait_for(before + 100, Duration::from_secs(30), "writes after the kill");
    // The first write sent after the kill that was acknowledged (it needed a new leader).
    let first_after = writers
        .sent_after(killed_at)
        .into_iter()
        .map(|(_, done)| done)
        .min()
        .expect("a write after the kill");
    let failover = first_after.duration_since(killed_at);
    println!("failover: leader kill -> first acknowledged write: {failover:?}");
    assert!(failover < Duration::from_secs(10), "failover took {failover:?}");

    // The old leader comes back with its disk and catches up as a follower.
    c.nodes[leader].spawn();
    writers.wait_for(before + 200, Duration::from_secs(30), "more writes with everyone back");
    // Every acknowledged write is on every member (serializable: each member's own state).
    let (acked, _) = writers.finish().await;
    let mut lin = client(&c.nodes[leader].endpoint()).await;
    lin.get("w", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .expect("barrier");
    for n in &c.nodes {
        let mut cl = client(&n.endpoint()).await;
        let mut present = Vec::new();
        // A linearizable read first, so this member has applied everything.
        cl.get("w", Some(GetOptions::new().with_prefix().with_count_only()))
            .await
            .expect("read");
        let resp = cl
            .get("w", Some(GetOptions::new().with_prefix().with_keys_only().with_serializable()))
            .await
            .expect("get");
        present.extend(resp.kvs().iter().map(|kv| kv.key_str().expect("utf8").to_string()));
        let missing: Vec<&String> = acked.iter().filter(|k| !present.contains(k)).collect();
        assert!(
            missing.is_empty(),
            "{} acknowledged writes missing at {}: {:?}",
            missing.len(),
            n.endpoint(),
            &missing[..missing.len().min(5)]
        );
    }
    assert_eq!(c.nodes.iter().filter(|n| n.child.is_some()).count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_restarted_with_an_empty_disk_rejoins_as_a_new_incarnation() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader();
    let victim = (leader + 1) % 3;
    let mut l = client(&c.nodes[leader].endpoint()).await;
    for i in 0..50 {
        l.put(format!("k{i:02}"), "v", None).await.expect("put");
    }
    let member_id = client(&c.nodes[victim].endpoint())
        .await
        .status()
        .await
        .expect("status")
        .header()
        .expect("h")
        .member_id();
    c.nodes[victim].kill9();
    c.nodes[victim].wipe();
    l.put("while-away", "1", None).await.expect("put with one member down");
    c.nodes[victim].spawn();
    c.wait_members(3);
    let mut v = client(&c.nodes[victim].endpoint()).await;
    let status = v.status().await.expect("status");
    assert_eq!(status.header().expect("h").member_id(), member_id, "the member id is stable");
    let resp = v
        .get("", Some(GetOptions::new().with_from_key().with_serializable().with_count_only()))
        .await
        .expect("count");
    assert_eq!(resp.count(), 51, "{}", c.logs());
    // The old incarnation is gone: exactly three members, none a learner.
    let members = v.member_list().await.expect("members");
    assert_eq!(members.members().len(), 3);
    // And the cluster still tolerates a failure: stop another member, writes go on.
    let other = (victim + 1) % 3;
    c.nodes[other].kill9();
    let survivor = (0..3).find(|i| *i != other).expect("survivor");
    let mut s = client(&c.nodes[survivor].endpoint()).await;
    s.put("after", "1", None)
        .await
        .expect("write with the new incarnation counted in the quorum");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_restart_with_every_disk_empty_comes_back_from_object_storage() {
    let mut c = Cluster::start(3, r#""durability": "object-storage", "discovery_timeout": "2s","#);
    c.wait_leader();
    let mut any = client(&c.nodes[1].endpoint()).await;
    let mut last = 0;
    for i in 0..100 {
        last = any
            .put(format!("k{i:03}"), format!("{i}"), None)
            .await
            .expect("put")
            .header()
            .expect("h")
            .revision();
    }
    for n in c.nodes.iter_mut() {
        n.kill9();
        n.wipe();
    }
    // Every pod comes back at once, empty.
    std::thread::scope(|s| {
        for n in c.nodes.iter_mut() {
            s.spawn(move || n.spawn());
        }
    });
    c.wait_members(3);
    let mut any = client(&c.nodes[2].endpoint()).await;
    let resp = any.get("k", Some(GetOptions::new().with_prefix())).await.expect("get");
    assert_eq!(resp.kvs().len(), 100, "every acknowledged write survives");
    let next = any.put("after", "1", None).await.expect("put").header().expect("h").revision();
    assert_eq!(next, last + 1, "the revision continues");
    let cluster: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.objects.path().join("cluster.json")).expect("cluster.json")).expect("json");
    assert_eq!(cluster["epoch"], 2, "{cluster}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_on_a_follower_sees_every_revision_once_across_a_leader_change() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader();
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let mut w = client(&c.nodes[follower].endpoint()).await;
    let start = w.put("w/start", "0", None).await.expect("put").header().expect("h").revision();
    let mut stream = w
        .watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(start)))
        .await
        .expect("watch");
    let mut writer = client(&c.nodes[other].endpoint()).await;
    let mut written = vec![start];
    for i in 0..30 {
        written.push(
            writer
                .put(format!("w/{i}"), "v", None)
                .await
                .expect("put")
                .header()
                .expect("h")
                .revision(),
        );
    }
    c.nodes[leader].kill9();
    for i in 30..60 {
        loop {
            match writer.put(format!("w/{i}"), "v", None).await {
                Ok(r) => {
                    written.push(r.header().expect("h").revision());
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < written.len() {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("events in time")
            .expect("watch stream")
            .expect("watch response");
        for e in msg.events() {
            assert_eq!(e.event_type(), EventType::Put);
            seen.push(e.kv().expect("kv").mod_revision());
        }
    }
    assert_eq!(seen, written, "every revision exactly once, in order");
}

/// The etcd member id of member `i`.
async fn member_id(c: &Cluster, i: usize) -> u64 {
    let status = client(&c.nodes[i].endpoint()).await.status().await.expect("status");
    status.header().expect("header").member_id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn move_leader_hands_over_to_the_chosen_member_while_writes_go_on() {
    let c = Cluster::start(3, "");
    let leader = c.wait_leader();
    let (target, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let target_id = member_id(&c, target).await;
    let writers = Writers::start(c.endpoints());
    writers.wait_for(100, Duration::from_secs(20), "writes before the transfer");

    // Asked of a follower, which forwards it to the leader.
    let started = Instant::now();
    let mut via = client(&c.nodes[other].endpoint()).await;
    via.move_leader(target_id).await.expect("move leader");
    println!("MoveLeader took {:?}", started.elapsed());
    let status = client(&c.nodes[target].endpoint()).await.status().await.expect("status");
    assert_eq!(status.leader(), target_id, "the transferee leads once MoveLeader returns");
    assert_eq!(c.leader(), Some(target));

    // Unknown members are refused with etcd's error, and nothing changes.
    let err = via.move_leader(0x1234).await.expect_err("unknown transferee");
    assert!(err.to_string().contains("etcdserver: bad leader transferee"), "{err}");
    assert_eq!(c.leader(), Some(target));

    // etcdctl finds the leader among its endpoints and moves leadership back.
    let back = format!("{:x}", member_id(&c, leader).await);
    let endpoints = c.endpoints().join(",");
    let (ok, out, err) = etcdctl(&endpoints, &["move-leader", &back]);
    assert!(ok && out.contains("Leadership transferred"), "{out} {err}");
    assert_eq!(c.leader(), Some(leader));

    let before = writers.count();
    writers.wait_for(before + 100, Duration::from_secs(20), "writes after the transfers");
    let (_, failed) = writers.finish().await;
    assert_eq!(
        failed, 0,
        "writes failed during the transfers (they should wait and go to the new leader)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_stopped_with_sigterm_hands_over_first() {
    let (mut c, leader, writers) = three_members_writing_through_followers("writes before the stop");
    let stopped_at = Instant::now();
    tokio::task::block_in_place(|| c.nodes[leader].terminate());
    let log = c.nodes[leader].log();
    assert!(log.contains("leadership transferred"), "{log}");
    let before = writers.count();
    writers.wait_for(before + 100, Duration::from_secs(20), "writes after the stop");
    let longest_wait = writers
        .sent_after(stopped_at)
        .into_iter()
        .map(|(sent, done)| done.duration_since(sent))
        .max();
    println!("SIGTERM to the leader: slowest write after it took {longest_wait:?}");
    let (_, failed) = writers.finish().await;
    assert_eq!(failed, 0, "writes through the followers failed");
    assert!(c.leader().is_some_and(|l| l != leader));
}

/// Whether the request never left the client (`netsy_testkit::never_sent`); an error
/// making the connection is one too.
fn never_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => netsy_testkit::never_sent(s),
        _ => false,
    }
}

/// Whether etcd's Go client retries `e` through another member by itself: a request
/// never sent; and for a read (idempotent), also `Unavailable` or a connection broken in
/// flight (tonic's Unknown "transport error"). A write cut off in flight may have been
/// applied: the client returns that error to its caller.
fn retried_by_etcds_client(e: &etcd_client::Error, write: bool) -> bool {
    if never_sent(e) {
        return true;
    }
    let etcd_client::Error::GRpcStatus(s) = e else { return false };
    !write && (s.code() == tonic::Code::Unavailable || (s.code() == tonic::Code::Unknown && s.message() == "transport error"))
}

/// Puts and linearizable gets in loops through `endpoint` (one client each) and a watch
/// and a lease keep-alive stream on it, until `stop` (which stops the server) has
/// returned: the requests that failed with an error etcd's client would not retry on
/// another member, or that got no answer, each with when it happened; and how each
/// stream ended.
async fn requests_through_a_stop(endpoint: &str, stop: impl FnOnce()) -> (Vec<String>, Vec<String>) {
    let mut w = client(endpoint).await;
    let mut events = w.watch("k/", Some(WatchOptions::new().with_prefix())).await.expect("watch");
    let lease = w.lease_grant(60, None).await.expect("lease").id();
    let (mut keeper, mut kept) = w.lease_keep_alive(lease).await.expect("keep-alive");
    keeper.keep_alive().await.expect("keep alive");
    kept.message().await.expect("keep-alive response");
    let done = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..6 {
        let (endpoint, done, answered) = (endpoint.to_string(), done.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            let mut wrong = Vec::new();
            let mut c = client(&endpoint).await;
            let mut i = 0u64;
            let write = n % 2 == 0;
            while !done.load(Ordering::Relaxed) {
                i += 1;
                let key = format!("k/{n}");
                let request = async {
                    if write {
                        c.put(key, i.to_string(), None).await.map(drop)
                    } else {
                        c.get(key, None).await.map(drop)
                    }
                };
                match tokio::time::timeout(Duration::from_secs(15), request).await {
                    Ok(Ok(())) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) if retried_by_etcds_client(&e, write) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Ok(Err(e)) => wrong.push(format!("{:?}: {e}", t0.elapsed())),
                    Err(_) => wrong.push(format!("{:?}: no answer in 15 s", t0.elapsed())),
                }
            }
            wrong
        }));
    }
    wait_until(Duration::from_secs(20), "requests through the member", || {
        answered.load(Ordering::Relaxed) >= 200
    });
    let stopping = t0.elapsed();
    tokio::task::block_in_place(stop);
    let exited = t0.elapsed();
    done.store(true, Ordering::Relaxed);
    let mut wrong = Vec::new();
    for t in tasks {
        wrong.extend(t.await.expect("client task"));
    }
    if !wrong.is_empty() {
        wrong.push(format!("(SIGTERM at {stopping:?}, exited at {exited:?})"));
    }
    let watch = loop {
        if let Some(ended) = stream_end("watch", tokio::time::timeout(Duration::from_secs(5), events.message()).await) {
            break ended;
        }
    };
    let _ = keeper.keep_alive().await;
    let keep_alive = stream_end("keep-alive", tokio::time::timeout(Duration::from_secs(5), kept.message()).await)
        .unwrap_or_else(|| "keep-alive: answered".to_string());
    (wrong, vec![watch, keep_alive])
}

/// How a stream's next message (waited for a while) says it ended; `None` for a message.
fn stream_end<T>(what: &str, next: Result<Result<Option<T>, etcd_client::Error>, tokio::time::error::Elapsed>) -> Option<String> {
    match next {
        Ok(Ok(Some(_))) => None,
        Ok(Ok(None)) => Some(format!("{what}: ended without a status")),
        Ok(Err(e)) => Some(format!("{what}: {e}")),
        Err(_) => Some(format!("{what}: still open")),
    }
}

/// A member stopped with SIGTERM while clients read and write through it answers every
/// request it took or fails it with an error etcd's client retries through another
/// member: none is cut off with `Cancelled` or a broken connection, and none hangs. Its
/// watches and lease keep-alives end at once with etcd's "server stopped"
/// (Unavailable, which etcd's client answers by moving them to another member), so the
/// member does not wait out its drain for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_stopped_with_sigterm_ends_its_requests_with_retriable_errors() {
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader();
    let stopped = (leader + 1) % 3;
    let endpoint = c.nodes[stopped].endpoint();
    let mut took = Duration::ZERO;
    let (wrong, streams) = requests_through_a_stop(&endpoint, || {
        let started = Instant::now();
        c.nodes[stopped].terminate();
        took = started.elapsed();
    })
    .await;
    println!("SIGTERM to a member with clients on it: exited after {took:?}");
    let log = c.nodes[stopped].log();
    assert!(wrong.is_empty(), "requests that etcd's client would not retry: {wrong:?}\n{log}");
    for s in &streams {
        assert!(
            s.contains("currently unavailable") && s.contains("etcdserver: server stopped"),
            "{streams:?}"
        );
    }
    assert!(
        took < Duration::from_secs(4),
        "the member took {took:?} to stop (its drain waited for a stream)\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_cut_off_while_the_cluster_is_rebuilt_stops_and_rejoins_the_new_epoch() {
    let mut c = Cluster::start(3, r#""durability": "object-storage", "discovery_timeout": "2s","#);
    c.wait_leader();
    let mut any = client(&c.nodes[1].endpoint()).await;
    for i in 0..20 {
        any.put(format!("k{i:02}"), "v", None).await.expect("put");
    }
    // netsy-0 is cut off; the other two lose their disks and rebuild from object storage.
    c.net.isolate(0, 3);
    for i in [1, 2] {
        c.nodes[i].kill9();
        c.nodes[i].wipe();
    }
    tokio::task::block_in_place(|| {
        c.nodes[1].spawn();
        c.nodes[2].spawn();
    });
    let mut fresh = client(&c.nodes[1].endpoint()).await;
    fresh.put("after-rebuild", "1", None).await.expect("the new epoch serves");
    assert!(c.nodes[1].log().contains("rebuilt from object storage"), "{}", c.logs());

    // The old member sees cluster.json move on and stops instead of serving a stale epoch.
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(30), "netsy-0 to stop", || {
            c.nodes[0].child.as_mut().is_some_and(|ch| ch.try_wait().ok().flatten().is_some())
        })
    });
    assert!(
        c.nodes[0].log().contains("object storage moved to a newer epoch"),
        "{}",
        c.nodes[0].log()
    );

    // Restarted with its old disk, it sets that aside and joins the new epoch.
    c.net.heal();
    tokio::task::block_in_place(|| {
        c.nodes[0].spawn();
        c.wait_members(3);
    });
    let log = c.nodes[0].log();
    assert!(log.contains("set it aside"), "{log}");
    assert!(c.nodes[0].data_dir().join("stale-epoch-1").is_dir());
    let mut old = client(&c.nodes[0].endpoint()).await;
    let resp = old
        .get("", Some(GetOptions::new().with_from_key().with_count_only()))
        .await
        .expect("count");
    assert_eq!(resp.count(), 21, "{}", c.logs());
    assert_eq!(old.member_list().await.expect("members").members().len(), 3);
}

/// Scaling down: a pod that stays away longer than `deregistration_timeout` is removed
/// from the membership, so the remaining members form the quorum; if it comes back with
/// its disk, it asks to be admitted again. Too few reachable voters are never removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_away_longer_than_the_deregistration_timeout_is_removed_and_may_come_back() {
    let mut c = Cluster::start(3, r#""deregistration_timeout": "2s","#);
    let leader = c.wait_leader();
    let gone = (leader + 1) % 3;
    let gone_id = member_id(&c, gone).await;
    c.nodes[gone].kill9();
    tokio::task::block_in_place(|| c.wait_members(2));
    let mut l = client(&c.nodes[leader].endpoint()).await;
    let members = l.member_list().await.expect("members");
    assert!(members.members().iter().all(|m| m.id() != gone_id), "{members:?}");
    l.put("after-scale-down", "1", None).await.expect("a write with two voters");

    // It comes back with its disk: admitted again under its member id, with the data.
    c.nodes[gone].spawn();
    tokio::task::block_in_place(|| c.wait_members(3));
    assert_eq!(member_id(&c, gone).await, gone_id);
    let mut g = client(&c.nodes[gone].endpoint()).await;
    assert_eq!(value(&mut g, "after-scale-down", false).await.as_deref(), Some("1"));

    // Two of three away: the leader keeps both (removing either could not commit).
    let leader = c.wait_leader();
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for &i in &others {
        c.nodes[i].kill9();
    }
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(20), "the leader to refuse an unsafe removal", || {
            c.nodes[leader].log().contains("too few remain to remove them safely")
        })
    });
    for &i in &others {
        c.nodes[i].spawn();
    }
    tokio::task::block_in_place(|| c.wait_members(3));
    let mut any = client(&c.nodes[others[0]].endpoint()).await;
    any.put("all-back", "1", None).await.expect("a write once everyone is back");
}

/// A member that falls further behind than the leader's log reaches catches up from a
/// Raft snapshot, which the leader streams from its snapshot file in chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_far_behind_catches_up_from_a_snapshot_sent_in_chunks() {
    let chunk = 65_536;
    let c = Cluster::start(
        3,
        &format!(r#""raft": {{ "snapshot_log_entries": 50, "snapshot_chunk_bytes": {chunk} }},"#),
    );
    let leader = c.wait_leader();
    let behind = (leader + 1) % 3;
    c.net.isolate(behind, 3);
    let mut l = client(&c.nodes[leader].endpoint()).await;
    let big = "x".repeat(2048);
    for i in 0..400 {
        l.put(format!("far/{i:04}"), big.as_str(), None).await.expect("put");
    }
    c.net.heal();

    let endpoint = c.nodes[behind].endpoint();
    let mut b = client(&endpoint).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = b
            .get("far/", Some(GetOptions::new().with_prefix().with_count_only().with_serializable()))
            .await
            .expect("serializable count");
        if resp.count() == 400 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} of 400 keys\n{}",
            endpoint,
            resp.count(),
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = c.nodes[behind].log();
    let installed: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("installing raft snapshot"))
        .filter_map(|l| l.split("bytes=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(
        installed.iter().any(|&bytes| bytes > 10 * chunk),
        "no snapshot of more than 10 chunks installed: {installed:?}\n{log}"
    );
    assert_eq!(value(&mut b, "far/0399", true).await.as_deref(), Some(big.as_str()));
}

/// openraft counts log entries only; the log's size in bytes also triggers a snapshot
/// (`raft.snapshot_log_bytes`), so large writes cannot grow the Raft log unbounded before the
/// entry count is reached. The node restarts from that snapshot with every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_log_is_snapshotted_long_before_the_entry_count() {
    let mut n = common::Netsy::start_with(r#""raft": { "snapshot_log_bytes": 65536 },"#);
    let mut c = n.client().await;
    let big = "x".repeat(4096);
    // About 40 entries and 160 KiB of log: far below 100,000 entries.
    for i in 0..40 {
        c.put(format!("big/{i:02}"), big.as_str(), None).await.expect("put");
    }
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(20), "a raft snapshot", || {
            n.log().contains("built raft snapshot")
        })
    });
    n.kill9();
    n.spawn();
    let mut c = n.client().await;
    let resp = c
        .get("big/", Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .expect("count");
    assert_eq!(resp.count(), 40, "{}", n.log());
}

/// A `hasleader` watch on `/registry/p/` from revision `from` on (as kube-apiserver's
/// watch cache opens it), and the sender its progress requests go to.
async fn hasleader_watch(
    channel: tonic::transport::Channel,
    from: i64,
) -> (
    tokio::sync::mpsc::Sender<netsy::proto::etcdserverpb::WatchRequest>,
    Result<tonic::Streaming<netsy::proto::etcdserverpb::WatchResponse>, tonic::Status>,
) {
    use netsy::proto::etcdserverpb as pb;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::WatchRequest>(64);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.metadata_mut().insert("hasleader", "true".parse().expect("metadata"));
    let create = pb::WatchCreateRequest {
        key: b"/registry/p/".to_vec(),
        range_end: b"/registry/p0".to_vec(),
        start_revision: from,
        ..Default::default()
    };
    tx.send(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
    })
    .await
    .expect("create");
    let responses = pb::watch_client::WatchClient::new(channel)
        .watch(request)
        .await
        .map(|r| r.into_inner());
    (tx, responses)
}

/// ConsistentListFromCache as kube-apiserver runs it against a follower: a `hasleader`
/// watch on a prefix, progress requests while another member writes, and a limit-1 read
/// for the current revision that the watch must reach. A progress answer never runs
/// ahead of the events delivered on the stream, on a follower and through a leader kill
/// (after which the member ends `hasleader` streams with "no leader", as etcd does, and
/// the watch is opened again from the next revision, as the apiserver does).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn progress_answers_on_a_follower_never_run_ahead_of_events_across_a_leader_change() {
    use netsy::proto::etcdserverpb as pb;
    let mut c = Cluster::start(3, "");
    let leader = c.wait_leader();
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let channel = tonic::transport::Channel::from_shared(c.nodes[follower].endpoint())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut kv = pb::kv_client::KvClient::new(channel.clone());
    let put = pb::PutRequest {
        key: b"/registry/p/start".to_vec(),
        value: b"0".to_vec(),
        ..Default::default()
    };
    let start = kv.put(put).await.expect("put").into_inner().header.expect("header").revision;
    let (tx, responses) = hasleader_watch(channel.clone(), start + 1).await;
    let mut responses = responses.expect("watch");
    let progress_to = Arc::new(Mutex::new(tx));

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let endpoint = c.nodes[other].endpoint();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut w = client(&endpoint).await;
            let mut acked = 0;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                if w.put(format!("/registry/p/{}", i % 13), "v", None).await.is_ok() {
                    acked += 1;
                    i += 1;
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            acked
        })
    };
    let requester = {
        let progress_to = progress_to.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let progress = pb::WatchRequest {
                    request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(pb::WatchProgressRequest {})),
                };
                let tx = progress_to.lock().expect("sender").clone();
                let _ = tx.send(progress).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let mut delivered = start;
    let (mut progresses, mut reopened, mut reached) = (0, 0, 0);
    let mut killed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // The apiserver's consistent read: the current revision from a limit-1 range, which
    // the watch must then reach.
    let mut target: Option<i64> = None;
    let mut killed_at = i64::MAX;
    while !(killed && reached >= 3 && delivered >= killed_at + 100) {
        if target.is_none() {
            let read = pb::RangeRequest {
                key: b"/registry/p/".to_vec(),
                range_end: b"/registry/p0".to_vec(),
                limit: 1,
                ..Default::default()
            };
            if let Ok(r) = kv.range(read).await {
                target = r.into_inner().header.map(|h| h.revision);
            }
        }
        let msg = match tokio::time::timeout_at(deadline, responses.message())
            .await
            .expect("watch responses in time")
        {
            Ok(Some(msg)) => msg,
            Err(status) if killed && status.code() == tonic::Code::Unavailable => {
                // Watch again once the member has a leader (until then it refuses
                // `hasleader` watches with the same error).
                loop {
                    reopened += 1;
                    let (tx, again) = hasleader_watch(channel.clone(), delivered + 1).await;
                    *progress_to.lock().expect("sender") = tx;
                    match again {
                        Ok(again) => {
                            responses = again;
                            break;
                        }
                        Err(status) => {
                            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                            assert!(tokio::time::Instant::now() < deadline, "no leader in time");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                continue;
            }
            other => panic!("watch stream: {other:?} (killed: {killed}, delivered: {delivered}, reopened: {reopened})"),
        };
        if msg.created {
            continue;
        }
        let h = msg.header.as_ref().expect("header").revision;
        if msg.watch_id == -1 {
            progresses += 1;
            assert!(
                h <= delivered,
                "progress at {h} before events up to {h} were delivered (seen up to {delivered})"
            );
            if target.is_some_and(|t| h >= t) {
                target = None;
                reached += 1;
                if reached >= 3 && !killed && delivered >= start + 100 {
                    c.nodes[leader].kill9();
                    killed = true;
                    killed_at = delivered;
                    reached = 0;
                }
            }
        } else {
            for e in &msg.events {
                let m = e.kv.as_ref().expect("kv").mod_revision;
                assert_eq!(m, delivered + 1, "events are contiguous");
                delivered = m;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.expect("writer");
    requester.await.expect("requester");
    assert!(progresses >= 6, "{progresses} progress answers");
    assert!(reopened <= 100, "watched again {reopened} times");
    assert!(acked > 10, "the writer wrote through the leader change");
}

/// A member whose disk was wiped rejoins with one Raft snapshot and then the log, even
/// though the leader builds newer snapshots (and purges its log) while the first one
/// streams: the leader keeps the entries that follow the snapshot in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_member_installs_one_snapshot_while_the_leader_keeps_snapshotting() {
    // A snapshot every 100 entries, sent in 4 KiB chunks: the state (8 MiB of values)
    // takes seconds to stream, while the writes below make the leader snapshot several
    // times.
    let mut c = Cluster::start(3, r#""raft": { "snapshot_log_entries": 100, "snapshot_chunk_bytes": 4096 },"#);
    let leader = c.wait_leader();
    let victim = (leader + 1) % 3;
    let mut l = client(&c.nodes[leader].endpoint()).await;
    let big = "x".repeat(32 << 10);
    for i in 0..256 {
        l.put(format!("big/{i:03}"), big.as_str(), None).await.expect("put");
    }
    c.nodes[victim].kill9();
    c.nodes[victim].wipe();

    // Steady small writes through the leader while the member rejoins.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        let mut l = client(&c.nodes[leader].endpoint()).await;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = written.load(Ordering::Relaxed);
                l.put(format!("steady/{n:06}"), "v", None).await.expect("steady put");
                written.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let built = |c: &Cluster| c.nodes[leader].log().matches("built raft snapshot").count();
    let built_before = built(&c);
    let started = Instant::now();
    c.nodes[victim].spawn();
    let applied = |i: usize| c.nodes[i].metric("etcd_server_applied_index");
    // Caught up: the member has applied what the leader had applied a moment before.
    let caught_up = || {
        let target = applied(leader);
        target > 0.0 && applied(victim) >= target
    };
    let under_load = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if caught_up() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    });
    let rejoin = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !caught_up() {
            assert!(
                Instant::now() < deadline,
                "member {victim} never caught up: applied {} of the leader's {}, {} snapshots installed\n{}",
                applied(victim),
                applied(leader),
                c.nodes[victim].log().matches("installing raft snapshot").count(),
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let installs = c.nodes[victim].log().matches("installing raft snapshot").count();
    let leader_snapshots = built(&c) - built_before;
    println!(
        "rejoin under load: caught up {under_load} after {rejoin:?}, {installs} snapshot install(s), \
         {leader_snapshots} leader snapshots meanwhile, {} steady writes",
        written.load(Ordering::Relaxed)
    );
    assert!(
        leader_snapshots >= 2,
        "the leader snapshotted only {leader_snapshots} times meanwhile"
    );
    assert_eq!(installs, 1, "snapshots installed by the rejoining member\n{}", c.logs());
    // etcd's snapshot metrics count the same on both ends.
    assert_eq!(c.nodes[victim].metric("etcd_network_snapshot_receive_success"), 1.0);
    assert_eq!(c.nodes[leader].metric("etcd_network_snapshot_send_success"), 1.0);
    assert_eq!(c.nodes[leader].metric("etcd_network_snapshot_send_inflights_total"), 0.0);
    assert!(under_load, "the member did not catch up under load within 60 s");
    let mut v = client(&c.nodes[victim].endpoint()).await;
    let resp = v
        .get("big/", Some(GetOptions::new().with_prefix().with_count_only().with_serializable()))
        .await
        .expect("count");
    assert_eq!(resp.count(), 256);
}
