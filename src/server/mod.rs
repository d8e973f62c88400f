//! The composition root: opens the data directory, starts Raft over the SQLite stores,
//! and serves the etcd gRPC API and the health/metrics endpoint.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use object_store::ObjectStore;

use crate::api::errors::ApiError;
use crate::archive::bootstrap::Local;
use crate::archive::manifest::Member;
use crate::config::{AutoCompactionPolicy, Config, Durability};
use crate::mvcc::{Command, CommandResult, CommitBatch, MvccError, Reader, Store};
use crate::proto::etcdserverpb::{AlarmMember, AlarmType, CompactionRequest, ResponseHeader};
use crate::raft::proposer::{Proposer, ReadBarrier};
use crate::raft::{self, NetsyRaft};

pub mod forward;
pub mod membership;
mod routing;
mod transfer;

pub use routing::REQUEST_TIMEOUT;

use crate::archive::bootstrap::Mode;

/// How long a starting node waits to join and see a leader (a new member catches up,
/// snapshot included, before it becomes a voter).
const JOIN_WAIT: Duration = Duration::from_secs(180);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {path}: {msg}")]
    DataDir { path: PathBuf, msg: String },
    #[error("another netsy process holds the data directory {0} (lock file LOCK); stop it or use another NETSY_DATA_DIR")]
    Locked(PathBuf),
    #[error("storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("object storage: {0}")]
    Archive(String),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("mesh authority: {0}")]
    Mesh(#[from] crate::mesh::MeshError),
    #[error("object storage moved to epoch {current} while this node serves epoch {own}: the cluster was rebuilt from object storage without it; stopping, so that a restart rejoins the new epoch")]
    Fenced { own: u64, current: u64 },
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The format of `node.json` this netsy writes (netsy 0.1 wrote none: 1).
const IDENTITY_FORMAT: u32 = 1;

/// Identity of this node, kept in `node.json` in the data directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeIdentity {
    #[serde(default = "first_format")]
    pub format_version: u32,
    /// etcd member id, stable for the node's name (see `archive::manifest`).
    pub member_id: u64,
    /// Raft node id of this incarnation.
    pub raft_id: u64,
    /// The archive epoch the data directory's Raft log belongs to.
    #[serde(default = "first_epoch")]
    pub epoch: u64,
}

fn first_epoch() -> u64 {
    1
}

fn first_format() -> u32 {
    1
}

/// Everything a request handler needs.
pub struct Node {
    pub config: Config,
    pub identity: NodeIdentity,
    pub cluster_hash: u64,
    pub raft: NetsyRaft,
    pub proposer: Proposer,
    pub reads: ReadBarrier,
    pub store: Arc<Mutex<Store>>,
    pub reader: Reader,
    pub commits: broadcast::Sender<Arc<CommitBatch>>,
    /// The committed store revision (see `Store::revision_handle`).
    pub revision: Arc<AtomicI64>,
    pub nospace: AtomicBool,
    pub db_size: AtomicI64,
    pub lessor: crate::lease::Lessor,
    /// Ships committed entries to object storage; taken by `serve`.
    pub uploader: Mutex<Option<crate::archive::uploader::Uploader>>,
    /// Uploads snapshots and collects garbage in the archive; taken by `serve`.
    pub snapshotter: Mutex<Option<crate::archive::snapshotter::Snapshotter>>,
    /// The mesh authority's checked keys, until `serve` starts it.
    mesh: Mutex<Option<crate::mesh::service::Material>>,
    /// The last log index in object storage.
    pub archived: tokio::sync::watch::Receiver<u64>,
    /// The newest log index applied to this member's store.
    pub applied: tokio::sync::watch::Receiver<u64>,
    /// The object store (for the epoch fence; uploads go through `uploader`).
    objects: Arc<dyn ObjectStore>,
    /// The Raft log, for the archive backlog check.
    log: raft::log_store::LogStore,
    /// `quorum` durability: set while the upload backlog exceeds `max_backlog_bytes`.
    pub backlog_full: AtomicBool,
    /// This node's certificates; `None` serves plaintext.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// Connections to the other members' peer ports.
    pub peers: Arc<raft::peers::Peers>,
    /// This member's writes on their way to the leader.
    forwarder: forward::Forwarder,
    /// Membership changes run one at a time (openraft requires it).
    membership_lock: tokio::sync::Mutex<()>,
    /// Proposals share it; a leadership transfer holds it exclusively, so none is
    /// started while the transferee catches up.
    handover: tokio::sync::RwLock<()>,
    /// Stops the peer port's server (it runs from `start`, before `serve`: elections and
    /// joins need it).
    peer_stop: CancellationToken,
    _lock: File,
}

