//! The workloads. Each runs `clients` concurrent closed loops over shared connections and
//! records one latency per request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use super::{connect, BenchError, Options, Summary};
use netsy::proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    lease_client::LeaseClient,
    request_op::Request,
    response_op::Response,
    watch_client::WatchClient,
    watch_request::RequestUnion,
    Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, WatchRequest,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrder {
    Sequential,
    Random,
}

#[derive(Debug, Clone)]
pub enum Workload {
    /// etcd `benchmark put`.
    Put {
        key_size: usize,
        value_size: usize,
        key_space: usize,
        order: KeyOrder,
    },
    /// etcd `benchmark txn-put`: one Put inside a Txn.
    TxnPut {
        key_size: usize,
        value_size: usize,
        key_space: usize,
    },
    /// etcd `benchmark range`; `populate` keys of `value_size` bytes are written under
    /// `key` first when it is a prefix range.
    Range {
        key: String,
        prefix: bool,
        linearizable: bool,
        limit: i64,
        populate: usize,
        value_size: usize,
        /// As etcd 3.7's RangeStream (the time is to the last chunk).
        stream: bool,
    },
    /// The four Txn shapes kube-apiserver sends: create, guaranteed update, delete, and the
    /// compaction bookkeeping on `compact_rev_key`.
    TxnMixed { value_size: usize },
    /// Delivery latency from put to event, `streams` × `watchers` watching one key while
    /// puts arrive at `rate` per second.
    WatchLatency {
        streams: usize,
        watchers: usize,
        rate: usize,
        value_size: usize,
    },
    /// Keep-alive round trips on one stream per client.
    LeaseKeepalive,
}

impl Workload {
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Put { .. } => "put",
            Workload::TxnPut { .. } => "txn-put",
            Workload::Range { .. } => "range",
            Workload::TxnMixed { .. } => "txn-mixed",
            Workload::WatchLatency { .. } => "watch-latency",
            Workload::LeaseKeepalive => "lease-keepalive",
        }
    }
}

/// Runs one workload and summarises it.
pub async fn run(opts: &Options, workload: &Workload) -> Result<Summary, BenchError> {
    let channels = connect(opts).await?;
    match workload {
        Workload::Put {
            key_size,
            value_size,
            key_space,
            order,
        } => {
            let (key_size, value, key_space, order) = (*key_size, vec![b'v'; *value_size], *key_space, *order);
            closed_loop(opts, "put", &channels, move |ch, seq| {
                let key = make_key(seq, key_size, key_space, order);
                let value = value.clone();
                Box::pin(async move {
                    kv_client(ch)
                        .put(PutRequest {
                            key,
                            value,
                            ..Default::default()
                        })
                        .await
                        .map(|_| ())
                })
            })
            .await
        }
        Workload::TxnPut {
            key_size,
            value_size,
            key_space,
        } => {
            let (key_size, value, key_space) = (*key_size, vec![b'v'; *value_size], *key_space);
            closed_loop(opts, "txn-put", &channels, move |ch, seq| {
                let put = PutRequest {
                    key: make_key(seq, key_size, key_space, KeyOrder::Random),
                    value: value.clone(),
                    ..Default::default()
                };
                Box::pin(async move {
                    kv_client(ch)
                        .txn(TxnRequest {
                            success: vec![op(Request::RequestPut(put))],
                            ..Default::default()
                        })
                        .await
                        .map(|_| ())
                })
            })
            .await
        }
        Workload::Range {
            key,
            prefix,
            linearizable,
            limit,
            populate,
            value_size,
            stream,
        } => {
            let range_end = if *prefix { prefix_end(key.as_bytes()) } else { Vec::new() };
            if *prefix && *populate > 0 {
                populate_prefix(&channels, key, *populate, *value_size).await?;
            }
            let req = RangeRequest {
                key: key.as_bytes().to_vec(),
                range_end,
                limit: *limit,
                serializable: !linearizable,
                ..Default::default()
            };
            if *stream {
                return closed_loop(opts, "range-stream", &channels, move |ch, _| {
                    let req = req.clone();
                    Box::pin(async move {
                        let mut chunks = kv_client(ch).range_stream(req).await?.into_inner();
                        while chunks.message().await?.is_some() {}
                        Ok(())
                    })
                })
                .await;
            }
            closed_loop(opts, "range", &channels, move |ch, _| {
                let req = req.clone();
                Box::pin(async move { kv_client(ch).range(req).await.map(|_| ()) })
            })
            .await
        }
        Workload::TxnMixed { value_size } => txn_mixed(opts, &channels, *value_size).await,
        Workload::WatchLatency {
            streams,
            watchers,
            rate,
            value_size,
        } => watch_latency(opts, &channels, *streams, *watchers, *rate, *value_size).await,
        Workload::LeaseKeepalive => lease_keepalive(opts, &channels).await,
    }
}

