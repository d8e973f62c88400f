use super::*;

const DEV: &str = r#"{
    // comment
    "cluster_id": "dev",
    "storage": { "provider": "file", "path": "./objects", },
    "node": { "data_dir": "./data", "bind_client": "127.0.0.1:2378", "bind_peer": "127.0.0.1:2381", "bind_health": "127.0.0.1:8080" },
}"#;

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_str(text, Path::new("test.jsonc"), &no_env)
}

#[test]
fn parses_jsonc_with_comments_and_trailing_commas() {
    let c = load(DEV).expect("valid");
    assert_eq!(c.cluster_id, "dev");
    assert_eq!(c.bind_client.to_string(), "127.0.0.1:2378");
    assert_eq!(c.data_dir, PathBuf::from("./data"));
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.etcd_version, crate::DEFAULT_ETCD_VERSION);
}

#[test]
fn env_overrides_file() {
    let env = |k: &str| (k == "NETSY_BIND_CLIENT").then(|| "127.0.0.1:9999".to_string());
    let c = Config::from_str(DEV, Path::new("x"), &env).expect("valid");
    assert_eq!(c.bind_client.port(), 9999);
}

#[test]
fn errors_name_the_key() {
    // The cluster file with one more top-level section before `node`.
    let with_section = |section: &str| DEV.replace("\"node\"", &format!("{section}, \"node\""));
    let cases = [
        (DEV.replace("\"dev\"", "\"Dev_1\""), "cluster_id"),
        (DEV.replace("\"file\"", "\"ftp\""), "storage.provider"),
        (DEV.replace("\"cluster_id\"", "\"cluster_idd\""), "cluster_idd"),
        (DEV.replace("127.0.0.1:2378", "0.0.0.0:2378"), "NETSY_BIND_CLIENT"),
        (with_section("\"etcd_version\": \"3.4.1\""), "etcd_version"),
        (with_section("\"limits\": {\"max_txn_ops\": 0}"), "limits.max_txn_ops"),
        (with_section("\"limits\": {\"read_memory_bytes\": 65536}"), "limits.read_memory_bytes"),
        (
            with_section("\"auto_compaction\": {\"mode\": \"periodic\", \"retention\": \"1x\"}"),
            "auto_compaction.retention",
        ),
        (
            DEV.replace("\"path\": \"./objects\"", "\"path\": \"./objects\", \"endpoint\": \"http://minio:9000\""),
            "storage.endpoint",
        ),
        (
            DEV.replace(
                "\"provider\": \"file\", \"path\": \"./objects\"",
                "\"provider\": \"gcs\", \"bucket_name\": \"b\", \"endpoint\": \"storage.googleapis.com\"",
            ),
            "storage.endpoint",
        ),
        (
            with_section("\"watch\": {\"progress_notify_interval\": \"10ms\"}"),
            "watch.progress_notify_interval",
        ),
        (with_section("\"deregistration_timeout\": \"soon\""), "deregistration_timeout"),
        (with_section("\"raft\": {\"snapshot_log_entries\": 0}"), "raft.snapshot_log_entries"),
        (
            with_section("\"raft\": {\"snapshot_chunk_bytes\": 100}"),
            "raft.snapshot_chunk_bytes",
        ),
        (with_section("\"raft\": {\"snapshot_log_bytes\": 1}"), "raft.snapshot_log_bytes"),
        (with_section("\"archive\": {\"history\": \"a week\"}"), "archive.history"),
        (with_section("\"archive\": {\"max_puts_per_second\": 0}"), "archive.max_puts_per_second"),
        (
            with_section("\"standby\": {\"source\": {\"provider\": \"file\", \"path\": \"/p\"}, \"source_cluster_id\": \"dev\"}"),
            "standby.source_cluster_id",
        ),
        (
            with_section("\"standby\": {\"source\": {\"provider\": \"ftp\"}, \"source_cluster_id\": \"prod\"}"),
            "standby.source",
        ),
        (
            with_section("\"standby\": {\"source\": {\"provider\": \"file\", \"path\": \"/p\"}, \"source_cluster_id\": \"prod\", \"poll_interval\": \"1ms\"}"),
            "standby.poll_interval",
        ),
        (
            DEV.replace("\"path\": \"./objects\"", "\"path\": \"./objects\", \"encryption\": {}"),
            "storage.encryption",
        ),
        (
            DEV.replace(
                "\"path\": \"./objects\"",
                "\"path\": \"./objects\", \"encryption\": {\"key_file\": \"k\", \"kms\": {\"endpoint\": \"/s.sock\"}}",
            ),
            "storage.encryption",
        ),
        (
            DEV.replace(
                "\"path\": \"./objects\"",
                "\"path\": \"./objects\", \"encryption\": {\"kms\": {\"endpoint\": \"tcp://kms:80\"}}",
            ),
            "storage.encryption.kms.endpoint",
        ),
        (
            DEV.replace(
                "\"path\": \"./objects\"",
                "\"path\": \"./objects\", \"encryption\": {\"kms\": {\"endpoint\": \"unix:///s.sock\", \"timeout\": \"0s\"}}",
            ),
            "storage.encryption.kms.timeout",
        ),
        (
            DEV.replace(
                "\"path\": \"./objects\"",
                "\"path\": \"./objects\", \"encryption\": {\"kms\": {\"endpoint\": \"unix:///s.sock\", \"status_interval\": \"often\"}}",
            ),
            "storage.encryption.kms.status_interval",
        ),
        (
            DEV.replace(
                "\"path\": \"./objects\"",
                "\"path\": \"./objects\", \"encryption\": {\"kms\": {\"endpoint\": \"unix:///s.sock\", \"timout\": \"3s\"}}",
            ),
            "timout",
        ),
        ("{ not json".to_string(), "not valid JSONC"),
    ];
    for (text, key) in cases {
        let err = load(&text).expect_err(key).to_string();
        assert!(err.contains(key), "{err:?} should name {key}");
    }
}

