//! Lease reads and keep-alives: deadlines are the leader's (see `lease::Lessor`), so a
//! keep-alive or a TTL query is answered there, forwarded when this member follows.

use std::sync::Arc;

use tokio::time::Instant;

use super::route::{Leader, REQUEST_TIMEOUT};
use super::{CoreError, Replica};
use crate::mvcc::MvccError;
use crate::proto::etcdserverpb::{LeaseKeepAliveResponse, LeaseLeasesResponse, LeaseStatus, LeaseTimeToLiveResponse};

/// How often a keep-alive for an expired lease checks whether its revocation is done.
const EXPIRING_POLL: std::time::Duration = std::time::Duration::from_millis(50);

impl Replica {
    /// Renews lease `id`; TTL 0 in the answer: no such lease (as etcd answers).
    pub async fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse, CoreError> {
        self.check_writable()?;
        let (ttl, _) = self.lease_deadline(id, true).await?;
        Ok(LeaseKeepAliveResponse {
            header: self.current_header(),
            id,
            ttl,
        })
    }

    /// etcd answers an unknown lease with TTL -1 rather than an error.
    pub async fn lease_time_to_live(&self, id: i64, want_keys: bool) -> Result<LeaseTimeToLiveResponse, CoreError> {
        self.linearizable_read().await?;
        let (granted, keys, rev) = self
            .reader
            .run(move |r| {
                let granted = r.lease_ttl(id)?;
                let keys = if want_keys && granted.is_some() {
                    r.lease_keys(id)?
                } else {
                    Vec::new()
                };
                Ok((granted, keys, r.revisions()?.current))
            })
            .await?;
        let (ttl, granted_ttl) = match granted {
            Some(g) => (self.lease_deadline(id, false).await?.1, g),
            None => (-1, 0),
        };
        Ok(LeaseTimeToLiveResponse {
            header: Some(self.header(rev)),
            id,
            ttl,
            granted_ttl,
            keys,
        })
    }

    pub async fn lease_leases(&self) -> Result<LeaseLeasesResponse, CoreError> {
        self.linearizable_read().await?;
        let (leases, rev) = self.reader.run(|r| Ok((r.lease_ids()?, r.revisions()?.current))).await?;
        Ok(LeaseLeasesResponse {
            header: Some(self.header(rev)),
            leases: leases.into_iter().map(|(id, _)| LeaseStatus { id }).collect(),
        })
    }

    /// Renews lease `id` (`renew`) or reports its deadline, at the leader. Returns
    /// (granted TTL, seconds left); TTL 0: no such lease.
    async fn lease_deadline(&self, id: i64, renew: bool) -> Result<(i64, i64), CoreError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        self.via_leader(deadline, |leader| async move {
            match leader {
                Leader::Here => self.lease_deadline_here(id, renew, deadline).await,
                Leader::There(leader, node) => self.forward_lease_deadline(leader, &node, id, renew, deadline).await,
            }
        })
        .await
    }

    /// On the leader: see `lease_deadline`. A renewal first confirms leadership with a
    /// quorum (a ReadIndex round; etcd relies on CheckQuorum instead, and its LeaseRenew
    /// runs a ReadIndex only when its Raft loop has stalled): an openraft leader cut off
    /// from the others keeps its role, and renewing there would answer a full TTL while
    /// the majority's new leader lets the lease expire.
    pub(super) async fn lease_deadline_here(&self, id: i64, renew: bool, deadline: Instant) -> Result<(i64, i64), CoreError> {
        if renew {
            self.confirmed_read_index(deadline).await?;
        }
        loop {
            self.require_leader()?;
            if let Some(found) = self.lessor.deadline(&self.reader, id, renew)? {
                return Ok(found);
            }
            // Expired and about to be revoked by the expiry loop (as etcd's Renew, wait
            // for that and then answer "not found"); if leadership moves meanwhile, the
            // client retries at the new leader, where the lease has a full TTL again.
            if Instant::now() + EXPIRING_POLL >= deadline {
                return Err(CoreError::Timeout);
            }
            tokio::time::sleep(EXPIRING_POLL).await;
        }
    }

    /// The leader's lease expiry, until the task is dropped (see `lease::expiry`).
    pub async fn expire_leases(self: Arc<Self>) {
        crate::lease::expiry::run(&self.lessor, &self.reader, &*self).await
    }
}

#[async_trait::async_trait]
impl crate::lease::expiry::Expire for Replica {
    type Error = CoreError;

    fn leader_term(&self) -> Option<u64> {
        // A standby's leases are the primary's: it replays their revokes, never expires them.
        if self.is_standby() {
            return None;
        }
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.current_leader == Some(self.ids.raft_id)).then_some(m.current_term)
    }

    async fn revoke(&self, id: i64, term: u64) -> Result<(), CoreError> {
        // Only as the leader of the term whose deadlines expired it (see the trait).
        self.require_leader()?;
        if self.leader_term() != Some(term) {
            return Err(CoreError::LeaderChanged);
        }
        match self.expire_lease_here(id).await {
            Ok(()) | Err(CoreError::Apply(MvccError::LeaseNotFound)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
