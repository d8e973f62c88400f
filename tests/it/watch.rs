//! Black-box etcd Watch semantics over gRPC with the `etcd-client` crate.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::Netsy;
use etcd_client::{Client, EventType, PutOptions, Txn, TxnOp, WatchFilterType, WatchOptions, WatchResponse, WatchStream};

/// The next response on `stream`, failing the test after 10 s.
async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("timed out waiting for a watch response")
        .expect("watch stream error")
        .expect("watch stream ended")
}

/// Responses until one with events arrives (skipping nothing else: anything else fails).
async fn next_events(stream: &mut WatchStream) -> WatchResponse {
    let r = next(stream).await;
    assert!(!r.events().is_empty(), "expected events, got {r:?}");
    r
}

async fn recv_split(rx: &mut etcd_client::WatchResponseStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), rx.message())
        .await
        .expect("timed out waiting for a watch response")
        .expect("watch stream error")
        .expect("watch stream ended")
}

fn revision_of(r: &WatchResponse) -> i64 {
    r.header().expect("every watch response has a header").revision()
}

async fn put(c: &mut Client, k: &str, v: &str) -> i64 {
    c.put(k, v, None).await.expect("put").header().unwrap().revision()
}

#[tokio::test]
async fn created_comes_first_and_events_carry_prev_kv() {
    let n = Netsy::start();
    let mut c = n.client().await;
    put(&mut c, "other", "x").await;
    let mut w = c.watch("a", Some(WatchOptions::new().with_prev_key())).await.unwrap();
    let created = next(&mut w).await;
    assert!(created.created() && !created.canceled());
    assert_eq!(created.watch_id(), 0, "etcd numbers automatic watch ids from 0");
    assert_eq!(revision_of(&created), 2, "created carries the current revision");
    let hdr = created.header().unwrap();
    assert!(hdr.cluster_id() != 0 && hdr.member_id() != 0);

    let r1 = put(&mut c, "a", "1").await;
    let r2 = put(&mut c, "a", "2").await;
    let r3 = c.delete("a", None).await.unwrap().header().unwrap().revision();

    let e = next_events(&mut w).await;
    assert_eq!(revision_of(&e), r1);
    let ev = &e.events()[0];
    assert_eq!(ev.event_type(), EventType::Put);
    let kv = ev.kv().unwrap();
    assert_eq!((kv.create_revision(), kv.mod_revision(), kv.version()), (r1, r1, 1));
    assert!(ev.prev_kv().is_none(), "a create has no previous value");

    let e = next_events(&mut w).await;
    let ev = &e.events()[0];
    assert_eq!(ev.kv().unwrap().mod_revision(), r2);
    assert_eq!(ev.prev_kv().unwrap().value(), b"1");

    let e = next_events(&mut w).await;
    let ev = &e.events()[0];
    assert_eq!(ev.event_type(), EventType::Delete);
    let kv = ev.kv().unwrap();
    assert_eq!((kv.key(), kv.mod_revision(), kv.version()), (&b"a"[..], r3, 0));
    assert_eq!(ev.prev_kv().unwrap().value(), b"2", "deletes carry prev_kv");

    // Without prev_kv requested, none is sent.
    let mut plain = c.watch("b", None).await.unwrap();
    next(&mut plain).await;
    put(&mut c, "b", "1").await;
    put(&mut c, "b", "2").await;
    let mut seen = 0;
    while seen < 2 {
        let e = next_events(&mut plain).await;
        for ev in e.events() {
            assert!(ev.prev_kv().is_none());
            seen += 1;
        }
    }
}

