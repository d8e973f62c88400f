//! Raft (openraft 0.9): every mutation is a log entry; the state machine applies committed
//! entries to the MVCC store. See docs/raft.md for why 0.9.25 was chosen.

#![allow(clippy::result_large_err)] // openraft fixes the 224-byte StorageError type

pub mod log_store;
pub mod network;
pub mod proposer;
pub mod state_machine;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use crate::mvcc::{Command, CommandResult};

openraft::declare_raft_types!(
    /// netsy's Raft type configuration.
    pub TypeConfig:
        // One log entry carries a batch of commands (see `proposer`).
        D = Vec<Command>,
        R = Vec<CommandResult>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NetsyRaft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;

pub fn raft_config(cluster_id: &str) -> openraft::Config {
    openraft::Config {
        cluster_name: cluster_id.to_string(),
        heartbeat_interval: 100,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        // Snapshots let the log be purged; the object-storage archive makes them durable.
        // An entry is a batch of up to 1024 commands, so 10,000 entries bound raft.db.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10_000),
        max_in_snapshot_log_to_keep: 1_000,
        max_payload_entries: 512,
        ..Default::default()
    }
}

/// Starts Raft for this node and, on a pristine single-member deployment, initialises
/// the one-member cluster.
pub async fn start(
    raft_id: NodeId,
    advertise_peer: &str,
    cluster_id: &str,
    log: log_store::LogStore,
    sm: state_machine::StateMachine,
) -> Result<NetsyRaft, Box<dyn std::error::Error + Send + Sync>> {
    let config = Arc::new(raft_config(cluster_id).validate()?);
    let raft = openraft::Raft::new(raft_id, config, network::Network, log, sm).await?;
    if !raft.is_initialized().await? {
        let mut members = BTreeMap::new();
        members.insert(
            raft_id,
            openraft::BasicNode {
                addr: advertise_peer.to_string(),
            },
        );
        raft.initialize(members).await?;
    }
    Ok(raft)
}

/// Waits until this node sees a leader (itself, in a single-member cluster).
pub async fn wait_for_leader(raft: &NetsyRaft, timeout: Duration) -> bool {
    raft.wait(Some(timeout))
        .metrics(|m| m.current_leader.is_some() && m.last_applied.is_some(), "leader elected")
        .await
        .is_ok()
}

pub(crate) fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
