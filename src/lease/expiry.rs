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
    /// Whether this member leads (only the leader expires leases).
    fn leads(&self) -> bool;
    /// Revokes lease `id` through Raft; `Ok` also when it was already gone.
    async fn revoke(&self, id: i64) -> Result<(), Self::Error>;
}

/// Runs until the task is dropped.
pub async fn run(lessor: &Lessor, reader: &Reader, replica: &impl Expire) {
    let mut tick = tokio::time::interval(TICK);
    let mut was_leader = false;
    loop {
        tick.tick().await;
        if !replica.leads() {
            if was_leader {
                lessor.clear();
            }
            was_leader = false;
            continue;
        }
        let mark = lessor.mark();
        match reader.run(|r| r.lease_ids()).await {
            Ok(leases) => lessor.sync(mark, &leases),
            Err(e) => tracing::warn!(error = %crate::error_chain(&e), "cannot read the lease table for expiry"),
        }
        was_leader = true;
        let mut expired = lessor.expired();
        expired.truncate(REVOKES_PER_TICK);
        // Revokes are proposed together so Raft batches them; each is its own revision and
        // other writes interleave with them.
        let revokes = expired.into_iter().map(|id| async move {
            match replica.revoke(id).await {
                Ok(()) => {
                    lessor.forget(id);
                    tracing::debug!(lease = id, "lease expired");
                }
                Err(e) => tracing::warn!(lease = id, error = %crate::error_chain(&e), "lease expiry failed; will retry"),
            }
        });
        futures::future::join_all(revokes).await;
    }
}
