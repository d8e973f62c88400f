//! Space reclaim in a cluster: compaction's deletions after the apply and defragmentation
//! in steps (`mvcc::reclaim`) leave every member hashing alike and writes flowing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::Cluster;

async fn put(client: &mut etcd_client::Client, key: String, value: Vec<u8>) -> i64 {
    client
        .put(key, value, None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision()
}

fn alike(hashes: &[u32]) -> bool {
    hashes.windows(2).all(|w| w[0] == w[1])
}

/// Each member's HashKV at `revision`, once it has applied it.
async fn hashes(c: &Cluster, revision: i64) -> Vec<u32> {
    let mut out = Vec::new();
    for (i, node) in c.nodes.iter().enumerate() {
        let mut m = node.client().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match m.hash_kv(revision).await {
                Ok(h) => break out.push(h.hash()),
                Err(e) if Instant::now() > deadline => panic!("member {i}: HashKV at {revision}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn members_hash_alike_through_compaction_and_defragment_under_writes() {
    let c = Cluster::start(3, "");
    let mut client = c.nodes[0].client().await;
    // History: 3 rounds over 200 keys of 6 KiB values.
    let mut head = 0;
    for round in 0..3u8 {
        for k in 0..200 {
            head = put(&mut client, format!("k{k:03}"), vec![round; 6 * 1024]).await;
        }
    }
    let before = hashes(&c, head).await;
    assert!(alike(&before), "{before:?}");
    let sizes_before: Vec<i64> = {
        let mut v = Vec::new();
        for node in &c.nodes {
            v.push(node.client().await.status().await.expect("status").db_size());
        }
        v
    };

    // A compaction answers once applied; the members delete its history at their own
    // pace and hash alike meanwhile.
    client.compact(head, None).await.expect("compact");
    let compacted = hashes(&c, head).await;
    assert!(alike(&compacted), "members differ right after compacting: {compacted:?}");
    assert_ne!(compacted[0], before[0], "HashKV covers what compaction keeps (as etcd's)");

    // Writes go on through every member's defragmentation.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut client, stop) = (c.nodes[0].client().await, stop.clone());
        tokio::spawn(async move {
            let (mut done, mut longest) = (0u32, Duration::ZERO);
            while !stop.load(Ordering::Acquire) {
                let started = Instant::now();
                client
                    .put(format!("w{done}"), vec![7u8; 512], None)
                    .await
                    .expect("a put during defragmentation");
                longest = longest.max(started.elapsed());
                done += 1;
            }
            (done, longest)
        })
    };
    for (i, node) in c.nodes.iter().enumerate() {
        let mut m = node.client().await;
        m.defragment().await.unwrap_or_else(|e| panic!("defragmenting member {i}: {e}"));
        let after = m.status().await.expect("status").db_size();
        assert!(
            after < sizes_before[i] * 3 / 4,
            "member {i}: defragmentation gave the compacted history back ({} → {after} bytes)",
            sizes_before[i]
        );
    }
    stop.store(true, Ordering::Release);
    let (done, longest) = writer.await.expect("writer");
    assert!(done > 0);
    assert!(longest < Duration::from_secs(5), "a put waited {longest:?} during defragmentation");

    assert_eq!(hashes(&c, head).await, compacted, "deleting the compacted history changes no hash");
    let last = put(&mut client, "last".into(), b"x".to_vec()).await;
    let after = hashes(&c, last).await;
    assert!(alike(&after), "members differ after reclaim: {after:?}");
    // History at and after the compact revision is still served.
    let r = client
        .get("k000", Some(etcd_client::GetOptions::new().with_revision(head)))
        .await
        .expect("read at the compact revision");
    assert_eq!(r.kvs()[0].value(), vec![2u8; 6 * 1024].as_slice());
}
