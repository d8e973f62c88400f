//! Restarts keep every acknowledged write, including after `kill -9`; a second process on
//! the same data directory is refused.

use std::process::Command;

use crate::common;
use crate::common::Netsy;

#[tokio::test]
async fn kill9_keeps_every_acknowledged_write() {
    let mut n = Netsy::start();
    let mut acked = Vec::new();
    {
        let mut c = n.client().await;
        for i in 0..300 {
            let r = c.put(format!("k{i:04}"), format!("v{i}"), None).await.unwrap();
            acked.push(r.header().unwrap().revision());
        }
        c.delete("k0000", None).await.unwrap();
        let lease = c.lease_grant(3600, None).await.unwrap().id();
        c.put("leased", "x", Some(etcd_client::PutOptions::new().with_lease(lease)))
            .await
            .unwrap();
    }
    // Concurrent writers while the process is killed: whatever was acknowledged must stay.
    let endpoint = n.endpoint();
    let concurrent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = tokio::spawn({
        let concurrent = concurrent.clone();
        async move {
            let mut c = etcd_client::Client::connect([endpoint], None).await.unwrap();
            let mut ok = Vec::new();
            for i in 0..10_000 {
                match c.put(format!("w{i:05}"), "x", None).await {
                    Ok(_) => {
                        ok.push(i);
                        concurrent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(_) => break,
                }
            }
            ok
        }
    });
    // (Awaiting, not blocking: the writer runs on this test's thread.)
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while concurrent.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for some concurrent writes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    n.kill9();
    let acked_concurrent = writer.await.unwrap();
    assert!(!acked_concurrent.is_empty());

    n.spawn();
    let mut c = n.client().await;
    let r = c.get("k", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(r.count(), 299);
    for i in &acked_concurrent {
        let r = c.get(format!("w{i:05}"), None).await.unwrap();
        assert_eq!(r.kvs().len(), 1, "acknowledged write w{i:05} lost after kill -9");
    }
    let leased = c.get("leased", None).await.unwrap();
    assert_eq!(leased.kvs().len(), 1);
    let rev = c.put("after", "restart", None).await.unwrap().header().unwrap().revision();
    assert!(rev > *acked.last().unwrap(), "revisions continue after restart");
}

#[tokio::test]
async fn graceful_restart_keeps_state() {
    let mut n = Netsy::start();
    let rev = n.client().await.put("a", "1", None).await.unwrap().header().unwrap().revision();
    n.terminate();
    n.spawn();
    let r = n.client().await.get("a", None).await.unwrap();
    assert_eq!(r.kvs()[0].mod_revision(), rev);
    assert_eq!(r.header().unwrap().revision(), rev);
}

#[test]
fn second_process_on_same_data_dir_is_refused() {
    let n = Netsy::start();
    let out = Command::new(env!("CARGO_BIN_EXE_netsy"))
        .args(["serve", "--config"])
        .arg(n.config_path())
        .env("NETSY_DATA_DIR", n.data_dir())
        .env("NETSY_BIND_CLIENT", format!("127.0.0.1:{}", common::free_port()))
        .env("NETSY_BIND_PEER", format!("127.0.0.1:{}", common::free_port()))
        .env("NETSY_BIND_HEALTH", format!("127.0.0.1:{}", common::free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another netsy process holds the data directory"), "{err}");
}

#[test]
fn unwritable_data_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let cfg = dir.path().join("c.jsonc");
    std::fs::write(&cfg, r#"{"cluster_id":"t","storage":{"provider":"memory"}}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_netsy"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("NETSY_DATA_DIR", file.join("sub"))
        .env("NETSY_BIND_CLIENT", "127.0.0.1:0")
        .env("NETSY_BIND_PEER", "127.0.0.1:0")
        .env("NETSY_BIND_HEALTH", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("data directory") && err.contains("NETSY_DATA_DIR"), "{err}");
}

#[test]
fn validate_flag_reports_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.jsonc");
    std::fs::write(
        &good,
        "// c\n{\"cluster_id\": \"prod\", \"allow_insecure\": true, \"storage\": {\"provider\": \"s3\", \"bucket_name\": \"b\"},}",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_netsy"))
        .arg("--validate")
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bad = dir.path().join("bad.jsonc");
    std::fs::write(&bad, "{\"cluster_id\": \"prod\", \"storage\": {\"provider\": \"s3\"}}").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_netsy"))
        .arg("--validate")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("storage.bucket_name"));
    let out = Command::new(env!("CARGO_BIN_EXE_netsy")).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("netsy "));
}

/// Puts `count` keys one by one; returns each key's revision.
async fn put_keys(c: &mut etcd_client::Client, prefix: &str, count: usize) -> Vec<(String, i64)> {
    let mut acked = Vec::new();
    for i in 0..count {
        let key = format!("{prefix}{i:04}");
        let r = c.put(key.clone(), format!("v{i}"), None).await.unwrap();
        acked.push((key, r.header().unwrap().revision()));
    }
    acked
}

async fn assert_all_present(n: &Netsy, acked: &[(String, i64)]) {
    let mut c = n.client().await;
    for (key, rev) in acked {
        let r = c.get(key.as_str(), None).await.unwrap();
        assert_eq!(r.kvs().len(), 1, "acknowledged write {key} lost after the OS crash");
        assert_eq!(r.kvs()[0].mod_revision(), *rev, "{key} came back at another revision");
    }
    let last = acked.last().unwrap().1;
    let rev = c.put("after", "crash", None).await.unwrap().header().unwrap().revision();
    assert_eq!(rev, last + 1, "revisions continue where they were");
}

#[tokio::test]
async fn state_lost_in_an_os_crash_is_rebuilt_from_the_local_snapshot_and_the_log() {
    let mut n = Netsy::start_with(r#""raft": { "snapshot_log_entries": 50 },"#);
    let acked = put_keys(&mut n.client().await, "k", 200).await;
    common::wait_until(std::time::Duration::from_secs(20), "a local Raft snapshot", || {
        n.data_dir().join("snapshots/current.meta").exists()
    });
    n.kill9();
    n.simulate_os_crash();
    n.spawn();
    assert!(n.log().contains("FromSnapshot"), "rebuilt from the snapshot: {}", n.log());
    assert_all_present(&n, &acked).await;
}

#[tokio::test]
async fn state_lost_in_an_os_crash_is_rebuilt_from_the_whole_log_before_any_snapshot() {
    let mut n = Netsy::start();
    let acked = put_keys(&mut n.client().await, "k", 100).await;
    assert!(!n.data_dir().join("snapshots/current.meta").exists());
    n.kill9();
    n.simulate_os_crash();
    n.spawn();
    assert!(n.log().contains("FromLog"), "rebuilt from the log alone: {}", n.log());
    assert_all_present(&n, &acked).await;
}

#[tokio::test]
async fn a_process_crash_keeps_the_unsynced_state_database() {
    let mut n = Netsy::start();
    let acked = put_keys(&mut n.client().await, "k", 50).await;
    n.kill9();
    // Same boot: the page cache kept every commit; nothing is rebuilt.
    n.spawn();
    assert!(!n.log().contains("rebuilt it from the local snapshot"));
    assert_all_present(&n, &acked).await;
}
