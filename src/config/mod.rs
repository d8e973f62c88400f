//! Configuration: one JSONC cluster file (shared by every node) plus per-node `NETSY_*`
//! environment variables. Everything is validated at startup; every error names the key
//! and says how to fix it.
//!
//! - `file`: the cluster file as written (its sections and defaults);
//! - `validate`: the checks of the cluster-wide settings, and durations;
//! - `env`: this node's resolution: the `NETSY_*` overrides, its certificate files, its
//!   listen addresses, and the mesh authority's settings (`mesh.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod env;
mod file;
mod mesh;
mod validate;

pub use env::{TlsFiles, TlsPolicy, TLS_ENV};
pub use file::{
    ArchiveSettings, AutoCompaction, ClusterFile, Durability, EncryptionConfig, KmsConfig, Limits, NodeDefaults, RaftSettings,
    StorageConfig, TlsSettings, WatchSettings,
};
pub use mesh::{MeshConfig, MeshSettings};
pub use validate::{is_identifier, parse_duration, ArchivePolicy, AutoCompactionPolicy, StandbyPolicy};
use validate::{validate_name, validate_storage};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid JSONC: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("invalid config `{key}`: {msg}")]
    Invalid { key: String, msg: String },
}

fn invalid(key: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        msg: msg.into(),
    }
}

/// The validated, resolved configuration of this node.
#[derive(Debug, Clone)]
pub struct Config {
    pub cluster_id: String,
    pub storage: StorageConfig,
    pub durability: Durability,
    pub limits: Limits,
    pub etcd_version: String,
    pub auto_compaction: Option<AutoCompactionPolicy>,
    pub watch_progress_notify_interval: Duration,
    pub archive: ArchivePolicy,
    /// Set: this cluster is a standby of another (`standby`).
    pub standby: Option<StandbyPolicy>,
    pub raft: RaftSettings,
    /// This node's certificates; `None` serves plaintext (loopback or `allow_insecure`).
    pub tls: Option<TlsFiles>,
    pub tls_policy: TlsPolicy,
    pub discovery_timeout: Duration,
    /// `None`: never remove an unreachable voter automatically.
    pub deregistration_timeout: Option<Duration>,
    pub allow_insecure: bool,
    pub node_id: String,
    pub data_dir: PathBuf,
    pub bind_client: SocketAddr,
    pub advertise_client: String,
    pub bind_peer: SocketAddr,
    pub advertise_peer: String,
    pub bind_health: SocketAddr,
    /// The mesh authority (port 8443), when `GENESIS_FILE` is set (directly or in the
    /// env file named by `NETSY_MESH_ENV_FILE`).
    pub mesh: Option<MeshConfig>,
}

/// Source of environment variables (a closure so tests need not touch the process env).
pub type EnvFn<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Config {
    /// Reads, parses and validates `path`, then applies `NETSY_*` overrides from `env`.
    pub fn load(path: &Path, env: EnvFn) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_str(&text, path, env)
    }

    /// Only the cluster-wide part (cluster id and object storage), validated: for
    /// commands that work on the archive rather than run a node.
    pub fn load_cluster(path: &Path) -> Result<ClusterFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: ClusterFile = json5::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        validate_name("cluster_id", &file.cluster_id)?;
        validate_storage(&file.storage)?;
        Ok(file)
    }

    pub fn from_str(text: &str, path: &Path, env: EnvFn) -> Result<Config, ConfigError> {
        let file: ClusterFile = json5::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        Self::resolve(file, env)
    }
}

#[cfg(test)]
mod tests;
