//! The service as a client sees it, through `router` (`tower::ServiceExt::oneshot`) over a
//! bare MVCC store: routing, bodies, the error envelope and headers, and refusals that
//! must change nothing.

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
use crate::mesh::auth::{self, AdminHeaders};
use crate::mesh::config::MeshConfig;
use crate::mesh::models::Genesis;
use crate::mesh::state::{memory, State};
use crate::mesh::{keys, timefmt};

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

#[tokio::test]
async fn unknown_paths_and_methods_are_404_in_the_envelope_with_every_header() {
    let f = fixture();
    let r = f.send(request("GET", "/no/such/route", &[("x-request-id", "rid-1")], None)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        r.text,
        "{\"error\":{\"code\":\"not_found\",\"details\":{},\"message\":\"The requested resource was not found\",\"request_id\":\"rid-1\"}}\n"
    );
    assert_common_headers(&r, "application/json");
    assert_eq!(header(&r, "x-request-id"), Some("rid-1"));
    for (method, path) in [
        ("GET", "/join"),
        ("DELETE", "/join"),
        ("PUT", "/admin/invite"),
        ("POST", "/healthz"),
        ("HEAD", "/healthz"),
        ("OPTIONS", "/crl"),
        ("GET", "/healthz/"),
        ("GET", "/admin/operator-keys/op/revoke"),
        ("POST", "/admin/operator-keys/op/retire"),
    ] {
        let r = f.send(request(method, path, &[], None)).await;
        if method == "HEAD" {
            // The same answer, without its body.
            assert_eq!((r.status, r.text.as_str()), (StatusCode::NOT_FOUND, ""));
        } else {
            assert_eq!(r.code(), (404, "not_found".into()), "{method} {path}: {}", r.text);
        }
        assert_common_headers(&r, "application/json");
    }
}

#[tokio::test]
async fn bodies_are_compact_with_sorted_keys_and_a_newline_and_paths_are_percent_decoded() {
    let f = fixture();
    let r = f.get("/healthz").await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, "{\"status\":\"ok\"}\n"));
    assert_common_headers(&r, "application/json");
    // A generated request id is a UUID4; an over-long one is replaced.
    assert_eq!(header(&r, "x-request-id").map(str::len), Some(36));
    let long = "x".repeat(129);
    let r = f.send(request("GET", "/healthz", &[("x-request-id", &long)], None)).await;
    assert_eq!(header(&r, "x-request-id").map(str::len), Some(36));
    assert_eq!(f.get("/heal%74hz").await.text, "{\"status\":\"ok\"}\n");
    let health = f.get("/health").await;
    assert_eq!(
        health.text,
        "{\"boundary_policies\":0,\"boundary_policy_enforcement\":\"off\",\"evidence_store\":\"off\",\"network\":\"T\",\"status\":\"healthy\",\"version\":\"v0.1\"}\n"
    );
    let metrics = f.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert_common_headers(&metrics, "text/plain; version=0.0.4");
    assert!(
        metrics.text.contains("genesis_mesh_certificates_issued_total 0\n"),
        "{}",
        metrics.text
    );
    let sovereign = f.get("/sovereign.json").await.json();
    assert_eq!(sovereign["endpoint"], "http://na.test:8443", "the request's Host");
    assert_eq!(sovereign["network_authority"]["public_key"], f.audience.as_str());
    let ready = f.get("/readyz").await.json();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["signing_key"]["key_id"], "na-local");
    assert_eq!(f.get("/na/key-history").await.json()["successions"], json!([]));
    assert_eq!(f.get("/genesis").await.json()["network_name"], "T");
    assert_eq!(f.get("/crl").await.json()["sequence"], 0);
    assert_eq!(f.get("/policy").await.json()["policy_id"], "policy-T-v0.1");
    assert_eq!(f.get("/nodes").await.text, "{\"count\":0}\n");
}

