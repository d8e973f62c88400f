//! Bad input at the edges, black-box: the gRPC client port (garbage instead of HTTP/2,
//! malformed gRPC frames and protobuf, oversized messages, txn limits, watch storms,
//! odd key ranges) next to real etcd 3.5.1, whose code and message netsy must give; and
//! the mesh authority's port (oversized and malformed bodies, content types, replayed
//! and tampered signatures). Every refusal must leave the state as it was and the
//! server serving.

use std::io::{Read, Write};
use std::time::Duration;

use crate::common::{self, free_port, wait_until, Cluster, Etcd, Netsy};
use netsy::mesh::{auth, keys, tools};
use netsy::proto::etcdserverpb as pb;
use pb::request_op::Request as Op;
use prost::Message;
use serde_json::{json, Value};
use tonic::codegen::http;
use tonic::transport::Channel;
use tonic::Code;

/// etcd's (and netsy's) default `max_request_bytes`: 1.5 MiB.
const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// The largest gRPC message both receive by default: the request limit plus 512 KiB.
const MAX_RECEIVE_BYTES: usize = MAX_REQUEST_BYTES + 512 * 1024;
/// netsy's txn nesting limit (`core::write::MAX_TXN_NESTING`).
const MAX_TXN_NESTING: usize = netsy::core::MAX_TXN_NESTING;

const TOO_MANY_OPS: (Code, &str) = (Code::InvalidArgument, "etcdserver: too many operations in txn request");

/// The two servers a case is sent to: netsy and real etcd.
struct Both {
    netsy: Netsy,
    etcd: Etcd,
}

impl Both {
    fn start() -> Both {
        Both {
            netsy: Netsy::start(),
            etcd: Etcd::start(),
        }
    }

    fn endpoints(&self) -> [String; 2] {
        [self.netsy.endpoint(), format!("http://{}", self.etcd.endpoint())]
    }

    fn ports(&self) -> [u16; 2] {
        [self.netsy.client_port, self.etcd.client_port]
    }
}

async fn kv(endpoint: &str) -> pb::kv_client::KvClient<Channel> {
    pb::kv_client::KvClient::connect(endpoint.to_string())
        .await
        .expect("connect")
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// A call's outcome as (code, message); `Ok` with no message for a success.
fn outcome<T>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    match r {
        Ok(_) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

/// Everything a server holds: its revision and every key with its value and revisions.
async fn state(endpoint: &str) -> (i64, Vec<(Vec<u8>, Vec<u8>, i64, i64)>) {
    let r = kv(endpoint)
        .await
        .range(pb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .await
        .expect("range over every key")
        .into_inner();
    let kvs = r
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value, kv.create_revision, kv.mod_revision))
        .collect();
    (r.header.expect("header").revision, kvs)
}

/// The server still takes a write and reads it back.
async fn still_serves(endpoint: &str) {
    let mut c = kv(endpoint).await;
    let key = b"still-serving".to_vec();
    c.put(pb::PutRequest {
        key: key.clone(),
        value: b"yes".to_vec(),
        ..Default::default()
    })
    .await
    .expect("a put after the bad input");
    let r = c
        .range(pb::RangeRequest { key, ..Default::default() })
        .await
        .expect("a range after the bad input")
        .into_inner();
    assert_eq!(r.kvs[0].value, b"yes");
}

/// One gRPC call over a raw HTTP/2 connection, `body` sent as the request body as it is
/// (framing included): the grpc-status and grpc-message (percent-decoded).
async fn raw_grpc(port: u16, path: &str, body: Vec<u8>) -> (String, String) {
    let call = async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        let (send, conn) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut send = send.ready().await.expect("HTTP/2 ready");
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://127.0.0.1:{port}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let (resp, mut stream) = send.send_request(req, false).expect("send request");
        stream.send_data(body.into(), true).expect("send body");
        let (parts, mut body) = resp.await.expect("response").into_parts();
        let status = |h: &http::HeaderMap| {
            let value = |name: &str| h.get(name).map(|v| v.to_str().expect("ASCII header").to_string());
            value("grpc-status").map(|code| {
                let msg = value("grpc-message").unwrap_or_default();
                (code, percent_encoding::percent_decode_str(&msg).decode_utf8_lossy().into_owned())
            })
        };
        if let Some(s) = status(&parts.headers) {
            return s; // trailers-only
        }
        while let Some(data) = body.data().await {
            let data = data.expect("response data");
            let _ = body.flow_control().release_capacity(data.len());
        }
        let trailers = body
            .trailers()
            .await
            .expect("trailers")
            .expect("a gRPC response ends with trailers");
        status(&trailers).expect("grpc-status in the trailers")
    };
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the server answered within 30 s")
}

