//! A node that loses its disk comes back from object storage with every acknowledged
//! write: the newest snapshot plus every later segment, verified, then a new epoch.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common;
use crate::common::{netsy_cli, wait_until, Netsy};
use etcd_client::GetOptions;

pub fn cluster_epoch(n: &Netsy) -> u64 {
    let raw = std::fs::read(n.objects().join("cluster.json")).expect("cluster.json");
    let v: serde_json::Value = serde_json::from_slice(&raw).expect("json");
    v["epoch"].as_u64().expect("epoch")
}

/// Everything applied is in object storage (quorum durability uploads asynchronously).
pub fn wait_archived(n: &Netsy) {
    wait_until(Duration::from_secs(30), "the archive to catch up", || {
        let applied = n.metric("etcd_server_applied_index");
        applied > 0.0 && n.metric("netsy_archive_uploaded_index") >= applied
    });
}

pub async fn all_keys(n: &Netsy, prefix: &str) -> BTreeMap<String, (String, i64)> {
    let mut c = n.client().await;
    let r = c.get(prefix, Some(GetOptions::new().with_prefix())).await.unwrap();
    r.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                (kv.value_str().unwrap().to_string(), kv.mod_revision()),
            )
        })
        .collect()
}

/// object-storage durability: kill -9 under concurrent writes, wipe the data directory,
/// restart: every acknowledged write is there with its revision, and revisions continue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wiped_node_keeps_every_acknowledged_write() {
    // Four writers one write at a time each: at the default 10 uploads a second they
    // would get 40 writes a second; this wants thousands before the kill.
    let mut n = Netsy::start_with(r#""durability": "object-storage", "archive": { "max_puts_per_second": 500 },"#);
    let mut writers = Vec::new();
    for w in 0..4 {
        let endpoint = n.endpoint();
        writers.push(tokio::spawn(async move {
            let mut c = etcd_client::Client::connect([endpoint], None).await.unwrap();
            let mut acked = Vec::new();
            for i in 0..100_000 {
                let (k, v) = (format!("w{w}/{i:06}"), format!("v{i}"));
                match c.put(k.clone(), v.clone(), None).await {
                    Ok(r) => acked.push((k, v, r.header().unwrap().revision())),
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    {
        let mut c = n.client().await;
        wait_until(Duration::from_secs(30), "concurrent writes", || {
            n.metric("etcd_server_applied_index") > 1000.0
        });
        c.delete("w0/000000", None).await.unwrap();
    }
    n.kill9();
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(acked.len() > 1000, "only {} writes before the kill", acked.len());
    let max_rev = acked.iter().map(|a| a.2).max().unwrap();

    n.wipe();
    n.spawn();
    assert!(n.log().contains("rebuilt from object storage"), "{}", n.log());
    assert_eq!(cluster_epoch(&n), 2, "the restore opened a new epoch");
    let found = all_keys(&n, "w").await;
    for (k, v, rev) in &acked {
        if k == "w0/000000" {
            assert!(!found.contains_key(k), "the delete was acknowledged too");
            continue;
        }
        assert_eq!(found.get(k), Some(&(v.clone(), *rev)), "acknowledged write {k} lost or changed");
    }
    let mut c = n.client().await;
    let rev = c.put("after", "restore", None).await.unwrap().header().unwrap().revision();
    assert!(rev > max_rev, "revisions continue above the restored ones ({rev} <= {max_rev})");
    assert!(n.metric("netsy_restore_entries_total") > 0.0);

    // The restored state is this node's local base (the seed, under the new epoch's
    // log): an OS crash now rebuilds from it.
    assert!(n.data_dir().join("snapshots/seed.db").exists());
    n.kill9();
    n.simulate_os_crash();
    n.spawn();
    assert!(n.log().contains("FromSeed"), "{}", n.log());
    assert_eq!(all_keys(&n, "w").await, found);

    // The new epoch is itself restorable: lose the disk again.
    n.kill9();
    n.wipe();
    n.spawn();
    assert_eq!(cluster_epoch(&n), 3);
    let mut c = n.client().await;
    assert_eq!(c.get("after", None).await.unwrap().kvs()[0].value_str().unwrap(), "restore");
    assert_eq!(all_keys(&n, "w").await, found);
}

/// Snapshots are uploaded on the entry threshold, old ones and the segments they cover
/// are collected, and a restore starts from the newest snapshot. History survives:
/// compaction, deletes, leases and old revisions.
#[tokio::test]
async fn restore_starts_from_the_newest_snapshot() {
    let mut n = Netsy::start_with(r#""archive": { "snapshot_entries": 40, "snapshots_to_keep": 2, "history": "0s" },"#);
    let mut c = n.client().await;
    let lease = c.lease_grant(3600, None).await.unwrap().id();
    // Three rounds of writes, each followed by a snapshot (the first is the base one).
    for round in 0..3 {
        for i in round * 100..(round + 1) * 100 {
            c.put(format!("k{:03}", i % 100), format!("v{i}"), None).await.unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while n.metric("netsy_archive_snapshots_total") < (round + 2) as f64 {
            assert!(std::time::Instant::now() < deadline, "no snapshot: {}", n.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    c.put("leased", "x", Some(etcd_client::PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    c.delete("k000", None).await.unwrap();
    c.compact(150, None).await.unwrap();
    let last = c.put("last", "x", None).await.unwrap().header().unwrap().revision();
    wait_archived(&n);
    // The last writes may start one more snapshot: its upload (a `NAME#N` staging file of
    // the file store) and the collection after it run in the background.
    let snapshots = || -> Vec<String> {
        std::fs::read_dir(n.objects().join("epochs/1/snapshots"))
            .map(|dir| dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let listed = snapshots();
        if listed.len() <= 2 && listed.iter().all(|s| !s.contains('#')) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "old snapshots are collected: {listed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = all_keys(&n, "").await;
    let old = c.get("k001", Some(GetOptions::new().with_revision(200))).await.unwrap();
    n.terminate();

    n.wipe();
    n.spawn();
    assert!(n.log().contains("restore: downloading snapshot"), "{}", n.log());
    assert_eq!(all_keys(&n, "").await, before);
    let mut c = n.client().await;
    let again = c.get("k001", Some(GetOptions::new().with_revision(200))).await.unwrap();
    let kv = |r: &etcd_client::GetResponse| {
        r.kvs()
            .iter()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision(), kv.create_revision(), kv.version()))
            .collect::<Vec<_>>()
    };
    assert_eq!(kv(&again), kv(&old), "history above the compaction survives");
    let compacted = c.get("k001", Some(GetOptions::new().with_revision(100))).await;
    assert!(compacted.unwrap_err().to_string().contains("compacted"));
    let ttl = c.lease_time_to_live(lease, None).await.unwrap();
    assert!(ttl.ttl() > 0, "the lease survives");
    let rev = c.put("next", "x", None).await.unwrap().header().unwrap().revision();
    assert_eq!(rev, last + 1);
}

/// A corrupt segment stops the restore with an error naming the object; nothing is served.
#[tokio::test]
async fn corrupt_segment_is_reported_by_name() {
    let mut n = Netsy::start_with(r#""archive": { "snapshot_entries": 1000000 },"#);
    let mut c = n.client().await;
    wait_archived(&n); // the base snapshot and the first entries
    for round in 0..5 {
        for i in 0..10 {
            c.put(format!("k{round}-{i}"), "v", None).await.unwrap();
        }
        wait_archived(&n); // one or more segments per round
    }
    n.terminate();
    // Corrupt the newest segment (after the snapshot the restore starts from).
    let wal = n.objects().join("epochs/1/wal");
    let mut segs: Vec<_> = std::fs::read_dir(&wal).unwrap().flatten().map(|e| e.path()).collect();
    segs.sort();
    let victim = segs.last().unwrap().clone();
    let original = std::fs::read(&victim).unwrap();
    let mut bytes = original.clone();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x55;
    std::fs::write(&victim, bytes).unwrap();

    n.wipe();
    let log = n.try_spawn().expect_err("a corrupt archive must not be served");
    let name = victim.file_name().unwrap().to_str().unwrap();
    assert!(log.contains(name) && log.contains("checksum"), "{log}");
    assert!(!n.data_dir().join("state.db").exists(), "no partial state is left to serve");

    // A missing segment in the middle is reported as a gap.
    std::fs::write(&victim, original).unwrap();
    assert!(segs.len() > 2, "{segs:?}");
    std::fs::remove_file(&segs[segs.len() - 2]).unwrap();
    let log = n.try_spawn().expect_err("a gap must not be served");
    assert!(log.contains("missing from object storage"), "{log}");
}

/// A data directory from before a restore belongs to an old epoch: it is set aside and the
/// node rebuilds from object storage.
#[tokio::test]
async fn stale_data_directory_is_set_aside() {
    let mut n = Netsy::start_with(r#""discovery_timeout": "1s","#);
    let mut c = n.client().await;
    c.put("a", "1", None).await.unwrap();
    wait_archived(&n);
    n.terminate();
    let saved = n.dir.path().join("saved");
    std::fs::rename(n.data_dir(), &saved).unwrap();
    n.spawn(); // restores, opens epoch 2
    n.terminate();
    n.wipe();
    std::fs::rename(&saved, n.data_dir()).unwrap();
    n.spawn();
    assert!(n.log().contains("set it aside"), "{}", n.log());
    assert!(n.data_dir().join("stale-epoch-1").join("state.db").exists());
    let mut c = n.client().await;
    let r = c.get("a", None).await.unwrap();
    assert_eq!(r.kvs()[0].value_str().unwrap(), "1");
}

/// `netsy snapshot list | inspect | export | restore` over the archive, including a
/// point-in-time restore to a Raft index.
#[tokio::test]
async fn snapshot_commands_work_on_the_archive() {
    let mut n = Netsy::start();
    let mut c = n.client().await;
    for i in 0..20 {
        c.put(format!("early{i}"), "v", None).await.unwrap();
    }
    wait_archived(&n);
    let point = n.metric("etcd_server_applied_index") as u64;
    for i in 0..20 {
        c.put(format!("late{i}"), "v", None).await.unwrap();
    }
    wait_archived(&n);
    n.terminate();
    let config = n.config_path().display().to_string();

    let (ok, out) = netsy_cli(&["snapshot", "list", "--config", &config]);
    assert!(
        ok && out.contains("cluster test at epoch 1") && out.contains("snapshot index"),
        "{out}"
    );
    let (ok, out) = netsy_cli(&["snapshot", "inspect", "--config", &config, "--verify"]);
    assert!(ok, "{out}");
    let inspected: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(inspected["header"]["epoch"], 1, "{out}");
    assert!(inspected["keys"].as_i64().is_some(), "{out}");

    // Export the whole archive and seed another cluster with it.
    let exported = n.dir.path().join("export.snap");
    let (ok, out) = netsy_cli(&[
        "snapshot",
        "export",
        "--config",
        &config,
        "--output",
        &exported.display().to_string(),
    ]);
    assert!(ok, "{out}");
    let mut other = Netsy::start();
    other.terminate();
    other.wipe();
    let (ok, out) = netsy_cli(&[
        "snapshot",
        "restore",
        &exported.display().to_string(),
        "--data-dir",
        &other.data_dir().display().to_string(),
    ]);
    assert!(ok, "{out}");
    other.spawn();
    assert_eq!(all_keys(&other, "").await.len(), 40);

    // Point in time: only what was applied up to `point`.
    n.wipe();
    let data = n.data_dir().display().to_string();
    let (ok, out) = netsy_cli(&[
        "snapshot",
        "restore",
        "--config",
        &config,
        "--index",
        &point.to_string(),
        "--data-dir",
        &data,
    ]);
    assert!(ok, "{out}");
    n.spawn();
    let keys = all_keys(&n, "").await;
    assert_eq!(keys.keys().filter(|k| k.starts_with("early")).count(), 20);
    assert_eq!(keys.keys().filter(|k| k.starts_with("late")).count(), 0, "{keys:?}");
    assert_eq!(cluster_epoch(&n), 2, "the seeded state became the next epoch");
}

/// While a node is starting (restoring, or waiting for object storage), its health port
/// answers: alive, not ready, with metrics; the client port stays closed.
#[test]
fn not_ready_while_starting() {
    // An "object store" that accepts connections and never answers.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = blackhole.local_addr().expect("addr").port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in blackhole.incoming().take(64) {
            conns.push(c);
        }
    });
    let storage = format!(
        r#"{{ "provider": "s3", "bucket_name": "b", "region": "us-east-1", "endpoint": "http://127.0.0.1:{port}", "force_path_style": true }}"#
    );
    let n = Netsy::new("", &[]);
    let dir = n.dir.path();
    std::fs::write(n.config_path(), format!(r#"{{ "cluster_id": "test", "storage": {storage} }}"#)).expect("config");
    let (client, health) = (common::free_port(), common::free_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_netsy"))
        .args(["serve", "--config"])
        .arg(n.config_path())
        .env("NETSY_DATA_DIR", dir.join("data"))
        .env("NETSY_BIND_CLIENT", format!("127.0.0.1:{client}"))
        .env("NETSY_BIND_PEER", format!("127.0.0.1:{}", common::free_port()))
        .env("NETSY_BIND_HEALTH", format!("127.0.0.1:{health}"))
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    wait_until(Duration::from_secs(20), "the health port", || {
        std::net::TcpStream::connect(("127.0.0.1", health)).is_ok()
    });
    let (ready, body) = common::http_get(health, "/readyz");
    assert_eq!(ready, 503, "{body}");
    assert!(body.contains("starting"), "{body}");
    assert_eq!(common::http_get(health, "/livez").0, 200);
    assert_eq!(common::http_get(health, "/health").0, 503);
    let (status, metrics) = common::http_get(health, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("netsy_restore_in_progress"), "{metrics}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", client)).is_err(),
        "the client port must not serve yet"
    );
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "netsy must still be starting, not have exited"
    );
    let _ = child.kill();
    let _ = child.wait();
    drop(held);
}
