//! Encrypted archives (`storage.encryption`): through a KMS v2 plugin (our own test
//! plugin on a unix socket) and a key file. Restores, point-in-time restores, exports
//! and clones work through it; no plaintext reaches object storage; a changed object or a
//! key the plugin no longer has is refused, naming the object; key rotation keeps older
//! objects readable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::kms::KmsPlugin;
use crate::common::{netsy_cli, netsy_cli_json, wait_until, Netsy};
use crate::restore::{all_keys, wait_archived};

/// Every object file under `dir` (not the local backend's lock file).
fn objects(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if !path.ends_with(".netsy-cas.lock") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// No object holds `secret`, and every object is a `NETSYEN1` object.
pub fn assert_sealed(dir: &Path, secret: &str) {
    let all = objects(dir);
    assert!(all.iter().any(|p| p.extension().is_some_and(|e| e == "seg")), "{all:?}");
    assert!(all.iter().any(|p| p.extension().is_some_and(|e| e == "snap")), "{all:?}");
    for p in &all {
        let bytes = std::fs::read(p).expect("read object");
        assert!(bytes.starts_with(b"NETSYEN1"), "{} is not encrypted", p.display());
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds the plaintext",
            p.display()
        );
    }
}

pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("{tag}-{nanos:x}-{}", std::process::id())
}

fn wait_snapshots(n: &Netsy, count: f64) {
    wait_until(Duration::from_secs(60), "an archive snapshot", || {
        n.metric("netsy_archive_snapshots_total") >= count
    });
}

