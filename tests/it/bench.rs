//! `netsy bench` drives any etcd endpoint; the suite compares netsy with real etcd.

use std::process::Command;

use crate::common;
use crate::common::Netsy;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_netsy"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("run netsy bench");
    assert!(
        out.status.success(),
        "netsy bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON summary")
}

#[test]
fn every_workload_runs_against_netsy() {
    let n = Netsy::start();
    let ep = format!("127.0.0.1:{}", n.client_port);
    let common = ["--endpoints", ep.as_str(), "--clients", "4", "--conns", "2", "--total", "200"];
    let cases: &[&[&str]] = &[
        &["put", "--val-size", "64", "--key-space-size", "50"],
        &["txn-put", "--key-space-size", "50"],
        &["range", "/p/", "--prefix", "--populate", "20", "--consistency", "s"],
        &["range", "foo"],
        &["txn-mixed"],
        &["watch-latency", "--streams", "2", "--watchers-per-stream", "3", "--put-rate", "500"],
        &["lease-keepalive"],
    ];
    for case in cases {
        let mut args: Vec<&str> = common.to_vec();
        args.extend_from_slice(case);
        let s = bench(&args);
        assert_eq!(s["errors"], 0, "{case:?}: {s}");
        let expected = if case[0] == "watch-latency" { 200 * 2 * 3 } else { 200 };
        assert_eq!(s["requests"], expected, "{case:?}: {s}");
        assert!(s["p50"].as_f64().unwrap() > 0.0 && s["p99"].as_f64().unwrap() >= s["p50"].as_f64().unwrap());
    }
    // txn-mixed really wrote objects and the compaction bookkeeping key.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = n.client().await;
        let r = c.get("compact_rev_key", None).await.unwrap();
        // Every tenth step is the compaction CAS; concurrent clients lose some of them,
        // exactly like competing kube-apiservers.
        let v = r.kvs()[0].version();
        assert!((1..=20).contains(&v), "compact_rev_key version {v}");
        let objects = c
            .get(
                "/registry/bench/",
                Some(etcd_client::GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap();
        assert!(objects.count() <= 4, "each client's objects are deleted at the end of their life");
    });
}

#[test]
fn bench_fails_clearly_without_a_server() {
    let out = Command::new(env!("CARGO_BIN_EXE_netsy"))
        .args(["bench", "--endpoints", "127.0.0.1:1", "--total", "1", "put"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to http://127.0.0.1:1"));
}

/// A quick suite run against real etcd 3.5.1 writes the three report files.
#[test]
fn quick_suite_writes_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_netsy"))
        .args(["bench", "suite", "--quick", "--rounds", "1", "--load-keys", "2000", "--etcd-bin"])
        .arg(common::etcd_bin_dir().join("etcd"))
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let md = std::fs::read_to_string(dir.path().join("results.md")).unwrap();
    for row in [
        "put, 100 clients",
        "txn-mixed",
        "range 1 key",
        "prefix range",
        "watch-latency",
        "lease keep-alive",
        "RSS (MiB)",
        "3 members: put",
        "failover: leader kill",
    ] {
        assert!(md.contains(row), "missing {row} in\n{md}");
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap()).unwrap();
    let all = json["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .chain(json["cluster"].as_array().unwrap());
    for c in all {
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(c["etcd"]["errors"], 0, "{c}\n{log}");
        assert_eq!(c["netsy"]["errors"], 0, "{c}\n{log}");
        assert!(c["netsy"]["requests"].as_u64().unwrap() > 0);
    }
    for side in json["failover_seconds"].as_array().unwrap() {
        let rounds = side.as_array().unwrap();
        assert_eq!(rounds.len(), 1);
        assert!(rounds[0].as_f64().unwrap() > 0.0);
    }
    assert!(std::fs::read_to_string(dir.path().join("results.svg")).unwrap().starts_with("<svg"));
}
