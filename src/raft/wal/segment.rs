//! Segment files: `{first index:020}.wal` in the log's directory.
//!
//! ```text
//! "NETSYWL1" | u64 LE index of the first entry | record | record | … | zeroes
//! ```
//!
//! The magic's last byte is the format version. A segment is created whole (header and
//! zeroed space written and synced under a temporary name, then renamed into place), so
//! a segment file always has its header. Records follow one another from offset
//! [`HEADER`]; the first holds the entry the name gives, each next one the next index.
//! After the last record the file holds zeroes only (see `wal::writer` for how that is
//! kept after a crash, a truncation and a restart).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::{self, Parsed};
use super::WalError;

/// The magic before the format version.
const MAGIC: &[u8; 7] = b"NETSYWL";
/// The format version this netsy writes (the magic's last byte).
const VERSION: u8 = b'1';
/// Bytes before the first record.
pub const HEADER: u64 = 16;

/// A segment's file name.
pub fn file_name(first: u64) -> String {
    format!("{first:020}.wal")
}

/// The first index a segment file name gives; `None` for any other name.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// An open segment file.
#[derive(Debug)]
pub struct Segment {
    /// The index of the entry its first record holds (and its name).
    pub first: u64,
    pub path: PathBuf,
    pub file: File,
}

fn header(first: u64) -> [u8; HEADER as usize] {
    let mut out = [0u8; HEADER as usize];
    out[..7].copy_from_slice(MAGIC);
    out[7] = VERSION;
    out[8..].copy_from_slice(&first.to_le_bytes());
    out
}

impl Segment {
    /// Creates segment `first` in `dir`, `len` bytes long (at least the header; zeroes
    /// after it): written and synced under a temporary name, renamed into place, and the
    /// directory synced, so that after a crash the segment is either whole or absent.
    pub fn create(dir: &Path, first: u64, len: u64) -> Result<Segment, WalError> {
        let path = dir.join(file_name(first));
        let tmp = dir.join(format!("{}.tmp", file_name(first)));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(WalError::io(&tmp, "create"))?;
        file.write_all_at(&header(first), 0).map_err(WalError::io(&tmp, "write"))?;
        write_zeroes(&file, HEADER, len.max(HEADER)).map_err(WalError::io(&tmp, "preallocate"))?;
        file.sync_all().map_err(WalError::io(&tmp, "sync"))?;
        std::fs::rename(&tmp, &path).map_err(WalError::io(&path, "rename into place"))?;
        sync_dir(dir)?;
        Ok(Segment { first, path, file })
    }

    /// Reads `len` bytes at `offset`.
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, WalError> {
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(WalError::io(&self.path, "read"))?;
        Ok(buf)
    }

    /// The payloads of the `count` records that start at `offset` and end at `end`,
    /// checked.
    pub fn read_records(&self, offset: u64, end: u64, count: usize) -> Result<Vec<Vec<u8>>, WalError> {
        let buf = self.read(offset, (end - offset) as usize)?;
        let mut out = Vec::with_capacity(count);
        let mut at = 0usize;
        while out.len() < count {
            match record::parse(&buf[at..]) {
                Parsed::Record(payload) => {
                    out.push(payload.to_vec());
                    at += record::HEADER + payload.len();
                }
                Parsed::End => return Err(self.corrupt(offset + at as u64, "no record where the index has one")),
                Parsed::Invalid(reason) => return Err(self.corrupt(offset + at as u64, reason)),
            }
        }
        Ok(out)
    }

    pub fn corrupt(&self, offset: u64, reason: impl Into<String>) -> WalError {
        WalError::Corrupt {
            path: self.path.clone(),
            offset,
            reason: reason.into(),
        }
    }
}

/// Opens segment file `path`, named for entry `first`, and reads it whole, checking its
/// header.
pub fn open(path: &Path, first: u64) -> Result<(Segment, Vec<u8>), WalError> {
    let file = File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(WalError::io(path, "open"))?;
    let segment = Segment {
        first,
        path: path.to_path_buf(),
        file,
    };
    let len = segment.file.metadata().map_err(WalError::io(path, "stat"))?.len();
    let bytes = segment.read(0, len as usize)?;
    match bytes.get(..HEADER as usize) {
        Some(h) if h[..7] == MAGIC[..] && h[7] > VERSION => Err(WalError::FutureSegment {
            path: path.to_path_buf(),
            found: h[7],
        }),
        Some(h) if h == header(first) => Ok((segment, bytes)),
        _ => Err(segment.corrupt(0, format!("not the header of a netsy Raft log segment starting at entry {first}"))),
    }
}

/// Writes zeroes over `from..to` of `file`.
pub fn write_zeroes(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeroes = vec![0u8; CHUNK.min(to.saturating_sub(from)) as usize];
    let mut at = from;
    while at < to {
        let n = CHUNK.min(to - at);
        file.write_all_at(&zeroes[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

/// Fsyncs directory `dir`, so that files created, renamed or removed in it stay so after
/// an OS crash.
pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(WalError::io(dir, "sync the directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_first_index_and_parse_back() {
        assert_eq!(file_name(42), "00000000000000000042.wal");
        assert_eq!(parse_name(&file_name(u64::MAX)), Some(u64::MAX));
        for other in ["vote", "00000000000000000042.wal.tmp", "42.wal", "0000000000000000004x.wal"] {
            assert_eq!(parse_name(other), None, "{other}");
        }
        assert!(file_name(9) < file_name(10));
    }

    #[test]
    fn a_created_segment_has_its_header_and_zeroes_and_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let segment = Segment::create(dir.path(), 7, 4096).expect("create");
        let (_, bytes) = open(&segment.path, 7).expect("open");
        assert_eq!(bytes.len(), 4096);
        assert_eq!(&bytes[..8], b"NETSYWL1");
        assert_eq!(bytes[8..16], 7u64.to_le_bytes());
        assert!(bytes[16..].iter().all(|b| *b == 0));
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![file_name(7)]);
    }

    #[test]
    fn a_wrong_or_newer_header_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let segment = Segment::create(dir.path(), 7, 64).expect("create");
        let err = open(&segment.path, 8).expect_err("named for another index");
        assert!(
            err.to_string().contains("00000000000000000007.wal") && err.to_string().contains("offset 0"),
            "{err}"
        );
        segment.file.write_all_at(b"2", 7).expect("write");
        let err = open(&segment.path, 7).expect_err("newer");
        assert!(err.to_string().contains("format 2"), "{err}");
    }
}
