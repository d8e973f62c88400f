//! Object storage, the permanent store (issue: archive). This module so far holds the
//! seam every later piece uses: one `Arc<dyn ObjectStore>` built from the `storage`
//! config, wrapped in layers (metrics; fault injection for tests), and the segment
//! format for committed log entries. The uploader, snapshots and restore build on them.

pub mod segment;
pub mod store;
pub mod uploader;

pub use segment::{SegmentError, SegmentName};
pub use store::{build, Faults, FaultyStore, MeteredStore, StoreError};