#[test]
fn insecure_bind_allowed_when_configured() {
    let text = DEV
        .replace("127.0.0.1:2378", "0.0.0.0:2378")
        .replace("\"node\"", "\"allow_insecure\": true, \"node\"");
    assert!(load(&text).is_ok());
}

#[test]
fn the_mesh_section_stands_for_the_na_variables_and_the_environment_wins() {
    let text = DEV.replace(
        "\"node\"",
        r#""mesh": { "genesis_file": "/g.json", "na_private_key_file": "/na.key", "na_key_id": "na-file",
            "operator_public_keys": {"op": "AAAA"}, "operator_key_tiers": {"op": "standard"}, "bind": "127.0.0.1:9443" }, "node""#,
    );
    let m = load(&text).expect("valid").mesh.expect("mesh on");
    assert_eq!(m.na_key_id, "na-file");
    assert_eq!(m.bind.port(), 9443);
    assert_eq!(m.operator_key_tiers["op"], "standard");
    let env = |k: &str| (k == "NA_KEY_ID").then(|| "na-env".to_string());
    let m = Config::from_str(&text, Path::new("x"), &env).expect("valid").mesh.expect("on");
    assert_eq!(m.na_key_id, "na-env");
    assert!(load(DEV).expect("valid").mesh.is_none());
    let bad = DEV.replace("\"node\"", r#""mesh": { "genesis_file": "/g.json" }, "node""#);
    assert!(load(&bad).expect_err("no key file").to_string().contains("NA_PRIVATE_KEY_FILE"));
}

#[test]
fn deregistration_timeout_defaults_to_three_minutes_and_zero_disables_it() {
    assert_eq!(load(DEV).expect("valid").deregistration_timeout, Some(Duration::from_secs(180)));
    let off = DEV.replace("\"node\"", "\"deregistration_timeout\": \"0\", \"node\"");
    assert_eq!(load(&off).expect("valid").deregistration_timeout, None);
}

#[test]
fn durations() {
    assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("5"), None);
    assert_eq!(parse_duration("m"), None);
}

/// A duration with a huge number overflowed (a panic at startup).
#[test]
fn overlong_durations_are_an_error_that_names_the_key() {
    assert_eq!(parse_duration("18446744073709551615h"), None);
    assert_eq!(parse_duration("5124095576030432h"), None);
    assert_eq!(parse_duration("18446744073709551615s1s"), None);
    assert_eq!(parse_duration("18446744073709551615ms"), Some(Duration::from_millis(u64::MAX)));
    let bad = DEV.replace("\"node\"", "\"discovery_timeout\": \"18446744073709551615h\", \"node\"");
    let err = load(&bad).expect_err("refused").to_string();
    assert!(err.contains("discovery_timeout") && err.contains("18446744073709551615h"), "{err}");
}

#[test]
fn encryption_settings_parse_with_defaults() {
    let text = DEV.replace(
        "\"path\": \"./objects\"",
        "\"path\": \"./objects\", \"encryption\": {\"kms\": {\"endpoint\": \"unix:///var/run/kmsplugin/socket.sock\"}}",
    );
    let c = load(&text).unwrap();
    let kms = c.storage.encryption.and_then(|e| e.kms).expect("kms");
    assert_eq!(kms.timeout, "3s");
    assert_eq!(kms.status_interval, "60s");
    let text = DEV.replace(
        "\"path\": \"./objects\"",
        "\"path\": \"./objects\", \"encryption\": {\"key_file\": \"/k\"}",
    );
    assert!(load(&text).unwrap().storage.encryption.and_then(|e| e.key_file).is_some());
}

#[test]
fn a_standby_block_is_resolved_with_its_defaults() {
    let text = DEV.replace(
        "\"node\"",
        "\"standby\": {\"source\": {\"provider\": \"file\", \"path\": \"/primary\"}, \"source_cluster_id\": \"prod\"}, \"archive\": {\"history\": \"7d\"}, \"node\"",
    );
    let c = load(&text).expect("valid");
    let s = c.standby.expect("standby");
    assert_eq!(
        (s.source_cluster_id.as_str(), s.poll_interval, s.max_backoff),
        ("prod", Duration::from_secs(1), Duration::from_secs(30))
    );
    assert_eq!(c.archive.history, Duration::from_secs(7 * 86_400));
    assert!(load(DEV).expect("valid").standby.is_none());
}
