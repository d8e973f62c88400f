//! The leader's expiry loop: revokes every lease whose deadline passed, by proposing
//! its revocation through Raft (which `Expire` does for the loop).

use std::time::Duration;

use super::Lessor;
use crate::mvcc::Reader;

/// At most this many expired leases are revoked per tick (etcd revokes up to 1000
/// leases per second, `leaseRevokeRate`), so a mass expiry cannot starve writes.
const REVOKES_PER_TICK: usize = 500;
const TICK: Duration = Duration::from_millis(500);

/// What the loop needs of the replica.
#[async_trait::async_trait]
pub trait Expire: Send + Sync {
    type Error: std::error::Error + Send + Sync + 'static;
    /// The Raft term this member leads in, if it leads (only the leader expires leases).
    fn leader_term(&self) -> Option<u64>;
    /// Revokes lease `id` through Raft, proposed by this member as the leader of `term`
    /// and never forwarded: once another member leads, this member's deadlines are stale
    /// (the new leader gave every lease a full TTL), so a revoke it forwarded would end a
    /// lease early. `Ok` also when the lease was already gone.
    async fn revoke(&self, id: i64, term: u64) -> Result<(), Self::Error>;
}

/// Runs until the task is dropped.
pub async fn run(lessor: &Lessor, reader: &Reader, replica: &impl Expire) {
    let mut tick = tokio::time::interval(TICK);
    // The term this loop last expired leases in.
    let mut led: Option<u64> = None;
    loop {
        tick.tick().await;
        let Some(term) = replica.leader_term() else {
            if led.take().is_some() {
                lessor.clear();
            }
            continue;
        };
        if led != Some(term) {
            // A new leadership, also one lost and regained between two ticks: every lease
            // starts a full TTL now (etcd's Promote). Deadlines kept from an earlier term
            // are stale: another leader may have renewed the lease since.
            lessor.clear();
            led = Some(term);
            tracing::debug!(term, "leading: every lease starts a full TTL");
        }
        let mark = lessor.mark();
        match reader.run(|r| r.lease_ids()).await {
            Ok(leases) => lessor.sync(mark, &leases),
            Err(e) => tracing::warn!(error = %crate::error_chain(&e), "cannot read the lease table for expiry"),
        }
        let mut expired = lessor.expired();
        expired.truncate(REVOKES_PER_TICK);
        // Revokes are proposed together so Raft batches them; each is its own revision and
        // other writes interleave with them.
        let revokes = expired.into_iter().map(|id| async move {
            match replica.revoke(id, term).await {
                Ok(()) => {
                    lessor.forget(id);
                    tracing::debug!(lease = format!("{id:x}"), "lease expired");
                }
                Err(e) => tracing::warn!(lease = id, error = %crate::error_chain(&e), "lease expiry failed; will retry"),
            }
        });
        futures::future::join_all(revokes).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;
    use crate::mvcc::{AppliedMeta, Command, Store};

    /// A replica that leads in a fixed term and records the revocations it is asked for.
    struct Leading {
        term: u64,
        revoked: Mutex<Vec<(i64, Instant)>>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    #[async_trait::async_trait]
    impl Expire for Leading {
        type Error = Never;
        fn leader_term(&self) -> Option<u64> {
            Some(self.term)
        }
        async fn revoke(&self, id: i64, term: u64) -> Result<(), Never> {
            assert_eq!(term, self.term, "a revoke names the term whose deadlines expired the lease");
            self.revoked.lock().unwrap().push((id, Instant::now()));
            Ok(())
        }
    }

    /// Deadlines the lessor kept from an earlier leadership are not used when this member
    /// leads again (it may have lost and regained leadership between two ticks, while
    /// another leader renewed the lease): every lease starts a full TTL, and expires once
    /// that has passed.
    #[tokio::test]
    async fn a_new_leadership_gives_every_lease_a_full_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        store
            .apply_batch(&[Some(Command::LeaseGrant { id: 7, ttl: 1 })], &AppliedMeta::default())
            .unwrap();
        let reader = Reader::new(store.path());
        let lessor = Lessor::default();
        // Tracked in an earlier term; its deadline has passed by the time this term starts.
        lessor.renew(7, 1);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(lessor.expired(), vec![7]);

        let leading = Leading {
            term: 5,
            revoked: Mutex::default(),
        };
        let started = Instant::now();
        let expiry = run(&lessor, &reader, &leading);
        let revoked_once = async {
            while leading.revoked.lock().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            _ = expiry => unreachable!("the expiry loop runs until dropped"),
            _ = tokio::time::timeout(Duration::from_secs(30), revoked_once) => {}
        }
        let revoked = leading.revoked.lock().unwrap().clone();
        assert_eq!(revoked.len(), 1, "{revoked:?}");
        let (id, at) = revoked[0];
        assert_eq!(id, 7);
        assert!(
            at.duration_since(started) >= Duration::from_secs(1),
            "revoked {:?} into the new term, before a full TTL",
            at.duration_since(started)
        );
    }
}
