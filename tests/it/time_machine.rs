//! The archive as a time machine: `netsy snapshot points`, and restores to a commit
//! time or a revision, across the epochs such restores open.

use std::time::Duration;

use crate::common::{netsy_cli, netsy_cli_json, wait_until, Netsy};
use crate::restore::{all_keys, cluster_epoch, wait_archived};
use etcd_client::DeleteOptions;

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A time after everything committed so far and before anything committed next: the
/// wall clock once it has moved past the last acknowledged write's millisecond.
pub(crate) fn a_moment_between() -> u64 {
    let now = wall_ms();
    wait_until(Duration::from_secs(1), "the clock to move on", || wall_ms() > now + 1);
    now + 1
}

pub(crate) fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .expect("a time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

/// Restores `n`'s archive into its own (wiped) data directory with `selector`, starts
/// it, and returns the keys it serves (key → value) and the CLI's report.
async fn restore_and_serve(n: &mut Netsy, config: &str, selector: &[&str]) -> (Vec<String>, String) {
    n.terminate();
    n.wipe();
    let data = n.data_dir().display().to_string();
    let mut args = vec!["snapshot", "restore", "--config", config, "--data-dir", &data];
    args.extend_from_slice(selector);
    let (ok, out) = netsy_cli(&args);
    assert!(ok, "{selector:?}: {out}");
    n.spawn();
    let keys = all_keys(n, "").await.into_keys().collect();
    (keys, out)
}

#[tokio::test]
async fn restores_reach_any_archived_time_or_revision() {
    let mut n = Netsy::start();
    let config = n.config_path().display().to_string();
    let mut c = n.client().await;
    for i in 0..10 {
        c.put(format!("a{i}"), "1", None).await.unwrap();
    }
    let t1 = a_moment_between(); // revision 11
    for i in 0..10 {
        c.put(format!("b{i}"), "2", None).await.unwrap();
    }
    let deleted = c.delete("a", Some(DeleteOptions::new().with_prefix())).await.unwrap();
    assert_eq!(deleted.header().unwrap().revision(), 22);
    let t2 = a_moment_between(); // revision 22
    c.put("c", "3", None).await.unwrap();
    wait_archived(&n);
    let applied = n.metric("etcd_server_applied_index") as u64;
    drop(c);

    let points = netsy_cli_json(&["snapshot", "points", "--config", &config, "--json", "--exact"]);
    let out = points.to_string();
    let epoch1 = &points[0];
    assert_eq!(epoch1["epoch"], 1, "{out}");
    assert_eq!(epoch1["last"]["index"], applied, "{out}");
    assert_eq!(epoch1["last"]["revision"], 23, "{out}");
    let last_ms = epoch1["last"]["unix_ms"].as_u64().expect("a time");
    assert!(last_ms > t2 && last_ms <= wall_ms(), "{out}");
    assert!(epoch1["gaps"].as_array().is_some_and(|g| g.is_empty()), "{out}");
    let (ok, text) = netsy_cli(&["snapshot", "points", "--config", &config, "--exact"]);
    assert!(ok && text.contains("epoch 1") && text.contains("revision         23"), "{text}");

    // As of t1: the a's, nothing after them.
    let (keys, out) = restore_and_serve(&mut n, &config, &["--at", &rfc3339(t1)]).await;
    assert_eq!(keys, (0..10).map(|i| format!("a{i}")).collect::<Vec<_>>(), "{out}");
    assert!(out.contains("epoch 1") && out.contains("(revision 11, committed"), "{out}");
    assert_eq!(cluster_epoch(&n), 2, "the restored state opened the next epoch");
    let mut c = n.client().await;
    let r = c.put("after", "x", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 12, "revisions go on from the restored state");
    drop(c);
    wait_archived(&n);

    // As of t2, after epoch 2 was opened from t1: the time belongs to epoch 1, which
    // was serving then (epoch 2 is kept, and so is epoch 1, within the history).
    let (keys, out) = restore_and_serve(&mut n, &config, &["--at", &rfc3339(t2)]).await;
    assert_eq!(keys, (0..10).map(|i| format!("b{i}")).collect::<Vec<_>>(), "{out}");
    assert!(out.contains("epoch 1") && out.contains("(revision 22"), "{out}");
    assert_eq!(cluster_epoch(&n), 3);

    // Exactly revision 15 of epoch 1: four b's; the batch that held more is cut there.
    let (keys, out) = restore_and_serve(&mut n, &config, &["--revision", "15", "--epoch", "1"]).await;
    let mut want: Vec<String> = (0..10).map(|i| format!("a{i}")).collect();
    want.extend((0..4).map(|i| format!("b{i}")));
    assert_eq!(keys, want, "{out}");
    // Without --epoch, the newest epoch holding revision 12 is epoch 2 (the line of
    // history that went on from t1), whose revision 12 is `after`.
    let (keys, out) = restore_and_serve(&mut n, &config, &["--revision", "12"]).await;
    assert!(keys.contains(&"after".to_string()) && out.contains("epoch 2"), "{keys:?} {out}");

    // Before the archive's first state, and a bad time, are refused clearly.
    n.terminate();
    let data = n.dir.path().join("elsewhere").display().to_string();
    let (ok, out) = netsy_cli(&["snapshot", "restore", "--config", &config, "--data-dir", &data, "--revision", "999"]);
    assert!(!ok && out.contains("does not reach revision 999"), "{out}");
    let (ok, out) = netsy_cli(&["snapshot", "restore", "--config", &config, "--data-dir", &data, "--at", "yesterday"]);
    assert!(!ok && out.contains("not an RFC 3339 time"), "{out}");
}

/// Every object under `dir` with its bytes and modification time.
fn tree(dir: &std::path::Path) -> std::collections::BTreeMap<String, (Vec<u8>, std::time::SystemTime)> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let modified = entry.metadata().and_then(|m| m.modified()).expect("mtime");
                out.insert(path.display().to_string(), (std::fs::read(&path).expect("read"), modified));
            }
        }
    }
    out
}