/// A node encrypting through a KMS v2 plugin: no plaintext in the bucket; the key id
/// rotates mid-way and objects of both keys restore; restart from the archive,
/// `snapshot restore --revision`, `export`, and a clone into a cluster with its own
/// key all work; `snapshot inspect` and `list` show the key ids.
#[tokio::test]
async fn an_encrypted_archive_restores_rotates_and_clones_through_a_kms_plugin() {
    let plugin = KmsPlugin::start("key-1");
    let mut n = Netsy::new(r#""archive": { "snapshot_entries": 30 },"#, &[]);
    n.set_storage(&plugin.storage(&n.objects()));
    n.spawn();
    let config = n.config_path().display().to_string();
    let secret = unique("secret");
    let mut c = n.client().await;
    wait_snapshots(&n, 1.0); // the base snapshot, under key-1
    for i in 0..5 {
        c.put(format!("old{i}"), format!("{secret}-old{i}"), None).await.unwrap();
    }
    wait_archived(&n);
    let old_revision = c.get("old4", None).await.unwrap().header().unwrap().revision();
    let t_old = crate::time_machine::a_moment_between();
    let (_, encrypts, _) = plugin.calls();
    assert!(encrypts >= 1, "a data key was wrapped by the plugin");

    plugin.rotate("key-2");
    for i in 0..40 {
        c.put(format!("new{i:02}"), format!("{secret}-new{i}"), None).await.unwrap();
    }
    wait_snapshots(&n, 2.0); // a snapshot after the rotation, under key-2
    wait_archived(&n);
    let before = all_keys(&n, "").await;
    assert_eq!(before.len(), 45);
    drop(c);
    n.terminate();
    let (statuses, encrypts_after, _) = plugin.calls();
    assert!(encrypts_after > encrypts, "a new data key for the new key id");
    assert!(statuses > encrypts_after, "Status is asked before objects are written");
    assert_sealed(&n.objects(), &secret);

    // The key ids, per snapshot.
    let listing = netsy_cli_json(&["snapshot", "list", "--config", &config, "--json"]);
    let ids = listing["epochs"][0]["snapshot_key_ids"].to_string();
    assert!(ids.contains("key-1") && ids.contains("key-2"), "{listing}");
    let (ok, text) = netsy_cli(&["snapshot", "list", "--config", &config]);
    assert!(ok && text.contains("key key-1") && text.contains("key key-2"), "{text}");
    let inspected = netsy_cli_json(&["snapshot", "inspect", "--config", &config, "--verify"]);
    assert_eq!(inspected["key_id"], "key-2", "{inspected}");
    assert!(inspected["keys"].as_i64().is_some_and(|k| k >= 30), "{inspected}");

    // The whole archive, through the plugin: wipe the data directory, restart.
    let decrypts = plugin.calls().2;
    n.wipe();
    n.spawn();
    assert_eq!(all_keys(&n, "").await, before, "restored from the encrypted archive");
    assert!(plugin.calls().2 > decrypts, "data keys were unwrapped by the plugin");
    n.terminate();

    // Before the rotation: objects under key-1 only (the base snapshot, old segments).
    let scratch = n.dir.path().join("at-old");
    // A restore of epoch 1 at `old_revision` into `dir`.
    let restore_old = |dir: &std::path::Path| {
        netsy_cli(&[
            "snapshot",
            "restore",
            "--config",
            &config,
            "--data-dir",
            &dir.display().to_string(),
            "--revision",
            &old_revision.to_string(),
            "--epoch",
            "1",
        ])
    };
    let (ok, out) = restore_old(&scratch);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("(revision {old_revision}")), "{out}");
    let scratch = n.dir.path().join("at-time");
    let (ok, out) = netsy_cli(&[
        "snapshot",
        "restore",
        "--config",
        &config,
        "--data-dir",
        &scratch.display().to_string(),
        "--at",
        &crate::time_machine::rfc3339(t_old),
    ]);
    assert!(
        ok && out.contains("epoch 1") && out.contains(&format!("(revision {old_revision}")),
        "{out}"
    );
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
    let export_bytes = std::fs::read(&exported).unwrap();
    assert!(!export_bytes.starts_with(b"NETSYEN1"), "an export is a plain snapshot file");

    // A clone into a cluster with its own key (a key file).
    let mut clone = Netsy::new("", &[]);
    clone.cluster_id = "staging".into();
    let key = clone.dir.path().join("archive.key");
    std::fs::write(&key, [42u8; 32]).unwrap();
    clone.set_storage(&format!(
        r#"{{ "provider": "file", "path": "{}", "encryption": {{ "key_file": "{}" }} }}"#,
        clone.objects().display(),
        key.display()
    ));
    clone.write_config();
    let to = clone.config_path().display().to_string();
    let (ok, out) = netsy_cli(&["clone", "--from-config", &config, "--to-config", &to]);
    assert!(ok, "{out}");
    clone.spawn();
    let cloned = all_keys(&clone, "").await;
    assert_eq!(cloned.len(), 45);
    assert_eq!(cloned["old3"].0, format!("{secret}-old3"));
    let mut cc = clone.client().await;
    cc.put("after-clone", format!("{secret}-clone"), None).await.unwrap();
    drop(cc);
    wait_archived(&clone);
    clone.terminate();
    assert_sealed(&clone.objects(), &secret);
    let inspected = netsy_cli_json(&["snapshot", "inspect", "--config", &to]);
    assert!(inspected["key_id"].as_str().is_some_and(|k| k.starts_with("file:")), "{inspected}");

    // The plugin no longer has key-1: what it wrapped is refused, naming the object.
    plugin.forget("key-1");
    let scratch = n.dir.path().join("at-old-again");
    let (ok, out) = restore_old(&scratch);
    assert!(!ok, "{out}");
    assert!(
        out.contains("epochs/1/") && out.contains("cannot unwrap its data key (key id \"key-1\")"),
        "{out}"
    );
    assert!(!scratch.join("state.db").exists(), "nothing partial is left: {out}");

    // An unhealthy plugin fails the start, saying so.
    plugin.set_healthz("kms is sealed");
    n.wipe();
    let log = n.try_spawn().expect_err("an unhealthy KMS plugin fails the start");
    assert!(log.contains("is not healthy") && log.contains("kms is sealed"), "{log}");
}

