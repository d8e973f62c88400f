//! Log segments: committed Raft entries `first..=last` of one epoch, as one object
//! `epochs/{epoch}/wal/{first:020}-{last:020}.seg`.
//!
//! Format (all integers little-endian):
//!
//! ```text
//! "NETSYSG3"                      magic (the last byte is the format), 8 bytes
//! u64 first, u64 last             the index range the object claims
//! u32 crc32c(body), u32 len(body)
//! body = zstd( frame* )           frame = u32 len | u32 crc32c(entry) | u64 index
//!                                         | u64 unix_ms | entry
//! ```
//!
//! `entry` is the Raft log entry exactly as the log store encodes it (the Raft layer's
//! codec; the archive never decodes it); `unix_ms` is the leader's commit time the
//! entry carries (the Raft layer reads it out for the archive; 0 for an entry without
//! one), so a restore can stop at a point in time without decoding entries. Segments of
//! netsy 0.2 ("NETSYSG2") have the same frames without `unix_ms`, and those of netsy 0.1
//! ("NETSYSG1") hold bincode entries; both are still read (their times read as 0), and
//! `decode` says which encoding the entries are in. Decoding checks the magic, both
//! checksums, that the frames are exactly `first..=last` in order, and that the
//! object's name agrees, so a corrupt, truncated or misnamed object is an error naming
//! the object, never a silently partial restore.

use object_store::path::Path;

/// The magic without its format byte.
const MAGIC_PREFIX: &[u8; 7] = b"NETSYSG";
const MAGIC: &[u8; 8] = b"NETSYSG3";
/// netsy 0.2's segments: frames without the commit time.
const MAGIC_V2: &[u8; 8] = b"NETSYSG2";
/// netsy 0.1's segments: as 0.2's, with bincode entries.
const MAGIC_V1: &[u8; 8] = b"NETSYSG1";
const HEADER_LEN: usize = 8 + 8 + 8 + 4 + 4;
/// zstd level: fast, still several times smaller for typical Kubernetes objects.
const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("segment {name}: not a netsy segment (bad magic)")]
    BadMagic { name: String },
    #[error("segment {name} is encrypted (NETSYEN1): set storage.encryption to the key service it was written with")]
    Encrypted { name: String },
    #[error(
        "segment {name} is in format {found}, newer than this netsy reads (up to 3); run a netsy at least as new as the one that wrote it"
    )]
    Future { name: String, found: char },
    #[error("segment {name}: truncated")]
    Truncated { name: String },
    #[error("segment {name}: checksum mismatch in {part}")]
    Checksum { name: String, part: String },
    #[error("segment {name}: cannot decompress: {source}")]
    Decompress { name: String, source: std::io::Error },
    #[error("segment {name}: decompresses to more than {limit} bytes")]
    Overlong { name: String, limit: u64 },
    #[error("segment {name}: bad range {first}..={last}")]
    BadRange { name: String, first: u64, last: u64 },
    #[error("segment {name}: expected entry {expected}, found {found}")]
    Gap { name: String, expected: u64, found: u64 },
    #[error("segment {name}: holds {first}..={last}, its name says otherwise")]
    Misnamed { name: String, first: u64, last: u64 },
    #[error("cannot encode a segment: {0}")]
    Encode(String),
    #[error("cannot encode a segment: {0}")]
    Compress(#[source] std::io::Error),
}

/// Where a segment lives, and which entries it must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentName {
    pub epoch: u64,
    pub first: u64,
    pub last: u64,
}

impl SegmentName {
    pub fn path(&self) -> Path {
        Path::from(format!("epochs/{}/wal/{:020}-{:020}.seg", self.epoch, self.first, self.last))
    }

    /// Parses a path made by `path` (relative to the key prefix).
    pub fn parse(path: &Path) -> Option<SegmentName> {
        let parts: Vec<String> = path.parts().map(|p| p.as_ref().to_string()).collect();
        let [epochs, epoch, wal, file] = parts.as_slice() else {
            return None;
        };
        if epochs != "epochs" || wal != "wal" {
            return None;
        }
        let (first, last) = file.strip_suffix(".seg")?.split_once('-')?;
        if first.len() != 20 || last.len() != 20 {
            return None;
        }
        let name = SegmentName {
            epoch: epoch.parse().ok()?,
            first: first.parse().ok()?,
            last: last.parse().ok()?,
        };
        (name.first <= name.last).then_some(name)
    }
}

