//! Watch: one `WatchStream` per gRPC Watch stream, holding any number of watchers.
//!
//! Events come from the in-process commit stream (`mvcc::Store::subscribe`), which the
//! state machine publishes after each applied batch. Each stream keeps a `position`: the
//! newest revision it has fully dispatched. A watcher is
//! - *synced* when its `next_rev == position + 1`: it gets events straight from each batch;
//! - *behind* when `next_rev <= position` (it started in the past): it is caught up from
//!   history in SQLite, in bounded chunks, before anything else happens on the stream;
//! - *future* when `next_rev > position + 1`: batches are filtered until it is reached.
//!
//! A stream that falls behind the commit stream (a slow client fills its bounded output
//! buffer, so the broadcast ring overtakes it) is not dropped: the missed revisions are
//! read from history, exactly like a watcher that started in the past. Because events are
//! committed to SQLite before they are published, and every delivery advances `next_rev`
//! past what it delivered, nothing is sent twice and nothing is skipped.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;

use crate::mvcc::{CommitBatch, KeyRange, MvccError, Reader, RevisionEvents};
use crate::proto::etcdserverpb::{
    watch_create_request::FilterType, watch_request::RequestUnion, ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse,
};
use crate::proto::mvccpb::{event::EventType, Event};

/// Most revisions read from history in one chunk.
const HISTORY_WINDOW: i64 = 1000;
/// About the most events read from history in one chunk...
const HISTORY_EVENTS: usize = 10_000;
/// ...and about the most bytes of keys and values (events and their `prev_kv`): 10,000
/// events of 10 KiB values would otherwise be a 200 MB chunk, for each stream catching up.
const HISTORY_BYTES: usize = 4 << 20;

/// etcd's `clientv3.InvalidWatchID`: used for stream-wide progress and failed creates.
pub const INVALID_WATCH_ID: i64 = -1;

/// etcd's `mvcc.ErrWatcherDuplicateID`, sent as the cancel reason.
pub const DUPLICATE_ID_REASON: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// Cancel reason for a negative start revision (etcd rejects it since PR #20693).
pub const NEGATIVE_REVISION_REASON: &str = "mvcc: required revision is a negative revision";

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The client went away; the stream ends quietly.
    #[error("watch stream closed by the client")]
    Closed,
    /// The client asked for `hasleader` and the cluster lost its leader.
    #[error("no leader")]
    NoLeader,
    /// The member is stopping: the client watches on through another member.
    #[error("server stopped")]
    Stopped,
    /// A request on the stream could not be received (it does not decode, or is too large).
    #[error("cannot receive a watch request: {0}")]
    Input(tonic::Status),
    #[error(transparent)]
    Storage(#[from] MvccError),
}

/// Fills a response header (cluster and member ids, term) around a revision.
pub type HeaderFn = Arc<dyn Fn(i64) -> ResponseHeader + Send + Sync>;

#[derive(Debug)]
struct Watcher {
    range: KeyRange,
    /// The first revision this watcher wants (for start 0: the revision after creation).
    start_rev: i64,
    next_rev: i64,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// Sent events since the last progress tick (so no progress is due).
    active: bool,
}

impl Watcher {
    fn from_request(req: &WatchCreateRequest, next_rev: i64) -> Watcher {
        // etcd: an empty key means "\0", the smallest key.
        let key: &[u8] = if req.key.is_empty() { &[0] } else { &req.key };
        Watcher {
            range: KeyRange::new(key, &req.range_end),
            start_rev: next_rev,
            next_rev,
            no_put: req.filters.contains(&(FilterType::Noput as i32)),
            no_delete: req.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: req.prev_kv,
            fragment: req.fragment,
            progress_notify: req.progress_notify,
            active: false,
        }
    }

    /// This watcher's events among `revisions` (only those at or after `next_rev`).
    /// Has everything up to `position` and wants nothing before it (etcd: synced and
    /// `startRev <= rev`), so a progress response at `position` is truthful for it.
    fn in_sync_at(&self, position: i64) -> bool {
        self.next_rev == position + 1 && self.start_rev <= position
    }

