//! Raft (openraft 0.9): every mutation is a log entry; the state machine applies committed
//! entries to the MVCC store. See docs/raft.md for why 0.9.25 was chosen.

#![allow(clippy::result_large_err)] // openraft fixes the 224-byte StorageError type

pub mod clock;
pub mod codec;
pub mod gate;
pub mod network;
pub mod peers;
pub mod proposer;
pub mod purge;
pub mod state_machine;
pub mod wal;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::RaftSettings;
use crate::mvcc::{Command, CommandResult};

openraft::declare_raft_types!(
    /// netsy's Raft type configuration.
    pub TypeConfig:
        // One log entry carries a batch of commands (see `proposer`).
        D = Batch,
        R = Vec<CommandResult>,
        NodeId = u64,
        Node = PeerNode,
        Entry = openraft::Entry<TypeConfig>,
        // A snapshot is a file (a copy of the state database); openraft reads and
        // writes it in `snapshot_max_chunk_size` chunks, so it is never held in memory.
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// What a normal log entry carries: the commands the leader gathered into it (applied
/// in order, one revision each at most) and the leader's wall-clock time when it
/// proposed them (`clock::CommitClock`; 0 in entries of netsy before 0.3).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Batch {
    pub commands: Vec<Command>,
    pub unix_ms: u64,
    /// On a standby: the primary's archived entry it replays (`standby`).
    pub source: Option<SourcePosition>,
}

impl Batch {
    pub fn new(commands: Vec<Command>, unix_ms: u64) -> Batch {
        Batch {
            commands,
            unix_ms,
            source: None,
        }
    }
}

/// An entry of another cluster's archive: its epoch and index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct SourcePosition {
    pub epoch: u64,
    pub index: u64,
}

/// A Raft member: which pod it is and where to reach it (kept in the membership config,
/// so every node can list members and dial peers).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PeerNode {
    /// The node id (pod name); also the name in its `netsy://…/peer/{name}` certificate.
    pub name: String,
    /// Its stable etcd member id.
    pub member_id: u64,
    #[serde(alias = "addr")]
    pub peer_url: String,
    pub client_url: String,
}

impl std::fmt::Display for PeerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_url)
    }
}

pub type NetsyRaft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;

pub fn raft_config(cluster_id: &str, tuning: &RaftSettings) -> openraft::Config {
    openraft::Config {
        cluster_name: cluster_id.to_string(),
        // A follower of openraft 0.9 starts an election leader_lease (= the maximum
        // election timeout) plus a random election timeout after the last heartbeat:
        // 1.5–2 s after a leader dies, comparable to etcd's defaults (100 ms / 1 s).
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        // Snapshots let the log be purged; the object-storage archive makes them durable.
        // openraft counts entries; the server also asks for one by log bytes
        // (`raft.snapshot_log_bytes`).
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(tuning.snapshot_log_entries),
        // openraft never purges by itself (it would purge entries a member being sent a
        // snapshot needs next): `purge::run` asks for each purge.
        max_in_snapshot_log_to_keep: u64::MAX,
        max_payload_entries: 512,
        // Snapshot chunks travel over gRPC; each chunk gets this long (ms).
        snapshot_max_chunk_size: tuning.snapshot_chunk_bytes,
        install_snapshot_timeout: 5_000,
        ..Default::default()
    }
}

/// Starts Raft for this node over its stores; talking to other members goes through
/// `peers`. Whether to initialise a cluster or join one is the caller's decision.
pub async fn start(
    raft_id: NodeId,
    cluster_id: &str,
    tuning: &RaftSettings,
    peers: Arc<peers::Peers>,
    mut log: wal::LogStore,
    sm: state_machine::StateMachine,
    gate: &gate::ArchiveGate,
) -> Result<NetsyRaft, Box<dyn std::error::Error + Send + Sync>> {
    // The uploader learns each commit from the log store, not from the state machine,
    // which in `object-storage` durability is held until the upload it waits for.
    log.report_commits_to(gate.committed_sender());
    let config = Arc::new(raft_config(cluster_id, tuning).validate()?);
    let sends = Arc::new(purge::SnapshotSends::default());
    let network = network::Network {
        peers,
        self_id: raft_id,
        uploaded: gate.uploaded(),
        sends: sends.clone(),
    };
    let purged_log = log.clone();
    let raft = openraft::Raft::new(raft_id, config, network, log, sm).await?;
    tokio::spawn(purge::run(
        raft.clone(),
        purged_log,
        sends,
        purge::keep_entries(tuning.snapshot_log_entries),
        tuning.snapshot_log_bytes,
    ));
    Ok(raft)
}

