//! `object-storage` durability: nothing is applied before it is in object storage.
//!
//! In that mode a write is acknowledged only once its log entry is in object storage,
//! because every member may lose its disk and the cluster then comes back from object
//! storage alone. What a member has applied is visible (reads, watch events, response
//! headers), so applying an entry before it is uploaded would show writes that such a
//! restore can lose, and the restored cluster would hand their revisions to other
//! writes. So the state machine waits, before applying committed entries, until they are
//! in object storage:
//!
//! - how far the log is committed (`committed`) is as far as the leader's uploader may
//!   upload (committed entries are never rewritten); the log store announces it when
//!   openraft commits, and the state machine again before applying (so a state machine
//!   held by one upload does not keep the next batch out of the next upload);
//! - the index known to be in object storage (`uploaded`) is the uploader's watermark on
//!   the leader, and on a follower what the leader says with each AppendEntries.
//!
//! In `quorum` durability the gate is open: entries are applied once committed, as in
//! etcd, and only the committed index is announced.

use tokio::sync::watch;

#[derive(Clone)]
pub struct ArchiveGate {
    /// Applies wait for `uploaded` (`object-storage` durability).
    closed: bool,
    committed: watch::Sender<u64>,
    uploaded: watch::Sender<u64>,
}

/// Raises a watermark; it never goes back.
fn raise(w: &watch::Sender<u64>, to: u64) {
    w.send_if_modified(|v| {
        let higher = to > *v;
        if higher {
            *v = to;
        }
        higher
    });
}

impl ArchiveGate {
    /// `wait_for_upload`: `object-storage` durability.
    pub fn new(wait_for_upload: bool) -> ArchiveGate {
        ArchiveGate {
            closed: wait_for_upload,
            committed: watch::channel(0).0,
            uploaded: watch::channel(0).0,
        }
    }

    /// How far the log is committed, as the state machine was told.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// Where openraft's commit index is announced as soon as it is known (the log
    /// store's `save_committed`), ahead of the state machine's own announcement.
    pub fn committed_sender(&self) -> watch::Sender<u64> {
        self.committed.clone()
    }

    /// The highest index known to be in object storage.
    pub fn uploaded(&self) -> watch::Receiver<u64> {
        self.uploaded.subscribe()
    }

    /// Where the uploader (on the leader) publishes its watermark.
    pub fn upload_sender(&self) -> watch::Sender<u64> {
        self.uploaded.clone()
    }

    /// A follower learned from the leader that the log is in object storage through
    /// `index`.
    pub fn leader_uploaded(&self, index: u64) {
        raise(&self.uploaded, index);
    }

    /// Before applying committed entries through `index`: announces them and, with the
    /// gate closed, returns once they are in object storage.
    pub async fn before_apply(&self, index: u64) {
        raise(&self.committed, index);
        if self.closed {
            let mut uploaded = self.uploaded.subscribe();
            // The sender lives as long as this gate: the wait ends only when uploaded.
            let _ = uploaded.wait_for(|u| *u >= index).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_closed_gate_holds_applies_until_the_entries_are_uploaded() {
        let gate = ArchiveGate::new(true);
        let committed = gate.committed();
        let apply = tokio::spawn({
            let gate = gate.clone();
            async move { gate.before_apply(5).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(*committed.borrow(), 5, "the uploader may ship through 5");
        assert!(!apply.is_finished(), "nothing is applied before it is uploaded");
        gate.leader_uploaded(4);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!apply.is_finished());
        gate.upload_sender().send_replace(5);
        tokio::time::timeout(Duration::from_secs(5), apply).await.unwrap().unwrap();
        gate.leader_uploaded(3);
        assert_eq!(*gate.uploaded().borrow(), 5, "the watermark never goes back");
    }

    #[tokio::test]
    async fn an_open_gate_only_announces() {
        let gate = ArchiveGate::new(false);
        tokio::time::timeout(Duration::from_secs(5), gate.before_apply(9)).await.unwrap();
        assert_eq!(*gate.committed().borrow(), 9);
    }
}
