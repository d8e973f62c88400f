//! The cluster file (JSONC) and this node's environment as `netsy serve` reads them
//! (src/config): parsing, validation and resolution, with an arbitrary environment and
//! an arbitrary mesh env file (`NETSY_MESH_ENV_FILE`). Input:
//! `cluster file [NUL KEY=VALUE lines [NUL env file]]`.
//! Resolution is deterministic, a valid configuration holds what validation promises,
//! and every refusal names the key (or the file) it refuses.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use netsy::config::{parse_duration, Config, ConfigError};
use netsy_fuzz::scratch;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0);
    let Ok(text) = std::str::from_utf8(parts.next().unwrap_or_default()) else {
        return;
    };
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for line in String::from_utf8_lossy(parts.next().unwrap_or_default()).lines() {
        if let Some((k, v)) = line.split_once('=') {
            env.insert(k.to_string(), v.to_string());
        }
    }
    // The env file is written where the fuzzer says nothing about the path.
    env.remove("NETSY_MESH_ENV_FILE");
    if let Some(file) = parts.next() {
        let path = scratch().join("mesh.env");
        std::fs::write(&path, file).expect("write env file");
        env.insert("NETSY_MESH_ENV_FILE".into(), path.display().to_string());
    }
    let lookup = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();

    let path = Path::new("cluster.jsonc");
    let first = Config::from_str(text, path, &lookup);
    let second = Config::from_str(text, path, &lookup);
    assert_eq!(format!("{first:?}"), format!("{second:?}"), "resolution is deterministic");
    match first {
        Ok(c) => {
            assert!(c.watch_progress_notify_interval >= Duration::from_millis(100));
            assert!(c.discovery_timeout >= Duration::from_millis(100));
            assert!(c.deregistration_timeout.is_none_or(|d| d >= Duration::from_millis(100)));
            assert!(c.tls_policy.reload_interval >= Duration::from_millis(100));
            assert!(c.archive.segment_max_bytes >= 1024 && c.archive.snapshots_to_keep >= 1);
            assert!(!c.cluster_id.is_empty() && !c.node_id.is_empty());
        }
        Err(ConfigError::Invalid { key, msg }) => assert!(!key.is_empty() && !msg.is_empty()),
        Err(ConfigError::Parse { path: p, .. }) => assert_eq!(p, path),
        Err(ConfigError::Read { .. }) => panic!("nothing is read but the env file, which exists"),
    }

    // Durations: whatever parses, re-read from its milliseconds, is the same.
    if let Some(d) = parse_duration(text) {
        if d.subsec_nanos() % 1_000_000 == 0 {
            if let Ok(ms) = u64::try_from(d.as_millis()) {
                assert_eq!(parse_duration(&format!("{ms}ms")), Some(d));
            }
        }
    }
});
