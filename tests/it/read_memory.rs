//! The memory budget of unary reads (`limits.read_memory_bytes`), black-box with a budget
//! of 4 MiB and values of 8 KiB (a row costs about 17.7 KiB of the budget: itself and its
//! encoded copy): a read that needs more than the whole budget is refused at once with a
//! ResourceExhausted that names the key and changes nothing; a reply that a client has
//! not read yet keeps its share, so the next read waits for it and then completes; reads
//! that stay blocked past the wait are refused with etcd's "too many requests"; many
//! concurrent reads that together exceed the budget each finish or are refused so, and
//! the server stays up.

use std::time::{Duration, Instant};

use netsy::proto::etcdserverpb as pb;
use pb::request_op::Request as Op;
use prost::Message;
use tonic::codegen::http;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::{wait_until, Netsy};
use crate::range_stream::{kv, put_keys};

const BUDGET: &str = r#""limits": { "read_memory_bytes": 4194304 },"#;
const IN_USE: &str = "netsy_read_memory_in_use_bytes";
const VALUE: usize = 8 * 1024;

/// `count` keys `/big/NNNNN` of `VALUE` bytes.
async fn load(c: &mut pb::kv_client::KvClient<Channel>, count: usize) {
    put_keys(c, "/big/", count, VALUE).await
}

fn all() -> pb::RangeRequest {
    pb::RangeRequest {
        key: b"/big/".to_vec(),
        range_end: b"/big0".to_vec(),
        ..Default::default()
    }
}

/// A unary Range over HTTP/2 whose reply the client does not read (its flow-control
/// window stays at HTTP/2's 64 KiB) until `read_out` is called.
struct StalledRange {
    body: h2::RecvStream,
}

