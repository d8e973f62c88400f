//! A standby cluster's side of the replica: client writes, lease keep-alives and
//! compaction are refused while it follows its primary (`crate::standby` replays the
//! primary's entries through `replay`), until `promote`.

use std::sync::atomic::Ordering;

use super::{CoreError, Replica};
use crate::raft::{Batch, SourcePosition};

/// A replayed batch came back with a different number of results than it had commands.
#[derive(Debug, thiserror::Error)]
#[error("the state machine gave {results} results for {commands} replayed commands")]
struct ResultCount {
    results: usize,
    commands: usize,
}

impl Replica {
    /// Whether this member is a standby that has not been promoted (reads only).
    pub fn is_standby(&self) -> bool {
        self.read_only.load(Ordering::Acquire)
    }

    /// A promoted standby serves writes from now on (and its leader expires leases).
    pub fn promote_standby(&self) {
        if self.read_only.swap(false, Ordering::AcqRel) {
            tracing::info!("promoted: this cluster no longer follows its primary and serves writes");
        }
    }

    /// Refuses a client write while this member is a standby.
    pub(crate) fn check_writable(&self) -> Result<(), CoreError> {
        if self.is_standby() {
            Err(CoreError::Standby)
        } else {
            Ok(())
        }
    }

    /// The commit time of the last applied entry (ms since the Unix epoch; 0: none).
    pub fn applied_commit_time(&self) -> u64 {
        self.store.lock().map_or(0, |s| s.applied_meta().commit_unix_ms)
    }

    /// The primary's entry this member's state replays up to (`None`: none yet).
    pub fn applied_source(&self) -> Option<SourcePosition> {
        let store = self.store.lock().ok()?;
        store.applied_meta().source.map(|(epoch, index)| SourcePosition { epoch, index })
    }

    /// Replicates `batch` (the primary's commands, its commit time and position) as one
    /// log entry of this cluster, as its leader, while it is a standby. The commands'
    /// own outcomes (a failed compare, an unknown lease) are the primary's too.
    pub async fn replay(&self, batch: Batch) -> Result<(), CoreError> {
        if !self.is_standby() {
            return Err(CoreError::Leader("promoted: no longer replaying the primary".into()));
        }
        self.require_leader()?;
        let commands = batch.commands.len();
        let resp = self
            .raft
            .client_write(batch)
            .await
            .map_err(|e| CoreError::from(crate::raft::proposer::classify(e)))?;
        if resp.data.len() != commands {
            return Err(CoreError::Raft(std::sync::Arc::new(ResultCount {
                results: resp.data.len(),
                commands,
            })));
        }
        Ok(())
    }
}