    fn select(&self, revisions: &[RevisionEvents]) -> Vec<Event> {
        let mut out = Vec::new();
        for r in revisions.iter().filter(|r| r.revision >= self.next_rev) {
            for ev in &r.events {
                let Some(kv) = &ev.kv else { continue };
                if !self.range.contains(&kv.key) {
                    continue;
                }
                let is_put = ev.r#type == EventType::Put as i32;
                if (is_put && self.no_put) || (!is_put && self.no_delete) {
                    continue;
                }
                let mut ev = ev.clone();
                if !self.prev_kv {
                    ev.prev_kv = None;
                }
                out.push(ev);
            }
        }
        out
    }
}

/// The state of one gRPC Watch stream.
pub struct WatchStream {
    reader: Reader,
    out: mpsc::Sender<Result<WatchResponse, tonic::Status>>,
    header: HeaderFn,
    max_request_bytes: usize,
    watchers: BTreeMap<i64, Watcher>,
    next_auto_id: i64,
    /// Every revision up to here has been dispatched to every watcher that wants it.
    position: i64,
    /// Highest header revision sent; headers never go backwards on a stream.
    last_header: i64,
}

impl WatchStream {
    /// Starts a stream at the store's current revision. `commits` must have been
    /// subscribed before this call so that no batch after that revision is missed.
    pub async fn new(
        reader: Reader,
        out: mpsc::Sender<Result<WatchResponse, tonic::Status>>,
        header: HeaderFn,
        max_request_bytes: usize,
    ) -> Result<WatchStream, WatchError> {
        let revs = reader.run(|r| r.revisions()).await?;
        Ok(WatchStream {
            reader,
            out,
            header,
            max_request_bytes,
            watchers: BTreeMap::new(),
            next_auto_id: 0,
            position: revs.current,
            last_header: revs.current,
        })
    }

    /// Applies every batch already waiting, so `position` is the newest published revision.
    pub async fn drain(&mut self, commits: &mut broadcast::Receiver<Arc<CommitBatch>>) -> Result<(), WatchError> {
        loop {
            match commits.try_recv() {
                Ok(batch) => self.on_batch(&batch).await?,
                Err(broadcast::error::TryRecvError::Lagged(_)) => self.on_lagged().await?,
                Err(_) => return Ok(()),
            }
        }
    }

    /// WatchCreateRequest: answers `created` (or a created+canceled failure), then
    /// replays history if the start revision is in the past.
    pub async fn create(&mut self, req: WatchCreateRequest) -> Result<(), WatchError> {
        let fail = |reason: &str| WatchResponse {
            watch_id: INVALID_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        };
        if req.start_revision < 0 {
            return self.send(fail(NEGATIVE_REVISION_REASON), self.position).await;
        }
        let id = if req.watch_id != 0 {
            if self.watchers.contains_key(&req.watch_id) {
                return self.send(fail(DUPLICATE_ID_REASON), self.position).await;
            }
            req.watch_id
        } else {
            while self.watchers.contains_key(&self.next_auto_id) {
                self.next_auto_id += 1;
            }
            self.next_auto_id
        };
        let next_rev = if req.start_revision == 0 {
            self.position + 1
        } else {
            req.start_revision
        };
        self.watchers.insert(id, Watcher::from_request(&req, next_rev));
        crate::metrics::WATCHERS.inc();
        let created = WatchResponse {
            watch_id: id,
            created: true,
            ..Default::default()
        };
        self.send(created, self.position).await?;
        if next_rev <= self.position {
            self.catch_up(self.position).await?;
        }
        Ok(())
    }

    /// WatchCancelRequest: unknown ids are ignored, as in etcd.
    pub async fn cancel(&mut self, id: i64) -> Result<(), WatchError> {
        if self.watchers.remove(&id).is_some() {
            crate::metrics::WATCHERS.dec();
            let resp = WatchResponse {
                watch_id: id,
                canceled: true,
                ..Default::default()
            };
            self.send(resp, self.position).await?;
        }
        Ok(())
    }

