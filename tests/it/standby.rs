//! A standby cluster follows a 3-member primary's archive on S3 (moto), serves reads
//! and watches, refuses writes, and once the primary is gone is promoted with every
//! write the primary acknowledged (`object-storage` durability), its watch going on
//! without a gap. A 3-member standby follows an encrypted archive and is promoted.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, GetOptions, WatchOptions};

use crate::common::kms::KmsPlugin;
use crate::common::{moto, netsy_cli, netsy_cli_env, wait_until, Cluster, Netsy};
use crate::encryption::{assert_sealed, unique};

async fn client(endpoint: String) -> Client {
    Client::connect([endpoint], None).await.expect("connect")
}

/// Waits (polling every 50 ms) until `cond` holds.
async fn eventually<F: std::future::Future<Output = bool>>(timeout: Duration, what: &str, mut cond: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A put that is retried while the primary is busy (a leader change on a loaded
/// machine); the same value again is harmless.
async fn put(c: &mut Client, key: String, value: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = c.put(key.clone(), value, None).await {
        assert!(tokio::time::Instant::now() < deadline, "put {key}: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn revision(endpoint: &str) -> i64 {
    let mut c = client(endpoint.to_string()).await;
    let r = c
        .get("k/", Some(GetOptions::new().with_serializable().with_count_only()))
        .await
        .unwrap();
    r.header().unwrap().revision()
}

/// Writes `k/{i:04}` = `value(i)` for i = `from`, `from + 1`, … through `p`; once `before`
/// writes were acknowledged runs `kill` (the primary's end), and returns every key
/// acknowledged. A write that fails before the kill (a busy machine) is not counted; after
/// the kill the first failure ends the writer.
async fn write_until_killed(
    mut p: Client,
    from: usize,
    value: impl Fn(usize) -> String + Send + 'static,
    before: usize,
    kill: impl FnOnce(),
) -> Vec<String> {
    let killed = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn({
        let (killed, written) = (killed.clone(), written.clone());
        async move {
            let mut acked = Vec::new();
            for i in from.. {
                let key = format!("k/{i:04}");
                match tokio::time::timeout(Duration::from_secs(5), p.put(key.clone(), value(i), None)).await {
                    Ok(Ok(_)) => {
                        acked.push(key);
                        written.fetch_add(1, Ordering::AcqRel);
                    }
                    _ if killed.load(Ordering::Acquire) => break,
                    _ => {}
                }
            }
            acked
        }
    });
    eventually(Duration::from_secs(60), "writes before the kill", || async {
        written.load(Ordering::Acquire) >= before
    })
    .await;
    kill();
    killed.store(true, Ordering::Release);
    writer.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_follows_serves_reads_and_is_promoted_with_every_acknowledged_write() {
    let mut primary = Cluster::start_s3(3, r#""durability": "object-storage","#);
    let moto = primary.moto.as_ref().expect("moto");
    let source = moto.storage_json("netsy", "clusters/test");
    let mut standby = Netsy::new(
        &format!(r#""standby": {{ "source": {source}, "source_cluster_id": "test", "poll_interval": "100ms" }},"#),
        &moto::ENV.iter().map(|(k, v)| (*k, v.to_string())).collect::<Vec<_>>(),
    );
    standby.cluster_id = "dr".into();
    standby.set_storage(&moto.storage_json("netsy", "clusters/dr"));

    let leader = primary.wait_leader();
    let primary_endpoint = primary.nodes[leader].endpoint();
    let mut p = client(primary_endpoint.clone()).await;
    let mut acked = BTreeSet::new();
    for i in 0..50 {
        put(&mut p, format!("k/{i:04}"), "before").await;
        acked.insert(format!("k/{i:04}"));
    }
    standby.spawn();
    let endpoint = standby.endpoint();
    let (code, body) = standby.http_get("/readyz");
    assert!(code == 200 && body.contains("standby"), "{code} {body}");

    // A watch on the standby, from the revision after its starting state.
    let start = revision(&endpoint).await;
    let mut s = client(endpoint.clone()).await;
    let mut events = s
        .watch("k/", Some(WatchOptions::new().with_prefix().with_start_revision(start + 1)))
        .await
        .unwrap();

    // Writes on the primary while the standby follows; reads and watches on the standby.
    for i in 50..150 {
        put(&mut p, format!("k/{i:04}"), "follow").await;
        acked.insert(format!("k/{i:04}"));
    }
    let target = revision(&primary_endpoint).await;
    eventually(Duration::from_secs(60), "the standby to reach the primary's revision", || async {
        revision(&endpoint).await >= target
    })
    .await;
    let mut pm = p.maintenance_client();
    let mut sm = s.maintenance_client();
    let (ph, sh) = (pm.hash_kv(target).await.unwrap(), sm.hash_kv(target).await.unwrap());
    assert_eq!(ph.hash(), sh.hash(), "HashKV at revision {target}");
    assert!(standby.metric("netsy_standby_following") == 1.0);

    // Read only while it follows.
    let err = s.put("k/nope", "x", None).await.unwrap_err().to_string();
    assert!(err.contains("standby"), "{err}");
    let err = s.lease_grant(60, None).await.unwrap_err().to_string();
    assert!(err.contains("standby"), "{err}");

    // More writes, then the whole primary is killed while a writer runs. A write that
    // fails before the kill (a busy machine) is not counted as acknowledged; after the
    // kill the first failure ends the writer.
    let late = write_until_killed(
        p.clone(),
        150,
        |_| "last".to_string(),
        20,
        || {
            for node in primary.nodes.iter_mut() {
                node.kill9();
            }
        },
    )
    .await;
    acked.extend(late);

    // Promote: the standby replays everything archived, then serves writes.
    let config = standby.config_path().display().to_string();
    let promoting = std::time::Instant::now();
    let (ok, out) = netsy_cli_env(&["standby", "promote", "--config", &config], &moto::ENV);
    assert!(ok && out.contains("promoted"), "{out}");
    eventually(Duration::from_secs(10), "writes on the promoted standby", || async {
        client(endpoint.clone()).await.put("k/zz-after", "x", None).await.is_ok()
    })
    .await;
    // What the note reports: the time from the request to the first write served, and
    // what the promotion record says about the recovery point.
    eprintln!(
        "standby promotion: {} writes acknowledged by the primary; writable {} ms after the request; {}",
        acked.len(),
        promoting.elapsed().as_millis(),
        out.trim()
    );
    let got: BTreeSet<String> = s
        .get("k/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    let missing: Vec<_> = acked.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "acknowledged by the primary, missing after promotion: {missing:?}"
    );

    // The standby's watch saw every revision from its start to the write after the
    // promotion, in order, once.
    let mut seen = Vec::new();
    while !seen.iter().any(|(k, _): &(String, i64)| k == "k/zz-after") {
        let resp = tokio::time::timeout(Duration::from_secs(30), events.message())
            .await
            .expect("watch events")
            .expect("watch stream")
            .expect("a response");
        for e in resp.events() {
            let kv = e.kv().unwrap();
            seen.push((kv.key_str().unwrap().to_string(), kv.mod_revision()));
        }
    }
    let revisions: Vec<i64> = seen.iter().map(|(_, r)| *r).collect();
    let expected: Vec<i64> = (start + 1..=revisions[revisions.len() - 1]).collect();
    assert_eq!(revisions, expected, "no gap and no duplicate across the promotion");
    assert!(standby.metric("netsy_standby_following") == 0.0);
    let (code, body) = standby.http_get("/readyz");
    assert!(code == 200 && !body.contains("standby"), "{code} {body}");
}

/// Every key under `k/` as a member sees it (a serializable read: what it has applied).
async fn keys_on(endpoint: &str) -> BTreeSet<String> {
    client(endpoint.to_string())
        .await
        .get("k/", Some(GetOptions::new().with_prefix().with_keys_only().with_serializable()))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect()
}

/// A 3-member standby follows a primary whose archive is encrypted through a KMS v2
/// plugin, keeping its own archive under its own key; every member converges; the
/// promoted cluster holds every write the primary acknowledged on every member, keeps
/// serving writes when its leader is then killed, and no plaintext reaches its bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_member_standby_follows_an_encrypted_archive_and_is_promoted() {
    let plugin = KmsPlugin::start("primary-key");
    let secret = unique("secret");
    let mut primary = Netsy::new(r#""durability": "object-storage", "archive": { "snapshot_entries": 40 },"#, &[]);
    let source = plugin.storage(&primary.objects());
    primary.set_storage(&source);
    primary.spawn();
    let mut p = primary.client().await;
    let mut acked = BTreeSet::new();
    for i in 0..30 {
        put(&mut p, format!("k/{i:04}"), &format!("{secret}-{i}")).await;
        acked.insert(format!("k/{i:04}"));
    }

    let objects = tempfile::tempdir().expect("tempdir");
    let key = objects.path().join("standby.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    let own = format!(
        r#"{{ "provider": "file", "path": "{}", "encryption": {{ "key_file": "{}" }} }}"#,
        objects.path().join("dr").display(),
        key.display()
    );
    let extra = format!(r#""standby": {{ "source": {source}, "source_cluster_id": "test", "poll_interval": "100ms" }},"#);
    let env = |i: usize| vec![("NETSY_NODE_ID", format!("dr-{i}"))];
    let mut standby = Cluster::start_on(3, &extra, &own, objects, None, &env, &[], &|_, node| {
        node.cluster_id = "dr".into();
    });
    let endpoints: Vec<String> = standby.nodes.iter().map(|n| n.endpoint()).collect();

    // Writes on the primary while the standby follows; every member converges.
    for i in 30..120 {
        put(&mut p, format!("k/{i:04}"), &format!("{secret}-{i}")).await;
        acked.insert(format!("k/{i:04}"));
    }
    let target = revision(&primary.endpoint()).await;
    let want = p.maintenance_client().hash_kv(target).await.unwrap().hash();
    for (i, endpoint) in endpoints.iter().enumerate() {
        eventually(Duration::from_secs(60), "every standby member to reach the primary", || async {
            revision(endpoint).await >= target
        })
        .await;
        let mut m = client(endpoint.clone()).await.maintenance_client();
        assert_eq!(m.hash_kv(target).await.unwrap().hash(), want, "member {i}: HashKV at {target}");
        let err = client(endpoint.clone())
            .await
            .put("k/nope", "x", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("standby"), "member {i}: {err}");
    }

    // The primary dies while a writer runs; what it acknowledged is in its archive.
    let secret_value = secret.clone();
    let late = write_until_killed(p.clone(), 120, move |i| format!("{secret_value}-{i}"), 10, || primary.kill9()).await;
    acked.extend(late);

    // Promote through any member's file; the leader records it and every member serves
    // the same state, then writes.
    let config = standby.nodes[2].config_path().display().to_string();
    let (ok, out) = netsy_cli(&["standby", "promote", "--config", &config]);
    assert!(ok && out.contains("promoted"), "{out}");
    let s = Client::connect(endpoints.clone(), None).await.expect("connect");
    eventually(Duration::from_secs(20), "writes on the promoted standby", || {
        let mut s = s.clone();
        async move { s.put("k/zz-after", "x", None).await.is_ok() }
    })
    .await;
    let after = revision(&standby.nodes[standby.wait_leader()].endpoint()).await;
    for (i, endpoint) in endpoints.iter().enumerate() {
        eventually(Duration::from_secs(30), "every member to apply the promotion", || async {
            revision(endpoint).await >= after
        })
        .await;
        let got = keys_on(endpoint).await;
        let missing: Vec<_> = acked.difference(&got).collect();
        assert!(missing.is_empty(), "member {i}: acknowledged by the primary, missing: {missing:?}");
        assert!(got.contains("k/zz-after"), "member {i}");
    }

    // A promoted cluster is an ordinary one: its leader dies, the others go on.
    let leader = standby.wait_leader();
    standby.nodes[leader].kill9();
    let others: Vec<String> = (0..3).filter(|i| *i != leader).map(|i| endpoints[i].clone()).collect();
    let s = Client::connect(others, None).await.expect("connect");
    eventually(Duration::from_secs(30), "a write after the standby's leader died", || {
        let mut s = s.clone();
        async move { s.put("k/zz-after-leader", "y", None).await.is_ok() }
    })
    .await;
    let uploader = &standby.nodes[standby.wait_leader()];
    wait_until(Duration::from_secs(30), "the promoted cluster's archive", || {
        uploader.metric("netsy_archive_uploaded_index") >= uploader.metric("etcd_server_applied_index")
    });
    assert_sealed(&standby.objects.path().join("dr"), &secret);
    assert!(
        plugin.calls().2 > 0,
        "the standby unwrapped the primary's data keys through the plugin"
    );
}
