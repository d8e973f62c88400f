//! etcd 3.7's RangeStream: a Range answered in chunks, each read in its own short read
//! transaction at the revision the first chunk pinned. Merging every chunk (protobuf
//! merge: `kvs` appended, set fields overwritten) gives exactly the unary answer of
//! `read::range`: the first chunk carries the header revision, the last `count` and
//! `more`, any chunk `kvs`. A chunk ends once its keys and values reach
//! `TARGET_CHUNK_BYTES` (as etcd's byte budget per chunk), so a stream of any size holds
//! about one chunk in memory here.

use rusqlite::Connection;

use super::read::{count_at, kvs_at_within, KeyRange, RangeEnd, Revisions};
use super::MvccError;
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use crate::proto::mvccpb::KeyValue;

/// What a chunk aims at (etcd sizes its chunks from its request size limit, ~1.5 MiB).
pub const TARGET_CHUNK_BYTES: usize = 1 << 20;
/// Keys in the first chunk, before anything is known about their size.
const FIRST_CHUNK_KEYS: i64 = 128;
const MAX_CHUNK_KEYS: i64 = 65_536;

/// Why a range cannot be streamed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamRefused {
    /// Sorting needs every key before the first is sent: use Range.
    #[error("RangeStream does not support sorting; use Range")]
    Sorted,
}

/// One chunk of the answer.
#[derive(Debug, Default)]
pub struct Chunk {
    pub response: RangeResponse,
    /// The stream ends with this chunk.
    pub last: bool,
}

/// The state of one stream between chunks.
#[derive(Debug)]
pub struct RangeStream {
    req: RangeRequest,
    /// What is left to read.
    rest: KeyRange,
    /// The revision read at, fixed by the first chunk.
    pinned: Option<i64>,
    /// Live keys read so far (the answer's `count`, before filters, as in Range).
    visited: i64,
    /// Keys that passed the filters so far (sent while under the limit).
    matched: i64,
    chunk_keys: i64,
    target_bytes: usize,
    done: bool,
}

impl RangeStream {
    pub fn new(req: RangeRequest) -> Result<RangeStream, StreamRefused> {
        let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
        let order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
        // Ascending by key is the order keys are read in (Range treats it as no sort).
        let unsorted = target == SortTarget::Key && matches!(order, SortOrder::None | SortOrder::Ascend);
        if !unsorted {
            return Err(StreamRefused::Sorted);
        }
        Ok(RangeStream {
            rest: KeyRange::new(&req.key, &req.range_end),
            req,
            pinned: None,
            visited: 0,
            matched: 0,
            chunk_keys: FIRST_CHUNK_KEYS,
            target_bytes: TARGET_CHUNK_BYTES,
            done: false,
        })
    }