/// A changed segment, snapshot or cluster.json, and the wrong key file, are refused with
/// an error naming the object; nothing is restored from them.
#[tokio::test]
async fn tampered_objects_and_a_wrong_key_are_refused_by_name() {
    let mut n = Netsy::new(r#""archive": { "snapshot_entries": 1000000 },"#, &[]);
    let key = n.dir.path().join("archive.key");
    std::fs::write(&key, format!("{}\n", "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVowMTIzNDU=")).unwrap();
    let objects_dir = n.objects();
    let storage = |key: &Path| {
        format!(
            r#"{{ "provider": "file", "path": "{}", "encryption": {{ "key_file": "{}" }} }}"#,
            objects_dir.display(),
            key.display()
        )
    };
    n.set_storage(&storage(&key));
    n.spawn();
    let mut c = n.client().await;
    for i in 0..20 {
        c.put(format!("k{i}"), "v", None).await.unwrap();
    }
    wait_archived(&n);
    drop(c);
    n.terminate();
    let config = n.config_path().display().to_string();
    let base = n.dir.path().to_path_buf();
    let restore = |dir: &str| {
        let data = base.join(dir);
        let (ok, out) = netsy_cli(&[
            "snapshot",
            "restore",
            "--config",
            &config,
            "--data-dir",
            &data.display().to_string(),
        ]);
        (ok, out, data)
    };
    let (ok, out, _) = restore("first");
    assert!(ok, "{out}");

    let flip = |path: &Path, at: usize| -> Vec<u8> {
        let original = std::fs::read(path).unwrap();
        let mut bytes = original.clone();
        let at = at.min(bytes.len() - 1);
        bytes[at] ^= 0x01;
        std::fs::write(path, bytes).unwrap();
        original
    };
    let wal = objects(&n.objects().join("epochs/1/wal"));
    let snaps = objects(&n.objects().join("epochs/1/snapshots"));
    for (i, victim) in [wal.last().unwrap(), snaps.last().unwrap()].into_iter().enumerate() {
        for at in [20, 200, usize::MAX] {
            let original = flip(victim, at);
            let (ok, out, data) = restore(&format!("bad-{i}-{at}"));
            let rel = victim.strip_prefix(n.objects()).unwrap().display().to_string();
            assert!(!ok && out.contains(&rel), "{rel} (byte {at}): {out}");
            assert!(!data.join("state.db").exists(), "nothing partial: {out}");
            std::fs::write(victim, original).unwrap();
        }
    }
    // cluster.json: authenticated like every other object.
    let manifest = n.objects().join("cluster.json");
    let original = flip(&manifest, 40);
    let (ok, out) = netsy_cli(&["snapshot", "list", "--config", &config]);
    assert!(!ok && out.contains("cluster.json") && out.contains("fails authentication"), "{out}");
    std::fs::write(&manifest, original).unwrap();
    // A segment moved to another name fails too (the path is bound).
    let (a, b) = (&wal[0], wal.last().unwrap());
    if a != b {
        let saved = std::fs::read(b).unwrap();
        std::fs::copy(a, b).unwrap();
        let (ok, out, _) = restore("moved");
        assert!(!ok && out.contains("fails authentication"), "{out}");
        std::fs::write(b, saved).unwrap();
    }

    // The wrong key file.
    let wrong = n.dir.path().join("wrong.key");
    std::fs::write(&wrong, [9u8; 32]).unwrap();
    n.set_storage(&storage(&wrong));
    n.write_config();
    let (ok, out, data) = restore("wrong-key");
    assert!(
        !ok && out.contains("cannot unwrap its data key") && out.contains("configure the key it was written with"),
        "{out}"
    );
    assert!(!data.join("state.db").exists());

    // Without encryption configured, the archive is named as encrypted.
    n.set_storage(&format!(r#"{{ "provider": "file", "path": "{}" }}"#, objects_dir.display()));
    n.write_config();
    let (ok, out) = netsy_cli(&["snapshot", "list", "--config", &config]);
    assert!(!ok && out.contains("cluster.json is encrypted (NETSYEN1)"), "{out}");
    let (ok, out, _) = restore("unconfigured");
    assert!(!ok && out.contains("is encrypted (NETSYEN1)"), "{out}");

    // The right key again: everything is intact.
    n.set_storage(&storage(&key));
    n.write_config();
    let (ok, out, _) = restore("last");
    assert!(ok, "{out}");
}

/// Through the S3 protocol (moto): a multipart upload larger than a part (as a large
/// snapshot is written), ranged reads, and the conditional writes `cluster.json` needs,
/// all through the encryption layer; the bucket holds only sealed objects.
#[tokio::test]
async fn the_encryption_layer_on_s3_streams_multipart_and_keeps_conditional_writes() {
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStoreExt, PutMode, UpdateVersion};
    use tokio::io::AsyncWriteExt;

    let moto = crate::common::moto::Moto::start();
    let plain = moto.store("netsy-enc", "clusters/prod");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("archive.key");
    std::fs::write(&key, [11u8; 32]).unwrap();
    let cfg: netsy::config::StorageConfig = serde_json::from_value(serde_json::json!({
        "provider": "s3", "bucket_name": "netsy-enc", "key_prefix": "clusters/prod", "region": "us-east-1",
        "endpoint": format!("http://127.0.0.1:{}", moto.port), "force_path_style": true,
        "encryption": { "key_file": key },
    }))
    .unwrap();
    let store = netsy::archive::open(&cfg).await.unwrap();

    // 20 MiB and a bit, through the buffered writer the snapshot upload uses.
    let body: Vec<u8> = (0..(20 << 20) + 12345)
        .map(|i: usize| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let snap = ObjectPath::from("epochs/1/snapshots/00000000000000000100.snap");
    let mut w = object_store::buffered::BufWriter::with_capacity(store.clone(), snap.clone(), 16 << 20);
    for piece in body.chunks(3 << 20) {
        w.write_all(piece).await.unwrap();
    }
    w.shutdown().await.unwrap();
    assert_eq!(store.get(&snap).await.unwrap().bytes().await.unwrap(), body);
    assert_eq!(store.get_range(&snap, 0..100).await.unwrap(), &body[..100]);
    let mid = (9 << 20) + 7..(9 << 20) + 70000;
    assert_eq!(
        store.get_range(&snap, mid.clone()).await.unwrap(),
        &body[mid.start as usize..mid.end as usize]
    );
    let stored = plain.get(&snap).await.unwrap().bytes().await.unwrap();
    assert!(stored.starts_with(b"NETSYEN1"));
    assert!(stored.len() > body.len());

    // cluster.json's create and compare-and-swap, with S3's e-tags.
    let cluster = ObjectPath::from("cluster.json");
    let created = store
        .put_opts(&cluster, "{\"epoch\":1}".into(), PutMode::Create.into())
        .await
        .unwrap();
    let again = store.put_opts(&cluster, "{\"epoch\":9}".into(), PutMode::Create.into()).await;
    assert!(matches!(again, Err(object_store::Error::AlreadyExists { .. })), "{again:?}");
    let got = store.get(&cluster).await.unwrap();
    let v1 = UpdateVersion {
        e_tag: got.meta.e_tag.clone(),
        version: got.meta.version.clone(),
    };
    assert_eq!(v1.e_tag, created.e_tag, "the e-tag read is the one written");
    store
        .put_opts(&cluster, "{\"epoch\":2}".into(), PutMode::Update(v1.clone()).into())
        .await
        .unwrap();
    let stale = store.put_opts(&cluster, "{\"epoch\":3}".into(), PutMode::Update(v1).into()).await;
    assert!(matches!(stale, Err(object_store::Error::Precondition { .. })), "{stale:?}");
    assert_eq!(store.get(&cluster).await.unwrap().bytes().await.unwrap(), "{\"epoch\":2}");
    let raw = plain.get(&cluster).await.unwrap().bytes().await.unwrap();
    assert!(raw.starts_with(b"NETSYEN1") && !raw.windows(5).any(|w| w == b"epoch"));
}