/// A gRPC message frame: compressed flag, declared length, payload.
fn frame(flag: u8, len: usize, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![flag];
    f.extend_from_slice(&(len as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn msg(m: &impl Message) -> Vec<u8> {
    let payload = m.encode_to_vec();
    frame(0, payload.len(), &payload)
}

/// Sends `bytes` on a fresh connection and reads until the server closes it: what it
/// sent. Panics if the server keeps the connection open for 10 s.
fn send_garbage(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("port {port} kept the connection open after garbage ({e}); it sent {got:?}"),
    }
    got
}

/// The HTTP/2 frame types in `bytes` (a trailing partial frame is ignored).
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

/// Puts a=1 on both servers; returns each one's state after it.
async fn seed_a(both: &Both) -> [(i64, Vec<(Vec<u8>, Vec<u8>, i64, i64)>); 2] {
    for endpoint in both.endpoints() {
        kv(&endpoint)
            .await
            .put(pb::PutRequest {
                key: b"a".to_vec(),
                value: b"1".to_vec(),
                ..Default::default()
            })
            .await
            .expect("put");
    }
    [state(&both.endpoints()[0]).await, state(&both.endpoints()[1]).await]
}

#[tokio::test]
async fn garbage_instead_of_http2_closes_the_connection_and_changes_nothing() {
    let both = Both::start();
    let before = seed_a(&both).await;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let cases: [(&str, Vec<u8>); 4] = [
        ("binary garbage", b"\x00\x01\x02garbage garbage garbage\r\n\r\n".to_vec()),
        ("a wrong preface", b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n".to_vec()),
        ("the preface, then a frame of 16 MiB", [preface.clone(), vec![0xff; 64]].concat()),
        (
            "the preface, then DATA on stream 0",
            [preface, vec![0, 0, 4, 0, 0, 0, 0, 0, 0], b"junk".to_vec()].concat(),
        ),
    ];
    for (what, bytes) in &cases {
        for (port, who) in both.ports().into_iter().zip(["netsy", "etcd"]) {
            let got = send_garbage(port, bytes);
            if !bytes.starts_with(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") {
                // Neither HTTP/2 nor HTTP/1: closed without a byte, by both.
                assert!(got.is_empty(), "{what}: {who} answered {got:?}");
            }
            // At most the server's SETTINGS, a GOAWAY and window updates: never an answer.
            let types = frame_types(&got);
            if who == "netsy" {
                assert!(types.iter().all(|t| [4, 7, 8].contains(t)), "{what}: netsy sent frames {types:?}");
            }
        }
    }
    let after = [state(&both.endpoints()[0]).await, state(&both.endpoints()[1]).await];
    assert_eq!(after, before, "garbage changed nothing");
    for endpoint in both.endpoints() {
        still_serves(&endpoint).await;
    }
}

#[tokio::test]
async fn malformed_grpc_messages_get_etcds_codes_and_messages_and_change_nothing() {
    let both = Both::start();
    let before = seed_a(&both).await;
    let put = pb::PutRequest {
        key: b"a".to_vec(),
        value: b"changed".to_vec(),
        ..Default::default()
    }
    .encode_to_vec();
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: b"a".to_vec(),
            ..Default::default()
        })),
    };
    let keep_alive = pb::LeaseKeepAliveRequest { id: 7 }.encode_to_vec();
    const PUT: &str = "/etcdserverpb.KV/Put";
    const WATCH: &str = "/etcdserverpb.Watch/Watch";
    const KEEP_ALIVE: &str = "/etcdserverpb.Lease/LeaseKeepAlive";
    // The transport's refusals: the same code and words.
    let framing: Vec<(&str, &str, Vec<u8>)> = vec![
        ("a length prefix past the body", PUT, frame(0, put.len() + 10, &put)),
        ("half a message header", PUT, vec![0, 0, 0]),
        ("no message", PUT, vec![]),
        ("the compressed flag without an encoding", PUT, frame(1, put.len(), &put)),
        ("an unknown flag", PUT, frame(7, put.len(), &put)),
        ("a length prefix of 100 MiB", PUT, frame(0, 100 << 20, &put)),
        ("an unknown method", "/etcdserverpb.KV/Nope", msg(&pb::RangeRequest::default())),
        ("an unknown service", "/etcdserverpb.Nope/Range", msg(&pb::RangeRequest::default())),
        (
            "a watch: a length prefix past the body",
            WATCH,
            frame(0, 50, &create.encode_to_vec()),
        ),
        (
            "a watch: the compressed flag",
            WATCH,
            frame(1, create.encoded_len(), &create.encode_to_vec()),
        ),
        ("a watch: a length prefix of 100 MiB", WATCH, frame(0, 100 << 20, &[])),
        ("a keep-alive: a length prefix past the body", KEEP_ALIVE, frame(0, 10, &keep_alive)),
        (
            "a keep-alive: the compressed flag",
            KEEP_ALIVE,
            frame(1, keep_alive.len(), &keep_alive),
        ),
        ("a keep-alive: a length prefix of 3 MiB", KEEP_ALIVE, frame(0, 3 << 20, &keep_alive)),
    ];
    for (what, path, body) in framing {
        let netsy = raw_grpc(both.netsy.client_port, path, body.clone()).await;
        let etcd = raw_grpc(both.etcd.client_port, path, body).await;
        assert_eq!(netsy, etcd, "{what}");
        assert_ne!(netsy.0, "0", "{what}: refused");
    }
    // Bytes that are no protobuf of the message: the same code; the words are each
    // decoder's own (Go's generated code names its fields its own way).
    let undecodable: Vec<(&str, &str, Vec<u8>)> = vec![
        ("a truncated put", PUT, frame(0, put.len() - 2, &put[..put.len() - 2])),
        ("a varint where the key's bytes belong", PUT, frame(0, 2, &[0x08, 0x01])),
        ("a fixed32 where the key's bytes belong", PUT, frame(0, 5, &[0x0d, 1, 2, 3, 4])),
        ("field number 0", "/etcdserverpb.KV/Range", frame(0, 2, &[0x00, 0x01])),
        ("a length past the message", PUT, frame(0, 3, &[0x0a, 0x7f, b'a'])),
        (
            "a watch: a create then a truncated message",
            WATCH,
            [msg(&create), frame(0, 2, &[0x0a, 0x05])].concat(),
        ),
        ("a watch: a varint where a message belongs", WATCH, frame(0, 2, &[0x08, 0x05])),
        ("a keep-alive: bytes where the id belongs", KEEP_ALIVE, frame(0, 2, &[0x0a, 0x05])),
    ];
    for (what, path, body) in undecodable {
        let netsy = raw_grpc(both.netsy.client_port, path, body.clone()).await;
        let etcd = raw_grpc(both.etcd.client_port, path, body).await;
        assert_eq!(netsy.0, etcd.0, "{what}: netsy {netsy:?}, etcd {etcd:?}");
        assert_eq!(netsy.0, (Code::Internal as i32).to_string(), "{what}: {netsy:?}");
        assert!(netsy.1.starts_with("failed to decode Protobuf message"), "{what}: {netsy:?}");
    }
    let after = [state(&both.endpoints()[0]).await, state(&both.endpoints()[1]).await];
    assert_eq!(after, before, "malformed messages changed nothing");
    for endpoint in both.endpoints() {
        still_serves(&endpoint).await;
    }
}

