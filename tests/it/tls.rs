//! mTLS, black-box: the real netsy binary with certificates as the cert-manager CSI
//! driver mounts them, real etcdctl 3.5.1 and a TLS 1.3 gRPC client.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common;
use crate::common::{etcdctl, wait_until, Netsy};
use netsy::proto::etcdserverpb::kv_client::KvClient;
use netsy::proto::etcdserverpb::{PutRequest, RangeRequest};
use netsy::proto::peer::peer_client::PeerClient;
use netsy::proto::peer::HelloRequest;
use netsy::tls::dev::{Ca, LeafSpec};
use netsy::tls::Role;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const CLUSTER: &str = "test";
const NODE: &str = "netsy-0";

/// A certificate and its key, as files.
type CertFiles = (PathBuf, PathBuf);

/// A CA and the files issued from it, in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().expect("tempdir"),
            ca: Ca::new("test-ca").expect("ca"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues `spec` as `<stem>.crt` / `<stem>.key`.
    fn issue(&self, stem: &str, spec: &LeafSpec) -> CertFiles {
        self.issue_by(&self.ca, stem, spec)
    }

    fn issue_by(&self, ca: &Ca, stem: &str, spec: &LeafSpec) -> CertFiles {
        let leaf = ca.issue(spec).expect("issue");
        let (crt, key) = (self.path(&format!("{stem}.crt")), self.path(&format!("{stem}.key")));
        std::fs::write(&crt, leaf.cert_pem).expect("write crt");
        std::fs::write(&key, leaf.key_pem).expect("write key");
        (crt, key)
    }

    fn client(&self, name: &str) -> CertFiles {
        self.issue(name, &LeafSpec::identity(CLUSTER, Role::Client, name, false, 1))
    }

    /// `ca.crt` plus a server and a peer certificate for `node`; the `NETSY_TLS_*` env.
    fn node_env(&self, node: &str) -> Vec<(&'static str, String)> {
        let ca = self.path("ca.crt");
        std::fs::write(&ca, self.ca.cert_pem()).expect("write ca");
        let (scrt, skey) = self.issue(&format!("{node}-server"), &LeafSpec::identity(CLUSTER, Role::Peer, node, true, 1));
        let (pcrt, pkey) = self.issue(&format!("{node}-peer"), &LeafSpec::identity(CLUSTER, Role::Peer, node, false, 1));
        let s = |p: &Path| p.display().to_string();
        vec![
            ("NETSY_NODE_ID", node.to_string()),
            ("NETSY_TLS_CA_CERT", s(&ca)),
            ("NETSY_TLS_SERVER_CERT", s(&scrt)),
            ("NETSY_TLS_SERVER_KEY", s(&skey)),
            ("NETSY_TLS_CLIENT_CERT", s(&pcrt)),
            ("NETSY_TLS_CLIENT_KEY", s(&pkey)),
        ]
    }
}

fn env_of<'a>(env: &'a [(&str, String)], key: &str) -> &'a str {
    env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str()).expect("env var")
}

/// A TLS node; `extra` goes into the cluster file.
fn start_tls(pki: &Pki, extra: &str) -> Netsy {
    let mut env = pki.node_env(NODE);
    env.push(("NETSY_ADVERTISE_CLIENT", "https://127.0.0.1:2378".into()));
    let mut n = Netsy::new(extra, &env);
    n.spawn();
    n
}

