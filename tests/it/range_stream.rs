//! etcd 3.7's RangeStream, black-box over gRPC: merged chunks equal the unary Range
//! answer for ranges of several megabytes (many chunks), sorting is refused, a compaction
//! during a stream ends it with etcd's ErrCompacted, a client that stops reading leaves
//! the server serving, and a client that goes away mid-stream ends the server's reading
//! within a few chunks (measured with the `netsy_range_streams_active` gauge).

use netsy::proto::etcdserverpb as pb;
use pb::request_op::Request as Op;
use prost::Message;
use tonic::transport::Channel;
use tonic::Code;

use std::time::{Duration, Instant};

use crate::common::{cpu_time, http_get, Netsy};

pub async fn kv(n: &Netsy) -> pb::kv_client::KvClient<Channel> {
    pb::kv_client::KvClient::connect(n.endpoint())
        .await
        .expect("connect")
        .max_decoding_message_size(usize::MAX)
}

/// `count` keys `/s/NNNNN` of `size` bytes.
async fn load(c: &mut pb::kv_client::KvClient<Channel>, count: usize, size: usize) {
    put_keys(c, "/s/", count, size).await
}

/// `count` keys `{prefix}NNNNN` of `size` bytes, 50 per txn.
pub async fn put_keys(c: &mut pb::kv_client::KvClient<Channel>, prefix: &str, count: usize, size: usize) {
    for chunk in 0..count.div_ceil(50) {
        let ops = (chunk * 50..((chunk + 1) * 50).min(count))
            .map(|i| pb::RequestOp {
                request: Some(Op::RequestPut(pb::PutRequest {
                    key: format!("{prefix}{i:05}").into_bytes(),
                    value: vec![b'a' + (i % 26) as u8; size],
                    ..Default::default()
                })),
            })
            .collect();
        c.txn(pb::TxnRequest {
            success: ops,
            ..Default::default()
        })
        .await
        .expect("txn");
    }
}

async fn revision(c: &mut pb::kv_client::KvClient<Channel>) -> i64 {
    let read = pb::RangeRequest {
        key: b"/s/".to_vec(),
        ..Default::default()
    };
    c.range(read).await.expect("range").into_inner().header.expect("header").revision
}

/// A RangeStream over every `/s/` key.
async fn stream_all(c: &mut pb::kv_client::KvClient<Channel>) -> tonic::Streaming<pb::RangeStreamResponse> {
    let all = pb::RangeRequest {
        key: b"/s/".to_vec(),
        range_end: b"/s0".to_vec(),
        ..Default::default()
    };
    c.range_stream(all).await.expect("stream").into_inner()
}

/// Every message of a RangeStream merged (protobuf merge), and how many there were.
async fn merged(c: &mut pb::kv_client::KvClient<Channel>, req: pb::RangeRequest) -> Result<(pb::RangeResponse, usize), tonic::Status> {
    let mut stream = c.range_stream(req).await?.into_inner();
    let mut out = pb::RangeResponse::default();
    let mut messages = 0;
    while let Some(msg) = stream.message().await? {
        let chunk = msg.range_response.unwrap_or_default();
        out.merge(chunk.encode_to_vec().as_slice()).expect("merge");
        messages += 1;
    }
    Ok((out, messages))
}

