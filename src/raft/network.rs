//! openraft's network over the peer gRPC service: each RPC is the bincode of openraft's
//! request, answered with the bincode of `Result<response, RaftError>` (see
//! `proto/netsy/peer.proto` and `crate::peer` for the serving side).

use std::sync::Arc;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::peers::Peers;
use super::{NodeId, PeerNode, TypeConfig};
use crate::proto::peer::Blob;

#[derive(Clone)]
pub struct Network {
    pub peers: Arc<Peers>,
    pub self_id: NodeId,
}

pub struct Link {
    self_id: NodeId,
    target: NodeId,
    node: PeerNode,
    peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Link;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> Link {
        Link {
            self_id: self.self_id,
            target,
            node: node.clone(),
            peers: self.peers.clone(),
        }
    }
}

#[derive(Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, PeerNode, RaftError<NodeId, E>>>;

impl Link {
    async fn call<Req, Resp, E>(&self, rpc: Rpc, req: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let unreachable = |e: &dyn std::fmt::Display| {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
                "{} (node {}): {e}",
                self.node, self.target
            ))))
        };
        if self.target == self.self_id {
            return Err(unreachable(&"a node never sends Raft RPCs to itself"));
        }
        let data = bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self.peers.client(self.target, &self.node).map_err(|e| unreachable(&e))?;
        let mut request = tonic::Request::new(Blob { data, target: self.target });
        request.set_timeout(option.hard_ttl());
        let reply = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
        };
        let reply = match reply {
            Ok(r) => {
                self.peers.answered(self.target);
                r.into_inner()
            }
            Err(status) => {
                return Err(match status.code() {
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => RPCError::Timeout(Timeout {
                        action: match rpc {
                            Rpc::AppendEntries => openraft::network::RPCTypes::AppendEntries,
                            Rpc::Vote => openraft::network::RPCTypes::Vote,
                            Rpc::InstallSnapshot => openraft::network::RPCTypes::InstallSnapshot,
                        },
                        id: self.self_id,
                        target: self.target,
                        timeout: option.hard_ttl(),
                    }),
                    tonic::Code::Unavailable | tonic::Code::FailedPrecondition => unreachable(&status.message()),
                    _ => RPCError::Network(NetworkError::new(&std::io::Error::other(status.to_string()))),
                });
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            bincode::deserialize(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }
}

impl RaftNetwork<TypeConfig> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(Rpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