#[tokio::test]
async fn malformed_json_is_400_invalid_json_whatever_the_route_and_changes_nothing() {
    let f = fixture();
    let h = f.sign(&f.op, "op", "POST", "/admin/invite", &json!({}));
    let r = f.admin_with(&h, "POST", "/admin/invite", "{\"roles\": ").await;
    assert_eq!(r.code(), (400, "invalid_json".into()), "{}", r.text);
    assert_eq!(r.message(), "Request body is not valid JSON");
    assert!(
        r.json()["error"]["details"]["reason"].as_str().is_some_and(|s| !s.is_empty()),
        "{}",
        r.text
    );
    assert_common_headers(&r, "application/json");
    assert!(f.stored("invites/").await.is_empty());
    // The nonce was not used: the same headers with the signed body still work.
    assert_eq!(f.admin_with(&h, "POST", "/admin/invite", "{}").await.status, StatusCode::CREATED);
    // Every route reads the body first, GET routes and unknown paths too.
    for (method, path) in [("GET", "/healthz"), ("POST", "/join"), ("POST", "/nowhere"), ("GET", "/crl")] {
        let r = f
            .send(request(method, path, &[], Some(("application/json", b"{\"a\": 1,}".to_vec()))))
            .await;
        assert_eq!(r.code(), (400, "invalid_json".into()), "{method} {path}");
    }
    // JSON content types with parameters, any case, and `+json`; a leading BOM.
    for ct in ["Application/JSON; charset=utf-8", "application/merge-patch+json"] {
        let r = f.send(request("POST", "/join", &[], Some((ct, b"[".to_vec())))).await;
        assert_eq!(r.code(), (400, "invalid_json".into()), "{ct}");
    }
    let bom = [b"\xef\xbb\xbf".as_slice(), b"{\"node_public_key\": \"\"}"].concat();
    let r = f.send(request("POST", "/join", &[], Some(("application/json", bom)))).await;
    assert_eq!(r.code(), (400, "missing_node_public_key".into()), "{}", r.text);
}

#[tokio::test]
async fn a_body_that_is_not_declared_json_reads_as_empty() {
    let f = fixture();
    let body = node_body(&keys::generate(), json!({"invite_token": "t"})).to_string().into_bytes();
    for ct in [Some("text/plain"), Some("application/jsonx"), None] {
        let mut req = request("POST", "/join", &[], Some(("text/plain", body.clone())));
        match ct {
            Some(ct) => {
                req.headers_mut().insert("content-type", ct.parse().expect("ct"));
            }
            None => {
                req.headers_mut().remove("content-type");
            }
        }
        let r = f.send(req).await;
        assert_eq!(r.code(), (400, "missing_node_public_key".into()), "{ct:?}: {}", r.text);
    }
    // Not even parsed: garbage is no error either.
    let r = f.send(request("POST", "/join", &[], Some(("text/plain", b"{{{".to_vec())))).await;
    assert_eq!(r.code(), (400, "missing_node_public_key".into()));
}

#[tokio::test]
async fn oversized_bodies_are_413_before_anything_else_and_change_nothing() {
    let f = fixture();
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(LIMIT));
    let h = f.sign(&f.op, "op", "POST", "/admin/invite", &serde_json::from_str(&big).expect("json"));
    let r = f.admin_with(&h, "POST", "/admin/invite", &big).await;
    assert_eq!(r.code(), (413, "request_too_large".into()), "{}", r.text);
    assert_eq!(r.message(), format!("Request body exceeds {LIMIT} bytes"));
    assert_common_headers(&r, "application/json");
    assert!(f.stored("invites/").await.is_empty());
    assert!(f.stored("nonces/").await.is_empty(), "the nonce was not claimed");
    // Whatever the content type or route.
    for (ct, path) in [
        ("text/plain", "/join"),
        ("application/json", "/healthz"),
        ("application/json", "/nowhere"),
    ] {
        let r = f.send(request("POST", path, &[], Some((ct, vec![b' '; LIMIT + 1])))).await;
        assert_eq!(r.code(), (413, "request_too_large".into()), "{ct} {path}");
    }
    // The limit itself is allowed.
    let padded = format!("{{\"p\":\"{}\"}}", "x".repeat(LIMIT - 8));
    assert_eq!(padded.len(), LIMIT);
    let r = f
        .send(request("POST", "/join", &[], Some(("application/json", padded.into_bytes()))))
        .await;
    assert_eq!(r.code(), (400, "missing_node_public_key".into()), "{}", r.text);
}

