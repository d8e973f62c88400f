//! Lease ids, deadlines, keep-alives and expiry. Leases themselves (id, TTL, attached
//! keys) are replicated state in the MVCC store (`mvcc::write` applies grants and
//! revokes); their deadlines live only on the leader, as in etcd: a new leader gives
//! every lease a full TTL, keep-alives extend it (a follower forwards them, see
//! `core::forward`), and the leader expires a lease by proposing its revocation through
//! Raft (`expiry`).

pub mod expiry;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::mvcc::{CommandResult, MvccError, Reader};

/// A random positive lease id (etcd picks ids the same way when the client sends 0).
pub fn new_lease_id() -> i64 {
    loop {
        let id = (rand::random::<u64>() >> 1) as i64;
        if id > 0 {
            return id;
        }
    }
}

/// What the leader tracks of one lease.
#[derive(Clone, Copy)]
struct Tracked {
    deadline: Instant,
    /// The granted TTL in seconds.
    ttl: i64,
}

/// What a keep-alive found in the leader's tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Renewed: the whole TTL (seconds) is left.
    Renewed(i64),
    /// Its deadline has passed: the expiry loop is revoking it (or will at its next tick),
    /// so it is not renewed. etcd's Renew likewise waits for such a lease's revocation and
    /// then answers "not found", rather than extending a lease whose keys are about to go.
    Expired,
    /// Not tracked here (yet): the lease table decides.
    Untracked,
}

/// Taken before reading the lease table: whatever is revoked after it is not brought
/// back by what that read saw.
#[derive(Clone, Copy)]
pub struct ReadMark(u64);

#[derive(Default)]
struct Inner {
    leases: HashMap<i64, Tracked>,
    /// Bumped by every `forget`.
    epoch: u64,
    /// Leases forgotten recently, with the epoch that forgot them.
    forgotten: Vec<(u64, i64)>,
}

impl Inner {
    fn forgotten_since(&self, mark: ReadMark, id: i64) -> bool {
        self.forgotten.iter().any(|&(e, f)| f == id && e > mark.0)
    }
}

#[derive(Default)]
pub struct Lessor {
    inner: Mutex<Inner>,
}

impl Tracked {
    /// A lease whose full TTL starts now.
    fn fresh(ttl: i64) -> Tracked {
        Tracked {
            deadline: Instant::now() + Duration::from_secs(ttl.max(0) as u64),
            ttl,
        }
    }
}

impl Lessor {
    /// Follows a command the leader committed: a grant starts its lease's TTL, a revoke
    /// (`revoked`) ends its tracking, whichever member the request came through.
    pub fn committed(&self, revoked: Option<i64>, result: &CommandResult) {
        match (result, revoked) {
            (CommandResult::LeaseGrant(g), _) => self.renew(g.id, g.ttl),
            (_, Some(id)) => self.forget(id),
            _ => {}
        }
    }

    /// On the leader: renews lease `id` (`renew`) or reports its deadline. Returns
    /// (granted TTL, seconds left); TTL 0: no such lease; `None`: the lease expired and
    /// its revocation is pending (ask again once it is revoked). Every grant and revoke
    /// this leader committed is already applied here, so its table is current.
    pub fn deadline(&self, reader: &Reader, id: i64, renew: bool) -> Result<Option<(i64, i64)>, MvccError> {
        if renew {
            // Leases this leader granted, synced or renewed before: no table read.
            match self.keep_alive(id) {
                KeepAlive::Renewed(ttl) => return Ok(Some((ttl, ttl))),
                KeepAlive::Expired => return Ok(None),
                KeepAlive::Untracked => {}
            }
        }
        let mark = self.mark();
        match reader.lease_ttl(id)? {
            Some(ttl) => {
                if renew {
                    self.track(mark, id, ttl);
                }
                Ok(Some((ttl, self.remaining(id).unwrap_or(ttl))))
            }
            None => Ok(Some((0, 0))),
        }
    }

    /// Tracks the lease and (re)starts its TTL (a grant this leader applied).
    pub fn renew(&self, id: i64, ttl: i64) {
        if let Ok(mut d) = self.inner.lock() {
            d.leases.insert(id, Tracked::fresh(ttl));
        }
    }

    /// Take before reading the lease table for `track` or `sync`.
    pub fn mark(&self) -> ReadMark {
        ReadMark(self.inner.lock().map_or(0, |d| d.epoch))
    }

    /// Like `renew`, for a lease read from the table after `mark`, unless it was revoked
    /// since.
    pub fn track(&self, mark: ReadMark, id: i64, ttl: i64) {
        if let Ok(mut d) = self.inner.lock() {
            if !d.forgotten_since(mark, id) {
                d.leases.insert(id, Tracked::fresh(ttl));
            }
        }
    }