    /// WatchProgressRequest: after applying every published batch, answer with
    /// `watch_id = -1` at `position` only if every watcher has everything up to it and
    /// none starts after it (etcd's `progressIfSync`, including the start-revision check
    /// of etcd #20221); otherwise stay silent and let the client ask again, as
    /// kube-apiserver does every 100 ms.
    pub async fn progress(&mut self) -> Result<(), WatchError> {
        if self.watchers.values().all(|w| w.in_sync_at(self.position)) {
            let resp = WatchResponse {
                watch_id: INVALID_WATCH_ID,
                ..Default::default()
            };
            self.send(resp, self.position).await?;
        }
        Ok(())
    }

    /// The periodic progress tick: each synced `progress_notify` watcher that got no
    /// events since the last tick gets a header-only response.
    pub async fn progress_tick(&mut self) -> Result<(), WatchError> {
        let due: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && !w.active && w.in_sync_at(self.position))
            .map(|(id, _)| *id)
            .collect();
        for w in self.watchers.values_mut() {
            w.active = false;
        }
        for id in due {
            let resp = WatchResponse {
                watch_id: id,
                ..Default::default()
            };
            self.send(resp, self.position).await?;
        }
        Ok(())
    }

    /// One batch from the commit stream.
    pub async fn on_batch(&mut self, batch: &CommitBatch) -> Result<(), WatchError> {
        if batch.revision <= self.position {
            return Ok(());
        }
        let first = batch.revisions.first().map_or(batch.revision + 1, |r| r.revision);
        if first > self.position + 1 {
            // Revisions between are committed but were not seen (lag or snapshot install).
            let gap_end = (first - 1).min(batch.revision);
            self.catch_up(gap_end).await?;
            self.position = self.position.max(gap_end);
        }
        let last = batch.revision;
        self.dispatch(&batch.revisions, last).await?;
        self.position = last;
        Ok(())
    }

    /// The stream missed batches: catch every watcher up from history to the store's
    /// current revision.
    pub async fn on_lagged(&mut self) -> Result<(), WatchError> {
        crate::metrics::WATCH_RESYNCS.inc();
        let current = self.reader.run(|r| r.revisions()).await?.current;
        if current > self.position {
            self.catch_up(current).await?;
            self.position = current;
        }
        Ok(())
    }

    /// Brings every watcher with `next_rev <= target` to `target + 1` from history,
    /// canceling those whose next revision was compacted away.
    async fn catch_up(&mut self, target: i64) -> Result<(), WatchError> {
        loop {
            let Some(from) = self.watchers.values().map(|w| w.next_rev).filter(|r| *r <= target).min() else {
                return Ok(());
            };
            let to = target.min(from + HISTORY_WINDOW - 1);
            let (revs, history) = self.reader.run(move |r| r.history(from, to, HISTORY_EVENTS, HISTORY_BYTES)).await?;
            let compacted: Vec<i64> = self
                .watchers
                .iter()
                .filter(|(_, w)| w.next_rev <= target && w.next_rev < revs.compacted)
                .map(|(id, _)| *id)
                .collect();
            if !compacted.is_empty() {
                for id in compacted {
                    self.watchers.remove(&id);
                    crate::metrics::WATCHERS.dec();
                    let resp = WatchResponse {
                        watch_id: id,
                        canceled: true,
                        compact_revision: revs.compacted,
                        ..Default::default()
                    };
                    self.send(resp, revs.current).await?;
                }
                continue;
            }
            self.dispatch(&history.revisions, history.covered_to).await?;
        }
    }

    /// Gives every watcher whose `next_rev <= upto` its events among `revisions` (which
    /// hold every event of the revisions it still needs up to `upto`) and moves it past.
    async fn dispatch(&mut self, revisions: &[RevisionEvents], upto: i64) -> Result<(), WatchError> {
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.next_rev <= upto)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let events = match self.watchers.get_mut(&id) {
                Some(w) => {
                    let events = w.select(revisions);
                    w.next_rev = upto + 1;
                    events
                }
                None => continue,
            };
            if !events.is_empty() {
                self.send_events(id, events, upto).await?;
            }
        }
        Ok(())
    }

    async fn send_events(&mut self, id: i64, events: Vec<Event>, revision: i64) -> Result<(), WatchError> {
        let fragment = match self.watchers.get_mut(&id) {
            Some(w) => {
                w.active = true;
                w.fragment
            }
            None => false,
        };
        let resp = WatchResponse {
            watch_id: id,
            events,
            ..Default::default()
        };
        if fragment {
            let limit = self.max_request_bytes;
            for piece in fragments(resp, limit) {
                self.send(piece, revision).await?;
            }
            Ok(())
        } else {
            self.send(resp, revision).await
        }
    }

    /// Sends one response with a full header at `revision` (never below an earlier one).
    async fn send(&mut self, mut resp: WatchResponse, revision: i64) -> Result<(), WatchError> {
        self.last_header = self.last_header.max(revision);
        resp.header = Some((self.header)(self.last_header));
        crate::metrics::WATCH_EVENTS_SENT.inc_by(resp.events.len() as u64);
        self.out.send(Ok(resp)).await.map_err(|_| WatchError::Closed)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        crate::metrics::WATCHERS.sub(self.watchers.len() as i64);
    }
}