/// FNV-1a, for a stable numeric cluster id derived from the configured name.
pub fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn data_dir_error(path: &Path, msg: impl std::fmt::Display) -> StartError {
    StartError::DataDir {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// Creates the data directory, checks it is writable and takes its lock.
fn prepare_data_dir(dir: &Path) -> Result<File, StartError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| data_dir_error(dir, format!("cannot create it: {e}; set NETSY_DATA_DIR to a writable directory")))?;
    let lock_path = dir.join("LOCK");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| data_dir_error(dir, format!("is not writable: {e}; set NETSY_DATA_DIR to a writable directory")))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(data_dir_error(dir, format!("cannot lock LOCK: {e}"))),
    }
}

fn load_identity(dir: &Path) -> Result<Option<NodeIdentity>, StartError> {
    match std::fs::read(dir.join("node.json")) {
        Ok(raw) => {
            let identity: NodeIdentity =
                serde_json::from_slice(&raw).map_err(|e| data_dir_error(dir, format!("node.json is corrupt: {e}")))?;
            if identity.format_version > IDENTITY_FORMAT {
                return Err(data_dir_error(
                    dir,
                    format!(
                        "node.json is in format {}, newer than this netsy reads (up to {IDENTITY_FORMAT}); run a netsy at least as new as the one that wrote it",
                        identity.format_version
                    ),
                ));
            }
            Ok(Some(identity))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(data_dir_error(dir, format!("cannot read node.json: {e}"))),
    }
}

fn save_identity(dir: &Path, identity: &NodeIdentity) -> Result<(), StartError> {
    let bytes = serde_json::to_vec_pretty(identity).map_err(|e| data_dir_error(dir, e))?;
    crate::fsutil::write_durably(&dir.join("node.json"), &bytes).map_err(|e| data_dir_error(dir, e))
}

/// Moves everything in the data directory but its lock into `stale-epoch-{epoch}` (kept
/// for inspection; replaced if it exists). Returns that directory.
fn set_aside(dir: &Path, epoch: u64) -> Result<PathBuf, StartError> {
    let aside = dir.join(format!("stale-epoch-{epoch}"));
    if aside.exists() {
        std::fs::remove_dir_all(&aside).map_err(|e| data_dir_error(dir, format!("cannot remove {}: {e}", aside.display())))?;
    }
    std::fs::create_dir_all(&aside).map_err(|e| data_dir_error(dir, e))?;
    let entries = std::fs::read_dir(dir).map_err(|e| data_dir_error(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| data_dir_error(dir, e))?;
        let name = entry.file_name();
        if name == "LOCK" || name.to_string_lossy().starts_with("stale-epoch-") {
            continue;
        }
        std::fs::rename(entry.path(), aside.join(&name))
            .map_err(|e| data_dir_error(dir, format!("cannot move {} aside: {e}", entry.path().display())))?;
    }
    Ok(aside)
}

/// Rebuilds the state database if the OS restarted since it was last opened (its commits
/// do not sync; see `mvcc::boot`), then records this boot as the one it is opened in.
fn check_state_survived(dir: &Path, state_path: &Path, snapshot_dir: &Path, log_is_whole: bool) -> Result<(), StartError> {
    use crate::mvcc::boot;
    let marker = dir.join("state.boot");
    let current = boot::current_boot();
    if state_path.exists() {
        let trust = boot::check(&marker, current.as_deref()).map_err(|e| data_dir_error(dir, format!("cannot read state.boot: {e}")))?;
        if let boot::Trust::LostPageCache { recorded } = trust {
            let rebuilt = raft::state_machine::rebuild_state(state_path, snapshot_dir, log_is_whole).map_err(|e| data_dir_error(dir, e))?;
            tracing::warn!(
                recorded_boot = %recorded,
                ?rebuilt,
                "the OS restarted since the state database was last opened, so its unsynced writes may be lost: \
                 rebuilt it from the local snapshot and the Raft log (re-applied once a leader is known)"
            );
        }
    }
    boot::record(&marker, current.as_deref()).map_err(|e| data_dir_error(dir, format!("cannot write state.boot: {e}")))
}

/// What the data directory holds (see `archive::bootstrap`).
fn local_state(dir: &Path, identity: Option<&NodeIdentity>) -> Result<Local, StartError> {
    let state = dir.join("state.db").exists();
    let log = dir.join("raft.db").exists();
    match (state, log, identity) {
        (false, false, _) => Ok(Local::Empty),
        (true, false, _) => Ok(Local::Seeded),
        (true, true, Some(id)) => Ok(Local::Full {
            epoch: id.epoch,
            member: Member {
                member_id: id.member_id,
                raft_id: id.raft_id,
            },
        }),
        _ => Err(data_dir_error(
            dir,
            "is incomplete (a Raft log without its state database or node.json); empty it to rebuild this node from object storage",
        )),
    }
}

impl Node {
    /// Opens the stores (rebuilding them from object storage when the data directory is
    /// empty) and starts Raft; returns once this node can serve (has a leader).
    /// `tls`: this node's certificates, already loaded and checked (`Tls::from_config`).
    pub async fn start(config: Config, tls: Option<Arc<crate::tls::Tls>>) -> Result<Arc<Node>, StartError> {
        let objects = crate::archive::build(&config.storage).map_err(|e| StartError::Storage(e.to_string()))?;
        Self::start_with(config, objects, tls).await
    }

    /// `start` over a given object store, rather than the one `storage` names.
    pub async fn start_with_store(config: Config, objects: Arc<dyn ObjectStore>) -> Result<Arc<Node>, StartError> {
        // Wrong certificates fail the start before any slow work (such as a restore).
        let tls = crate::tls::Tls::from_config(&config)?;
        Self::start_with(config, objects, tls).await
    }

    async fn start_with(config: Config, objects: Arc<dyn ObjectStore>, tls: Option<Arc<crate::tls::Tls>>) -> Result<Arc<Node>, StartError> {
        // A mesh genesis or key that does not check out fails the start before any slow work.
        let mesh = config.mesh.as_ref().map(crate::mesh::service::Material::load).transpose()?;
        // Bind the peer port first: a port clash should fail before a restore, too.
        let peer_listener = tokio::net::TcpListener::bind(config.bind_peer)
            .await
            .map_err(|source| StartError::Bind {
                key: "NETSY_BIND_PEER",
                addr: config.bind_peer,
                source,
            })?;
        let dir = config.data_dir.clone();
        let lock = prepare_data_dir(&dir)?;
        let local = local_state(&dir, load_identity(&dir)?.as_ref())?;
        let state_path = dir.join("state.db");
        let scratch = dir.join("snapshots");
        let dialer = crate::tls::connect::Dialer::new(tls.clone(), config.bind_peer);
        let probe = raft::peers::HelloProbe {
            dialer: dialer.clone(),
            cluster_id: config.cluster_id.clone(),
        };
        use crate::archive::bootstrap::{prepare, BootstrapError};
        let replay = raft::state_machine::archive_replay();
        let startup = match prepare(&objects, &config, local, &state_path, &scratch, &probe, &replay).await {
            // The cluster was rebuilt from object storage without this node: what its disk
            // holds is of an older epoch (anything acknowledged there and not archived was
            // already given up by that rebuild). Set it aside and rejoin as a new
            // incarnation.
            Err(BootstrapError::StaleDataDir { local, current }) if local < current => {
                let aside = set_aside(&dir, local)?;
                tracing::warn!(
                    local,
                    current,
                    aside = %aside.display(),
                    "this data directory holds an older epoch than object storage (the cluster was rebuilt without this node): set it aside, rejoining as a new incarnation"
                );
                prepare(&objects, &config, Local::Empty, &state_path, &scratch, &probe, &replay).await
            }
            other => other,
        }
        .map_err(|e| StartError::Archive(e.to_string()))?;
        let identity = NodeIdentity {
            format_version: IDENTITY_FORMAT,
            member_id: startup.member.member_id,
            raft_id: startup.member.raft_id,
            epoch: startup.epoch,
        };
        save_identity(&dir, &identity)?;
        if let Some((report, restored)) = &startup.restored {
            std::fs::rename(restored, &state_path)
                .and_then(|_| crate::fsutil::sync_parent(&state_path))
                .map_err(|e| data_dir_error(&dir, format!("cannot move the restored state into place: {e}")))?;
            tracing::info!(
                revision = report.revision,
                entries = report.entries,
                elapsed_ms = report.elapsed_ms,
                epoch = identity.epoch,
                "rebuilt from object storage"
            );
        }
        let log = raft::log_store::LogStore::open(&dir.join("raft.db")).map_err(|e| StartError::Storage(e.to_string()))?;
        let log_is_whole = log.holds_every_entry().map_err(|e| StartError::Storage(e.to_string()))?;
        check_state_survived(&dir, &state_path, &scratch, log_is_whole)?;
        let mut store = Store::open(&state_path).map_err(|e| StartError::Storage(e.to_string()))?;
        store.checkpoint_in_background().map_err(|e| StartError::Storage(e.to_string()))?;
        let commits = store.commit_sender();
        let revision = store.revision_handle();
        let store = Arc::new(Mutex::new(store));
        let reader = Reader::new(&state_path);
        let sm = raft::state_machine::StateMachine::new(store.clone(), reader.clone(), &scratch)
            .map_err(|e| StartError::Storage(e.to_string()))?;
        sm.ensure_local_base(log_is_whole)
            .await
            .map_err(|e| StartError::Storage(e.to_string()))?;
        let applied = sm.applied_index();
        let log_reader = log.clone();
        let peers = raft::peers::Peers::new(dialer, identity.raft_id);
        let raft = raft::start(identity.raft_id, &config.cluster_id, &config.raft, peers.clone(), log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let progress = raft::archive_progress(&raft, identity.raft_id);
        let uploader = crate::archive::uploader::Uploader::new(
            objects.clone(),
            Arc::new(log_reader.clone()),
            progress.clone(),
            crate::archive::uploader::UploaderConfig {
                epoch: identity.epoch,
                segment_max_bytes: config.archive.segment_max_bytes,
                segment_max_delay: config.archive.segment_max_delay,
                eager: config.durability == Durability::ObjectStorage,
            },
        );
        let archived = uploader.watermark();
        let snapshotter = crate::archive::snapshotter::Snapshotter {
            store: objects.clone(),
            reader: reader.clone(),
            progress,
            replay,
            cluster_id: config.cluster_id.clone(),
            epoch: identity.epoch,
            policy: config.archive.clone(),
            scratch,
            uploaded_bytes: uploader.uploaded_bytes(),
        };
        let nospace = reader
            .alarms()
            .map_err(|e| StartError::Storage(e.to_string()))?
            .iter()
            .any(|a| a.alarm == AlarmType::Nospace as i32);
        let node = Arc::new(Node {
            objects,
            cluster_hash: stable_hash(&config.cluster_id),
            config,
            identity,
            proposer: Proposer::start(raft.clone()),
            reads: ReadBarrier::start(raft.clone()),
            raft,
            store,
            reader,
            commits,
            revision,
            nospace: AtomicBool::new(nospace),
            db_size: AtomicI64::new(0),
            lessor: crate::lease::Lessor::default(),
            uploader: Mutex::new(Some(uploader)),
            snapshotter: Mutex::new(Some(snapshotter)),
            mesh: Mutex::new(mesh),
            archived,
            applied,
            log: log_reader,
            backlog_full: AtomicBool::new(false),
            tls,
            peers,
            forwarder: forward::Forwarder::default(),
            membership_lock: tokio::sync::Mutex::new(()),
            handover: tokio::sync::RwLock::new(()),
            peer_stop: CancellationToken::new(),
            _lock: lock,
        });
        node.refresh_db_size();
        node.serve_peers(peer_listener)?;
        let me = node.self_peer_node();
        match startup.mode {
            Mode::Resume => {
                // A member removed while it was away (deregistration_timeout, or etcdctl
                // member remove) never hears from the leader again, and its own log
                // still names the old leader: ask to be admitted (a no-op for a voter).
                // The membership comes from the log; wait until Raft has loaded it.
                let _ = node
                    .raft
                    .wait(Some(Duration::from_secs(10)))
                    .metrics(|m| m.membership_config.membership().nodes().next().is_some(), "membership loaded")
                    .await;
                let via: Vec<(String, String)> = node
                    .members()
                    .into_iter()
                    .filter(|m| m.raft_id != node.identity.raft_id)
                    .map(|m| (m.node.peer_url, m.node.name))
                    .collect();
                if via.is_empty() {
                    tracing::info!("resuming as the only member");
                } else {
                    node.join_via(&via, me).await?;
                }
            }
            Mode::Found => raft::initialize_alone(&node.raft, node.identity.raft_id, me)
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?,
            Mode::Join { via } => node.join_via(&via, me).await?,
        }
        if !raft::wait_for_leader(&node.raft, JOIN_WAIT).await {
            node.stop_peers();
            return Err(StartError::Raft(format!("no leader elected within {}s", JOIN_WAIT.as_secs())));
        }
        Ok(node)
    }

    /// This node as a Raft membership record.
    pub fn self_peer_node(&self) -> raft::PeerNode {
        raft::PeerNode {
            name: self.config.node_id.clone(),
            member_id: self.identity.member_id,
            peer_url: self.config.advertise_peer.clone(),
            client_url: self.config.advertise_client.clone(),
        }
    }

    /// Serves the peer port until `stop_peers`.
    fn serve_peers(self: &Arc<Self>, listener: tokio::net::TcpListener) -> Result<(), StartError> {
        use crate::tls::{listen, Listener};
        let addr = self.config.bind_peer;
        let incoming = listen::Incoming::new(listener, self.tls.clone(), Listener::Peer).map_err(|source| StartError::Bind {
            key: "NETSY_BIND_PEER",
            addr,
            source,
        })?;
        let router = crate::peer::router(self.clone());
        let stop = self.peer_stop.clone();
        tokio::spawn(async move {
            if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop.cancelled_owned()).await {
                tracing::error!(error = %e, "peer gRPC server failed");
            }
        });
        Ok(())
    }

    fn stop_peers(&self) {
        self.peer_stop.cancel();
    }

    /// Asks the running cluster (through any of `via`) to admit this node; retries until
    /// one answers or `JOIN_WAIT` passes.
    async fn join_via(&self, via: &[(String, String)], me: raft::PeerNode) -> Result<(), StartError> {
        use crate::proto::peer::JoinRequest;
        let deadline = tokio::time::Instant::now() + JOIN_WAIT;
        let mut last = String::new();
        loop {
            for (url, name) in via {
                let Ok(mut client) = self.peers.client_at(url, name) else {
                    continue;
                };
                let mut request = tonic::Request::new(JoinRequest {
                    name: me.name.clone(),
                    member_id: me.member_id,
                    raft_id: self.identity.raft_id,
                    peer_url: me.peer_url.clone(),
                    client_url: me.client_url.clone(),
                });
                request.set_timeout(membership::JOIN_TIMEOUT);
                match client.join(request).await {
                    Ok(_) => {
                        tracing::info!(via = %name, raft_id = self.identity.raft_id, "joined the cluster");
                        return Ok(());
                    }
                    Err(e) => last = format!("{name} ({url}): {}", e.message()),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                self.stop_peers();
                return Err(StartError::Raft(format!("could not join the cluster: {last}")));
            }
            tracing::info!(error = %last, "join not accepted yet; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub fn refresh_db_size(&self) {
        if let Ok(s) = self.reader.db_size() {
            self.db_size.store(s.size, Ordering::Relaxed);
            crate::metrics::DB_TOTAL_SIZE.set(s.size);
            crate::metrics::DB_IN_USE_SIZE.set(s.in_use);
        }
    }

    /// Measures the archive upload backlog; in `quorum` durability, writes stop while it
    /// exceeds `archive.max_backlog_bytes` (nothing acknowledged is ever dropped).
    pub fn refresh_backlog(&self) {
        if !self.is_leader() {
            self.backlog_full.store(false, Ordering::Relaxed);
            return;
        }
        let Ok(bytes) = self.log.bytes_after(*self.archived.borrow()) else {
            return;
        };
        crate::metrics::ARCHIVE_BACKLOG_BYTES.set(bytes as i64);
        let full = self.config.durability == Durability::Quorum && bytes > self.config.archive.max_backlog_bytes;
        if full != self.backlog_full.swap(full, Ordering::Relaxed) {
            if full {
                tracing::error!(
                    bytes,
                    limit = self.config.archive.max_backlog_bytes,
                    "object storage backlog is full: rejecting writes until uploads catch up"
                );
            } else {
                tracing::info!(bytes, "object storage backlog drained below the limit: accepting writes again");
            }
        }
    }

    /// Bytes of log entries after this member's newest Raft snapshot.
    fn log_since_snapshot(&self) -> u64 {
        let since = self.raft.metrics().borrow().snapshot.map_or(0, |l| l.index);
        self.log.bytes_after(since).unwrap_or(0)
    }

    /// On shutdown, gives the uploader a moment to ship what was applied, so a clean stop
    /// leaves nothing that only the local disk holds (`quorum` uploads asynchronously).
    pub async fn flush_archive(&self, timeout: Duration) {
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

    /// Whether this node is the Raft leader.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.identity.raft_id)
    }

    /// Whether this node currently knows a Raft leader.
    pub fn has_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader.is_some()
    }

    /// A response header with this node's ids, the current Raft term and `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_hash,
            member_id: self.identity.member_id,
            revision,
            // Read without cloning the metrics struct: this runs for every response.
            raft_term: self.raft.metrics().borrow().current_term,
        }
    }

    /// Replaces a response's revision-only header with the full one (ids, term).
    pub fn fill_header(&self, header: &mut Option<ResponseHeader>) {
        let rev = header.as_ref().map_or(0, |h| h.revision);
        *header = Some(self.header(rev));
    }

    /// A full header at the current store revision.
    pub fn current_header(&self) -> Option<ResponseHeader> {
        Some(self.header(self.revision.load(Ordering::Acquire)))
    }

    /// Replicates `cmd` through Raft (via the leader, from any member) and returns its
    /// applied result. Client-caused failures come back as `Err` with the etcd error.
    pub async fn propose(&self, cmd: Command) -> Result<CommandResult, ApiError> {
        let size = crate::raft::codec::command::encoded_len(&cmd);
        if size > self.config.limits.max_request_bytes {
            return Err(ApiError::RequestTooLarge);
        }
        let (data, _index) = self.replicate(cmd, size).await?;
        match data {
            CommandResult::Error(e) => Err(ApiError::Mvcc(e)),
            CommandResult::Alarm(alarms) => {
                self.nospace
                    .store(alarms.iter().any(|a| a.alarm == AlarmType::Nospace as i32), Ordering::Relaxed);
                Ok(CommandResult::Alarm(alarms))
            }
            other => Ok(other),
        }
    }

    /// Rejects writes that may grow the database while the NOSPACE alarm is raised or the
    /// archive backlog is full, and raises the alarm when the database exceeds the quota
    /// (etcd's quota behaviour).
    pub async fn check_quota(&self) -> Result<(), ApiError> {
        if self.nospace.load(Ordering::Relaxed) || self.backlog_full.load(Ordering::Relaxed) {
            return Err(MvccError::NoSpace.into());
        }
        if self.db_size.load(Ordering::Relaxed) as u64 > self.config.limits.quota_backend_bytes {
            let alarm = AlarmMember {
                member_id: self.identity.member_id,
                alarm: AlarmType::Nospace as i32,
            };
            self.propose(Command::Alarm { activate: true, alarm }).await?;
            return Err(MvccError::NoSpace.into());
        }
        Ok(())
    }

    /// Runs a blocking read on the reader pool.
    pub async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Reader) -> Result<T, MvccError> + Send + 'static,
    ) -> Result<T, ApiError> {
        Ok(self.reader.run(f).await?)
    }
}