    /// Restarts a tracked lease's TTL (a keep-alive), unless its deadline has passed.
    pub fn keep_alive(&self, id: i64) -> KeepAlive {
        let Ok(mut d) = self.inner.lock() else {
            return KeepAlive::Untracked;
        };
        let Some(t) = d.leases.get_mut(&id) else {
            return KeepAlive::Untracked;
        };
        if t.deadline <= Instant::now() {
            return KeepAlive::Expired;
        }
        *t = Tracked::fresh(t.ttl);
        KeepAlive::Renewed(t.ttl)
    }

    /// The lease was revoked (or never existed).
    pub fn forget(&self, id: i64) {
        if let Ok(mut d) = self.inner.lock() {
            d.leases.remove(&id);
            d.epoch += 1;
            let epoch = d.epoch;
            d.forgotten.push((epoch, id));
        }
    }

    /// Makes the tracked leases match the lease table read after `mark`: unknown leases
    /// get a full TTL (leadership just arrived, or another node granted them), revoked
    /// ones go, and so do those revoked after the read.
    pub fn sync(&self, mark: ReadMark, leases: &[(i64, i64)]) {
        if let Ok(mut d) = self.inner.lock() {
            let table: HashMap<i64, i64> = leases.iter().copied().collect();
            d.leases.retain(|id, _| table.contains_key(id));
            for (id, ttl) in table {
                if d.forgotten_since(mark, id) {
                    continue;
                }
                d.leases.entry(id).and_modify(|t| t.ttl = ttl).or_insert(Tracked::fresh(ttl));
            }
            // Later reads start after these.
            d.forgotten.retain(|&(e, _)| e > mark.0);
        }
    }

    pub fn clear(&self) {
        if let Ok(mut d) = self.inner.lock() {
            d.leases.clear();
        }
    }

    /// Seconds left (rounded up), if the lease is tracked.
    pub fn remaining(&self, id: i64) -> Option<i64> {
        let d = self.inner.lock().ok()?;
        let left = d.leases.get(&id)?.deadline.saturating_duration_since(Instant::now());
        Some(left.as_millis().div_ceil(1000) as i64)
    }

    /// Leases whose deadline has passed.
    pub fn expired(&self) -> Vec<i64> {
        let now = Instant::now();
        self.inner
            .lock()
            .map(|d| d.leases.iter().filter(|(_, t)| t.deadline <= now).map(|(id, _)| *id).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_and_expiry() {
        let l = Lessor::default();
        l.sync(l.mark(), &[(1, 0), (2, 100)]);
        assert_eq!(l.expired(), vec![1]);
        assert!(l.remaining(2).is_some_and(|r| r > 90 && r <= 100));
        l.sync(l.mark(), &[(2, 100)]);
        assert_eq!(l.remaining(1), None);
        assert_eq!(l.keep_alive(2), KeepAlive::Renewed(100));
        assert_eq!(l.keep_alive(3), KeepAlive::Untracked, "untracked leases are not invented");
        l.forget(2);
        assert_eq!(l.remaining(2), None);
        assert_eq!(l.keep_alive(2), KeepAlive::Untracked);
    }

    /// A revoke that lands between a table read and its use is not undone by it.
    #[test]
    fn a_read_from_before_a_revoke_does_not_bring_the_lease_back() {
        let l = Lessor::default();
        l.renew(7, 60);
        let mark = l.mark();
        // ... the table is read here and still holds lease 7; then it is revoked:
        l.forget(7);
        l.sync(mark, &[(7, 60), (8, 30)]);
        assert_eq!(l.keep_alive(7), KeepAlive::Untracked);
        assert_eq!(l.keep_alive(8), KeepAlive::Renewed(30));
        l.track(mark, 7, 60);
        assert_eq!(l.keep_alive(7), KeepAlive::Untracked);
        // A read that starts after the revoke sees the table as it is.
        let later = l.mark();
        l.track(later, 9, 10);
        assert_eq!(l.keep_alive(9), KeepAlive::Renewed(10));
    }

    /// A lease past its deadline is being revoked: a keep-alive does not extend it (it
    /// used to, answering a full TTL for a lease whose keys went a moment later).
    #[test]
    fn an_expired_lease_is_not_renewed() {
        let l = Lessor::default();
        l.sync(l.mark(), &[(1, 0), (2, 100)]);
        assert_eq!(l.keep_alive(1), KeepAlive::Expired);
        assert_eq!(l.expired(), vec![1], "still expired, for the expiry loop");
        assert_eq!(l.keep_alive(2), KeepAlive::Renewed(100));
        // Once revoked, it is unknown here and the table answers.
        l.forget(1);
        assert_eq!(l.keep_alive(1), KeepAlive::Untracked);
    }
}
