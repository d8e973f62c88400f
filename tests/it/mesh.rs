//! The mesh authority, black-box: the real Genesis Mesh 1.8.1 CLI and node (Python 3.12,
//! `make test` installs them into .venv-mesh) against netsy's NA on port 8443, raw HTTP
//! checks of the refusals, and pods of one cluster racing for one invite and one nonce.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common;
use crate::common::{free_port, wait_until, Cluster, Netsy};
use netsy::mesh::{auth, keys, tools};
use serde_json::{json, Value};

fn gm_bin(name: &str) -> PathBuf {
    let dir = std::env::var("NETSY_MESH_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv-mesh/bin")));
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} not found; run the tests with `make test` (it installs genesis-mesh 1.8.1)",
        bin.display()
    );
    bin
}

/// A working directory that is also `HOME` for the Python tools (their audit logs and
/// config discovery stay inside it).
struct Workdir(tempfile::TempDir);

impl Workdir {
    fn new() -> Workdir {
        Workdir(tempfile::tempdir().expect("tempdir"))
    }

    fn path(&self, p: &str) -> PathBuf {
        self.0.path().join(p)
    }

    /// Runs a genesis-mesh tool here: (exit code, stdout, stderr).
    fn run(&self, tool: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(gm_bin(tool))
            .args(args)
            .current_dir(self.0.path())
            .env("HOME", self.0.path())
            .env_remove("GENESIS_MESH_CONFIG")
            .output()
            .expect("run genesis-mesh");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn gm(&self, args: &[&str]) -> (i32, String, String) {
        self.run("genesis-mesh", args)
    }

    /// Runs `netsy mesh ...` here.
    fn netsy(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_netsy"))
            .arg("mesh")
            .args(args)
            .current_dir(self.0.path())
            .output()
            .expect("run netsy mesh");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn public_key_of(file: &Path) -> String {
    keys::b64(keys::read_public(file).expect("public key").as_bytes())
}

/// The NA variables for a network made by `genesis-mesh init --home op` in `w`.
fn na_env(w: &Workdir, home: &str, port: u16, extra_operators: &[(&str, &str, &str)]) -> Vec<(&'static str, String)> {
    let mut keys_json = json!({"operator-local": public_key_of(&w.path(&format!("{home}/keys/operator.pub")))});
    let mut tiers = json!({"operator-local": "privileged"});
    for (id, public, tier) in extra_operators {
        keys_json[*id] = json!(public);
        tiers[*id] = json!(tier);
    }
    vec![
        ("GENESIS_FILE", w.path(&format!("{home}/genesis.signed.json")).display().to_string()),
        ("NA_PRIVATE_KEY_FILE", w.path(&format!("{home}/keys/na.key")).display().to_string()),
        ("NA_KEY_ID", "na-local".into()),
        ("OPERATOR_PUBLIC_KEYS_JSON", keys_json.to_string()),
        ("OPERATOR_KEY_TIERS_JSON", tiers.to_string()),
        ("NETSY_BIND_MESH", format!("127.0.0.1:{port}")),
    ]
}

/// The NA public key of the network in `home` (the admin signatures' audience).
fn audience(w: &Workdir, home: &str) -> String {
    let genesis = netsy::mesh::models::Genesis::load(&w.path(&format!("{home}/genesis.signed.json"))).expect("genesis");
    keys::b64(genesis.na_key.as_bytes())
}

fn na_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

fn wait_na(port: u16) {
    wait_until(Duration::from_secs(30), "the mesh authority", || {
        tools::request(&na_url(port), "GET", "/healthz", &[], None).is_ok_and(|(s, _)| s == 200)
    });
}

/// One netsy node serving the NA of the network `genesis-mesh init` made in `w/op`.
fn start_na(w: &Workdir, extra_operators: &[(&str, &str, &str)]) -> (Netsy, u16) {
    assert_eq!(
        w.gm(&["init", "--home", "op", "--network-name", "T", "--na-endpoint", "http://127.0.0.1:1"])
            .0,
        0
    );
    let port = free_port();
    let mut n = Netsy::new("", &na_env(w, "op", port, extra_operators));
    n.spawn();
    wait_na(port);
    // The CLI's config points at this NA.
    let toml = std::fs::read_to_string(w.path("op/genesis-mesh.toml")).expect("toml");
    std::fs::write(w.path("op/genesis-mesh.toml"), toml.replace("http://127.0.0.1:1", &na_url(port))).expect("toml");
    (n, port)
}

/// A `genesis-mesh join --persistent` node runtime listening on a free port; stopped by
/// PID when dropped.
struct Persistent<'w> {
    w: &'w Workdir,
    name: String,
    port: u16,
    child: std::process::Child,
}

impl<'w> Persistent<'w> {
    fn start(w: &'w Workdir, operator_config: &str, name: &str, na: &str) -> Persistent<'w> {
        let (code, token, err) = w.gm(&["admin", "invite", "--config", operator_config, "--role", "anchor"]);
        assert_eq!(code, 0, "{err}");
        std::fs::create_dir_all(w.path(name)).expect("mkdir");
        let port = free_port();
        let log = std::fs::File::create(w.path(&format!("{name}.log"))).expect("log");
        let config = format!("{name}/gm.toml");
        let child = Command::new(gm_bin("genesis-mesh"))
            .args(["join", "--config", &config, "--na", na, "--token", token.trim(), "--persistent"])
            .args(["--listen-host", "127.0.0.1", "--listen-port", &port.to_string()])
            .current_dir(w.0.path())
            .env("HOME", w.0.path())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("persistent node");
        let node = Persistent {
            w,
            name: name.to_string(),
            port,
            child,
        };
        node.wait_log("Mesh node runtime started");
        node
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.w.path(&format!("{}.log", self.name))).unwrap_or_default()
    }

    fn wait_log(&self, text: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !self.log().contains(text) {
            assert!(
                std::time::Instant::now() < deadline,
                "{} never logged {text:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn public_key(&self) -> String {
        public_key_of(&self.w.path(&format!("{}/keys/node.pub", self.name)))
    }

    fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }
}

impl Drop for Persistent<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reference §13 against netsy's NA at `na`, for the network whose operator files are in
/// `home` (`genesis-mesh.toml`, `keys/operator.key`, `genesis.signed.json`) named
/// `network`.
fn scenario(w: &Workdir, home: &str, network: &str, na: &str, n: &Netsy) {
    let config = format!("{home}/genesis-mesh.toml");
    let operator_key = format!("{home}/keys/operator.key");
    let genesis = format!("{home}/genesis.signed.json");
    let na = na.to_string();
    let (code, out, _) = w.gm(&["admin", "invite", "--config", &config, "--role", "anchor"]);
    assert_eq!(code, 0, "{}", n.log());
    let t1 = out.trim().to_string();
    assert_eq!(t1.len(), 36, "one UUID token: {out}");
    // Without a config: explicit flags.
    let (code, _, err) = w.gm(&[
        "admin",
        "invite",
        "--na",
        &na,
        "--operator-key",
        &operator_key,
        "--operator-key-id",
        "operator-local",
        "--role",
        "client",
        "--validity-hours",
        "24",
    ]);
    assert_eq!(code, 0, "{err}");

    // Join (downloading the genesis: trust on first use) and status.
    std::fs::create_dir_all(w.path("n1")).expect("mkdir");
    let (code, out, err) = w.gm(&["join", "--config", "n1/gm.toml", "--na", &na, "--token", &t1]);
    assert_eq!(code, 0, "{out}{err}\n{}", n.log());
    assert!(out.contains(&format!("Joined {network} as role:anchor")), "{out}");
    for f in ["genesis.signed.json", "node.cert.json", "policy.json", "keys/node.key"] {
        assert!(w.path("n1").join(f).exists(), "{f}");
    }
    let (code, out, _) = w.gm(&["status", "--config", "n1/gm.toml"]);
    assert_eq!(code, 0);
    for line in ["/healthz: 200", "/readyz: 200", "active nodes: 1", "valid: True"] {
        assert!(out.contains(line), "{line} in {out}");
    }

    // A persistent node accepts netsy's signed CRL at startup, and n1 reaches it over
    // Noise XX with the certificates netsy issued.
    let n2 = Persistent::start(w, &config, "n2", &na);
    assert!(n2.log().contains("Set CRL (seq 0)"), "{}", n2.log());
    let (code, out, err) = w.gm(&[
        "send",
        "--config",
        "n1/gm.toml",
        "--to",
        &n2.public_key(),
        "--via",
        &n2.ws(),
        "--message",
        "hi",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    n2.wait_log("DATA message delivered");

    // Revoke n1 for key compromise: its heartbeat is refused, and so is re-enrolment.
    let cert: Value = serde_json::from_str(&std::fs::read_to_string(w.path("n1/node.cert.json")).expect("cert")).expect("json");
    let cert_id = cert["cert_id"].as_str().expect("cert id");
    let (code, out, err) = w.gm(&["admin", "revoke", "--config", &config, cert_id, "--reason", "key_compromise"]);
    assert_eq!(code, 0, "{err}");
    let revoked: Value = serde_json::from_str(&out).expect("revoke JSON");
    assert_eq!(revoked, json!({"crl_sequence": 1, "revoked_count": 1}));
    let (code, out, err) = w.gm(&["join", "--config", "n1/gm.toml", "--na", &na]);
    assert_eq!(code, 1);
    assert!(
        format!("{out}{err}").contains("Existing local certificate was rejected"),
        "{out}{err}"
    );
    // A node started after the revocation loads CRL 1 and refuses n1, not n2.
    let n3 = Persistent::start(w, &config, "n3", &na);
    assert!(n3.log().contains("Set CRL (seq 1)"), "{}", n3.log());
    w.gm(&[
        "send",
        "--config",
        "n1/gm.toml",
        "--to",
        &n3.public_key(),
        "--via",
        &n3.ws(),
        "--message",
        "from-revoked",
    ]);
    n3.wait_log("Rejected inbound peer connection: Peer certificate is revoked");
    let (code, _, err) = w.gm(&[
        "send",
        "--config",
        "n2/gm.toml",
        "--to",
        &n3.public_key(),
        "--via",
        &n3.ws(),
        "--message",
        "from-n2",
    ]);
    assert_eq!(code, 0, "{err}");
    n3.wait_log("DATA message delivered");
    drop((n2, n3));

    let (_, t4, _) = w.gm(&["admin", "invite", "--config", &config, "--role", "anchor"]);
    std::fs::rename(w.path("n1/node.cert.json"), w.path("n1/node.cert.json.old")).expect("move aside");
    let (code, out, err) = w.gm(&["join", "--config", "n1/gm.toml", "--na", &na, "--token", t4.trim()]);
    assert_eq!(code, 1, "{out}");
    assert!(format!("{out}{err}").contains("403"), "{out}{err}");
    // The CRL now lists it, under sequence 1, signed by the NA key id.
    let (status, crl) = tools::request(&na, "GET", "/crl", &[], None).expect("crl");
    assert_eq!(status, 200);
    assert_eq!(crl["sequence"], 1);
    assert_eq!(crl["issuer"], "na-local");
    assert_eq!(crl["revoked_certificates"][0]["certificate_id"], cert_id);

    // The node entry point, and sovereign inspect.
    let (_, t5, _) = w.gm(&["admin", "invite", "--config", &config, "--role", "bridge"]);
    let (code, out, err) = w.run(
        "genesis-mesh-node",
        &[
            "--genesis",
            &genesis,
            "--bootstrap",
            &na,
            "--invite-token",
            t5.trim(),
            "--role",
            "bridge",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("certificate_valid: True") && out.contains(&format!("policy_id: policy-{network}-v0.1")),
        "{out}"
    );
    let (code, out, _) = w.gm(&["sovereign", "inspect", "--na", &na]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("Sovereign: {network}")), "{out}");
    let (code, body) = tools::request(&na, "GET", "/no/such/route", &[], None).expect("404");
    assert_eq!((code, body["error"]["code"].as_str()), (404, Some("not_found")));
}

#[test]
fn python_made_keys_drive_netsy_through_the_reference_scenario() {
    let w = Workdir::new();
    let (n, port) = start_na(&w, &[]);
    scenario(&w, "op", "T", &na_url(port), &n);
}

#[test]
fn netsy_made_keys_drive_the_python_tools_through_the_reference_scenario() {
    let w = Workdir::new();
    let port = free_port();
    let (ok, out, err) = w.netsy(&["init", "--network-name", "N", "--out", "net", "--na-endpoint", &na_url(port)]);
    assert!(ok, "{err}");
    assert!(out.contains("keys/operator.key"), "{out}");
    // genesis-mesh accepts netsy's genesis.
    let (code, out, err) = w.gm(&["genesis", "verify", "--genesis", "net/genesis.signed.json"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = w.gm(&["info", "--genesis", "net/genesis.signed.json"]);
    assert_eq!(code, 0);
    assert!(out.contains('N'), "{out}");

    // netsy serves it from the env file init wrote (paths relative to the file).
    let mut n = Netsy::new(
        "",
        &[
            ("NETSY_MESH_ENV_FILE", w.path("net/na.env").display().to_string()),
            ("NETSY_BIND_MESH", format!("127.0.0.1:{port}")),
        ],
    );
    n.spawn();
    wait_na(port);
    let na = na_url(port);
    scenario(&w, "net", "N", &na, &n);

    // netsy's own admin commands.
    let op = ["--na", na.as_str(), "--operator-key", "net/keys/operator.key"];
    let cmd = |extra: &[&str]| -> Vec<String> { extra.iter().chain(op.iter()).map(|s| s.to_string()).collect() };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        w.netsy(&refs)
    };
    let (ok, token, err) = run(cmd(&["invite", "--role", "anchor"]));
    assert!(ok, "{err}\n{}", n.log());
    std::fs::create_dir_all(w.path("m1")).expect("mkdir");
    let (code, out, err) = w.gm(&["join", "--config", "m1/gm.toml", "--na", &na, "--token", token.trim()]);
    assert_eq!(code, 0, "{out}{err}");
    // The Python CLI uses the config and operator key netsy wrote.
    let (code, _, err) = w.gm(&["admin", "invite", "--config", "net/genesis-mesh.toml", "--role", "client"]);
    assert_eq!(code, 0, "{err}");

    // Policy: publish, history, roll back to the default.
    let (status, default) = tools::request(&na, "GET", "/policy", &[], None).expect("policy");
    assert_eq!(status, 200);
    let (ok, out, err) = run(cmd(&[
        "policy",
        "--policy-id",
        "p2",
        "--allowed-port",
        "443",
        "--allowed-service",
        "api",
    ]));
    assert!(ok, "{err}");
    assert!(out.contains("\"p2\""), "{out}");
    let (_, active) = tools::request(&na, "GET", "/policy", &[], None).expect("policy");
    assert_eq!(active["policy_id"], "p2");
    assert_eq!(active["allowed_ports"], json!([443]));
    let (ok, out, _) = run(cmd(&["policy-history"]));
    assert!(ok);
    let history: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(history["versions"][0]["policy_id"], "p2");
    assert_eq!(history["versions"][0]["active"], true);
    let default_id = default["policy_id"].as_str().expect("id").to_string();
    let (ok, _, err) = run(cmd(&["policy-rollback", &default_id]));
    assert!(ok, "{err}");
    let (_, active) = tools::request(&na, "GET", "/policy", &[], None).expect("policy");
    assert_eq!(active, default, "the rolled-back version is served exactly as signed before");

    // Revoke through netsy's command.
    let cert: Value = serde_json::from_str(&std::fs::read_to_string(w.path("m1/node.cert.json")).expect("cert")).expect("json");
    let (ok, out, err) = run(cmd(&["revoke", cert["cert_id"].as_str().expect("id"), "--reason", "superseded"]));
    assert!(ok, "{err}");
    assert!(out.contains("\"crl_sequence\": 2"), "after the scenario's revocation: {out}");
    let (ok, _, err) = run(cmd(&["revoke", "no-such-cert"]));
    assert!(!ok && err.contains("404") && err.contains("certificate_not_found"), "{err}");
}

/// A signed node request body (join, heartbeat, renew).
pub(crate) fn node_body(key: &ed25519_dalek::SigningKey, mut body: Value) -> Value {
    body["node_public_key"] = json!(keys::public_b64(key));
    body["timestamp"] = json!(netsy::mesh::timefmt::isoformat(netsy::mesh::timefmt::now()));
    body["nonce"] = json!(netsy::mesh::models::uuid4());
    auth::sign_node_body(&mut body, key);
    body
}

fn post(na: &str, path: &str, body: &Value) -> (u16, Value) {
    tools::request(na, "POST", path, &[], Some(body)).expect("request")
}

/// POSTs `body` from the local address `source` (a loopback address of its own): the
/// status (0 when the authority closed without answering) and the JSON reply.
fn post_from(source: std::net::Ipv4Addr, port: u16, path: &str, body: &Value) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let std_stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind((source, 0).into()).expect("bind the source address");
        socket
            .connect(([127, 0, 0, 1], port).into())
            .await
            .expect("connect")
            .into_std()
            .expect("std")
    });
    std_stream.set_nonblocking(false).expect("blocking");
    let (status, body) = raw_post(std_stream, path, "application/json", &body.to_string()).unwrap_or((0, String::new()));
    (status, serde_json::from_str(body.trim()).unwrap_or(Value::Null))
}

/// Sends one POST with `content_type` and `body` as given over `s`: the reply's status
/// and body, or why there was none (the server may close while the body is being sent).
fn raw_post(s: std::net::TcpStream, path: &str, content_type: &str, body: &str) -> Result<(u16, String), String> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    common::http_exchange(s, request.as_bytes())
}

fn code(reply: &(u16, Value)) -> (u16, String) {
    (reply.0, reply.1["error"]["code"].as_str().unwrap_or("").to_string())
}

#[test]
fn refusals_have_the_python_nas_codes_and_change_nothing() {
    let w = Workdir::new();
    let reader = keys::generate();
    let reader_pub = keys::public_b64(&reader);
    let (n, port) = start_na(&w, &[("reader", &reader_pub, "read")]);
    let na = na_url(port);
    let op = keys::read_private(&w.path("op/keys/operator.key")).expect("operator key");
    let audience = audience(&w, "op");
    let admin = |key: &ed25519_dalek::SigningKey, id: &str, path: &str, body: &Value, tamper: &dyn Fn(&mut auth::AdminHeaders)| {
        let mut h = auth::sign_admin(key, id, "POST", path, &Default::default(), &audience, body);
        tamper(&mut h);
        let headers = h.pairs();
        (tools::request(&na, "POST", path, &headers, Some(body)).expect("request"), h)
    };
    let invite = json!({"roles": ["role:anchor"]});
    let none = |_: &mut auth::AdminHeaders| {};

    // Admin authentication.
    let (good, h) = admin(&op, "operator-local", "/admin/invite", &invite, &none);
    assert_eq!(good.0, 201, "{:?}\n{}", good.1, n.log());
    let replay = tools::request(&na, "POST", "/admin/invite", &h.pairs(), Some(&invite)).expect("replay");
    assert_eq!(code(&replay), (401, "admin_auth_failed".into()));
    assert_eq!(replay.1["error"]["message"], "Admin nonce already used");
    let tampered = admin(&op, "operator-local", "/admin/invite", &invite, &|h| {
        h.signature = keys::b64(&[0u8; 64])
    })
    .0;
    assert_eq!(tampered.1["error"]["message"], "Invalid admin signature");
    let stale = admin(&op, "operator-local", "/admin/invite", &invite, &|h| {
        h.timestamp = "2020-01-01T00:00:00+00:00".into();
    })
    .0;
    assert_eq!(stale.1["error"]["message"], "Admin request timestamp too old");
    let unknown = admin(&op, "nobody", "/admin/invite", &invite, &none).0;
    assert_eq!(unknown.1["error"]["message"], "Unknown admin key");
    let low = admin(&reader, "reader", "/admin/invite", &invite, &none).0;
    assert_eq!(code(&low), (403, "insufficient_operator_tier".into()));
    let bad_role = admin(&op, "operator-local", "/admin/invite", &json!({"roles": ["role:king"]}), &none).0;
    assert_eq!(code(&bad_role), (400, "invalid_role".into()));
    let bad_hours = admin(&op, "operator-local", "/admin/invite", &json!({"max_validity_hours": 0}), &none).0;
    assert_eq!(code(&bad_hours), (400, "invalid_max_validity_hours".into()));
    let missing = tools::request(&na, "POST", "/admin/invite", &[], Some(&invite)).expect("no headers");
    assert_eq!(missing.1["error"]["message"], "Missing admin authentication headers");

    // Enrollment: a token bound to another key is refused and stays usable.
    let node_a = keys::generate();
    let node_b = keys::generate();
    let bound = admin(
        &op,
        "operator-local",
        "/admin/invite",
        &json!({"roles": ["role:client"], "recipient_public_key": keys::public_b64(&node_a)}),
        &none,
    )
    .0;
    let token = bound.1["token_id"].as_str().expect("token").to_string();
    let wrong = post(&na, "/join", &node_body(&node_b, json!({"invite_token": token})));
    assert_eq!(code(&wrong), (403, "invalid_invite_token".into()));
    let right = post(
        &na,
        "/join",
        &node_body(&node_a, json!({"invite_token": token, "validity_hours": 2})),
    );
    assert_eq!(right.0, 201, "{:?}", right.1);
    let cert = right.1.clone();
    assert_eq!(cert["roles"], json!(["role:client"]));
    // The certificate verifies with the NA key, over exactly its field set.
    let na_key = keys::public_key(&audience).expect("na key");
    assert!(keys::verify_document(&cert, &na_key));
    let again = post(&na, "/join", &node_body(&node_b, json!({"invite_token": token})));
    assert_eq!(code(&again), (403, "invalid_invite_token".into()), "single use");
    let unknown_token = post(
        &na,
        "/join",
        &node_body(&node_b, json!({"invite_token": "00000000-0000-4000-8000-000000000000"})),
    );
    assert_eq!(code(&unknown_token), (403, "invalid_invite_token".into()));
    // Three failed tokens from one address in a minute: that address is throttled.
    let throttled = post(&na, "/join", &node_body(&node_b, json!({"invite_token": token})));
    assert_eq!(code(&throttled), (429, "rate_limited".into()));
    let other_address = std::net::Ipv4Addr::new(127, 0, 20, 1);
    let post = |_: &str, path: &str, body: &Value| post_from(other_address, port, path, body);
    let no_token = post(&na, "/join", &node_body(&node_b, json!({})));
    assert_eq!(code(&no_token), (403, "missing_invite_token".into()));
    let bad_validity = post(
        &na,
        "/join",
        &node_body(&node_b, json!({"invite_token": token, "validity_hours": -1})),
    );
    assert_eq!(code(&bad_validity), (400, "invalid_validity_hours".into()));

    // Heartbeat and renewal.
    let id = cert["cert_id"].as_str().expect("id");
    let hb = node_body(&node_a, json!({"cert_id": id, "status": "healthy"}));
    let beat = post(&na, "/heartbeat", &hb);
    assert_eq!(beat.0, 200);
    assert_eq!(beat.1["ack"], true);
    let replayed = post(&na, "/heartbeat", &hb);
    assert_eq!(replayed.1["error"]["message"], "Nonce already used (replay detected)");
    let mut forged = node_body(&node_a, json!({"cert_id": id, "status": "healthy"}));
    forged["status"] = json!("changed after signing");
    assert_eq!(post(&na, "/heartbeat", &forged).1["error"]["message"], "Invalid signature");
    let other_key = post(&na, "/heartbeat", &node_body(&node_b, json!({"cert_id": id})));
    assert_eq!(code(&other_key), (403, "certificate_key_mismatch".into()));
    let role_change = post(&na, "/renew", &node_body(&node_a, json!({"cert_id": id, "roles": ["role:anchor"]})));
    assert_eq!(code(&role_change), (403, "renewal_role_change_forbidden".into()));
    let renewed = post(
        &na,
        "/renew",
        &node_body(&node_a, json!({"cert_id": id, "roles": ["role:client"], "validity_hours": 100})),
    );
    assert_eq!(renewed.0, 201, "{:?}", renewed.1);
    assert_ne!(renewed.1["cert_id"], cert["cert_id"]);
    let hours = |c: &Value| {
        let t = |f: &str| netsy::mesh::timefmt::parse(c[f].as_str().expect("t")).expect("time").at;
        (t("expires_at") - t("issued_at")).whole_hours()
    };
    assert_eq!(hours(&renewed.1), 100, "as asked, under the invite's cap");
    let capped = post(
        &na,
        "/renew",
        &node_body(&node_a, json!({"cert_id": renewed.1["cert_id"], "validity_hours": 1000})),
    );
    assert_eq!(capped.0, 201, "{:?}", capped.1);
    assert_eq!(hours(&capped.1), 168, "capped by the invite's max_validity_hours");

    // Revocation: bad input, then idempotence.
    let rv = |body: Value| admin(&op, "operator-local", "/admin/revoke", &body, &none).0;
    assert_eq!(code(&rv(json!({}))), (400, "missing_cert_id".into()));
    assert_eq!(
        code(&rv(json!({"cert_id": id, "reason": "bored"}))),
        (400, "invalid_revocation_reason".into())
    );
    assert_eq!(code(&rv(json!({"cert_id": "nope"}))), (404, "certificate_not_found".into()));
    let first = rv(json!({"cert_id": id, "reason": "cessation_of_operation"}));
    assert_eq!(first.1, json!({"crl_sequence": 1, "revoked_count": 1}));
    assert_eq!(
        rv(json!({"cert_id": id})).1,
        json!({"crl_sequence": 1, "revoked_count": 1}),
        "idempotent"
    );
    let after = post(&na, "/heartbeat", &node_body(&node_a, json!({"cert_id": id})));
    assert_eq!(code(&after), (403, "certificate_revoked".into()));

    // Operator keys: the reader key can be revoked, the last usable one cannot.
    let revoke_key = |key_id: &str| {
        admin(
            &op,
            "operator-local",
            &format!("/admin/operator-keys/{key_id}/revoke"),
            &json!({"reason": "rotated"}),
            &none,
        )
        .0
    };
    assert_eq!(code(&revoke_key("ghost")), (404, "unknown_operator_key".into()));
    let r = revoke_key("reader");
    assert_eq!((r.0, &r.1["remaining_active_keys"]), (200, &json!(1)));
    assert_eq!(revoke_key("reader").1["already_revoked"], true);
    assert_eq!(code(&revoke_key("operator-local")), (409, "last_active_operator_key".into()));
    let gone = admin(&reader, "reader", "/admin/invite", &invite, &none).0;
    assert_eq!(gone.1["error"]["message"], "Unknown admin key");

    // Bodies: not JSON, too large.
    let raw = |body: &str, ct: &str| {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        raw_post(s, "/join", ct, body)
    };
    let invalid = raw("{\"node_public_key\": ", "application/json");
    assert!(matches!(&invalid, Ok((400, body)) if body.contains("invalid_json")), "{invalid:?}");
    // The authority may answer 413 and close before the whole body is sent: the write
    // fails (EPIPE or reset), and the answer is still read.
    let huge = raw(&format!("{{\"pad\": \"{}\"}}", "x".repeat(3 * 1024 * 1024)), "application/json");
    assert!(
        matches!(huge, Ok((413, _))),
        "{:?}",
        huge.map(|(status, body)| (status, body.chars().take(200).collect::<String>()))
    );
}

/// Two pods racing: one invite redeemed concurrently on every pod is issued once; one
/// admin nonce replayed to every pod at once is accepted once.
#[test]
fn pods_racing_for_one_invite_or_one_nonce_never_both_win() {
    let w = Workdir::new();
    assert_eq!(w.gm(&["init", "--home", "op", "--network-name", "T"]).0, 0);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let c = Cluster::start_with_env(
        3,
        "",
        |i| {
            let mut env = na_env(&w, "op", ports[i], &[]);
            env.push(("NETSY_NODE_ID", format!("netsy-{i}")));
            env
        },
        &[],
    );
    for p in &ports {
        wait_na(*p);
    }
    let op = tools::Operator {
        na: na_url(ports[0]),
        key_file: w.path("op/keys/operator.key"),
        key_id: "operator-local".into(),
    };
    for round in 0..5 {
        let (status, invite) = op
            .call("POST", "/admin/invite", "", Some(&json!({"roles": ["role:client"]})))
            .expect("invite");
        assert_eq!(status, 201, "{invite}\n{}", c.logs());
        let token = invite["token_id"].as_str().expect("token").to_string();
        // Each contender from its own address: the NA limits failed token attempts per
        // address (3 a minute), and this race makes losers on purpose.
        let winners: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|i| {
                    let port = ports[i % 3];
                    let source = std::net::Ipv4Addr::new(127, 0, 10 + round as u8, 10 + i as u8);
                    let body = node_body(&keys::generate(), json!({"invite_token": token}));
                    s.spawn(move || post_from(source, port, "/join", &body).0)
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("join thread"))
                .filter(|s| *s == 201)
                .count()
        });
        assert_eq!(winners, 1, "round {round}: one invite, {winners} certificates");
    }
    // One signed admin request sent to all three pods at once.
    let key = keys::read_private(&w.path("op/keys/operator.key")).expect("key");
    let audience = audience(&w, "op");
    for round in 0..5 {
        let body = json!({"roles": ["role:client"]});
        let h = auth::sign_admin(
            &key,
            "operator-local",
            "POST",
            "/admin/invite",
            &Default::default(),
            &audience,
            &body,
        );
        let accepted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = ports
                .iter()
                .map(|p| {
                    let headers = h.pairs();
                    let na = na_url(*p);
                    let body = body.clone();
                    s.spawn(move || tools::request(&na, "POST", "/admin/invite", &headers, Some(&body)).expect("req").0)
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).filter(|s| *s == 201).count()
        });
        assert_eq!(accepted, 1, "round {round}: one nonce, {accepted} accepted");
    }
}

#[test]
fn a_genesis_that_does_not_verify_or_a_foreign_na_key_stops_the_start() {
    let w = Workdir::new();
    assert_eq!(w.gm(&["init", "--home", "op", "--network-name", "T"]).0, 0);
    let port = free_port();
    // The root key where the NA key belongs.
    let mut env = na_env(&w, "op", port, &[]);
    env[1].1 = w.path("op/keys/root.key").display().to_string();
    let log = Netsy::new("", &env).try_spawn().expect_err("must refuse to start");
    assert!(log.contains("NA private key does not match genesis block"), "{log}");
    // A genesis edited after signing.
    let text = std::fs::read_to_string(w.path("op/genesis.signed.json")).expect("genesis");
    std::fs::write(w.path("op/genesis.signed.json"), text.replace("\"T\"", "\"U\"")).expect("write");
    let log = Netsy::new("", &na_env(&w, "op", port, &[]))
        .try_spawn()
        .expect_err("must refuse to start");
    assert!(log.contains("root signature does not verify"), "{log}");
    // And secrets never reach the log.
    let seed = std::fs::read_to_string(w.path("op/keys/na.key")).expect("key");
    let seed = seed.lines().last().expect("seed line");
    assert!(!log.contains(seed));
}
