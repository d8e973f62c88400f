//! netsy: an etcd-compatible, Raft-replicated key-value store for Kubernetes control planes.
//!
//! Data flow: `tls` (authenticated connections) → `api` (etcd gRPC services), `peer`,
//! `http`, `mesh` → `core` (the replica: typed operations, leader routing and forwarding)
//! → `raft` (openraft log, one write path) → `mvcc` (SQLite state machine, applied in
//! order), `lease`, `watch` → `archive` (object storage). `server` wires them together.

pub mod api;
pub mod archive;
pub mod config;
pub mod core;
pub mod fsutil;
pub mod http;
pub mod lease;
pub mod mesh;
pub mod metrics;
pub mod migrate;
pub mod mvcc;
pub mod peer;
pub mod proto;
pub mod raft;
pub mod server;
pub mod snapshot;
pub mod status;
pub mod tls;
pub mod watch;

/// The etcd server version netsy reports unless the config overrides it. It must parse as
/// semver >= 3.5.13 so kube-apiserver enables watch progress requests.
pub const DEFAULT_ETCD_VERSION: &str = "3.5.21";
/// The etcd cluster version reported on `/version`.
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";

/// An error with every cause behind it, `outer: inner: …`, for logs and messages that
/// must not lose the chain.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // Errors that print their source inline already show it.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