/// etcdctl over TLS with `cert`/`key` (none: no client certificate).
fn etcdctl_tls(n: &Netsy, pki: &Pki, cert: Option<&CertFiles>, args: &[&str]) -> (bool, String, String) {
    let mut all = vec![
        format!("--cacert={}", pki.path("ca.crt").display()),
        "--dial-timeout=3s".to_string(),
        "--command-timeout=3s".to_string(),
    ];
    if let Some((crt, key)) = cert {
        all.push(format!("--cert={}", crt.display()));
        all.push(format!("--key={}", key.display()));
    }
    all.extend(args.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    etcdctl(&format!("https://127.0.0.1:{}", n.client_port), &refs)
}

fn handshake_failures(n: &Netsy, listener: &str, reason: &str) -> f64 {
    n.metric(&format!(
        "netsy_tls_handshake_failures_total{{listener=\"{listener}\",reason=\"{reason}\"}}"
    ))
}

fn client_config(ca_pem: &[u8], cert: &Path, key: &Path) -> Arc<rustls::ClientConfig> {
    let provider = netsy::tls::provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.expect("ca pem")).expect("add ca");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("cert")
        .collect::<Result<_, _>>()
        .expect("cert pem");
    let key = PrivateKeyDer::from_pem_file(key).expect("key pem");
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A TLS 1.3 gRPC channel to `port` presenting `cert`; the server certificate must
/// name 127.0.0.1.
async fn channel(port: u16, ca_pem: Vec<u8>, cert: &CertFiles) -> Result<tonic::transport::Channel, String> {
    let tls = tokio_rustls::TlsConnector::from(client_config(&ca_pem, &cert.0, &cert.1));
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let tls = tls.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let name = rustls::pki_types::ServerName::from(std::net::IpAddr::from([127, 0, 0, 1]));
            let stream = tls.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("{e:?}"))
}

async fn put(kv: &mut KvClient<tonic::transport::Channel>, key: &str, value: &str) -> Result<(), tonic::Status> {
    kv.put(PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    })
    .await
    .map(|_| ())
}