/// Forms a new one-member cluster of this node (which then admits the others through
/// `Join`), unless the log already holds a membership.
pub async fn initialize_alone(raft: &NetsyRaft, raft_id: NodeId, me: PeerNode) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if !raft.is_initialized().await? {
        let mut members = BTreeMap::new();
        members.insert(raft_id, me);
        raft.initialize(members).await?;
    }
    Ok(())
}

/// Waits until this node sees a leader (itself, in a single-member cluster).
pub async fn wait_for_leader(raft: &NetsyRaft, timeout: Duration) -> bool {
    raft.wait(Some(timeout))
        .metrics(|m| m.current_leader.is_some() && m.last_applied.is_some(), "leader elected")
        .await
        .is_ok()
}

/// This node's progress for the archive's leader-only tasks (`archive::log::Progress`:
/// whether it leads, the last applied index), following openraft's metrics until Raft
/// stops or every receiver is gone.
pub fn archive_progress(raft: &NetsyRaft, raft_id: NodeId) -> tokio::sync::watch::Receiver<crate::archive::log::Progress> {
    let progress = move |m: &openraft::RaftMetrics<NodeId, PeerNode>| crate::archive::log::Progress {
        leader: m.current_leader == Some(raft_id),
        applied: m.last_applied.map_or(0, |l| l.index),
    };
    let mut metrics = raft.metrics();
    let (tx, rx) = tokio::sync::watch::channel(progress(&metrics.borrow_and_update()));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tx.closed() => return,
            }
            let now = progress(&metrics.borrow_and_update());
            tx.send_if_modified(|p| std::mem::replace(p, now) != now);
        }
    });
    rx
}

/// Counts the leaders a member sees, as etcd's `etcd_server_leader_changes_seen_total`
/// does: every (term, leader) pair with a leader counts once, the first one included.
#[derive(Debug, Default)]
pub struct LeaderChanges {
    last: Option<(u64, NodeId)>,
}

impl LeaderChanges {
    /// Whether `leader` in `term` is a leader not seen before.
    pub fn observe(&mut self, term: u64, leader: Option<NodeId>) -> bool {
        let Some(leader) = leader else {
            return false;
        };
        if self.last == Some((term, leader)) {
            return false;
        }
        // A later report of the same leader in a higher term (it was re-elected) is a
        // new election won; a stale lower term never counts.
        if self.last.is_some_and(|(t, _)| term < t) {
            return false;
        }
        self.last = Some((term, leader));
        true
    }
}

/// Follows openraft's metrics until Raft stops, counting leader changes into
/// `etcd_server_leader_changes_seen_total`.
pub fn count_leader_changes(raft: &NetsyRaft) {
    let mut metrics = raft.metrics();
    tokio::spawn(async move {
        let mut changes = LeaderChanges::default();
        loop {
            let (term, leader) = {
                let m = metrics.borrow_and_update();
                (m.current_term, m.current_leader)
            };
            if changes.observe(term, leader) {
                crate::metrics::LEADER_CHANGES.inc();
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
}

pub(crate) fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::LeaderChanges;

    #[test]
    fn leader_changes_count_each_term_and_leader_once() {
        let mut c = LeaderChanges::default();
        assert!(!c.observe(0, None), "no leader yet");
        assert!(c.observe(1, Some(7)), "the first leader seen counts");
        assert!(!c.observe(1, Some(7)), "the same report again");
        assert!(!c.observe(2, None), "an election in progress");
        assert!(c.observe(2, Some(9)), "another member won");
        assert!(c.observe(3, Some(9)), "re-elected in a new term");
        assert!(!c.observe(2, Some(7)), "a stale report of an older term");
        assert!(c.observe(5, Some(7)));
    }
}
