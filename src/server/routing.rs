//! Any member accepts any request. Writes and lease keep-alives go to the leader (over
//! the peer port when this node follows); linearizable reads take a ReadIndex from the
//! leader and wait until this member has applied that far; serializable reads and
//! watches are served from this member's own state.
//!
//! A request that reaches a node which turns out not to lead (an election is under way)
//! is retried with the new leader until `REQUEST_TIMEOUT`; with no leader by then the
//! client gets etcd's `Unavailable` "etcdserver: no leader" and retries.

use std::time::Duration;

use tokio::time::Instant;

use super::Node;
use crate::api::errors::ApiError;
use crate::config::Durability;
use crate::mvcc::{Command, CommandResult};
use crate::proto::peer::{LeaseKeepAliveRequest, ReadIndexRequest};
use crate::raft::{NodeId, PeerNode};

/// How long a request may wait for a leader and for its forwarding.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

/// How long a write waits for its segment upload in `object-storage` durability.
const ARCHIVE_WAIT: Duration = Duration::from_secs(10);

impl Node {
    /// The leader this node knows, with its membership record.
    pub fn leader(&self) -> Option<(NodeId, PeerNode)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// Waits until a leader is known, or fails with "no leader" at `deadline`.
    /// When this node leads, its record is left empty: it is only needed to dial the
    /// leader, and copying it would cost every local write a few allocations.
    async fn await_leader(&self, deadline: Instant) -> Result<(NodeId, PeerNode), ApiError> {
        let mut metrics = self.raft.metrics();
        loop {
            if self.is_leader() {
                return Ok((self.identity.raft_id, PeerNode::default()));
            }
            if let Some(l) = self.leader() {
                return Ok(l);
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(ApiError::Stopped),
                Err(_) => return Err(ApiError::NoLeader),
            }
        }
    }

    /// After a "not the leader" answer: gives the election a moment before retrying.
    async fn await_other_leader(&self, stale: NodeId, deadline: Instant) {
        let mut metrics = self.raft.metrics();
        let until = deadline.min(Instant::now() + Duration::from_millis(300));
        while metrics.borrow().current_leader == Some(stale) {
            if tokio::time::timeout_at(until, metrics.changed()).await.is_err() {
                return;
            }
        }
    }