#[tokio::test]
async fn merged_chunks_equal_range_over_megabytes() {
    let n = Netsy::start();
    let mut c = kv(&n).await;
    load(&mut c, 3000, 2048).await;
    let past = revision(&mut c).await;
    load(&mut c, 500, 100).await; // overwrites: the past revision differs from now
    let base = pb::RangeRequest {
        key: b"/s/".to_vec(),
        range_end: b"/s0".to_vec(),
        ..Default::default()
    };
    let cases = [
        ("every key", base.clone()),
        ("limit 10", pb::RangeRequest { limit: 10, ..base.clone() }),
        (
            "limit 2,999",
            pb::RangeRequest {
                limit: 2999,
                ..base.clone()
            },
        ),
        (
            "keys only",
            pb::RangeRequest {
                keys_only: true,
                ..base.clone()
            },
        ),
        (
            "count only",
            pb::RangeRequest {
                count_only: true,
                ..base.clone()
            },
        ),
        (
            "a past revision",
            pb::RangeRequest {
                revision: past,
                ..base.clone()
            },
        ),
        (
            "serializable",
            pb::RangeRequest {
                serializable: true,
                ..base.clone()
            },
        ),
        (
            "mod revision filter and limit",
            pb::RangeRequest {
                min_mod_revision: past,
                limit: 7,
                ..base.clone()
            },
        ),
        (
            "ascending by key",
            pb::RangeRequest {
                sort_order: pb::range_request::SortOrder::Ascend as i32,
                ..base.clone()
            },
        ),
        (
            "one key",
            pb::RangeRequest {
                key: b"/s/00042".to_vec(),
                ..Default::default()
            },
        ),
        (
            "no key",
            pb::RangeRequest {
                key: b"/nothing".to_vec(),
                ..Default::default()
            },
        ),
        (
            "everything",
            pb::RangeRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            },
        ),
    ];
    for (what, req) in cases {
        let unary = c.range(req.clone()).await.expect(what).into_inner();
        let (streamed, messages) = merged(&mut c, req).await.expect(what);
        assert_eq!(streamed, unary, "{what}");
        if what == "every key" {
            // About 6 MB: the header, then chunks of about 1 MiB.
            assert!((6..=12).contains(&messages), "{what}: {messages} messages");
            let h = streamed.header.expect("header");
            assert!(
                h.cluster_id != 0 && h.member_id != 0 && h.raft_term != 0 && h.revision != 0,
                "{h:?}"
            );
        }
    }
    // etcd's answers before any chunk: a future revision, sorting.
    let future = merged(
        &mut c,
        pb::RangeRequest {
            revision: past + 1_000_000,
            ..base.clone()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        (future.code(), future.message()),
        (Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision")
    );
    let sorted = merged(
        &mut c,
        pb::RangeRequest {
            sort_target: pb::range_request::SortTarget::Mod as i32,
            ..base.clone()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(sorted.code(), Code::InvalidArgument);
    let empty = merged(&mut c, pb::RangeRequest::default()).await.unwrap_err();
    assert_eq!(empty.message(), "etcdserver: key is not provided");
}

#[tokio::test]
async fn a_compaction_during_a_stream_ends_it_with_err_compacted() {
    let n = Netsy::start();
    let mut c = kv(&n).await;
    load(&mut c, 10_000, 2048).await;
    let mut stream = stream_all(&mut c).await;
    // The header and the first chunk: the revision is pinned.
    for _ in 0..2 {
        stream.message().await.expect("a chunk").expect("not the end");
    }
    c.put(pb::PutRequest {
        key: b"/s/x".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    })
    .await
    .expect("put");
    let rev = revision(&mut c).await;
    c.compact(pb::CompactionRequest {
        revision: rev,
        physical: true,
    })
    .await
    .expect("compact");
    let end = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(
        (end.code(), end.message()),
        (Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted")
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_leaves_the_server_serving() {
    let n = Netsy::start();
    let mut c = kv(&n).await;
    load(&mut c, 5_000, 2048).await;
    for _ in 0..20 {
        let mut stream = stream_all(&mut c).await;
        stream.message().await.expect("header").expect("a message");
        drop(stream);
    }
    let (all, _) = merged(
        &mut c,
        pb::RangeRequest {
            key: b"/s/".to_vec(),
            range_end: b"/s0".to_vec(),
            count_only: true,
            ..Default::default()
        },
    )
    .await
    .expect("a stream after the abandoned ones");
    assert_eq!(all.count, 5_000);
}

/// A metric's value from the node's `/metrics` (the first sample of that name).
async fn metric(health_port: u16, name: &'static str) -> f64 {
    let (_, body) = tokio::task::spawn_blocking(move || http_get(health_port, "/metrics"))
        .await
        .expect("metrics request");
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

/// Polls `name` until it equals `value`; how long that took.
async fn wait_metric(health_port: u16, name: &'static str, value: f64, timeout: Duration) -> Duration {
    let started = Instant::now();
    while metric(health_port, name).await != value {
        assert!(started.elapsed() < timeout, "timed out waiting for {name} to reach {value}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn a_client_that_goes_away_ends_the_read_within_a_few_chunks() {
    const ACTIVE: &str = "netsy_range_streams_active";
    const CHUNKS: &str = "netsy_range_stream_chunks_read_total";
    let n = Netsy::start();
    let pid = n.child.as_ref().expect("running").id();
    let port = n.health_port;
    let mut c = kv(&n).await;
    // About 80 MB: some 80 chunks of 1 MiB.
    load(&mut c, 10_000, 8192).await;
    assert_eq!(metric(port, ACTIVE).await, 0.0);

    // The whole stream, read to its end: the work a full read takes.
    let (chunks_before, cpu_before) = (metric(port, CHUNKS).await, cpu_time(pid));
    let mut stream = stream_all(&mut c).await;
    let mut keys = 0;
    while let Some(msg) = stream.message().await.expect("a chunk") {
        keys += msg.range_response.unwrap_or_default().kvs.len();
    }
    assert_eq!(keys, 10_000);
    wait_metric(port, ACTIVE, 0.0, Duration::from_secs(30)).await;
    let full_chunks = metric(port, CHUNKS).await - chunks_before;
    let full_cpu = cpu_time(pid) - cpu_before;
    assert!(full_chunks >= 60.0, "{full_chunks} chunks for the whole range");

    // The same stream, dropped after its header and first chunk of keys.
    let mut stream = stream_all(&mut c).await;
    stream.message().await.expect("header").expect("a message");
    let first = stream.message().await.expect("a chunk").expect("a message");
    assert!(!first.range_response.unwrap_or_default().kvs.is_empty());
    assert_eq!(metric(port, ACTIVE).await, 1.0, "the stream is being served");
    let (chunks_at_drop, cpu_at_drop) = (metric(port, CHUNKS).await, cpu_time(pid));
    drop(stream);
    let ended = wait_metric(port, ACTIVE, 0.0, Duration::from_secs(60)).await;
    let before_drop = chunks_at_drop - chunks_before - full_chunks;
    let after_drop = metric(port, CHUNKS).await - chunks_at_drop;
    let cpu_after_drop = cpu_time(pid) - cpu_at_drop;
    eprintln!(
        "whole stream: {full_chunks} chunks read, server CPU {full_cpu:?}; \
         dropped after its first chunk of keys: the server's read ended {ended:?} after the drop, \
         having read {before_drop} chunks before it and {after_drop} after it; \
         server CPU from the drop to the end {cpu_after_drop:?} (10 ms ticks)"
    );
    // What may be read ahead of the client: the chunk being read, the one waiting in the
    // channel, the one being encoded, and what the HTTP/2 windows let through (about 2
    // MiB for this client).
    assert!(
        before_drop + after_drop <= 12.0,
        "{before_drop} chunks read before the client went away and {after_drop} after (of {full_chunks})"
    );

    // The server still serves streams.
    let (all, _) = merged(
        &mut c,
        pb::RangeRequest {
            key: b"/s/".to_vec(),
            range_end: b"/s0".to_vec(),
            count_only: true,
            ..Default::default()
        },
    )
    .await
    .expect("a stream after the dropped one");
    assert_eq!(all.count, 10_000);
}
