//! The peer port (2381): node-to-node gRPC services, behind `peer` role mTLS. Raft RPCs
//! go straight to openraft; proposals, ReadIndex rounds, lease keep-alives and
//! membership changes are served by the leader for the other members.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::peer::peer_server::{Peer, PeerServer};
use crate::proto::peer::{
    AppendEntriesReply, AppendEntriesRequest, CampaignRequest, CampaignResponse, HelloRequest, HelloResponse, InstallSnapshotReply,
    InstallSnapshotRequest, JoinRequest, JoinResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, Proposal, ProposalResult,
    ReadIndexRequest, ReadIndexResponse, RemoveMemberRequest, RemoveMemberResponse, TransferLeadershipRequest, TransferLeadershipResponse,
    VoteReply, VoteRequest,
};
use crate::raft::{codec, NodeId, PeerNode};
use crate::server::{forward, Node};
use crate::tls::ConnInfo;

pub struct PeerService {
    node: Arc<Node>,
}

/// A Raft request's addressee and the Raft node it says it comes from (the leader or the
/// candidate).
trait RaftRequest {
    fn target(&self) -> NodeId;
    fn sender(&self) -> Option<NodeId>;
}

macro_rules! raft_request {
    ($($t:ty),*) => {$(
        impl RaftRequest for $t {
            fn target(&self) -> NodeId {
                self.target
            }
            fn sender(&self) -> Option<NodeId> {
                self.vote.as_ref().map(|v| v.node_id)
            }
        }
    )*};
}
raft_request!(AppendEntriesRequest, VoteRequest, InstallSnapshotRequest);

impl PeerService {
    /// A Raft request, if it is meant for this Raft node and, with TLS, its sender is the
    /// member the caller's certificate names: one member's certificate cannot speak for
    /// another member. (A sender this node does not know yet, such as the leader seen by a
    /// node that is still joining, is taken on the certificate alone.)
    fn raft_rpc<T: RaftRequest>(&self, req: Request<T>) -> Result<T, Status> {
        let target = req.get_ref().target();
        if target != self.node.identity.raft_id {
            return Err(Status::failed_precondition(format!(
                "this is Raft node {} ({}), not {target}",
                self.node.identity.raft_id, self.node.config.node_id
            )));
        }
        let caller = ConnInfo::of(&req).and_then(|c| c.identity.clone());
        let rpc = req.into_inner();
        if let (Some(caller), Some(sender)) = (caller, rpc.sender()) {
            if let Some(name) = self.node.member_name(sender) {
                if name != caller.name {
                    tracing::warn!(%caller, sender, member = %name, "refused a Raft RPC sent in another member's name");
                    return Err(Status::permission_denied(format!(
                        "{caller} cannot send Raft messages as node {sender} ({name})"
                    )));
                }
            }
        }
        Ok(rpc)
    }
}

fn undecodable(e: codec::FormatError) -> Status {
    Status::invalid_argument(format!("undecodable peer request: {}", crate::error_chain(&e)))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloResponse>, Status> {
        let caller = ConnInfo::of(&request)
            .and_then(|c| c.identity.as_ref())
            .map(|id| id.to_string())
            .unwrap_or_default();
        let node = &self.node;
        Ok(Response::new(HelloResponse {
            cluster_id: node.config.cluster_id.clone(),
            node_id: node.config.node_id.clone(),
            member_id: node.identity.member_id,
            raft_id: node.identity.raft_id,
            epoch: node.identity.epoch,
            advertise_client: node.config.advertise_client.clone(),
            advertise_peer: node.config.advertise_peer.clone(),
            caller,
            leader_raft_id: node.raft.metrics().borrow().current_leader.unwrap_or(0),
        }))
    }

    async fn append_entries(&self, request: Request<AppendEntriesRequest>) -> Result<Response<AppendEntriesReply>, Status> {
        let rpc = codec::append_request_from_wire(self.raft_rpc(request)?).map_err(undecodable)?;
        Ok(Response::new(codec::append_reply_to_wire(
            &self.node.raft.append_entries(rpc).await,
        )))
    }

    async fn vote(&self, request: Request<VoteRequest>) -> Result<Response<VoteReply>, Status> {
        let rpc = codec::vote_request_from_wire(self.raft_rpc(request)?).map_err(undecodable)?;
        Ok(Response::new(codec::vote_reply_to_wire(&self.node.raft.vote(rpc).await)))
    }

    async fn install_snapshot(&self, request: Request<InstallSnapshotRequest>) -> Result<Response<InstallSnapshotReply>, Status> {
        let rpc = codec::snapshot_request_from_wire(self.raft_rpc(request)?).map_err(undecodable)?;
        Ok(Response::new(codec::snapshot_reply_to_wire(
            &self.node.raft.install_snapshot(rpc).await,
        )))
    }

    type ProposalsStream = UnboundedReceiverStream<Result<ProposalResult, Status>>;

    async fn proposals(&self, request: Request<Streaming<Proposal>>) -> Result<Response<Self::ProposalsStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let node = self.node.clone();
        tokio::spawn(async move {
            // Each proposal runs on its own: a slow one holds up none of the others. The
            // answers end when the member closes its side and the last one is sent.
            while let Ok(Some(p)) = inbound.message().await {
                let (node, tx) = (node.clone(), tx.clone());
                tokio::spawn(async move {
                    let outcome = node.propose_forwarded(&p.command).await;
                    let _ = tx.send(Ok(forward::answer(p.id, outcome)));
                });
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    async fn read_index(&self, _request: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        let index = self.node.read_index_as_leader().await?;
        Ok(Response::new(ReadIndexResponse { index }))
    }

    async fn lease_keep_alive(&self, request: Request<LeaseKeepAliveRequest>) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        let req = request.into_inner();
        let (ttl, remaining) = self.node.lease_deadline_as_leader(req.id, req.renew)?;
        Ok(Response::new(LeaseKeepAliveResponse { ttl, remaining }))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let caller = ConnInfo::of(&request).and_then(|c| c.identity.clone());
        let req = request.into_inner();
        // With TLS, a node can only join as itself.
        if let Some(id) = &caller {
            if id.name != req.name {
                return Err(Status::permission_denied(format!("{id} cannot join as {:?}", req.name)));
            }
        }
        let node = PeerNode {
            name: req.name,
            member_id: req.member_id,
            peer_url: req.peer_url,
            client_url: req.client_url,
        };
        self.node.join(req.raft_id, node).await?;
        Ok(Response::new(JoinResponse {}))
    }

    async fn remove_member(&self, request: Request<RemoveMemberRequest>) -> Result<Response<RemoveMemberResponse>, Status> {
        self.node.remove_member(request.into_inner().member_id).await?;
        Ok(Response::new(RemoveMemberResponse {}))
    }

    async fn transfer_leadership(
        &self,
        request: Request<TransferLeadershipRequest>,
    ) -> Result<Response<TransferLeadershipResponse>, Status> {
        self.node.move_leader(request.into_inner().member_id).await?;
        Ok(Response::new(TransferLeadershipResponse {}))
    }

    async fn campaign(&self, _request: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        self.node.campaign().await?;
        Ok(Response::new(CampaignResponse {}))
    }
}

/// Builds the gRPC server of the peer port.
pub fn router(node: Arc<Node>) -> tonic::transport::server::Router {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)))
        .add_service(
            PeerServer::new(PeerService { node })
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
        )
}
