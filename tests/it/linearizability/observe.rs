//! The watch clients: each records every response it gets, session by session, for
//! `watches` to validate. A watch stream is opened with etcd's `hasleader` requirement
//! (`ConnectOptions::with_require_leader` makes etcd-client send the gRPC metadata
//! `hasleader=true` on every request, so a member that loses its leader ends the stream
//! rather than going quiet). After an error, a cancellation or the end of the stream the
//! watch is opened again from the revision after the last one it was given (an event, or
//! a progress notification, which says everything up to its revision was given, as
//! kube-apiserver resumes from bookmarks); after a compaction report, from the
//! compaction revision itself: netsy keeps that revision exact for watches (its
//! tombstones too, see `mvcc::write::compact`), so resuming there loses nothing and
//! checks that it is so. (etcd may drop a tombstone at the compaction revision, so an
//! etcd client would resume after it.) It asks for progress now and then.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, WatchOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::history::Event;
use super::watches::{Response, Session, Spec, WatchLog};

/// How one watch behaves.
#[derive(Debug, Clone)]
pub struct Plan {
    pub spec: Spec,
    pub progress_notify: bool,
    /// The member it opens its streams on (it moves on when that one cannot serve).
    pub home: usize,
    /// The revision its first session starts from.
    pub first: i64,
    /// Cancels and reopens its watch every so often (milliseconds, a range).
    pub restarts: Option<(u64, u64)>,
    /// Some reopenings go back to an older revision, as a client resuming from an old
    /// bookmark does (those replay events, and may hit a compaction).
    pub rewinds: bool,
}

/// What the run and a watch share while it runs.
pub struct Shared {
    /// Every revision below this was given to the watch in its current session line.
    pub next: AtomicI64,
    /// Stop once everything up to this revision was given (`i64::MAX`: keep going).
    pub stop_at: AtomicI64,
}

impl Shared {
    pub fn new(first: i64) -> Arc<Shared> {
        Arc::new(Shared {
            next: AtomicI64::new(first),
            stop_at: AtomicI64::new(i64::MAX),
        })
    }

    /// The last revision the watch has everything up to.
    pub fn covered(&self) -> i64 {
        self.next.load(Ordering::Acquire) - 1
    }

    fn stopping(&self) -> bool {
        self.stop_at.load(Ordering::Acquire) != i64::MAX
    }

    fn done(&self) -> bool {
        self.covered() >= self.stop_at.load(Ordering::Acquire)
    }
}

