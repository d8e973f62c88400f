//! The replica: this member's view of the replicated keyspace, and the one place the
//! upper floors (the etcd API, the health port, the peer port, the mesh authority) go
//! through to read and change it.
//!
//! It owns the Raft handle, the proposer and the read barrier, leader routing and
//! forwarding (`route`, `forward`), waiting for applies, the quota, lease keep-alive
//! routing, membership and leadership transfer. Its operations are typed: each takes
//! etcd's request (or plain values) and returns its own response type, or a
//! `CoreError` that says what went wrong in the replica's terms.

pub mod compactor;
mod error;
pub mod forward;
mod lease;
mod members;
mod quota;
mod read;
mod route;
mod standby;
mod transfer;
mod write;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, watch};

pub use error::CoreError;
pub use members::{JoinFailed, MemberInfo, JOIN_TIMEOUT, JOIN_WAIT};
pub use read::{Held, SnapshotCopy, READ_MEMORY_WAIT};
pub use route::REQUEST_TIMEOUT;
pub use transfer::TRANSFER_TIMEOUT;
pub use write::MAX_TXN_NESTING;

use crate::config::{Durability, Limits};
use crate::lease::Lessor;
use crate::mvcc::{CommitBatch, ReadBudget, Reader, Store};
use crate::proto::etcdserverpb::ResponseHeader;
use crate::raft::gate::ArchiveGate;
use crate::raft::peers::Peers;
use crate::raft::proposer::{Pace, Proposer, ReadBarrier};
use crate::raft::wal::LogStore;
use crate::raft::{NetsyRaft, NodeId, PeerNode};

/// Who this member is.
#[derive(Debug, Clone)]
pub struct Ids {
    /// etcd's cluster id (a stable hash of the configured cluster id).
    pub cluster_hash: u64,
    /// The stable etcd member id of this pod.
    pub member_id: u64,
    /// The Raft node id of this incarnation.
    pub raft_id: NodeId,
    /// This member as the Raft membership records it.
    pub me: PeerNode,
}

/// What the replica's operations are bounded by.
#[derive(Debug, Clone)]
pub struct Settings {
    pub limits: Limits,
    /// A standby cluster: client writes, leases and compaction are refused until it is
    /// promoted (`Replica::promote`).
    pub standby: bool,
    pub durability: Durability,
    /// `quorum` durability stops writes while the upload backlog exceeds this.
    pub max_backlog_bytes: u64,
    /// Where scratch copies (snapshots being streamed) are written.
    pub scratch: PathBuf,
}

/// The stores and tasks a replica runs over, opened by the server.
pub struct Parts {
    pub raft: NetsyRaft,
    /// The writer: the state machine applies through it; defragmentation and the WAL
    /// checkpointer's last pass lock it too.
    pub store: Arc<Mutex<Store>>,
    pub reader: Reader,
    /// The Raft log (for the archive backlog and the snapshot trigger).
    pub log: LogStore,
    pub peers: Arc<Peers>,
    /// How far the log is committed and in object storage (`raft::gate`).
    pub gate: ArchiveGate,
    /// The newest log index applied to this member's store.
    pub applied: watch::Receiver<u64>,
}

/// How long a leader may go without a quorum's acknowledgement before its members count
/// as having no leader (see `Replica::has_leader`): two of netsy's longest election
/// timeouts, by when the others have elected a new leader.
const QUORUM_SILENCE: std::time::Duration = std::time::Duration::from_millis(2000);

pub struct Replica {
    ids: Ids,
    settings: Settings,
    raft: NetsyRaft,
    proposer: Proposer,
    reads: ReadBarrier,
    store: Arc<Mutex<Store>>,
    reader: Reader,
    commits: broadcast::Sender<Arc<CommitBatch>>,
    /// The committed store revision (see `Store::revision_handle`).
    revision: Arc<AtomicI64>,
    quota: quota::Quota,
    lessor: Lessor,
    log: LogStore,
    gate: ArchiveGate,
    /// The last log index in object storage (the gate's).
    archived: watch::Receiver<u64>,
    applied: watch::Receiver<u64>,
    peers: Arc<Peers>,
    /// This member's writes on their way to the leader.
    forwarder: forward::Forwarder,
    /// Membership changes run one at a time (openraft requires it).
    membership_lock: tokio::sync::Mutex<()>,
    /// Proposals share it; a leadership transfer holds it exclusively, so none is
    /// started while the transferee catches up.
    handover: tokio::sync::RwLock<()>,
    /// (term, index): see `Replica::read_floor`.
    read_floor: Mutex<(u64, u64)>,
    /// While set, this member refuses client writes (a standby not promoted yet).
    read_only: std::sync::atomic::AtomicBool,
    /// The memory unary reads may hold at once (`read.rs`).
    read_budget: ReadBudget,
    /// How far this member has deleted compacted history (`mvcc::reclaim`).
    reclaim: watch::Receiver<crate::mvcc::Reclaim>,
    /// Set once the member begins to stop (`begin_stopping`).
    stopping: tokio_util::sync::CancellationToken,
}