#[test]
fn etcdctl_with_a_client_certificate_is_served_and_every_wrong_identity_is_refused() {
    let pki = Pki::new();
    // etcdctl 3.5.1 offers only TLS 1.2 (etcd's client capped it before 3.5.8).
    let n = start_tls(&pki, r#""tls": { "min_version": "1.2" },"#);
    let good = pki.client("etcdctl");
    let (ok, out, err) = etcdctl_tls(&n, &pki, Some(&good), &["put", "k", "v"]);
    assert!(ok, "{out} {err}");
    let (ok, out, _) = etcdctl_tls(&n, &pki, Some(&good), &["get", "k", "--print-value-only"]);
    assert!(ok && out.trim() == "v", "{out}");

    let peer_role = pki.issue("peer-on-client-port", &LeafSpec::identity(CLUSTER, Role::Peer, "netsy-1", false, 1));
    let other_cluster = pki.issue("other-cluster", &LeafSpec::identity("other", Role::Client, "etcdctl", false, 1));
    let mut expired_spec = LeafSpec::identity(CLUSTER, Role::Client, "etcdctl", false, 1);
    expired_spec.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    expired_spec.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let expired = pki.issue("expired", &expired_spec);
    let rogue_ca = Ca::new("rogue-ca").expect("ca");
    let untrusted = pki.issue_by(
        &rogue_ca,
        "untrusted",
        &LeafSpec::identity(CLUSTER, Role::Client, "etcdctl", false, 1),
    );
    let mut no_uri_spec = LeafSpec::identity(CLUSTER, Role::Client, "etcdctl", false, 1);
    no_uri_spec.uri = Some("spiffe://test/client/etcdctl".into());
    let no_identity = pki.issue("no-identity", &no_uri_spec);

    let cases: Vec<(&str, Option<&CertFiles>, &str)> = vec![
        ("peer-role certificate", Some(&peer_role), "wrong_role"),
        ("another cluster's certificate", Some(&other_cluster), "wrong_cluster"),
        ("expired certificate", Some(&expired), "expired"),
        ("certificate of another CA", Some(&untrusted), "unknown_ca"),
        ("certificate without a netsy identity", Some(&no_identity), "no_identity"),
        ("no certificate", None, "no_certificate"),
    ];
    std::thread::scope(|s| {
        for (what, cert, _) in &cases {
            let (n, pki) = (&n, &pki);
            s.spawn(move || {
                let key = format!("written-with-{}", what.replace(' ', "-"));
                let (ok, out, err) = etcdctl_tls(n, pki, *cert, &["put", &key, "x"]);
                assert!(!ok, "{what}: etcdctl succeeded: {out}");
                assert!(
                    err.contains("tls") || err.contains("deadline") || err.contains("connection"),
                    "{what}: {err}"
                );
            });
        }
    });
    for (what, _, reason) in &cases {
        assert!(
            handshake_failures(&n, "client", reason) >= 1.0,
            "{what}: no {reason} refusal counted"
        );
    }
    let log = n.log();
    for (_, _, reason) in &cases {
        assert!(log.contains(&format!("reason=\"{reason}\"")), "log lacks {reason}: {log}");
    }
    assert!(
        log.contains("has role \"peer\"; the client port accepts only \"client\" certificates"),
        "{log}"
    );
    // Nothing was served: none of the refused writes exists.
    let (ok, out, _) = etcdctl_tls(&n, &pki, Some(&good), &["get", "written-with", "--prefix", "--keys-only"]);
    assert!(ok && out.trim().is_empty(), "{out}");
    // Plaintext on the TLS port is refused too.
    let (ok, _, _) = etcdctl(
        &format!("http://127.0.0.1:{}", n.client_port),
        &["--dial-timeout=2s", "--command-timeout=2s", "get", "k"],
    );
    assert!(!ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_by_default_refuses_tls12_clients_with_a_clear_reason() {
    let pki = Pki::new();
    let n = start_tls(&pki, "");
    let good = pki.client("kube-apiserver");
    let (ok, _, _) = etcdctl_tls(&n, &pki, Some(&good), &["get", "k"]);
    assert!(!ok, "etcdctl 3.5.1 offers only TLS 1.2");
    assert!(handshake_failures(&n, "client", "protocol_version") >= 1.0);
    assert!(n.log().contains("set tls.min_version to \"1.2\""), "{}", n.log());
    // A TLS 1.3 client with the same certificate is served.
    let ch = channel(n.client_port, pki.ca.cert_pem().as_bytes().to_vec(), &good)
        .await
        .expect("connect");
    let mut kv = KvClient::new(ch);
    put(&mut kv, "k", "v").await.expect("put over TLS 1.3");
    let got = kv
        .range(RangeRequest {
            key: "k".into(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(got.kvs[0].value, b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_port_admits_only_peers_and_outbound_connections_pin_the_expected_node() {
    let pki = Pki::new();
    let n = start_tls(&pki, "");
    // Another node of the cluster, as an outbound caller.
    let env = pki.node_env("netsy-1");
    let files = netsy::config::TlsFiles {
        ca_cert: env_of(&env, "NETSY_TLS_CA_CERT").into(),
        server_cert: env_of(&env, "NETSY_TLS_SERVER_CERT").into(),
        server_key: env_of(&env, "NETSY_TLS_SERVER_KEY").into(),
        client_cert: env_of(&env, "NETSY_TLS_CLIENT_CERT").into(),
        client_key: env_of(&env, "NETSY_TLS_CLIENT_KEY").into(),
    };
    let policy = netsy::config::TlsPolicy {
        allow_tls12: false,
        health: false,
        reload_interval: Duration::from_secs(5),
    };
    let tls = netsy::tls::Tls::load(&files, &policy, CLUSTER, "netsy-1", vec!["127.0.0.1".into()]).expect("load netsy-1 TLS");
    let addr = format!("https://127.0.0.1:{}", n.peer_port);
    let ch = netsy::tls::connect::Dialer {
        tls: Some(tls.clone()),
        source: None,
    }
    .channel(&addr, NODE, Duration::from_secs(5))
    .await
    .expect("connect to netsy-0");
    let hello = PeerClient::new(ch.clone())
        .hello(HelloRequest {})
        .await
        .expect("hello")
        .into_inner();
    assert_eq!(hello.node_id, NODE);
    assert_eq!(hello.cluster_id, CLUSTER);
    assert_eq!(
        hello.caller, "netsy://test/peer/netsy-1",
        "the handler sees the authenticated identity"
    );

    // netsy-1's certificate cannot send Raft messages in netsy-0's name: a vote request
    // claiming to come from netsy-0's Raft id is refused, and the leader keeps its term.
    let forged = openraft::raft::VoteRequest::new(openraft::Vote::new(1_000, hello.raft_id), None);
    let refused = PeerClient::new(ch.clone())
        .vote(netsy::raft::codec::vote_request_to_wire(hello.raft_id, &forged))
        .await
        .expect_err("a forged vote must be refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("cannot send Raft messages as node"), "{refused:?}");
    assert_eq!(n.metric("etcd_server_is_leader"), 1.0);
    assert!(n.log().contains("refused a Raft RPC sent in another member's name"));

    // Dialling netsy-0 while expecting netsy-2 fails: the server is not the node meant.
    let wrong = netsy::tls::connect::Dialer {
        tls: Some(tls.clone()),
        source: None,
    }
    .channel(&addr, "netsy-2", Duration::from_secs(5))
    .await;
    let err = format!("{:?}", wrong.expect_err("must not accept netsy-0 as netsy-2"));
    assert!(err.contains("UnexpectedPeer") && err.contains("expected: \"netsy-2\""), "{err}");

    // A client-role certificate on the peer port is refused.
    let client = pki.client("kube-apiserver");
    let refused = async {
        let ch = channel(n.peer_port, pki.ca.cert_pem().as_bytes().to_vec(), &client).await?;
        PeerClient::new(ch).hello(HelloRequest {}).await.map_err(|e| e.to_string())
    }
    .await;
    assert!(refused.is_err(), "a client certificate reached the peer service");
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(10), "peer-port refusal counted", || {
            handshake_failures(&n, "peer", "wrong_role") >= 1.0
        })
    });
}

#[test]
fn startup_self_check_names_the_problem() {
    let pki = Pki::new();
    let fails = |env: Vec<(&'static str, String)>, expect: &[&str]| {
        let mut n = Netsy::new("", &env);
        let log = n.try_spawn().expect_err("netsy must refuse to start");
        for e in expect {
            assert!(log.contains(e), "expected {e:?} in: {log}");
        }
        // `--validate` finds the same problem.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_netsy"))
            .arg("--validate")
            .arg(n.config_path())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("run --validate");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect[0]), "{stderr}");
    };
    // The certificates belong to another node.
    let mut env = pki.node_env("netsy-1");
    env.retain(|(k, _)| *k != "NETSY_NODE_ID");
    env.push(("NETSY_NODE_ID", NODE.into()));
    fails(
        env,
        &[
            "NETSY_TLS_SERVER_CERT",
            "netsy://test/peer/netsy-1",
            "needs netsy://test/peer/netsy-0",
        ],
    );
    // The server certificate does not cover the advertised host.
    let mut env = pki.node_env(NODE);
    env.push((
        "NETSY_ADVERTISE_PEER",
        "https://netsy-0.netsy.default.svc.cluster.local:2381".into(),
    ));
    fails(
        env,
        &["does not cover the advertised host \"netsy-0.netsy.default.svc.cluster.local\""],
    );
    // A key that belongs to another certificate.
    let mut env = pki.node_env(NODE);
    let other_key = env_of(&env, "NETSY_TLS_CLIENT_KEY").to_string();
    env.retain(|(k, _)| *k != "NETSY_TLS_SERVER_KEY");
    env.push(("NETSY_TLS_SERVER_KEY", other_key));
    fails(env, &["NETSY_TLS_SERVER_KEY", "does not belong to the certificate"]);
    // Only some of the variables.
    let mut env = pki.node_env(NODE);
    env.retain(|(k, _)| *k != "NETSY_TLS_CLIENT_KEY");
    fails(env, &["NETSY_TLS_CLIENT_KEY", "is not set"]);
    // A CN that differs from the node id.
    let mut env = pki.node_env(NODE);
    let mut spec = LeafSpec::identity(CLUSTER, Role::Peer, NODE, true, 1);
    spec.common_name = "someone-else".into();
    let (crt, key) = pki.issue("bad-cn", &spec);
    env.retain(|(k, _)| !k.starts_with("NETSY_TLS_SERVER"));
    env.push(("NETSY_TLS_SERVER_CERT", crt.display().to_string()));
    env.push(("NETSY_TLS_SERVER_KEY", key.display().to_string()));
    fails(env, &["common name \"someone-else\""]);
}

/// cert-manager's CSI driver rewrites the files in place before they expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_keeps_connections_and_new_connections_use_the_new_files() {
    let pki = Pki::new();
    let n = start_tls(&pki, r#""tls": { "reload_interval": "200ms" },"#);
    let ca_a = pki.ca.cert_pem().to_string();
    let client_a = pki.client("load");

    // Load on one long-lived connection, through everything below.
    let ch = channel(n.client_port, ca_a.clone().into_bytes(), &client_a).await.expect("connect");
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        tokio::spawn(async move {
            let mut kv = KvClient::new(ch);
            let mut i = 0u64;
            while !stop.is_cancelled() {
                match put(&mut kv, &format!("load/{}", i % 100), "v").await {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failed.lock().expect("lock").push(e.to_string());
                        0
                    }
                };
                i += 1;
            }
        })
    };
    let progressed = |at_least: u64| {
        let ok = ok.clone();
        tokio::task::spawn_blocking(move || {
            wait_until(Duration::from_secs(20), "puts on the long-lived connection", || {
                ok.load(Ordering::Relaxed) >= at_least
            })
        })
    };
    progressed(50).await.expect("load running");

    // A new CA B: its clients are not trusted yet.
    let ca_b = Ca::new("test-ca-b").expect("ca b");
    let client_b = pki.issue_by(&ca_b, "client-b", &LeafSpec::identity(CLUSTER, Role::Client, "new", false, 1));
    let both = format!("{ca_a}{}", ca_b.cert_pem());
    let put_as = |ca_pem: String, cert: CertFiles| async move {
        let ch = channel(n.client_port, ca_pem.into_bytes(), &cert).await?;
        put(&mut KvClient::new(ch), "from-b", "1").await.map_err(|e| e.to_string())
    };
    let early = put_as(both.clone(), client_b.clone()).await;
    assert!(early.is_err(), "a CA B client was admitted before the CA bundle changed");
    let before = n.metric("netsy_tls_certificate_not_after_seconds{certificate=\"server\"}");

    // A half-written rotation (new certificate, old key) is rejected and changes nothing.
    let (ca_file, server_cert, server_key) = (
        pki.path("ca.crt"),
        pki.path(&format!("{NODE}-server.crt")),
        pki.path(&format!("{NODE}-server.key")),
    );
    let new_server = ca_b
        .issue(&LeafSpec::identity(CLUSTER, Role::Peer, NODE, true, 2))
        .expect("new server cert");
    std::fs::write(&server_cert, &new_server.cert_pem).expect("write");
    let errors = || n.metric("netsy_tls_reloads_total{result=\"error\"}") >= 1.0;
    tokio::task::block_in_place(|| wait_until(Duration::from_secs(10), "the half-written set to be rejected", errors));
    let still = channel(n.client_port, ca_a.clone().into_bytes(), &client_a).await;
    assert!(still.is_ok(), "the previous configuration must stay in use: {still:?}");

    // Complete the rotation: server key, and a CA bundle trusting both CAs.
    std::fs::write(&server_key, &new_server.key_pem).expect("write");
    std::fs::write(&ca_file, &both).expect("write");
    let reloaded = || n.metric("netsy_tls_reloads_total{result=\"ok\"}") >= 1.0;
    tokio::task::block_in_place(|| wait_until(Duration::from_secs(10), "the reload", reloaded));
    assert!(n.metric("netsy_tls_certificate_not_after_seconds{certificate=\"server\"}") > before);

    // New connections: CA B clients are admitted, and the server presents the new
    // certificate (a client trusting only CA B can verify it).
    put_as(ca_b.cert_pem().to_string(), client_b.clone())
        .await
        .expect("a CA B client, trusting only CA B, after the rotation");

    // The long-lived connection never noticed.
    let now = ok.load(Ordering::Relaxed);
    progressed(now + 50).await.expect("load continues after the rotation");
    stop.cancel();
    load.await.expect("load task");
    let failed = failed.lock().expect("lock");
    assert!(failed.is_empty(), "puts failed during rotation: {failed:?}");
}

#[test]
fn health_port_is_plaintext_by_default_and_tls_when_asked() {
    let pki = Pki::new();
    let plain = start_tls(&pki, "");
    assert_eq!(plain.http_get("/livez").0, 200);
    drop(plain);

    let n = start_tls(&pki, r#""tls": { "health": true },"#);
    // Plain HTTP gets no HTTP answer: the TLS listener drops the connection (it may close
    // before the request is even written, or answer with a TLS alert).
    let plain = common::try_http_get(n.health_port, "/livez");
    assert!(plain.is_err(), "plain HTTP on the TLS health port was answered: {plain:?}");
    // HTTPS without a client certificate (as kubelet probes do) is served.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let body = rt.block_on(async {
        let provider = netsy::tls::provider();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca.cert_pem().as_bytes()).expect("ca"))
            .expect("root");
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", n.health_port)).await.expect("tcp");
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("127.0.0.1".try_into().expect("name"), tcp)
            .await
            .expect("TLS handshake on the health port");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(b"GET /livez HTTP/1.0\r\nHost: x\r\n\r\n").await.expect("write");
        let mut out = String::new();
        let _ = tls.read_to_string(&mut out).await;
        out
    });
    assert!(body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"), "{body}");
}

