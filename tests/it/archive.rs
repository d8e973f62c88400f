//! Committed log entries reach object storage as contiguous, verifiable segments.

use std::time::Duration;

use crate::common;
use crate::common::Netsy;
use netsy::archive::SegmentName;

/// Every segment under `objects/epochs/1/wal`, sorted by first index.
fn segments(objects: &std::path::Path) -> Vec<(SegmentName, Vec<u8>)> {
    let dir = objects.join("epochs/1/wal");
    let mut out: Vec<(SegmentName, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let seg = SegmentName::parse(&object_store::path::Path::from(format!("epochs/1/wal/{name}")))?;
                    Some((seg, std::fs::read(e.path()).ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|(n, _)| n.first);
    out
}

#[tokio::test]
async fn committed_entries_are_uploaded_as_contiguous_segments() {
    let n = Netsy::start();
    // The epoch's base snapshot comes first; the segments before it are collected.
    common::wait_until(Duration::from_secs(20), "the base snapshot", || {
        n.metric("netsy_archive_snapshots_total") >= 1.0
    });
    let base = n.metric("netsy_archive_snapshot_index") as u64;
    let mut c = n.client().await;
    let wall_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let started_ms = wall_ms();
    let mut last_rev = 0;
    for i in 0..200 {
        last_rev = c.put(format!("k{i}"), "v", None).await.unwrap().header().unwrap().revision();
    }
    assert_eq!(last_rev, 201);
    let objects = n.dir.path().join("objects");
    // Wait until the uploaded entries carry every write (each put is one command).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let segs = segments(&objects);
        let mut expected = segs.first().map_or(1, |(n, _)| n.first);
        assert!(expected <= base + 1, "segments start at or before the snapshot");
        let mut commands = 0;
        for (name, bytes) in &segs {
            assert_eq!(name.first, expected, "segments are contiguous");
            let decoded = netsy::archive::segment::decode(bytes, name).expect("valid segment");
            for frame in decoded.frames {
                let entry = netsy::raft::codec::decode_entry(&frame.entry).expect("a raft entry");
                if let openraft::EntryPayload::Normal(batch) = entry.payload {
                    commands += batch.commands.len();
                    // The frame carries the leader's commit time the entry holds.
                    assert_eq!(frame.unix_ms, batch.unix_ms, "entry {}", frame.index);
                    assert!(batch.unix_ms >= started_ms && batch.unix_ms <= wall_ms(), "entry {}", frame.index);
                }
            }
            expected = name.last + 1;
        }
        if commands == 200 {
            break;
        }
        assert!(commands < 200, "more commands archived than written: {commands}");
        assert!(std::time::Instant::now() < deadline, "only {commands} of 200 writes archived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = n.http_get("/metrics");
    assert!(
        metrics.contains("netsy_object_store_requests_total{op=\"put\",outcome=\"ok\"}"),
        "{metrics}"
    );
}

/// `durability: object-storage`: a write is acknowledged only once the segment holding
/// it is in object storage.
#[tokio::test]
async fn object_storage_durability_acks_after_upload() {
    let n = Netsy::start_with(r#""durability": "object-storage","#);
    let mut c = n.client().await;
    let objects = n.dir.path().join("objects");
    for i in 0..20 {
        c.put(format!("d{i}"), format!("v{i}"), None).await.unwrap();
        // Right after the ack, the archive already holds this write.
        let mut found = false;
        for (name, bytes) in segments(&objects) {
            for frame in netsy::archive::segment::decode(&bytes, &name).unwrap().frames {
                let entry = netsy::raft::codec::decode_entry(&frame.entry).unwrap();
                if let openraft::EntryPayload::Normal(batch) = entry.payload {
                    found |= batch
                        .commands
                        .iter()
                        .any(|cmd| matches!(cmd, netsy::mvcc::Command::Put(p) if p.key == format!("d{i}").as_bytes()));
                }
            }
        }
        assert!(found, "write d{i} was acknowledged before it was archived");
    }
}
