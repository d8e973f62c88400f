//! `netsy-bench suite` (behind `make bench`): starts real etcd and netsy side by side on
//! loopback with fresh data directories, runs every workload against both with the same
//! parameters (alternating the order between rounds to cancel machine drift), records
//! memory and disk use, and writes `results.md`, `results.json` and `results.svg`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use super::report::{Comparison, DiskSync, Footprint, Metric, Results, Target};
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

/// One server process (a single server, or one member of a cluster), restartable with
/// the same command.
struct Server {
    name: &'static str,
    command: Vec<String>,
    envs: Vec<(String, String)>,
    child: Child,
    endpoint: String,
    data_dir: PathBuf,
}

impl Server {
    fn spawn(
        name: &'static str,
        command: Vec<String>,
        envs: Vec<(String, String)>,
        endpoint: String,
        data_dir: PathBuf,
    ) -> Result<Server, BenchError> {
        let child = spawn_command(name, &command, &envs)?;
        Ok(Server {
            name,
            command,
            envs,
            child,
            endpoint,
            data_dir,
        })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) -> Result<(), BenchError> {
        self.kill();
        self.child = spawn_command(self.name, &self.command, &self.envs)?;
        Ok(())
    }
}

fn spawn_command(name: &str, command: &[String], envs: &[(String, String)]) -> Result<Child, BenchError> {
    Command::new(&command[0])
        .args(&command[1..])
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| BenchError::Setup(format!("cannot start {name} {}: {e}; run `make venv`", command[0])))
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn free_port() -> Result<u16, BenchError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_ready(server: &Server) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if request_once(&server.endpoint, Duration::from_secs(1), true).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!("{} did not become ready", server.name)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One request to `endpoint` within `timeout`: a read (`read`) or a put.
async fn request_once(endpoint: &str, timeout: Duration, read: bool) -> Result<(), BenchError> {
    let opts = Options::one(endpoint);
    let request = async {
        let channels = super::connect(&opts).await?;
        let mut kv = netsy::proto::etcdserverpb::kv_client::KvClient::new(channels[0].clone());
        let failed = |e: tonic::Status| BenchError::Setup(e.message().to_string());
        if read {
            let probe = netsy::proto::etcdserverpb::RangeRequest {
                key: b"bench-probe".to_vec(),
                ..Default::default()
            };
            kv.range(probe).await.map_err(failed)?;
        } else {
            let put = netsy::proto::etcdserverpb::PutRequest {
                key: b"bench-failover".to_vec(),
                value: b"x".to_vec(),
                ..Default::default()
            };
            kv.put(put).await.map_err(failed)?;
        }
        Ok(())
    };
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| BenchError::Setup(format!("{endpoint}: no answer within {timeout:?}")))?
}

/// A group of `n` etcd members (one for n = 1), started together.
fn start_etcd(bin: &Path, dir: &Path, n: usize) -> Result<Vec<Server>, BenchError> {
    let ports: Vec<(u16, u16)> = (0..n)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<Result<_, BenchError>>()?;
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("bench{i}=http://127.0.0.1:{peer}"))
        .collect();
    let mut members = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let data_dir = dir.join(format!("etcd{i}"));
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let command = vec![
            bin.display().to_string(),
            format!("--name=bench{i}"),
            format!("--data-dir={}", data_dir.display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster={}", initial.join(",")),
            "--log-level=error".into(),
            "--quota-backend-bytes=8589934592".into(),
        ];
        members.push(Server::spawn("etcd", command, vec![], format!("127.0.0.1:{client}"), data_dir)?);
    }
    Ok(members)
}