#[tokio::test]
async fn a_tampered_admin_signature_is_refused_and_its_nonce_stays_unused() {
    let f = fixture();
    let body = json!({"roles": ["role:client"]});
    let h = f.sign(&f.op, "op", "POST", "/admin/invite", &body);
    // The same headers over another body, path or method.
    let tampered = f
        .admin_with(&h, "POST", "/admin/invite", &json!({"roles": ["role:anchor"]}).to_string())
        .await;
    assert_eq!(tampered.code(), (401, "admin_auth_failed".into()));
    assert_eq!(tampered.message(), "Invalid admin signature");
    let reordered = f.admin_with(&h, "POST", "/admin/invite?x=1", &body.to_string()).await;
    assert_eq!(reordered.message(), "Invalid admin signature", "the query is signed");
    let mut forged = f.sign(&f.op, "op", "POST", "/admin/invite", &body);
    forged.signature = keys::b64(&[0u8; 64]);
    assert_eq!(
        f.admin_with(&forged, "POST", "/admin/invite", &body.to_string()).await.message(),
        "Invalid admin signature"
    );
    forged.signature = "not base64".into();
    assert_eq!(
        f.admin_with(&forged, "POST", "/admin/invite", &body.to_string()).await.message(),
        "Invalid admin signature"
    );
    assert!(f.stored("invites/").await.is_empty());
    // Signed bytes are the canonical form of the parsed body: key order and spacing do
    // not matter, so the untampered call goes through, once.
    let good = f
        .admin_with(&h, "POST", "/admin/invite", "{ \"roles\" : [ \"role:client\" ] }")
        .await;
    assert_eq!(good.status, StatusCode::CREATED, "{}", good.text);
    assert!(
        good.text.starts_with("{\"expires_at\":\"") && good.text.contains("\",\"token_id\":\""),
        "{}",
        good.text
    );
    let replay = f.admin_with(&h, "POST", "/admin/invite", &body.to_string()).await;
    assert_eq!(replay.message(), "Admin nonce already used");
    // Other refusals, in the NA's order.
    let mut stale = f.sign(&f.op, "op", "POST", "/admin/invite", &body);
    stale.timestamp = "2020-01-01T00:00:00+00:00".into();
    assert_eq!(
        f.admin_with(&stale, "POST", "/admin/invite", &body.to_string()).await.message(),
        "Admin request timestamp too old"
    );
    let mut long = f.sign(&f.op, "op", "POST", "/admin/invite", &body);
    long.nonce = "n".repeat(257);
    assert_eq!(
        f.admin_with(&long, "POST", "/admin/invite", &body.to_string()).await.message(),
        "Admin authentication header too long"
    );
    let unknown = f.admin(&f.op.clone(), "nobody", "POST", "/admin/invite", &body).await;
    assert_eq!(unknown.message(), "Unknown admin key");
    let low = f.admin(&f.reader.clone(), "reader", "POST", "/admin/invite", &body).await;
    assert_eq!(low.code(), (403, "insufficient_operator_tier".into()));
    assert_eq!(low.message(), "Operator key reader lacks the required tier");
    let none = f.post_json("/admin/invite", &body).await;
    assert_eq!(none.message(), "Missing admin authentication headers");
    assert_eq!(f.stored("invites/").await.len(), 1);
}