fn put_of(size: usize) -> pb::PutRequest {
    pb::PutRequest {
        key: b"big".to_vec(),
        value: vec![b'x'; size],
        ..Default::default()
    }
}

#[tokio::test]
async fn oversized_requests_get_etcds_errors_and_change_nothing() {
    let both = Both::start();
    let [n, e] = both.endpoints();
    let (mut nc, mut ec) = (kv(&n).await, kv(&e).await);
    // Just under the request limit: taken by both.
    let fits = put_of(MAX_REQUEST_BYTES - 1024);
    assert_eq!(outcome(nc.put(fits.clone()).await), (Code::Ok, String::new()));
    assert_eq!(outcome(ec.put(fits).await), (Code::Ok, String::new()));
    let before = [state(&n).await, state(&e).await];
    let too_large = (Code::InvalidArgument, "etcdserver: request is too large".to_string());
    let over = put_of(MAX_REQUEST_BYTES + 1024);
    let txn_over = pb::TxnRequest {
        success: vec![pb::RequestOp {
            request: Some(Op::RequestPut(over.clone())),
        }],
        ..Default::default()
    };
    for (what, netsy, etcd) in [
        (
            "a put over the request limit",
            outcome(nc.put(over.clone()).await),
            outcome(ec.put(over).await),
        ),
        (
            "a txn over the request limit",
            outcome(nc.txn(txn_over.clone()).await),
            outcome(ec.txn(txn_over).await),
        ),
    ] {
        assert_eq!(netsy, too_large, "{what}");
        assert_eq!(netsy, etcd, "{what}");
    }
    // Over what gRPC receives at all: refused before decoding, in grpc-go's words.
    for size in [MAX_RECEIVE_BYTES + 1024, 5 << 20] {
        let put = put_of(size);
        let netsy = outcome(nc.put(put.clone()).await);
        let etcd = outcome(ec.put(put.clone()).await);
        let want = format!(
            "grpc: received message larger than max ({} vs. {MAX_RECEIVE_BYTES})",
            put.encoded_len()
        );
        assert_eq!(netsy, (Code::ResourceExhausted, want), "a put of {size} bytes");
        assert_eq!(netsy, etcd, "a put of {size} bytes");
    }
    assert_eq!([state(&n).await, state(&e).await], before, "oversized requests changed nothing");
    still_serves(&n).await;

    // netsy's limits are its configuration's.
    let small = Netsy::start_with(r#""limits": {"max_request_bytes": 4096},"#);
    let mut c = kv(&small.endpoint()).await;
    let before = state(&small.endpoint()).await;
    assert_eq!(outcome(c.put(put_of(5000)).await), too_large);
    let put = put_of(4096 + 512 * 1024 + 100);
    assert_eq!(
        outcome(c.put(put.clone()).await),
        (
            Code::ResourceExhausted,
            format!(
                "grpc: received message larger than max ({} vs. {})",
                put.encoded_len(),
                4096 + 512 * 1024
            )
        )
    );
    assert_eq!(state(&small.endpoint()).await, before);
    assert_eq!(outcome(c.put(put_of(3000)).await), (Code::Ok, String::new()), "under the limit");
}

fn put_op(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestPut(pb::PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })),
    }
}

fn txn_op(t: pb::TxnRequest) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestTxn(t)),
    }
}

fn txn(success: Vec<pb::RequestOp>) -> pb::TxnRequest {
    pb::TxnRequest {
        success,
        ..Default::default()
    }
}

/// A txn `depth` deep (1: no txn inside) whose innermost txn puts `key`.
fn nested(depth: usize, key: &str) -> pb::TxnRequest {
    let mut t = txn(vec![put_op(key)]);
    for _ in 1..depth {
        t = txn(vec![txn_op(t)]);
    }
    t
}