/// Serves until `shutdown` resolves: the etcd gRPC API, the health/metrics endpoint and
/// the background tasks (database size, auto-compaction).
pub async fn serve(node: Arc<Node>, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), StartError> {
    use crate::tls::{listen, Listener};
    let cfg = &node.config;
    let bind = |key: &'static str, addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { key, addr, source })
    };
    let client = bind("NETSY_BIND_CLIENT", cfg.bind_client).await?;
    let health = bind("NETSY_BIND_HEALTH", cfg.bind_health).await?;
    // The mesh authority, over the keys `start` checked.
    let material = node.mesh.lock().ok().and_then(|mut m| m.take());
    let mesh = match (&cfg.mesh, material) {
        (Some(m), Some(material)) => {
            let state = crate::mesh::state::State::new(node.clone());
            let authority = crate::mesh::service::Authority::new(m.clone(), material, state);
            Some((bind("NETSY_BIND_MESH", m.bind).await?, std::sync::Arc::new(authority)))
        }
        _ => None,
    };
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    let grpc_stop = stop.clone();
    let grpc = crate::api::router(node.clone());
    let incoming = listen::Incoming::new(client, node.tls.clone(), Listener::Client).map_err(|source| StartError::Bind {
        key: "NETSY_BIND_CLIENT",
        addr: cfg.bind_client,
        source,
    })?;
    tasks.spawn(async move {
        if let Err(e) = grpc
            .serve_with_incoming_shutdown(incoming, async move { grpc_stop.cancelled().await })
            .await
        {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });

    let http_stop = stop.clone();
    let app = crate::http::router(node.clone());
    let health_tls = node.tls.clone().filter(|_| cfg.tls_policy.health);
    let health = listen::Incoming::new(health, health_tls, Listener::Health).map_err(|source| StartError::Bind {
        key: "NETSY_BIND_HEALTH",
        addr: cfg.bind_health,
        source,
    })?;
    tasks.spawn(async move {
        if let Err(e) = axum::serve(health, app)
            .with_graceful_shutdown(async move { http_stop.cancelled().await })
            .await
        {
            tracing::error!(error = %e, "health server failed");
        }
    });

    if let Some(tls) = node.tls.clone() {
        spawn_until(&mut tasks, &stop, tls.watch());
    }

    if let Some((listener, authority)) = mesh {
        let mesh_stop = stop.clone();
        tracing::info!(mesh = %authority.bind(), "mesh authority serving");
        let app = crate::mesh::service::router(authority).into_make_service_with_connect_info::<SocketAddr>();
        tasks.spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(async move { mesh_stop.cancelled().await })
                .await
            {
                tracing::error!(error = %e, "mesh authority server failed");
            }
        });
    }

    spawn_until(&mut tasks, &stop, crate::api::lease::expiry_loop(node.clone()));
    if let Some(uploader) = node.uploader.lock().ok().and_then(|mut u| u.take()) {
        spawn_until(&mut tasks, &stop, uploader.run());
    }
    if let Some(snapshotter) = node.snapshotter.lock().ok().and_then(|mut s| s.take()) {
        spawn_until(&mut tasks, &stop, snapshotter.run());
    }
    spawn_until(&mut tasks, &stop, background(node.clone()));
    spawn_until(&mut tasks, &stop, checkpointer(node.clone()));
    if let Some(after) = cfg.deregistration_timeout {
        spawn_until(&mut tasks, &stop, node.clone().deregister_unreachable(after));
    }

    tracing::info!(client = %cfg.bind_client, peer = %cfg.bind_peer, health = %cfg.bind_health, tls = node.tls.is_some(), member_id = format!("{:x}", node.identity.member_id), "ready to serve client requests");
    let fenced = tokio::select! {
        _ = shutdown => None,
        current = node.epoch_moved() => Some(current),
    };
    if let Some(current) = fenced {
        tracing::error!(
            own = node.identity.epoch,
            current,
            "object storage moved to a newer epoch: this node's cluster was replaced; stopping"
        );
    }
    tracing::info!("shutting down");
    node.hand_over_before_stopping().await;
    node.flush_archive(Duration::from_secs(10)).await;
    stop.cancel();
    // Give in-flight requests a moment, then close connections that clients keep open.
    let drained = tokio::time::timeout(Duration::from_secs(5), async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tasks.abort_all();
    }
    let _ = node.raft.shutdown().await;
    node.stop_peers();
    match fenced {
        Some(current) => Err(StartError::Fenced {
            own: node.identity.epoch,
            current,
        }),
        None => Ok(()),
    }
}

