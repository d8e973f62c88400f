//! Any member accepts any request. Writes and lease keep-alives go to the leader (over
//! the peer port when this node follows, see `forward`); linearizable reads take a
//! ReadIndex from the leader and wait until this member has applied that far;
//! serializable reads and watches are served from this member's own state.
//!
//! A request that reaches a node which turns out not to lead (an election is under way)
//! is retried with the new leader until `REQUEST_TIMEOUT`; with no leader by then the
//! client gets etcd's `Unavailable` "etcdserver: no leader" and retries.

use std::time::Duration;

use tokio::time::Instant;

use super::{CoreError, Replica};
use crate::raft::{NodeId, PeerNode};

/// How long a request may wait for a leader and for its forwarding.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

/// Where a request is served.
pub(super) enum Leader {
    /// This node leads.
    Here,
    /// Another member leads: reach it at its membership record.
    There(NodeId, PeerNode),
}

impl Replica {
    /// The leader this node knows, with its membership record.
    pub(super) fn leader(&self) -> Option<(NodeId, PeerNode)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// The leader now, without waiting: `NoLeader` when none is known.
    pub(super) fn current_leader(&self) -> Result<Leader, CoreError> {
        if self.is_leader() {
            return Ok(Leader::Here);
        }
        let (id, node) = self.leader().ok_or(CoreError::NoLeader)?;
        Ok(Leader::There(id, node))
    }

    /// Waits until a leader is known, or fails with "no leader" at `deadline`.
    async fn await_leader(&self, deadline: Instant) -> Result<Leader, CoreError> {
        let mut metrics = self.raft.metrics();
        loop {
            if let Ok(leader) = self.current_leader() {
                return Ok(leader);
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(CoreError::Stopped),
                Err(_) => return Err(CoreError::NoLeader),
            }
        }
    }

    /// After a "not the leader" answer: gives the election a moment before retrying.
    async fn await_other_leader(&self, stale: Option<NodeId>, deadline: Instant) {
        let mut metrics = self.raft.metrics();
        let until = deadline.min(Instant::now() + Duration::from_millis(300));
        while metrics.borrow().current_leader == stale {
            // Past the moment, or Raft stopped (no change will come): retry now.
            if !matches!(tokio::time::timeout_at(until, metrics.changed()).await, Ok(Ok(()))) {
                return;
            }
        }
    }

    /// Runs `attempt` against the current leader; after a "not the leader" answer, waits
    /// for the election and tries the new leader, until `deadline`.
    pub(super) async fn via_leader<T, F, Fut>(&self, deadline: Instant, mut attempt: F) -> Result<T, CoreError>
    where
        F: FnMut(Leader) -> Fut,
        Fut: std::future::Future<Output = Result<T, CoreError>>,
    {
        loop {
            let leader = self.await_leader(deadline).await?;
            let tried = match &leader {
                Leader::Here => Some(self.ids.raft_id),
                Leader::There(id, _) => Some(*id),
            };
            match attempt(leader).await {
                Err(e) if e.is_leader_change() && Instant::now() < deadline => {
                    self.await_other_leader(tried, deadline).await;
                }
                other => return other,
            }
        }
    }

    /// Fails with etcd's retryable error unless this node leads.
    pub(super) fn require_leader(&self) -> Result<(), CoreError> {
        match self.is_leader() {
            true => Ok(()),
            false if self.has_leader() => Err(CoreError::LeaderChanged),
            false => Err(CoreError::NoLeader),
        }
    }

    /// Waits until this member has applied log index `index`.
    pub(super) async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), CoreError> {
        let mut applied = self.applied.clone();
        let reached = tokio::time::timeout_at(deadline, async { applied.wait_for(|a| *a >= index).await.map(|_| ()) }).await;
        match reached {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(CoreError::Stopped),
            Err(_) => Err(CoreError::Timeout),
        }
    }

    /// Waits until a read at this member reflects every write committed before the call.
    pub async fn linearizable_read(&self) -> Result<(), CoreError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        self.via_leader(deadline, |leader| async move {
            match leader {
                Leader::Here => self.confirmed_read_index(deadline).await.map(|_| ()),
                Leader::There(id, node) => {
                    let index = self.forward_read_index(id, &node, deadline).await?;
                    self.wait_applied(index, deadline).await
                }
            }
        })
        .await
    }

    /// On the leader: a ReadIndex round shared with the reads waiting for one (local and
    /// forwarded alike). A round that cannot confirm leadership (its heartbeats to a
    /// quorum time out, as under load) is run again until `deadline`, as etcd retries
    /// ReadIndex until its request timeout; a leader cut off from the others keeps
    /// failing and times out.
    pub(super) async fn confirmed_read_index(&self, deadline: Instant) -> Result<u64, CoreError> {
        loop {
            self.require_leader()?;
            match self.reads.wait().await.map_err(CoreError::from) {
                Err(CoreError::Timeout) if Instant::now() + Duration::from_millis(50) < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(index) => {
                    let floor = self.read_floor();
                    if floor <= index {
                        return Ok(index);
                    }
                    self.wait_applied(floor, deadline).await?;
                    return Ok(floor);
                }
                other => return other,
            }
        }
    }

    /// The lowest index a ReadIndex round may answer in this leader's term: its last log
    /// index when it first served a read in the term. openraft 0.9 restores a leader that
    /// restarts as leader at once, with the commit index its state machine had applied,
    /// and answers a ReadIndex round with that: entries the cluster committed before the
    /// restart (and other members applied and served) were missing from reads until the
    /// leader's next commit (a read went back a revision after a full restart, 5-member
    /// chaos run). A leader's log holds every committed entry, so its last index is a
    /// safe floor; entries committed later in the term are in openraft's own answer.
    fn read_floor(&self) -> u64 {
        let (term, last) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_term, m.last_log_index.unwrap_or(0))
        };
        let Ok(mut floor) = self.read_floor.lock() else {
            return last;
        };
        if floor.0 != term {
            *floor = (term, last);
        }
        floor.1
    }
}