impl StalledRange {
    async fn start(port: u16, req: pb::RangeRequest) -> StalledRange {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        let (send, conn) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut send = send.ready().await.expect("HTTP/2 ready");
        let http_req = http::Request::builder()
            .method("POST")
            .uri(format!("http://127.0.0.1:{port}/etcdserverpb.KV/Range"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let (resp, mut stream) = send.send_request(http_req, false).expect("send request");
        let msg = req.encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        framed.extend_from_slice(&msg);
        stream.send_data(framed.into(), true).expect("send body");
        let resp = tokio::time::timeout(Duration::from_secs(30), resp)
            .await
            .expect("response headers within 30 s")
            .expect("response");
        assert_eq!(resp.status(), 200);
        StalledRange { body: resp.into_body() }
    }

    /// Reads the rest of the reply: (the gRPC message's length, grpc-status).
    async fn read_out(mut self) -> (usize, String) {
        let mut bytes = Vec::new();
        while let Some(data) = self.body.data().await {
            let data = data.expect("response data");
            let _ = self.body.flow_control().release_capacity(data.len());
            bytes.extend_from_slice(&data);
        }
        let trailers = self.body.trailers().await.expect("trailers").expect("gRPC trailers");
        let status = trailers
            .get("grpc-status")
            .map(|v| v.to_str().expect("ASCII").to_string())
            .unwrap_or_default();
        let len = if bytes.len() >= 5 {
            u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize
        } else {
            0
        };
        assert_eq!(bytes.len(), len + 5, "one whole gRPC message");
        (len, status)
    }
}

fn wait_in_use_at_least(n: &Netsy, bytes: f64) {
    wait_until(Duration::from_secs(20), "the stalled reply holds its share of the budget", || {
        n.metric(IN_USE) >= bytes
    });
}

#[tokio::test]
async fn a_read_needing_more_than_the_whole_budget_is_refused_at_once_and_changes_nothing() {
    let n = Netsy::start_with(BUDGET);
    let mut c = kv(&n).await;
    load(&mut c, 400).await; // ~3.3 MB of values: ~7 MB of budget as one reply
    let rev = c
        .range(pb::RangeRequest {
            key: b"/big/".to_vec(),
            ..Default::default()
        })
        .await
        .expect("one key")
        .into_inner()
        .header
        .expect("header")
        .revision;
    assert_eq!(n.metric("netsy_read_memory_budget_bytes"), 4194304.0);

    let started = Instant::now();
    let err = c.range(all()).await.expect_err("refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().starts_with("etcdserver: the reply needs at least ")
            && err.message().contains("more than limits.read_memory_bytes (4194304)")
            && err.message().contains("RangeStream"),
        "{}",
        err.message()
    );
    assert!(
        started.elapsed() < netsy::core::READ_MEMORY_WAIT,
        "refused without waiting ({:?})",
        started.elapsed()
    );
    // The same range inside a read-only Txn.
    let txn = pb::TxnRequest {
        success: vec![pb::RequestOp {
            request: Some(Op::RequestRange(all())),
        }],
        ..Default::default()
    };
    let err = c.txn(txn).await.expect_err("refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("limits.read_memory_bytes"), "{}", err.message());
    let refused = n.http_get("/metrics").1;
    assert!(
        refused.contains("netsy_read_memory_refused_total{reason=\"too_large\"} 2"),
        "both refusals counted"
    );
    wait_until(Duration::from_secs(10), "the refused reads gave their memory back", || {
        n.metric(IN_USE) == 0.0
    });

    // Nothing changed, and the same data can be read the ways the error suggests.
    let count = c
        .range(pb::RangeRequest { count_only: true, ..all() })
        .await
        .expect("count")
        .into_inner();
    assert_eq!((count.count, count.header.expect("header").revision), (400, rev));
    let mut keys = Vec::new();
    let mut from = b"/big/".to_vec();
    loop {
        let page = c
            .range(pb::RangeRequest {
                key: from.clone(),
                range_end: b"/big0".to_vec(),
                limit: 100,
                ..Default::default()
            })
            .await
            .expect("a page fits the budget")
            .into_inner();
        keys.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        match page.kvs.last() {
            Some(last) if page.more => {
                from = last.key.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    assert_eq!(keys.len(), 400);
    let mut stream = c.range_stream(all()).await.expect("RangeStream").into_inner();
    let mut streamed = 0;
    while let Some(msg) = stream.message().await.expect("chunk") {
        streamed += msg.range_response.map_or(0, |r| r.kvs.len());
    }
    assert_eq!(streamed, 400);
    let keys_only = c
        .range(pb::RangeRequest { keys_only: true, ..all() })
        .await
        .expect("keys only fit")
        .into_inner();
    assert_eq!(keys_only.kvs.len(), 400);
    assert!(n.log().contains("unary read refused: it needs more than limits.read_memory_bytes"));
}

// Multi-threaded: `wait_until` blocks its thread while the other reads run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_waits_for_the_memory_of_a_reply_not_yet_written_out_then_completes() {
    let n = Netsy::start_with(BUDGET);
    let mut c = kv(&n).await;
    load(&mut c, 150).await; // ~2.65 MB of budget per read: one at a time
    let stalled = StalledRange::start(n.client_port, all()).await;
    wait_in_use_at_least(&n, 2.5e6);

    let mut c2 = c.clone();
    let waiting = tokio::spawn(async move { c2.range(all()).await });
    wait_until(Duration::from_secs(5), "the second read waits for the budget", || {
        n.metric("netsy_read_memory_waits_total") >= 1.0
    });
    assert!(!waiting.is_finished());

    let (len, status) = stalled.read_out().await;
    assert_eq!(status, "0");
    assert!(len > 150 * VALUE, "the whole reply ({len} bytes)");
    let second = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting read completes once the first reply is out")
        .expect("task")
        .expect("range")
        .into_inner();
    assert_eq!(second.kvs.len(), 150);
    wait_until(Duration::from_secs(10), "every reservation given back", || n.metric(IN_USE) == 0.0);
}

// Multi-threaded: `wait_until` blocks its thread while the other reads run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_that_together_exceed_the_budget_finish_or_are_refused_as_busy() {
    let mut n = Netsy::start_with(BUDGET);
    let mut c = kv(&n).await;
    load(&mut c, 150).await;

    // Held past the wait: etcd's "too many requests", after waiting.
    let stalled = StalledRange::start(n.client_port, all()).await;
    wait_in_use_at_least(&n, 2.5e6);
    let started = Instant::now();
    let err = c.range(all()).await.expect_err("no room within the wait");
    assert_eq!(
        (err.code(), err.message()),
        (Code::ResourceExhausted, "etcdserver: too many requests")
    );
    assert!(started.elapsed() >= netsy::core::READ_MEMORY_WAIT - Duration::from_millis(500));
    assert!(n
        .http_get("/metrics")
        .1
        .contains("netsy_read_memory_refused_total{reason=\"busy\"} 1"));
    assert!(stalled.read_out().await.0 > 150 * VALUE);

    // Ten at once, each needing more than half the budget.
    let reads: Vec<_> = (0..10)
        .map(|_| {
            let mut c = c.clone();
            tokio::spawn(async move { c.range(all()).await })
        })
        .collect();
    let mut served = 0;
    for r in reads {
        match r.await.expect("task") {
            Ok(resp) => {
                assert_eq!(resp.into_inner().kvs.len(), 150);
                served += 1;
            }
            Err(e) => assert_eq!((e.code(), e.message()), (Code::ResourceExhausted, "etcdserver: too many requests")),
        }
    }
    assert!(served >= 1, "at least the first is served");
    assert!(n.metric("netsy_read_memory_waits_total") >= 2.0, "they waited for each other");
    wait_until(Duration::from_secs(10), "every reservation given back", || n.metric(IN_USE) == 0.0);
    assert!(n.exited().is_none(), "the server is up");
    let one = c
        .range(pb::RangeRequest {
            key: b"/big/00000".to_vec(),
            ..Default::default()
        })
        .await
        .expect("served")
        .into_inner();
    assert_eq!(one.kvs.len(), 1);
}
