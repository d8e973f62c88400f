//! The peer port (2381): node-to-node gRPC services, behind `peer` role mTLS. Raft RPCs
//! go straight to openraft; proposals, ReadIndex rounds, lease keep-alives and
//! membership changes are served by the leader for the other members
//! (`core::forward::Served`, beside the member's half of the same protocol).

use std::sync::Arc;

use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::core::forward::Served;
use crate::core::Replica;
use crate::proto::peer::peer_server::{Peer, PeerServer};
use crate::proto::peer::{
    AppendEntriesReply, AppendEntriesRequest, CampaignRequest, CampaignResponse, HelloRequest, HelloResponse, InstallSnapshotReply,
    InstallSnapshotRequest, JoinRequest, JoinResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, Proposal, ProposalResult,
    ReadIndexRequest, ReadIndexResponse, RemoveMemberRequest, RemoveMemberResponse, TransferLeadershipRequest, TransferLeadershipResponse,
    VoteReply, VoteRequest,
};
use crate::raft::{codec, NetsyRaft, NodeId};
use crate::tls::ConnInfo;

/// Who this node is, as `Hello` answers.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cluster_id: String,
    pub node_id: String,
    pub epoch: u64,
    pub advertise_client: String,
    pub advertise_peer: String,
}

pub struct PeerService {
    identity: Identity,
    raft: NetsyRaft,
    replica: Arc<Replica>,
    served: Served,
    receiving: crate::raft::network::Receiving,
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
        let me = self.replica.ids().raft_id;
        if target != me {
            return Err(Status::failed_precondition(format!(
                "this is Raft node {me} ({}), not {target}",
                self.identity.node_id
            )));
        }
        let caller = ConnInfo::of(&req).and_then(|c| c.identity.clone());
        let rpc = req.into_inner();
        if let (Some(caller), Some(sender)) = (caller, rpc.sender()) {
            if let Some(name) = self.replica.member_name(sender) {
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
        let (me, ids) = (&self.identity, self.replica.ids());
        Ok(Response::new(HelloResponse {
            cluster_id: me.cluster_id.clone(),
            node_id: me.node_id.clone(),
            member_id: ids.member_id,
            raft_id: ids.raft_id,
            epoch: me.epoch,
            advertise_client: me.advertise_client.clone(),
            advertise_peer: me.advertise_peer.clone(),
            caller,
            leader_raft_id: self.replica.leader_raft_id(),
        }))
    }

    async fn append_entries(&self, request: Request<AppendEntriesRequest>) -> Result<Response<AppendEntriesReply>, Status> {
        let wire = self.raft_rpc(request)?;
        // How far the log is in object storage, as the leader knows it; a leader older
        // than netsy 0.3 does not say, and then what is committed may be applied.
        let uploaded = wire.archived_index.or(wire.leader_commit.as_ref().map(|c| c.index));
        let rpc = codec::append_request_from_wire(wire).map_err(undecodable)?;
        if let Some(index) = uploaded {
            self.replica.leader_uploaded(index);
        }
        Ok(Response::new(codec::append_reply_to_wire(&self.raft.append_entries(rpc).await)))
    }

    async fn vote(&self, request: Request<VoteRequest>) -> Result<Response<VoteReply>, Status> {
        let rpc = codec::vote_request_from_wire(self.raft_rpc(request)?).map_err(undecodable)?;
        Ok(Response::new(codec::vote_reply_to_wire(&self.raft.vote(rpc).await)))
    }

    async fn install_snapshot(&self, request: Request<InstallSnapshotRequest>) -> Result<Response<InstallSnapshotReply>, Status> {
        let rpc = codec::snapshot_request_from_wire(self.raft_rpc(request)?).map_err(undecodable)?;
        let chunk = self.receiving.chunk(&rpc);
        let reply = self.raft.install_snapshot(rpc).await;
        self.receiving.handled(chunk, &reply, |leader| self.replica.member_id_of(leader));
        Ok(Response::new(codec::snapshot_reply_to_wire(&reply)))
    }

    type ProposalsStream = UnboundedReceiverStream<Result<ProposalResult, Status>>;

    async fn proposals(&self, request: Request<Streaming<Proposal>>) -> Result<Response<Self::ProposalsStream>, Status> {
        Ok(Response::new(self.served.proposals(request.into_inner())))
    }

    async fn read_index(&self, _request: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        Ok(Response::new(self.served.read_index().await?))
    }

    async fn lease_keep_alive(&self, request: Request<LeaseKeepAliveRequest>) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        Ok(Response::new(self.served.lease_keep_alive(request.into_inner()).await?))
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
        self.served.join(req).await?;
        Ok(Response::new(JoinResponse {}))
    }

    async fn remove_member(&self, request: Request<RemoveMemberRequest>) -> Result<Response<RemoveMemberResponse>, Status> {
        self.served.remove_member(request.into_inner().member_id).await?;
        Ok(Response::new(RemoveMemberResponse {}))
    }

    async fn transfer_leadership(
        &self,
        request: Request<TransferLeadershipRequest>,
    ) -> Result<Response<TransferLeadershipResponse>, Status> {
        self.served.transfer_leadership(request.into_inner().member_id).await?;
        Ok(Response::new(TransferLeadershipResponse {}))
    }

    async fn campaign(&self, _request: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        self.served.campaign().await?;
        Ok(Response::new(CampaignResponse {}))
    }
}

/// Streams a peer may reset before the peer port accepts them (see `router`).
const PEER_PENDING_RESETS: usize = 10_000;

/// Builds the gRPC server of the peer port.
pub fn router(identity: Identity, replica: Arc<Replica>) -> tonic::transport::server::Router {
    let service = PeerService {
        identity,
        raft: replica.raft().clone(),
        served: Served(replica.clone()),
        replica,
        receiving: Default::default(),
    };
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)))
        // A leader cancels every Raft RPC that outlives its timeout (100 ms for
        // AppendEntries). On a loaded member such streams are reset before the server
        // accepts them, and h2's default limit for those (20, a guard against rapid-reset
        // floods from strangers) made the server drop the whole connection, failing every
        // RPC on it, so more timed out: a follower cut off for minutes, deposing the
        // leader again and again (seen in the chaos runs). Peers are members of the
        // cluster; allow them many.
        .http2_max_pending_accept_reset_streams(Some(PEER_PENDING_RESETS))
        .add_service(
            PeerServer::new(service)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
        )
}