#[tokio::test]
async fn many_watches_on_one_stream_with_ranges_filters_and_cancel() {
    let n = Netsy::start();
    let mut c = n.client().await;
    let mut w = c.watch("p/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    assert_eq!(next(&mut w).await.watch_id(), 0);
    w.watch("a", Some(WatchOptions::new().with_range("c"))).await.unwrap();
    assert_eq!(next(&mut w).await.watch_id(), 1);
    w.watch("k", Some(WatchOptions::new().with_filters([WatchFilterType::NoPut])))
        .await
        .unwrap();
    assert_eq!(next(&mut w).await.watch_id(), 2);
    w.watch("k", Some(WatchOptions::new().with_filters([WatchFilterType::NoDelete])))
        .await
        .unwrap();
    assert_eq!(next(&mut w).await.watch_id(), 3);
    // A second stream on the same connection is independent.
    let mut w2 = c.watch("p/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    let created2 = next(&mut w2).await;
    assert!(created2.created());

    put(&mut c, "p/1", "v").await; // -> 0
    put(&mut c, "pz", "v").await; // nobody
    put(&mut c, "b", "v").await; // -> 1
    put(&mut c, "c", "v").await; // nobody (range end is exclusive)
    put(&mut c, "k", "v").await; // -> 3 (2 filters puts)
    c.delete("k", None).await.unwrap(); // -> 2 (3 filters deletes)

    let mut got = Vec::new();
    for _ in 0..4 {
        let r = next_events(&mut w).await;
        for ev in r.events() {
            got.push((
                r.watch_id(),
                String::from_utf8_lossy(ev.kv().unwrap().key()).to_string(),
                ev.event_type(),
            ));
        }
    }
    assert_eq!(
        got,
        vec![
            (0, "p/1".to_string(), EventType::Put),
            (1, "b".to_string(), EventType::Put),
            (3, "k".to_string(), EventType::Put),
            (2, "k".to_string(), EventType::Delete),
        ]
    );
    let r = next_events(&mut w2).await;
    assert_eq!(r.events()[0].kv().unwrap().key(), b"p/1");

    w.cancel(0).await.unwrap();
    let r = next(&mut w).await;
    assert!(r.canceled() && r.watch_id() == 0 && r.events().is_empty());
    put(&mut c, "p/2", "v").await;
    put(&mut c, "a", "v").await;
    let r = next_events(&mut w).await;
    assert_eq!(r.watch_id(), 1, "the canceled watch gets nothing more");
    // Canceling an unknown id is ignored; the stream keeps working.
    w.cancel(42).await.unwrap();
    put(&mut c, "a", "w").await;
    assert_eq!(next_events(&mut w).await.watch_id(), 1);
}

#[tokio::test]
async fn client_chosen_ids_duplicates_and_negative_revisions() {
    let n = Netsy::start();
    let mut c = n.client().await;
    let mut w = c.watch("x", Some(WatchOptions::new().with_watch_id(100))).await.unwrap();
    let r = next(&mut w).await;
    assert!(r.created() && !r.canceled());
    assert_eq!(r.watch_id(), 100);
    w.watch("y", Some(WatchOptions::new().with_watch_id(100))).await.unwrap();
    let r = next(&mut w).await;
    assert!(r.created() && r.canceled(), "{r:?}");
    assert_eq!(r.watch_id(), -1);
    assert_eq!(r.cancel_reason(), "mvcc: duplicate watch ID provided on the WatchStream");
    w.watch("y", Some(WatchOptions::new().with_start_revision(-1))).await.unwrap();
    let r = next(&mut w).await;
    assert!(r.created() && r.canceled() && r.watch_id() == -1, "{r:?}");
    // Automatic ids skip ids the client took.
    w.watch("z", None).await.unwrap();
    assert_eq!(next(&mut w).await.watch_id(), 0);
    // The original watch still works.
    put(&mut c, "x", "1").await;
    assert_eq!(next_events(&mut w).await.watch_id(), 100);
}

/// Three keys per revision; watches opened in the past while writes continue must see
/// every revision from their start exactly once, in order, each revision whole.
#[tokio::test]
async fn history_replay_joins_live_events_without_gap_or_duplicate() {
    let n = Netsy::start();
    let mut c = n.client().await;
    const REVS: i64 = 600;
    let writer = {
        let mut c = n.client().await;
        tokio::spawn(async move {
            for i in 0..REVS {
                let ops: Vec<TxnOp> = (0..3).map(|j| TxnOp::put(format!("h/{j}"), format!("{i}"), None)).collect();
                c.txn(Txn::new().and_then(ops)).await.expect("txn");
            }
        })
    };
    // Open watches at different moments, each starting from revision 2 or from a recent one.
    let mut watches = Vec::new();
    for k in 0..6 {
        let current = c.get("h/0", None).await.unwrap().header().unwrap().revision();
        let start = if k % 2 == 0 { 2 } else { current.max(2) };
        let mut w = c
            .watch(
                "h/",
                Some(WatchOptions::new().with_prefix().with_prev_key().with_start_revision(start)),
            )
            .await
            .unwrap();
        assert!(next(&mut w).await.created());
        watches.push((start, w));
        // Spread the starts across the write burst: wait for the writer to move on.
        let seen = c.get("h/0", None).await.unwrap().header().unwrap().revision();
        loop {
            let now = c.get("h/0", None).await.unwrap().header().unwrap().revision();
            if now >= seen + 40 || now > REVS {
                break;
            }
        }
    }
    writer.await.unwrap();
    let last = REVS + 1;
    for (start, mut w) in watches {
        let mut expected = start;
        while expected <= last {
            let r = next_events(&mut w).await;
            assert!(revision_of(&r) >= r.events().last().unwrap().kv().unwrap().mod_revision());
            let mut i = 0;
            while i < r.events().len() {
                let rev = r.events()[i].kv().unwrap().mod_revision();
                assert_eq!(rev, expected, "watch from {start}: gap or duplicate");
                let group: Vec<_> = r.events()[i..]
                    .iter()
                    .take_while(|e| e.kv().unwrap().mod_revision() == rev)
                    .collect();
                assert_eq!(group.len(), 3, "revision {rev} was split across responses");
                for e in &group {
                    let kv = e.kv().unwrap();
                    if kv.version() > 1 {
                        assert!(e.prev_kv().is_some(), "update at {rev} without prev_kv");
                    }
                }
                i += 3;
                expected += 1;
            }
        }
    }
}

#[tokio::test]
async fn compacted_and_future_start_revisions() {
    let n = Netsy::start();
    let mut c = n.client().await;
    for i in 0..10 {
        put(&mut c, "k", &i.to_string()).await; // revisions 2..=11
    }
    c.compact(6, None).await.unwrap();

    let mut w = c.watch("k", Some(WatchOptions::new().with_start_revision(5))).await.unwrap();
    let r = next(&mut w).await;
    assert!(r.created() && !r.canceled(), "created comes first even when compacted");
    let id = r.watch_id();
    let r = next(&mut w).await;
    assert!(r.canceled(), "{r:?}");
    assert_eq!((r.watch_id(), r.compact_revision()), (id, 6));

    // Exactly at the compact revision is allowed, and its events keep prev_kv.
    let mut w = c
        .watch("k", Some(WatchOptions::new().with_start_revision(6).with_prev_key()))
        .await
        .unwrap();
    assert!(next(&mut w).await.created());
    let r = next_events(&mut w).await;
    let first = &r.events()[0];
    assert_eq!(first.kv().unwrap().mod_revision(), 6);
    assert_eq!(first.prev_kv().unwrap().mod_revision(), 5);
    let total: usize = r.events().len();
    assert_eq!(total, 6, "revisions 6..=11 replayed in one response");

    // A future start waits for its revision; a progress request meanwhile is not answered
    // (etcd's progressIfSync), so the next message is the event itself.
    let mut w = c.watch("f", Some(WatchOptions::new().with_start_revision(15))).await.unwrap();
    assert!(next(&mut w).await.created());
    for i in 12..15 {
        assert_eq!(put(&mut c, "f", &i.to_string()).await, i);
    }
    w.request_progress().await.unwrap();
    assert_eq!(put(&mut c, "f", "15").await, 15);
    let r = next_events(&mut w).await;
    assert_eq!(r.events().len(), 1);
    assert_eq!(r.events()[0].kv().unwrap().mod_revision(), 15);
}

/// kube-apiserver's consistent reads depend on this: a `watch_id = -1` progress response
/// at revision R means every event up to R on this stream was already delivered.
#[tokio::test]
async fn progress_requests_are_in_sync_with_the_event_stream() {
    let n = Netsy::start();
    let mut c = n.client().await;
    let mut w = c.watch("s/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    let created = next(&mut w).await;
    let start = revision_of(&created);

    // The watch starts at start+1, so at `start` it is not yet in sync (etcd #20221): the
    // request is dropped. After any write the answer is the current revision, never 0.
    w.request_progress().await.unwrap();
    let rev = put(&mut c, "elsewhere", "1").await;
    assert_eq!(rev, start + 1);
    w.request_progress().await.unwrap();
    let p = next(&mut w).await;
    assert_eq!(p.watch_id(), -1);
    assert!(p.events().is_empty() && !p.created() && !p.canceled() && p.compact_revision() == 0);
    assert_eq!(revision_of(&p), rev, "the first request was not answered at {start}");

    // Under concurrent writes to the watched prefix.
    const WRITES: i64 = 400;
    let writer = {
        let mut c = n.client().await;
        tokio::spawn(async move {
            for i in 0..WRITES {
                c.put(format!("s/{}", i % 7), "v", None).await.expect("put");
            }
        })
    };
    let first_write = rev + 1;
    let final_rev = rev + WRITES;
    let (mut tx, mut rx) = w.split();
    let requester = tokio::spawn(async move {
        for _ in 0..200 {
            if tx.request_progress().await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tx
    });
    let mut delivered = first_write - 1; // highest event revision seen
    let mut last_header = 0;
    let mut progresses = 0;
    while delivered < final_rev {
        let r = recv_split(&mut rx).await;
        let h = revision_of(&r);
        assert!(h >= last_header, "header revision went backwards: {h} < {last_header}");
        last_header = h;
        if r.watch_id() == -1 {
            progresses += 1;
            assert!(h > 0);
            assert!(
                h <= delivered,
                "progress at {h} arrived before events up to {h} were delivered (seen up to {delivered})"
            );
        } else {
            for e in r.events() {
                let m = e.kv().unwrap().mod_revision();
                assert_eq!(m, delivered + 1, "events are contiguous");
                delivered = m;
            }
        }
    }
    writer.await.unwrap();
    let _tx = requester.await.unwrap();
    assert!(progresses > 0, "some progress requests were answered during the writes");
}

#[tokio::test]
async fn progress_notify_reaches_idle_watches_only() {
    let n = Netsy::start_with(r#""watch": { "progress_notify_interval": "200ms" },"#);
    let mut c = n.client().await;
    let mut w = c.watch("idle", Some(WatchOptions::new().with_progress_notify())).await.unwrap();
    let created = next(&mut w).await;
    let id = created.watch_id();
    let rev = put(&mut c, "elsewhere", "x").await;
    // Wait for a notification that reports the write made elsewhere.
    loop {
        let r = next(&mut w).await;
        assert_eq!(r.watch_id(), id);
        assert!(r.events().is_empty() && !r.created() && !r.canceled());
        assert!(revision_of(&r) > 0);
        if revision_of(&r) == rev {
            break;
        }
    }
    // A watch without progress_notify never gets them: only its events arrive.
    let mut quiet = c.watch("quiet", None).await.unwrap();
    next(&mut quiet).await;
    for _ in 0..3 {
        // Three more ticks pass on the idle watch.
        let r = next(&mut w).await;
        assert!(r.events().is_empty() && r.watch_id() == id);
    }
    put(&mut c, "quiet", "1").await;
    let r = next(&mut quiet).await;
    assert_eq!(r.events().len(), 1, "first message after ticks is the event: {r:?}");
}

#[tokio::test]
async fn fragment_splits_large_responses_only_when_asked() {
    use netsy::proto::etcdserverpb::{watch_client::WatchClient, watch_request::RequestUnion, WatchCreateRequest, WatchRequest};
    let n = Netsy::start_with(r#""limits": { "max_request_bytes": 8192 },"#);
    let mut c = n.client().await;
    for i in 0..12 {
        c.put(format!("big/{i:02}"), vec![b'v'; 3000], None).await.unwrap();
    }
    // etcd-client does not expose `fragment`, so this test speaks the raw protocol.
    let mut raw = WatchClient::connect(n.endpoint()).await.unwrap();
    let create = |fragment: bool| WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"big/".to_vec(),
            range_end: b"big0".to_vec(),
            prev_kv: true,
            fragment,
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(create(true)).await.unwrap();
    tx.send(create(false)).await.unwrap();
    let mut out = raw
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    macro_rules! recv {
        () => {
            tokio::time::timeout(Duration::from_secs(10), out.message())
                .await
                .expect("timeout")
                .unwrap()
                .unwrap()
        };
    }
    assert!(recv!().created);
    assert!(recv!().created);
    let del = c
        .delete("big/", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(del.deleted(), 12);

    let (mut pieces, mut frag_events, mut whole) = (0, 0, None);
    while whole.is_none() || frag_events < 12 {
        let r = recv!();
        if r.watch_id == 1 {
            assert!(!r.fragment);
            whole = Some(r.events.len());
            continue;
        }
        pieces += 1;
        frag_events += r.events.len();
        assert_eq!(r.fragment, frag_events < 12, "all pieces but the last are marked");
    }
    assert_eq!(whole, Some(12), "without fragment the revision comes whole");
    assert!(pieces > 1, "a 72 KB response over an 8 KB limit is fragmented");
    drop(tx);
}

/// A client that stops reading does not lose events: its stream falls behind the commit
/// stream and is caught up from history when it reads again. (Writes go 4 at a time so
/// they form far more commit batches than the 256-batch ring holds.)
#[tokio::test]
async fn slow_consumer_catches_up_from_history() {
    let n = Netsy::start();
    let mut c = n.client().await;
    let mut w = c.watch("slow/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    let created = next(&mut w).await;
    let start = revision_of(&created) + 1;
    const WRITES: usize = 3000;
    let value = vec![b'x'; 2048];
    let mut puts = Vec::new();
    for i in 0..WRITES {
        let mut c = c.clone();
        let value = value.clone();
        puts.push(async move { c.put(format!("slow/{}", i % 50), value, None).await.map(|_| ()) });
        if puts.len() == 4 {
            futures::future::try_join_all(std::mem::take(&mut puts)).await.unwrap();
        }
    }
    futures::future::try_join_all(puts).await.unwrap();
    let end = start + WRITES as i64 - 1;
    let mut expected = start;
    while expected <= end {
        let r = next_events(&mut w).await;
        for e in r.events() {
            assert_eq!(e.kv().unwrap().mod_revision(), expected);
            expected += 1;
        }
    }
    let (_, metrics) = n.http_get("/metrics");
    let catchups = metrics
        .lines()
        .find(|l| l.starts_with("netsy_watch_history_catchups_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(catchups >= 1.0, "the stream should have fallen behind and caught up:\n{metrics}");
}

#[tokio::test]
async fn thousands_of_watchers_on_one_stream_all_get_the_event() {
    let n = Netsy::start();
    let mut c = n.client().await;
    let mut w = c.watch("w/0", None).await.unwrap();
    next(&mut w).await;
    const WATCHERS: usize = 2000;
    let (mut tx, mut rx) = w.split();
    let sender = tokio::spawn(async move {
        for i in 1..WATCHERS {
            tx.watch(format!("w/{}", i % 10), None).await.unwrap();
        }
        tx
    });
    let mut ids = BTreeSet::new();
    ids.insert(0);
    while ids.len() < WATCHERS {
        let r = recv_split(&mut rx).await;
        assert!(r.created());
        ids.insert(r.watch_id());
    }
    let _tx = sender.await.unwrap();
    for k in 0..10 {
        put(&mut c, &format!("w/{k}"), "v").await;
    }
    let mut got = BTreeSet::new();
    while got.len() < WATCHERS {
        let r = recv_split(&mut rx).await;
        assert_eq!(r.events().len(), 1);
        assert!(got.insert(r.watch_id()), "watch {} got its event twice", r.watch_id());
    }
}

#[tokio::test]
async fn require_leader_streams_work_while_a_leader_exists() {
    let n = Netsy::start();
    let opts = etcd_client::ConnectOptions::new().with_require_leader(true);
    let mut c = Client::connect([n.endpoint()], Some(opts)).await.unwrap();
    let mut w = c.watch("l", None).await.unwrap();
    assert!(next(&mut w).await.created());
    c.put("l", "1", Some(PutOptions::new())).await.unwrap();
    assert_eq!(next_events(&mut w).await.events().len(), 1);
}

/// A stream that fell behind and whose next revision was compacted meanwhile is canceled
/// with the compact revision (after delivering everything it still could, contiguously).
#[tokio::test]
async fn slow_consumer_compacted_meanwhile_is_canceled() {
    let n = Netsy::start();
    let mut c = n.client().await;
    let mut w = c.watch("slow/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    let created = next(&mut w).await;
    let mut expected = revision_of(&created) + 1;
    let value = vec![b'x'; 4096];
    let mut puts = Vec::new();
    for i in 0..3000 {
        let mut c = c.clone();
        let value = value.clone();
        puts.push(async move { c.put(format!("slow/{}", i % 50), value, None).await.map(|_| ()) });
        if puts.len() == 4 {
            futures::future::try_join_all(std::mem::take(&mut puts)).await.unwrap();
        }
    }
    futures::future::try_join_all(puts).await.unwrap();
    let last = put(&mut c, "other", "x").await;
    c.compact(last, None).await.unwrap();
    loop {
        let r = next(&mut w).await;
        if r.canceled() {
            assert_eq!(r.compact_revision(), last, "{r:?}");
            break;
        }
        for e in r.events() {
            assert_eq!(e.kv().unwrap().mod_revision(), expected);
            expected += 1;
        }
    }
    assert!(expected < last, "the stream was behind when the compaction happened");
}

/// A client that closes its sending side (no more watch requests) goes on receiving
/// events until it cancels the call: etcd's recvLoop ends quietly at EOF and the stream
/// stays open. The same on netsy and on real etcd.
#[tokio::test]
async fn a_watch_goes_on_after_the_client_closes_its_sending_side() {
    let netsy = Netsy::start();
    let etcd = crate::common::Etcd::start();
    for endpoint in [netsy.endpoint(), etcd.endpoint()] {
        let mut c = Client::connect([endpoint.clone()], None).await.expect("connect");
        let w = c.watch("half/", Some(WatchOptions::new().with_prefix())).await.expect("watch");
        let (tx, mut rx) = w.split();
        let created = recv_split(&mut rx).await;
        assert!(created.created(), "{endpoint}: {created:?}");
        drop(tx);
        let rev = put(&mut c, "half/a", "1").await;
        let r = recv_split(&mut rx).await;
        let revs: Vec<i64> = r.events().iter().filter_map(|e| e.kv()).map(|kv| kv.mod_revision()).collect();
        assert_eq!(revs, vec![rev], "{endpoint}: the event after the half-close");
    }
}
