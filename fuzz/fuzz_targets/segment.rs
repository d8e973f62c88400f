//! Archive segments as restore and replay read them from object storage
//! (src/archive/segment.rs), in every format it reads ("NETSYSG3", netsy 0.2's
//! "NETSYSG2" and netsy 0.1's "NETSYSG1"), and their object names. Input: a selector byte, then
//! - 0: a whole object, as is;
//! - 1: a whole object whose body checksum and length are set right first, so the
//!   fuzzer reaches zstd (hostile frames);
//! - 2: a header (`first`, `last`: 16 bytes) and uncompressed frames, compressed and
//!   framed here, so the fuzzer reaches the frame parser;
//! - 3: an object path.
//!
//! A segment that decodes holds exactly `first..=last`, and encoding its entries again
//! decodes to the same entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netsy::archive::segment::{self, SegmentName};
use netsy_fuzz::select;

const HEADER_LEN: usize = 32;

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes `bytes` under the name its header claims.
fn check(bytes: &[u8]) {
    if bytes.len() < 24 {
        let name = SegmentName {
            epoch: 1,
            first: 1,
            last: 1,
        };
        assert!(segment::decode(bytes, &name).is_err(), "a segment shorter than its header");
        return;
    }
    let name = SegmentName {
        epoch: 7,
        first: u64_at(bytes, 8),
        last: u64_at(bytes, 16),
    };
    let Ok(decoded) = segment::decode(bytes, &name) else { return };
    let indexes: Vec<u64> = decoded.frames.iter().map(|f| f.index).collect();
    assert_eq!(indexes.first(), Some(&name.first), "starts at first");
    assert_eq!(indexes.last(), Some(&name.last), "ends at last");
    assert!(indexes.windows(2).all(|w| w[1] == w[0] + 1), "consecutive");
    let again = segment::encode(&decoded.frames).expect("decoded entries encode");
    let back = segment::decode(&again, &name).expect("re-encoded segment decodes");
    assert_eq!(back.frames, decoded.frames);
    assert_eq!(back.encoding, segment::EntryEncoding::Current);
}

fuzz_target!(|data: &[u8]| {
    let Some((kind, bytes)) = select(data, 4) else { return };
    match kind {
        0 => check(bytes),
        1 => {
            if bytes.len() < HEADER_LEN {
                return check(bytes);
            }
            let mut fixed = bytes.to_vec();
            let body = &bytes[HEADER_LEN..];
            fixed[24..28].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
            fixed[28..32].copy_from_slice(&(body.len() as u32).to_le_bytes());
            check(&fixed);
        }
        2 => {
            if bytes.len() < 17 {
                return;
            }
            let magic: &[u8; 8] = match bytes[0] % 3 {
                0 => b"NETSYSG3",
                1 => b"NETSYSG1",
                _ => b"NETSYSG2",
            };
            let (range, frames) = bytes[1..].split_at(16);
            let body = zstd::bulk::compress(frames, 1).expect("compress");
            let mut object = magic.to_vec();
            object.extend_from_slice(range);
            object.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
            object.extend_from_slice(&(body.len() as u32).to_le_bytes());
            object.extend_from_slice(&body);
            check(&object);
        }
        _ => {
            let Ok(text) = std::str::from_utf8(bytes) else { return };
            let Ok(path) = object_store::path::Path::parse(text) else { return };
            if let Some(name) = SegmentName::parse(&path) {
                assert!(name.first <= name.last);
                assert_eq!(SegmentName::parse(&name.path()), Some(name), "a parsed name prints back to itself");
            }
        }
    }
});
