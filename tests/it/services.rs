//! Maintenance, Lease, Cluster, Auth and the HTTP health port, black-box.

use std::time::Duration;

use crate::common::Netsy;
use etcd_client::{AlarmAction, AlarmType};

#[tokio::test]
async fn status_reports_version_size_and_raft_state() {
    let n = Netsy::start();
    let mut c = n.client().await;
    c.put("a", "1", None).await.unwrap();
    let s = c.status().await.unwrap();
    assert_eq!(s.version(), "3.5.21");
    assert!(s.db_size() > 0 && s.raft_used_db_size() > 0);
    let members = c.member_list().await.unwrap();
    assert_eq!(members.members().len(), 1);
    let me = &members.members()[0];
    assert_eq!(s.leader(), me.id(), "the single member leads");
    assert_eq!(s.header().unwrap().member_id(), me.id());
    assert!(s.raft_index() >= 2 && s.raft_applied_index() == s.raft_index() && s.raft_term() >= 1);
    assert_eq!(me.client_urls(), [n.endpoint()]);
    assert_eq!(me.name(), "netsy-0");
}

#[tokio::test]
async fn hash_kv_is_deterministic_and_moves_with_writes() {
    let n = Netsy::start();
    let mut c = n.client().await;
    c.put("a", "1", None).await.unwrap();
    let h1 = c.hash_kv(0).await.unwrap();
    let h1b = c.hash_kv(0).await.unwrap();
    assert_eq!(h1.hash(), h1b.hash());
    c.put("a", "2", None).await.unwrap();
    let h2 = c.hash_kv(0).await.unwrap();
    assert_ne!(h1.hash(), h2.hash());
    assert_eq!(c.hash_kv(2).await.unwrap().hash(), h1.hash(), "hash at a past revision is stable");
    c.hash().await.unwrap();
}

