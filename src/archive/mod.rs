//! Object storage, the permanent store (issue: archive). This module so far holds the
//! seam every later piece uses: one `Arc<dyn ObjectStore>` built from the `storage`
//! config, wrapped in layers (metrics; fault injection for tests). Segment upload,
//! snapshots and restore build on it.

pub mod store;

pub use store::{build, Faults, FaultyStore, MeteredStore, StoreError};