/// How often a node checks that `cluster.json` still names its epoch.
const EPOCH_CHECK: Duration = Duration::from_secs(5);

impl Node {
    /// Returns once `cluster.json` names a newer epoch than this node's: the cluster was
    /// rebuilt from object storage while this node was cut off, so it must stop serving
    /// (its Raft group is no longer the cluster). Read errors are retried.
    async fn epoch_moved(&self) -> u64 {
        loop {
            tokio::time::sleep(EPOCH_CHECK).await;
            match crate::archive::manifest::read_cluster(self.objects.as_ref(), &self.config.cluster_id).await {
                Ok(Some(m)) if m.value.epoch > self.identity.epoch => return m.value.epoch,
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "cannot read cluster.json for the epoch check"),
            }
        }
    }
}

/// Runs `work` in `tasks` until it ends or `stop` is cancelled.
fn spawn_until(
    tasks: &mut tokio::task::JoinSet<()>,
    stop: &CancellationToken,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let stop = stop.clone();
    tasks.spawn(async move {
        tokio::select! {
            _ = work => {}
            _ = stop.cancelled() => {}
        }
    });
}

/// Copies the state database's WAL into the main file every second, off the apply path
/// (the store's commits do not checkpoint; see `Store::checkpoint_in_background`). Once
/// the WAL holds more than `WAL_RESTART_PAGES`, the writer copies the last few pages
/// itself so that the WAL starts over. A page written several times within the second
/// is copied once: under random-key writes a longer interval copies fewer pages (every
/// 100 ms cost 5–10% more CPU per write in a 3-member cluster). Neither the copies nor
/// the commits sync (see `mvcc::boot`): the kernel writes the pages out in its own time,
/// and a page rewritten meanwhile reaches the disk once.
async fn checkpointer(node: Arc<Node>) {
    const WAL_RESTART_PAGES: i64 = 4096;
    const WRITER_FINISH_PAGES: i64 = 256;
    const MAX_READER_PASSES: usize = 4;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = node.store.clone();
        let pass = node.reader.run(move |reader| {
            // Passes beside the writer until little is left, so that the writer (which
            // holds up applies meanwhile) copies only the frames of the last moment.
            for _ in 0..MAX_READER_PASSES {
                let (pages, copied) = reader.checkpoint()?;
                if pages <= WAL_RESTART_PAGES {
                    return Ok(());
                }
                if pages - copied <= WRITER_FINISH_PAGES {
                    break;
                }
            }
            let mut store = store
                .lock()
                .map_err(|_| crate::mvcc::MvccError::Storage("store lock poisoned".into()))?;
            store.finish_checkpoint()
        });
        if let Err(e) = pass.await {
            tracing::warn!(error = %e, "state database checkpoint failed");
        }
    }
}

