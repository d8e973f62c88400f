//! Calls today's kube-apiserver (1.31–1.37) makes, in the shapes it makes them, beside
//! real etcd 3.5.1 where the answer can be compared: the feature support checker's
//! Status (version and database sizes), the compactor's bookkeeping Txn on
//! `compact_rev_key` and the watch on it, exact past-revision lists (paged as the
//! apiserver pages them) for DetectCacheInconsistency, and keys-only lists (the size
//! estimate of SizeBasedListCostEstimate).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions};

use crate::common::{Etcd, Netsy};

const COMPACT_REV_KEY: &str = "compact_rev_key";

/// kube-apiserver's `etcd3.compact`: move `compact_rev_key` from version `seen` to `rev`
/// (only if nobody else did), then compact at `rev` when this one won. Returns whether it
/// won and the key's version afterwards.
async fn compactor_round(c: &mut Client, seen: i64, rev: i64) -> (bool, i64) {
    let txn = Txn::new()
        .when([Compare::version(COMPACT_REV_KEY, CompareOp::Equal, seen)])
        .and_then([TxnOp::put(COMPACT_REV_KEY, rev.to_string(), None)])
        .or_else([TxnOp::get(COMPACT_REV_KEY, None)]);
    let resp = c.txn(txn).await.expect("compactor txn");
    let won = resp.succeeded();
    if won {
        c.compact(rev, None).await.expect("compact");
    }
    let version = c
        .get(COMPACT_REV_KEY, None)
        .await
        .expect("get")
        .kvs()
        .first()
        .map_or(0, |kv| kv.version());
    (won, version)
}

/// The compactor on both servers: the same Txn outcomes, versions, and watch events.
#[tokio::test]
async fn the_compactor_bookkeeping_and_its_watch_answer_as_etcd() {
    let netsy = Netsy::start();
    let etcd = Etcd::start();
    let mut seen = Vec::new();
    for endpoint in [netsy.endpoint(), format!("http://{}", etcd.endpoint())] {
        let mut c = Client::connect([endpoint], None).await.expect("connect");
        let mut events = c
            .watch(COMPACT_REV_KEY, Some(WatchOptions::new().with_prev_key()))
            .await
            .expect("watch");
        let mut outcomes = Vec::new();
        let mut version = 0;
        for round in 0..3 {
            for i in 0..5 {
                c.put(format!("/registry/pods/p{i}"), format!("r{round}"), None).await.expect("put");
            }
            let rev = c
                .get("/registry/pods/p0", None)
                .await
                .expect("get")
                .header()
                .expect("header")
                .revision();
            let (won, v) = compactor_round(&mut c, version, rev).await;
            // A second apiserver with the old version loses the race and learns the new one.
            let (lost, v2) = compactor_round(&mut c, version, rev).await;
            outcomes.push((won, v, lost, v2));
            version = v;
        }
        let mut watched = Vec::new();
        while watched.len() < 3 {
            let resp = tokio::time::timeout(std::time::Duration::from_secs(10), events.message())
                .await
                .expect("an event in time")
                .expect("watch")
                .expect("an event");
            for e in resp.events() {
                let kv = e.kv().expect("kv");
                watched.push((kv.version(), e.prev_kv().map(|p| p.version())));
            }
        }
        // Reads below the compaction fail as etcd's do.
        let compacted = c
            .get("/registry/pods/p0", Some(GetOptions::new().with_revision(2)))
            .await
            .unwrap_err()
            .to_string();
        seen.push((outcomes, watched, compacted));
    }
    assert_eq!(seen[0], seen[1], "netsy, then etcd");
    assert_eq!(seen[0].0.iter().map(|o| (o.0, o.2)).collect::<Vec<_>>(), vec![(true, false); 3]);
}

fn hash_of(kvs: &[etcd_client::KeyValue]) -> u64 {
    let mut h = DefaultHasher::new();
    for kv in kvs {
        (kv.key(), kv.value(), kv.create_revision(), kv.mod_revision(), kv.version()).hash(&mut h);
    }
    h.finish()
}