    /// Smaller chunks (tests: many chunks from few keys).
    #[cfg(test)]
    fn with_chunk_keys(mut self, keys: i64, target_bytes: usize) -> RangeStream {
        self.chunk_keys = keys;
        self.target_bytes = target_bytes;
        self
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    fn has_filter(&self) -> bool {
        let r = &self.req;
        r.min_mod_revision != 0 || r.max_mod_revision != 0 || r.min_create_revision != 0 || r.max_create_revision != 0
    }

    fn passes(&self, kv: &KeyValue) -> bool {
        let r = &self.req;
        (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
            && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
            && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
            && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
    }

    /// Reads the next chunk in `conn`'s read transaction (whose revisions are `revs`).
    pub fn next_chunk(&mut self, conn: &Connection, revs: Revisions) -> Result<Chunk, MvccError> {
        let mut chunk = Chunk::default();
        let rev = match self.pinned {
            Some(rev) => rev,
            None => {
                let rev = if self.req.revision <= 0 { revs.current } else { self.req.revision };
                if rev > revs.current {
                    return Err(MvccError::FutureRevision);
                }
                self.pinned = Some(rev);
                chunk.response.header = Some(ResponseHeader {
                    revision: revs.current,
                    ..Default::default()
                });
                rev
            }
        };
        // Checked for every chunk: a compaction between chunks ends the stream.
        if rev < revs.compacted {
            return Err(MvccError::Compacted);
        }
        if self.req.count_only {
            chunk.response.count = count_at(conn, &self.rest, rev, revs.current)?;
            return Ok(self.finish(chunk, false));
        }
        let limit = self.req.limit;
        let (kvs, ended) = kvs_at_within(
            conn,
            &self.rest,
            rev,
            revs.current,
            self.chunk_keys,
            !self.req.keys_only,
            self.target_bytes,
        )?;
        let read_to_end = ended || self.rest.end == RangeEnd::Single;
        self.visited += kvs.len() as i64;
        if let Some(last) = kvs.last() {
            let mut next = last.key.clone();
            next.push(0);
            self.rest.start = next;
        }
        let mut more = false;
        for kv in kvs {
            if !self.passes(&kv) {
                continue;
            }
            self.matched += 1;
            if limit <= 0 || self.matched <= limit {
                chunk.response.kvs.push(kv);
            } else {
                more = true;
            }
        }
        if read_to_end {
            return Ok(self.finish(chunk, more));
        }
        let limit_reached = limit > 0 && self.matched >= limit;
        if limit_reached && (more || !self.has_filter()) {
            // Nothing more is sent: count the rest in one go. Without filters, any key
            // left is one more than the limit.
            let rest = count_at(conn, &self.rest, rev, revs.current)?;
            return Ok(self.finish_counted(chunk, rest, more || rest > 0));
        }
        // A chunk ends at `target_bytes` of keys and values or at `chunk_keys` keys
        // (small keys-only rows); the key count doubles while chunks stay small.
        self.chunk_keys = (self.chunk_keys * 2).min(MAX_CHUNK_KEYS);
        Ok(chunk)
    }

    fn finish(&mut self, chunk: Chunk, more: bool) -> Chunk {
        self.finish_counted(chunk, 0, more)
    }

    fn finish_counted(&mut self, mut chunk: Chunk, uncounted: i64, more: bool) -> Chunk {
        self.done = true;
        chunk.last = true;
        if !self.req.count_only {
            chunk.response.count = self.visited + uncounted;
        }
        chunk.response.more = more;
        chunk
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::mvcc::{AppliedMeta, Command, Reader, Store};
    use crate::proto::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest};

    /// Every chunk of `stream` merged with protobuf merge semantics, and how many chunks.
    fn merged(reader: &Reader, mut stream: RangeStream) -> Result<(RangeResponse, usize), MvccError> {
        let mut out = RangeResponse::default();
        let mut chunks = 0;
        while !stream.is_done() {
            let chunk = reader.read(|conn, revs| stream.next_chunk(conn, revs))?;
            out.merge(chunk.response.encode_to_vec().as_slice()).expect("merge");
            chunks += 1;
        }
        Ok((out, chunks))
    }

    fn key(i: u32) -> Vec<u8> {
        format!("k{i:03}").into_bytes()
    }

    /// ~1,000 random requests over a random history (puts of values of random sizes,
    /// deletes, a compaction): the merged stream equals the unary Range answer, or both
    /// fail alike; streams are cut into chunks of a few keys so most have many.
    #[test]
    fn merged_chunks_equal_the_unary_range() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let reader = Reader::new(store.path());
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for n in 0..600u32 {
            let cmd = if rng.random_range(0..10) < 8 {
                Command::Put(PutRequest {
                    key: key(rng.random_range(0..200)),
                    value: vec![b'a' + (n % 26) as u8; rng.random_range(0..300)],
                    ..Default::default()
                })
            } else {
                let from = rng.random_range(0..200);
                Command::DeleteRange(DeleteRangeRequest {
                    key: key(from),
                    range_end: key(from + rng.random_range(0..5)),
                    ..Default::default()
                })
            };
            store.apply_batch(&[Some(cmd)], &AppliedMeta::default()).unwrap();
        }
        let compacted = store.revision() / 3;
        store
            .apply_batch(
                &[Some(Command::Compact(CompactionRequest {
                    revision: compacted,
                    physical: false,
                }))],
                &AppliedMeta::default(),
            )
            .unwrap();
        let current = store.revision();
        let mut multi = 0;
        for case in 0..1000 {
            let a: u32 = rng.random_range(0..210);
            let range_end = match rng.random_range(0..6) {
                0 => Vec::new(),
                1 => vec![0],
                2 => key(a.saturating_sub(3)),
                _ => key(a + rng.random_range(0..120)),
            };
            let filter = |rng: &mut rand::rngs::StdRng| {
                if rng.random_range(0..4) == 0 {
                    rng.random_range(0..current + 2)
                } else {
                    0
                }
            };
            let req = RangeRequest {
                key: if rng.random_range(0..10) == 0 { vec![0] } else { key(a) },
                range_end,
                limit: [0, 0, -1, 1, 2, 5, 17, 60][rng.random_range(0..8)],
                revision: [0, 0, -1, current, current - 5, compacted, compacted - 1, current + 1][rng.random_range(0..8)],
                keys_only: rng.random_range(0..4) == 0,
                count_only: rng.random_range(0..8) == 0,
                sort_order: if rng.random_range(0..6) == 0 { SortOrder::Ascend as i32 } else { 0 },
                min_mod_revision: filter(&mut rng),
                max_mod_revision: filter(&mut rng),
                min_create_revision: filter(&mut rng),
                max_create_revision: filter(&mut rng),
                ..Default::default()
            };
            let unary = reader.range(&req);
            let stream = RangeStream::new(req.clone())
                .unwrap()
                .with_chunk_keys(rng.random_range(1..6), rng.random_range(50..2000));
            let streamed = merged(&reader, stream);
            match (unary, streamed) {
                (Ok(u), Ok((s, chunks))) => {
                    assert_eq!(s, u, "case {case}: {req:?}");
                    multi += usize::from(chunks > 2);
                }
                (Err(u), Err(s)) => assert_eq!(s.to_string(), u.to_string(), "case {case}: {req:?}"),
                (u, s) => panic!("case {case}: {req:?}: unary {u:?}, streamed {s:?}"),
            }
        }
        assert!(multi > 200, "only {multi} streams had several chunks");
    }

    #[test]
    fn sorting_is_refused_and_ascending_by_key_is_not_a_sort() {
        let sorted = |target: SortTarget, order: SortOrder| {
            RangeStream::new(RangeRequest {
                key: b"a".to_vec(),
                sort_target: target as i32,
                sort_order: order as i32,
                ..Default::default()
            })
            .err()
        };
        assert_eq!(sorted(SortTarget::Key, SortOrder::None), None);
        assert_eq!(sorted(SortTarget::Key, SortOrder::Ascend), None);
        assert_eq!(sorted(SortTarget::Key, SortOrder::Descend), Some(StreamRefused::Sorted));
        assert_eq!(sorted(SortTarget::Mod, SortOrder::None), Some(StreamRefused::Sorted));
        assert_eq!(sorted(SortTarget::Value, SortOrder::Ascend), Some(StreamRefused::Sorted));
    }

    /// A compaction past the pinned revision between two chunks ends the stream with
    /// ErrCompacted.
    #[test]
    fn a_compaction_between_chunks_ends_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let reader = Reader::new(store.path());
        for i in 0..20 {
            let put = Command::Put(PutRequest {
                key: key(i),
                value: b"v".to_vec(),
                ..Default::default()
            });
            store.apply_batch(&[Some(put)], &AppliedMeta::default()).unwrap();
        }
        let mut stream = RangeStream::new(RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .unwrap()
        .with_chunk_keys(5, 1 << 20);
        let first = reader.read(|conn, revs| stream.next_chunk(conn, revs)).unwrap();
        assert_eq!(first.response.kvs.len(), 5);
        let pinned = store.revision();
        let put = Command::Put(PutRequest {
            key: key(0),
            value: b"w".to_vec(),
            ..Default::default()
        });
        store.apply_batch(&[Some(put)], &AppliedMeta::default()).unwrap();
        // A write after the pin is not seen by later chunks.
        let second = reader.read(|conn, revs| stream.next_chunk(conn, revs)).unwrap();
        assert!(second.response.kvs.iter().all(|kv| kv.mod_revision <= pinned));
        let compact = Command::Compact(CompactionRequest {
            revision: pinned + 1,
            physical: false,
        });
        store.apply_batch(&[Some(compact)], &AppliedMeta::default()).unwrap();
        let third = reader.read(|conn, revs| stream.next_chunk(conn, revs));
        assert!(matches!(third, Err(MvccError::Compacted)), "{third:?}");
    }
}
