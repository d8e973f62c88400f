//! Chaos: netsy under faults beyond the ones the other modules inject.

use std::time::{Duration, Instant};

use crate::common::tmpfs::Tmpfs;
use crate::common::Cluster;

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
    c.nodes[2].child = None;
    tokio::task::block_in_place(|| {
        c.nodes[2].spawn();
        c.wait_members(3);
    });
    let mut back = Client::connect([c.nodes[2].endpoint()], None).await.expect("connect");
    let kvs = back
        .get("disk/", Some(etcd_client::GetOptions::new().with_prefix().with_keys_only()))
        .await
        .expect("read through the restarted member");
    let keys: Vec<String> = kvs.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).into_owned()).collect();
    for key in &acked {
        assert!(keys.contains(key), "{key} was acknowledged but netsy-2 does not have it");
    }
}
