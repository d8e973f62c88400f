//! `netsy bench suite` (behind `make bench`): starts real etcd and netsy side by side on
//! loopback with fresh data directories, runs every workload against both with the same
//! parameters (alternating the order between rounds to cancel machine drift), records
//! memory and disk use, and writes `results.md`, `results.json` and `results.svg`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{report, run, BenchError, KeyOrder, Options, Summary, Workload};

#[derive(Debug, Clone)]
pub struct SuiteOptions {
    pub etcd_bin: PathBuf,
    pub netsy_bin: PathBuf,
    pub out_dir: PathBuf,
    /// Small totals (for tests and a quick look); the targets are judged on full runs.
    pub quick: bool,
    /// Keys loaded for the memory/disk measurement (1,000,000 in a full run).
    pub load_keys: usize,
    pub rounds: usize,
}

/// What the report compares for one workload: throughput or a latency.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub enum Metric {
    Throughput,
    P50,
    P99,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub metric: Metric,
    /// netsy/etcd must be at least this (throughput) or at most this (latency).
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub name: String,
    pub etcd: Summary,
    pub netsy: Summary,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Footprint {
    pub keys: usize,
    pub load_seconds: f64,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    pub disk_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub quick: bool,
    pub cpus: usize,
    pub comparisons: Vec<Comparison>,
    pub etcd_footprint: Footprint,
    pub netsy_footprint: Footprint,
    /// RSS with 10,000 watchers open (bytes), per server.
    pub watchers_rss: (u64, u64),
}

