//! The leader ships committed log entries to object storage as segments.
//!
//! Every `segment_max_delay` the leader takes every committed entry after its watermark
//! (the last index already in object storage) and uploads it in segments of at most
//! `segment_max_bytes`, each created with `PutMode::Create`: a stale leader can never
//! overwrite a segment, and a retry after a lost response finds its own segment already
//! there (verified byte for byte) and moves on. Failures are retried with backoff; the
//! backlog stays in the local Raft log meanwhile: the log is never purged past the
//! watermark (`LogSource::set_purge_floor`). The watermark is published for
//! `object-storage` durability and for metrics.
//!
//! The log and this node's progress come from the Raft layer as a [`LogSource`] (entries
//! already encoded) and a [`Progress`] channel; the uploader never decodes an entry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use object_store::{ObjectStore, ObjectStoreExt, PutMode};
use tokio::sync::watch;

use super::log::{BoxError, LogSource, Progress};
use super::segment::{self, SegmentName};

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("object storage: {0}")]
    Store(#[from] object_store::Error),
    #[error(transparent)]
    Segment(#[from] segment::SegmentError),
    #[error(transparent)]
    Snapshot(#[from] super::snapshot::SnapshotError),
    #[error("raft log: {0}")]
    Log(#[source] BoxError),
    #[error("raft log: entries after {0} are no longer in the local log (purged before upload); a snapshot upload must cover them")]
    Purged(u64),
    #[error("{0} already exists with different content (another leader wrote this range)")]
    Conflict(String),
}

#[derive(Debug, Clone)]
pub struct UploaderConfig {
    pub epoch: u64,
    pub segment_max_bytes: usize,
    pub segment_max_delay: Duration,
    /// Upload as soon as entries are applied instead of on the `segment_max_delay` tick
    /// (`object-storage` durability, where every write waits for its upload).
    pub eager: bool,
    /// The most segment PUTs per second (`Pacer`).
    pub max_puts_per_second: u32,
}

/// Paces segment uploads: at most one PUT every `1 / rate` seconds (a token bucket
/// holding one token), so no second of any load sees more than `rate` + 1 of them. After
/// a quiet time the next PUT goes at once; under a steady load each carries everything
/// committed since the one before. (A bucket of `rate` tokens would let twice the rate
/// through in the second after a quiet time.)
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl Pacer {
    pub fn new(rate: u32) -> Pacer {
        let rate = f64::from(rate.max(1));
        Pacer {
            rate,
            tokens: 1.0,
            at: tokio::time::Instant::now(),
        }
    }

    fn refill(&mut self, now: tokio::time::Instant) {
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(1.0);
        self.at = now;
    }

    /// How long until a PUT may go (zero: now).
    pub fn wait(&mut self, now: tokio::time::Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }

    /// Takes the token of a PUT about to go.
    pub fn take(&mut self, now: tokio::time::Instant) {
        self.refill(now);
        self.tokens -= 1.0;
    }
}

/// Creates `name` with `bytes`; if it already exists with the same bytes (our earlier
/// attempt whose response was lost) that is success too.
pub async fn put_segment(store: &dyn ObjectStore, name: &SegmentName, bytes: Vec<u8>) -> Result<(), UploadError> {
    let path = name.path();
    match store.put_opts(&path, bytes.clone().into(), PutMode::Create.into()).await {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) => {
            let existing = store.get(&path).await?.bytes().await?;
            if existing.as_ref() == bytes.as_slice() {
                Ok(())
            } else {
                Err(UploadError::Conflict(path.to_string()))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The highest index `epoch` holds in object storage, in a segment or covered by a
/// snapshot (0 when there is neither).
pub async fn stored_watermark(store: &dyn ObjectStore, epoch: u64) -> Result<u64, UploadError> {
    let segments = segment::list(store, epoch).await?.last().map_or(0, |(n, _)| n.last);
    let snapshot = super::snapshot::list(store, epoch).await?.last().map_or(0, |(n, _)| n.index);
    Ok(segments.max(snapshot))
}

pub struct Uploader {
    store: Arc<dyn ObjectStore>,
    log: Arc<dyn LogSource>,
    progress: watch::Receiver<Progress>,
    /// How far the log is committed (the state machine announces it before applying;
    /// in `object-storage` durability it applies only what this uploads).
    committed: watch::Receiver<u64>,
    cfg: UploaderConfig,
    uploaded: watch::Sender<u64>,
    uploaded_bytes: Arc<AtomicU64>,
    pacer: Pacer,
}

/// How often a follower reads the archive's watermark (its log purge floor).
const FOLLOWER_WATERMARK_EVERY: Duration = Duration::from_secs(10);

impl Uploader {
    /// Ships the committed entries of `log` to `store` while `progress` says this node
    /// leads, publishing its watermark in `uploaded` (which it only ever raises).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        log: Arc<dyn LogSource>,
        progress: watch::Receiver<Progress>,
        committed: watch::Receiver<u64>,
        uploaded: watch::Sender<u64>,
        cfg: UploaderConfig,
    ) -> Uploader {
        // Nothing is known to be uploaded yet: keep the whole log until it is.
        log.set_purge_floor(0);
        let pacer = Pacer::new(cfg.max_puts_per_second);
        Uploader {
            store,
            log,
            progress,
            committed,
            cfg,
            uploaded,
            uploaded_bytes: Arc::default(),
            pacer,
        }
    }

    /// The last index that may be uploaded: committed (or at least applied).
    fn upload_limit(&self) -> u64 {
        self.progress.borrow().applied.max(*self.committed.borrow())
    }

    /// Bytes of segments uploaded so far (the snapshotter's `snapshot_bytes` threshold).
    pub fn uploaded_bytes(&self) -> Arc<AtomicU64> {
        self.uploaded_bytes.clone()
    }

    /// The last index known to be in object storage.
    pub fn watermark(&self) -> watch::Receiver<u64> {
        self.uploaded.subscribe()
    }

    /// Runs until dropped (the caller selects it against shutdown).
    pub async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        let mut watermark: Option<u64> = None;
        // Followers learn the archive's watermark now and then, so that they too purge
        // their log only up to what object storage has (they need the rest if they lead).
        let mut follower_check = tokio::time::Instant::now();
        loop {
            if self.cfg.eager {
                // Whatever was applied meanwhile, and what a pending upload let queue up,
                // goes out together; wait only when there is nothing to send. A follower
                // sends nothing: it waits too (else its loop never yields and starves the
                // member's other tasks, Raft's among them).
                let behind = self.progress.borrow().leader && self.upload_limit() > watermark.unwrap_or(0);
                if !behind {
                    let changed = async {
                        tokio::select! {
                            r = self.progress.changed() => r.is_ok(),
                            r = self.committed.changed() => r.is_ok(),
                        }
                    };
                    let waited = tokio::time::timeout(self.cfg.segment_max_delay, changed).await;
                    if let Ok(false) = waited {
                        // Raft has stopped: nothing changes any more; do not spin.
                        tokio::time::sleep(self.cfg.segment_max_delay).await;
                    }
                }
            } else {
                tokio::time::sleep(self.cfg.segment_max_delay).await;
            }
            let leader = self.progress.borrow_and_update().leader;
            self.committed.borrow_and_update();
            let pass_started = crate::metrics::unix_now();
            let limit = self.upload_limit();
            if !leader {
                watermark = None; // re-read it if leadership comes back
                if follower_check.elapsed() >= FOLLOWER_WATERMARK_EVERY {
                    follower_check = tokio::time::Instant::now();
                    match stored_watermark(self.store.as_ref(), self.cfg.epoch).await {
                        Ok(mark) => self.log.set_purge_floor(mark),
                        Err(e) => tracing::debug!(error = %crate::error_chain(&e), "cannot read the archive watermark"),
                    }
                }
                continue;
            }
            let result = async {
                let mark = match watermark {
                    Some(w) => w,
                    None => stored_watermark(self.store.as_ref(), self.cfg.epoch).await?,
                };
                watermark = Some(mark);
                self.upload_through(mark, limit).await
            }
            .await;
            match result {
                Ok(mark) => {
                    watermark = Some(mark);
                    self.log.set_purge_floor(mark);
                    self.uploaded.send_if_modified(|w| {
                        let higher = mark > *w;
                        if higher {
                            *w = mark;
                        }
                        higher
                    });
                    crate::metrics::ARCHIVED_INDEX.set(mark as i64);
                    // Everything committed when this pass started is in object storage now.
                    crate::metrics::ARCHIVE_CAUGHT_UP_TIMESTAMP.set(pass_started);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    // Look again next time: a snapshot may have covered what is missing.
                    watermark = None;
                    tracing::warn!(error = %crate::error_chain(&e), retry_in_ms = backoff.as_millis() as u64, "segment upload failed; the backlog stays in the local log");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Uploads entries `mark+1..=limit` (and whatever was applied meanwhile when the
    /// pacer holds an upload back); returns the new watermark.
    async fn upload_through(&mut self, mut mark: u64, mut limit: u64) -> Result<u64, UploadError> {
        while mark < limit {
            let wait = self.pacer.wait(tokio::time::Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
                limit = limit.max(self.upload_limit());
            }
            let max_bytes = self.cfg.segment_max_bytes as u64;
            let entries = self.log.entries(mark + 1, limit, max_bytes).await.map_err(UploadError::Log)?;
            match entries.first() {
                Some(f) if f.index == mark + 1 => {}
                _ => return Err(UploadError::Purged(mark)),
            }
            let mut batch = Vec::new();
            let mut bytes = 0;
            for frame in entries {
                bytes += frame.entry.len();
                batch.push(frame);
                if bytes >= self.cfg.segment_max_bytes {
                    break;
                }
            }
            let name = SegmentName {
                epoch: self.cfg.epoch,
                first: batch[0].index,
                last: batch[batch.len() - 1].index,
            };
            let encoded = segment::encode(&batch)?;
            let size = encoded.len() as u64;
            self.pacer.take(tokio::time::Instant::now());
            put_segment(self.store.as_ref(), &name, encoded).await?;
            self.uploaded_bytes.fetch_add(size, Ordering::AcqRel);
            tracing::debug!(segment = %name.path(), entries = batch.len(), bytes, "uploaded segment");
            mark = name.last;
        }
        Ok(mark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netsy_testkit::FaultyStore;

    #[tokio::test]
    async fn lost_put_response_is_recognised_and_conflicts_are_reported() {
        let faulty = FaultyStore::new(Arc::new(object_store::memory::InMemory::new()));
        let faults = faulty.faults.clone();
        let name = SegmentName {
            epoch: 1,
            first: 1,
            last: 2,
        };
        let frame = |i: u64, e: &[u8]| segment::Frame::new(i, 0, e.to_vec());
        let bytes = segment::encode(&[frame(1, b"a"), frame(2, b"b")]).unwrap();
        faults.lose_put_responses.store(1, Ordering::Release);
        assert!(
            put_segment(&faulty, &name, bytes.clone()).await.is_err(),
            "the lost response surfaces"
        );
        put_segment(&faulty, &name, bytes.clone())
            .await
            .expect("the retry finds its own segment");
        let other = segment::encode(&[frame(1, b"x"), frame(2, b"y")]).unwrap();
        assert!(matches!(put_segment(&faulty, &name, other).await, Err(UploadError::Conflict(_))));
        let next = SegmentName {
            epoch: 1,
            first: 3,
            last: 7,
        };
        put_segment(
            &faulty,
            &next,
            segment::encode(&(3..=7).map(|i| frame(i, b"")).collect::<Vec<_>>()).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(stored_watermark(&faulty, 1).await.unwrap(), 7);
        assert_eq!(stored_watermark(&faulty, 2).await.unwrap(), 0);
    }

    /// A log of entries `first..=last` (or one that fails every read).
    struct FakeLog {
        first: u64,
        last: u64,
        fail: bool,
        floor: AtomicU64,
        /// The most entries one call returned.
        largest_read: AtomicU64,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("disk on fire")]
    struct Fire;

    #[async_trait::async_trait]
    impl LogSource for FakeLog {
        async fn entries(&self, from: u64, to: u64, max_bytes: u64) -> Result<Vec<segment::Frame>, BoxError> {
            if self.fail {
                return Err(Box::new(Fire));
            }
            // 10 bytes an entry, through the one that reaches `max_bytes`.
            let most = max_bytes.div_ceil(10).max(1);
            let frames: Vec<segment::Frame> = (from.max(self.first)..=to.min(self.last))
                .take(most as usize)
                .map(|i| segment::Frame::new(i, 1000 + i, vec![i as u8; 10]))
                .collect();
            self.largest_read.fetch_max(frames.len() as u64, Ordering::AcqRel);
            Ok(frames)
        }

        fn set_purge_floor(&self, index: u64) {
            self.floor.store(index, Ordering::Release);
        }
    }

    /// A follower's eager uploader (object-storage durability) with committed entries
    /// it must not send waits for a change; it once looped without yielding, and on a
    /// busy machine the member's Raft RPCs then timed out for tens of seconds. Here it
    /// shares a one-thread runtime with a ticker, which must keep ticking.
    #[test]
    fn a_followers_eager_uploader_leaves_the_runtime_to_other_tasks() {
        let (ticks_tx, ticks) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let (mut up, _) = uploader(Arc::new(object_store::memory::InMemory::new()), 1, false);
                up.cfg.eager = true;
                let (progress_tx, progress) = watch::channel(Progress { leader: false, applied: 9 });
                let (committed_tx, committed) = watch::channel(9);
                up.progress = progress;
                up.committed = committed;
                tokio::spawn(up.run());
                loop {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    if ticks_tx.send(()).is_err() {
                        break;
                    }
                }
                drop((progress_tx, committed_tx));
            });
        });
        for i in 0..20 {
            ticks
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| panic!("tick {i}: the uploader holds the runtime"));
        }
    }

    fn uploader(store: Arc<dyn ObjectStore>, first: u64, fail: bool) -> (Uploader, Arc<FakeLog>) {
        let log = Arc::new(FakeLog {
            first,
            last: 9,
            fail,
            floor: AtomicU64::new(u64::MAX),
            largest_read: AtomicU64::new(0),
        });
        let (_, progress) = watch::channel(Progress::default());
        let (_, committed) = watch::channel(0);
        let cfg = UploaderConfig {
            epoch: 4,
            segment_max_bytes: 35,
            segment_max_delay: Duration::from_millis(10),
            eager: false,
            max_puts_per_second: 10,
        };
        (
            Uploader::new(store, log.clone(), progress, committed, watch::channel(0).0, cfg),
            log,
        )
    }

    #[tokio::test]
    async fn the_log_is_shipped_in_segments_and_its_failures_keep_their_cause() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let (mut up, log) = uploader(store.clone(), 1, false);
        assert_eq!(log.floor.load(Ordering::Acquire), 0, "nothing is purged before it is uploaded");
        assert_eq!(up.upload_through(0, 9).await.unwrap(), 9);
        let names: Vec<(u64, u64)> = segment::list(store.as_ref(), 4)
            .await
            .unwrap()
            .iter()
            .map(|(n, _)| (n.first, n.last))
            .collect();
        assert_eq!(
            names,
            vec![(1, 4), (5, 8), (9, 9)],
            "at most segment_max_bytes (35) each, then one more entry"
        );
        assert_eq!(
            log.largest_read.load(Ordering::Acquire),
            4,
            "the log is read a segment at a time, not the whole backlog each time"
        );
        let (name, _) = segment::list(store.as_ref(), 4).await.unwrap()[1];
        let bytes = store.get(&name.path()).await.unwrap().bytes().await.unwrap();
        let decoded = segment::decode(&bytes, &name).unwrap();
        assert_eq!(decoded.encoding, segment::EntryEncoding::Current);
        assert_eq!(
            decoded.frames[0],
            segment::Frame::new(5, 1005, vec![5; 10]),
            "the log's bytes and time, as they are"
        );

        let (mut up, _) = uploader(store.clone(), 1, true);
        let err = up.upload_through(0, 9).await.unwrap_err();
        assert!(matches!(err, UploadError::Log(_)), "{err:?}");
        let source = std::error::Error::source(&err).expect("the log's error is the source");
        assert!(source.downcast_ref::<Fire>().is_some(), "{source:?}");
        assert_eq!(crate::error_chain(&err), "raft log: disk on fire");

        let (mut up, _) = uploader(store, 5, false);
        let err = up.upload_through(2, 9).await.unwrap_err();
        assert!(matches!(err, UploadError::Purged(2)), "{err:?}");
        assert!(err.to_string().contains("entries after 2 are no longer in the local log"), "{err}");
    }

    #[test]
    fn the_pacer_holds_the_rate_in_every_second() {
        let mut p = Pacer::new(10);
        let start = tokio::time::Instant::now();
        assert_eq!(p.wait(start), Duration::ZERO, "the first PUT goes at once");
        p.take(start);
        let wait = p.wait(start);
        assert!(wait > Duration::from_millis(99) && wait <= Duration::from_millis(100), "{wait:?}");
        // Under steady demand PUTs come 100 ms apart: at most 11 in any closed second.
        let mut now = start;
        let mut times = vec![start];
        while now < start + Duration::from_secs(5) {
            now += p.wait(now);
            p.take(now);
            times.push(now);
        }
        for (i, t) in times.iter().enumerate() {
            let within = times[i..].iter().take_while(|u| **u <= *t + Duration::from_secs(1)).count();
            assert!(within <= 11, "{within} PUTs in the second from {t:?}");
        }
        // After a quiet time one PUT goes at once, not a burst.
        let later = now + Duration::from_secs(60);
        assert_eq!(p.wait(later), Duration::ZERO);
        p.take(later);
        assert!(p.wait(later) > Duration::from_millis(99));
    }
}
