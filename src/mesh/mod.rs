//! The mesh authority: a Genesis-Mesh-1.8.1-compatible Network Authority served on port
//! 8443 by every pod, its state in netsy's replicated keyspace.
//!
//! - `canonical`, `timefmt`, `keys`: the wire forms every signature depends on;
//! - `models`: the signed documents (genesis, certificates, policy, CRL);
//! - `auth`: operator (v2) and node request signatures;
//! - `state`: the authority's state in the keyspace (its settings are in `config::mesh`);
//! - `service`: the HTTP service, one handler per route; `tools`: `netsy mesh ...`.

pub mod auth;
pub mod canonical;
pub mod keys;
pub mod models;
pub mod service;
pub mod state;
pub mod timefmt;
pub mod tools;

/// Errors at the mesh module's boundary (startup and tools; the HTTP service answers
/// with `service::Error` in the NA's envelope).
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("key file {path}: {msg}")]
    KeyFile { path: String, msg: String },
    #[error("genesis: {0}")]
    Genesis(String),
    #[error("mesh configuration: {key}: {msg}")]
    Config { key: String, msg: String },
}
