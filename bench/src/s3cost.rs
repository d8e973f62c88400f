//! The cost of `object-storage` durability: one netsy over S3 (moto's server) behind a
//! proxy that adds a fixed latency each way, put 100 clients in `object-storage` and in
//! `quorum` durability, with the PUT requests per second netsy made and the PUT round
//! trip measured through the same proxy in the same run.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::report::{DurabilityCost, DurabilityRow};
use super::BenchError;

fn setup(what: &str) -> impl Fn(std::io::Error) -> BenchError + '_ {
    move |e| BenchError::Setup(format!("{what}: {e}"))
}

/// Forwards connections on `listener` to `target`, each byte `one_way` later than it
/// arrived, in both directions (a delay line: latency without a bandwidth limit).
pub async fn latency_proxy(listener: TcpListener, target: SocketAddr, one_way: Duration) {
    while let Ok((inbound, _)) = listener.accept().await {
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else { return };
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::spawn(delay_line(ri, wo, one_way));
            delay_line(ro, wi, one_way).await;
        });
    }
}

async fn delay_line(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at + delay).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((tokio::time::Instant::now(), buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// One HTTP/1.0 exchange; the status code.
pub(crate) async fn http(addr: SocketAddr, request: &[u8]) -> Result<(u16, String), BenchError> {
    let mut s = TcpStream::connect(addr).await.map_err(setup("connect"))?;
    s.write_all(request).await.map_err(setup("write"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.map_err(setup("read"))?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, text))
}

/// p50 and p99 (ms) of `n` small PUTs through `proxy`, one after another.
async fn put_round_trips(proxy: SocketAddr, bucket: &str, n: usize) -> Result<(f64, f64), BenchError> {
    let mut ms = Vec::with_capacity(n);
    let body = [b'x'; 512];
    for i in 0..n {
        let mut req = format!(
            "PUT /{bucket}/probe/{i} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        let started = Instant::now();
        let (code, text) = http(proxy, &req).await?;
        if code != 200 {
            return Err(BenchError::Setup(format!("probe PUT answered {code}: {text}")));
        }
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    Ok((at(0.5), at(0.99)))
}

/// The count of successful object-store PUTs in a node's metrics.
async fn puts_done(metrics: SocketAddr) -> Result<f64, BenchError> {
    let (_, text) = http(metrics, b"GET /metrics HTTP/1.0\r\n\r\n").await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("netsy_object_store_requests_total{") && l.contains("op=\"put\"") && l.contains("outcome=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16, BenchError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(setup("free port"))?
        .local_addr()?
        .port())
}

/// Runs the comparison; `moto_bin` is moto's `moto_server`, `netsy_bin` the release
/// netsy, `put_total` the puts per durability.
pub async fn durability_cost(moto_bin: &Path, netsy_bin: &Path, dir: &Path, put_total: usize) -> Result<DurabilityCost, BenchError> {
    const ONE_WAY: Duration = Duration::from_millis(10);
    const BUCKET: &str = "bench";
    let moto_port = free_port()?;
    let moto = Moto(
        Command::new(moto_bin)
            .args(["-H", "127.0.0.1", "-p", &moto_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(setup("start moto_server"))?,
    );
    let moto_addr: SocketAddr = ([127, 0, 0, 1], moto_port).into();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(
        moto_addr,
        format!("PUT /{BUCKET} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    )
    .await
    .map(|(c, _)| c != 200)
    .unwrap_or(true)
    {
        if Instant::now() > deadline {
            return Err(BenchError::Setup("moto_server did not start".into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(setup("proxy"))?;
    let proxy = listener.local_addr()?;
    let proxy_task = tokio::spawn(latency_proxy(listener, moto_addr, ONE_WAY));
    let round_trip = put_round_trips(proxy, BUCKET, 50).await?;
    tracing::info!(
        p50_ms = round_trip.0,
        p99_ms = round_trip.1,
        "S3 PUT round trip through the latency proxy"
    );

    // (durability, clients, archive.max_puts_per_second). The ceiling of 10 is the
    // default; 1000 is never reached here, showing the latency the ceiling costs.
    const CEILING: u32 = 10;
    const UNBOUND: u32 = 1000;
    let runs = [
        ("object-storage", 100, CEILING),
        ("object-storage", 1, CEILING),
        ("object-storage", 100, UNBOUND),
        ("object-storage", 1, UNBOUND),
        ("quorum", 100, CEILING),
    ];
    let mut rows = Vec::new();
    for (n, (durability, clients, ceiling)) in runs.into_iter().enumerate() {
        let (client, peer, health) = (free_port()?, free_port()?, free_port()?);
        let data = dir.join(format!("s3-{n}"));
        let config = dir.join(format!("s3-{n}.jsonc"));
        std::fs::write(
            &config,
            format!(
                r#"{{ "cluster_id": "bench", "durability": "{durability}", "archive": {{ "max_puts_per_second": {ceiling} }},
                     "storage": {{ "provider": "s3", "bucket_name": "{BUCKET}", "key_prefix": "run-{n}", "region": "us-east-1",
                                   "endpoint": "http://{proxy}", "force_path_style": true }} }}"#
            ),
        )?;
        let mut child = Command::new(netsy_bin)
            .args(["serve", "--config"])
            .arg(&config)
            .envs([
                ("NETSY_NODE_ID", "netsy-0".to_string()),
                ("NETSY_DATA_DIR", data.display().to_string()),
                ("NETSY_BIND_CLIENT", format!("127.0.0.1:{client}")),
                ("NETSY_BIND_PEER", format!("127.0.0.1:{peer}")),
                ("NETSY_BIND_HEALTH", format!("127.0.0.1:{health}")),
                ("NETSY_ADVERTISE_CLIENT", format!("http://127.0.0.1:{client}")),
                ("NETSY_ADVERTISE_PEER", format!("http://127.0.0.1:{peer}")),
                ("AWS_ACCESS_KEY_ID", "testing".into()),
                ("AWS_SECRET_ACCESS_KEY", "testing".into()),
                ("RUST_LOG", "warn".into()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(setup("start netsy"))?;
        let endpoint = format!("127.0.0.1:{client}");
        let metrics: SocketAddr = ([127, 0, 0, 1], health).into();
        let result = async {
            let deadline = Instant::now() + Duration::from_secs(60);
            while http(metrics, b"GET /readyz HTTP/1.0\r\n\r\n")
                .await
                .map(|(c, _)| c != 200)
                .unwrap_or(true)
            {
                if Instant::now() > deadline {
                    return Err(BenchError::Setup(format!("netsy ({durability}) did not get ready")));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // One client at the ceiling writes about `ceiling` times a second: fewer puts.
            let total = if clients == 1 { (put_total / 100).max(50) } else { put_total };
            let opts = super::Options {
                endpoints: vec![endpoint.clone()],
                clients,
                conns: clients.min(10),
                total,
            };
            let workload = super::Workload::Put {
                key_size: 8,
                value_size: 256,
                key_space: 100_000,
                order: super::KeyOrder::Random,
            };
            let before = puts_done(metrics).await?;
            let summary = super::run(&opts, &workload).await?;
            let puts = puts_done(metrics).await? - before;
            tracing::info!(durability, clients, ceiling, puts, "{}", summary.text().replace('\n', "; "));
            Ok(DurabilityRow {
                durability: durability.to_string(),
                clients,
                ceiling,
                puts_per_second: puts / summary.seconds.max(1e-9),
                summary,
            })
        }
        .await;
        let _ = child.kill();
        let _ = child.wait();
        rows.push(result?);
    }
    proxy_task.abort();
    drop(moto);
    Ok(DurabilityCost {
        one_way_ms: ONE_WAY.as_secs_f64() * 1000.0,
        put_round_trip_p50_ms: round_trip.0,
        put_round_trip_p99_ms: round_trip.1,
        ceiling_puts_per_second: CEILING,
        rows,
    })
}
