//! How far a member purges its Raft log after a snapshot, so that a member sent a
//! snapshot finds, once it has installed it, the entries that follow it.
//!
//! openraft 0.9 purges on its own after each snapshot (through the snapshot minus
//! `max_in_snapshot_log_to_keep` entries) and holds a purge back only while *log entries*
//! are on their way to a member, never while a *snapshot* is. A member that streamed a
//! snapshot for longer than the leader took to build the next one then found, once it
//! had installed the first, that the entries after it were purged, and was sent another
//! full snapshot (a wiped member of the scale bench installed two, 83 s for 0.38 GiB).
//! So openraft's own purge is off (`raft_config`) and `run` decides instead:
//!
//! - every member purges through its newest snapshot minus `keep` entries, as openraft
//!   did;
//! - a leader holds the purge for a member it is sending a snapshot to, or that
//!   installed one and is catching up from the log: no further than the snapshot's index
//!   or, once higher, the index the member has matched (`SnapshotSends`);
//! - for at most as many bytes of log before the newest snapshot as the larger of the
//!   snapshot the member was sent and `raft.snapshot_log_bytes`: the held log never costs
//!   more than sending the member a newer snapshot. A member further behind (one that
//!   stopped, or streams more slowly than the cluster writes) is let go, and openraft
//!   sends it a newer snapshot.
//!
//! A member that has not been sent a snapshot holds nothing: one that was away is sent
//! a snapshot when its entries are gone, as before.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::wal::LogStore;
use super::{NetsyRaft, NodeId};

/// How often `run` looks at what to purge.
const EVERY: Duration = Duration::from_millis(250);

/// The snapshots this node (as leader) is sending or has sent, by member, until the
/// member has caught up (`network::Link::full_snapshot` records them).
#[derive(Debug, Default)]
pub struct SnapshotSends {
    sends: Mutex<BTreeMap<NodeId, SnapshotSend>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SnapshotSend {
    /// The index of the last log entry the snapshot holds.
    index: u64,
    /// The snapshot's size: the log held for the member may be as large.
    bytes: u64,
    /// Tells this send from a later one to the same member.
    id: u64,
    /// The member installed it.
    delivered: bool,
}

/// A snapshot being sent: unless `delivered`, dropping it (the send failed or was
/// cancelled) stops holding the log for the member.
pub struct SendGuard {
    sends: Arc<SnapshotSends>,
    target: NodeId,
    id: u64,
}

impl SnapshotSends {
    /// A snapshot through `index`, of `bytes` bytes, starts streaming to `target`.
    pub fn start(self: &Arc<Self>, target: NodeId, index: u64, bytes: u64) -> SendGuard {
        let mut sends = self.lock();
        let id = sends.get(&target).map_or(0, |s| s.id + 1);
        let send = SnapshotSend {
            index,
            bytes,
            id,
            delivered: false,
        };
        sends.insert(target, send);
        SendGuard {
            sends: self.clone(),
            target,
            id,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<NodeId, SnapshotSend>> {
        // Each change is one insert or remove: the map is whole whatever panicked.
        self.sends.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn snapshot(&self) -> BTreeMap<NodeId, SnapshotSend> {
        self.lock().clone()
    }

    /// Forgets `target`'s send `id` (and only that one).
    fn forget(&self, target: NodeId, id: u64) {
        let mut sends = self.lock();
        if sends.get(&target).is_some_and(|s| s.id == id) {
            sends.remove(&target);
        }
    }
}

impl SendGuard {
    /// The member installed the snapshot: the log stays held until it has caught up.
    pub fn delivered(self) {
        if let Some(s) = self.sends.lock().get_mut(&self.target).filter(|s| s.id == self.id) {
            s.delivered = true;
        }
    }
}

impl Drop for SendGuard {
    fn drop(&mut self) {
        let mut sends = self.sends.lock();
        if sends.get(&self.target).is_some_and(|s| s.id == self.id && !s.delivered) {
            sends.remove(&self.target);
        }
    }
}

/// A member the leader holds the log for: it has, or will have once the snapshot
/// streaming to it is installed, every entry through `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub from: u64,
    /// The member installed the snapshot (else it is still streaming).
    pub installed: bool,
    /// Bytes of the log after `from` through the newest snapshot...
    pub held_bytes: u64,
    /// ...which may be at most this many.
    pub budget: u64,
}

/// What to do about one member's hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Purge no further than `from`.
    Hold,
    /// The member has what the purge leaves: it needs no hold any more.
    CaughtUp,
    /// Holding would keep more log than the budget: the member gets a newer snapshot.
    TooFarBehind,
}

impl Hold {
    /// Whether this hold still holds, given what the purge would otherwise leave
    /// (`wanted`: the index it would purge through).
    pub fn verdict(&self, wanted: u64) -> Verdict {
        if self.installed && self.from >= wanted {
            Verdict::CaughtUp
        } else if self.held_bytes > self.budget {
            Verdict::TooFarBehind
        } else {
            Verdict::Hold
        }
    }
}

/// The index to purge through (inclusive): `wanted`, held back to the lowest `from` of
/// the `holds` that still hold.
pub fn purge_through(wanted: u64, holds: &[Hold]) -> u64 {
    holds
        .iter()
        .filter(|h| h.verdict(wanted) == Verdict::Hold)
        .map(|h| h.from)
        .fold(wanted, u64::min)
}

/// Entries a member keeps before its newest snapshot, for members only slightly behind.
pub fn keep_entries(snapshot_log_entries: u64) -> u64 {
    (snapshot_log_entries / 10).min(1_000)
}

/// Purges this member's log as the module describes, every `EVERY`, until Raft stops.
/// `snapshot_log_bytes` is the least log a member being caught up may hold.
pub async fn run(raft: NetsyRaft, log: LogStore, sends: Arc<SnapshotSends>, keep: u64, snapshot_log_bytes: u64) {
    let metrics = raft.metrics();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // While a hold moves the purge along, it goes in steps of at least this many entries
    // (each purge syncs the log's purge marker).
    let step = keep.max(1);
    let mut requested: Option<u64> = None;
    loop {
        tick.tick().await;
        if metrics.has_changed().is_err() {
            return; // Raft stopped.
        }
        let (snapshot, purged, matched) = {
            let m = metrics.borrow();
            let matched: BTreeMap<NodeId, u64> = m
                .replication
                .iter()
                .flatten()
                .map(|(id, l)| (*id, l.map_or(0, |l| l.index)))
                .collect();
            (m.snapshot.map(|l| l.index), m.purged.map(|l| l.index), matched)
        };
        let Some(snapshot) = snapshot else { continue };
        let Some(wanted) = snapshot.checked_sub(keep) else { continue };
        let mut holds = Vec::new();
        for (member, send) in sends.snapshot() {
            // Not (or no longer) a member this node replicates to.
            let Some(&has) = matched.get(&member) else {
                sends.forget(member, send.id);
                continue;
            };
            let from = has.max(send.index);
            let held_bytes = match (log.bytes_after(from), log.bytes_after(snapshot)) {
                (Ok(after_from), Ok(after_snapshot)) => after_from.saturating_sub(after_snapshot),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %crate::error_chain(&e), "cannot measure the Raft log held for a member");
                    0
                }
            };
            let hold = Hold {
                from,
                installed: send.delivered,
                held_bytes,
                budget: send.bytes.max(snapshot_log_bytes),
            };
            match hold.verdict(wanted) {
                Verdict::Hold => holds.push(hold),
                Verdict::CaughtUp => {
                    tracing::debug!(member, from, "a member sent a snapshot caught up: its log hold ends");
                    sends.forget(member, send.id);
                }
                Verdict::TooFarBehind => {
                    tracing::warn!(
                        member,
                        from,
                        held_bytes,
                        budget = hold.budget,
                        "a member sent a snapshot is too far behind to hold the Raft log for: it will need a newer snapshot"
                    );
                    sends.forget(member, send.id);
                }
            }
        }
        let upto = purge_through(wanted, &holds);
        if !holds.is_empty() {
            tracing::debug!(upto, wanted, ?holds, "holding the Raft log for members sent a snapshot");
        }
        let next = purged.max(requested).map_or(0, |p| p + 1);
        if upto < next || (upto < wanted && upto - next + 1 < step) {
            continue;
        }
        // openraft purges at once, or on a leader as soon as no entries through `upto` are
        // on their way to a member.
        if raft.trigger().purge_log(upto).await.is_err() {
            return; // Raft stopped.
        }
        requested = Some(upto);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(from: u64, held_bytes: u64) -> Hold {
        Hold {
            from,
            installed: true,
            held_bytes,
            budget: 1_000,
        }
    }