/// A group of `n` netsy members sharing one object store: the first opens the cluster,
/// each next one joins once the previous serves.
async fn start_netsy(bin: &Path, dir: &Path, n: usize) -> Result<Vec<Server>, BenchError> {
    let config = dir.join("netsy.jsonc");
    let text = format!(
        "{{ \"cluster_id\": \"bench\", \"storage\": {{ \"provider\": \"file\", \"path\": \"{}\" }}, \"limits\": {{ \"quota_backend_bytes\": 8589934592 }} }}",
        dir.join("objects").display()
    );
    std::fs::write(&config, text)?;
    let mut members = Vec::new();
    for i in 0..n {
        let (client, peer, health) = (free_port()?, free_port()?, free_port()?);
        let data_dir = dir.join(format!("netsy{i}"));
        let command = vec![
            bin.display().to_string(),
            "serve".into(),
            "--config".into(),
            config.display().to_string(),
        ];
        let envs = [
            ("NETSY_NODE_ID", format!("netsy-{i}")),
            ("NETSY_DATA_DIR", data_dir.display().to_string()),
            ("NETSY_BIND_CLIENT", format!("127.0.0.1:{client}")),
            ("NETSY_BIND_PEER", format!("127.0.0.1:{peer}")),
            ("NETSY_BIND_HEALTH", format!("127.0.0.1:{health}")),
            ("NETSY_ADVERTISE_CLIENT", format!("http://127.0.0.1:{client}")),
            ("NETSY_ADVERTISE_PEER", format!("http://127.0.0.1:{peer}")),
            ("RUST_LOG", "warn".into()),
        ];
        let envs = envs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let member = Server::spawn("netsy", command, envs, format!("127.0.0.1:{client}"), data_dir)?;
        wait_ready(&member).await?;
        members.push(member);
    }
    Ok(members)
}

/// (current RSS, peak RSS) of a process in bytes, from /proc.
pub(crate) fn rss(pid: u32) -> (u64, u64) {
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

/// CPU seconds (user + system) a process has used, from /proc/<pid>/stat (0 if gone).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3; utime and
    // stime are fields 14 and 15, in clock ticks of USER_HZ (100 on Linux).
    let Some(rest) = stat.rfind(')').map(|at| &stat[at + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (tick(11) + tick(12)) as f64 / USER_HZ
}

/// The unit of /proc's CPU times: fixed by the kernel's ABI, whatever its internal HZ.
const USER_HZ: f64 = 100.0;

fn group_cpu_seconds(group: &[Server]) -> f64 {
    group.iter().map(|m| cpu_seconds(m.child.id())).sum()
}

/// fdatasync of 4 KiB appends to one file in `dir`, `samples` times: what one durable
/// write costs on this disk, measured beside the servers' data directories.
fn measure_disk_sync(dir: &Path, samples: usize) -> Result<DiskSync, BenchError> {
    use std::io::Write;
    let path = dir.join("fdatasync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = vec![0x5a_u8; 4096];
    let mut took = Vec::with_capacity(samples);
    for _ in 0..samples {
        file.write_all(&block)?;
        let started = Instant::now();
        file.sync_data()?;
        took.push(started.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    let s = Summary::new("fdatasync 4 KiB", took, 0, Duration::ZERO);
    Ok(DiskSync {
        samples,
        p50_ms: s.p50,
        p99_ms: s.p99,
    })
}

pub(crate) fn disk_usage(path: &Path) -> u64 {
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
    /// What netsy runs instead of `workload`, where the two servers answer the same need
    /// differently (RangeStream against etcd 3.5's unary Range).
    netsy_workload: Option<Workload>,
    targets: Vec<Target>,
}

/// A linearizable get of one (absent) key.
fn range_one_key() -> Workload {
    Workload::Range {
        key: "foo".into(),
        prefix: false,
        linearizable: true,
        limit: 0,
        populate: 0,
        value_size: 0,
        stream: false,
    }
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
            targets: vec![t(Metric::Throughput, 1.5), t(Metric::P99, 1.0), t(Metric::CpuPerRequest, 0.7)],
            netsy_workload: None,
        },
        Case {
            name: "put, 1 client, 256 B",
            clients: 1,
            conns: 1,
            total: n(3_000, 200),
            workload: put(KeyOrder::Random),
            // etcd 3.5.1 as one member replies before its fdatasync returns (etcd issue
            // #14370), so a durable reply is judged against the disk instead.
            targets: vec![t(Metric::P50OverDiskSync, 1.0)],
            netsy_workload: None,
        },
        Case {
            name: "txn-mixed (kube-apiserver shapes), 100 clients",
            clients: 100,
            conns: 10,
            total: n(40_000, 2_000),
            workload: Workload::TxnMixed { value_size: 512 },
            targets: vec![t(Metric::Throughput, 1.5)],
            netsy_workload: None,
        },
        Case {
            name: "range 1 key, linearizable, 100 clients",
            clients: 100,
            conns: 10,
            total: n(120_000, 3_000),
            workload: range_one_key(),
            targets: vec![t(Metric::Throughput, 2.0)],
            netsy_workload: None,
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
                stream: false,
            },
            targets: vec![t(Metric::Throughput, 2.0)],
            netsy_workload: None,
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
            netsy_workload: None,
        },
        Case {
            name: "lease keep-alive, 100 clients",
            clients: 100,
            conns: 10,
            total: n(120_000, 3_000),
            workload: Workload::LeaseKeepalive,
            targets: vec![t(Metric::Throughput, 1.0)],
            netsy_workload: None,
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
                stream: false,
            },
            targets: vec![t(Metric::Throughput, 2.0)],
            netsy_workload: None,
        },
        Case {
            // etcd 3.5 has no RangeStream: the same list, streamed by netsy, unary from
            // etcd; p50 is the time to the last byte, and the peak RSS column shows what
            // each server held meanwhile.
            name: "list 10,000 × 1 KiB: netsy RangeStream vs etcd Range (1 client)",
            clients: 1,
            conns: 1,
            total: n(30, 5),
            workload: list_workload(false, n(10_000, 500)),
            targets: vec![],
            netsy_workload: Some(list_workload(true, n(10_000, 500))),
        },
    ]
}

/// The list of 10,000 × 1 KiB (`stream`: as a RangeStream).
fn list_workload(stream: bool, populate: usize) -> Workload {
    Workload::Range {
        key: "/list/".into(),
        prefix: true,
        linearizable: true,
        limit: 0,
        populate,
        value_size: 1024,
        stream,
    }
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
        server_cpu_us: avg(a.server_cpu_us, b.server_cpu_us),
        server_peak_rss_bytes: a.server_peak_rss_bytes.max(b.server_peak_rss_bytes),
    }
}