#[tokio::test]
async fn txn_limits_answer_as_etcd_and_change_nothing() {
    let both = Both::start();
    let [n, e] = both.endpoints();
    let (mut nc, mut ec) = (kv(&n).await, kv(&e).await);
    let ops = |count: usize| (0..count).map(|i| put_op(&format!("k{i}"))).collect::<Vec<_>>();
    // Within the limits: taken by both.
    for (what, t) in [
        ("128 puts", txn(ops(128))),
        ("a nested txn", nested(2, "nested")),
        ("the same key in a nested txn's two branches", {
            let mut inner = txn(vec![put_op("either")]);
            inner.failure = vec![put_op("either")];
            txn(vec![txn_op(inner)])
        }),
    ] {
        assert_eq!(outcome(nc.txn(t.clone()).await), (Code::Ok, String::new()), "{what}");
        assert_eq!(outcome(ec.txn(t).await), (Code::Ok, String::new()), "{what}");
    }
    let before = [state(&n).await, state(&e).await];
    let duplicate = (Code::InvalidArgument, "etcdserver: duplicate key given in txn request");
    let compares = pb::TxnRequest {
        compare: (0..129)
            .map(|i| pb::Compare {
                key: format!("k{i}").into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let delete_a_to_c = pb::RequestOp {
        request: Some(Op::RequestDeleteRange(pb::DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: b"c".to_vec(),
            ..Default::default()
        })),
    };
    let cases: Vec<(&str, pb::TxnRequest, (Code, &str))> = vec![
        ("129 puts", txn(ops(129)), TOO_MANY_OPS),
        ("129 compares", compares, TOO_MANY_OPS),
        (
            "129 puts in the failure branch",
            pb::TxnRequest {
                failure: ops(129),
                ..Default::default()
            },
            TOO_MANY_OPS,
        ),
        ("txns nested 129 deep (etcd's limit: 128)", nested(129, "deep"), TOO_MANY_OPS),
        ("txns nested 200 deep", nested(200, "deep"), TOO_MANY_OPS),
        ("one key put twice", txn(vec![put_op("a"), put_op("a")]), duplicate),
        (
            "a key put, and in a nested txn",
            txn(vec![put_op("a"), txn_op(nested(1, "a"))]),
            duplicate,
        ),
        ("a key put and deleted", txn(vec![delete_a_to_c, put_op("b")]), duplicate),
    ];
    for (what, t, want) in cases {
        let netsy = outcome(nc.txn(t.clone()).await);
        assert_eq!(netsy, (want.0, want.1.to_string()), "{what}");
        assert_eq!(netsy, outcome(ec.txn(t).await), "{what}");
    }
    assert_eq!([state(&n).await, state(&e).await], before, "refused txns changed nothing");

    // netsy's own nesting limit is below etcd's (see `MAX_TXN_NESTING`): at it, a txn
    // commits; past it, etcd's answer for a txn nested past its own. A txn nested 49
    // deep used to commit a Raft log entry that could not be read back, stopping the
    // node for good.
    let t = nested(MAX_TXN_NESTING, "deepest");
    assert_eq!(outcome(nc.txn(t).await), (Code::Ok, String::new()), "nested {MAX_TXN_NESTING} deep");
    let before = state(&n).await;
    assert!(before.1.iter().any(|kv| kv.0 == b"deepest"));
    for depth in [MAX_TXN_NESTING + 1, 48, 49, 50, 100] {
        let netsy = outcome(nc.txn(nested(depth, "too-deep")).await);
        assert_eq!(netsy, (TOO_MANY_OPS.0, TOO_MANY_OPS.1.to_string()), "nested {depth} deep");
        // A read-only txn too.
        let mut t = txn(vec![pb::RequestOp {
            request: Some(Op::RequestRange(pb::RangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            })),
        }]);
        for _ in 1..depth {
            t = txn(vec![txn_op(t)]);
        }
        assert_eq!(outcome(nc.txn(t).await).0, TOO_MANY_OPS.0, "a read nested {depth} deep");
    }
    assert_eq!(state(&n).await, before, "refused nesting changed nothing");
    still_serves(&n).await;
}

/// A txn nested to the limit crosses every message that carries one: forwarded by a
/// follower, logged and replicated by the leader, applied by every member.
#[test]
fn a_txn_nested_to_the_limit_commits_on_every_member() {
    let c = Cluster::start(3, "");
    let leader = c.wait_leader();
    let follower = (leader + 1) % 3;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut fc = kv(&c.nodes[follower].endpoint()).await;
        let t = nested(MAX_TXN_NESTING, "deepest");
        let r = fc.txn(t).await.expect("a txn nested to the limit, via a follower").into_inner();
        let rev = r.header.expect("header").revision;
        let deeper = outcome(fc.txn(nested(49, "too-deep")).await);
        assert_eq!(deeper, (TOO_MANY_OPS.0, TOO_MANY_OPS.1.to_string()));
        for node in &c.nodes {
            let mut nc = kv(&node.endpoint()).await;
            let got = nc
                .range(pb::RangeRequest {
                    key: b"deepest".to_vec(),
                    ..Default::default()
                })
                .await
                .expect("range")
                .into_inner();
            assert_eq!(got.kvs.len(), 1, "on {}\n{}", node.endpoint(), c.logs());
            assert_eq!(got.kvs[0].mod_revision, rev);
            still_serves(&node.endpoint()).await;
        }
    });
}

