//! Leadership transfer: etcd's MoveLeader, and a leader handing over before it stops.
//!
//! openraft 0.9 has no transfer of its own, so the leader does it in the open:
//! 1. it holds new proposals (in-flight ones finish) and stops sending heartbeats;
//! 2. it waits until the transferee has every log entry;
//! 3. it asks the transferee to start an election now (peer `Campaign`), again every
//!    `CAMPAIGN_EVERY` until someone else leads.
//!
//! A voter refuses candidates while it heard from a leader within the leader lease (the
//! maximum election timeout), so a transfer takes up to about that long. The old leader
//! grants its vote at once (its own lease dates from its election), which is all a
//! three-member cluster needs. Nobody's elections are disabled: if the transferee cannot
//! win, another member will, as after a crash.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use super::route::Leader;
use super::{CoreError, Replica};
use crate::proto::peer::CampaignRequest;
use crate::raft::NodeId;

/// How long MoveLeader, or handing over at shutdown, may take.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the transferee is asked to campaign.
const CAMPAIGN_EVERY: Duration = Duration::from_millis(250);

impl Replica {
    /// MoveLeader to the member with etcd id `member_id`, from any member (a follower
    /// forwards it to the leader). Returns once that member leads.
    pub async fn move_leader(&self, member_id: u64) -> Result<(), CoreError> {
        let target = self
            .members()
            .into_iter()
            .find(|m| m.voter && m.node.member_id == member_id)
            .ok_or(CoreError::BadLeaderTransferee)?
            .raft_id;
        match self.current_leader()? {
            Leader::There(leader, _) if leader == target => return Ok(()),
            Leader::There(leader, leader_node) => return self.forward_transfer(leader, &leader_node, member_id).await,
            Leader::Here if self.ids.raft_id == target => return Ok(()),
            Leader::Here => {}
        }
        match self.transfer_leadership(Some(target), TRANSFER_TIMEOUT).await? {
            new if new == target => Ok(()),
            _ => Err(CoreError::LeaderChanged),
        }
    }

    /// On the leader: hands leadership to voter `target`, or to the most caught-up other
    /// voter. Returns the raft id of the member that leads afterwards.
    pub async fn transfer_leadership(&self, target: Option<NodeId>, timeout: Duration) -> Result<NodeId, CoreError> {
        let _one_change_at_a_time = self.membership_lock.lock().await;
        let _proposals_held = self.handover.write().await;
        self.require_leader()?;
        let started = Instant::now();
        let runtime = self.raft.runtime_config();
        runtime.heartbeat(false);
        let result = self.hand_over(target, started + timeout).await;
        runtime.heartbeat(true);
        match &result {
            Ok(leader) => tracing::info!(leader, elapsed_ms = started.elapsed().as_millis() as u64, "leadership transferred"),
            Err(e) => tracing::warn!(error = %crate::error_chain(e), "leadership transfer failed"),
        }
        result
    }

    async fn hand_over(&self, target: Option<NodeId>, deadline: Instant) -> Result<NodeId, CoreError> {
        let me = self.ids.raft_id;
        let mut metrics = self.raft.metrics();
        let mut next_campaign = Instant::now();
        loop {
            let (leader, to, caught_up) = {
                let m = metrics.borrow_and_update();
                let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().filter(|v| *v != me).collect();
                let matched = |id: &NodeId| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .map_or(0, |l| l.index)
                };
                let to = match target {
                    Some(t) if voters.contains(&t) => Some(t),
                    Some(_) => return Err(CoreError::BadLeaderTransferee),
                    None => voters.iter().copied().max_by_key(|v| matched(v)),
                };
                let last = m.last_log_index.unwrap_or(0);
                (m.current_leader, to, to.is_some_and(|t| matched(&t) >= last))
            };
            match leader {
                Some(l) if l != me => return Ok(l),
                _ => {}
            }
            let to = to.ok_or(CoreError::BadLeaderTransferee)?;
            if caught_up && Instant::now() >= next_campaign {
                next_campaign = Instant::now() + CAMPAIGN_EVERY;
                self.ask_to_campaign(to, deadline).await;
            }
            let wake = deadline.min(Instant::now() + CAMPAIGN_EVERY);
            if Instant::now() >= deadline {
                return Err(CoreError::LeaderTransferTimeout);
            }
            if let Ok(Err(_)) = tokio::time::timeout_at(wake, metrics.changed()).await {
                return Err(CoreError::Stopped); // Raft stopped: nothing will change.
            }
        }
    }

    async fn ask_to_campaign(&self, to: NodeId, deadline: Instant) {
        let Some(node) = self.members().into_iter().find(|m| m.raft_id == to).map(|m| m.node) else {
            return;
        };
        let Ok(mut client) = self.peer_client(to, &node) else {
            return;
        };
        let mut request = tonic::Request::new(CampaignRequest {});
        request.set_timeout(deadline.saturating_duration_since(Instant::now()).min(CAMPAIGN_EVERY * 4));
        if let Err(e) = client.campaign(request).await {
            tracing::debug!(to, error = %e.message(), "transferee did not start an election");
        }
    }

    /// Before a graceful stop: a leader of several voters hands over, so the cluster does
    /// not wait out an election timeout. Requests still arriving are forwarded to the new
    /// leader.
    pub async fn hand_over_before_stopping(&self) {
        let voters = self.members().iter().filter(|m| m.voter).count();
        if self.is_leader() && voters > 1 {
            let _ = self.transfer_leadership(None, TRANSFER_TIMEOUT).await;
        }
    }
}