/// A KV client that accepts responses of any size, like etcd's Go client (MaxInt32).
fn kv_client(ch: Channel) -> KvClient<Channel> {
    KvClient::new(ch).max_decoding_message_size(usize::MAX)
}

fn op(r: Request) -> RequestOp {
    RequestOp { request: Some(r) }
}

/// The smallest key after every key with this prefix (etcd's `GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn make_key(seq: usize, key_size: usize, key_space: usize, order: KeyOrder) -> Vec<u8> {
    let n = match order {
        KeyOrder::Sequential => seq % key_space.max(1),
        KeyOrder::Random => rand::random_range(0..key_space.max(1)),
    };
    let mut key = format!("{n:0width$}", width = key_size).into_bytes();
    key.truncate(key_size.max(1));
    key
}

async fn populate_prefix(channels: &[Channel], prefix: &str, count: usize, value_size: usize) -> Result<(), BenchError> {
    let value = vec![b'v'; value_size];
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks: Vec<tokio::task::JoinHandle<Result<(), BenchError>>> = Vec::new();
    for i in 0..32 {
        let mut kv = KvClient::new(channels[i % channels.len()].clone());
        let (next, value, prefix) = (next.clone(), value.clone(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return Ok(());
                }
                let req = PutRequest {
                    key: format!("{prefix}{n:08}").into_bytes(),
                    value: value.clone(),
                    ..Default::default()
                };
                kv.put(req)
                    .await
                    .map_err(|e| BenchError::Setup(format!("populating {prefix}: {e}")))?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| BenchError::Setup(e.to_string()))??;
    }
    Ok(())
}

type Call = BoxFuture<'static, Result<(), tonic::Status>>;

/// `opts.clients` tasks take request numbers until `opts.total`, each timing its call.
async fn closed_loop(
    opts: &Options,
    name: &str,
    channels: &[Channel],
    call: impl Fn(Channel, usize) -> Call + Send + Sync + 'static,
) -> Result<Summary, BenchError> {
    let call = Arc::new(call);
    let next = Arc::new(AtomicUsize::new(0));
    let total = opts.total;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..opts.clients.max(1) {
        let (call, next, ch) = (call.clone(), next.clone(), channels[c % channels.len()].clone());
        let name = name.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total {
                    return (lat, errors);
                }
                let t = Instant::now();
                match call(ch.clone(), seq).await {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(e) => {
                        // The first failure of each client, so an error count can be explained.
                        if errors == 0 {
                            tracing::warn!(workload = %name, code = ?e.code(), message = e.message(), "request failed");
                        }
                        errors += 1;
                    }
                }
            }
        }));
    }
    collect(name, tasks, start).await
}

async fn collect(name: &str, tasks: Vec<tokio::task::JoinHandle<(Vec<Duration>, usize)>>, start: Instant) -> Result<Summary, BenchError> {
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.map_err(|e| BenchError::Setup(e.to_string()))?;
        all.extend(lat);
        errors += e;
    }
    Ok(Summary::new(name, all, errors, start.elapsed()))
}

fn compare_mod(key: &[u8], rev: i64) -> Compare {
    Compare {
        key: key.to_vec(),
        target: CompareTarget::Mod as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::ModRevision(rev)),
        ..Default::default()
    }
}

fn get(key: &[u8]) -> RequestOp {
    op(Request::RequestRange(RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }))
}