    /// Replicates `cmd` through the leader; returns its result and log index once this
    /// member has applied it (so the caller's next read here sees it).
    pub(crate) async fn replicate(&self, cmd: Command, size: usize) -> Result<(CommandResult, u64), ApiError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        self.via_leader(deadline, |leader, node| {
            let cmd = cmd.clone();
            async move {
                if leader == self.identity.raft_id {
                    self.propose_as_leader(cmd, size).await
                } else {
                    self.forward_propose(leader, &node, &cmd, deadline).await
                }
            }
        })
        .await
    }

    /// Runs `attempt` against the current leader; after a "not the leader" answer, waits
    /// for the election and tries the new leader, until `deadline`.
    async fn via_leader<T, F, Fut>(&self, deadline: Instant, mut attempt: F) -> Result<T, ApiError>
    where
        F: FnMut(NodeId, PeerNode) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        loop {
            let (leader, node) = self.await_leader(deadline).await?;
            match attempt(leader, node).await {
                Err(ApiError::NoLeader | ApiError::LeaderChanged) if Instant::now() < deadline => {
                    self.await_other_leader(leader, deadline).await;
                }
                other => return other,
            }
        }
    }

    /// A client for member `id` (the leader): unreachable means "no leader" to a client.
    pub(super) fn peer_client(
        &self,
        id: NodeId,
        node: &PeerNode,
    ) -> Result<crate::proto::peer::peer_client::PeerClient<tonic::transport::Channel>, ApiError> {
        self.peers.client(id, node).map_err(|_| ApiError::NoLeader)
    }

    /// Fails with etcd's retryable error unless this node leads.
    pub(super) fn require_leader(&self) -> Result<(), ApiError> {
        match self.is_leader() {
            true => Ok(()),
            false if self.has_leader() => Err(ApiError::LeaderChanged),
            false => Err(ApiError::NoLeader),
        }
    }

    async fn forward_propose(
        &self,
        leader: NodeId,
        node: &PeerNode,
        cmd: &Command,
        deadline: Instant,
    ) -> Result<(CommandResult, u64), ApiError> {
        let client = self.peer_client(leader, node)?;
        let (result, index) = self.forwarder.forward(client, leader, cmd, deadline).await?;
        self.wait_applied(index, deadline).await?;
        Ok((result, index))
    }

    /// On the leader: a write another member forwarded (an encoded `Command`).
    pub async fn propose_forwarded(&self, data: &[u8]) -> Result<(CommandResult, u64), ApiError> {
        let cmd = crate::raft::codec::decode_command(data)
            .map_err(|e| ApiError::Internal(format!("undecodable forwarded command: {}", crate::error_chain(&e))))?;
        self.propose_as_leader(cmd, data.len()).await
    }

    /// On the leader: replicates `cmd` and returns its applied result and log index (in
    /// `object-storage` durability, once the entry is in object storage).
    pub async fn propose_as_leader(&self, cmd: Command, size: usize) -> Result<(CommandResult, u64), ApiError> {
        let revoked = match &cmd {
            Command::LeaseRevoke { id } => Some(*id),
            _ => None,
        };
        let res = {
            let _not_during_a_transfer = self.handover.read().await;
            self.require_leader()?;
            let timer = crate::metrics::PROPOSAL_DURATION.start_timer();
            let res = self.proposer.propose(cmd, size).await;
            timer.observe_duration();
            res
        };
        match res {
            Ok((data, index)) => {
                crate::metrics::PROPOSALS_COMMITTED.inc();
                // The leader's lease deadlines follow every grant and revoke it commits,
                // whichever node the request came through.
                match (&data, revoked) {
                    (CommandResult::LeaseGrant(g), _) => self.lessor.renew(g.id, g.ttl),
                    (_, Some(id)) => self.lessor.forget(id),
                    _ => {}
                }
                if self.config.durability == Durability::ObjectStorage {
                    self.wait_archived(index).await?;
                }
                Ok((data, index))
            }
            Err(e) => {
                crate::metrics::PROPOSALS_FAILED.inc();
                Err(e.into())
            }
        }
    }

    /// `object-storage` durability: returns once log entry `index` is in object storage.
    /// Gives up after `ARCHIVE_WAIT` with etcd's timeout error; the write itself stays
    /// committed (as with an etcd timeout, the client cannot tell whether it applied).
    async fn wait_archived(&self, index: u64) -> Result<(), ApiError> {
        let mut archived = self.archived.clone();
        let reached = tokio::time::timeout(ARCHIVE_WAIT, archived.wait_for(|w| *w >= index)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ApiError::Stopped),
            Err(_) => Err(ApiError::Timeout),
        }
    }

    /// Waits until this member has applied log index `index`.
    pub async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), ApiError> {
        let mut applied = self.applied.clone();
        let reached = tokio::time::timeout_at(deadline, async { applied.wait_for(|a| *a >= index).await.map(|_| ()) }).await;
        match reached {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ApiError::Stopped),
            Err(_) => Err(ApiError::Timeout),
        }
    }

    /// Waits until a read at this member reflects every write committed before the call.
    pub async fn linearizable_read(&self) -> Result<(), ApiError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        self.via_leader(deadline, |leader, node| async move {
            if leader == self.identity.raft_id {
                self.confirmed_read_index(deadline).await.map(|_| ())
            } else {
                let index = self.forward_read_index(leader, &node, deadline).await?;
                self.wait_applied(index, deadline).await
            }
        })
        .await
    }

    async fn forward_read_index(&self, leader: NodeId, node: &PeerNode, deadline: Instant) -> Result<u64, ApiError> {
        let mut client = self.peer_client(leader, node)?;
        let mut request = tonic::Request::new(ReadIndexRequest {});
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let reply = client.read_index(request).await.map_err(|s| ApiError::from_peer(&s))?;
        Ok(reply.into_inner().index)
    }

    /// On the leader: a ReadIndex round; the index a linearizable read must wait for.
    pub async fn read_index_as_leader(&self) -> Result<u64, ApiError> {
        self.require_leader()?;
        self.confirmed_read_index(Instant::now() + REQUEST_TIMEOUT).await
    }

    /// On the leader: a ReadIndex round shared with the reads waiting for one (local and
    /// forwarded alike). A round that cannot confirm leadership (its heartbeats to a
    /// quorum time out, as under load) is run again until `deadline`, as etcd retries
    /// ReadIndex until its request timeout; a leader cut off from the others keeps
    /// failing and times out.
    async fn confirmed_read_index(&self, deadline: Instant) -> Result<u64, ApiError> {
        loop {
            self.require_leader()?;
            match self.reads.wait().await.map_err(ApiError::from) {
                Err(ApiError::Timeout) if Instant::now() + Duration::from_millis(50) < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// Renews lease `id` (`renew`) or reports its deadline, at the leader, which alone
    /// tracks lease deadlines. Returns (granted TTL, seconds left); TTL 0: no such lease.
    pub async fn lease_deadline(&self, id: i64, renew: bool) -> Result<(i64, i64), ApiError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        self.via_leader(deadline, |leader, node| async move {
            if leader == self.identity.raft_id {
                return self.lease_deadline_as_leader(id, renew);
            }
            let mut client = self.peer_client(leader, &node)?;
            let mut request = tonic::Request::new(LeaseKeepAliveRequest { id, renew });
            request.set_timeout(deadline.saturating_duration_since(Instant::now()));
            let reply = client.lease_keep_alive(request).await.map_err(|s| ApiError::from_peer(&s))?;
            let r = reply.into_inner();
            Ok((r.ttl, r.remaining))
        })
        .await
    }

    /// On the leader: see `lease_deadline`. Every grant and revoke this leader committed
    /// is already applied here, so no ReadIndex round is needed.
    pub fn lease_deadline_as_leader(&self, id: i64, renew: bool) -> Result<(i64, i64), ApiError> {
        self.require_leader()?;
        if renew {
            // Leases this leader granted, synced or renewed before: no table read.
            if let Some(ttl) = self.lessor.keep_alive(id) {
                // Just renewed: the whole TTL is left.
                return Ok((ttl, ttl));
            }
        }
        let mark = self.lessor.mark();
        match self.reader.lease_ttl(id)? {
            Some(ttl) => {
                if renew {
                    self.lessor.track(mark, id, ttl);
                }
                Ok((ttl, self.lessor.remaining(id).unwrap_or(ttl)))
            }
            None => Ok((0, 0)),
        }
    }
}