/// Opens one watch stream on `endpoint`, creates `count` watchers on it, has one see an
/// event, cancels them all and closes the stream: every response as (watch id, created,
/// canceled, events), in order. `check(phase, watchers)` runs while all are created
/// (phase 0) and after all are canceled (phase 1).
async fn watch_storm(endpoint: &str, count: usize, mut check: impl FnMut(u8)) -> Vec<(i64, bool, bool, usize)> {
    let mut client = pb::watch_client::WatchClient::connect(endpoint.to_string())
        .await
        .expect("connect")
        .max_decoding_message_size(usize::MAX);
    let (tx, rx) = tokio::sync::mpsc::channel(2 * count + 1);
    let key = |i: usize| format!("w/{i:05}").into_bytes();
    for i in 0..count {
        let create = pb::WatchCreateRequest {
            key: key(i),
            ..Default::default()
        };
        tx.send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
        })
        .await
        .expect("queue a create");
    }
    // Opened after the creates are queued: etcd answers the call's headers with its
    // first response.
    let mut out = client
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    let mut seen = Vec::new();
    let mut next = async || {
        let r = tokio::time::timeout(Duration::from_secs(60), out.message())
            .await
            .expect("a watch response within 60 s")
            .expect("watch stream error")
            .expect("watch stream ended");
        (r.watch_id, r.created, r.canceled, r.events.len())
    };
    for _ in 0..count {
        seen.push(next().await);
    }
    check(0);
    kv(endpoint)
        .await
        .put(pb::PutRequest {
            key: key(count / 2),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .expect("put");
    seen.push(next().await);
    for id in 0..count as i64 {
        let cancel = pb::WatchCancelRequest { watch_id: id };
        tx.send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CancelRequest(cancel)),
        })
        .await
        .expect("queue a cancel");
    }
    for _ in 0..count {
        seen.push(next().await);
    }
    check(1);
    drop(tx);
    seen
}

#[tokio::test]
async fn thousands_of_watchers_on_one_stream_come_and_go_without_leaking() {
    const COUNT: usize = 5000;
    let both = Both::start();
    let [n, e] = both.endpoints();
    let netsy = &both.netsy;
    let before = state(&n).await;
    let watchers = |n: &Netsy| n.metric("etcd_debugging_mvcc_watcher_total");
    let got = watch_storm(&n, COUNT, |phase| {
        let want = if phase == 0 { COUNT as f64 } else { 0.0 };
        assert_eq!(watchers(netsy), want, "watchers after phase {phase}");
    })
    .await;
    let want = watch_storm(&e, COUNT, |_| {}).await;
    assert_eq!(got.len(), 2 * COUNT + 1);
    assert!(got[..COUNT].iter().enumerate().all(|(i, r)| *r == (i as i64, true, false, 0)));
    assert_eq!(got[COUNT], ((COUNT / 2) as i64, false, false, 1));
    assert_eq!(got, want, "the same responses as etcd");
    wait_until(Duration::from_secs(30), "the watch stream to close", || {
        netsy.metric("etcd_debugging_mvcc_watch_stream_total") == 0.0
    });
    assert_eq!(watchers(netsy), 0.0);
    let (rev, _) = state(&n).await;
    assert_eq!(rev, before.0 + 1, "only the one put");
    // A second storm on a new stream: the same again (nothing left over).
    watch_storm(&n, COUNT, |phase| {
        let want = if phase == 0 { COUNT as f64 } else { 0.0 };
        assert_eq!(watchers(netsy), want, "watchers after phase {phase}, second storm");
    })
    .await;
    still_serves(&n).await;
}

