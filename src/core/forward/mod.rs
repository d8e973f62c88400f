//! Leader forwarding, both halves of the peer protocol: what a member sends the leader
//! (`Replica::forward_*`, the write stream in `stream`) and how the leader answers it
//! (`Served`, called by the peer port's gRPC service). Failures travel as typed
//! `PeerError`s (`wire`), never as strings to be parsed back.

mod stream;
pub mod wire;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

pub(crate) use stream::Forwarder;

use super::{CoreError, Replica, JOIN_TIMEOUT, TRANSFER_TIMEOUT};
use crate::mvcc::{Command, CommandResult};
use crate::proto::peer::peer_client::PeerClient;
use crate::proto::peer::{
    JoinRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, Proposal, ProposalResult, ReadIndexRequest, ReadIndexResponse,
    RemoveMemberRequest, TransferLeadershipRequest,
};
use crate::raft::{NodeId, PeerNode};

/// The member's half.
impl Replica {
    /// A client for member `id` (the leader): unreachable means "no leader" to a client.
    pub(super) fn peer_client(&self, id: NodeId, node: &PeerNode) -> Result<PeerClient<Channel>, CoreError> {
        self.peers.client(id, node).map_err(|_| CoreError::NoLeader)
    }

    /// Sends `cmd` to the leader on this member's write stream; returns its result and
    /// log index once this member has applied it (so the caller's next read here sees it).
    pub(super) async fn forward_propose(
        &self,
        leader: NodeId,
        node: &PeerNode,
        cmd: &Command,
        deadline: Instant,
    ) -> Result<(CommandResult, u64), CoreError> {
        let client = self.peer_client(leader, node)?;
        let (result, index) = self.forwarder.forward(client, leader, cmd, deadline).await?;
        self.wait_applied(index, deadline).await?;
        Ok((result, index))
    }

    /// A ReadIndex round at the leader: the index a linearizable read here must wait for.
    pub(super) async fn forward_read_index(&self, leader: NodeId, node: &PeerNode, deadline: Instant) -> Result<u64, CoreError> {
        let mut client = self.peer_client(leader, node)?;
        let reply = client
            .read_index(timed(ReadIndexRequest {}, deadline.saturating_duration_since(Instant::now())))
            .await
            .map_err(|s| wire::from_status(&s))?;
        Ok(reply.into_inner().index)
    }

    /// Renews (or reads) lease `id`'s deadline at the leader: (granted TTL, seconds left).
    pub(super) async fn forward_lease_deadline(
        &self,
        leader: NodeId,
        node: &PeerNode,
        id: i64,
        renew: bool,
        deadline: Instant,
    ) -> Result<(i64, i64), CoreError> {
        let mut client = self.peer_client(leader, node)?;
        let request = timed(
            LeaseKeepAliveRequest { id, renew },
            deadline.saturating_duration_since(Instant::now()),
        );
        let reply = client.lease_keep_alive(request).await.map_err(|s| wire::from_status(&s))?;
        let r = reply.into_inner();
        Ok((r.ttl, r.remaining))
    }

    /// Asks the leader to admit Raft node `raft_id` (`node`).
    pub(super) async fn forward_join(
        &self,
        leader: NodeId,
        leader_node: &PeerNode,
        raft_id: NodeId,
        node: &PeerNode,
    ) -> Result<(), CoreError> {
        let mut client = self.peer_client(leader, leader_node)?;
        client
            .join(timed(join_request(raft_id, node), JOIN_TIMEOUT))
            .await
            .map_err(|s| wire::from_status(&s))?;
        Ok(())
    }

    /// Asks the leader to remove the member with etcd id `member_id`.
    pub(super) async fn forward_remove(&self, leader: NodeId, node: &PeerNode, member_id: u64) -> Result<(), CoreError> {
        let mut client = self.peer_client(leader, node)?;
        client
            .remove_member(RemoveMemberRequest { member_id })
            .await
            .map_err(|s| wire::from_status(&s))?;
        Ok(())
    }

    /// Asks the leader to hand leadership to the member with etcd id `member_id`.
    pub(super) async fn forward_transfer(&self, leader: NodeId, node: &PeerNode, member_id: u64) -> Result<(), CoreError> {
        let mut client = self.peer_client(leader, node)?;
        let request = timed(TransferLeadershipRequest { member_id }, TRANSFER_TIMEOUT + Duration::from_secs(1));
        client.transfer_leadership(request).await.map_err(|s| wire::from_status(&s))?;
        Ok(())
    }
}

/// The admission request for Raft node `raft_id`.
pub(super) fn join_request(raft_id: NodeId, node: &PeerNode) -> JoinRequest {
    JoinRequest {
        name: node.name.clone(),
        member_id: node.member_id,
        raft_id,
        peer_url: node.peer_url.clone(),
        client_url: node.client_url.clone(),
    }
}

fn timed<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// The leader's half: answers to what the other members forward. Each returns the
/// typed error in the status (`wire::to_status`).
pub struct Served(pub Arc<Replica>);

impl Served {
    /// A member's write stream: each proposal runs on its own (a slow one holds up none
    /// of the others) and is answered with its id. The answers end when the member
    /// closes its side and the last one is sent.
    pub fn proposals(&self, mut inbound: Streaming<Proposal>) -> UnboundedReceiverStream<Result<ProposalResult, Status>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let replica = self.0.clone();
        tokio::spawn(async move {
            while let Ok(Some(p)) = inbound.message().await {
                let (replica, tx) = (replica.clone(), tx.clone());
                tokio::spawn(async move {
                    let outcome = replica.propose_forwarded(&p.command).await;
                    let _ = tx.send(Ok(stream::answer(p.id, outcome)));
                });
            }
        });
        UnboundedReceiverStream::new(rx)
    }

    pub async fn read_index(&self) -> Result<ReadIndexResponse, Status> {
        let replica = &self.0;
        let index = async {
            replica.require_leader()?;
            replica.confirmed_read_index(Instant::now() + super::REQUEST_TIMEOUT).await
        }
        .await
        .map_err(|e| wire::to_status(&e))?;
        Ok(ReadIndexResponse { index })
    }

    pub async fn lease_keep_alive(&self, req: LeaseKeepAliveRequest) -> Result<LeaseKeepAliveResponse, Status> {
        let deadline = Instant::now() + super::REQUEST_TIMEOUT;
        let (ttl, remaining) = self
            .0
            .lease_deadline_here(req.id, req.renew, deadline)
            .await
            .map_err(|e| wire::to_status(&e))?;
        Ok(LeaseKeepAliveResponse { ttl, remaining })
    }

    pub async fn join(&self, req: JoinRequest) -> Result<(), Status> {
        let node = PeerNode {
            name: req.name,
            member_id: req.member_id,
            peer_url: req.peer_url,
            client_url: req.client_url,
        };
        self.0.join(req.raft_id, node).await.map_err(|e| wire::to_status(&e))
    }

    pub async fn remove_member(&self, member_id: u64) -> Result<(), Status> {
        self.0.remove_member(member_id).await.map_err(|e| wire::to_status(&e))
    }

    pub async fn transfer_leadership(&self, member_id: u64) -> Result<(), Status> {
        self.0.move_leader(member_id).await.map_err(|e| wire::to_status(&e))
    }

    /// On the transferee: start an election now.
    pub async fn campaign(&self) -> Result<(), Status> {
        self.0
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|_| wire::to_status(&CoreError::Stopped))
    }
}
