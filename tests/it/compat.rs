//! Every release reads what every older one wrote. `tests/fixtures/*/` each hold a data
//! directory and an object-store archive made by one release (`make-fixture.sh`: keys
//! written, overwritten and deleted, leases, a compaction, two epochs) and what that
//! release served from them (`expected.json`). The current netsy must serve exactly the
//! same, both from a copy of the data directory and restored from the archive alone.

use std::path::{Path, PathBuf};

use base64::Engine;
use etcd_client::GetOptions;
use serde_json::Value;

use crate::common::Netsy;

fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("expected.json").exists())
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no fixtures under {}", root.display());
    found
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("entry");
        let dest = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).expect("copy");
        }
    }
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or(""))
        .expect("base64")
}

fn int(v: &Value) -> i64 {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or(0)
}

/// (key, value, create, mod, version, lease) of every kv in an `etcdctl get -w json`.
type Row = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

fn expected_rows(get: &Value) -> Vec<Row> {
    get["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| {
                    (
                        b64(&kv["key"]),
                        b64(&kv["value"]),
                        int(&kv["create_revision"]),
                        int(&kv["mod_revision"]),
                        int(&kv["version"]),
                        int(&kv["lease"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn rows(c: &mut etcd_client::Client, revision: i64) -> (i64, Vec<Row>) {
    let r = c
        .get("", Some(GetOptions::new().with_all_keys().with_revision(revision)))
        .await
        .expect("range");
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
                kv.lease(),
            )
        })
        .collect();
    (r.header().expect("header").revision(), rows)
}

/// Compares row by row, naming the first difference (the whole lists are long).
fn assert_rows(got: &[Row], want: &[Row], what: &str) {
    let show = |r: &Row| {
        format!(
            "{} = {:?} (create {}, mod {}, version {}, lease {:x})",
            String::from_utf8_lossy(&r.0),
            String::from_utf8_lossy(&r.1),
            r.2,
            r.3,
            r.4,
            r.5
        )
    };
    if let Some((g, w)) = got.iter().zip(want).find(|(g, w)| g != w) {
        panic!("{what}: served {}, expected {}", show(g), show(w));
    }
    assert_eq!(got.len(), want.len(), "{what}: how many keys");
}

async fn serves_exactly(n: &Netsy, expected: &Value, what: &str) {
    let mut c = n.client().await;
    let revision = int(&expected["revision"]);
    let compacted = int(&expected["compact_revision"]);
    let (at, latest) = rows(&mut c, 0).await;
    assert_eq!(at, revision, "{what}: the store's revision");
    assert_rows(&latest, &expected_rows(&expected["latest"]), &format!("{what}: every key now"));
    assert!(latest.len() >= 250, "{what}: the fixture holds a few hundred keys");
    let (_, old) = rows(&mut c, compacted).await;
    assert_rows(
        &old,
        &expected_rows(&expected["at_compaction"]),
        &format!("{what}: keys at the compaction"),
    );
    let (_, end_1) = rows(&mut c, int(&expected["epoch_1_revision"])).await;
    assert_rows(
        &end_1,
        &expected_rows(&expected["at_epoch_1_end"]),
        &format!("{what}: keys at the end of epoch 1"),
    );
    let err = c
        .get("", Some(GetOptions::new().with_all_keys().with_revision(compacted - 1)))
        .await
        .expect_err("before the compaction");
    assert!(err.to_string().contains("compacted"), "{what}: {err}");
    let leases = c.leases().await.expect("lease list");
    let mut ids: Vec<i64> = leases.leases().iter().map(|l| l.id()).collect();
    ids.sort();
    let mut want: Vec<i64> = expected["leases"]
        .as_object()
        .expect("leases")
        .keys()
        .map(|k| i64::from_str_radix(k, 16).expect("hex lease id"))
        .collect();
    want.sort();
    assert_eq!(ids, want, "{what}: the leases (the revoked one is gone)");
    for (hex_id, ttl) in expected["leases"].as_object().expect("leases") {
        let id = i64::from_str_radix(hex_id, 16).expect("hex lease id");
        let got = c
            .lease_time_to_live(id, Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("time to live");
        assert_eq!(got.granted_ttl(), int(&ttl["granted-ttl"]), "{what}: lease {hex_id}'s TTL");
        assert!(got.ttl() > 0 && got.ttl() <= got.granted_ttl(), "{what}: lease {hex_id} is alive");
        let mut keys: Vec<Vec<u8>> = got.keys().to_vec();
        keys.sort();
        let mut want_keys: Vec<Vec<u8>> = ttl["keys"].as_array().map(|k| k.iter().map(b64).collect()).unwrap_or_default();
        want_keys.sort();
        assert_eq!(keys, want_keys, "{what}: lease {hex_id}'s keys");
    }
    // It goes on working: a write gets the next revision.
    let put = c.put("/after-upgrade", "x", None).await.expect("put");
    assert_eq!(put.header().expect("header").revision(), revision + 1, "{what}: the next write");
}

/// The fixtures' data directories were stopped on the machine that made them, whose boot
/// their `state.boot` names; netsy 0.1 and 0.2 recorded no clean stop, so their state
/// database is trusted only in that boot (elsewhere it is rebuilt from the local
/// snapshot and the log, see `mvcc::boot`). The fixture stands for an upgrade in place:
/// the same machine, the same boot.
fn same_boot(data: &std::path::Path) {
    let marker = data.join("state.boot");
    if marker.exists() {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
        std::fs::write(&marker, boot.trim()).expect("write state.boot");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_is_served_from_its_data_directory() {
    for fixture in fixtures() {
        let expected: Value = serde_json::from_slice(&std::fs::read(fixture.join("expected.json")).expect("expected.json")).expect("json");
        let mut n = Netsy::new("", &[]);
        copy_dir(&fixture.join("data"), &n.data_dir());
        copy_dir(&fixture.join("objects"), &n.objects());
        same_boot(&n.data_dir());
        n.spawn();
        serves_exactly(&n, &expected, &format!("{} (data directory)", fixture.display())).await;
        if fixture.join("data/raft.db").exists() {
            // netsy 0.1 and 0.2 kept the Raft log in SQLite: imported into `raft/`, and
            // `raft.db` is now the marker that netsy 0.2 refuses.
            assert!(
                n.data_dir().join("raft").is_dir()
                    && netsy::raft::wal::is_moved_marker(&n.data_dir().join("raft.db")).expect("read raft.db")
                    && !n.data_dir().join("raft.db-wal").exists(),
                "{}: raft.db is imported",
                fixture.display()
            );
            assert!(
                n.log().contains("imported the Raft log from raft.db"),
                "{}:\n{}",
                fixture.display(),
                n.log()
            );
        }
        // And again after a restart on what this netsy wrote itself, in another boot: a
        // clean stop seals the state database, so it is trusted without a rebuild.
        n.terminate();
        let marker = std::fs::read_to_string(n.data_dir().join("state.boot")).expect("state.boot");
        assert_eq!(marker, "synced", "{}: a clean stop seals the state database", fixture.display());
        n.spawn();
        let mut c = n.client().await;
        let (at, _) = rows(&mut c, 0).await;
        assert_eq!(at, int(&expected["revision"]) + 1, "{}: after a restart", fixture.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_is_restored_from_its_archive_alone() {
    for fixture in fixtures() {
        let expected: Value = serde_json::from_slice(&std::fs::read(fixture.join("expected.json")).expect("expected.json")).expect("json");
        let mut n = Netsy::new("", &[]);
        copy_dir(&fixture.join("objects"), &n.objects());
        n.spawn();
        serves_exactly(&n, &expected, &format!("{} (restored from the archive)", fixture.display())).await;
    }
}