/// kube-apiserver's Txn shapes, in the proportions of an object's life: create, two
/// guaranteed updates, delete; every tenth step is the compaction bookkeeping CAS.
async fn txn_mixed(opts: &Options, channels: &[Channel], value_size: usize) -> Result<Summary, BenchError> {
    let next = Arc::new(AtomicUsize::new(0));
    let total = opts.total;
    // Objects of an earlier run may still exist mid-life; this run uses its own names.
    let run: u32 = rand::random();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..opts.clients.max(1) {
        let mut kv = KvClient::new(channels[c % channels.len()].clone());
        let next = next.clone();
        let value = vec![b'v'; value_size];
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0);
            let (mut object, mut step, mut rev, mut compact_version) = (0usize, 0usize, 0i64, 0i64);
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total {
                    return (lat, errors);
                }
                let key = format!("/registry/bench/{run:08x}/c{c}/o{object}").into_bytes();
                let compacting = seq % 10 == 9;
                let req = if compacting {
                    let ck = b"compact_rev_key".to_vec();
                    TxnRequest {
                        compare: vec![Compare {
                            key: ck.clone(),
                            target: CompareTarget::Version as i32,
                            result: CompareResult::Equal as i32,
                            target_union: Some(TargetUnion::Version(compact_version)),
                            ..Default::default()
                        }],
                        success: vec![op(Request::RequestPut(PutRequest {
                            key: ck.clone(),
                            value: seq.to_string().into_bytes(),
                            ..Default::default()
                        }))],
                        failure: vec![get(&ck)],
                    }
                } else {
                    match step {
                        0 => TxnRequest {
                            compare: vec![compare_mod(&key, 0)],
                            success: vec![op(Request::RequestPut(PutRequest {
                                key: key.clone(),
                                value: value.clone(),
                                ..Default::default()
                            }))],
                            failure: vec![],
                        },
                        1 | 2 => TxnRequest {
                            compare: vec![compare_mod(&key, rev)],
                            success: vec![op(Request::RequestPut(PutRequest {
                                key: key.clone(),
                                value: value.clone(),
                                ..Default::default()
                            }))],
                            failure: vec![get(&key)],
                        },
                        _ => TxnRequest {
                            compare: vec![compare_mod(&key, rev)],
                            success: vec![op(Request::RequestDeleteRange(DeleteRangeRequest {
                                key: key.clone(),
                                ..Default::default()
                            }))],
                            failure: vec![get(&key)],
                        },
                    }
                };
                let t = Instant::now();
                match kv.txn(req).await {
                    Ok(resp) => {
                        lat.push(t.elapsed());
                        let resp = resp.into_inner();
                        let header_rev = resp.header.map_or(0, |h| h.revision);
                        if compacting {
                            compact_version = if resp.succeeded {
                                compact_version + 1
                            } else {
                                match resp.responses.first().and_then(|r| r.response.as_ref()) {
                                    Some(Response::ResponseRange(r)) => r.kvs.first().map_or(0, |kv| kv.version),
                                    _ => 0,
                                }
                            };
                            continue;
                        }
                        if !resp.succeeded {
                            errors += 1; // another writer would have changed our object: a bug
                        }
                        rev = header_rev;
                        step += 1;
                        if step == 4 {
                            step = 0;
                            object += 1;
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
        }));
    }
    collect("txn-mixed", tasks, start).await
}

