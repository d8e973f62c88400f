//! Lease deadlines. Leases themselves (id, TTL, attached keys) are replicated state in
//! the MVCC store; their deadlines live only on the leader, as in etcd: a new leader
//! gives every lease a full TTL, keep-alives extend it, and the leader expires a lease by
//! proposing its revocation through Raft.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Lessor {
    deadlines: Mutex<HashMap<i64, Instant>>,
}

impl Lessor {
    /// (Re)starts the lease's TTL.
    pub fn renew(&self, id: i64, ttl: i64) {
        if let Ok(mut d) = self.deadlines.lock() {
            d.insert(id, Instant::now() + Duration::from_secs(ttl.max(0) as u64));
        }
    }

    pub fn forget(&self, id: i64) {
        if let Ok(mut d) = self.deadlines.lock() {
            d.remove(&id);
        }
    }

    /// Makes the deadlines match the replicated lease table: unknown leases get a full
    /// TTL (leadership just arrived, or another node granted them), revoked ones go.
    pub fn sync(&self, leases: &[(i64, i64)]) {
        if let Ok(mut d) = self.deadlines.lock() {
            let now = Instant::now();
            d.retain(|id, _| leases.iter().any(|(l, _)| l == id));
            for (id, ttl) in leases {
                d.entry(*id).or_insert(now + Duration::from_secs(*ttl as u64));
            }
        }
    }

    pub fn clear(&self) {
        if let Ok(mut d) = self.deadlines.lock() {
            d.clear();
        }
    }

    /// Seconds left (rounded up), if the lease is tracked.
    pub fn remaining(&self, id: i64) -> Option<i64> {
        let d = self.deadlines.lock().ok()?;
        let deadline = *d.get(&id)?;
        let left = deadline.saturating_duration_since(Instant::now());
        Some(left.as_millis().div_ceil(1000) as i64)
    }

    /// Leases whose deadline has passed.
    pub fn expired(&self) -> Vec<i64> {
        let now = Instant::now();
        self.deadlines
            .lock()
            .map(|d| d.iter().filter(|(_, t)| **t <= now).map(|(id, _)| *id).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_and_expiry() {
        let l = Lessor::default();
        l.sync(&[(1, 0), (2, 100)]);
        assert_eq!(l.expired(), vec![1]);
        assert!(l.remaining(2).is_some_and(|r| r > 90 && r <= 100));
        l.sync(&[(2, 100)]);
        assert_eq!(l.remaining(1), None);
        l.forget(2);
        assert_eq!(l.remaining(2), None);
    }
}
