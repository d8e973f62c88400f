//! A leader cut off from the others, as its clients see it. The robustness runs check
//! the guarantees below (`history::check_lease`, `observe`) but seldom hit these cases
//! (their partitions heal before a lease's TTL runs out); these tests do it on purpose.
//!
//! An openraft 0.9 leader that cannot reach a quorum does not step down (etcd's leader
//! does, after an election timeout: CheckQuorum), so its Raft state says it leads for as
//! long as the partition lasts. netsy makes up for it where a client can tell:
//! - A lease must not expire before its TTL has passed since its last acknowledged
//!   keep-alive. The majority's new leader starts every TTL afresh when elected and then
//!   expires leases, so a renewal must first confirm leadership with a quorum (a ReadIndex
//!   round, `core::lease`; etcd's CheckQuorum steps such a leader down instead); before that
//!   fix the cut-off leader answered every keep-alive with the full TTL and the lease
//!   expired up to a TTL early.
//! - A watch opened with `hasleader` must end when its member has no leader. A leader
//!   that has not heard from a quorum for two election timeouts counts as none
//!   (`Replica::has_leader`); before that fix the stream stayed open and silent for the
//!   whole partition, and a kube-apiserver bound to that member did not fail over.
//!

use std::time::{Duration, Instant};

use crate::common::Cluster;
use etcd_client::{Client, ConnectOptions, EventType, PutOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keep_alives_to_a_cut_off_leader_do_not_outlive_the_lease() {
    const TTL: i64 = 2;
    let cluster = Cluster::start(3, super::CLUSTER_CONFIG);
    let leader = cluster.wait_leader();
    let follower = (leader + 1) % 3;
    let start = Instant::now();
    let mut at_leader = Client::connect([cluster.nodes[leader].endpoint()], None).await.expect("connect");
    let mut at_follower = Client::connect([cluster.nodes[follower].endpoint()], None).await.expect("connect");
    let lease = at_leader.lease_grant(TTL, None).await.expect("grant").id();
    at_leader
        .put("held", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put with the lease");
    let mut watch = at_follower.watch("held", None).await.expect("watch");
    assert!(watch.message().await.expect("created").expect("created").created());
    // When the majority side deletes the key.
    let deleted = tokio::spawn(async move {
        while let Ok(Some(r)) = watch.message().await {
            if r.events().iter().any(|e| e.event_type() == EventType::Delete) {
                return Some(start.elapsed());
            }
        }
        None
    });

    let (mut keeper, mut answers) = at_leader.lease_keep_alive(lease).await.expect("keep-alive stream");
    let cut = start.elapsed();
    cluster.net.isolate(leader, 3);
    // Keep the lease alive through the cut-off leader, as a client bound to it would,
    // until the lease is gone or the keep-alives stop being answered.
    let mut last_renewal = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until && !deleted.is_finished() {
        let sent = start.elapsed();
        if keeper.keep_alive().await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(3), answers.message()).await {
            Ok(Ok(Some(a))) if a.ttl() > 0 => last_renewal = sent,
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let deleted = tokio::time::timeout(Duration::from_secs(15), deleted)
        .await
        .expect("the lease expires on the majority side")
        .expect("watch task")
        .expect("a delete event");
    cluster.net.heal();
    let due = last_renewal + Duration::from_secs(TTL as u64);
    assert!(
        deleted >= due,
        "the lease expired {:?} into the test, but a keep-alive sent {:?} into it (the leader was cut off at {cut:?}) \
         was answered with TTL {TTL} s: it expired {:?} early",
        deleted,
        last_renewal,
        due - deleted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hasleader_watch_on_a_cut_off_leader_ends() {
    let cluster = Cluster::start(3, super::CLUSTER_CONFIG);
    let leader = cluster.wait_leader();
    let options = ConnectOptions::new().with_require_leader(true);
    let client = Client::connect([cluster.nodes[leader].endpoint()], Some(options))
        .await
        .expect("connect");
    let mut watch = client.watch_client().watch("x", None).await.expect("watch");
    assert!(watch.message().await.expect("created").expect("created").created());
    cluster.net.isolate(leader, 3);
    // etcd's leader steps down after an election timeout (1 s by default) and ends its
    // hasleader streams within a few more; netsy's election timeout is 0.5–1 s.
    let ended = tokio::time::timeout(Duration::from_secs(8), watch.message()).await;
    let still_leader = cluster.nodes[leader].metric("etcd_server_is_leader");
    cluster.net.heal();
    assert!(
        ended.is_ok(),
        "the hasleader watch on the cut-off leader was still open and silent after 8 s (it still reports is_leader = {still_leader})"
    );
}
