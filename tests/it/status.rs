//! `netsy status`, black-box: the real binary against a 3-member mTLS cluster whose
//! certificates come from `netsy certs dev`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{self, wait_until};
use netsy::proto::etcdserverpb as pb;
use netsy::tls::material::ClientFiles;
use serde_json::Value;

/// `netsy certs dev` for the cluster `test` in `dir`: nodes netsy-0..2, each server
/// certificate valid for a different number of days (30, 40, 50), and the client
/// `etcdctl` (the CA is made once and reused).
fn dev_certs(dir: &Path) {
    for i in 0..3 {
        let (ok, out) = common::netsy_cli(&[
            "certs",
            "dev",
            "--cluster-id",
            "test",
            "--nodes",
            &format!("netsy-{i}"),
            "--clients",
            "etcdctl",
            "--days",
            &(30 + 10 * i).to_string(),
            "--out",
            &dir.display().to_string(),
        ]);
        assert!(ok, "{out}");
    }
}

fn node_env(dir: &Path, i: usize) -> Vec<(&'static str, String)> {
    let node = format!("netsy-{i}");
    let f = |name: &str| dir.join(&node).join(name).display().to_string();
    vec![
        ("NETSY_NODE_ID", node.clone()),
        ("NETSY_TLS_CA_CERT", dir.join("ca.crt").display().to_string()),
        ("NETSY_TLS_SERVER_CERT", f("server.crt")),
        ("NETSY_TLS_SERVER_KEY", f("server.key")),
        ("NETSY_TLS_CLIENT_CERT", f("peer.crt")),
        ("NETSY_TLS_CLIENT_KEY", f("peer.key")),
    ]
}

/// `--cacert`, `--cert`, `--key` for the client `name` of `dir`.
fn tls_flags(dir: &Path, name: &str) -> Vec<String> {
    let client = |ext: &str| dir.join("clients").join(format!("{name}.{ext}")).display().to_string();
    vec![
        format!("--cacert={}", dir.join("ca.crt").display()),
        format!("--cert={}", client("crt")),
        format!("--key={}", client("key")),
    ]
}

/// Runs `netsy status` with `args`: whether it exited 0, its stdout and its stderr.
fn status(args: &[String]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_netsy"))
        .arg("status")
        .args(args)
        .output()
        .expect("run netsy status");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn status_json(endpoints: &[String], flags: &[String]) -> (bool, Value, String) {
    let mut args = vec![format!("--endpoints={}", endpoints.join(",")), "-w".into(), "json".into()];
    args.extend(flags.iter().cloned());
    let (ok, out, err) = status(&args);
    let json = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}\n{err}"));
    (ok, json, err)
}

