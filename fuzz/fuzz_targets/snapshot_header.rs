//! Archive snapshots as restore reads them from object storage (src/archive/snapshot.rs):
//! the magic and JSON header (`read_header`, also what `fetch_header` reads), and with
//! selector 1 the whole object, its zstd body streamed into a database file
//! (`decode_file`). Input: a selector byte, then the object. A header that reads writes
//! back to one that reads the same; a decoded database has the size and checksum its
//! header declares.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netsy::archive::snapshot::{self, SnapshotHeader};
use netsy_fuzz::{scratch, select};

fn header_bytes(h: &SnapshotHeader) -> Vec<u8> {
    let json = serde_json::to_vec(h).expect("header JSON");
    let mut out = b"NETSYSN1".to_vec();
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((kind, bytes)) = select(data, 2) else { return };
    let object = "epochs/1/snapshots/00000000000000000001.snap";
    let header = snapshot::read_header(&mut &bytes[..], object);
    if let Ok(h) = &header {
        assert!(h.format <= snapshot::HEADER_FORMAT);
        let back = snapshot::read_header(&mut &header_bytes(h)[..], object).expect("a written header reads");
        assert_eq!(&back, h);
    }
    if kind == 1 {
        let dir = scratch();
        let src = dir.join("in.snap");
        let dest = dir.join("out.db");
        std::fs::write(&src, bytes).expect("write");
        match snapshot::decode_file(&src, object, &dest) {
            Ok(h) => {
                assert_eq!(Some(&h), header.as_ref().ok(), "decode_file reads the same header");
                let db = std::fs::read(&dest).expect("read");
                assert_eq!((db.len() as u64, crc32c::crc32c(&db)), (h.db_bytes, h.db_crc32c));
            }
            Err(e) => assert!(e.to_string().contains(object), "the error names the object: {e}"),
        }
    }
});