    #[test]
    fn the_purge_stops_at_the_lowest_member_still_held_for() {
        assert_eq!(purge_through(90, &[]), 90, "nobody to hold for");
        assert_eq!(purge_through(90, &[hold(40, 500), hold(60, 300)]), 40);
        // A member past what the purge leaves needs nothing...
        assert_eq!(hold(95, 0).verdict(90), Verdict::CaughtUp);
        // ...once it has installed its snapshot: until then it has nothing.
        let streaming = Hold {
            installed: false,
            ..hold(95, 0)
        };
        assert_eq!(streaming.verdict(90), Verdict::Hold);
        assert_eq!(purge_through(90, &[hold(95, 0), hold(60, 300)]), 60);
        // One whose held log outgrew its budget is let go (it gets a newer snapshot).
        assert_eq!(hold(10, 1_001).verdict(90), Verdict::TooFarBehind);
        assert_eq!(purge_through(90, &[hold(10, 1_001), hold(60, 300)]), 60);
        assert_eq!(hold(10, 1_000).verdict(90), Verdict::Hold, "the budget itself is allowed");
    }

    #[test]
    fn a_send_is_forgotten_when_it_fails_and_kept_when_delivered() {
        let sends = Arc::new(SnapshotSends::default());
        drop(sends.start(7, 100, 10));
        assert!(sends.snapshot().is_empty(), "a failed or cancelled send holds nothing");
        let first = sends.start(7, 100, 10);
        let second = sends.start(7, 200, 10);
        drop(first);
        assert_eq!(sends.snapshot()[&7].index, 200, "an older send's end leaves the newer one");
        second.delivered();
        let kept = sends.snapshot()[&7];
        assert!(kept.delivered && kept.index == 200, "{kept:?}");
        sends.forget(7, kept.id + 1);
        assert_eq!(sends.snapshot().len(), 1, "another send's id forgets nothing");
        sends.forget(7, kept.id);
        assert!(sends.snapshot().is_empty());
    }
}
