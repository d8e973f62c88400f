//! Membership. Each pod is one etcd member (a stable member id per name) and, per
//! incarnation, one Raft node. A pod that restarts with its disk keeps its Raft id; one
//! that restarts empty joins under a new id, and the leader admits it as a learner, waits
//! until it has caught up, then makes it a voter in place of its old incarnation, one
//! membership change at a time.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use openraft::ChangeMembers;

use super::route::Leader;
use super::{CoreError, Replica};
use crate::raft::proposer::classify;
use crate::raft::{NodeId, PeerNode};

/// A join waits this long for the leader (the learner's catch-up included).
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a starting node waits to join and see a leader (a new member catches up,
/// snapshot included, before it becomes a voter).
pub const JOIN_WAIT: Duration = Duration::from_secs(180);

/// One member as the Raft membership records it.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub raft_id: NodeId,
    pub node: PeerNode,
    pub voter: bool,
}

fn membership_error<E>(e: openraft::error::RaftError<NodeId, E>) -> CoreError
where
    E: std::error::Error + Send + Sync + 'static + openraft::TryAsRef<openraft::error::ForwardToLeader<NodeId, PeerNode>>,
{
    classify(e).into()
}

impl Replica {
    /// Every member in the current membership, voters first.
    pub fn members(&self) -> Vec<MemberInfo> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut out: Vec<MemberInfo> = membership
            .nodes()
            .map(|(id, node)| MemberInfo {
                raft_id: *id,
                node: node.clone(),
                voter: voters.contains(id),
            })
            .collect();
        out.sort_by_key(|m| (!m.voter, m.node.name.clone(), m.raft_id));
        out
    }

    /// Whether this member is in the membership as a learner (not yet a voter).
    pub fn is_learner(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let me = self.ids.raft_id;
        membership.get_node(&me).is_some() && !membership.voter_ids().any(|id| id == me)
    }

    /// The pod name of Raft node `raft_id`, if it is in the membership.
    pub fn member_name(&self, raft_id: NodeId) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().get_node(&raft_id).map(|n| n.name.clone())
    }

    /// The etcd member id of Raft node `raft_id`, if it is in the membership.
    pub fn member_id_of(&self, raft_id: NodeId) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().get_node(&raft_id).map(|n| n.member_id)
    }

    /// Whether the member with etcd id `member_id` is in the membership.
    pub fn check_member(&self, member_id: u64) -> Result<(), CoreError> {
        match self.members().iter().any(|m| m.node.member_id == member_id) {
            true => Ok(()),
            false => Err(CoreError::MemberNotFound),
        }
    }

    /// etcd's MemberPromote: learners become voters by themselves once caught up;
    /// promoting one finishes its join now (waiting for it to catch up).
    pub async fn promote(&self, member_id: u64) -> Result<(), CoreError> {
        self.check_member(member_id)?;
        let members = self.members();
        let Some(learner) = members.iter().find(|m| m.node.member_id == member_id && !m.voter) else {
            return Err(CoreError::MemberNotLearner);
        };
        self.join(learner.raft_id, learner.node.clone()).await
    }

    /// Admits Raft node `raft_id` (`node`) as a voter, replacing any other incarnation
    /// of the same name. Forwarded to the leader when this node follows.
    pub async fn join(&self, raft_id: NodeId, node: PeerNode) -> Result<(), CoreError> {
        if let Leader::There(leader, leader_node) = self.current_leader()? {
            return self.forward_join(leader, &leader_node, raft_id, &node).await;
        }
        let _one_change_at_a_time = self.membership_lock.lock().await;
        let current = self.members();
        if current.iter().any(|m| m.raft_id == raft_id && m.voter) {
            return Ok(());
        }
        tracing::info!(raft_id, node = %node, "adding a learner; it becomes a voter once caught up");
        self.raft.add_learner(raft_id, node.clone(), true).await.map_err(membership_error)?;
        let old: BTreeSet<NodeId> = current
            .iter()
            .filter(|m| m.node.name == node.name && m.raft_id != raft_id)
            .map(|m| m.raft_id)
            .collect();
        let voters: BTreeSet<NodeId> = current
            .iter()
            .filter(|m| m.voter && !old.contains(&m.raft_id))
            .map(|m| m.raft_id)
            .chain([raft_id])
            .collect();
        self.raft
            .change_membership(ChangeMembers::ReplaceAllVoters(voters), false)
            .await
            .map_err(membership_error)?;
        self.drop_learners(&old).await?;
        tracing::info!(raft_id, node = %node, replaced = ?old, "member joined as a voter");
        Ok(())
    }

    /// Removes those of `ids` still in the membership (as learners: a voter change does
    /// not cover nodes that never became voters).
    async fn drop_learners(&self, ids: &BTreeSet<NodeId>) -> Result<(), CoreError> {
        let left: BTreeSet<NodeId> = self
            .members()
            .iter()
            .filter(|m| ids.contains(&m.raft_id))
            .map(|m| m.raft_id)
            .collect();
        if !left.is_empty() {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(left), false)
                .await
                .map_err(membership_error)?;
        }
        Ok(())
    }

    /// Removes the member with etcd member id `member_id` (every incarnation).
    pub async fn remove_member(&self, member_id: u64) -> Result<(), CoreError> {
        let ids: BTreeSet<NodeId> = self
            .members()
            .iter()
            .filter(|m| m.node.member_id == member_id)
            .map(|m| m.raft_id)
            .collect();
        if ids.is_empty() {
            return Err(CoreError::MemberNotFound);
        }
        if let Leader::There(leader, leader_node) = self.current_leader()? {
            return self.forward_remove(leader, &leader_node, member_id).await;
        }
        self.remove_raft_nodes(&ids).await?;
        tracing::info!(member_id = format!("{member_id:x}"), "member removed");
        Ok(())
    }

    /// On the leader: takes the Raft nodes `ids` out of the membership (voters and
    /// learners), one membership change at a time.
    async fn remove_raft_nodes(&self, ids: &BTreeSet<NodeId>) -> Result<(), CoreError> {
        let _one_change_at_a_time = self.membership_lock.lock().await;
        let voters: BTreeSet<NodeId> = self
            .members()
            .iter()
            .filter(|m| m.voter && !ids.contains(&m.raft_id))
            .map(|m| m.raft_id)
            .collect();
        if voters.is_empty() {
            return Err(CoreError::LastVoter);
        }
        self.raft
            .change_membership(ChangeMembers::ReplaceAllVoters(voters), false)
            .await
            .map_err(membership_error)?;
        self.drop_learners(ids).await
    }

    /// On the leader, removes members that have not answered a Raft RPC for `after`: a
    /// StatefulSet scaled down leaves its surplus pods unreachable for good (a pod that
    /// comes back later asks to join again, see `join_via`). A voter is removed only
    /// while the other reachable voters are a majority of the current voters, so the
    /// removal itself can commit; one member per check.
    pub async fn deregister_unreachable(self: std::sync::Arc<Self>, after: Duration) {
        let mut leading_since: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if !self.is_leader() {
                leading_since = None;
                continue;
            }
            let since = *leading_since.get_or_insert_with(Instant::now);
            let members = self.members();
            let me = self.ids.raft_id;
            let silent = |m: &MemberInfo| {
                let heard = self.peers.last_answer(m.raft_id).map_or(since, |t| t.max(since));
                m.raft_id != me && heard.elapsed() >= after
            };
            let Some(gone) = members.iter().find(|m| silent(m)) else {
                continue;
            };
            let voters = members.iter().filter(|m| m.voter).count();
            let reachable = members.iter().filter(|m| m.voter && !silent(m)).count();
            if gone.voter && reachable * 2 <= voters {
                tracing::warn!(
                    reachable,
                    voters,
                    "voters unreachable for longer than deregistration_timeout, but too few remain to remove them safely"
                );
                continue;
            }
            tracing::warn!(
                raft_id = gone.raft_id,
                node = %gone.node,
                after_secs = after.as_secs_f64(),
                "member unreachable for longer than deregistration_timeout: removing it from the membership"
            );
            match self.remove_raft_nodes(&BTreeSet::from([gone.raft_id])).await {
                Ok(()) => tracing::info!(raft_id = gone.raft_id, node = %gone.node, "unreachable member removed"),
                Err(e) => {
                    tracing::warn!(raft_id = gone.raft_id, error = %crate::error_chain(&e), "could not remove the unreachable member")
                }
            }
        }
    }

    /// On a starting node: asks the running cluster (through any of `via`: peer URL and
    /// name) to admit this node; retries until one answers or `JOIN_WAIT` passes.
    pub async fn join_via(&self, via: &[(String, String)]) -> Result<(), JoinFailed> {
        let deadline = tokio::time::Instant::now() + JOIN_WAIT;
        let me = &self.ids.me;
        let mut last = String::new();
        loop {
            for (url, name) in via {
                let Ok(mut client) = self.peers.client_at(url, name) else {
                    continue;
                };
                let mut request = tonic::Request::new(super::forward::join_request(self.ids.raft_id, me));
                request.set_timeout(JOIN_TIMEOUT);
                match client.join(request).await {
                    Ok(_) => {
                        tracing::info!(via = %name, raft_id = self.ids.raft_id, "joined the cluster");
                        return Ok(());
                    }
                    Err(e) => last = format!("{name} ({url}): {}", e.message()),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(JoinFailed { last });
            }
            tracing::info!(error = %last, "join not accepted yet; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// No member admitted this node before `JOIN_WAIT`.
#[derive(Debug, thiserror::Error)]
#[error("could not join the cluster: {last}")]
pub struct JoinFailed {
    /// The last member's answer.
    pub last: String,
}
