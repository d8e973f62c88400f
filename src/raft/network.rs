//! Peer network. A single-member cluster never sends a Raft RPC, so every RPC reports the
//! target unreachable; the multi-node cluster replaces this with the gRPC peer service.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};

use super::{NodeId, TypeConfig};

#[derive(Debug, Default, Clone)]
pub struct Network;

#[derive(Debug)]
pub struct Peer {
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, _node: &openraft::BasicNode) -> Peer {
        Peer { target }
    }
}

impl Peer {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, openraft::BasicNode, E> {
        let err = std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            format!("no peer transport to node {} in single-member mode", self.target),
        );
        RPCError::Unreachable(Unreachable::new(&err))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, openraft::BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, openraft::BasicNode, RaftError<NodeId, InstallSnapshotError>>> {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, openraft::BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}