/// Serves one Watch stream until the client is gone (`Closed`; a client that only
/// closes its sending side goes on receiving, as from etcd), a request cannot be received
/// (`Input`), storage fails, or `end` resolves (with why: the leader was lost, the member
/// is stopping). `Ok` when the commit stream ends (the server stops).
pub async fn run<S>(
    mut stream: WatchStream,
    mut input: S,
    mut commits: broadcast::Receiver<Arc<CommitBatch>>,
    progress_interval: Duration,
    end: impl Future<Output = WatchError>,
) -> Result<(), WatchError>
where
    S: Stream<Item = Result<WatchRequest, tonic::Status>> + Unpin,
{
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + progress_interval, progress_interval);
    tokio::pin!(end);
    let mut input_open = true;
    loop {
        tokio::select! {
            req = input.next(), if input_open => {
                let req = match req {
                    Some(Ok(req)) => req,
                    Some(Err(status)) => return Err(WatchError::Input(status)),
                    None => {
                        input_open = false;
                        continue;
                    }
                };
                match req.request_union {
                    Some(RequestUnion::CreateRequest(c)) => {
                        stream.drain(&mut commits).await?;
                        stream.create(c).await?;
                    }
                    Some(RequestUnion::CancelRequest(c)) => stream.cancel(c.watch_id).await?,
                    Some(RequestUnion::ProgressRequest(_)) => {
                        stream.drain(&mut commits).await?;
                        stream.progress().await?;
                    }
                    None => {}
                }
            }
            batch = commits.recv() => match batch {
                Ok(batch) => stream.on_batch(&batch).await?,
                Err(broadcast::error::RecvError::Lagged(_)) => stream.on_lagged().await?,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = ticker.tick() => stream.progress_tick().await?,
            why = &mut end => return Err(why),
            _ = stream.out.closed() => return Err(WatchError::Closed),
        }
    }
}

