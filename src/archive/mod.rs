//! Object storage, the permanent store.
//!
//! - `store`: one `Arc<dyn ObjectStore>` built from the `storage` config, wrapped in
//!   layers (retries, metrics, storage class).
//! - `manifest`: `cluster.json` (current epoch), `members.json`, `nodes/`.
//! - `segment` + `uploader`: the leader ships committed log entries as segments.
//! - `snapshot` + `snapshotter` + `gc`: snapshots of the applied state, and cleanup.
//! - `fence`: a running node stops once `cluster.json` names a newer epoch than its own.
//! - `restore` + `bootstrap`: an empty node rebuilds from the newest snapshot and the
//!   segments after it, then opens a new epoch. `restore` also stops at an index, a
//!   commit time or a revision; `points` says which the archive can reach.
//! - `encrypt` + `sealed` + `keys`: optional client-side encryption of every object
//!   (`storage.encryption`), a layer of the store; data keys wrapped by a Kubernetes KMS
//!   v2 plugin or a key file.
//! - `log`: what the archive needs from the Raft layer, as traits and plain values that
//!   the Raft layer implements and the server passes in (`LogSource`, `Progress`,
//!   `Replay`). The archive sits below Raft: it never imports `raft`, and treats log
//!   entries as opaque bytes tagged with their encoding.

pub mod admin;
pub mod bootstrap;
pub mod encrypt;
pub mod fence;
pub mod gc;
pub mod keys;
pub mod log;
pub mod manifest;
pub mod points;
pub mod restore;
pub mod sealed;
pub mod segment;
pub mod snapshot;
pub mod snapshotter;
pub mod standby;
pub mod store;
pub mod uploader;

pub use segment::{SegmentError, SegmentName};
pub use store::{build, open, MeteredStore, StoreError};
