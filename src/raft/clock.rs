//! The commit clock: the wall-clock time a leader writes into each batch it proposes
//! (`Batch::unix_ms`), which the archive keeps with every entry so a restore can stop
//! at a point in time.
//!
//! Times only grow along an epoch's log, even when a clock steps back or a leader with
//! a slower clock takes over: a stamp is never below the newest stamp this node has
//! seen — in its own proposals, in entries appended to its log (a new leader's log
//! holds every committed entry, Raft's leader completeness), or in the applied state it
//! started from. Readers still take the running maximum (`effective`), so entries
//! written by a netsy without stamps (0) take the time of the entry before them.

use std::sync::atomic::{AtomicU64, Ordering};

/// The newest stamp seen, and the source of new ones.
#[derive(Debug, Default)]
pub struct CommitClock {
    newest: AtomicU64,
}

impl CommitClock {
    pub fn new() -> CommitClock {
        CommitClock::default()
    }

    /// A stamp for a batch proposed now: the wall clock, or the newest stamp seen if
    /// the clock is behind it.
    pub fn stamp(&self) -> u64 {
        let now = wall_clock_ms();
        self.newest.fetch_max(now, Ordering::AcqRel).max(now)
    }

    /// Records a stamp seen in the log or the applied state.
    pub fn observe(&self, unix_ms: u64) {
        self.newest.fetch_max(unix_ms, Ordering::AcqRel);
    }

    pub fn newest(&self) -> u64 {
        self.newest.load(Ordering::Acquire)
    }
}

pub use crate::archive::log::{effective_time as effective, wall_clock_ms};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_never_go_below_what_was_seen() {
        let clock = CommitClock::new();
        let a = clock.stamp();
        assert!(a >= wall_clock_ms() - 1000 && a > 0);
        // A leader before us had a clock an hour ahead.
        let ahead = wall_clock_ms() + 3_600_000;
        clock.observe(ahead);
        assert_eq!(clock.stamp(), ahead, "the stamp waits for the clock");
        assert_eq!(clock.stamp(), ahead);
        clock.observe(5);
        assert_eq!(clock.newest(), ahead, "older stamps change nothing");
        assert_eq!(effective(ahead, 0), ahead, "an unstamped entry keeps the time before it");
        assert_eq!(effective(10, 20), 20);
    }
}