#[tokio::test]
async fn a_tampered_node_signature_is_refused_and_the_invite_stays_usable() {
    let f = fixture();
    let token = f.invite(json!({"roles": ["role:anchor"], "max_validity_hours": 10})).await;
    let node = keys::generate();
    let mut forged = node_body(&node, json!({"invite_token": token, "validity_hours": 5}));
    forged["validity_hours"] = json!(6);
    let r = f.post_json("/join", &forged).await;
    assert_eq!(r.code(), (401, "node_auth_failed".into()));
    assert_eq!(r.message(), "Invalid signature");
    let mut unsigned = node_body(&node, json!({"invite_token": token}));
    unsigned.as_object_mut().expect("object").remove("signature");
    unsigned.as_object_mut().expect("object").remove("nonce");
    let r = f.post_json("/join", &unsigned).await;
    assert_eq!(r.message(), "Missing authentication fields: nonce, signature");
    let mut stale = node_body(&node, json!({"invite_token": token}));
    stale["timestamp"] = json!("yesterday");
    assert_eq!(f.post_json("/join", &stale).await.message(), "Invalid timestamp format");
    assert!(f.stored("certs/").await.is_empty());
    assert!(f.stored(&format!("invites/{token}")).await[0].1["used_at"].is_null());
    // The signed body, with its fields in another order, joins (roles from the invite,
    // validity capped by it).
    let body = node_body(
        &node,
        json!({"invite_token": token, "validity_hours": 50, "roles": ["role:client"]}),
    );
    let text = {
        let m = body.as_object().expect("object");
        let fields: Vec<String> = m.iter().rev().map(|(k, v)| format!("{}: {v}", Value::String(k.clone()))).collect();
        format!("{{ {} }}", fields.join(", "))
    };
    let r = f
        .send(request("POST", "/join", &[], Some(("application/json", text.into_bytes()))))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let cert = r.json();
    assert_eq!(cert["roles"], json!(["role:anchor"]));
    let na_key = keys::public_key(&f.audience).expect("na key");
    assert!(keys::verify_document(&cert, &na_key));
    let hours = |c: &Value| {
        let t = |k: &str| timefmt::parse(c[k].as_str().expect("time")).expect("parse").at;
        (t("expires_at") - t("issued_at")).whole_hours()
    };
    assert_eq!(hours(&cert), 10);
    // Single use.
    let again = f.post_json("/join", &node_body(&node, json!({"invite_token": token}))).await;
    assert_eq!(again.code(), (403, "invalid_invite_token".into()));

    // Heartbeat: forged, replayed, other key.
    let id = cert["cert_id"].as_str().expect("cert id");
    let hb = node_body(&node, json!({"cert_id": id, "status": {"load": 0.5}}));
    let beat = f.post_json("/heartbeat", &hb).await;
    assert_eq!(beat.status, StatusCode::OK, "{}", beat.text);
    assert_eq!(beat.json()["ack"], true);
    assert_eq!(
        f.stored(&format!("certs/{id}")).await[0].1["heartbeat_status"],
        json!({"load": 0.5})
    );
    assert_eq!(
        f.post_json("/heartbeat", &hb).await.message(),
        "Nonce already used (replay detected)"
    );
    let mut forged = node_body(&node, json!({"cert_id": id, "status": "healthy"}));
    forged["status"] = json!("sick");
    assert_eq!(f.post_json("/heartbeat", &forged).await.message(), "Invalid signature");
    let other = f
        .post_json("/heartbeat", &node_body(&keys::generate(), json!({"cert_id": id})))
        .await;
    assert_eq!(other.code(), (403, "certificate_key_mismatch".into()));
    let missing = f.post_json("/heartbeat", &json!({"cert_id": id})).await;
    assert_eq!(missing.code(), (400, "missing_certificate_identity".into()));
    let unknown = f.post_json("/heartbeat", &node_body(&node, json!({"cert_id": "a/b"}))).await;
    assert_eq!(unknown.code(), (403, "certificate_not_found".into()));

    // Renewal keeps the roles and caps the validity.
    let change = f
        .post_json("/renew", &node_body(&node, json!({"cert_id": id, "roles": ["role:client"]})))
        .await;
    assert_eq!(change.code(), (403, "renewal_role_change_forbidden".into()));
    let renewed = f
        .post_json(
            "/renew",
            &node_body(&node, json!({"cert_id": id, "roles": ["role:anchor", 7], "validity_hours": 99})),
        )
        .await;
    assert_eq!(renewed.status, StatusCode::CREATED, "{}", renewed.text);
    assert_eq!(hours(&renewed.json()), 10);
    let bad = f
        .post_json("/renew", &node_body(&node, json!({"cert_id": id, "validity_hours": 0})))
        .await;
    assert_eq!(bad.code(), (400, "invalid_validity_hours".into()));
}