#[tokio::test]
async fn huge_and_odd_key_ranges_answer_as_etcd() {
    const KEYS: usize = 20_000;
    let both = Both::start();
    let [n, e] = both.endpoints();
    let (mut nc, mut ec) = (kv(&n).await, kv(&e).await);
    // 20,000 keys of 300 bytes: a whole-keyspace answer of about 6.5 MB.
    for chunk in 0..KEYS / 100 {
        let ops = (chunk * 100..(chunk + 1) * 100)
            .map(|i| pb::RequestOp {
                request: Some(Op::RequestPut(pb::PutRequest {
                    key: format!("k/{i:06}").into(),
                    value: vec![b'a' + (i % 26) as u8; 300],
                    ..Default::default()
                })),
            })
            .collect();
        let t = txn(ops);
        nc.txn(t.clone()).await.expect("txn");
        ec.txn(t).await.expect("txn");
    }
    let before = [state(&n).await, state(&e).await];
    assert_eq!(before[0].1.len(), KEYS);
    let range = |key: &str, end: &str, limit: i64, count_only: bool| pb::RangeRequest {
        key: key.into(),
        range_end: end.into(),
        limit,
        count_only,
        ..Default::default()
    };
    let cases = [
        ("every key", range("\0", "\0", 0, false)),
        ("every key from k/", range("k/", "\0", 0, false)),
        ("every key, limit 10", range("\0", "\0", 10, false)),
        ("every key, counted", range("\0", "\0", 0, true)),
        ("a key after its range end", range("k/2", "k/1", 0, false)),
        ("an empty range", range("k/1", "k/1", 0, false)),
        ("range end \\0 from \\0", range("\0", "\0", 0, false)),
        ("a single missing key", range("missing", "", 0, false)),
        ("a negative limit", range("k/", "k0", -5, false)),
        (
            "a negative revision",
            pb::RangeRequest {
                revision: -3,
                ..range("k/00001", "k/00003", 0, false)
            },
        ),
    ];
    for (what, r) in cases {
        let netsy = nc.range(r.clone()).await.map(|r| r.into_inner());
        let etcd = ec.range(r).await.map(|r| r.into_inner());
        let (mut netsy, mut etcd) = (netsy.expect(what), etcd.expect(what));
        assert_eq!(
            netsy.header.take().map(|h| h.revision),
            etcd.header.take().map(|h| h.revision),
            "{what}"
        );
        assert_eq!(netsy, etcd, "{what}");
    }
    assert_eq!(
        nc.range(range("\0", "\0", 0, true)).await.expect("count").into_inner().count,
        KEYS as i64
    );
    // Deletes of a key after its range end, and of an empty range: nothing.
    for (key, end) in [("k/2", "k/1"), ("k/1", "k/1")] {
        let d = pb::DeleteRangeRequest {
            key: key.into(),
            range_end: end.into(),
            ..Default::default()
        };
        let netsy = nc.delete_range(d.clone()).await.expect("delete").into_inner();
        let etcd = ec.delete_range(d).await.expect("delete").into_inner();
        assert_eq!((netsy.deleted, etcd.deleted), (0, 0));
    }
    // An empty key: etcd's error.
    let empty = (Code::InvalidArgument, "etcdserver: key is not provided".to_string());
    for r in [range("", "", 0, false), range("", "\0", 0, false)] {
        assert_eq!(outcome(nc.range(r.clone()).await), empty);
        assert_eq!(outcome(ec.range(r).await), empty);
    }
    let d = pb::DeleteRangeRequest::default();
    assert_eq!(outcome(nc.delete_range(d.clone()).await), empty);
    assert_eq!(outcome(ec.delete_range(d).await), empty);
    assert_eq!([state(&n).await, state(&e).await], before, "nothing changed");
    still_serves(&n).await;
}

// --- The mesh authority's port ---------------------------------------------------------

/// A POST to the mesh port as given: the status and the JSON reply (`Null` if none).
fn mesh_post(port: u16, path: &str, content_type: &str, headers: &[(&str, String)], body: &str) -> (u16, Value) {
    let mut request = format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let (status, body) = common::http_exchange(s, request.as_bytes()).expect("an HTTP answer");
    (status, serde_json::from_str(body.trim()).unwrap_or(Value::Null))
}

/// The envelope's status, code and message.
fn refusal(reply: &(u16, Value)) -> (u16, &str, &str) {
    let e = &reply.1["error"];
    (reply.0, e["code"].as_str().unwrap_or(""), e["message"].as_str().unwrap_or(""))
}

