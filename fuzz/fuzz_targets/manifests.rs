//! The archive's control objects (src/archive/manifest.rs) as read from object storage:
//! `cluster.json`, `members.json`, `nodes/{node}.json`; and the data directory's
//! `node.json` (src/server/datadir.rs) as read from disk. Input: a selector byte, then
//! the JSON. What parses is of a format this netsy reads, and writes back to JSON that
//! parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netsy::archive::manifest::{self, ClusterManifest, Members, NodeRecord, FORMAT_VERSION};
use netsy_fuzz::{scratch, select};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(path: &str, bytes: &[u8]) -> Option<T> {
    let v: T = manifest::parse(path, bytes).ok()?;
    let json = serde_json::to_vec(&v).expect("serialize");
    let back: T = manifest::parse(path, &json).expect("what netsy writes, it reads");
    assert_eq!(back, v);
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    let Some((kind, bytes)) = select(data, 4) else { return };
    match kind {
        0 => {
            if let Some(c) = round_trip::<ClusterManifest>(manifest::CLUSTER, bytes) {
                assert!(c.format_version <= FORMAT_VERSION);
            }
        }
        1 => {
            if let Some(m) = round_trip::<Members>(manifest::MEMBERS, bytes) {
                assert!(m.format_version <= FORMAT_VERSION);
            }
        }
        2 => {
            if let Some(n) = round_trip::<NodeRecord>("nodes/netsy-0.json", bytes) {
                assert!(n.format_version <= FORMAT_VERSION);
            }
        }
        _ => {
            let dir = scratch().join("datadir");
            std::fs::create_dir_all(&dir).expect("dir");
            std::fs::write(dir.join("node.json"), bytes).expect("write");
            match netsy::server::datadir::load_identity(&dir) {
                Ok(Some(id)) => {
                    let json = serde_json::to_vec(&id).expect("serialize");
                    std::fs::write(dir.join("node.json"), &json).expect("write");
                    let back = netsy::server::datadir::load_identity(&dir).expect("reads back").expect("present");
                    assert_eq!(serde_json::to_value(&back).expect("v"), serde_json::to_value(&id).expect("v"));
                }
                Ok(None) => panic!("node.json is there"),
                Err(e) => assert!(e.to_string().contains("node.json"), "the error names the file: {e}"),
            }
        }
    }
});