/// Three members over mutual TLS, as the Helm chart deploys them: Raft, forwarding and
/// joins all pass the peer-certificate checks (including "a Raft message comes from the
/// member its certificate names"), and a leader change works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_replicate_and_fail_over_over_mutual_tls() {
    let pki = Pki::new();
    let (crt, key) = pki.client("kube-apiserver");
    let flags = vec![
        format!("--cacert={}", pki.path("ca.crt").display()),
        format!("--cert={}", crt.display()),
        format!("--key={}", key.display()),
    ];
    let envs: Vec<_> = (0..3).map(|i| pki.node_env(&format!("netsy-{i}"))).collect();
    let mut c = tokio::task::block_in_place(|| {
        common::Cluster::start_with_env(3, r#""tls": { "min_version": "1.2" },"#, |i| envs[i].clone(), &flags)
    });
    let leader = c.wait_leader();
    let follower = (leader + 1) % 3;
    let (ok, _, err) = c.nodes[follower].etcdctl(&["put", "through-a-follower", "v1"]);
    assert!(ok, "{err}\n{}", c.logs());
    for n in &c.nodes {
        let (ok, out, err) = n.etcdctl(&["get", "through-a-follower", "--print-value-only"]);
        assert!(ok && out.trim() == "v1", "{out} {err}");
    }
    c.nodes[leader].kill9();
    let survivor = (leader + 2) % 3;
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(20), "a write after the leader's death", || {
            c.nodes[survivor].etcdctl(&["put", "after-failover", "v2"]).0
        })
    });
    let (ok, out, _) = c.nodes[follower].etcdctl(&["get", "after-failover", "--print-value-only"]);
    assert!(ok && out.trim() == "v2", "{out}");
    let logs = c.logs();
    assert!(!logs.contains("refused a Raft RPC"), "{logs}");
    // (The harness's port checks show up as "eof" refusals on the client port.)
    assert!(!logs.contains(r#"TLS handshake refused listener="peer""#), "{logs}");
}

/// One HTTP/1.1 GET over TLS 1.3 to the client port, presenting `cert` (if any): the
/// status and body, or the TLS error that ended it.
fn https_get(port: u16, ca_pem: &[u8], cert: Option<&CertFiles>, path: &str) -> Result<(u16, String), String> {
    let provider = netsy::tls::provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.expect("ca pem")).expect("add ca");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots);
    let config = match cert {
        Some((crt, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(crt)
                .expect("cert")
                .collect::<Result<_, _>>()
                .expect("cert pem");
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).expect("key pem"))
                .expect("client cert")
        }
        None => builder.with_no_client_auth(),
    };
    let name = rustls::pki_types::ServerName::from(std::net::IpAddr::from([127, 0, 0, 1]));
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    use std::io::{Read, Write};
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // A server that closes without close_notify after answering: keep the answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    let (status, _, body) = crate::client_http::parse(&String::from_utf8_lossy(&raw));
    Ok((status, body))
}

#[test]
fn etcds_http_endpoints_on_the_client_port_take_the_ports_tls() {
    let pki = Pki::new();
    let n = start_tls(&pki, "");
    let ca = pki.ca.cert_pem().as_bytes().to_vec();
    let good = pki.client("kube-apiserver");
    assert_eq!(
        https_get(n.client_port, &ca, Some(&good), "/health"),
        Ok((200, r#"{"health":"true","reason":""}"#.to_string()))
    );
    assert_eq!(
        https_get(n.client_port, &ca, Some(&good), "/livez?verbose"),
        Ok((200, "[+]serializable_read ok\nok\n".to_string()))
    );
    // No client certificate: the handshake is refused, as for gRPC.
    let refused = https_get(n.client_port, &ca, None, "/health");
    assert!(refused.is_err(), "{refused:?}");
    // Plain HTTP to the TLS port gets no HTTP answer.
    assert!(common::try_http_get(n.client_port, "/health").is_err());
}