#[tokio::test]
async fn mesh_refusals_change_nothing() {
    const LIMIT: usize = 64 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let net = dir.path().join("net");
    tools::init("T", &net, "http://127.0.0.1:1").expect("mesh init");
    let port = free_port();
    let mut n = Netsy::new(
        "",
        &[
            ("NETSY_MESH_ENV_FILE", net.join("na.env").display().to_string()),
            ("NETSY_BIND_MESH", format!("127.0.0.1:{port}")),
            ("NA_MAX_REQUEST_BYTES", LIMIT.to_string()),
        ],
    );
    n.spawn();
    let na = format!("http://127.0.0.1:{port}");
    wait_until(Duration::from_secs(30), "the mesh authority", || {
        tools::request(&na, "GET", "/healthz", &[], None).is_ok_and(|(s, _)| s == 200)
    });
    let op = keys::read_private(&net.join("keys/operator.key")).expect("operator key");
    let genesis = netsy::mesh::models::Genesis::load(&net.join("genesis.signed.json")).expect("genesis");
    let audience = keys::b64(genesis.na_key.as_bytes());
    let sign = |path: &str, body: &Value| auth::sign_admin(&op, "operator-local", "POST", path, &Default::default(), &audience, body);
    let post = |path: &str, headers: &[(&str, String)], body: &Value| mesh_post(port, path, "application/json", headers, &body.to_string());

    // A node enrolled with an invite: the state the refusals must leave alone.
    let invite = json!({"roles": ["role:client"]});
    let r = post("/admin/invite", &sign("/admin/invite", &invite).pairs(), &invite);
    assert_eq!(r.0, 201, "{r:?}");
    let node = keys::generate();
    let joined = post(
        "/join",
        &[],
        &crate::mesh::node_body(&node, json!({"invite_token": r.1["token_id"].as_str().expect("token")})),
    );
    assert_eq!(joined.0, 201, "{joined:?}");
    let cert_id = joined.1["cert_id"].as_str().expect("cert id").to_string();
    let endpoint = n.endpoint();
    let mesh_state = async || state(&endpoint).await;
    let mut before = mesh_state().await;
    assert!(before.1.iter().any(|kv| kv.0.starts_with(b"/netsy/mesh/certs/")));

    // Bodies over the limit, on every kind of route: 413 before anything is read.
    let huge = json!({"pad": "x".repeat(LIMIT)}).to_string();
    let too_large = format!("Request body exceeds {LIMIT} bytes");
    for path in ["/join", "/heartbeat", "/renew", "/admin/invite", "/admin/revoke", "/nowhere"] {
        let r = mesh_post(port, path, "application/json", &[], &huge);
        assert_eq!(refusal(&r), (413, "request_too_large", too_large.as_str()), "{path}");
    }
    // Also when the body is not declared JSON.
    let r = mesh_post(port, "/join", "text/plain", &[], &huge);
    assert_eq!(refusal(&r), (413, "request_too_large", too_large.as_str()));
    assert_eq!(mesh_state().await, before, "oversized bodies");

    // Malformed JSON: 400 before authentication, even with a valid signature.
    for body in ["{\"node_public_key\": ", "[1, 2", "{'single': 'quotes'}", "\u{1}"] {
        for path in ["/join", "/heartbeat", "/admin/invite"] {
            let r = mesh_post(port, path, "application/json", &sign(path, &json!({})).pairs(), body);
            assert_eq!(
                refusal(&r),
                (400, "invalid_json", "Request body is not valid JSON"),
                "{path} {body:?}"
            );
        }
    }
    assert_eq!(mesh_state().await, before, "malformed JSON");

    // A JSON body under another content type is not read: the route sees no fields,
    // and a signature over the real body does not match the empty one.
    let heartbeat = crate::mesh::node_body(&node, json!({"cert_id": cert_id, "status": "healthy"}));
    let r = mesh_post(port, "/heartbeat", "text/plain", &[], &heartbeat.to_string());
    assert_eq!(
        refusal(&r),
        (400, "missing_certificate_identity", "cert_id and node_public_key are required")
    );
    let invite_headers = sign("/admin/invite", &invite).pairs();
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"] {
        let r = mesh_post(port, "/admin/invite", content_type, &invite_headers, &invite.to_string());
        assert_eq!(refusal(&r), (401, "admin_auth_failed", "Invalid admin signature"), "{content_type}");
    }
    assert_eq!(mesh_state().await, before, "undeclared bodies");

    // Tampered signatures: refused, and their nonces stay unused (the genuine requests
    // are taken afterwards).
    let mut forged = invite_headers.clone();
    forged[3].1 = keys::b64(&[7u8; 64]);
    let r = post("/admin/invite", &forged, &invite);
    assert_eq!(refusal(&r), (401, "admin_auth_failed", "Invalid admin signature"));
    let other = json!({"roles": ["role:anchor"]});
    let r = post("/admin/invite", &invite_headers, &other);
    assert_eq!(
        refusal(&r),
        (401, "admin_auth_failed", "Invalid admin signature"),
        "a body changed after signing"
    );
    let mut changed = heartbeat.clone();
    changed["status"] = json!("changed after signing");
    let r = post("/heartbeat", &[], &changed);
    assert_eq!(refusal(&r), (401, "node_auth_failed", "Invalid signature"));
    let mut resigned = heartbeat.clone();
    resigned["signature"] = json!(keys::b64(&[7u8; 64]));
    let r = post("/heartbeat", &[], &resigned);
    assert_eq!(refusal(&r), (401, "node_auth_failed", "Invalid signature"));
    assert_eq!(mesh_state().await, before, "tampered signatures");

    // Replays: the first is taken (its change, and its nonce, recorded); the same
    // request again is refused and changes nothing more.
    let r = post("/admin/invite", &invite_headers, &invite);
    assert_eq!(r.0, 201, "the genuine invite, after its forgeries: {r:?}");
    before = mesh_state().await;
    let r = post("/admin/invite", &invite_headers, &invite);
    assert_eq!(refusal(&r), (401, "admin_auth_failed", "Admin nonce already used"));
    assert_eq!(mesh_state().await, before, "a replayed admin request");
    let r = post("/heartbeat", &[], &heartbeat);
    assert_eq!(r.0, 200, "the genuine heartbeat, after its forgeries: {r:?}");
    before = mesh_state().await;
    let r = post("/heartbeat", &[], &heartbeat);
    assert_eq!(refusal(&r), (401, "node_auth_failed", "Nonce already used (replay detected)"));
    assert_eq!(mesh_state().await, before, "a replayed heartbeat");

    // Still serving.
    assert_eq!(tools::request(&na, "GET", "/healthz", &[], None).expect("healthz").0, 200);
    let fresh = crate::mesh::node_body(&node, json!({"cert_id": cert_id, "status": "healthy"}));
    assert_eq!(post("/heartbeat", &[], &fresh).0, 200);
    still_serves(&n.endpoint()).await;
}

// --- Response headers -------------------------------------------------------------------

/// Which fields of a response header are set: (cluster id, member id, revision, term).
fn header_shape(h: Option<pb::ResponseHeader>) -> (bool, bool, bool, bool) {
    let h = h.unwrap_or_default();
    (h.cluster_id != 0, h.member_id != 0, h.revision != 0, h.raft_term != 0)
}