/// etcd's `sendFragments`: a response over `limit` bytes with several events is split
/// into pieces of at most `limit` bytes (or one event), all but the last marked
/// `fragment`. Events of one revision are only ever split this way.
pub fn fragments(resp: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    if resp.encoded_len() < limit || resp.events.len() < 2 {
        return vec![resp];
    }
    let mut template = resp.clone();
    template.events = Vec::new();
    template.fragment = true;
    let mut pieces = Vec::new();
    let mut current = template.clone();
    for ev in resp.events {
        current.events.push(ev);
        if current.events.len() > 1 && current.encoded_len() >= limit {
            let ev = current.events.pop();
            pieces.push(std::mem::replace(&mut current, template.clone()));
            current.events.extend(ev);
        }
    }
    current.fragment = false;
    pieces.push(current);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mvccpb::KeyValue;

    fn event(key: &str, rev: i64, size: usize) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: key.into(),
                mod_revision: rev,
                value: vec![b'x'; size],
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    fn put(k: &str) -> crate::mvcc::Command {
        crate::mvcc::Command::Put(crate::proto::etcdserverpb::PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })
    }

    fn create(key: &str) -> Result<WatchRequest, tonic::Status> {
        Ok(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: key.into(),
                ..Default::default()
            })),
        })
    }

    /// `run` delivers committed events, and ends with `NoLeader` when the leader is lost
    /// (the `hasleader` contract), or quietly when the client closes its side.
    #[tokio::test]
    async fn run_delivers_after_a_half_close_and_stops_on_leader_loss_or_client_close() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = crate::mvcc::Store::open(&dir.path().join("s.db")).unwrap();
        let reader = Reader::new(store.path());
        let header: HeaderFn = Arc::new(|revision| ResponseHeader {
            revision,
            ..Default::default()
        });
        for leader_goes in [true, false] {
            let commits = store.subscribe();
            let (out_tx, mut out) = mpsc::channel(16);
            let stream = WatchStream::new(reader.clone(), out_tx, header.clone(), 1 << 20).await.unwrap();
            let (req_tx, req_rx) = mpsc::channel(4);
            let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
            let lost = async move {
                let _ = lost_rx.await;
                WatchError::NoLeader
            };
            let task = tokio::spawn(run(
                stream,
                tokio_stream::wrappers::ReceiverStream::new(req_rx),
                commits,
                Duration::from_secs(600),
                lost,
            ));
            req_tx.send(create("k")).await.unwrap();
            assert!(out.recv().await.unwrap().unwrap().created);
            store.apply_batch(&[Some(put("k"))], &Default::default()).unwrap();
            let ev = out.recv().await.unwrap().unwrap();
            assert_eq!(ev.events.len(), 1);
            if leader_goes {
                lost_tx.send(()).unwrap();
                assert!(matches!(task.await.unwrap(), Err(WatchError::NoLeader)));
            } else {
                // A half-close: events go on until the client is gone.
                drop(req_tx);
                store.apply_batch(&[Some(put("k"))], &Default::default()).unwrap();
                let ev = out.recv().await.unwrap().unwrap();
                assert_eq!(ev.events.len(), 1);
                drop(out);
                assert!(matches!(task.await.unwrap(), Err(WatchError::Closed)));
                drop(lost_tx);
            }
        }
    }

    #[test]
    fn fragments_split_large_responses_and_mark_all_but_the_last() {
        let resp = WatchResponse {
            watch_id: 7,
            events: (0..10).map(|i| event(&format!("k{i}"), 5, 300)).collect(),
            ..Default::default()
        };
        let pieces = fragments(resp.clone(), 1000);
        assert!(pieces.len() >= 4, "{} pieces", pieces.len());
        let rejoined: Vec<Event> = pieces.iter().flat_map(|p| p.events.clone()).collect();
        assert_eq!(rejoined, resp.events);
        for p in &pieces[..pieces.len() - 1] {
            assert!(p.fragment);
            assert!(p.encoded_len() < 1000);
            assert_eq!(p.watch_id, 7);
        }
        assert!(!pieces.last().unwrap().fragment);
        // Small responses and single events are never split.
        assert_eq!(fragments(resp.clone(), 1 << 20).len(), 1);
        let single = WatchResponse {
            events: vec![event("big", 1, 5000)],
            ..Default::default()
        };
        assert_eq!(fragments(single, 1000).len(), 1);
    }

    #[test]
    fn watcher_selects_by_range_revision_and_filters() {
        let req = WatchCreateRequest {
            key: b"a".to_vec(),
            range_end: b"c".to_vec(),
            filters: vec![FilterType::Nodelete as i32],
            ..Default::default()
        };
        let w = Watcher::from_request(&req, 3);
        let mut del = event("b", 3, 1);
        del.r#type = EventType::Delete as i32;
        let revs = vec![
            RevisionEvents {
                revision: 2,
                events: vec![event("a", 2, 1)],
            },
            RevisionEvents {
                revision: 3,
                events: vec![event("b", 3, 1), event("c", 3, 1), del],
            },
        ];
        let got: Vec<Vec<u8>> = w.select(&revs).into_iter().map(|e| e.kv.unwrap().key).collect();
        assert_eq!(got, vec![b"b".to_vec()]);
    }
}