/// Runs `case` (as `workload`) against a group; the connections are spread over its
/// members. The RSS of the members is sampled meanwhile (the largest is kept).
async fn run_on(group: &[Server], case: &Case, workload: &Workload) -> Result<Summary, BenchError> {
    let opts = Options {
        endpoints: group.iter().map(|m| m.endpoint.clone()).collect(),
        clients: case.clients,
        conns: case.conns,
        total: case.total,
    };
    let cpu_before = group_cpu_seconds(group);
    let pids: Vec<u32> = group.iter().map(|m| m.child.id()).collect();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                for &pid in &pids {
                    peak.fetch_max(rss(pid).0, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let result = run(&opts, workload).await;
    sampler.abort();
    let mut s = result?;
    s.server_peak_rss_bytes = peak.load(std::sync::atomic::Ordering::Relaxed);
    let cpu = group_cpu_seconds(group) - cpu_before;
    if s.requests > 0 {
        s.server_cpu_us = cpu * 1e6 / s.requests as f64;
    }
    tracing::info!(
        server = group[0].name,
        members = group.len(),
        case = case.name,
        "{}",
        s.text().replace('\n', "; ")
    );
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
        netsy_workload: None,
    };
    // `run_on` samples the RSS while the workload (and so its watchers) is running.
    let summary = run_on(std::slice::from_ref(server), &case, &case.workload).await?;
    Ok(summary.server_peak_rss_bytes)
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
    let load_seconds = started.elapsed().as_secs_f64();
    let disk_bytes = settled_disk_usage(&server.data_dir).await;
    let (rss_bytes, peak_rss_bytes) = rss(server.child.id());
    Ok(Footprint {
        keys,
        load_seconds,
        rss_bytes,
        peak_rss_bytes,
        disk_bytes,
    })
}

/// The data directory's size once it stops changing: both servers keep working after the
/// last write (snapshots, compaction of their logs), and a size taken in the middle of a
/// snapshot build counts the new copy beside the old one. Waits until two readings a
/// second apart differ by less than 1% (at most 60 s).
async fn settled_disk_usage(dir: &Path) -> u64 {
    let mut last = disk_usage(dir);
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = disk_usage(dir);
        let changed = now.abs_diff(last) as f64 / last.max(1) as f64;
        last = now;
        if changed < 0.01 {
            break;
        }
    }
    last
}

