//! Where each entry written to the segment files is, and how big it is.
//!
//! The written entries are one contiguous run of indexes. For each the index keeps the
//! offset of its record and the running total of the payload lengths through it: 16
//! bytes an entry. The running totals give each payload's length, and make "bytes after
//! index i" (the archive's upload backlog, the log since the last snapshot) a lookup
//! rather than a scan. The segment holding an entry is the one with the greatest first
//! index not after it (segments are contiguous).

use std::collections::VecDeque;

/// Where an entry's record is in its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    /// The record's offset in the segment file.
    pub offset: u64,
    /// The payload's length (the encoded entry).
    pub len: u64,
}

impl Pos {
    /// The offset just after the record.
    pub fn end(&self) -> u64 {
        self.offset + super::record::HEADER as u64 + self.len
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    offset: u64,
    /// Running total of payload bytes through this entry.
    total: u64,
}

#[derive(Debug, Default)]
pub struct Index {
    /// The index of the first entry.
    first: u64,
    /// Running total before the first entry.
    base: u64,
    slots: VecDeque<Slot>,
}

impl Index {
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The first entry's index (meaningful when not empty).
    pub fn first(&self) -> u64 {
        self.first
    }

    pub fn last(&self) -> Option<u64> {
        (!self.slots.is_empty()).then(|| self.first + self.slots.len() as u64 - 1)
    }

    pub fn get(&self, idx: u64) -> Option<Pos> {
        let k = usize::try_from(idx.checked_sub(self.first)?).ok()?;
        let slot = self.slots.get(k)?;
        let before = match k.checked_sub(1) {
            Some(prev) => self.slots.get(prev)?.total,
            None => self.base,
        };
        Some(Pos {
            offset: slot.offset,
            len: slot.total - before,
        })
    }

    fn total(&self) -> u64 {
        self.slots.back().map_or(self.base, |s| s.total)
    }

    /// Entry `idx` was written at `offset` with a payload of `len` bytes, replacing it and
    /// everything after it. An index that does not follow the run starts a new run.
    pub fn push(&mut self, idx: u64, offset: u64, len: u64) {
        if self.slots.is_empty() || idx < self.first || idx > self.first + self.slots.len() as u64 {
            *self = Index {
                first: idx,
                base: self.total(),
                slots: VecDeque::new(),
            };
        }
        self.truncate(idx);
        let total = self.total() + len;
        self.slots.push_back(Slot { offset, total });
    }

    /// Entries from `idx` on are gone.
    pub fn truncate(&mut self, idx: u64) {
        let keep = idx.saturating_sub(self.first).min(self.slots.len() as u64);
        self.slots.truncate(keep as usize);
    }

    /// Entries through `idx` are gone.
    pub fn purge(&mut self, idx: u64) {
        while self.first <= idx {
            let Some(slot) = self.slots.pop_front() else {
                break;
            };
            self.base = slot.total;
            self.first += 1;
        }
    }

    /// Payload bytes of the entries after `idx`.
    pub fn bytes_after(&self, idx: u64) -> u64 {
        let before = match idx.checked_sub(self.first) {
            None => self.base,
            Some(k) => usize::try_from(k)
                .ok()
                .and_then(|k| self.slots.get(k))
                .map_or(self.total(), |s| s.total),
        };
        self.total() - before
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The running totals agree with summing the entries after an index, through
    /// appends, a conflicting append, truncation and purges.
    #[test]
    fn running_totals_answer_bytes_after_any_index() {
        let mut log: BTreeMap<u64, u64> = BTreeMap::new();
        let mut index = Index::default();
        let check = |log: &BTreeMap<u64, u64>, index: &Index| {
            for i in 0..30 {
                let want: u64 = log.range(i + 1..).map(|(_, b)| b).sum();
                assert_eq!(index.bytes_after(i), want, "after {i}: {index:?}");
            }
        };
        check(&log, &index);
        for idx in 3..15 {
            log.insert(idx, idx * 10);
            index.push(idx, 0, idx * 10);
        }
        check(&log, &index);
        // A new leader's entry replaces 9 and everything after it.
        log.retain(|i, _| *i < 9);
        log.insert(9, 7);
        index.push(9, 0, 7);
        check(&log, &index);
        log.retain(|i, _| *i < 6);
        index.truncate(6);
        check(&log, &index);
        log.retain(|i, _| *i > 4);
        index.purge(4);
        check(&log, &index);
        for idx in 6..20 {
            log.insert(idx, 1);
            index.push(idx, 0, 1);
        }
        log.clear();
        index.purge(19);
        check(&log, &index);
        assert!(index.is_empty());
        log.insert(20, 5);
        index.push(20, 0, 5);
        check(&log, &index);
        assert_eq!((index.first(), index.last()), (20, Some(20)));
    }

    #[test]
    fn positions_are_found_by_index() {
        let mut index = Index::default();
        for (k, idx) in (5..9).enumerate() {
            index.push(idx, 16 + 20 * k as u64, 12);
        }
        assert_eq!(index.get(4), None);
        assert_eq!(index.get(5), Some(Pos { offset: 16, len: 12 }));
        assert_eq!(index.get(6).map(|p| (p.offset, p.end())), Some((36, 56)));
        assert_eq!(index.get(9), None);
        index.purge(5);
        index.truncate(8);
        assert_eq!((index.first(), index.last()), (6, Some(7)));
    }
}