/// Once told to stop, a watch that cannot get there within this gives up (the run then
/// reports it).
const STOP_WITHIN: Duration = Duration::from_secs(30);
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs one watch until `shared.stop_at` is reached (or `STOP_WITHIN` after it is set).
pub async fn run(plan: Plan, seed: u64, endpoints: Vec<String>, start: Instant, shared: Arc<Shared>) -> WatchLog {
    let mut rng = StdRng::seed_from_u64(
        seed ^ plan
            .spec
            .name
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3)),
    );
    let now = || start.elapsed().as_nanos() as u64;
    let mut member = plan.home % endpoints.len();
    let mut sessions = Vec::new();
    let mut stop_deadline: Option<Instant> = None;
    loop {
        if shared.stopping() {
            let deadline = *stop_deadline.get_or_insert_with(|| Instant::now() + STOP_WITHIN);
            if shared.done() || Instant::now() > deadline {
                break;
            }
        }
        let options = ConnectOptions::new()
            .with_require_leader(true)
            .with_connect_timeout(Duration::from_secs(1))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
        let client = match tokio::time::timeout(OPEN_TIMEOUT, Client::connect([endpoints[member].clone()], Some(options))).await {
            Ok(Ok(c)) => c,
            _ => {
                member = (member + 1) % endpoints.len();
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..300))).await;
                continue;
            }
        };
        let from = shared.next.load(Ordering::Acquire);
        let mut options = WatchOptions::new().with_start_revision(from);
        options = if plan.spec.range.end.is_empty() {
            options
        } else {
            options.with_range(plan.spec.range.end.clone())
        };
        if plan.spec.prev_kv {
            options = options.with_prev_key();
        }
        if plan.progress_notify {
            options = options.with_progress_notify();
        }
        let mut watch_client = client.watch_client();
        let opened = tokio::time::timeout(OPEN_TIMEOUT, watch_client.watch(plan.spec.range.key.clone(), Some(options))).await;
        let Ok(Ok(stream)) = opened else {
            // No stream (no leader there, or the member is going down): try the next one.
            member = (member + 1) % endpoints.len();
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..300))).await;
            continue;
        };
        let (mut requests, mut responses) = stream.split();
        let mut session = Session {
            member,
            start: from,
            responses: Vec::new(),
            end: String::new(),
        };
        let mut watch_id = None;
        let restart_at = plan
            .restarts
            .map(|(lo, hi)| Instant::now() + Duration::from_millis(rng.random_range(lo..hi)));
        let mut canceling: Option<Instant> = None;
        let mut ask_progress_at = Instant::now() + Duration::from_millis(rng.random_range(500..2000));
        let mut error = false;
        session.end = loop {
            match tokio::time::timeout(Duration::from_millis(100), responses.message()).await {
                Err(_) => {}
                Ok(Err(e)) => {
                    error = true;
                    break format!("error: {e}");
                }
                Ok(Ok(None)) => {
                    error = true;
                    break "the stream ended".into();
                }
                Ok(Ok(Some(resp))) => {
                    let at = now();
                    let rev = resp.header().map_or(0, |h| h.revision());
                    if resp.created() {
                        watch_id = Some(resp.watch_id());
                        session.responses.push(Response::Created { at, rev });
                    }
                    if resp.canceled() {
                        if resp.compact_revision() > 0 {
                            let compact_rev = resp.compact_revision();
                            session.responses.push(Response::Compacted { at, compact_rev });
                            shared.next.store(compact_rev, Ordering::Release);
                            break format!("compacted at {compact_rev}");
                        }
                        let reason = resp.cancel_reason().to_string();
                        session.responses.push(Response::Canceled {
                            at,
                            reason: reason.clone(),
                        });
                        break format!("canceled: {reason}");
                    }
                    if !resp.events().is_empty() {
                        let events: Vec<Event> = resp.events().iter().filter_map(Event::from_client).collect();
                        let last = events.iter().map(Event::rev).max().unwrap_or(0);
                        session.responses.push(Response::Events { at, rev, events });
                        shared.next.fetch_max(last + 1, Ordering::AcqRel);
                    } else if !resp.created() {
                        session.responses.push(Response::Progress { at, rev });
                        shared.next.fetch_max(rev + 1, Ordering::AcqRel);
                    }
                }
            }
            if shared.stopping() {
                let deadline = *stop_deadline.get_or_insert_with(|| Instant::now() + STOP_WITHIN);
                if shared.done() {
                    break "stopped: got everything asked for".into();
                }
                if Instant::now() > deadline {
                    break "stopped: gave up".into();
                }
            }
            if let Some(since) = canceling {
                if since.elapsed() > OPEN_TIMEOUT {
                    break "the cancel went unanswered".into();
                }
            } else if let (Some(at), Some(id), false) = (restart_at, watch_id, shared.stopping()) {
                if Instant::now() >= at {
                    canceling = Some(Instant::now());
                    if requests.cancel(id).await.is_err() {
                        error = true;
                        break "could not send the cancel".into();
                    }
                }
            }
            if Instant::now() >= ask_progress_at {
                let every = if shared.stopping() { 200..400 } else { 500..2000 };
                ask_progress_at = Instant::now() + Duration::from_millis(rng.random_range(every));
                if requests.request_progress().await.is_err() {
                    error = true;
                    break "could not ask for progress".into();
                }
            }
        };
        sessions.push(session);
        if error {
            member = (member + 1) % endpoints.len();
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..300))).await;
        } else if plan.rewinds && !shared.stopping() && rng.random_bool(0.3) {
            // Go back to an older revision, a little or anywhere (often compacted by
            // then): this session line replays what it had.
            let next = shared.next.load(Ordering::Acquire);
            if next > 1 {
                let back = if rng.random_bool(0.5) {
                    rng.random_range(1..200).min(next - 1)
                } else {
                    rng.random_range(1..next)
                };
                shared.next.store(next - back, Ordering::Release);
            }
        }
    }
    WatchLog { spec: plan.spec, sessions }
}