async fn lease_keepalive(opts: &Options, channels: &[Channel]) -> Result<Summary, BenchError> {
    let next = Arc::new(AtomicUsize::new(0));
    let total = opts.total;
    let mut clients = Vec::new();
    for c in 0..opts.clients.max(1) {
        let mut lease = LeaseClient::new(channels[c % channels.len()].clone());
        let id = lease
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
            .await
            .map_err(|e| BenchError::Setup(format!("lease grant: {e}")))?
            .into_inner()
            .id;
        clients.push((lease, id));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (mut lease, id) in clients {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let (mut lat, errors) = (Vec::new(), 0);
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            // The first request goes out with the call (etcd answers headers with data).
            if next.fetch_add(1, Ordering::Relaxed) >= total {
                return (lat, errors);
            }
            let mut t = Instant::now();
            if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                return (lat, errors + 1);
            }
            let mut responses = match lease.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
                Ok(r) => r.into_inner(),
                Err(_) => return (lat, 1),
            };
            loop {
                match responses.next().await {
                    Some(Ok(_)) => lat.push(t.elapsed()),
                    _ => return (lat, errors + 1),
                }
                if next.fetch_add(1, Ordering::Relaxed) >= total {
                    return (lat, errors);
                }
                t = Instant::now();
                if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                    return (lat, errors + 1);
                }
            }
        }));
    }
    collect("lease-keepalive", tasks, start).await
}

/// Puts at `rate`/s to one key watched by `streams × watchers`; the latency of each
/// delivered event is measured from just before its put was sent.
async fn watch_latency(
    opts: &Options,
    channels: &[Channel],
    streams: usize,
    watchers: usize,
    rate: usize,
    value_size: usize,
) -> Result<Summary, BenchError> {
    let key = b"/bench/watch-latency".to_vec();
    let total = opts.total;
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; total]));
    let mut outputs = Vec::new();
    let mut inputs = Vec::new();
    for s in 0..streams.max(1) {
        let mut client = WatchClient::new(channels[s % channels.len()].clone());
        // The creates are queued before the call: etcd sends the response headers only
        // with its first message.
        let (tx, rx) = tokio::sync::mpsc::channel(watchers.max(1) + 1);
        for _ in 0..watchers.max(1) {
            let create = WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: key.clone(),
                    ..Default::default()
                })),
            };
            tx.send(create).await.map_err(|e| BenchError::Setup(e.to_string()))?;
        }
        let mut out = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|e| BenchError::Setup(format!("watch: {e}")))?
            .into_inner();
        for _ in 0..watchers.max(1) {
            match out.next().await {
                Some(Ok(r)) if r.created && !r.canceled => {}
                other => return Err(BenchError::Setup(format!("watch create failed: {other:?}"))),
            }
        }
        inputs.push(tx);
        outputs.push(out);
    }
    let expected_per_stream = total * watchers.max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut out in outputs {
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(expected_per_stream);
            while lat.len() < expected_per_stream {
                let resp = match tokio::time::timeout(Duration::from_secs(30), out.next()).await {
                    Ok(Some(Ok(r))) => r,
                    _ => break,
                };
                let now = Instant::now();
                for ev in resp.events {
                    let seq = ev.kv.and_then(|kv| {
                        std::str::from_utf8(&kv.value[..kv.value.len().min(12)])
                            .ok()?
                            .trim()
                            .parse::<usize>()
                            .ok()
                    });
                    let at = seq.and_then(|s| sent.lock().ok()?.get(s).copied().flatten());
                    if let Some(at) = at {
                        lat.push(now.duration_since(at));
                    }
                }
            }
            let missing = expected_per_stream - lat.len();
            (lat, missing)
        }));
    }
    let mut kv = KvClient::new(channels[0].clone());
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for seq in 0..total {
        ticker.tick().await;
        let mut value = format!("{seq:<12}").into_bytes();
        value.resize(value_size.max(12), b'v');
        if let Ok(mut s) = sent.lock() {
            s[seq] = Some(Instant::now());
        }
        kv.put(PutRequest {
            key: key.clone(),
            value,
            ..Default::default()
        })
        .await
        .map_err(|e| BenchError::Setup(format!("put: {e}")))?;
    }
    let summary = collect("watch-latency", tasks, start).await;
    drop(inputs);
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_prefix_ends() {
        assert_eq!(make_key(7, 4, 100, KeyOrder::Sequential), b"0007");
        assert_eq!(make_key(107, 4, 100, KeyOrder::Sequential), b"0007");
        assert_eq!(make_key(3, 1, 10, KeyOrder::Sequential), b"3");
        assert_eq!(make_key(0, 8, 10, KeyOrder::Random).len(), 8);
        assert_eq!(prefix_end(b"ab"), b"ac");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
