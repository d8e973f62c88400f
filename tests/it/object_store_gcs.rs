//! The GCS backend against fake-gcs-server (`make test` installs it; see
//! tests/it/common/gcs.rs for the one call a test proxy translates and why), with
//! credentials from a GCE metadata server as GKE Workload Identity serves them.

use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, UpdateVersion};

use crate::common;
use crate::common::gcs::{emulator_bin, FakeGcs, GcsProxy, MetadataServer};
use crate::restore::all_keys;

/// The emulator, a metadata server serving `token`, the proxy in front of the emulator
/// that requires that token, and this process's environment pointed at that metadata
/// server (for stores built here).
fn setup(bucket: &str, token: &str) -> (FakeGcs, MetadataServer, GcsProxy, tempfile::TempDir) {
    let fake = FakeGcs::start(&emulator_bin());
    fake.create_bucket(bucket);
    let metadata = MetadataServer::start(token);
    let proxy = GcsProxy::start(fake.port, token);
    let home = tempfile::tempdir().expect("tempdir");
    for (k, v) in metadata.env(home.path()) {
        std::env::set_var(k, v);
    }
    (fake, metadata, proxy, home)
}

/// Every request reached the emulator with the metadata server's token; nothing was
/// refused or left untranslated.
fn assert_all_authorized(proxy: &GcsProxy, metadata: &MetadataServer) {
    let seen = proxy.seen();
    assert!(!seen.is_empty());
    let expected = format!("Bearer {}", metadata.token);
    for s in &seen {
        assert_eq!(s.authorization.as_deref(), Some(expected.as_str()), "{s:?}");
        assert!(s.status != 401 && s.status != 501 && s.status != 502, "{s:?}");
    }
    assert!(metadata.served.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_eq!(metadata.refused.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn gcs_conditional_puts_fence_writers() {
    let (_fake, metadata, proxy, _home) = setup("netsy-test", "ya29.conditional");
    let store = proxy.store("netsy-test", "clusters/prod");

    let seg = Path::from("epochs/1/wal/00000000000000000001-00000000000000000010.seg");
    store.put_opts(&seg, "frames".into(), PutMode::Create.into()).await.unwrap();
    let again = store.put_opts(&seg, "stale leader".into(), PutMode::Create.into()).await;
    assert!(matches!(again, Err(object_store::Error::AlreadyExists { .. })), "{again:?}");
    assert_eq!(store.get(&seg).await.unwrap().bytes().await.unwrap(), "frames");

    let cluster = Path::from("cluster.json");
    let v1 = store
        .put_opts(&cluster, "{\"epoch\":1}".into(), PutMode::Create.into())
        .await
        .unwrap();
    assert!(v1.version.is_some(), "the generation comes back: {v1:?}");
    let v1 = UpdateVersion {
        e_tag: v1.e_tag,
        version: v1.version,
    };
    store
        .put_opts(&cluster, "{\"epoch\":2}".into(), PutMode::Update(v1.clone()).into())
        .await
        .unwrap();
    // A writer still holding the old generation loses.
    let stale = store.put_opts(&cluster, "{\"epoch\":2}".into(), PutMode::Update(v1).into()).await;
    assert!(matches!(stale, Err(object_store::Error::Precondition { .. })), "{stale:?}");
    let got = store.get(&cluster).await.unwrap();
    let read_version = got.meta.version.clone();
    assert_eq!(got.bytes().await.unwrap(), "{\"epoch\":2}");
    // The generation a read returns is the one to update with.
    let current = UpdateVersion {
        e_tag: None,
        version: read_version,
    };
    store
        .put_opts(&cluster, "{\"epoch\":3}".into(), PutMode::Update(current).into())
        .await
        .unwrap();

    // Everything lives under the key prefix; a range read, a head, a delete.
    let listed: Vec<_> = store.list(None).collect::<Vec<_>>().await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(store.head(&seg).await.unwrap().size, 6);
    assert_eq!(store.get_range(&seg, 1..4).await.unwrap(), "ram");
    store.delete(&seg).await.unwrap();
    let gone = store.get(&seg).await;
    assert!(matches!(gone, Err(object_store::Error::NotFound { .. })), "{gone:?}");
    assert_all_authorized(&proxy, &metadata);
}

/// The fencing race on GCS generation preconditions: two nodes read `cluster.json` at
/// epoch 1 and both try to open epoch 2 with that generation; exactly the first wins.
/// Then eight writers race at once with the same generation (fake-gcs-server checks and
/// writes under one lock, as GCS does atomically): exactly one wins. Member registration
/// read-modify-writes with the generation and keeps ids stable.
#[tokio::test]
async fn gcs_stale_writers_lose_the_epoch_race() {
    use netsy::archive::manifest::{self, ClusterManifest};
    let (_fake, metadata, proxy, _home) = setup("netsy-race", "ya29.race");
    let store = proxy.store("netsy-race", "");

    let a = manifest::register_member(store.as_ref(), "race", "netsy-0", None).await.unwrap();
    let b = manifest::register_member(store.as_ref(), "race", "netsy-1", None).await.unwrap();
    assert_eq!((a.raft_id, b.raft_id), (1, 2));
    let a2 = manifest::register_member(store.as_ref(), "race", "netsy-0", None).await.unwrap();
    assert_eq!((a2.member_id, a2.raft_id), (a.member_id, 3), "new incarnation, same member");

    let path = Path::from(manifest::CLUSTER);
    assert!(manifest::write(store.as_ref(), &path, &ClusterManifest::new("race", 1), None)
        .await
        .unwrap());
    assert!(
        !manifest::write(store.as_ref(), &path, &ClusterManifest::new("race", 1), None)
            .await
            .unwrap(),
        "create-only"
    );
    let seen_by_first = manifest::read_cluster(store.as_ref(), "race").await.unwrap().unwrap();
    let seen_by_second = manifest::read_cluster(store.as_ref(), "race").await.unwrap().unwrap();
    let first = ClusterManifest::new("race", 2);
    assert!(manifest::write(store.as_ref(), &path, &first, Some(&seen_by_first.version))
        .await
        .unwrap());
    assert!(
        !manifest::write(
            store.as_ref(),
            &path,
            &ClusterManifest::new("race", 2),
            Some(&seen_by_second.version)
        )
        .await
        .unwrap(),
        "the second node's version is stale"
    );
    assert_eq!(manifest::read_cluster(store.as_ref(), "race").await.unwrap().unwrap().value, first);

    let seen = manifest::read_cluster(store.as_ref(), "race").await.unwrap().unwrap();
    let racers = (0..8u64).map(|i| {
        let (store, version, path) = (store.clone(), seen.version.clone(), path.clone());
        tokio::spawn(async move {
            let m = ClusterManifest::new("race", 3 + i);
            let won = manifest::write(store.as_ref(), &path, &m, Some(&version)).await.unwrap();
            (won, m)
        })
    });
    let results: Vec<_> = futures::future::join_all(racers).await.into_iter().map(Result::unwrap).collect();
    let winners: Vec<_> = results.iter().filter(|(won, _)| *won).map(|(_, m)| m.clone()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert_eq!(
        manifest::read_cluster(store.as_ref(), "race").await.unwrap().unwrap().value,
        winners[0]
    );
    assert_all_authorized(&proxy, &metadata);
}

/// Workload Identity as far as it can run here: object_store's credential chain, with no
/// key file, asks the metadata server (`Metadata-Flavor: Google`) for a token and sends it
/// as `Authorization: Bearer`. A token the bucket does not accept is an error, not a
/// silent anonymous request.
#[tokio::test]
async fn gcs_uses_the_metadata_server_token() {
    let (_fake, metadata, proxy, home) = setup("netsy-wi", "ya29.workload-identity");
    let p = Path::from("probe");
    proxy.store("netsy-wi", "").put(&p, "x".into()).await.unwrap();
    assert_all_authorized(&proxy, &metadata);

    // Another metadata server, serving a token the proxy refuses.
    let wrong = MetadataServer::start("ya29.someone-else");
    for (k, v) in wrong.env(home.path()) {
        std::env::set_var(k, v);
    }
    let denied = proxy.store("netsy-wi", "").put(&p, "y".into()).await;
    let err = denied.expect_err("a refused token fails the put");
    assert!(netsy::error_chain(&err).contains("401"), "{}", netsy::error_chain(&err));
    assert!(wrong.served.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let last = proxy.seen().pop().unwrap();
    assert_eq!(last.authorization.as_deref(), Some("Bearer ya29.someone-else"));
    assert_eq!(last.status, 401);
}

/// A node on GCS under object-storage durability: its segments and snapshots appear in
/// the bucket, old snapshots and the segments they covered are collected (deleted in
/// the bucket), and after losing its disk it comes back with every acknowledged write.
/// Credentials come from the metadata server (Workload Identity).
#[tokio::test]
async fn node_on_gcs_archives_collects_and_restores() {
    use netsy::archive::{segment, snapshot};
    let (fake, metadata, proxy, home) = setup("netsy-node", "ya29.node");
    let mut n = common::Netsy::new(
        r#""durability": "object-storage", "archive": { "snapshot_entries": 40, "snapshots_to_keep": 2, "history": "0s", "max_puts_per_second": 500 },"#,
        &metadata.env(home.path()),
    );
    n.set_storage(&proxy.storage_json("netsy-node", "clusters/a", r#", "storage_class": "NEARLINE""#));
    n.spawn();
    let mut c = n.client().await;
    let mut acked = std::collections::BTreeMap::new();
    for round in 0..3 {
        for i in round * 100..(round + 1) * 100 {
            let key = format!("k{:03}", i % 100);
            let r = c.put(key.clone(), format!("v{i}"), None).await.unwrap();
            acked.insert(key, (format!("v{i}"), r.header().unwrap().revision()));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while n.metric("netsy_archive_snapshots_total") < (round + 2) as f64 {
            assert!(std::time::Instant::now() < deadline, "no snapshot: {}", n.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // In the bucket: at most the newest two snapshots besides an epoch base (index 0;
    // the first epoch of a new cluster has none), and no segment wholly covered by the
    // oldest of them.
    let store = proxy.store("netsy-node", "clusters/a");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (snapshots, segments) = loop {
        let snaps: Vec<u64> = snapshot::list(store.as_ref(), 1)
            .await
            .unwrap()
            .into_iter()
            .map(|(s, _)| s.index)
            .collect();
        let segs = segment::list(store.as_ref(), 1).await.unwrap();
        let later: Vec<u64> = snaps.iter().copied().filter(|&i| i > 0).collect();
        let floor = later.first().copied().unwrap_or(0);
        if later.len() <= 2 && segs.iter().all(|(s, _)| s.last > floor) && !segs.is_empty() {
            break (snaps, segs);
        }
        assert!(std::time::Instant::now() < deadline, "not collected: {snaps:?} {segs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!snapshots.is_empty());
    let uploaded = n.metric("netsy_archive_snapshots_total") as usize;
    assert!(uploaded > snapshots.len(), "{uploaded} snapshots uploaded, {snapshots:?} kept");
    assert!(n.log().contains("archive garbage collected"), "{}", n.log());
    let tally = proxy.tally();
    let deleted = tally
        .iter()
        .filter(|(k, _)| k.starts_with("DELETE 2"))
        .map(|(_, v)| v)
        .sum::<usize>();
    assert!(deleted > 0, "GC deleted objects in the bucket: {tally:?}");
    drop((snapshots, segments));

    // What the node leaves once stopped (a collection running when the listing above was
    // taken cannot remove objects under the checks below): every snapshot readable, the
    // segments valid, contiguous and of the configured storage class.
    n.kill9();
    let snapshots = snapshot::list(store.as_ref(), 1).await.unwrap();
    let segments = segment::list(store.as_ref(), 1).await.unwrap();
    assert!(!snapshots.is_empty() && !segments.is_empty(), "{snapshots:?} {segments:?}");
    for (name, _) in &snapshots {
        let header = snapshot::fetch_header(store.as_ref(), name).await.expect("a readable snapshot");
        assert_eq!(header.index, name.index);
    }
    let mut next = segments[0].0.first;
    for (name, _) in &segments {
        assert_eq!(name.first, next, "contiguous: {segments:?}");
        let bytes = store.get(&name.path()).await.unwrap().bytes().await.unwrap();
        segment::decode(&bytes, name).expect("a valid segment");
        next = name.last + 1;
        let resource = fake
            .object_resource("netsy-node", &format!("clusters/a/{}", name.path()))
            .expect("listed segment exists");
        assert_eq!(resource["storageClass"], "NEARLINE", "{resource}");
    }

    n.wipe();
    n.spawn();
    assert!(n.log().contains("restore: downloading snapshot"), "{}", n.log());
    let restored = all_keys(&n, "k").await;
    assert_eq!(restored.len(), 100);
    for (key, (value, rev)) in &acked {
        assert_eq!(restored.get(key), Some(&(value.clone(), *rev)), "{key}");
    }
    let manifest = store.get(&Path::from("cluster.json")).await.unwrap().bytes().await.unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest["epoch"], 2, "{manifest}");
    assert_all_authorized(&proxy, &metadata);
}