struct Server {
    name: &'static str,
    child: Child,
    endpoint: String,
    data_dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, BenchError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_ready(server: &Server) -> Result<(), BenchError> {
    let opts = Options {
        endpoints: vec![server.endpoint.clone()],
        clients: 1,
        conns: 1,
        total: 1,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channels) = super::connect(&opts).await {
            let mut kv = crate::proto::etcdserverpb::kv_client::KvClient::new(channels[0].clone());
            let probe = crate::proto::etcdserverpb::RangeRequest {
                key: b"bench-probe".to_vec(),
                ..Default::default()
            };
            if kv.range(probe).await.is_ok() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!("{} did not become ready", server.name)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn start_etcd(bin: &Path, dir: &Path) -> Result<Server, BenchError> {
    let (client, peer) = (free_port()?, free_port()?);
    let data_dir = dir.join("etcd");
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(bin)
        .arg("--name=bench")
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=bench={peer_url}"))
        .arg("--log-level=error")
        .arg("--quota-backend-bytes=8589934592")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| BenchError::Setup(format!("cannot start etcd {}: {e}; run `make venv`", bin.display())))?;
    Ok(Server {
        name: "etcd",
        child,
        endpoint: format!("127.0.0.1:{client}"),
        data_dir,
    })
}

fn start_netsy(bin: &Path, dir: &Path) -> Result<Server, BenchError> {
    let (client, peer, health) = (free_port()?, free_port()?, free_port()?);
    let data_dir = dir.join("netsy");
    let config = dir.join("netsy.jsonc");
    let text = format!(
        "{{ \"cluster_id\": \"bench\", \"storage\": {{ \"provider\": \"file\", \"path\": \"{}\" }}, \"limits\": {{ \"quota_backend_bytes\": 8589934592 }} }}",
        dir.join("objects").display()
    );
    std::fs::write(&config, text)?;
    let child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&config)
        .env("NETSY_DATA_DIR", &data_dir)
        .env("NETSY_BIND_CLIENT", format!("127.0.0.1:{client}"))
        .env("NETSY_BIND_PEER", format!("127.0.0.1:{peer}"))
        .env("NETSY_BIND_HEALTH", format!("127.0.0.1:{health}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| BenchError::Setup(format!("cannot start netsy {}: {e}", bin.display())))?;
    Ok(Server {
        name: "netsy",
        child,
        endpoint: format!("127.0.0.1:{client}"),
        data_dir,
    })
}

/// (current RSS, peak RSS) of a process in bytes, from /proc.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn disk_usage(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                disk_usage(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

struct Case {
    name: &'static str,
    clients: usize,
    conns: usize,
    total: usize,
    workload: Workload,
    targets: Vec<Target>,
}

fn cases(quick: bool) -> Vec<Case> {
    let n = |full: usize, small: usize| if quick { small } else { full };
    let t = |metric, ratio| Target { metric, ratio };
    let put = |order| Workload::Put {
        key_size: 8,
        value_size: 256,
        key_space: 100_000,
        order,
    };
    vec![
        Case {
            name: "put, 100 clients / 10 conns, 256 B",
            clients: 100,
            conns: 10,
            total: n(60_000, 2_000),
            workload: put(KeyOrder::Random),
            targets: vec![t(Metric::Throughput, 1.5), t(Metric::P99, 1.0)],
        },
        Case {
            name: "put, 1 client, 256 B",
            clients: 1,
            conns: 1,
            total: n(3_000, 200),
            workload: put(KeyOrder::Random),
            targets: vec![t(Metric::P50, 1.0)],
        },
        Case {
            name: "txn-mixed (kube-apiserver shapes), 100 clients",
            clients: 100,
            conns: 10,
            total: n(40_000, 2_000),
            workload: Workload::TxnMixed { value_size: 512 },
            targets: vec![t(Metric::Throughput, 1.5)],
        },
        Case {
            name: "range 1 key, linearizable, 100 clients",
            clients: 100,
            conns: 10,
            total: n(120_000, 3_000),
            workload: Workload::Range {
                key: "foo".into(),
                prefix: false,
                linearizable: true,
                limit: 0,
                populate: 0,
                value_size: 0,
            },
            targets: vec![t(Metric::Throughput, 1.5)],
        },
        Case {
            name: "prefix range 1,000 × 1 KiB, 20 clients",
            clients: 20,
            conns: 10,
            total: n(3_000, 100),
            workload: Workload::Range {
                key: "/range/".into(),
                prefix: true,
                linearizable: true,
                limit: 0,
                populate: 1_000,
                value_size: 1024,
            },
            targets: vec![t(Metric::Throughput, 2.0)],
        },
        Case {
            name: "watch-latency, 100 watchers (10 streams), 200 puts/s",
            clients: 1,
            conns: 10,
            total: n(2_000, 100),
            workload: Workload::WatchLatency {
                streams: 10,
                watchers: 10,
                rate: 200,
                value_size: 256,
            },
            targets: vec![t(Metric::P99, 1.0)],
        },
        Case {
            name: "lease keep-alive, 100 clients",
            clients: 100,
            conns: 10,
            total: n(120_000, 3_000),
            workload: Workload::LeaseKeepalive,
            targets: vec![t(Metric::Throughput, 1.0)],
        },
        Case {
            name: "list 10,000 × 1 KiB (1 client)",
            clients: 1,
            conns: 1,
            total: n(30, 5),
            workload: Workload::Range {
                key: "/list/".into(),
                prefix: true,
                linearizable: true,
                limit: 0,
                populate: n(10_000, 500),
                value_size: 1024,
            },
            targets: vec![],
        },
    ]
}

fn mean(a: &Summary, b: &Summary) -> Summary {
    let avg = |x: f64, y: f64| (x + y) / 2.0;
    Summary {
        workload: a.workload.clone(),
        requests: a.requests + b.requests,
        errors: a.errors + b.errors,
        seconds: a.seconds + b.seconds,
        per_second: avg(a.per_second, b.per_second),
        min: a.min.min(b.min),
        p50: avg(a.p50, b.p50),
        p90: avg(a.p90, b.p90),
        p99: avg(a.p99, b.p99),
        p999: avg(a.p999, b.p999),
        max: a.max.max(b.max),
    }
}

async fn run_on(server: &Server, case: &Case) -> Result<Summary, BenchError> {
    let opts = Options {
        endpoints: vec![server.endpoint.clone()],
        clients: case.clients,
        conns: case.conns,
        total: case.total,
    };
    let s = run(&opts, &case.workload).await?;
    tracing::info!(server = server.name, case = case.name, "{}", s.text().replace('\n', "; "));
    Ok(s)
}

/// Opens `streams × per_stream` watchers on a server and returns its highest RSS while
/// they are open.
async fn watchers_rss(server: &Server, streams: usize, per_stream: usize) -> Result<u64, BenchError> {
    let case = Case {
        name: "10,000 watchers",
        clients: 1,
        conns: 10,
        total: 20,
        workload: Workload::WatchLatency {
            streams,
            watchers: per_stream,
            rate: 20,
            value_size: 64,
        },
        targets: vec![],
    };
    // The RSS is sampled while the workload (and so its watchers) is running.
    let pid = server.child.id();
    let max = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let max = max.clone();
        tokio::spawn(async move {
            loop {
                max.fetch_max(rss(pid).0, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let result = run_on(server, &case).await;
    sampler.abort();
    result?;
    Ok(max.load(std::sync::atomic::Ordering::Relaxed))
}

async fn load_keys(server: &Server, keys: usize) -> Result<Footprint, BenchError> {
    let opts = Options {
        endpoints: vec![server.endpoint.clone()],
        clients: 100,
        conns: 10,
        total: keys,
    };
    let started = Instant::now();
    let s = run(
        &opts,
        &Workload::Put {
            key_size: 16,
            value_size: 256,
            key_space: keys,
            order: KeyOrder::Sequential,
        },
    )
    .await?;
    if s.errors > 0 {
        return Err(BenchError::Setup(format!(
            "{}: {} errors while loading keys",
            server.name, s.errors
        )));
    }
    let (rss_bytes, peak_rss_bytes) = rss(server.child.id());
    Ok(Footprint {
        keys,
        load_seconds: started.elapsed().as_secs_f64(),
        rss_bytes,
        peak_rss_bytes,
        disk_bytes: disk_usage(&server.data_dir),
    })
}

pub async fn run_suite(opts: &SuiteOptions) -> Result<Results, BenchError> {
    let work = std::env::temp_dir().join(format!("netsy-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let etcd = start_etcd(&opts.etcd_bin, &work)?;
    let netsy = start_netsy(&opts.netsy_bin, &work)?;
    wait_ready(&etcd).await?;
    wait_ready(&netsy).await?;
    tracing::info!(etcd = %etcd.endpoint, netsy = %netsy.endpoint, "servers ready");

    let mut comparisons = Vec::new();
    for case in cases(opts.quick) {
        let mut etcd_runs = Vec::new();
        let mut netsy_runs = Vec::new();
        for round in 0..opts.rounds.max(1) {
            // Alternate who goes first.
            if round % 2 == 0 {
                etcd_runs.push(run_on(&etcd, &case).await?);
                netsy_runs.push(run_on(&netsy, &case).await?);
            } else {
                netsy_runs.push(run_on(&netsy, &case).await?);
                etcd_runs.push(run_on(&etcd, &case).await?);
            }
        }
        let fold = |runs: Vec<Summary>| runs.iter().skip(1).fold(runs[0].clone(), |a, b| mean(&a, b));
        comparisons.push(Comparison {
            name: case.name.to_string(),
            etcd: fold(etcd_runs),
            netsy: fold(netsy_runs),
            targets: case.targets,
        });
    }

    let (per_stream, streams) = if opts.quick { (10, 10) } else { (100, 100) };
    let watchers_rss = (
        watchers_rss(&etcd, streams, per_stream).await?,
        watchers_rss(&netsy, streams, per_stream).await?,
    );
    let etcd_footprint = load_keys(&etcd, opts.load_keys).await?;
    let netsy_footprint = load_keys(&netsy, opts.load_keys).await?;
    drop(etcd);
    drop(netsy);
    let _ = std::fs::remove_dir_all(&work);

    let results = Results {
        quick: opts.quick,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        comparisons,
        etcd_footprint,
        netsy_footprint,
        watchers_rss,
    };
    std::fs::create_dir_all(&opts.out_dir)?;
    std::fs::write(opts.out_dir.join("results.md"), report::markdown(&results))?;
    std::fs::write(opts.out_dir.join("results.svg"), report::svg(&results))?;
    std::fs::write(
        opts.out_dir.join("results.json"),
        serde_json::to_string_pretty(&results).map_err(|e| BenchError::Setup(e.to_string()))?,
    )?;
    Ok(results)
}