/// Periodic work: database size for quota and metrics; auto-compaction on the leader.
async fn background(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Revisions observed over time, for periodic compaction: (when, revision).
    let mut history: std::collections::VecDeque<(tokio::time::Instant, i64)> = Default::default();
    let mut last_compact_check = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let n = node.clone();
        let snapshot_due = tokio::task::spawn_blocking(move || {
            n.refresh_db_size();
            n.refresh_backlog();
            n.log_since_snapshot() >= n.config.raft.snapshot_log_bytes
        })
        .await;
        if let Ok(true) = snapshot_due {
            // openraft ignores this while a snapshot is being built.
            let _ = node.raft.trigger().snapshot().await;
        }
        let Some(policy) = node.config.auto_compaction.clone() else {
            continue;
        };
        let Ok(revs) = node.reader.revisions() else { continue };
        let now = tokio::time::Instant::now();
        history.push_back((now, revs.current));
        let target = match policy {
            AutoCompactionPolicy::Periodic(retention) => {
                // Compact to the newest revision observed at least `retention` ago, checking
                // every retention/10 (etcd's periodic compactor granularity).
                if now.duration_since(last_compact_check) < retention / 10 {
                    continue;
                }
                let mut target = None;
                while let Some(&(at, rev)) = history.front() {
                    if now.duration_since(at) >= retention {
                        target = Some(rev);
                        history.pop_front();
                    } else {
                        break;
                    }
                }
                target
            }
            AutoCompactionPolicy::Revision(keep) => {
                if now.duration_since(last_compact_check) < Duration::from_secs(300) {
                    continue;
                }
                history.clear();
                Some(revs.current - keep)
            }
        };
        last_compact_check = now;
        let Some(target) = target else { continue };
        if target <= revs.compacted || !node.is_leader() {
            continue;
        }
        match node
            .propose(Command::Compact(CompactionRequest {
                revision: target,
                physical: false,
            }))
            .await
        {
            Ok(_) => tracing::info!(revision = target, "auto-compaction finished"),
            Err(e) => tracing::warn!(revision = target, error = %e, "auto-compaction failed"),
        }
    }
}