/// A list at an exact past revision, whole or in pages of `page` from a continue key as
/// kube-apiserver pages it: the same keys, values and revisions every time.
async fn list_at(c: &mut Client, rev: i64, page: i64) -> Vec<etcd_client::KeyValue> {
    let mut out = Vec::new();
    let mut from = b"/registry/cm/".to_vec();
    loop {
        let opts = GetOptions::new().with_range("/registry/cm0").with_revision(rev).with_limit(page);
        let resp = c.get(from.clone(), Some(opts)).await.expect("list");
        out.extend(resp.kvs().iter().cloned());
        if !resp.more() {
            return out;
        }
        from = [resp.kvs().last().expect("a key").key(), &[0]].concat();
    }
}

#[tokio::test]
async fn exact_past_revision_lists_hash_alike_before_and_after_writes_and_compaction() {
    let n = Netsy::start();
    let mut c = n.client().await;
    for i in 0..300 {
        c.put(format!("/registry/cm/{i:04}"), format!("v{i}"), None).await.expect("put");
    }
    let rev = c
        .get("/registry/cm/0000", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    let whole = list_at(&mut c, rev, 0).await;
    assert_eq!(whole.len(), 300);
    let expected = hash_of(&whole);
    assert_eq!(hash_of(&list_at(&mut c, rev, 7).await), expected, "paged");
    for i in 0..150 {
        c.put(format!("/registry/cm/{i:04}"), "changed", None).await.expect("put");
    }
    c.delete("/registry/cm/02", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .expect("delete");
    c.compact(rev - 100, None).await.expect("compact below the listed revision");
    assert_eq!(hash_of(&list_at(&mut c, rev, 0).await), expected, "after writes and a compaction");
    assert_eq!(
        hash_of(&list_at(&mut c, rev, 50).await),
        expected,
        "paged after writes and a compaction"
    );
    assert_ne!(hash_of(&list_at(&mut c, 0, 0).await), expected, "the current list differs");
}

/// The size estimate lists keys only: no values come back, and the count is exact.
#[tokio::test]
async fn keys_only_lists_carry_no_values() {
    let n = Netsy::start();
    let mut c = n.client().await;
    for i in 0..200 {
        c.put(format!("/registry/secrets/s{i:03}"), vec![b'x'; 10 * 1024], None)
            .await
            .expect("put");
    }
    let resp = c
        .get("/registry/secrets/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .expect("keys only");
    assert_eq!((resp.kvs().len(), resp.count()), (200, 200));
    assert!(resp.kvs().iter().all(|kv| kv.value().is_empty() && kv.mod_revision() > 0));
    let counted = c
        .get("/registry/secrets/", Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .expect("count only");
    assert_eq!((counted.kvs().len(), counted.count()), (0, 200));
}

/// The feature support checker reads Status on every endpoint: a semver at or above
/// 3.5.13 (so watch progress requests are enabled) and database sizes that track the data.
#[tokio::test]
async fn status_gives_the_feature_checker_a_version_and_meaningful_sizes() {
    let n = Netsy::start();
    let mut c = n.client().await;
    let status = c.status().await.expect("status");
    let parts: Vec<u64> = status.version().split('.').map(|p| p.parse().expect("a number")).collect();
    assert!(
        parts.len() == 3 && (parts[0], parts[1], parts[2]) >= (3, 5, 13),
        "{}",
        status.version()
    );
    let (size, in_use) = (status.db_size(), status.raft_used_db_size());
    assert!(size > 0 && in_use > 0 && in_use <= size, "{size} {in_use}");
    for i in 0..100 {
        c.put(format!("/big/{i}"), vec![b'x'; 50 * 1024], None).await.expect("put");
    }
    let grown = c.status().await.expect("status");
    assert!(
        grown.raft_used_db_size() >= in_use + 4 * 1024 * 1024,
        "{} vs {in_use}",
        grown.raft_used_db_size()
    );
    c.delete("/big/", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .expect("delete");
    // A large value is stored once, in its history row: a compaction after the delete
    // drops it (one at the delete's revision keeps the rows it replaced, for prev_kv).
    let rev = c.put("x", "1", None).await.expect("put").header().expect("header").revision();
    c.compact(rev, None).await.expect("compact");
    c.defragment().await.expect("defragment");
    let shrunk = c.status().await.expect("status");
    assert!(
        shrunk.raft_used_db_size() + 4 * 1024 * 1024 <= grown.raft_used_db_size(),
        "{} vs {}",
        shrunk.raft_used_db_size(),
        grown.raft_used_db_size()
    );
    assert!(shrunk.raft_used_db_size() <= shrunk.db_size());
}