/// The segments of `epoch`, in index order.
pub async fn list(store: &dyn object_store::ObjectStore, epoch: u64) -> Result<Vec<(SegmentName, u64)>, object_store::Error> {
    use futures::StreamExt;
    let prefix = Path::from(format!("epochs/{epoch}/wal"));
    let mut listing = store.list(Some(&prefix));
    let mut found = Vec::new();
    while let Some(meta) = listing.next().await {
        let meta = meta?;
        if let Some(name) = SegmentName::parse(&meta.location) {
            found.push((name, meta.size));
        }
    }
    found.sort();
    Ok(found)
}

/// An archived entry: its index, the commit time it carries (ms since the Unix epoch;
/// 0: none) and its bytes as the Raft log store encodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub index: u64,
    pub unix_ms: u64,
    pub entry: Vec<u8>,
}

impl Frame {
    pub fn new(index: u64, unix_ms: u64, entry: Vec<u8>) -> Frame {
        Frame { index, unix_ms, entry }
    }
}

/// Encodes `frames`, which must be consecutive and non-empty, in the current format.
pub fn encode(frames: &[Frame]) -> Result<Vec<u8>, SegmentError> {
    let (Some(first), Some(last)) = (frames.first(), frames.last()) else {
        return Err(SegmentError::Encode("no entries".into()));
    };
    let mut body = Vec::with_capacity(frames.iter().map(|f| f.entry.len() + FRAME_HEADER).sum());
    for (i, f) in frames.iter().enumerate() {
        let index = f.index;
        if index != first.index + i as u64 {
            return Err(SegmentError::Encode(format!("entry {index} is not consecutive")));
        }
        let len = u32::try_from(f.entry.len()).map_err(|_| SegmentError::Encode(format!("entry {index} is over 4 GiB")))?;
        body.extend_from_slice(&len.to_le_bytes());
        body.extend_from_slice(&crc32c::crc32c(&f.entry).to_le_bytes());
        body.extend_from_slice(&index.to_le_bytes());
        body.extend_from_slice(&f.unix_ms.to_le_bytes());
        body.extend_from_slice(&f.entry);
    }
    let body = zstd::bulk::compress(&body, ZSTD_LEVEL).map_err(SegmentError::Compress)?;
    let body_len = u32::try_from(body.len()).map_err(|_| SegmentError::Encode("segment over 4 GiB".into()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&first.index.to_le_bytes());
    out.extend_from_slice(&last.index.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// A frame's fixed part in the current format (`len`, `crc`, `index`, `unix_ms`).
const FRAME_HEADER: usize = 24;

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// How the entries of a segment are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryEncoding {
    /// netsy's own, as the log store writes it (format byte + protobuf).
    Current,
    /// netsy 0.1's bincode of openraft's entry.
    Bincode,
}

/// A decoded segment: its frames, in order, and how their entries are encoded.
#[derive(Debug)]
pub struct Decoded {
    pub encoding: EntryEncoding,
    pub frames: Vec<Frame>,
}

/// Decodes and verifies the segment stored as `name`.
pub fn decode(bytes: &[u8], name: &SegmentName) -> Result<Decoded, SegmentError> {
    let label = name.path().to_string();
    let truncated = || SegmentError::Truncated { name: label.clone() };
    if bytes.starts_with(super::sealed::MAGIC) {
        return Err(SegmentError::Encrypted { name: label });
    }
    if bytes.len() < HEADER_LEN {
        return Err(if bytes.starts_with(MAGIC_PREFIX) || MAGIC_PREFIX.starts_with(bytes) {
            truncated()
        } else {
            SegmentError::BadMagic { name: label }
        });
    }
    // The fixed part of each frame: 0.1 and 0.2 frames carry no time.
    let (encoding, frame_header) = match &bytes[..8] {
        m if m == MAGIC => (EntryEncoding::Current, FRAME_HEADER),
        m if m == MAGIC_V2 => (EntryEncoding::Current, 16),
        m if m == MAGIC_V1 => (EntryEncoding::Bincode, 16),
        m if m.starts_with(MAGIC_PREFIX) && m[7].is_ascii_digit() && m[7] > MAGIC[7] => {
            return Err(SegmentError::Future {
                name: label,
                found: m[7] as char,
            })
        }
        _ => return Err(SegmentError::BadMagic { name: label }),
    };
    let (first, last) = (u64_at(bytes, 8), u64_at(bytes, 16));
    if first != name.first || last != name.last {
        return Err(SegmentError::Misnamed { name: label, first, last });
    }
    let (crc, body_len) = (u32_at(bytes, 24), u32_at(bytes, 28) as usize);
    let body = bytes.get(HEADER_LEN..HEADER_LEN + body_len).ok_or_else(truncated)?;
    if bytes.len() != HEADER_LEN + body_len {
        return Err(truncated());
    }
    if crc32c::crc32c(body) != crc {
        return Err(SegmentError::Checksum {
            name: label,
            part: "body".into(),
        });
    }
    // The index after the last entry; a range ending at u64::MAX has none.
    let bad_range = || SegmentError::BadRange {
        name: label.clone(),
        first,
        last,
    };
    let end = last.checked_add(1).filter(|_| first <= last).ok_or_else(bad_range)?;
    let frames = decompress(body, &label)?;
    let mut out = Vec::new();
    let mut at = 0;
    let mut expected = first;
    while at < frames.len() {
        let header = frames.get(at..at + frame_header).ok_or_else(truncated)?;
        let (len, crc, index) = (u32_at(header, 0) as usize, u32_at(header, 4), u64_at(header, 8));
        let unix_ms = if frame_header == FRAME_HEADER { u64_at(header, 16) } else { 0 };
        let start = at + frame_header;
        let entry = start
            .checked_add(len)
            .and_then(|end| frames.get(start..end))
            .ok_or_else(truncated)?;
        if index != expected {
            return Err(SegmentError::Gap {
                name: label,
                expected,
                found: index,
            });
        }
        if crc32c::crc32c(entry) != crc {
            return Err(SegmentError::Checksum {
                name: label,
                part: format!("entry {index}"),
            });
        }
        out.push(Frame::new(index, unix_ms, entry.to_vec()));
        expected = expected.checked_add(1).ok_or_else(bad_range)?;
        at = start + len;
    }
    if expected != end {
        return Err(SegmentError::Gap {
            name: label,
            expected,
            found: end,
        });
    }
    Ok(Decoded { encoding, frames: out })
}

/// The most a segment's frames may decompress to. `encode` writes one zstd frame that
/// records its decompressed size, and the uploader cuts segments at
/// `archive.segment_max_bytes` (default 4 MiB) plus one entry; a body must fit in
/// 4 GiB, and so must its frames.
const MAX_FRAMES: u64 = 1 << 32;

/// Decompresses a segment's body, streamed: memory grows only with what the body really
/// holds, up to the size its frame header declares (`MAX_FRAMES` when it declares none,
/// an error when it declares more), so a corrupt or hostile body cannot ask for an
/// absurd allocation nor inflate past its claim.
fn decompress(body: &[u8], label: &str) -> Result<Vec<u8>, SegmentError> {
    use std::io::Read;
    let overlong = |limit| SegmentError::Overlong {
        name: label.to_string(),
        limit,
    };
    let failed = |source| SegmentError::Decompress {
        name: label.to_string(),
        source,
    };
    let declared = match zstd::zstd_safe::get_frame_content_size(body) {
        Ok(Some(n)) if n > MAX_FRAMES => return Err(overlong(MAX_FRAMES)),
        Ok(n) => n,
        Err(_) => None,
    };
    let limit = declared.unwrap_or(MAX_FRAMES);
    let decoder = zstd::stream::read::Decoder::with_buffer(body).map_err(failed)?;
    let mut frames = Vec::with_capacity(limit.min(1 << 20) as usize);
    decoder.take(limit + 1).read_to_end(&mut frames).map_err(failed)?;
    if frames.len() as u64 > limit {
        return Err(overlong(limit));
    }
    if declared.is_some_and(|n| n != frames.len() as u64) {
        return Err(failed(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} bytes where the frame header declares {limit}", frames.len()),
        )));
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(first: u64, n: u64) -> Vec<Frame> {
        (first..first + n)
            .map(|i| Frame::new(i, 1_764_633_600_000 + i, format!("entry {i} payload payload payload").into_bytes()))
            .collect()
    }

    fn bare(index: u64, entry: &[u8]) -> Frame {
        Frame::new(index, 0, entry.to_vec())
    }

    /// A segment as netsy 0.2 (`MAGIC_V2`) or 0.1 wrote it: frames without a time.
    fn encode_untimed(magic: &[u8; 8], frames: &[Frame]) -> Vec<u8> {
        let mut body = Vec::new();
        for f in frames {
            body.extend_from_slice(&(f.entry.len() as u32).to_le_bytes());
            body.extend_from_slice(&crc32c::crc32c(&f.entry).to_le_bytes());
            body.extend_from_slice(&f.index.to_le_bytes());
            body.extend_from_slice(&f.entry);
        }
        let mut out = with_body(
            frames[0].index,
            frames[frames.len() - 1].index,
            &zstd::bulk::compress(&body, ZSTD_LEVEL).unwrap(),
        );
        out[..8].copy_from_slice(magic);
        out
    }

    /// Highly compressible segments (ratios far above 64:1) still decode.
    #[test]
    fn very_compressible_segments_decode() {
        let big: Vec<Frame> = (1..=64).map(|i| bare(i, &[b'a'; 64 << 10])).collect();
        let name = SegmentName {
            epoch: 1,
            first: 1,
            last: 64,
        };
        let bytes = encode(&big).unwrap();
        assert!(bytes.len() * 64 < 4 << 20, "the case this guards: {} bytes", bytes.len());
        assert_eq!(decode(&bytes, &name).unwrap().frames, big);
    }

    #[test]
    fn names_round_trip_and_sort_by_index() {
        let n = SegmentName {
            epoch: 3,
            first: 11,
            last: 20,
        };
        assert_eq!(n.path().to_string(), "epochs/3/wal/00000000000000000011-00000000000000000020.seg");
        assert_eq!(SegmentName::parse(&n.path()), Some(n));
        assert_eq!(SegmentName::parse(&Path::from("epochs/3/wal/x.seg")), None);
        assert_eq!(
            SegmentName::parse(&Path::from("epochs/3/snapshots/00000000000000000011.snap")),
            None
        );
        let a = SegmentName {
            epoch: 1,
            first: 9,
            last: 9,
        }
        .path()
        .to_string();
        let b = SegmentName {
            epoch: 1,
            first: 10,
            last: 12,
        }
        .path()
        .to_string();
        assert!(a < b, "zero padding keeps listing order = index order");
    }

    #[test]
    fn round_trip_and_compression() {
        let e = entries(5, 200);
        let name = SegmentName {
            epoch: 1,
            first: 5,
            last: 204,
        };
        let bytes = encode(&e).unwrap();
        assert!(bytes.len() < e.iter().map(|f| f.entry.len()).sum::<usize>() / 2, "compressed");
        let decoded = decode(&bytes, &name).unwrap();
        assert_eq!(decoded.frames, e);
        assert_eq!(decoded.encoding, EntryEncoding::Current);
    }

    #[test]
    fn every_corruption_is_detected_and_named() {
        let e = entries(1, 50);
        let name = SegmentName {
            epoch: 1,
            first: 1,
            last: 50,
        };
        let bytes = encode(&e).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let err = decode(&bad, &name).expect_err("a flipped byte must be detected");
            assert!(err.to_string().contains("epochs/1/wal/"), "{err}");
        }
        for cut in [0, 5, HEADER_LEN, bytes.len() - 1] {
            assert!(decode(&bytes[..cut], &name).is_err());
        }
        let other = SegmentName {
            epoch: 1,
            first: 1,
            last: 49,
        };
        assert!(matches!(decode(&bytes, &other), Err(SegmentError::Misnamed { .. })));
        // A body that passes its checksum but does not decompress keeps zstd's error.
        let mut garbled = bytes[..HEADER_LEN].to_vec();
        let body = b"not zstd at all".to_vec();
        garbled[24..28].copy_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        garbled[28..32].copy_from_slice(&(body.len() as u32).to_le_bytes());
        garbled.extend_from_slice(&body);
        let err = decode(&garbled, &name).unwrap_err();
        assert!(matches!(err, SegmentError::Decompress { .. }), "{err:?}");
        assert!(std::error::Error::source(&err).is_some_and(|s| s.is::<std::io::Error>()), "{err:?}");
        assert!(encode(&[bare(1, &[1]), bare(3, &[3])]).is_err(), "entries must be consecutive");
        assert!(encode(&[]).is_err());
    }

    /// A header and `body` as `encode` lays them out, checksums right.
    fn with_body(first: u64, last: u64, body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&first.to_le_bytes());
        out.extend_from_slice(&last.to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(body);
        out
    }

    /// One frame for entry `index`.
    fn frame(index: u64, entry: &[u8]) -> Vec<u8> {
        let mut out = (entry.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&crc32c::crc32c(entry).to_le_bytes());
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&7u64.to_le_bytes());
        out.extend_from_slice(entry);
        out
    }

    /// A range ending at u64::MAX overflowed (the `segment` fuzz target finds it within
    /// seconds in the unfixed code).
    #[test]
    fn a_range_ending_at_u64_max_is_a_bad_range() {
        let max = u64::MAX;
        let name = SegmentName {
            epoch: 1,
            first: max,
            last: max,
        };
        let body = zstd::bulk::compress(&frame(max, b"x"), ZSTD_LEVEL).unwrap();
        let err = decode(&with_body(max, max, &body), &name).unwrap_err();
        assert!(matches!(err, SegmentError::BadRange { .. }), "{err:?}");
        assert!(err.to_string().contains("bad range"), "{err}");
        // The next-to-last index still decodes.
        let name = SegmentName {
            epoch: 1,
            first: max - 1,
            last: max - 1,
        };
        let body = zstd::bulk::compress(&frame(max - 1, b"x"), ZSTD_LEVEL).unwrap();
        assert_eq!(
            decode(&with_body(max - 1, max - 1, &body), &name).unwrap().frames,
            vec![Frame::new(max - 1, 7, b"x".to_vec())]
        );
    }

    /// A zstd frame of 100 bytes whose header declares `size` bytes.
    fn frame_claiming(size: u64) -> Vec<u8> {
        let mut pledge = zstd::zstd_safe::CCtx::create();
        pledge.set_pledged_src_size(Some(size)).unwrap();
        let mut body = vec![0u8; 256];
        let mut out = zstd::zstd_safe::OutBuffer::around(&mut body[..]);
        let mut input = zstd::zstd_safe::InBuffer::around(&[7u8; 100][..]);
        pledge
            .compress_stream2(&mut out, &mut input, zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush)
            .unwrap();
        let n = out.pos();
        body.truncate(n);
        body
    }

    /// A frame header declaring gigabytes was allocated up front (the `segment` fuzz
    /// target runs out of memory on the unfixed code within minutes). Memory now follows
    /// what the body really holds, never past its claim.
    #[test]
    fn hostile_zstd_frames_are_refused_without_allocating_their_claim() {
        let name = SegmentName {
            epoch: 1,
            first: 1,
            last: 1,
        };
        // A valid frame of 100 bytes whose header is rewritten to declare 3 GiB: zstd
        // finds the body short, and nothing near 3 GiB is allocated.
        let body = frame_claiming(3 << 30);
        assert_eq!(zstd::zstd_safe::get_frame_content_size(&body).unwrap(), Some(3 << 30));
        let err = decode(&with_body(1, 1, &body), &name).unwrap_err();
        assert!(matches!(err, SegmentError::Decompress { .. }), "{err:?}");
        // A claim past the 4 GiB a segment can hold is refused before decompressing.
        let body = frame_claiming(MAX_FRAMES + 1);
        let err = decode(&with_body(1, 1, &body), &name).unwrap_err();
        assert!(matches!(err, SegmentError::Overlong { .. }), "{err:?}");
        // A second frame after the declared one: more than the header declares.
        let one = frame(1, b"one");
        let mut body = zstd::bulk::compress(&one, ZSTD_LEVEL).unwrap();
        body.extend(zstd::bulk::compress(&frame(2, b"two"), ZSTD_LEVEL).unwrap());
        let err = decode(&with_body(1, 1, &body), &name).unwrap_err();
        assert!(
            matches!(err, SegmentError::Overlong { limit, .. } if limit == one.len() as u64),
            "{err:?}"
        );
    }

    #[test]
    fn older_segments_read_and_future_ones_are_refused_by_name() {
        let name = SegmentName {
            epoch: 1,
            first: 5,
            last: 6,
        };
        let untimed = vec![bare(5, b"five"), bare(6, b"six")];
        for (magic, encoding) in [(MAGIC_V1, EntryEncoding::Bincode), (MAGIC_V2, EntryEncoding::Current)] {
            let decoded = decode(&encode_untimed(magic, &untimed), &name).unwrap();
            assert_eq!((decoded.encoding, &decoded.frames), (encoding, &untimed), "{magic:?}");
        }
        let timed = vec![Frame::new(5, 100, b"five".to_vec()), Frame::new(6, 101, b"six".to_vec())];
        let decoded = decode(&encode(&timed).unwrap(), &name).unwrap();
        assert_eq!((decoded.encoding, decoded.frames), (EntryEncoding::Current, timed.clone()));
        let mut future = encode(&timed).unwrap();
        future[7] = b'4';
        let err = decode(&future, &name).unwrap_err();
        assert!(matches!(err, SegmentError::Future { found: '4', .. }), "{err:?}");
        assert!(err.to_string().contains("format 4"), "{err}");
    }
}
