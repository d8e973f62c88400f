//! openraft's network over the peer gRPC service: each Raft RPC is sent as the peer
//! protocol's own message (`proto/netsy/peer.proto`, converted in `raft::codec`); see
//! `crate::peer` for the serving side.

use std::sync::Arc;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::snapshot_transport::{Chunked, SnapshotTransport};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, SnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{OptionalSend, Snapshot, Vote};

use super::codec;
use super::peers::Peers;
use super::purge::SnapshotSends;
use super::{NodeId, PeerNode, TypeConfig};

#[derive(Clone)]
pub struct Network {
    pub peers: Arc<Peers>,
    pub self_id: NodeId,
    /// How far the log is in object storage, sent with every AppendEntries
    /// (`raft::gate`).
    pub uploaded: tokio::sync::watch::Receiver<u64>,
    /// The snapshots being sent, which the log purge waits for (`raft::purge`).
    pub sends: Arc<SnapshotSends>,
}

pub struct Link {
    self_id: NodeId,
    target: NodeId,
    node: PeerNode,
    peers: Arc<Peers>,
    uploaded: tokio::sync::watch::Receiver<u64>,
    sends: Arc<SnapshotSends>,
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
            sends: self.sends.clone(),
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

    /// Sends a whole snapshot in chunks (openraft's own `Chunked` transport, through
    /// `install_snapshot`), recording it for the log purge and etcd's snapshot metrics.
    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let index = snapshot.meta.last_log_id.map_or(0, |l| l.index);
        let bytes = snapshot.snapshot.metadata().await.map_or(0, |m| m.len());
        let to = format!("{:x}", self.node.member_id);
        tracing::info!(to = %self.node, snapshot = %snapshot.meta.snapshot_id, bytes, "sending raft snapshot");
        let send = self.sends.start(self.target, index, bytes);
        let inflight = Inflight::new(&to);
        let timer = crate::metrics::SNAPSHOT_SEND_SECONDS.with_label_values(&[&to]).start_timer();
        let sent = Chunked::send_snapshot(self, vote, snapshot, cancel, option).await;
        drop(inflight);
        match &sent {
            // A member that answers with a higher vote did not install it.
            Ok(reply) if reply.vote <= vote => {
                timer.observe_duration();
                crate::metrics::SNAPSHOT_SEND_SUCCESS.with_label_values(&[&to]).inc();
                send.delivered();
            }
            _ => {
                timer.stop_and_discard();
                crate::metrics::SNAPSHOT_SEND_FAILURES.with_label_values(&[&to]).inc();
            }
        }
        sent
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        let (mut client, request) = self.client(codec::vote_request_to_wire(self.target, &rpc), &option)?;
        let reply = self.reply(RPCTypes::Vote, &option, client.vote(request).await)?;
        self.result(codec::vote_reply_from_wire(reply))
    }
}

/// `etcd_network_snapshot_send_inflights_total` for one send, until it ends or is
/// cancelled.
struct Inflight(prometheus::IntGauge);

impl Inflight {
    fn new(to: &str) -> Inflight {
        let gauge = crate::metrics::SNAPSHOT_SEND_INFLIGHTS.with_label_values(&[to]);
        gauge.inc();
        Inflight(gauge)
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The snapshot this member is receiving, for etcd's receive metrics
/// (`etcd_network_snapshot_receive_*`), counted when its last chunk is handled.
#[derive(Debug, Default)]
pub struct Receiving {
    started: std::sync::Mutex<Option<(String, std::time::Instant)>>,
}

/// What `Receiving` needs of a chunk, taken before openraft consumes it.
pub struct Chunk {
    snapshot_id: String,
    done: bool,
    vote: Vote<NodeId>,
    leader: Option<NodeId>,
}

impl Receiving {
    /// A chunk arrives: the first one starts the clock.
    pub fn chunk(&self, rpc: &InstallSnapshotRequest<TypeConfig>) -> Chunk {
        if rpc.offset == 0 {
            *self.lock() = Some((rpc.meta.snapshot_id.clone(), std::time::Instant::now()));
        }
        Chunk {
            snapshot_id: rpc.meta.snapshot_id.clone(),
            done: rpc.done,
            vote: rpc.vote,
            leader: rpc.vote.leader_id().voted_for(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, std::time::Instant)>> {
        self.started.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// openraft handled `chunk` with `reply`. `member_id` names the sender's member
    /// (asked only now: a member that is joining learns the others from the snapshot).
    pub fn handled(
        &self,
        chunk: Chunk,
        reply: &Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
        member_id: impl FnOnce(NodeId) -> Option<u64>,
    ) {
        let installed = match reply {
            Ok(r) if chunk.done => r.vote <= chunk.vote,
            Ok(_) => return,
            Err(_) => false,
        };
        let started = self.lock().take_if(|(id, _)| *id == chunk.snapshot_id).map(|(_, at)| at.elapsed());
        let from = chunk.leader.and_then(member_id).map(|m| format!("{m:x}")).unwrap_or_default();
        if installed {
            crate::metrics::SNAPSHOT_RECEIVE_SUCCESS.with_label_values(&[&from]).inc();
            if let Some(took) = started {
                crate::metrics::SNAPSHOT_RECEIVE_SECONDS
                    .with_label_values(&[&from])
                    .observe(took.as_secs_f64());
            }
        } else {
            crate::metrics::SNAPSHOT_RECEIVE_FAILURES.with_label_values(&[&from]).inc();
        }
    }
}
