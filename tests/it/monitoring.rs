//! The chart's dashboard and alerts (deploy/helm/monitoring, docs/observability.md), as
//! Helm's engine renders them: the rules pass `promtool check rules` and the promtool unit
//! tests in tests/it/monitoring/rules.test.yaml, which make every alert fire and stay
//! quiet; every metric the dashboard and the rules read is exported by a running node;
//! the metrics behind the alerts hold the values the node knows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{etcd_bin_dir, free_port, wait_until, Netsy};
use crate::helm::render;
use netsy::tls::dev::{Ca, LeafSpec};
use netsy::tls::Role;

const RULE_TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/monitoring/rules.test.yaml");

/// promtool, which `make test` unpacks from Debian's prometheus package (`make promtool`).
fn promtool() -> PathBuf {
    let bin = std::env::var("NETSY_PROMTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/tools/promtool")));
    assert!(
        bin.exists(),
        "promtool not found at {}; run the tests with `make test` (its promtool target unpacks it from Debian's prometheus package)",
        bin.display()
    );
    bin
}

/// Runs `cmd`, which must succeed; its stdout and stderr.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// A YAML file as JSON, read with the venv's PyYAML (Helm's test tooling installs it).
fn yaml_file(path: &Path) -> Value {
    let script = "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)";
    let out = run(Command::new(etcd_bin_dir().join("python")).args(["-c", script]).arg(path));
    serde_json::from_str(&out).expect("YAML as JSON")
}

fn monitoring_on() -> Value {
    json!({"monitoring": {"dashboards": {"enabled": true}, "rules": {"enabled": true}}})
}

/// The chart rendered with `values`: the PrometheusRule's spec and the dashboard.
fn rendered(values: Value) -> (Value, Value) {
    let r = render(values);
    let rules = r.get("PrometheusRule", "netsy")["spec"].clone();
    let text = r.get("ConfigMap", "netsy-dashboard")["data"]["netsy.json"]
        .as_str()
        .expect("netsy.json")
        .to_string();
    (rules, serde_json::from_str(&text).expect("the dashboard is JSON"))
}

/// Every alerting rule: (alert, severity, expr).
fn alerts(rules: &Value) -> Vec<(String, String, String)> {
    let mut all = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let s = |v: &Value| v.as_str().unwrap_or_else(|| panic!("{rule}")).to_string();
            all.push((s(&rule["alert"]), s(&rule["labels"]["severity"]), s(&rule["expr"])));
        }
    }
    all
}

/// Every query of the dashboard: its panels' targets (rows' panels included) and the
/// metrics its variables list label values of.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    fn panels(list: &Value, out: &mut Vec<String>) {
        for p in list.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(t["expr"].as_str().unwrap_or_else(|| panic!("{t}")).to_string());
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    for v in dashboard["templating"]["list"].as_array().expect("templating") {
        let query = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap_or_default();
        if let Some(args) = query.strip_prefix("label_values(") {
            out.push(args.split(',').next().unwrap_or_default().to_string());
        }
    }
    out
}

/// The end of the bracketed part that opens at `chars[start]` (its closing character's
/// index), skipping quoted strings.
fn closing(chars: &[char], start: usize, close: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() && chars[i] != close {
        if matches!(chars[i], '"' | '\'' | '`') {
            i = string_end(chars, i);
        }
        i += 1;
    }
    i
}

/// The index of the quote that ends the string opening at `chars[start]`.
fn string_end(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' {
            i += 1;
        }
        i += 1;
    }
    i
}

