//! `netsy migrate --from-etcd`: a live etcd's keys move into a new netsy cluster with
//! their revisions, versions and leases, and revisions continue above the source's.

use crate::common::{Etcd, Netsy};
use etcd_client::{GetOptions, PutOptions};

type Row = (Vec<u8>, Vec<u8>, i64, i64, i64, bool);

async fn rows(c: &mut etcd_client::Client) -> (Vec<Row>, i64) {
    let r = c.get(vec![0u8], Some(GetOptions::new().with_from_key())).await.unwrap();
    let rows = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease() != 0,
            )
        })
        .collect();
    (rows, r.header().unwrap().revision())
}

#[tokio::test]
async fn migrates_a_live_etcd_keeping_revisions() {
    let etcd = Etcd::start();
    let mut e = etcd_client::Client::connect([etcd.endpoint()], None).await.unwrap();
    for i in 0..2500 {
        e.put(format!("/registry/pods/ns/p{i:04}"), format!("spec-{i}"), None)
            .await
            .unwrap();
    }
    for i in 0..100 {
        e.put(format!("/registry/pods/ns/p{i:04}"), format!("spec-{i}-v2"), None)
            .await
            .unwrap();
    }
    e.delete("/registry/pods/ns/p0001", None).await.unwrap();
    let lease = e.lease_grant(600, None).await.unwrap().id();
    e.put("/registry/events/e1", "event", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let (source, source_rev) = rows(&mut e).await;

    let mut n = Netsy::start();
    n.terminate();
    n.wipe();
    std::fs::remove_dir_all(n.objects()).unwrap();
    let migrate = |n: &Netsy| {
        std::process::Command::new(env!("CARGO_BIN_EXE_netsy"))
            .args(["migrate", "--from-etcd", &format!("http://{}", etcd.endpoint()), "--config"])
            .arg(n.config_path())
            .output()
            .unwrap()
    };
    let out = migrate(&n);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("migrated 2500 keys and 1 leases"));

    n.spawn();
    let mut c = n.client().await;
    let (copied, rev) = rows(&mut c).await;
    assert_eq!(copied, source, "every key with its revisions, version and lease");
    assert_eq!(rev, source_rev);
    let ttl = c.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 600);
    let next = c
        .put("/registry/pods/ns/new", "x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert_eq!(next, source_rev + 1, "revisions continue above the source's");
    // Old revisions were never copied: they read as compacted, not as wrong data.
    let old = c.get("/registry/pods/ns/p0000", Some(GetOptions::new().with_revision(5))).await;
    assert!(old.unwrap_err().to_string().contains("compacted"));

    // A second migration into the same storage is refused.
    let again = migrate(&n);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds cluster"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
