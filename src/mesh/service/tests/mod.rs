//! The service as a client sees it, through `router` (`tower::ServiceExt::oneshot`) over a
//! bare MVCC store: `requests` (routing, bodies, the error envelope and headers, rate
//! limits), `signed` (admin and node signatures, each route's fields); refusals must
//! change nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{router, Authority, Material};
use crate::config::MeshConfig;
use crate::mesh::auth::{self, AdminHeaders};
use crate::mesh::models::Genesis;
use crate::mesh::state::{memory, State};
use crate::mesh::{keys, timefmt};

mod requests;
mod signed;

/// The body limit the fixture's authority is configured with.
const LIMIT: usize = 4096;

struct Fixture {
    app: axum::Router,
    na: Arc<Authority>,
    /// The operator keys: `op` (privileged) and `reader` (read).
    op: SigningKey,
    reader: SigningKey,
    /// The NA public key, the admin signatures' audience.
    audience: String,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let (root, na_key, op, reader) = (keys::generate(), keys::generate(), keys::generate(), keys::generate());
    let genesis = Genesis::create("T", &root, "rs-local", &na_key, timefmt::now()).expect("genesis");
    let genesis_file = dir.path().join("genesis.signed.json");
    std::fs::write(&genesis_file, genesis.doc.to_string()).expect("write genesis");
    keys::write_pair(dir.path(), "na", "na-local", &na_key).expect("write na key");
    let cfg = MeshConfig {
        bind: "127.0.0.1:0".parse().expect("addr"),
        genesis_file,
        na_private_key_file: dir.path().join("na.key"),
        na_key_id: "na-local".into(),
        operator_public_keys: BTreeMap::from([("op".into(), keys::public_b64(&op)), ("reader".into(), keys::public_b64(&reader))]),
        operator_key_tiers: BTreeMap::from([("op".into(), "privileged".into()), ("reader".into(), "read".into())]),
        renewal_grace_secs: 900,
        max_request_bytes: LIMIT,
        rate_admin: 300,
        rate_admin_auth_failures: 30,
        rate_read: 120,
        rate_node: 600,
        public_url: None,
    };
    let material = Material::load(&cfg).expect("material");
    let state = State::over(memory::Keyspace::new().expect("store"));
    let na = Arc::new(Authority::new(cfg, material, state));
    Fixture {
        app: router(na.clone()),
        na,
        op,
        reader,
        audience: keys::public_b64(&na_key),
        _dir: dir,
    }
}

/// A response, its body as text.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// `(status, error code)`.
    fn code(&self) -> (u16, String) {
        (
            self.status.as_u16(),
            self.json()["error"]["code"].as_str().unwrap_or("").to_string(),
        )
    }

    fn message(&self) -> String {
        self.json()["error"]["message"].as_str().unwrap_or("").to_string()
    }
}

impl Fixture {
    async fn send(&self, req: Request<Body>) -> Reply {
        self.send_from([127, 0, 0, 1], req).await
    }

    async fn send_from(&self, ip: [u8; 4], mut req: Request<Body>) -> Reply {
        req.extensions_mut().insert(ConnectInfo(SocketAddr::from((ip, 40000))));
        let resp = self.app.clone().oneshot(req).await.expect("the router is infallible");
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
        Reply {
            status: parts.status,
            headers: parts.headers,
            text: String::from_utf8(bytes.to_vec()).expect("utf-8"),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(request("GET", path, &[], None)).await
    }

    /// An admin call signed by `key` as `key_id` over `body`, as `tools::Operator` does.
    async fn admin(&self, key: &SigningKey, key_id: &str, method: &str, path: &str, body: &Value) -> Reply {
        let h = self.sign(key, key_id, method, path, body);
        self.admin_with(&h, method, path, &body.to_string()).await
    }

    fn sign(&self, key: &SigningKey, key_id: &str, method: &str, path: &str, body: &Value) -> AdminHeaders {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let q = auth::query_map(Some(query));
        auth::sign_admin(key, key_id, method, &percent_decoded(path), &q, &self.audience, body)
    }

    /// Sends `body` (raw JSON text) with the admin headers `h`.
    async fn admin_with(&self, h: &AdminHeaders, method: &str, path: &str, body: &str) -> Reply {
        let pairs = h.pairs();
        let headers: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.send(request(
            method,
            path,
            &headers,
            Some(("application/json", body.as_bytes().to_vec())),
        ))
        .await
    }

    async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.send(request(
            "POST",
            path,
            &[],
            Some(("application/json", body.to_string().into_bytes())),
        ))
        .await
    }

    /// A new invite token for `roles`.
    async fn invite(&self, body: Value) -> String {
        let r = self.admin(&self.op.clone(), "op", "POST", "/admin/invite", &body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.json()["token_id"].as_str().expect("token").to_string()
    }

    /// Every stored value under `prefix`.
    async fn stored(&self, prefix: &str) -> Vec<(String, Value)> {
        self.na
            .state
            .list(prefix)
            .await
            .expect("list")
            .into_iter()
            .map(|(k, s)| (k, s.value))
            .collect()
    }
}

fn percent_decoded(path: &str) -> String {
    percent_encoding::percent_decode_str(path).decode_utf8_lossy().into_owned()
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: Option<(&str, Vec<u8>)>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path).header("host", "na.test:8443");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let body = match body {
        Some((content_type, bytes)) => {
            b = b.header("content-type", content_type);
            Body::from(bytes)
        }
        None => Body::empty(),
    };
    b.body(body).expect("request")
}

/// A node request body signed by `key` (join, heartbeat, renew).
fn node_body(key: &SigningKey, mut body: Value) -> Value {
    body["node_public_key"] = json!(keys::public_b64(key));
    body["timestamp"] = json!(timefmt::isoformat(timefmt::now()));
    body["nonce"] = json!(crate::mesh::models::uuid4());
    auth::sign_node_body(&mut body, key);
    body
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The headers every response carries.
fn assert_common_headers(r: &Reply, content_type: &str) {
    assert_eq!(header(r, "content-type"), Some(content_type), "{:?}", r.headers);
    assert_eq!(
        header(r, "content-security-policy"),
        Some("default-src 'self'; frame-ancestors 'none'; base-uri 'self'")
    );
    assert_eq!(header(r, "x-frame-options"), Some("DENY"));
    assert_eq!(header(r, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(r, "cache-control"), Some("no-store"));
    assert!(header(r, "x-request-id").is_some_and(|v| !v.is_empty()));
    assert!(r.headers.get("allow").is_none(), "no 405-style Allow header: {:?}", r.headers);
}