/// The notAfter of a PEM certificate file, in RFC 3339.
fn not_after(path: &PathBuf) -> String {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_file(path).expect("read a PEM certificate");
    let unix = netsy::tls::identity::not_after(&der).expect("parse the certificate");
    time::OffsetDateTime::from_unix_timestamp(unix)
        .expect("a time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

fn rows(report: &Value) -> &Vec<Value> {
    report["endpoints"].as_array().expect("endpoints")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_every_member_its_role_archive_and_certificate_and_fails_for_a_dead_one() {
    let certs = tempfile::tempdir().expect("tempdir");
    dev_certs(certs.path());
    let flags = tls_flags(certs.path(), "etcdctl");
    let mut c = tokio::task::block_in_place(|| {
        common::Cluster::start_with_env(3, r#""tls": { "min_version": "1.2" },"#, |i| node_env(certs.path(), i), &flags)
    });
    c.wait_leader();
    let endpoints = c.endpoints();

    // The leader lists the archive's snapshots within a second of leading.
    let mut report = Value::Null;
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(30), "the leader's archive figures", || {
            let (ok, json, err) = status_json(&endpoints, &flags);
            assert!(ok, "{json:#}\n{err}\n{}", c.logs());
            report = json;
            rows(&report)
                .iter()
                .any(|r| r["role"] == "leader" && r["archive"]["snapshot_age_seconds"].is_u64())
        })
    });

    assert_eq!(report["members"].as_array().expect("members").len(), 3, "{report:#}");
    let rows = rows(&report);
    assert_eq!(rows.len(), 3, "{report:#}");
    let leaders: Vec<&Value> = rows.iter().filter(|r| r["role"] == "leader").collect();
    assert_eq!(leaders.len(), 1, "{report:#}");
    let leader_id = leaders[0]["member_id"].as_str().expect("leader id");
    assert_eq!(report["leader"], leader_id, "{report:#}");
    let term = rows[0]["status"]["raft_term"].as_u64().expect("term");
    assert!(term >= 1);
    for (i, row) in rows.iter().enumerate() {
        let s = &row["status"];
        assert!(row["error"].is_null(), "{row:#}");
        assert_eq!(row["endpoint"], endpoints[i]);
        assert_eq!(row["name"], format!("netsy-{i}"), "{row:#}");
        assert_eq!(s["leader"], leader_id, "every member names the same leader: {report:#}");
        assert_eq!(s["raft_term"], term, "{report:#}");
        let (index, applied) = (s["raft_index"].as_u64().unwrap(), s["raft_applied_index"].as_u64().unwrap());
        assert!(applied >= 1 && applied <= index, "{row:#}");
        let (size, quota) = (s["db_size"].as_i64().unwrap(), s["db_size_quota"].as_i64().unwrap());
        assert!(size > 0 && size <= quota, "{row:#}");
        assert_eq!(s["errors"], serde_json::json!([]), "{row:#}");
        assert!(row["archive"]["epoch"].as_u64().is_some_and(|e| e >= 1), "{row:#}");
        let cert = certs.path().join(format!("netsy-{i}")).join("server.crt");
        assert_eq!(row["cert_not_after"], not_after(&cert), "{row:#}");
        if row["role"] == "leader" {
            let a = &row["archive"];
            assert!(a["uploaded_index"].as_u64().is_some_and(|u| u >= 1 && u <= applied), "{row:#}");
            assert!(a["lag_entries"].is_u64() && a["lag_seconds"].is_u64(), "{row:#}");
            assert!(a["snapshot_age_seconds"].as_u64().is_some_and(|age| age < 600), "{row:#}");
        } else {
            assert_eq!(row["role"], "follower", "{row:#}");
            assert!(row["archive"]["lag_entries"].is_null(), "only the leader's lag is current: {row:#}");
        }
    }
    assert_eq!(report["alarms"], serde_json::json!([]), "{report:#}");

    // The table: the headers, then a row per endpoint.
    let mut args = vec![format!("--endpoints={}", endpoints.join(","))];
    args.extend(flags.iter().cloned());
    let (ok, table, err) = tokio::task::block_in_place(|| status(&args));
    assert!(ok, "{table}\n{err}");
    let header = table.lines().nth(1).expect("a header line");
    for h in [
        "ENDPOINT",
        "NAME",
        "ID",
        "ROLE",
        "TERM",
        "INDEX",
        "APPLIED",
        "DB SIZE",
        "QUOTA",
        "EPOCH",
        "ARCHIVE LAG",
        "SNAPSHOT AGE",
        "CERT EXPIRES",
        "ERRORS",
    ] {
        assert!(header.contains(&format!(" {h} ")), "{h}: {table}");
    }
    for (i, e) in endpoints.iter().enumerate() {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| {e} ")))
            .unwrap_or_else(|| panic!("no row for {e}: {table}"));
        assert!(row.contains(&format!(" netsy-{i} ")), "{row}");
    }
    assert!(
        table.contains(&format!("leader: {}", leaders[0]["name"].as_str().unwrap())),
        "{table}"
    );
    assert!(table.contains("alarms: none"), "{table}");

    // An alarm raised on a member shows up, by name.
    let target = rows.iter().find(|r| r["role"] == "follower").expect("a follower");
    let target_id = u64::from_str_radix(target["member_id"].as_str().unwrap(), 16).expect("hex id");
    let files = ClientFiles {
        ca_cert: Some(certs.path().join("ca.crt")),
        cert: Some(certs.path().join("clients/etcdctl.crt")),
        key: Some(certs.path().join("clients/etcdctl.key")),
    };
    let config = netsy::tls::verify::tool_client_config(&files.load().expect("client files"), false).expect("client config");
    let channel = netsy::tls::connect::client_channel(
        &endpoints[0],
        Some(std::sync::Arc::new(config)),
        Duration::from_secs(5),
        &Default::default(),
    )
    .await
    .expect("connect");
    pb::maintenance_client::MaintenanceClient::new(channel)
        .alarm(pb::AlarmRequest {
            action: pb::alarm_request::AlarmAction::Activate as i32,
            member_id: target_id,
            alarm: pb::AlarmType::Nospace as i32,
        })
        .await
        .expect("raise NOSPACE");
    let expected = serde_json::json!([{
        "member_id": target["member_id"],
        "member": target["name"],
        "alarm": "NOSPACE",
    }]);
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(10), "the alarm in netsy status", || {
            let (ok, json, err) = status_json(&endpoints, &flags);
            assert!(ok, "{json:#}\n{err}");
            json["alarms"] == expected
        })
    });
    let (_, table, _) = tokio::task::block_in_place(|| status(&args));
    assert!(
        table.contains(&format!(
            "alarms: NOSPACE on {} ({})",
            target["name"].as_str().unwrap(),
            target["member_id"].as_str().unwrap()
        )),
        "{table}"
    );

    // A member that does not answer: its row has the error (and its name, from the
    // member list), the others are still there, and the command fails.
    let dead = endpoints
        .iter()
        .position(|e| *e == target["endpoint"].as_str().unwrap())
        .expect("the follower's endpoint");
    c.nodes[dead].kill9();
    let (ok, report, err) = tokio::task::block_in_place(|| status_json(&endpoints, &flags));
    assert!(!ok, "a dead member fails the command: {report:#}");
    assert!(
        err.contains(&format!("failed to get the status of endpoint {}", endpoints[dead])),
        "{err}"
    );
    let rows = report["endpoints"].as_array().expect("endpoints");
    assert_eq!(rows.len(), 3, "{report:#}");
    for (i, row) in rows.iter().enumerate() {
        if i == dead {
            assert!(row["error"].as_str().is_some_and(|e| e.contains("cannot connect")), "{row:#}");
            assert!(row["status"].is_null(), "{row:#}");
            assert_eq!(row["name"], format!("netsy-{i}"), "{row:#}");
        } else {
            assert!(row["error"].is_null() && row["status"]["raft_term"].is_u64(), "{row:#}");
        }
    }
    let (ok, table, _) = tokio::task::block_in_place(|| status(&args));
    assert!(!ok);
    let dead_row = table
        .lines()
        .find(|l| l.starts_with(&format!("| {} ", endpoints[dead])))
        .expect("the dead member's row");
    assert!(dead_row.contains("cannot connect"), "{table}");
}

