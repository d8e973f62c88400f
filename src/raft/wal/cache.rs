//! The newest entries in memory, decoded and encoded, so that the state machine applying
//! just-committed entries, replication to followers and the archive uploader do not read
//! them back from the segment files.
//!
//! The cache holds a contiguous run of the log that always reaches its last entry: every
//! entry appended and not yet written is in it (that is how it is readable at once), and
//! written ones stay until the cache holds more than its limit of encoded bytes; the
//! oldest are then evicted (only written ones: `evict`).

use std::collections::VecDeque;
use std::sync::Arc;

use openraft::Entry;

use crate::raft::TypeConfig;

/// An appended entry: decoded, and encoded as its record's payload (`codec::encode_entry`).
#[derive(Debug)]
pub struct Cached {
    pub entry: Entry<TypeConfig>,
    pub bytes: Vec<u8>,
}

impl Cached {
    pub fn new(entry: Entry<TypeConfig>) -> Cached {
        Cached {
            bytes: crate::raft::codec::encode_entry(&entry),
            entry,
        }
    }

    pub fn index(&self) -> u64 {
        self.entry.log_id.index
    }
}

#[derive(Debug)]
pub struct Cache {
    /// The index of the first cached entry (where the next one goes when it is empty).
    first: u64,
    entries: VecDeque<Arc<Cached>>,
    /// Encoded bytes of the cached entries.
    bytes: u64,
    limit: u64,
}

impl Cache {
    pub fn new(first: u64, limit: u64) -> Cache {
        Cache {
            first,
            entries: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    pub fn first(&self) -> u64 {
        self.first
    }

    /// The index after the last cached entry.
    pub fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    pub fn get(&self, idx: u64) -> Option<&Arc<Cached>> {
        let k = idx.checked_sub(self.first)?;
        self.entries.get(usize::try_from(k).ok()?)
    }

    /// Adds the entry after the last one (the caller makes sure it is the next index, or
    /// `restart`s the cache there first).
    pub fn push(&mut self, entry: Arc<Cached>) {
        debug_assert_eq!(entry.index(), self.end(), "cache entries are consecutive");
        self.bytes += entry.bytes.len() as u64;
        self.entries.push_back(entry);
    }

    /// Empties the cache; the next entry is `first`.
    pub fn restart(&mut self, first: u64) {
        self.entries.clear();
        self.bytes = 0;
        self.first = first;
    }

    /// Entries from `idx` on are gone.
    pub fn truncate(&mut self, idx: u64) {
        if idx <= self.first {
            self.restart(idx);
            return;
        }
        while self.end() > idx {
            if let Some(e) = self.entries.pop_back() {
                self.bytes -= e.bytes.len() as u64;
            }
        }
    }

    /// Entries through `idx` are gone.
    pub fn purge(&mut self, idx: u64) {
        if idx >= self.end() {
            self.restart(idx + 1);
            return;
        }
        while self.first <= idx {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.bytes.len() as u64;
            self.first += 1;
        }
    }

    /// Evicts the oldest entries while the cache is over its limit, but only entries
    /// through `written` (the last entry written to a segment file, whose records can be
    /// read instead).
    pub fn evict(&mut self, written: Option<u64>) {
        let Some(written) = written else { return };
        while self.bytes > self.limit && self.first <= written && !self.entries.is_empty() {
            self.pop_front();
        }
    }

    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64) -> Arc<Cached> {
        Arc::new(Cached::new(Entry {
            log_id: crate::raft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Blank,
        }))
    }

    fn indexes(cache: &Cache) -> Vec<u64> {
        (cache.first()..cache.end()).collect()
    }

    #[test]
    fn the_oldest_written_entries_are_evicted_over_the_limit() {
        let size = entry(10).bytes.len() as u64;
        let mut cache = Cache::new(10, 3 * size);
        for i in 10..16 {
            cache.push(entry(i));
        }
        cache.evict(None);
        assert_eq!(indexes(&cache), (10..16).collect::<Vec<_>>(), "nothing written yet");
        cache.evict(Some(11));
        assert_eq!(indexes(&cache), (12..16).collect::<Vec<_>>(), "only written entries go");
        cache.evict(Some(15));
        assert_eq!(indexes(&cache), vec![13, 14, 15]);
        assert_eq!(cache.bytes(), 3 * size);
        assert_eq!(cache.get(14).map(|e| e.index()), Some(14));
        assert!(cache.get(12).is_none() && cache.get(16).is_none());
    }

    #[test]
    fn truncate_and_purge_keep_the_run_in_place() {
        let mut cache = Cache::new(0, u64::MAX);
        for i in 0..10 {
            cache.push(entry(i));
        }
        cache.truncate(7);
        assert_eq!(indexes(&cache), (0..7).collect::<Vec<_>>());
        cache.purge(2);
        assert_eq!(indexes(&cache), (3..7).collect::<Vec<_>>());
        cache.purge(20);
        assert_eq!((cache.first(), cache.end(), cache.bytes()), (21, 21, 0), "purged past the end");
        cache.truncate(5);
        assert_eq!((cache.first(), cache.end()), (5, 5), "truncated before the start");
        cache.push(entry(5));
        assert_eq!(indexes(&cache), vec![5]);
    }
}