/// `netsy clone` builds an independent cluster from another's archive as of a time:
/// its own cluster id, the source's revisions, and the source only read.
#[tokio::test]
async fn a_clone_is_an_independent_cluster_as_of_a_time_and_the_source_is_only_read() {
    let mut source = Netsy::start();
    let mut c = source.client().await;
    for i in 0..5 {
        c.put(format!("k{i}"), "v1", None).await.unwrap();
    }
    let t1 = a_moment_between(); // revision 6
    for i in 0..5 {
        c.put(format!("k{i}"), "v2", None).await.unwrap();
    }
    c.put("later", "x", None).await.unwrap();
    wait_archived(&source);
    let source_kvs = all_keys(&source, "k").await;
    drop(c);
    source.terminate();
    let before = tree(&source.objects());

    let mut clone = Netsy::new("", &[]);
    clone.cluster_id = "staging".into();
    clone.write_config();
    let (from, to) = (
        source.config_path().display().to_string(),
        clone.config_path().display().to_string(),
    );
    let (ok, out) = netsy_cli(&["clone", "--from-config", &from, "--at", &rfc3339(t1), "--to-config", &to]);
    assert!(ok, "{out}");
    assert!(
        out.contains("into cluster staging (epoch 1)") && out.contains("(revision 6"),
        "{out}"
    );
    assert_eq!(tree(&source.objects()), before, "nothing was written to or deleted from the source");

    clone.spawn();
    let kvs = all_keys(&clone, "").await;
    assert_eq!(kvs.len(), 5, "{kvs:?}");
    for (k, (v, mod_rev)) in &kvs {
        assert_eq!(v, "v1", "{k}");
        assert!(*mod_rev <= 6, "{k}: the source's revisions ({mod_rev})");
        assert!(source_kvs[k].1 > *mod_rev, "{k} was written again after t1 in the source");
    }
    let mut c = clone.client().await;
    let status = c.status().await.unwrap();
    assert_eq!(status.header().unwrap().revision(), 6, "revisions as the source had them at t1");
    let put = c.put("new", "x", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), 7);
    let clone_cluster = put.header().unwrap().cluster_id();
    drop(c);
    source.spawn();
    let mut c = source.client().await;
    let source_cluster = c.status().await.unwrap().header().unwrap().cluster_id();
    assert_ne!(clone_cluster, source_cluster, "the clone is another etcd cluster");
    assert!(c.get("new", None).await.unwrap().kvs().is_empty(), "writes to the clone stay there");
    drop(c);
    source.terminate();
    let before = tree(&source.objects());

    // A second clone into the same place, and a clone that keeps the source's cluster
    // id, are refused and change nothing.
    clone.terminate();
    let (ok, out) = netsy_cli(&["clone", "--from-config", &from, "--to-config", &to]);
    assert!(!ok && out.contains("already holds cluster \"staging\""), "{out}");
    let (ok, out) = netsy_cli(&["clone", "--from-config", &from, "--to-config", &from]);
    assert!(!ok && out.contains("needs its own cluster_id"), "{out}");
    assert_eq!(tree(&source.objects()), before, "refused clones change nothing");
}