#[test]
fn a_client_certificate_the_member_refuses_is_a_clear_error() {
    let certs = tempfile::tempdir().expect("tempdir");
    dev_certs(certs.path());
    let mut n = common::Netsy::new("", &node_env(certs.path(), 0));
    n.spawn();
    let endpoint = n.endpoint();
    // From the same CA, but of another cluster (`certs dev` reuses the CA in the dir).
    let (ok, out) = common::netsy_cli(&[
        "certs",
        "dev",
        "--cluster-id",
        "other",
        "--nodes",
        "stranger",
        "--clients",
        "intruder",
        "--out",
        &certs.path().display().to_string(),
    ]);
    assert!(ok, "{out}");
    let endpoints = std::slice::from_ref(&endpoint);
    let (ok, _, err) = status_json(endpoints, &tls_flags(certs.path(), "intruder"));
    assert!(!ok);
    assert!(
        err.contains("the member closed the TLS connection, as it does when it refuses the client certificate: check that --cert and --key are a client certificate of this cluster"),
        "{err}"
    );
    // No client certificate at all.
    let (ok, _, err) = status_json(endpoints, &[format!("--cacert={}", certs.path().join("ca.crt").display())]);
    assert!(!ok);
    assert!(
        err.contains("it requires a client certificate of the cluster; give --cert and --key"),
        "{err}"
    );
    // The right one works.
    let (ok, report, err) = status_json(endpoints, &tls_flags(certs.path(), "etcdctl"));
    assert!(ok, "{report:#}\n{err}");
    assert_eq!(report["endpoints"][0]["role"], "leader", "{report:#}");
    // A CA that did not issue the member's certificate: this side refuses the member.
    let other = tempfile::tempdir().expect("tempdir");
    dev_certs(other.path());
    let mut flags = tls_flags(certs.path(), "etcdctl");
    flags[0] = format!("--cacert={}", other.path().join("ca.crt").display());
    let (ok, _, err) = status_json(endpoints, &flags);
    assert!(!ok);
    assert!(
        err.contains("the member's server certificate does not verify against --cacert") && err.contains("invalid peer certificate"),
        "{err}"
    );
}

#[test]
fn plaintext_endpoints_are_asked_without_tls_and_show_no_certificate() {
    let n = common::Netsy::start();
    let bare = format!("127.0.0.1:{}", n.client_port);
    for endpoint in [n.endpoint(), bare] {
        let (ok, report, err) = status_json(std::slice::from_ref(&endpoint), &[]);
        assert!(ok, "{report:#}\n{err}");
        let row = &report["endpoints"][0];
        assert_eq!(row["role"], "leader", "{report:#}");
        assert!(row["cert_not_after"].is_null(), "{row:#}");
        assert!(row["metrics_error"].is_null(), "{row:#}");
        assert!(row["archive"]["epoch"].as_u64().is_some_and(|e| e >= 1), "{row:#}");
        assert_eq!(report["members"][0]["name"], "netsy-0", "{report:#}");
    }
}