/// Every RPC's response header carries the fields etcd's does (the Cluster service's
/// has no revision, for instance), one call of each kind that changes nothing lasting.
async fn header_shapes(endpoint: &str) -> Vec<(&'static str, (bool, bool, bool, bool))> {
    let channel = Channel::from_shared(endpoint.to_string())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut kv = pb::kv_client::KvClient::new(channel.clone());
    let mut lease = pb::lease_client::LeaseClient::new(channel.clone());
    let mut cluster = pb::cluster_client::ClusterClient::new(channel.clone());
    let mut maintenance = pb::maintenance_client::MaintenanceClient::new(channel.clone());
    let mut shapes = Vec::new();
    let put = kv
        .put(pb::PutRequest {
            key: b"header/k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .expect("put")
        .into_inner();
    shapes.push(("Put", header_shape(put.header)));
    let range = pb::RangeRequest {
        key: b"header/k".to_vec(),
        ..Default::default()
    };
    shapes.push((
        "Range",
        header_shape(kv.range(range.clone()).await.expect("range").into_inner().header),
    ));
    let txn = pb::TxnRequest {
        success: vec![pb::RequestOp {
            request: Some(Op::RequestRange(range)),
        }],
        ..Default::default()
    };
    shapes.push(("Txn", header_shape(kv.txn(txn).await.expect("txn").into_inner().header)));
    let delete = pb::DeleteRangeRequest {
        key: b"header/missing".to_vec(),
        ..Default::default()
    };
    shapes.push((
        "DeleteRange",
        header_shape(kv.delete_range(delete).await.expect("delete").into_inner().header),
    ));
    let grant = lease
        .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .expect("grant")
        .into_inner();
    shapes.push(("LeaseGrant", header_shape(grant.header)));
    let ttl = lease
        .lease_time_to_live(pb::LeaseTimeToLiveRequest { id: grant.id, keys: false })
        .await
        .expect("ttl")
        .into_inner();
    shapes.push(("LeaseTimeToLive", header_shape(ttl.header)));
    let leases = lease.lease_leases(pb::LeaseLeasesRequest {}).await.expect("leases").into_inner();
    shapes.push(("LeaseLeases", header_shape(leases.header)));
    let revoke = lease
        .lease_revoke(pb::LeaseRevokeRequest { id: grant.id })
        .await
        .expect("revoke")
        .into_inner();
    shapes.push(("LeaseRevoke", header_shape(revoke.header)));
    let members = cluster
        .member_list(pb::MemberListRequest { linearizable: false })
        .await
        .expect("member list")
        .into_inner();
    shapes.push(("MemberList", header_shape(members.header)));
    let members = cluster
        .member_list(pb::MemberListRequest { linearizable: true })
        .await
        .expect("member list")
        .into_inner();
    shapes.push(("MemberList linearizable", header_shape(members.header)));
    let status = maintenance.status(pb::StatusRequest {}).await.expect("status").into_inner();
    shapes.push(("Status", header_shape(status.header)));
    let alarms = maintenance
        .alarm(pb::AlarmRequest {
            action: pb::alarm_request::AlarmAction::Get as i32,
            ..Default::default()
        })
        .await
        .expect("alarm")
        .into_inner();
    shapes.push(("Alarm get", header_shape(alarms.header)));
    let hash = maintenance
        .hash_kv(pb::HashKvRequest { revision: 0 })
        .await
        .expect("hashkv")
        .into_inner();
    shapes.push(("HashKV", header_shape(hash.header)));
    shapes
}

#[tokio::test]
async fn every_response_header_carries_the_fields_etcds_does() {
    let both = Both::start();
    let [n, e] = both.endpoints();
    let (netsy, etcd) = (header_shapes(&n).await, header_shapes(&e).await);
    for (n, e) in netsy.iter().zip(&etcd) {
        assert_eq!(n, e, "(cluster id, member id, revision, term) set in the header of {}", n.0);
    }
    assert_eq!(netsy.len(), etcd.len());
}

// --- Downgrade ---------------------------------------------------------------------------

async fn downgrade(endpoint: &str, action: i32, version: &str) -> (Code, String) {
    let channel = Channel::from_shared(endpoint.to_string())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut maintenance = pb::maintenance_client::MaintenanceClient::new(channel);
    outcome(
        maintenance
            .downgrade(pb::DowngradeRequest {
                action,
                version: version.to_string(),
            })
            .await,
    )
}

#[tokio::test]
async fn downgrade_requests_get_etcds_answers() {
    use pb::downgrade_request::DowngradeAction;
    let both = Both::start();
    let [n, e] = both.endpoints();
    let (validate, enable, cancel) = (
        DowngradeAction::Validate as i32,
        DowngradeAction::Enable as i32,
        DowngradeAction::Cancel as i32,
    );
    let cases = [
        (validate, "garbage"),
        (validate, ""),
        (validate, "3"),
        (validate, "v3.4"),
        (validate, "3.0"),
        (validate, "3.0.1-rc.1"),
        (enable, "garbage"),
        (enable, "2.9"),
        (cancel, ""),
        (7, "3.4"),
    ];
    for (action, version) in cases {
        let netsy = downgrade(&n, action, version).await;
        let etcd = downgrade(&e, action, version).await;
        assert_eq!(netsy, etcd, "action {action}, version {version:?}");
        assert_ne!(netsy.0, Code::Ok, "action {action}, version {version:?}");
    }
    // etcd 3.5 may go back to 3.4; netsy cannot run as an older etcd, so it refuses
    // every target with etcd's answer for one it cannot go to.
    let invalid = (Code::InvalidArgument, "etcdserver: invalid downgrade target version".to_string());
    assert_eq!(downgrade(&e, validate, "3.4").await.0, Code::Ok);
    assert_eq!(downgrade(&n, validate, "3.4").await, invalid);
    assert_eq!(downgrade(&n, enable, "3.4").await, invalid);
    still_serves(&n).await;
}