impl Replica {
    pub fn new(ids: Ids, settings: Settings, parts: Parts) -> Result<Replica, CoreError> {
        let (commits, revision, reclaim) = {
            let store = parts
                .store
                .lock()
                .map_err(|_| CoreError::Apply(crate::mvcc::MvccError::Storage("store lock poisoned".into())))?;
            (store.commit_sender(), store.revision_handle(), store.reclaim_progress())
        };
        let quota = quota::Quota::load(&parts.reader)?;
        let replica = Replica {
            ids,
            proposer: Proposer::start(parts.raft.clone(), parts.log.commit_clock(), pace(settings.durability, &parts.gate)),
            reads: ReadBarrier::start(parts.raft.clone()),
            raft: parts.raft,
            store: parts.store,
            reader: parts.reader,
            commits,
            revision,
            quota,
            lessor: Lessor::default(),
            log: parts.log,
            archived: parts.gate.uploaded(),
            gate: parts.gate,
            applied: parts.applied,
            peers: parts.peers,
            forwarder: forward::Forwarder::default(),
            membership_lock: tokio::sync::Mutex::new(()),
            handover: tokio::sync::RwLock::new(()),
            read_floor: Mutex::new((0, 0)),
            read_only: std::sync::atomic::AtomicBool::new(settings.standby),
            read_budget: ReadBudget::new(settings.limits.read_memory_bytes),
            reclaim,
            stopping: tokio_util::sync::CancellationToken::new(),
            settings,
        };
        replica.refresh_db_size();
        Ok(replica)
    }

    pub fn ids(&self) -> &Ids {
        &self.ids
    }

    /// The Raft handle, for the peer port's Raft RPCs and the server's start and stop.
    pub fn raft(&self) -> &NetsyRaft {
        &self.raft
    }

    /// Connections to the other members' peer ports.
    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    /// The reader pool over this member's state (watches replay history through it).
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// The writer store, for the WAL checkpointer's last pass.
    pub fn store(&self) -> &Arc<Mutex<Store>> {
        &self.store
    }

    /// Every batch this member applies, as it is committed to its store.
    pub fn subscribe_commits(&self) -> broadcast::Receiver<Arc<CommitBatch>> {
        self.commits.subscribe()
    }

    /// The last log index in object storage.
    pub fn archived(&self) -> watch::Receiver<u64> {
        self.archived.clone()
    }

    /// A leader told this follower how far the log is in object storage.
    pub fn leader_uploaded(&self, index: u64) {
        self.gate.leader_uploaded(index);
    }

