//! Auto-compaction (etcd's `--auto-compaction-mode`/`-retention`): the leader compacts
//! the keyspace through Raft, like a client's Compact.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Replica;
use crate::config::AutoCompactionPolicy;
use crate::proto::etcdserverpb::CompactionRequest;

/// `Revision` mode checks this often (etcd's revision compactor does too).
const REVISION_CHECK: Duration = Duration::from_secs(300);

/// Runs `policy` until the task is dropped.
pub async fn run(replica: Arc<Replica>, policy: AutoCompactionPolicy) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut planner = Planner::new(policy, Instant::now());
    loop {
        tick.tick().await;
        let Ok(revs) = replica.reader().revisions() else { continue };
        let Some(target) = planner.target(Instant::now(), revs.current) else {
            continue;
        };
        // A standby replays its primary's compactions.
        if target <= revs.compacted || !replica.is_leader() || replica.is_standby() {
            continue;
        }
        let req = CompactionRequest {
            revision: target,
            physical: false,
        };
        match replica.compact(req).await {
            Ok(_) => tracing::info!(revision = target, "auto-compaction finished"),
            Err(e) => tracing::warn!(revision = target, error = %crate::error_chain(&e), "auto-compaction failed"),
        }
    }
}

/// When to compact, and to which revision, from the revisions seen over time.
struct Planner {
    policy: AutoCompactionPolicy,
    /// Revisions observed: (when, revision).
    history: VecDeque<(Instant, i64)>,
    last_check: Instant,
}

impl Planner {
    fn new(policy: AutoCompactionPolicy, now: Instant) -> Planner {
        Planner {
            policy,
            history: VecDeque::new(),
            last_check: now,
        }
    }

    /// The revision to compact to now, if one is due (`current` is the store's revision).
    fn target(&mut self, now: Instant, current: i64) -> Option<i64> {
        self.history.push_back((now, current));
        let target = match self.policy {
            AutoCompactionPolicy::Periodic(retention) => {
                // Compact to the newest revision observed at least `retention` ago,
                // checking every retention/10 (etcd's periodic compactor granularity).
                if now.duration_since(self.last_check) < retention / 10 {
                    return None;
                }
                let mut target = None;
                while let Some(&(at, rev)) = self.history.front() {
                    if now.duration_since(at) < retention {
                        break;
                    }
                    target = Some(rev);
                    self.history.pop_front();
                }
                target
            }
            AutoCompactionPolicy::Revision(keep) => {
                if now.duration_since(self.last_check) < REVISION_CHECK {
                    return None;
                }
                self.history.clear();
                Some(current - keep)
            }
        };
        self.last_check = now;
        target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_compacts_to_the_revision_seen_a_retention_ago() {
        let start = Instant::now();
        let retention = Duration::from_secs(100);
        let mut p = Planner::new(AutoCompactionPolicy::Periodic(retention), start);
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(p.target(at(1), 10), None, "checks every retention/10");
        assert_eq!(p.target(at(10), 20), None, "nothing is a retention old yet");
        assert_eq!(p.target(at(50), 30), None);
        assert_eq!(p.target(at(111), 40), Some(20), "the newest revision seen at least 100 s ago");
        assert_eq!(p.target(at(115), 50), None, "not due again before retention/10");
    }

    #[test]
    fn revision_mode_keeps_the_last_n_revisions_checking_every_five_minutes() {
        let start = Instant::now();
        let mut p = Planner::new(AutoCompactionPolicy::Revision(1000), start);
        assert_eq!(p.target(start + Duration::from_secs(299), 5000), None);
        assert_eq!(p.target(start + Duration::from_secs(300), 5000), Some(4000));
        assert_eq!(p.target(start + Duration::from_secs(400), 6000), None);
    }
}
