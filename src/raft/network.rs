//! openraft's network over the peer gRPC service: each Raft RPC is sent as the peer
//! protocol's own message (`proto/netsy/peer.proto`, converted in `raft::codec`); see
//! `crate::peer` for the serving side.

use std::sync::Arc;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};

use super::codec;
use super::peers::Peers;
use super::{NodeId, PeerNode, TypeConfig};

#[derive(Clone)]
pub struct Network {
    pub peers: Arc<Peers>,
    pub self_id: NodeId,
    /// How far the log is in object storage, sent with every AppendEntries
    /// (`raft::gate`).
    pub uploaded: tokio::sync::watch::Receiver<u64>,
}

pub struct Link {
    self_id: NodeId,
    target: NodeId,
    node: PeerNode,
    peers: Arc<Peers>,
    uploaded: tokio::sync::watch::Receiver<u64>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Link;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> Link {
        Link {
            self_id: self.self_id,
            target,
            node: node.clone(),
            peers: self.peers.clone(),
            uploaded: self.uploaded.clone(),
        }
    }
}

type RpcError<E> = RPCError<NodeId, PeerNode, RaftError<NodeId, E>>;
type RpcResult<T, E> = Result<T, RpcError<E>>;
type Client = crate::proto::peer::peer_client::PeerClient<tonic::transport::Channel>;

/// A member this node cannot reach, and why (openraft keeps the cause's chain).
#[derive(Debug, thiserror::Error)]
#[error("{node} (node {target}): {source}")]
struct PeerUnreachable {
    node: String,
    target: NodeId,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl Link {
    fn unreachable<E: std::error::Error>(&self, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> RpcError<E> {
        RPCError::Unreachable(Unreachable::new(&PeerUnreachable {
            node: self.node.to_string(),
            target: self.target,
            source: source.into(),
        }))
    }

    /// A peer client for the target, with the RPC's deadline on `request`.
    fn client<T, E: std::error::Error>(&self, message: T, option: &RPCOption) -> Result<(Client, tonic::Request<T>), RpcError<E>> {
        if self.target == self.self_id {
            return Err(self.unreachable("a node never sends Raft RPCs to itself"));
        }
        let client = self.peers.client(self.target, &self.node).map_err(|e| self.unreachable(e))?;
        let mut request = tonic::Request::new(message);
        request.set_timeout(option.hard_ttl());
        Ok((client, request))
    }

    /// The RPC's reply, or the openraft error its gRPC failure means.
    fn reply<T, E: std::error::Error>(
        &self,
        action: RPCTypes,
        option: &RPCOption,
        reply: Result<tonic::Response<T>, tonic::Status>,
    ) -> Result<T, RpcError<E>> {
        match reply {
            Ok(r) => {
                self.peers.answered(self.target);
                Ok(r.into_inner())
            }
            Err(status) => Err(match status.code() {
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => RPCError::Timeout(Timeout {
                    action,
                    id: self.self_id,
                    target: self.target,
                    timeout: option.hard_ttl(),
                }),
                tonic::Code::Unavailable | tonic::Code::FailedPrecondition => self.unreachable(status),
                _ => RPCError::Network(NetworkError::new(&status)),
            }),
        }
    }

    /// The decoded result: a remote failure becomes openraft's `RemoteError`.
    fn result<T, E: std::error::Error>(&self, decoded: Result<Result<T, RaftError<NodeId, E>>, codec::FormatError>) -> RpcResult<T, E> {
        decoded
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?
            .map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }
}

impl RaftNetwork<TypeConfig> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        let mut wire = codec::append_request_to_wire(self.target, &rpc);
        wire.archived_index = Some(*self.uploaded.borrow());
        let (mut client, request) = self.client(wire, &option)?;
        let reply = self.reply(RPCTypes::AppendEntries, &option, client.append_entries(request).await)?;
        self.result(codec::append_reply_from_wire(reply))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let (mut client, request) = self.client(codec::snapshot_request_to_wire(self.target, &rpc), &option)?;
        let reply = self.reply(RPCTypes::InstallSnapshot, &option, client.install_snapshot(request).await)?;
        self.result(codec::snapshot_reply_from_wire(reply))
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        let (mut client, request) = self.client(codec::vote_request_to_wire(self.target, &rpc), &option)?;
        let reply = self.reply(RPCTypes::Vote, &option, client.vote(request).await)?;
        self.result(codec::vote_reply_from_wire(reply))
    }
}