#[tokio::test]
async fn defragment_and_snapshot_stream() {
    let n = Netsy::start();
    let mut c = n.client().await;
    for i in 0..200 {
        c.put(format!("k{i}"), vec![b'x'; 1000], None).await.unwrap();
    }
    c.delete("k", Some(etcd_client::DeleteOptions::new().with_prefix())).await.unwrap();
    let rev = c.put("last", "1", None).await.unwrap().header().unwrap().revision();
    c.compact(rev, None).await.unwrap();
    let before = c.status().await.unwrap().raft_used_db_size();
    c.defragment().await.unwrap();
    let after = c.status().await.unwrap();
    assert!(
        after.db_size() <= before + 64 * 1024,
        "defragment reclaimed space: {} vs {before}",
        after.db_size()
    );

    let mut stream = c.snapshot().await.unwrap();
    let mut blob = Vec::new();
    let mut last_remaining = u64::MAX;
    while let Some(msg) = stream.message().await.unwrap() {
        assert!(msg.remaining_bytes() < last_remaining);
        last_remaining = msg.remaining_bytes();
        blob.extend_from_slice(msg.blob());
    }
    assert_eq!(last_remaining, 0);
    // restore it into a new node
    let file = n.dir.path().join("snap.db");
    std::fs::write(&file, &blob).unwrap();
    let mut restored = Netsy::start();
    restored.kill9();
    std::fs::remove_dir_all(restored.data_dir()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_netsy"))
        .args(["snapshot", "restore"])
        .arg(&file)
        .arg("--data-dir")
        .arg(restored.data_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    restored.spawn();
    let mut rc = restored.client().await;
    let r = rc.get("last", None).await.unwrap();
    assert_eq!(r.kvs()[0].mod_revision(), rev);
    assert_eq!(r.header().unwrap().revision(), rev, "revision continues from the snapshot");
    // a corrupted snapshot is refused
    blob[100] ^= 0xff;
    std::fs::write(&file, &blob).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_netsy"))
        .args(["snapshot", "restore"])
        .arg(&file)
        .arg("--data-dir")
        .arg(n.dir.path().join("other"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum"));
    assert!(
        !n.dir.path().join("other/state.db").exists(),
        "a refused snapshot leaves no database behind"
    );
}

#[tokio::test]
async fn nospace_alarm_blocks_puts_until_disarmed() {
    let n = Netsy::start_with("\"limits\": { \"quota_backend_bytes\": 300000 },");
    let mut c = n.client().await;
    let mut hit = None;
    for i in 0..2000 {
        match c.put(format!("k{i}"), vec![b'x'; 2000], None).await {
            Ok(_) => {}
            Err(etcd_client::Error::GRpcStatus(s)) => {
                hit = Some((s.code(), s.message().to_string()));
                break;
            }
            Err(e) => panic!("{e:?}"),
        }
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(1100)).await; // size is sampled every second
        }
    }
    assert_eq!(
        hit,
        Some((
            tonic::Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded".to_string()
        ))
    );
    let alarms = c.alarm(AlarmAction::Get, AlarmType::None, None).await.unwrap();
    assert_eq!(alarms.alarms().len(), 1);
    assert_eq!(alarms.alarms()[0].alarm(), AlarmType::Nospace);
    let s = c.status().await.unwrap();
    assert!(s.errors().iter().any(|e| e.contains("NOSPACE")), "{:?}", s.errors());
    assert_eq!(n.http_get("/health").0, 503);
    let nospace = r#"netsy_alarm_active{alarm="NOSPACE"}"#;
    assert_eq!(n.metric(nospace), 1.0);
    assert_eq!(n.metric("etcd_server_quota_backend_bytes"), 300000.0);
    // deletes, compaction and defragment still work; after freeing space and disarming,
    // puts work again (etcd's recovery procedure)
    let del = c.delete("k", Some(etcd_client::DeleteOptions::new().with_prefix())).await.unwrap();
    c.compact(del.header().unwrap().revision(), None).await.unwrap();
    c.defragment().await.unwrap();
    let member = alarms.alarms()[0].member_id();
    c.alarm(
        AlarmAction::Deactivate,
        AlarmType::Nospace,
        Some({
            let mut o = etcd_client::AlarmOptions::new();
            o.with_member(member);
            o
        }),
    )
    .await
    .unwrap();
    assert!(c.alarm(AlarmAction::Get, AlarmType::None, None).await.unwrap().alarms().is_empty());
    c.put("x", "y", None).await.unwrap();
    assert_eq!(n.http_get("/health").0, 200);
    assert_eq!(n.metric(nospace), 0.0);
}

#[tokio::test]
async fn cluster_and_auth_answer_etcd_errors() {
    let n = Netsy::start();
    let mut c = n.client().await;
    let id = c.member_list().await.unwrap().members()[0].id();
    let err = c.member_remove(id + 1).await.unwrap_err();
    assert!(err.to_string().contains("etcdserver: member not found"), "{err}");
    let err = c.member_add(["http://10.0.0.9:2381"], None).await.unwrap_err();
    assert!(err.to_string().contains("etcdserver: not capable"), "{err}");
    c.move_leader(id).await.unwrap();
    let err = c.move_leader(id + 1).await.unwrap_err();
    assert!(err.to_string().contains("bad leader transferee"), "{err}");
    let err = c.user_add("u", "p", None).await.unwrap_err();
    assert!(err.to_string().contains("etcdserver: authentication is not enabled"), "{err}");
}

#[tokio::test]
async fn http_health_version_metrics() {
    let n = Netsy::start();
    let (code, body) = n.http_get("/health");
    assert_eq!((code, body.as_str()), (200, r#"{"health":"true","reason":""}"#));
    let (code, body) = n.http_get("/version");
    assert_eq!(code, 200);
    assert_eq!(body, r#"{"etcdcluster":"3.5.0","etcdserver":"3.5.21"}"#);
    assert_eq!(n.http_get("/livez").0, 200);
    assert_eq!(n.http_get("/readyz").0, 200);
    n.client().await.put("a", "b", None).await.unwrap();
    let (code, body) = n.http_get("/metrics");
    assert_eq!(code, 200);
    for name in [
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_server_has_leader 1",
        "etcd_server_proposals_committed_total",
        "etcd_debugging_mvcc_current_revision 2",
    ] {
        assert!(body.contains(name), "missing {name} in metrics");
    }
}