/// Runs every case against both groups, alternating who goes first between rounds.
async fn compare(etcd: &[Server], netsy: &[Server], cases: Vec<Case>, rounds: usize) -> Result<Vec<Comparison>, BenchError> {
    let mut comparisons = Vec::new();
    for case in cases {
        let mut etcd_runs = Vec::new();
        let mut netsy_runs = Vec::new();
        for round in 0..rounds.max(1) {
            let netsy_workload = case.netsy_workload.as_ref().unwrap_or(&case.workload);
            if round % 2 == 0 {
                etcd_runs.push(run_on(etcd, &case, &case.workload).await?);
                netsy_runs.push(run_on(netsy, &case, netsy_workload).await?);
            } else {
                netsy_runs.push(run_on(netsy, &case, netsy_workload).await?);
                etcd_runs.push(run_on(etcd, &case, &case.workload).await?);
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
    Ok(comparisons)
}

/// The index of the member that leads, by asking each member's Status.
async fn find_leader(group: &[Server]) -> Result<usize, BenchError> {
    use netsy::proto::etcdserverpb::maintenance_client::MaintenanceClient;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ids = Vec::new();
        let mut leader = 0;
        for m in group {
            let status = match super::connect(&Options::one(&m.endpoint)).await {
                Ok(ch) => MaintenanceClient::new(ch[0].clone())
                    .status(netsy::proto::etcdserverpb::StatusRequest {})
                    .await
                    .ok()
                    .map(|r| r.into_inner()),
                Err(_) => None,
            };
            let (id, l) = status.map_or((0, 0), |s| (s.header.map_or(0, |h| h.member_id), s.leader));
            ids.push(id);
            leader = leader.max(l);
        }
        if let Some(i) = ids.iter().position(|id| *id != 0 && *id == leader) {
            return Ok(i);
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!("{}: no leader", group[0].name)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Failover, `rounds` times: kill -9 the leader, then put through the other members
/// (each attempt with a short timeout, round robin) until one succeeds; seconds from the
/// kill to that success. The killed member restarts with its disk before the next round.
async fn failover(group: &mut [Server], rounds: usize) -> Result<Vec<f64>, BenchError> {
    let mut times = Vec::new();
    for _ in 0..rounds.max(1) {
        let leader = find_leader(group).await?;
        let others: Vec<String> = (0..group.len())
            .filter(|i| *i != leader)
            .map(|i| group[i].endpoint.clone())
            .collect();
        let killed = Instant::now();
        group[leader].kill();
        let mut attempt = 0;
        while request_once(&others[attempt % others.len()], Duration::from_millis(500), false)
            .await
            .is_err()
        {
            attempt += 1;
            if killed.elapsed() > Duration::from_secs(60) {
                return Err(BenchError::Setup(format!(
                    "{}: no write succeeded within 60 s of the leader kill",
                    group[0].name
                )));
            }
        }
        let took = killed.elapsed().as_secs_f64();
        tracing::info!(server = group[0].name, seconds = took, "failover");
        times.push(took);
        group[leader].restart()?;
        wait_ready(&group[leader]).await?;
    }
    Ok(times)
}

/// Workloads on 3-member clusters (connections spread over the members, so followers
/// forward, as kube-apiservers spread over members do).
fn cluster_cases(quick: bool) -> Vec<Case> {
    let n = |full: usize, small: usize| if quick { small } else { full };
    let t = |metric, ratio| Target { metric, ratio };
    let put = Workload::Put {
        key_size: 8,
        value_size: 256,
        key_space: 100_000,
        order: KeyOrder::Random,
    };
    vec![
        Case {
            name: "3 members: put, 100 clients / 10 conns, 256 B",
            clients: 100,
            conns: 10,
            total: n(60_000, 2_000),
            workload: put.clone(),
            targets: vec![t(Metric::Throughput, 1.5)],
            netsy_workload: None,
        },
        Case {
            name: "3 members: put, 1 client, 256 B",
            clients: 1,
            conns: 1,
            total: n(3_000, 200),
            workload: put,
            targets: vec![t(Metric::P50, 1.0)],
            netsy_workload: None,
        },
        Case {
            name: "3 members: range 1 key, linearizable, 100 clients",
            clients: 100,
            conns: 10,
            total: n(60_000, 2_000),
            workload: range_one_key(),
            targets: vec![],
            netsy_workload: None,
        },
    ]
}

pub async fn run_suite(opts: &SuiteOptions) -> Result<Results, BenchError> {
    let work = std::env::temp_dir().join(format!("netsy-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let (single, three) = (work.join("single"), work.join("three"));
    std::fs::create_dir_all(&single)?;
    std::fs::create_dir_all(&three)?;
    let disk_sync = measure_disk_sync(&single, if opts.quick { 200 } else { 2_000 })?;
    tracing::info!(p50_ms = disk_sync.p50_ms, p99_ms = disk_sync.p99_ms, "fdatasync of 4 KiB appends");
    let etcd_group = start_etcd(&opts.etcd_bin, &single, 1)?;
    wait_ready(&etcd_group[0]).await?;
    let netsy_group = start_netsy(&opts.netsy_bin, &single, 1).await?;
    let (etcd, netsy) = (&etcd_group[0], &netsy_group[0]);
    tracing::info!(etcd = %etcd.endpoint, netsy = %netsy.endpoint, "servers ready");
    let comparisons = compare(&etcd_group, &netsy_group, cases(opts.quick), opts.rounds).await?;

    let (per_stream, streams) = if opts.quick { (10, 10) } else { (100, 100) };
    let watchers_rss = (
        watchers_rss(etcd, streams, per_stream).await?,
        watchers_rss(netsy, streams, per_stream).await?,
    );
    let etcd_footprint = load_keys(etcd, opts.load_keys).await?;
    let netsy_footprint = load_keys(netsy, opts.load_keys).await?;
    drop(etcd_group);
    drop(netsy_group);

    let mut etcd3 = start_etcd(&opts.etcd_bin, &three, 3)?;
    for m in &etcd3 {
        wait_ready(m).await?;
    }
    let mut netsy3 = start_netsy(&opts.netsy_bin, &three, 3).await?;
    tracing::info!("3-member clusters ready");
    let cluster = compare(&etcd3, &netsy3, cluster_cases(opts.quick), opts.rounds).await?;
    let failover_rounds = if opts.quick { 1 } else { 3 };
    let failover_seconds = (
        failover(&mut etcd3, failover_rounds).await?,
        failover(&mut netsy3, failover_rounds).await?,
    );
    drop(etcd3);
    drop(netsy3);
    // moto's S3 server sits beside etcd in the venv `make bench` uses.
    let moto = opts.etcd_bin.with_file_name("moto_server");
    let durability_cost = if moto.exists() {
        Some(super::s3cost::durability_cost(&moto, &opts.netsy_bin, &work, if opts.quick { 2_000 } else { 20_000 }).await?)
    } else {
        tracing::warn!(path = %moto.display(), "no moto_server beside etcd: the object-storage durability rows are skipped");
        None
    };
    let _ = std::fs::remove_dir_all(&work);

    let results = Results {
        quick: opts.quick,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        disk_sync,
        comparisons,
        etcd_footprint,
        netsy_footprint,
        watchers_rss,
        cluster,
        failover_seconds,
        durability_cost,
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