/// The metric names a PromQL expression reads: identifiers outside label matchers,
/// ranges, strings and grouping clauses (`by (...)`, `on (...)`, ...) that are neither
/// function calls nor keywords. Grafana's `$variables` are skipped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    // Aggregations are keywords too: `sum by (job) (x)` puts a clause before the call.
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = string_end(&chars, i) + 1;
        } else if c == '{' {
            i = closing(&chars, i, '}') + 1;
        } else if c == '[' {
            i = closing(&chars, i, ']') + 1;
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            // A variable, or a number or duration (1e3, 0.99, 5m).
            i += 1;
            while i < chars.len() && (ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if ident(c) {
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            if GROUPING.contains(&word.as_str()) {
                if call {
                    i = closing(&chars, next, ')') + 1;
                }
            } else if !call && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The metric names a `/metrics` body exports, and those of its histograms.
fn exported(body: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut names, mut histograms) = (BTreeSet::new(), BTreeSet::new());
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                names.insert(name.to_string());
                if kind == "histogram" {
                    histograms.insert(name.to_string());
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    (names, histograms)
}

/// Whether `name` is exported, a histogram's `_bucket`, `_sum` or `_count` included.
fn is_exported(name: &str, (names, histograms): &(BTreeSet<String>, BTreeSet<String>)) -> bool {
    names.contains(name)
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|base| histograms.contains(base)))
}

#[test]
fn monitoring_metric_names_are_read_from_promql() {
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        metric_names(r#"histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{job="x",le=~"1|}{"}[5m]))) > 0.5"#),
        set(&["a_bucket"])
    );
    assert_eq!(
        metric_names(r#"max by (job) (b) - on (job) group_right c{x="y"} > 10 and d == bool 1 offset 5m"#),
        set(&["b", "c", "d"])
    );
    assert_eq!(metric_names(r#"(time() - e{j=~"$job"}) / 86400 or vector(0)"#), set(&["e"]));
    assert_eq!(
        metric_names("scalar(max(f)) - rate(g[$__rate_interval]) unless h * 1e3 or ignoring(x) group_left i"),
        set(&["f", "g", "h", "i"])
    );
    assert_eq!(
        metric_names("sum without (a) (j) / count by (b) (k) + sum(l)"),
        set(&["j", "k", "l"])
    );
    let body = "# HELP x_seconds h\n# TYPE x_seconds histogram\nx_seconds_bucket{le=\"1\"} 0\n# TYPE y counter\ny{a=\"b\"} 1\nz 2\n";
    let e = exported(body);
    for name in ["x_seconds_bucket", "x_seconds_sum", "x_seconds_count", "y", "z"] {
        assert!(is_exported(name, &e), "{name}");
    }
    for name in ["y_bucket", "x", "w"] {
        assert!(!is_exported(name, &e), "{name}");
    }
}

#[test]
fn monitoring_objects_render_only_when_enabled_with_the_sidecar_label_and_selector() {
    let kinds = render(json!({})).kinds();
    assert!(
        !kinds
            .iter()
            .any(|k| k.starts_with("PrometheusRule/") || k == "ConfigMap/netsy-dashboard"),
        "{kinds:?}"
    );

    let r = render(monitoring_on());
    let cm = r.get("ConfigMap", "netsy-dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert!(cm["metadata"].get("namespace").is_none());
    let (rules, dashboard) = rendered(monitoring_on());
    assert_eq!(dashboard["uid"], "netsy-overview");
    for (alert, _, expr) in alerts(&rules) {
        assert!(!expr.contains("SELECTOR"), "{alert}: {expr}");
        assert!(expr.contains(r#"{job="netsy",namespace="default""#), "{alert}: {expr}");
    }

    let r = render(json!({"monitoring": {
        "dashboards": {"enabled": true, "label": "my_dashboards", "labelValue": "yes",
                       "annotations": {"grafana_folder": "etcd"}, "namespace": "monitoring"},
        "rules": {"enabled": true, "labels": {"release": "kube-prometheus-stack"}, "selector": "cluster=\"eu\",job=\"etcd-eu\""},
    }}));
    let cm = r.get("ConfigMap", "netsy-dashboard");
    assert_eq!(cm["metadata"]["labels"]["my_dashboards"], "yes");
    assert!(cm["metadata"]["labels"].get("grafana_dashboard").is_none());
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "etcd");
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    let rule = r.get("PrometheusRule", "netsy");
    assert_eq!(rule["metadata"]["labels"]["release"], "kube-prometheus-stack");
    for (alert, _, expr) in alerts(&rule["spec"]) {
        assert!(expr.contains(r#"{cluster="eu",job="etcd-eu""#), "{alert}: {expr}");
    }
}

#[test]
fn monitoring_rules_as_rendered_pass_promtool_check_and_unit_tests_for_every_alert() {
    let (rules, _) = rendered(monitoring_on());
    let dir = tempfile::tempdir().expect("tempdir");
    // JSON is YAML: promtool reads the spec exactly as the chart renders it.
    std::fs::write(dir.path().join("rules.yaml"), rules.to_string()).expect("write rules");
    std::fs::copy(RULE_TESTS, dir.path().join("rules.test.yaml")).expect("copy the tests");
    let checked = run(Command::new(promtool()).args(["check", "rules"]).arg(dir.path().join("rules.yaml")));
    let all = alerts(&rules);
    assert!(checked.contains(&format!("SUCCESS: {} rules found", all.len())), "{checked}");
    let tested = run(Command::new(promtool())
        .args(["test", "rules", "rules.test.yaml"])
        .current_dir(dir.path()));
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert (and each of its severities) fires in some case and stays quiet in one.
    let tests = yaml_file(Path::new(RULE_TESTS));
    let mut firing: BTreeSet<(String, String)> = BTreeSet::new();
    let mut quiet: BTreeSet<String> = BTreeSet::new();
    for case in tests["tests"].as_array().expect("tests") {
        for t in case["alert_rule_test"].as_array().expect("alert_rule_test") {
            let name = t["alertname"].as_str().expect("alertname").to_string();
            let expected = t["exp_alerts"].as_array().expect("exp_alerts");
            if expected.is_empty() {
                quiet.insert(name.clone());
            }
            for a in expected {
                let severity = a["exp_labels"]["severity"].as_str().expect("severity");
                firing.insert((name.clone(), severity.to_string()));
            }
        }
    }
    let mut untested = Vec::new();
    for (alert, severity, _) in &all {
        if !firing.contains(&(alert.clone(), severity.clone())) {
            untested.push(format!("{alert} ({severity}) never fires"));
        }
        if !quiet.contains(alert) {
            untested.push(format!("{alert} is never tested quiet"));
        }
    }
    assert!(untested.is_empty(), "{untested:?}");
}

/// A single node with everything the dashboard shows switched on: mTLS (certificate
/// expiry, handshake failures), the mesh authority, and the file object store.
struct FullNode {
    node: Netsy,
    _dir: tempfile::TempDir,
}

const QUOTA: u64 = 3 << 30;

fn start_full_node() -> FullNode {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |p: &str| dir.path().join(p);
    let s = |p: PathBuf| p.display().to_string();
    let ca = Ca::new("monitoring-ca").expect("ca");
    std::fs::write(path("ca.crt"), ca.cert_pem()).expect("write ca");
    let issue = |stem: &str, spec: &LeafSpec| {
        let leaf = ca.issue(spec).expect("issue");
        std::fs::write(path(&format!("{stem}.crt")), leaf.cert_pem).expect("write crt");
        std::fs::write(path(&format!("{stem}.key")), leaf.key_pem).expect("write key");
    };
    issue("server", &LeafSpec::identity("test", Role::Peer, "netsy-0", true, 1));
    issue("peer", &LeafSpec::identity("test", Role::Peer, "netsy-0", false, 1));
    issue("etcdctl", &LeafSpec::identity("test", Role::Client, "etcdctl", false, 1));
    let net = path("net");
    netsy::mesh::tools::init("T", &net, "http://127.0.0.1:1").expect("mesh init");
    let operator = netsy::mesh::keys::read_public(&net.join("keys/operator.pub")).expect("operator key");
    let env = vec![
        ("NETSY_NODE_ID", "netsy-0".to_string()),
        ("NETSY_ADVERTISE_CLIENT", "https://127.0.0.1:2378".to_string()),
        ("NETSY_TLS_CA_CERT", s(path("ca.crt"))),
        ("NETSY_TLS_SERVER_CERT", s(path("server.crt"))),
        ("NETSY_TLS_SERVER_KEY", s(path("server.key"))),
        ("NETSY_TLS_CLIENT_CERT", s(path("peer.crt"))),
        ("NETSY_TLS_CLIENT_KEY", s(path("peer.key"))),
        ("GENESIS_FILE", s(net.join("genesis.signed.json"))),
        ("NA_PRIVATE_KEY_FILE", s(net.join("keys/na.key"))),
        ("NA_KEY_ID", "na-local".to_string()),
        (
            "OPERATOR_PUBLIC_KEYS_JSON",
            json!({"operator-local": netsy::mesh::keys::b64(operator.as_bytes())}).to_string(),
        ),
        ("OPERATOR_KEY_TIERS_JSON", json!({"operator-local": "privileged"}).to_string()),
        ("NETSY_BIND_MESH", format!("127.0.0.1:{}", free_port())),
    ];
    // etcdctl 3.5.1 offers only TLS 1.2.
    let extra = format!(r#""tls": {{ "min_version": "1.2" }}, "limits": {{ "quota_backend_bytes": {QUOTA} }},"#);
    let mut node = Netsy::new(&extra, &env);
    node.etcdctl_flags = vec![
        format!("--cacert={}", s(path("ca.crt"))),
        format!("--cert={}", s(path("etcdctl.crt"))),
        format!("--key={}", s(path("etcdctl.key"))),
    ];
    node.spawn();
    FullNode { node, _dir: dir }
}

/// Every sample of `/metrics` by its series (`name{labels}`).
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn monitoring_every_metric_the_dashboard_and_rules_read_is_exported_with_its_value() {
    let (rules, dashboard) = rendered(monitoring_on());
    let mut wanted: BTreeMap<String, String> = BTreeMap::new();
    for (alert, _, expr) in alerts(&rules) {
        for name in metric_names(&expr) {
            wanted.entry(name).or_insert_with(|| format!("alert {alert}"));
        }
    }
    for query in dashboard_queries(&dashboard) {
        for name in metric_names(&query) {
            wanted.entry(name).or_insert_with(|| format!("dashboard query {query}"));
        }
    }
    assert!(wanted.len() > 30, "{wanted:?}");

    let n = start_full_node();
    let (ok, out, err) = n.node.etcdctl(&["put", "k", "v"]);
    assert!(ok, "{out} {err}");
    // A refused handshake on the peer port (plaintext where mTLS is expected).
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", n.node.peer_port)).expect("connect");
        let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let (_, body) = n.node.http_get("/metrics");
        let e = exported(&body);
        let missing: Vec<String> = wanted
            .iter()
            .filter(|(name, _)| !is_exported(name, &e))
            .map(|(name, by)| format!("{name} (read by {by})"))
            .collect();
        if missing.is_empty() {
            break body;
        }
        assert!(Instant::now() < deadline, "not exported: {missing:#?}");
        std::thread::sleep(Duration::from_millis(200));
    };

    // The values the alerts rely on are the node's own.
    let now = netsy::metrics::unix_now() as f64;
    let v = samples(&body);
    let get = |series: &str| *v.get(series).unwrap_or_else(|| panic!("no {series} in {body}"));
    assert_eq!(get("etcd_server_quota_backend_bytes"), QUOTA as f64);
    assert!(get("etcd_server_leader_changes_seen_total") >= 1.0);
    assert_eq!(get("etcd_server_is_leader"), 1.0);
    assert!(get("netsy_raft_last_log_index") >= get("etcd_server_applied_index"));
    assert!(get("etcd_server_applied_index") >= 1.0);
    assert_eq!(get(r#"netsy_alarm_active{alarm="NOSPACE"}"#), 0.0);
    assert_eq!(get(r#"netsy_alarm_active{alarm="CORRUPT"}"#), 0.0);
    assert_eq!(get("netsy_mesh_authority_ready"), 1.0);
    assert_eq!(get("netsy_archive_backlog_limit_bytes"), (1u64 << 30) as f64);
    let expiry = get(r#"netsy_tls_certificate_not_after_seconds{certificate="server"}"#);
    // The certificates were issued for one day.
    assert!(
        (now + 86_400.0 - 120.0..=now + 86_400.0 + 120.0).contains(&expiry),
        "{expiry} vs {now}"
    );
    // The leader's uploader catches up and its snapshotter uploads the epoch's first
    // snapshot; both timestamps are this run's.
    wait_until(Duration::from_secs(60), "a snapshot and a caught-up archive", || {
        let (_, body) = n.node.http_get("/metrics");
        let v = samples(&body);
        let recent = |s: &str| v.get(s).is_some_and(|t| *t >= now - 60.0 && *t <= now + 60.0);
        recent("netsy_archive_snapshot_timestamp_seconds")
            && recent("netsy_archive_caught_up_timestamp_seconds")
            && v.get("netsy_archive_snapshot_index").is_some_and(|i| *i >= 1.0)
    });
}
