//! Wiring only: read the data directory, open the stores, start Raft and the replica,
//! start the background tasks, serve the ports, shut down.

pub mod datadir;
pub mod standby;

use std::fs::File;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::ObjectStore;
use tokio_util::sync::CancellationToken;

use crate::archive::bootstrap::{prepare, BootstrapError, Local, Mode};
use crate::archive::snapshotter::Snapshotter;
use crate::archive::uploader::{Uploader, UploaderConfig};
use crate::config::{Config, Durability};
use crate::core::{Ids, Parts, Replica, Settings};
use crate::http::Health;
use crate::mvcc::{Reader, Store};
use crate::raft;
use crate::tls::{listen, Listener, Tls};
use datadir::NodeIdentity;

type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {path}: {msg}")]
    DataDir { path: std::path::PathBuf, msg: String },
    #[error("another netsy process holds the data directory {0} (lock file LOCK); stop it or use another NETSY_DATA_DIR")]
    Locked(std::path::PathBuf),
    #[error("storage")]
    Storage(#[source] Cause),
    #[error("raft")]
    Raft(#[source] Cause),
    #[error(transparent)]
    Join(#[from] crate::core::JoinFailed),
    #[error("no leader elected within {}s", .0.as_secs())]
    NoLeader(Duration),
    #[error("object storage")]
    Archive(#[source] Cause),
    #[error("TLS")]
    Tls(#[from] crate::tls::TlsError),
    #[error("mesh authority")]
    Mesh(#[from] crate::mesh::MeshError),
    #[error("object storage moved to epoch {current} while this node serves epoch {own}: the cluster was rebuilt from object storage without it; stopping, so that a restart rejoins the new epoch")]
    Fenced { own: u64, current: u64 },
    /// openraft's core stopped on an error, such as a log write that failed because the
    /// disk is full: this process can no longer take part in the cluster (it would answer
    /// every request with "server stopped" for ever), so it exits, as etcd does when its
    /// WAL cannot be written; its restart resumes from the data directory.
    #[error("Raft stopped on an error; stopping, so that a restart resumes from the data directory once the cause is fixed (for a full disk: once space is freed)")]
    RaftFailed(#[source] Box<openraft::error::Fatal<raft::NodeId>>),
    #[error("cannot listen on {addr} ({key})")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

fn storage(e: impl std::error::Error + Send + Sync + 'static) -> StartError {
    StartError::Storage(Box::new(e))
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

/// A started node, ready to `serve`.
pub struct Node {
    config: Config,
    identity: NodeIdentity,
    replica: Arc<Replica>,
    tls: Option<Arc<Tls>>,
    /// For the epoch fence (uploads go through the uploader).
    objects: Arc<dyn ObjectStore>,
    /// On a standby not promoted yet: the primary's object store (read only).
    primary: Option<Arc<dyn ObjectStore>>,
    /// Stops the uploader. It runs from `start`, before `serve`: in `object-storage`
    /// durability nothing is applied before it is uploaded (`raft::gate`), the first
    /// entries of a new cluster included. Dropping it stops the uploader.
    uploader_stop: tokio_util::sync::DropGuard,
    snapshotter: Snapshotter,
    /// The mesh authority's checked keys.
    mesh: Option<crate::mesh::service::Material>,
    /// The health port, serving since the start began.
    health: HealthPort,
    /// Stops the peer port's server (it runs from `start`, before `serve`: elections and
    /// joins need it).
    peer_stop: CancellationToken,
    _lock: File,
}

/// The health port: bound once, at the start of `Node::start`, and served until the
/// node stops (not ready while it starts, see `http`).
struct HealthPort {
    health: Arc<Health>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl HealthPort {
    async fn start(config: &Config, tls: Option<Arc<Tls>>) -> Result<HealthPort, StartError> {
        let (key, addr) = ("NETSY_BIND_HEALTH", config.bind_health);
        let bind_error = |source| StartError::Bind { key, addr, source };
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(bind_error)?;
        let tls = tls.filter(|_| config.tls_policy.health);
        let incoming = listen::Incoming::new(listener, tls, Listener::Health).map_err(bind_error)?;
        let health = Health::starting(config.etcd_version.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let app = crate::http::router(health.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(incoming, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
            {
                tracing::error!(error = %crate::error_chain(&e), "health server failed");
            }
        });
        Ok(HealthPort { health, stop, task })
    }

    /// Stops serving; connections kept open are closed after a moment.
    async fn stop(mut self) {
        self.stop.cancel();
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

impl Drop for HealthPort {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Node {
    /// Opens the stores (rebuilding them from object storage when the data directory is
    /// empty) and starts Raft; returns once this node can serve (has a leader).
    /// `tls`: this node's certificates, already loaded and checked (`Tls::from_config`).
    pub async fn start(config: Config, tls: Option<Arc<Tls>>) -> Result<Node, StartError> {
        let objects = crate::archive::open(&config.storage)
            .await
            .map_err(|e| StartError::Archive(Box::new(e)))?;
        Self::start_with(config, objects, tls).await
    }

    /// `start` over a given object store, rather than the one `storage` names.
    pub async fn start_with_store(config: Config, objects: Arc<dyn ObjectStore>) -> Result<Node, StartError> {
        // Wrong certificates fail the start before any slow work (such as a restore).
        let tls = Tls::from_config(&config)?;
        Self::start_with(config, objects, tls).await
    }

    async fn start_with(config: Config, objects: Arc<dyn ObjectStore>, tls: Option<Arc<Tls>>) -> Result<Node, StartError> {
        // A mesh genesis or key that does not check out fails the start before any slow work.
        let mesh = config.mesh.as_ref().map(crate::mesh::service::Material::load).transpose()?;
        // Bind the ports first: a port clash should fail before a restore, too. The health
        // port answers (alive, not ready) during the restore.
        let peer_listener = tokio::net::TcpListener::bind(config.bind_peer)
            .await
            .map_err(|source| StartError::Bind {
                key: "NETSY_BIND_PEER",
                addr: config.bind_peer,
                source,
            })?;
        let health = HealthPort::start(&config, tls.clone()).await?;
        let dir = config.data_dir.clone();
        let lock = datadir::prepare_data_dir(&dir)?;
        let local = datadir::local_state(&dir, datadir::load_identity(&dir)?.as_ref())?;
        let state_path = dir.join("state.db");
        let scratch = dir.join("snapshots");
        let dialer = crate::tls::connect::Dialer::new(tls.clone(), config.bind_peer);
        let probe = raft::peers::HelloProbe {
            dialer: dialer.clone(),
            cluster_id: config.cluster_id.clone(),
        };
        let replay = raft::state_machine::archive_replay();
        let primary = standby::prepare(&config, &objects, &scratch)
            .await
            .map_err(|e| StartError::Archive(Box::new(e)))?;
        let startup = match prepare(&objects, &config, local, &state_path, &scratch, &probe, &replay).await {
            // The cluster was rebuilt from object storage without this node: what its disk
            // holds is of an older epoch (anything acknowledged there and not archived was
            // already given up by that rebuild). Set it aside and rejoin as a new
            // incarnation.
            Err(BootstrapError::StaleDataDir { local, current }) if local < current => {
                let aside = datadir::set_aside(&dir, local)?;
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
        .map_err(|e| StartError::Archive(Box::new(e)))?;
        let identity = NodeIdentity {
            format_version: datadir::IDENTITY_FORMAT,
            member_id: startup.member.member_id,
            raft_id: startup.member.raft_id,
            epoch: startup.epoch,
        };
        datadir::save_identity(&dir, &identity)?;
        crate::metrics::ARCHIVE_EPOCH.set(identity.epoch as i64);
        if let Some((report, restored)) = &startup.restored {
            std::fs::rename(restored, &state_path)
                .and_then(|_| crate::fsutil::sync_parent(&state_path))
                .map_err(|e| StartError::DataDir {
                    path: dir.clone(),
                    msg: format!("cannot move the restored state into place: {e}"),
                })?;
            tracing::info!(
                revision = report.revision,
                entries = report.entries,
                elapsed_ms = report.elapsed_ms,
                epoch = identity.epoch,
                "rebuilt from object storage"
            );
        }
        let log = raft::wal::LogStore::open(&dir).map_err(storage)?;
        let log_is_whole = log.holds_every_entry().map_err(storage)?;
        datadir::check_state_survived(&dir, &state_path, &scratch, log_is_whole)?;
        let mut store = Store::open(&state_path).map_err(storage)?;
        store.checkpoint_in_background().map_err(storage)?;
        let store = Arc::new(Mutex::new(store));
        let reader = Reader::new(&state_path);
        let gate = raft::gate::ArchiveGate::new(config.durability == Durability::ObjectStorage);
        let sm = raft::state_machine::StateMachine::new(store.clone(), reader.clone(), &scratch, gate.clone()).map_err(storage)?;
        sm.ensure_local_base(log_is_whole).await.map_err(storage)?;
        let applied = sm.applied_index();
        let log_reader = log.clone();
        let peers = raft::peers::Peers::new(dialer, identity.raft_id);
        let raft = raft::start(identity.raft_id, &config.cluster_id, &config.raft, peers.clone(), log, sm, &gate)
            .await
            .map_err(StartError::Raft)?;
        let progress = raft::archive_progress(&raft, identity.raft_id);
        raft::count_leader_changes(&raft);
        let uploader = Uploader::new(
            objects.clone(),
            Arc::new(log_reader.clone()),
            progress.clone(),
            gate.committed(),
            gate.upload_sender(),
            UploaderConfig {
                epoch: identity.epoch,
                segment_max_bytes: config.archive.segment_max_bytes,
                segment_max_delay: config.archive.segment_max_delay,
                eager: config.durability == Durability::ObjectStorage,
                max_puts_per_second: config.archive.max_puts_per_second,
            },
        );
        let snapshotter = Snapshotter {
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
        let uploader_stop = CancellationToken::new();
        tokio::spawn({
            let stop = uploader_stop.clone();
            async move {
                tokio::select! {
                    _ = uploader.run() => {}
                    _ = stop.cancelled() => {}
                }
            }
        });
        let ids = Ids {
            cluster_hash: stable_hash(&config.cluster_id),
            member_id: identity.member_id,
            raft_id: identity.raft_id,
            me: raft::PeerNode {
                name: config.node_id.clone(),
                member_id: identity.member_id,
                peer_url: config.advertise_peer.clone(),
                client_url: config.advertise_client.clone(),
            },
        };
        let settings = Settings {
            limits: config.limits.clone(),
            durability: config.durability,
            max_backlog_bytes: config.archive.max_backlog_bytes,
            scratch: dir.join("tmp"),
            standby: primary.is_some(),
        };
        let parts = Parts {
            raft,
            store,
            reader,
            log: log_reader,
            peers,
            gate,
            applied,
        };
        let replica = Arc::new(Replica::new(ids, settings, parts).map_err(storage)?);
        let node = Node {
            objects,
            primary,
            config,
            identity,
            replica,
            tls,
            uploader_stop: uploader_stop.drop_guard(),
            snapshotter,
            mesh,
            health,
            peer_stop: CancellationToken::new(),
            _lock: lock,
        };
        node.serve_peers(peer_listener)?;
        if let Err(e) = node.join_cluster(startup.mode).await {
            node.peer_stop.cancel();
            return Err(e);
        }
        Ok(node)
    }

    /// Forms, resumes or joins the cluster as bootstrap decided; returns once a leader
    /// is known.
    async fn join_cluster(&self, mode: Mode) -> Result<(), StartError> {
        let replica = &self.replica;
        let raft = replica.raft();
        match mode {
            Mode::Resume => {
                // A member removed while it was away (deregistration_timeout, or etcdctl
                // member remove) never hears from the leader again, and its own log
                // still names the old leader: ask to be admitted (a no-op for a voter).
                // The membership comes from the log; wait until Raft has loaded it.
                let _ = raft
                    .wait(Some(Duration::from_secs(10)))
                    .metrics(|m| m.membership_config.membership().nodes().next().is_some(), "membership loaded")
                    .await;
                let via: Vec<(String, String)> = replica
                    .members()
                    .into_iter()
                    .filter(|m| m.raft_id != self.identity.raft_id)
                    .map(|m| (m.node.peer_url, m.node.name))
                    .collect();
                if via.is_empty() {
                    tracing::info!("resuming as the only member");
                } else {
                    replica.join_via(&via).await?;
                }
            }
            Mode::Found => raft::initialize_alone(raft, self.identity.raft_id, replica.ids().me.clone())
                .await
                .map_err(StartError::Raft)?,
            Mode::Join { via } => replica.join_via(&via).await?,
        }
        if !raft::wait_for_leader(raft, crate::core::JOIN_WAIT).await {
            return Err(StartError::NoLeader(crate::core::JOIN_WAIT));
        }
        Ok(())
    }

    /// Serves the peer port until `peer_stop`.
    fn serve_peers(&self, listener: tokio::net::TcpListener) -> Result<(), StartError> {
        let addr = self.config.bind_peer;
        let incoming = listen::Incoming::new(listener, self.tls.clone(), Listener::Peer).map_err(|source| StartError::Bind {
            key: "NETSY_BIND_PEER",
            addr,
            source,
        })?;
        let identity = crate::peer::Identity {
            cluster_id: self.config.cluster_id.clone(),
            node_id: self.config.node_id.clone(),
            epoch: self.identity.epoch,
            advertise_client: self.config.advertise_client.clone(),
            advertise_peer: self.config.advertise_peer.clone(),
        };
        let router = crate::peer::router(identity, self.replica.clone());
        let stop = self.peer_stop.clone();
        tokio::spawn(async move {
            if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop.cancelled_owned()).await {
                tracing::error!(error = %crate::error_chain(&e), "peer gRPC server failed");
            }
        });
        Ok(())
    }
}

/// Serves until `shutdown` resolves (or the epoch fence trips): the etcd gRPC API, the
/// mesh authority, the health port (serving since the start), and the background tasks.
pub async fn serve(node: Node, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), StartError> {
    let Node {
        config: cfg,
        identity,
        replica,
        tls,
        objects,
        primary,
        uploader_stop,
        snapshotter,
        mesh,
        health,
        peer_stop,
        _lock,
    } = node;
    let bind = |key: &'static str, addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { key, addr, source })
    };
    let client = bind("NETSY_BIND_CLIENT", cfg.bind_client).await?;
    // The mesh authority, over the keys `start` checked.
    let mesh = match (&cfg.mesh, mesh) {
        (Some(m), Some(material)) => {
            let state = crate::mesh::state::State::new(replica.clone());
            let authority = crate::mesh::service::Authority::new(m.clone(), material, state);
            Some((bind("NETSY_BIND_MESH", m.bind).await?, Arc::new(authority)))
        }
        _ => None,
    };
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    let grpc_stop = stop.clone();
    let standby_store = replica.is_standby().then(|| objects.clone());
    let grpc = crate::api::router(replica.clone(), &cfg, standby_store);
    let incoming = listen::Incoming::new(client, tls.clone(), Listener::Client).map_err(|source| StartError::Bind {
        key: "NETSY_BIND_CLIENT",
        addr: cfg.bind_client,
        source,
    })?;
    tasks.spawn(async move {
        if let Err(e) = grpc
            .serve_with_incoming_shutdown(incoming, async move { grpc_stop.cancelled().await })
            .await
        {
            tracing::error!(error = %crate::error_chain(&e), "gRPC server failed");
        }
    });
    health.health.ready(replica.clone());

    if let Some(tls) = tls.clone() {
        spawn_until(&mut tasks, &stop, tls.watch());
    }

    if let Some((listener, authority)) = mesh {
        let mesh_stop = stop.clone();
        tracing::info!(mesh = %authority.bind(), "mesh authority serving");
        let readiness = authority.clone().watch_readiness();
        let app = crate::mesh::service::router(authority).into_make_service_with_connect_info::<SocketAddr>();
        tasks.spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move { mesh_stop.cancelled().await });
            tokio::select! {
                served = serve => {
                    if let Err(e) = served {
                        tracing::error!(error = %crate::error_chain(&e), "mesh authority server failed");
                    }
                }
                () = readiness => {}
            }
            // Not serving any more.
            crate::metrics::MESH_AUTHORITY_READY.set(0);
        });
    }

    spawn_until(&mut tasks, &stop, replica.clone().expire_leases());
    spawn_until(&mut tasks, &stop, snapshotter.run());
    spawn_until(&mut tasks, &stop, replica.clone().measure(cfg.raft.snapshot_log_bytes));
    spawn_until(
        &mut tasks,
        &stop,
        crate::mvcc::checkpoint::run(replica.store().clone(), replica.reader().clone()),
    );
    spawn_until(&mut tasks, &stop, crate::mvcc::reclaim::run(replica.store().clone()));
    if let Some(policy) = cfg.auto_compaction.clone() {
        spawn_until(&mut tasks, &stop, crate::core::compactor::run(replica.clone(), policy));
    }
    if let (Some(primary), Some(policy)) = (primary, cfg.standby.clone()) {
        spawn_until(
            &mut tasks,
            &stop,
            standby::follow(replica.clone(), primary, objects.clone(), policy),
        );
    }
    if let Some(after) = cfg.deregistration_timeout {
        spawn_until(&mut tasks, &stop, replica.clone().deregister_unreachable(after));
    }

    tracing::info!(client = %cfg.bind_client, peer = %cfg.bind_peer, health = %cfg.bind_health, tls = tls.is_some(), member_id = format!("{:x}", identity.member_id), "ready to serve client requests");
    let failed = tokio::select! {
        _ = shutdown => None,
        current = crate::archive::fence::newer_epoch(objects.as_ref(), &cfg.cluster_id, identity.epoch) => {
            tracing::error!(
                own = identity.epoch,
                current,
                "object storage moved to a newer epoch: this node's cluster was replaced; stopping"
            );
            Some(StartError::Fenced { own: identity.epoch, current })
        }
        fatal = raft_failure(replica.raft().metrics()) => {
            tracing::error!(error = %crate::error_chain(&fatal), "Raft stopped on an error; stopping");
            Some(StartError::RaftFailed(Box::new(fatal)))
        }
    };
    tracing::info!("shutting down");
    // Watches and lease keep-alives move to other members now; requests in flight and
    // those still arriving are answered until the drain below.
    replica.begin_stopping();
    // A stopped Raft core can hand nothing over.
    if !matches!(failed, Some(StartError::RaftFailed(_))) {
        replica.hand_over_before_stopping().await;
    }
    replica.flush_archive(Duration::from_secs(10)).await;
    stop.cancel();
    drop(uploader_stop);
    // Give in-flight requests a moment, then close connections that clients keep open.
    let drained = tokio::time::timeout(Duration::from_secs(5), async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tasks.abort_all();
    }
    health.stop().await;
    let raft_stopped = replica.raft().shutdown().await;
    peer_stop.cancel();
    match raft_stopped {
        // After a Raft failure (a failed write, e.g. a full disk) nothing is sealed.
        Ok(()) if !matches!(failed, Some(StartError::RaftFailed(_))) => datadir::seal_state(&cfg.data_dir, replica.store()),
        Ok(()) => {}
        Err(e) => tracing::warn!(error = %crate::error_chain(&e), "Raft did not stop cleanly: not sealing the state database"),
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Resolves once openraft's core has stopped on an error (a failed write to the Raft log
/// or the state database, e.g. a full disk), with that error.
async fn raft_failure(
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<raft::NodeId, raft::PeerNode>>,
) -> openraft::error::Fatal<raft::NodeId> {
    loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            return fatal.clone();
        }
        if metrics.changed().await.is_err() {
            return openraft::error::Fatal::Stopped;
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