    /// Whether this node is the Raft leader.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.ids.raft_id)
    }

    /// Whether this node currently knows a Raft leader, in etcd's sense (`hasleader`): a
    /// leader that has not heard from a quorum for `QUORUM_SILENCE` does not count. An
    /// openraft 0.9 leader cut off from the others keeps its role, where etcd's steps down
    /// after an election timeout (CheckQuorum) and its members then have no leader.
    pub fn has_leader(&self) -> bool {
        self.live_leader(&self.raft.metrics().borrow())
    }

    fn live_leader(&self, m: &openraft::RaftMetrics<NodeId, crate::raft::PeerNode>) -> bool {
        match m.current_leader {
            None => false,
            Some(leader) if leader == self.ids.raft_id => {
                let alone = m.membership_config.membership().voter_ids().nth(1).is_none();
                alone || m.millis_since_quorum_ack.is_none_or(|ms| ms <= QUORUM_SILENCE.as_millis() as u64)
            }
            Some(_) => true,
        }
    }

    /// The Raft id of the leader this node knows (0: none).
    pub fn leader_raft_id(&self) -> NodeId {
        self.raft.metrics().borrow().current_leader.unwrap_or(0)
    }

    /// The member begins a graceful stop: its long-lived streams (watches, lease
    /// keep-alives) end with etcd's "server stopped" (Unavailable), which clients answer
    /// by going on through another member, while requests in flight are still answered.
    pub fn begin_stopping(&self) {
        self.stopping.cancel();
    }

    /// Resolves once the member began to stop.
    pub async fn stopping(&self) {
        self.stopping.cancelled().await
    }

    /// Ready to serve: a leader is known and the log this node started with is applied.
    pub fn is_ready(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.current_leader.is_some() && m.last_applied.is_some()
    }

    /// Resolves when no leader is known (see `has_leader`) or Raft stops.
    pub async fn leader_lost(&self) {
        let mut metrics = self.raft.metrics();
        loop {
            if !self.live_leader(&metrics.borrow()) {
                return;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// A response header with this node's ids, the current Raft term and `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.ids.cluster_hash,
            member_id: self.ids.member_id,
            revision,
            // Read without cloning the metrics struct: this runs for every response.
            raft_term: self.raft.metrics().borrow().current_term,
        }
    }

    /// A full header at the current store revision.
    pub fn current_header(&self) -> Option<ResponseHeader> {
        Some(self.header(self.revision.load(Ordering::Acquire)))
    }

    /// The header of the Cluster service's responses: ids and term, no revision (etcd's
    /// cluster server builds its header without one).
    pub fn cluster_header(&self) -> Option<ResponseHeader> {
        Some(self.header(0))
    }

    /// Replaces a response's revision-only header with the full one (ids, term).
    fn fill_header(&self, header: &mut Option<ResponseHeader>) {
        let rev = header.as_ref().map_or(0, |h| h.revision);
        *header = Some(self.header(rev));
    }

    /// Sets the gauges that follow Raft and the store (for a `/metrics` scrape).
    pub fn publish_metrics(&self) {
        {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            crate::metrics::HAS_LEADER.set(m.current_leader.is_some() as i64);
            crate::metrics::IS_LEADER.set((m.current_leader == Some(self.ids.raft_id)) as i64);
            crate::metrics::APPLIED_INDEX.set(m.last_applied.map_or(0, |l| l.index) as i64);
            crate::metrics::LAST_LOG_INDEX.set(m.last_log_index.unwrap_or(0) as i64);
        }
        if let Ok(revs) = self.reader.revisions() {
            crate::metrics::CURRENT_REVISION.set(revs.current);
            crate::metrics::COMPACT_REVISION.set(revs.compacted);
        }
        if let Ok(alarms) = self.reader.alarms() {
            crate::metrics::publish_alarms(|name| {
                alarms
                    .iter()
                    .any(|a| crate::proto::etcdserverpb::AlarmType::try_from(a.alarm).is_ok_and(|t| t.as_str_name() == name))
            });
        }
        crate::metrics::QUOTA_BACKEND_BYTES.set(self.settings.limits.quota_backend_bytes as i64);
        crate::metrics::READ_MEMORY_BUDGET.set(self.read_budget.limit() as i64);
        crate::metrics::ARCHIVE_BACKLOG_LIMIT_BYTES.set(self.settings.max_backlog_bytes as i64);
    }

    /// Bytes of log entries after this member's newest Raft snapshot.
    pub fn log_since_snapshot(&self) -> u64 {
        let since = self.raft.metrics().borrow().snapshot.map_or(0, |l| l.index);
        self.log.bytes_after(since).unwrap_or(0)
    }

    /// On shutdown, gives the uploader a moment to ship what was applied, so a clean stop
    /// leaves nothing that only the local disk holds (`quorum` uploads asynchronously).
    pub async fn flush_archive(&self, timeout: std::time::Duration) {
        if !self.is_leader() {
            return;
        }
        let applied = self.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        let mut archived = self.archived.clone();
        let reached = tokio::time::timeout(timeout, archived.wait_for(|w| *w >= applied))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            tracing::info!(index = applied, "everything applied is in object storage");
        } else {
            tracing::warn!(
                applied,
                uploaded = *self.archived.borrow(),
                "stopping before object storage has every entry; the rest stays in the local Raft log"
            );
        }
    }
}

/// When the next batch of writes goes to openraft (`raft::proposer::Pace`).
fn pace(durability: Durability, gate: &ArchiveGate) -> Pace {
    match durability {
        Durability::ObjectStorage => Pace::Committed(gate.committed()),
        _ => Pace::Applied,
    }
}
