//! Connections to the other members' peer ports (2381), one lazily connected gRPC
//! channel per member, shared by Raft replication and request forwarding. With TLS, a
//! connection presents this node's peer certificate and accepts only the member it meant
//! to reach (see `tls::connect`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

use super::{NodeId, PeerNode};
use crate::proto::peer::peer_client::PeerClient;
use crate::tls::connect::{ConnectError, Dialer};

/// How long dialling a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Peers {
    dialer: Dialer,
    self_id: NodeId,
    /// Per member: the address the channel was made for, and the channel.
    channels: Mutex<HashMap<NodeId, (String, Channel)>>,
    /// Per member: when a Raft RPC to it last got an answer (any answer: it is alive).
    answered: Mutex<HashMap<NodeId, Instant>>,
}

impl Peers {
    pub fn new(dialer: Dialer, self_id: NodeId) -> Arc<Peers> {
        Arc::new(Peers {
            dialer,
            self_id,
            channels: Mutex::new(HashMap::new()),
            answered: Mutex::new(HashMap::new()),
        })
    }

    /// A client for member `id` at `node`. Never for this node itself (openraft must not
    /// be connected to itself).
    pub fn client(&self, id: NodeId, node: &PeerNode) -> Result<PeerClient<Channel>, ConnectError> {
        if id == self.self_id {
            return Err(ConnectError::Address {
                addr: node.peer_url.clone(),
                msg: "refusing to connect a node to itself".into(),
            });
        }
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((url, ch)) = channels.get(&id) {
            if *url == node.peer_url {
                return Ok(client(ch.clone()));
            }
        }
        let ch = self.dialer.lazy(&node.peer_url, &node.name, CONNECT_TIMEOUT)?;
        channels.insert(id, (node.peer_url.clone(), ch.clone()));
        Ok(client(ch))
    }

    /// Records that member `id` answered a Raft RPC just now.
    pub fn answered(&self, id: NodeId) {
        self.answered.lock().unwrap_or_else(|p| p.into_inner()).insert(id, Instant::now());
    }

    /// When member `id` last answered a Raft RPC from this node.
    pub fn last_answer(&self, id: NodeId) -> Option<Instant> {
        self.answered.lock().unwrap_or_else(|p| p.into_inner()).get(&id).copied()
    }

    /// A one-off client for the node named `name` at `url` (before it is a known member).
    pub fn client_at(&self, url: &str, name: &str) -> Result<PeerClient<Channel>, ConnectError> {
        dial(&self.dialer, url, name)
    }
}

/// A one-off client for the node named `name` at `url`.
fn dial(dialer: &Dialer, url: &str, name: &str) -> Result<PeerClient<Channel>, ConnectError> {
    Ok(client(dialer.lazy(url, name, CONNECT_TIMEOUT)?))
}

fn client(ch: Channel) -> PeerClient<Channel> {
    PeerClient::new(ch)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// Discovery (`archive::bootstrap::Probe`): a node is live when it answers `Hello` for
/// this cluster and epoch and knows a Raft leader.
pub struct HelloProbe {
    pub dialer: Dialer,
    pub cluster_id: String,
}

#[async_trait::async_trait]
impl crate::archive::bootstrap::Probe for HelloProbe {
    async fn is_live(&self, peer_url: &str, node_id: &str, epoch: u64) -> bool {
        let Ok(mut peer) = dial(&self.dialer, peer_url, node_id) else {
            return false;
        };
        let mut request = tonic::Request::new(crate::proto::peer::HelloRequest {});
        request.set_timeout(Duration::from_secs(2));
        match peer.hello(request).await {
            Ok(r) => {
                let r = r.into_inner();
                r.cluster_id == self.cluster_id && r.epoch == epoch && r.leader_raft_id != 0
            }
            Err(e) => {
                tracing::debug!(peer = node_id, error = %e.message(), "not answering yet");
                false
            }
        }
    }
}