#[tokio::test]
async fn fields_of_the_wrong_type_get_the_routes_own_errors() {
    let f = fixture();
    let op = f.op.clone();
    let invite = |body: Value| {
        let op = op.clone();
        let f = &f;
        async move { f.admin(&op, "op", "POST", "/admin/invite", &body).await }
    };
    assert_eq!(invite(json!({"roles": "role:client"})).await.message(), "roles must be a list");
    assert_eq!(invite(json!({"roles": [5]})).await.message(), "Invalid role: ");
    assert_eq!(invite(json!({"roles": ["role:king"]})).await.message(), "Invalid role: role:king");
    for v in [json!(0), json!(-1), json!(1.5), json!("5"), json!(true), json!(u64::MAX)] {
        let r = invite(json!({"max_validity_hours": v})).await;
        assert_eq!(r.code(), (400, "invalid_max_validity_hours".into()), "{v}");
        let r = invite(json!({"token_expiry_hours": v})).await;
        assert_eq!(r.code(), (400, "invalid_token_expiry_hours".into()), "{v}");
    }
    // Unknown fields and nulls are accepted; a body that is not an object counts as
    // one without fields (and is signed as sent).
    assert_eq!(
        invite(json!({"roles": null, "max_validity_hours": null, "extra": [1]}))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(invite(json!([1, 2])).await.status, StatusCode::CREATED);
    // An edge invite (any non-null marker) needs a privileged key.
    let r = f
        .admin(
            &f.reader.clone(),
            "reader",
            "POST",
            "/admin/invite",
            &json!({"node_sovereign_id": false}),
        )
        .await;
    assert_eq!(r.code(), (403, "insufficient_operator_tier".into()));

    let node = keys::generate();
    for (body, code) in [
        (json!({"validity_hours": true}), (400, "invalid_validity_hours")),
        (json!({"validity_hours": 2.0}), (400, "invalid_validity_hours")),
        (json!({"node_public_key": 5}), (400, "missing_node_public_key")),
        (json!({"node_public_key": ""}), (400, "missing_node_public_key")),
        (json!({"node_public_key": "x", "invite_token": 5}), (403, "missing_invite_token")),
        (
            json!({"node_public_key": "x", "invite_token": "a/b"}),
            (403, "invalid_invite_token"),
        ),
    ] {
        let r = f
            .send_from(
                [127, 0, 0, 9],
                request("POST", "/join", &[], Some(("application/json", body.to_string().into_bytes()))),
            )
            .await;
        assert_eq!(r.code(), (code.0, code.1.to_string()), "{body}: {}", r.text);
    }
    let token = f.invite(json!({})).await;
    let mut body = node_body(&node, json!({"invite_token": token}));
    body["node_public_key"] = json!("not a key");
    let r = f.post_json("/join", &body).await;
    assert_eq!(
        (r.code(), r.message()),
        ((401, "node_auth_failed".into()), "Invalid node public key".into())
    );

    let revoke = |body: Value| {
        let op = op.clone();
        let f = &f;
        async move { f.admin(&op, "op", "POST", "/admin/revoke", &body).await }
    };
    assert_eq!(revoke(json!({"cert_id": 5})).await.code(), (400, "missing_cert_id".into()));
    assert_eq!(revoke(json!({"cert_id": ""})).await.code(), (400, "missing_cert_id".into()));
    let r = revoke(json!({"cert_id": "c", "reason": "bored"})).await;
    assert_eq!(r.code(), (400, "invalid_revocation_reason".into()));
    assert_eq!(
        r.message(),
        "reason must be one of key_compromise, cessation_of_operation, superseded, unspecified"
    );
    let r = revoke(json!({"cert_id": "c", "reason": 5})).await;
    assert_eq!(
        (r.code(), r.message()),
        ((404, "certificate_not_found".into()), "Certificate c not found".into()),
        "a reason that is no string is unspecified"
    );

    let policy = |body: Value| {
        let op = op.clone();
        let f = &f;
        async move { f.admin(&op, "op", "POST", "/admin/policy", &body).await }
    };
    for ports in [json!([0]), json!([65536]), json!(["443"]), json!(443)] {
        assert_eq!(
            policy(json!({"allowed_ports": ports})).await.code(),
            (400, "invalid_allowed_ports".into()),
            "{ports}"
        );
    }
    for services in [json!([1]), json!("api")] {
        assert_eq!(
            policy(json!({"allowed_services": services})).await.code(),
            (400, "invalid_allowed_services".into())
        );
    }
    let p = policy(json!({"policy_id": 7, "routing": "fast", "min_client_version": 2, "allowed_ports": [1, 65535]})).await;
    assert_eq!(p.status, StatusCode::CREATED, "{}", p.text);
    let p = p.json();
    assert!(p["policy_id"].as_str().is_some_and(|id| id.starts_with("policy-")));
    assert_eq!(p["min_client_version"], "0.1.0");
    assert_eq!(p["routing"], json!({"max_hops": 6, "preferred_transports": ["quic", "wireguard"]}));
    assert_eq!(p["allowed_ports"], json!([1, 65535]));
    let r = f.admin(&op, "op", "POST", "/admin/policy/rollback", &json!({"policy_id": 1})).await;
    assert_eq!(r.code(), (400, "missing_policy_id".into()));
    let r = f
        .admin(&op, "op", "POST", "/admin/policy/rollback", &json!({"policy_id": "gone"}))
        .await;
    assert_eq!(
        (r.code(), r.message()),
        ((404, "policy_not_found".into()), "Policy gone not found".into())
    );
    let history = f.admin(&op, "op", "GET", "/admin/policy/history", &json!({})).await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.text);
    assert_eq!(history.json()["versions"][0]["active"], true);
}

