//! Opening the log: what its directory holds after a clean stop or any crash.
//!
//! Every segment is read and every record checked (CRC, then the entry decoded and found
//! at its index). The last segment ends at its first record that is not whole and
//! intact (a torn write, or a corrupt one) or at the zeroes after its last record; what
//! follows is cut off (and logged: the file and the offset), since no acknowledged entry
//! can be there (`writer`). Any other segment must be intact up to its end: a bad record
//! there is an error naming the file and the offset, never skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::Vote;

use super::index::Index;
use super::record::{self, Parsed};
use super::segment::{self, Segment, HEADER};
use super::writer::Current;
use super::{WalError, PURGED_FILE, VOTE_FILE};
use crate::raft::codec::{self, FormatError};
use crate::raft::{LogId, NodeId};

/// What a log's directory holds.
pub struct Recovered {
    pub vote: Option<Vote<NodeId>>,
    pub last_purged: Option<LogId>,
    /// The entries after the last purged one.
    pub written: Index,
    /// The last of them.
    pub last: Option<LogId>,
    pub segments: BTreeMap<u64, Arc<Segment>>,
    /// The last segment, where appends go.
    pub current: Option<Current>,
}

/// A small file of the log (the vote, the purge marker), if there is one.
fn read_small<T>(path: &Path, decode: fn(&[u8]) -> Result<T, FormatError>) -> Result<Option<T>, WalError> {
    match std::fs::read(path) {
        Ok(bytes) => decode(&bytes).map(Some).map_err(|source| WalError::Format {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(WalError::io(path, "read")(e)),
    }
}

/// Opens the log in `dir` (creating an empty one when there is none).
pub fn recover(dir: &Path) -> Result<Recovered, WalError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(WalError::io(dir, "create"))?;
        if let Some(parent) = dir.parent() {
            segment::sync_dir(parent)?;
        }
    }
    let mut files: BTreeMap<u64, PathBuf> = BTreeMap::new();
    for dirent in std::fs::read_dir(dir).map_err(WalError::io(dir, "list"))? {
        let path = dirent.map_err(WalError::io(dir, "list"))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(first) = segment::parse_name(&name) {
            files.insert(first, path);
        } else if name.ends_with(".tmp") {
            // A segment or small file being created when the process stopped.
            std::fs::remove_file(&path).map_err(WalError::io(&path, "remove"))?;
        }
    }
    let vote = read_small(&dir.join(VOTE_FILE), codec::decode_vote)?;
    let last_purged = read_small(&dir.join(PURGED_FILE), codec::decode_log_id)?;
    let purged = last_purged.map(|l| l.index);

    // Segments that hold purged entries only (the next one starts at or before the first
    // entry kept): a purge stopped before it removed them.
    let firsts: Vec<u64> = files.keys().copied().collect();
    let mut stale = Vec::new();
    for pair in firsts.windows(2) {
        if purged.is_some_and(|p| pair[1] <= p + 1) {
            stale.extend(files.remove(&pair[0]));
        }
    }
    remove(dir, &stale)?;

    let mut written = Index::default();
    let mut last = None;
    let mut segments = BTreeMap::new();
    let mut current = None;
    let mut expected: Option<u64> = None;
    let count = files.len();
    for (k, (first, path)) in files.into_iter().enumerate() {
        if let Some(expected) = expected.filter(|e| *e != first) {
            return Err(WalError::Missing {
                path,
                expected,
                found: first,
            });
        }
        let (segment, bytes) = segment::open(&path, first)?;
        let mut at = HEADER as usize;
        let mut index = first;
        let invalid = loop {
            match record::parse(&bytes[at..]) {
                Parsed::Record(payload) => {
                    let offset = at as u64;
                    let entry = codec::decode_entry(payload).map_err(|source| WalError::Entry {
                        path: path.clone(),
                        offset,
                        source,
                    })?;
                    if entry.log_id.index != index {
                        return Err(segment.corrupt(offset, format!("it holds entry {} where entry {index} belongs", entry.log_id.index)));
                    }
                    if purged.is_none_or(|p| index > p) {
                        written.push(index, offset, payload.len() as u64);
                        last = Some(entry.log_id);
                    }
                    at += record::HEADER + payload.len();
                    index += 1;
                }
                Parsed::End => break None,
                Parsed::Invalid(reason) => break Some(reason),
            }
        };
        let is_last = k + 1 == count;
        if !is_last {
            if let Some(reason) = invalid {
                return Err(segment.corrupt(at as u64, reason));
            }
        }
        let mut len = bytes.len() as u64;
        if is_last && bytes[at..].iter().any(|b| *b != 0) {
            // A batch that was being written when the process or the machine stopped: none
            // of it was acknowledged (that comes after its sync).
            tracing::warn!(
                file = %path.display(),
                offset = at,
                reason = invalid.unwrap_or("bytes after the last record"),
                "the Raft log ends in a torn or corrupt record: cutting it off there"
            );
            segment.file.set_len(at as u64).map_err(WalError::io(&path, "cut"))?;
            segment.file.sync_data().map_err(WalError::io(&path, "sync"))?;
            len = at as u64;
        }
        expected = Some(index);
        let segment = Arc::new(segment);
        if is_last {
            current = Some(Current {
                segment: segment.clone(),
                next: index,
                tail: at as u64,
                len,
            });
        }
        segments.insert(first, segment);
    }

    if let (Some(p), Some(cur)) = (purged, &current) {
        if cur.next <= p {
            // The last segment holds purged entries only, and the log goes on after the
            // purged entry: a purge past the log stopped before it removed it.
            let stale = cur.segment.path.clone();
            segments.remove(&cur.segment.first);
            current = None;
            remove(dir, &[stale])?;
        }
    }
    if let (Some(p), Some((first, segment))) = (purged, segments.first_key_value()) {
        if *first > p + 1 {
            return Err(WalError::Missing {
                path: segment.path.clone(),
                expected: p + 1,
                found: *first,
            });
        }
    }
    Ok(Recovered {
        vote,
        last_purged,
        written,
        last,
        segments,
        current,
    })
}

fn remove(dir: &Path, paths: &[PathBuf]) -> Result<(), WalError> {
    for path in paths {
        std::fs::remove_file(path).map_err(WalError::io(path, "remove"))?;
    }
    if !paths.is_empty() {
        segment::sync_dir(dir)?;
    }
    Ok(())
}
