//! mTLS: certificate identities (`identity`), loading and checking this node's files
//! (`material`), the verifiers that gate each port by cluster and role (`verify`), the
//! accept loop that hands authenticated connections to the servers (`listen`), outbound
//! connections (`connect`: to peers, and an operator command's to a member's client
//! port), reloading rotated files (`Tls::reload_if_changed`) and development
//! certificates (`dev`).
//!
//! One CA verifies everything. Each node has a server certificate (client, peer and
//! health listeners) and a client certificate (outbound peer connections); both carry
//! the URI SAN `netsy://{cluster_id}/peer/{node_id}`. Clients such as kube-apiserver
//! present `netsy://{cluster_id}/client/{name}`.

pub mod connect;
pub mod dev;
pub mod identity;
pub mod listen;
pub mod material;
pub mod verify;

use std::sync::{Arc, Mutex, RwLock};

use rustls::crypto::CryptoProvider;

pub use identity::{Identity, Role};
pub use listen::ConnInfo;

use crate::config::{TlsFiles, TlsPolicy};
use material::Material;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} ({path}): cannot read it: {source}")]
    Read {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{key} ({path}): {msg}")]
    File { key: &'static str, path: String, msg: String },
    /// What is wrong with a file, and the library error that found it.
    #[error("{key} ({path}): {msg}: {source}")]
    FileCause {
        key: &'static str,
        path: String,
        msg: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{key} ({path}): {source}")]
    Identity {
        key: &'static str,
        path: String,
        #[source]
        source: identity::IdentityError,
    },
    #[error("{0}")]
    Config(String),
    #[error("{what}: {source}")]
    ConfigCause {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("certificate generation: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("certificate generation: {path}: {source}")]
    GenerateFile { path: String, source: std::io::Error },
}

/// The one rustls provider netsy uses (aws-lc-rs, which object_store's HTTP client also
/// uses), passed explicitly so that no process-wide default is needed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Which listener a server configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// 2378: `client` role certificates of this cluster.
    Client,
    /// 2381: `peer` role certificates of this cluster.
    Peer,
    /// 8080 with TLS: server authentication only (kubelet probes have no certificate).
    Health,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Client => "client",
            Listener::Peer => "peer",
            Listener::Health => "health",
        }
    }
}

/// The rustls configurations built from one consistent set of files.
struct Built {
    client: Arc<rustls::ServerConfig>,
    peer: Arc<rustls::ServerConfig>,
    health: Arc<rustls::ServerConfig>,
    material: Arc<Material>,
}

/// This node's TLS state. New connections use the newest configuration; established
/// connections keep the one they were accepted with, so a reload drops nothing.
pub struct Tls {
    files: TlsFiles,
    policy: TlsPolicy,
    cluster_id: String,
    node_id: String,
    hosts: Vec<String>,
    current: RwLock<Arc<Built>>,
    /// Fingerprint of the file contents `current` was built from.
    loaded: Mutex<u64>,
}

impl Tls {
    /// Loads and checks the files: every certificate parses, each key matches its
    /// certificate, both leaf certificates are `peer` certificates of this node and
    /// cluster (URI SAN and CN), are valid now and chain to the CA, and the server
    /// certificate covers every advertised host.
    pub fn load(files: &TlsFiles, policy: &TlsPolicy, cluster_id: &str, node_id: &str, hosts: Vec<String>) -> Result<Arc<Tls>, TlsError> {
        let (material, fingerprint) = Material::load(files)?;
        material.check(cluster_id, node_id, &hosts)?;
        let built = build(Arc::new(material), policy, cluster_id)?;
        set_expiry_metric(&built.material);
        Ok(Arc::new(Tls {
            files: files.clone(),
            policy: policy.clone(),
            cluster_id: cluster_id.to_string(),
            node_id: node_id.to_string(),
            hosts,
            current: RwLock::new(Arc::new(built)),
            loaded: Mutex::new(fingerprint),
        }))
    }

    /// The node's TLS from its configuration; `None` when no certificates are configured.
    pub fn from_config(config: &crate::config::Config) -> Result<Option<Arc<Tls>>, TlsError> {
        let Some(files) = &config.tls else {
            return Ok(None);
        };
        let mut hosts = vec![
            material::url_host(&config.advertise_client),
            material::url_host(&config.advertise_peer),
        ];
        hosts.sort();
        hosts.dedup();
        Tls::load(files, &config.tls_policy, &config.cluster_id, &config.node_id, hosts).map(Some)
    }

    fn current(&self) -> Arc<Built> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The configuration a new connection on `listener` is accepted with.
    pub fn server_config(&self, listener: Listener) -> Arc<rustls::ServerConfig> {
        let built = self.current();
        match listener {
            Listener::Client => built.client.clone(),
            Listener::Peer => built.peer.clone(),
            Listener::Health => built.health.clone(),
        }
    }

    /// A client configuration for an outbound peer connection that presents this node's
    /// peer certificate and accepts only the server certificate of node `expected`.
    pub fn peer_client_config(&self, expected: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let built = self.current();
        verify::peer_client_config(&built.material, &self.cluster_id, expected, self.policy.allow_tls12).map(Arc::new)
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Re-reads the files; when their contents changed and the new set passes the same
    /// checks as at startup, new connections use it. A set that fails (for example a
    /// certificate already rewritten but its key not yet) is reported and retried on the
    /// next call while the previous configuration stays in use.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let mut loaded = match self.loaded.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        let result = match Material::load_changed(&self.files, *loaded) {
            Ok(None) => return Ok(false),
            Ok(Some((material, fingerprint))) => material
                .check(&self.cluster_id, &self.node_id, &self.hosts)
                .and_then(|()| build(Arc::new(material), &self.policy, &self.cluster_id))
                .map(|built| (built, fingerprint)),
            Err(e) => Err(e),
        };
        match result {
            Ok((built, fingerprint)) => {
                set_expiry_metric(&built.material);
                match self.current.write() {
                    Ok(mut c) => *c = Arc::new(built),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(built),
                }
                *loaded = fingerprint;
                crate::metrics::TLS_RELOADS.with_label_values(&["ok"]).inc();
                Ok(true)
            }
            Err(e) => {
                crate::metrics::TLS_RELOADS.with_label_values(&["error"]).inc();
                Err(e)
            }
        }
    }

    /// Polls the files every `policy.reload_interval` (cert-manager's CSI driver rewrites
    /// them before they expire) until the task is dropped.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.policy.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let tls = self.clone();
            let result = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await;
            match result {
                Ok(Ok(true)) => {
                    failing = false;
                    tracing::info!(server_cert = %self.files.server_cert.display(), "reloaded TLS certificates; new connections use them");
                }
                Ok(Ok(false)) => failing = false,
                Ok(Err(e)) if !failing => {
                    failing = true;
                    tracing::warn!(error = %crate::error_chain(&e), "changed TLS files do not load; still using the previous certificates, retrying");
                }
                Ok(Err(_)) => {}
                Err(e) => tracing::error!(error = %crate::error_chain(&e), "TLS reload task failed"),
            }
        }
    }
}

fn build(material: Arc<Material>, policy: &TlsPolicy, cluster_id: &str) -> Result<Built, TlsError> {
    let server = |listener| verify::server_config(&material, listener, cluster_id, policy.allow_tls12).map(Arc::new);
    Ok(Built {
        client: server(Listener::Client)?,
        peer: server(Listener::Peer)?,
        health: server(Listener::Health)?,
        material: material.clone(),
    })
}

/// Records the expiry of the certificates now in use.
fn set_expiry_metric(material: &material::Material) {
    use crate::metrics::TLS_CERT_NOT_AFTER;
    TLS_CERT_NOT_AFTER
        .with_label_values(&["server"])
        .set(material.server_info.not_after);
    TLS_CERT_NOT_AFTER
        .with_label_values(&["client"])
        .set(material.client_info.not_after);
}