#[tokio::test]
async fn joins_are_rate_limited_per_address_with_retry_after() {
    let f = fixture();
    for _ in 0..10 {
        let r = f.send_from([127, 0, 0, 7], request("POST", "/join", &[], None)).await;
        assert_eq!(r.code(), (400, "missing_node_public_key".into()));
    }
    let r = f.send_from([127, 0, 0, 7], request("POST", "/join", &[], None)).await;
    assert_eq!(r.code(), (429, "rate_limited".into()));
    assert_eq!(r.message(), "Too many requests");
    assert_eq!(header(&r, "retry-after"), Some("60"));
    assert_common_headers(&r, "application/json");
    let other = f.send_from([127, 0, 0, 8], request("POST", "/join", &[], None)).await;
    assert_eq!(other.code(), (400, "missing_node_public_key".into()));
    assert!(header(&other, "retry-after").is_none());
}

#[tokio::test]
async fn nodes_detail_needs_a_read_signature_and_operator_keys_revoke_by_decoded_id() {
    let f = fixture();
    let token = f.invite(json!({})).await;
    let node = keys::generate();
    assert_eq!(
        f.post_json("/join", &node_body(&node, json!({"invite_token": token}))).await.status,
        StatusCode::CREATED
    );
    assert_eq!(f.get("/nodes").await.json(), json!({"count": 1}));
    let detailed = f.admin(&f.reader.clone(), "reader", "GET", "/nodes", &json!({})).await;
    assert_eq!(detailed.status, StatusCode::OK, "{}", detailed.text);
    let nodes = detailed.json();
    assert_eq!(nodes["count"], 1);
    let (_, entry) = nodes["nodes"].as_object().and_then(|m| m.iter().next()).expect("one node");
    assert_eq!(entry["node_public_key"], keys::public_b64(&node).as_str());
    assert_eq!(entry["status"], "healthy");
    let anonymous = f.send(request("GET", "/nodes", &[("x-admin-key-id", "reader")], None)).await;
    assert_eq!(anonymous.message(), "Missing admin authentication headers");

    // The key id is the percent-decoded path segment, and that path is what is signed.
    let op = f.op.clone();
    let ghost = f.admin(&op, "op", "POST", "/admin/operator-keys/gh%6Fst/revoke", &json!({})).await;
    assert_eq!(
        (ghost.code(), ghost.message()),
        ((404, "unknown_operator_key".into()), "Unknown operator key ghost".into())
    );
    let r = f
        .admin(
            &op,
            "op",
            "POST",
            "/admin/operator-keys/rea%64er/revoke",
            &json!({"reason": "rotated"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let body = r.json();
    assert_eq!(
        (&body["key_id"], &body["reason"], &body["remaining_active_keys"]),
        (&json!("reader"), &json!("rotated"), &json!(1))
    );
    let again = f
        .admin(&op, "op", "POST", "/admin/operator-keys/reader/revoke", &json!({}))
        .await
        .json();
    assert_eq!(again, json!({"key_id": "reader", "revoked": true, "already_revoked": true}));
    let last = f.admin(&op, "op", "POST", "/admin/operator-keys/op/revoke", &json!({})).await;
    assert_eq!(last.code(), (409, "last_active_operator_key".into()));
    let gone = f.admin(&f.reader.clone(), "reader", "GET", "/nodes", &json!({})).await;
    assert_eq!(gone.message(), "Unknown admin key");
}
