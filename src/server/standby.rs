//! The standby's follower: on a standby cluster (config `standby`), its leader replays
//! the primary's archived entries into its own Raft log, so every member applies the
//! primary's commands in the primary's order on the primary's state — the same
//! revisions, leases and compactions — and serves them to reads and watches. Client
//! writes are refused meanwhile (`core::standby`).
//!
//! Each replayed batch records the primary's position it reaches (`Batch::source`), in
//! the applied state: a restart or a new standby leader goes on from there. When the
//! primary's archive moves to a new epoch (the primary was rebuilt from object storage)
//! the standby follows it if that epoch starts from the state the standby holds.
//!
//! Promotion (`archive::standby`): once `standby/promote.json` appears, the leader
//! replays everything archived, writes `standby/promoted.json` and stops; every member
//! serves writes once it sees that record.

use std::sync::Arc;

use object_store::ObjectStore;

use crate::archive::segment::EntryEncoding;
use crate::archive::standby::{self as archived, Pending, Position, Promoted, StandbyError};
use crate::config::StandbyPolicy;
use crate::core::{CoreError, Replica};
use crate::raft::{Batch, SourcePosition};

/// Most commands replayed in one entry of the standby's log.
const MAX_REPLAY_COMMANDS: usize = 1024;
/// Segments fetched per round.
const SEGMENTS_PER_ROUND: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Archive(#[from] StandbyError),
    #[error("replaying the primary's entries: {0}")]
    Replay(#[from] CoreError),
    #[error("the primary's entry {index} cannot be decoded")]
    Entry {
        index: u64,
        #[source]
        source: crate::raft::codec::FormatError,
    },
    #[error("the primary's segment frame {frame} holds entry {entry}")]
    Mismatch { frame: u64, entry: u64 },
    #[error("this standby's state records no position in the primary's archive (it was not seeded as a standby); seed it again from an empty storage")]
    NoPosition,
}

enum Round {
    /// Replayed something; go on at once.
    Progress,
    /// Nothing new (or not the leader).
    Idle,
    Promoted,
}

/// Follows until promoted (or the task is dropped).
pub async fn follow(replica: Arc<Replica>, primary: Arc<dyn ObjectStore>, own: Arc<dyn ObjectStore>, policy: StandbyPolicy) {
    crate::metrics::STANDBY_FOLLOWING.set(1);
    let mut backoff = policy.poll_interval;
    loop {
        match round(&replica, primary.as_ref(), own.as_ref(), &policy).await {
            Ok(Round::Promoted) => break,
            Ok(Round::Progress) => backoff = policy.poll_interval,
            Ok(Round::Idle) => {
                backoff = policy.poll_interval;
                tokio::time::sleep(policy.poll_interval).await;
            }
            Err(e) => {
                crate::metrics::STANDBY_ERRORS.inc();
                tracing::warn!(error = %crate::error_chain(&e), retry_in_ms = backoff.as_millis() as u64, "standby: following the primary failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(policy.max_backoff);
            }
        }
    }
    crate::metrics::STANDBY_FOLLOWING.set(0);
    for lag in [&*crate::metrics::STANDBY_LAG_ENTRIES, &*crate::metrics::STANDBY_LAG_REVISIONS] {
        lag.set(0);
    }
    crate::metrics::STANDBY_LAG_SECONDS.set(0.0);
}

async fn round(replica: &Replica, primary: &dyn ObjectStore, own: &dyn ObjectStore, policy: &StandbyPolicy) -> Result<Round, FollowError> {
    if archived::promoted(own).await?.is_some() {
        replica.promote_standby();
        return Ok(Round::Promoted);
    }
    if !replica.is_leader() {
        return Ok(Round::Idle);
    }
    if archived::promotion_requested(own).await? {
        // Everything the primary archived first: that is the recovery point.
        let mut newest = position(replica)?;
        while let Some(reached) = catch_up(replica, primary, policy).await? {
            newest = reached;
        }
        let at = position(replica)?;
        let record = archived::record_promoted(
            own,
            &Promoted {
                format_version: 1,
                primary_cluster_id: policy.source_cluster_id.clone(),
                primary: at,
                primary_archived: newest.max(at),
                revision: replica.reader().revisions().map_err(CoreError::from)?.current,
                commit_unix_ms: replica.applied_commit_time(),
                promoted_unix_ms: crate::archive::log::wall_clock_ms(),
            },
        )
        .await?;
        tracing::info!(?record, "standby: promoted");
        replica.promote_standby();
        return Ok(Round::Promoted);
    }
    Ok(match catch_up(replica, primary, policy).await? {
        Some(_) => Round::Progress,
        None => Round::Idle,
    })
}

/// Where the standby stands in the primary's archive.
fn position(replica: &Replica) -> Result<Position, FollowError> {
    let s = replica.applied_source().ok_or(FollowError::NoPosition)?;
    Ok(Position {
        epoch: s.epoch,
        index: s.index,
    })
}

/// Replays what the primary's archive holds after the standby's position (one round);
/// `Some(newest archived position)` when it replayed anything, `None` when caught up.
async fn catch_up(replica: &Replica, primary: &dyn ObjectStore, policy: &StandbyPolicy) -> Result<Option<Position>, FollowError> {
    let at = position(replica)?;
    match archived::pending(primary, &policy.source_cluster_id, at, SEGMENTS_PER_ROUND).await? {
        Pending::None => {
            crate::metrics::STANDBY_LAG_ENTRIES.set(0);
            crate::metrics::STANDBY_LAG_REVISIONS.set(0);
            crate::metrics::STANDBY_LAG_SECONDS.set(0.0);
            Ok(None)
        }
        Pending::NextEpoch { next, base_revision } => {
            let ours = replica.reader().revisions().map_err(CoreError::from)?.current;
            if ours != base_revision {
                return Err(StandbyError::Diverged {
                    epoch: at.epoch,
                    next,
                    base: base_revision,
                    ours,
                }
                .into());
            }
            tracing::info!(
                from = at.epoch,
                to = next,
                revision = ours,
                "standby: the primary opened a new epoch from the state the standby holds; following it"
            );
            let mut batch = Batch::new(Vec::new(), replica.applied_commit_time());
            batch.source = Some(SourcePosition { epoch: next, index: 0 });
            replica.replay(batch).await?;
            Ok(Some(Position { epoch: next, index: 0 }))
        }
        Pending::Entries { encoding, frames, newest } => {
            let decode = match encoding {
                EntryEncoding::Current => crate::raft::codec::decode_entry,
                EntryEncoding::Bincode => crate::raft::codec::legacy::decode_entry,
            };
            let newest_ms = frames.iter().map(|f| f.unix_ms).max().unwrap_or(0);
            let mut remaining: usize = 0;
            let mut decoded = Vec::with_capacity(frames.len());
            for frame in &frames {
                let entry = decode(&frame.entry).map_err(|source| FollowError::Entry {
                    index: frame.index,
                    source,
                })?;
                if entry.log_id.index != frame.index {
                    return Err(FollowError::Mismatch {
                        frame: frame.index,
                        entry: entry.log_id.index,
                    });
                }
                let (commands, unix_ms) = match entry.payload {
                    openraft::EntryPayload::Normal(b) => (b.commands, b.unix_ms.max(frame.unix_ms)),
                    _ => (Vec::new(), frame.unix_ms),
                };
                remaining += commands.len();
                decoded.push((frame.index, commands, unix_ms));
            }
            if decoded.is_empty() {
                return Ok(None);
            }
            let mut batch = Batch::new(Vec::new(), replica.applied_commit_time());
            let mut last = at.index;
            let count = decoded.len();
            for (i, (index, commands, unix_ms)) in decoded.into_iter().enumerate() {
                remaining -= commands.len();
                batch.commands.extend(commands);
                batch.unix_ms = batch.unix_ms.max(unix_ms);
                last = index;
                if batch.commands.len() >= MAX_REPLAY_COMMANDS || i + 1 == count {
                    let time = batch.unix_ms;
                    batch.source = Some(SourcePosition { epoch: at.epoch, index });
                    replica.replay(std::mem::replace(&mut batch, Batch::new(Vec::new(), time))).await?;
                    crate::metrics::STANDBY_LAG_ENTRIES.set(newest.index.saturating_sub(index) as i64);
                    crate::metrics::STANDBY_LAG_REVISIONS.set(remaining as i64);
                    crate::metrics::STANDBY_LAG_SECONDS.set(newest_ms.saturating_sub(time) as f64 / 1000.0);
                }
            }
            crate::metrics::STANDBY_REPLAYED_ENTRIES.inc_by(last - at.index);
            Ok(Some(newest))
        }
    }
}

/// Before the node starts: whether it runs as a standby (configured, and not promoted
/// yet), seeding its own storage from the primary when it holds no cluster yet.
pub async fn prepare(
    config: &crate::config::Config,
    own: &Arc<dyn ObjectStore>,
    scratch: &std::path::Path,
) -> Result<Option<Arc<dyn ObjectStore>>, StandbyError> {
    let Some(policy) = &config.standby else { return Ok(None) };
    if let Some(p) = archived::promoted(own.as_ref()).await? {
        tracing::warn!(promoted = ?p, "this cluster was a standby and has been promoted: `standby` in the cluster file is ignored (remove it)");
        return Ok(None);
    }
    let primary = primary_store(policy)?;
    if crate::archive::manifest::read_cluster(own.as_ref(), &config.cluster_id)
        .await?
        .is_none()
    {
        let replay = crate::raft::state_machine::archive_replay();
        match archived::seed(
            primary.as_ref(),
            &policy.source_cluster_id,
            own,
            &config.cluster_id,
            scratch,
            &replay,
        )
        .await
        {
            Ok((at, report)) => tracing::info!(?at, revision = report.revision, "standby: seeded from the primary"),
            // Another member of the standby seeded it first.
            Err(StandbyError::Bootstrap(crate::archive::bootstrap::BootstrapError::LostRace { .. })) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(primary))
}

/// The primary's object store, read only.
pub fn primary_store(policy: &StandbyPolicy) -> Result<Arc<dyn ObjectStore>, StandbyError> {
    let store = crate::archive::build(&policy.source).map_err(|e| StandbyError::Store {
        path: "standby.source".into(),
        source: object_store::Error::Generic {
            store: "standby.source",
            source: Box::new(e),
        },
    })?;
    Ok(Arc::new(crate::archive::store::ReadOnlyStore::new(store)))
}
