//! The mesh authority's wire forms (src/mesh): canonical JSON (the bytes every signature
//! covers), timestamps, signature envelopes, the genesis, query strings, and every
//! route's request parsing through the HTTP service itself (over a bare MVCC store).
//! Input: a selector byte, then
//! - 0: JSON; its canonical form is ASCII and a fixed point, and reads back to the same value;
//! - 1: a timestamp; what parses re-emits to text that parses to the same instant and offset;
//! - 2: a JSON document; signing it and reading the signed form back verifies, as a
//!   document and as a node body; a genesis that verifies verifies again in its normal form;
//! - 3: a query string and a JSON body, signed as an admin request and checked;
//! - 4: requests to the service, separated by "\n---\n", each
//!   `flags route [suffix-or-query] \n body` (see `Req::parse`); the router never panics,
//!   answers JSON (text on `/metrics`), and a refusal changes nothing in the keyspace.
#![no_main]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use netsy::config::MeshConfig;
use netsy::mesh::models::Genesis;
use netsy::mesh::service::{router, Authority, Material};
use netsy::mesh::state::{State, PREFIX};
use netsy::mesh::{auth, canonical, keys, timefmt};
use netsy::proto::etcdserverpb::RangeRequest;
use netsy_fuzz::{scratch, select, MemKeyspace};
use serde_json::{json, Value};
use tower::ServiceExt;

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn canonical_json(bytes: &[u8]) {
    let Ok(v) = canonical::from_slice(bytes) else { return };
    let text = canonical::to_string(&v);
    assert!(text.is_ascii(), "canonical JSON is ASCII: {text}");
    let back = canonical::from_slice(text.as_bytes()).unwrap_or_else(|e| panic!("canonical JSON reads back ({e}): {text}"));
    assert_eq!(back, v, "canonical JSON reads back to the same value: {text}");
    assert_eq!(canonical::to_string(&back), text, "canonical JSON is a fixed point");
}

fn timestamp(bytes: &[u8]) {
    let Ok(s) = std::str::from_utf8(bytes) else { return };
    let now = timefmt::now();
    let fresh = auth::fresh(s, now);
    let Some(stamp) = timefmt::parse(s) else {
        assert!(fresh.is_none());
        return;
    };
    let again = timefmt::pydantic_stamp(&stamp);
    let back = timefmt::parse(&again).unwrap_or_else(|| panic!("{again:?} (from {s:?}) does not parse"));
    assert_eq!(back, stamp, "{s:?} re-emitted as {again:?}");
    assert_eq!(back.at.offset(), stamp.at.offset(), "{s:?} re-emitted as {again:?}");
    for utc in [timefmt::pydantic(stamp.at), timefmt::isoformat(stamp.at)] {
        let t = timefmt::parse(&utc).unwrap_or_else(|| panic!("{utc:?} does not parse"));
        assert_eq!(t.at, stamp.at, "{s:?} as {utc:?}");
    }
}

fn envelopes(bytes: &[u8]) {
    let Ok(v) = canonical::from_slice(bytes) else { return };
    let (signer, verifier) = (key(3), key(3).verifying_key());
    let _ = keys::verify_document(&v, &verifier);
    let _ = auth::node_signature_valid(&v, &verifier);
    if let Ok(g) = Genesis::from_value(&v) {
        let again = Genesis::from_value(&g.doc).expect("a genesis in its normal form verifies");
        assert_eq!(again.doc, g.doc, "normalising is idempotent");
    }
    if !v.is_object() {
        return;
    }
    // Signed here, sent as text, read back as the receiver reads it.
    let mut doc = v.clone();
    keys::sign_document(&mut doc, "fuzz", &signer);
    let received = canonical::from_slice(doc.to_string().as_bytes()).expect("a signed document reads back");
    assert!(keys::verify_document(&received, &verifier), "a signed document verifies: {doc}");
    let mut body = v;
    auth::sign_node_body(&mut body, &signer);
    let received = canonical::from_slice(body.to_string().as_bytes()).expect("a signed body reads back");
    assert!(auth::node_signature_valid(&received, &verifier), "a signed body verifies: {body}");
}

fn admin_signature(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let (query, body) = text.split_once('\n').unwrap_or((&text, "{}"));
    let Ok(body) = canonical::from_slice(body.as_bytes()) else { return };
    let q = auth::query_map(Some(query));
    let op = key(4);
    let h = auth::sign_admin(&op, "op", "post", "/admin/invite", &q, "audience", &body);
    let body = canonical::from_slice(body.to_string().as_bytes()).expect("the body reads back");
    let payload = auth::admin_payload(
        "POST",
        "/admin/invite",
        &auth::query_map(Some(query)),
        "audience",
        &body,
        "op",
        &h.timestamp,
        &h.nonce,
    );
    assert!(
        keys::verify(&op.verifying_key(), &payload, &h.signature),
        "an admin signature verifies"
    );
    assert_eq!(auth::fresh(&h.timestamp, timefmt::now()), Some(true));
}

// ---- the service ----

struct Service {
    runtime: tokio::runtime::Runtime,
    app: axum::Router,
    keyspace: MemKeyspace,
    audience: String,
}

fn service() -> &'static Service {
    static SERVICE: OnceLock<Service> = OnceLock::new();
    SERVICE.get_or_init(|| {
        let dir = scratch().join("mesh");
        std::fs::create_dir_all(&dir).expect("dir");
        let (root, na) = (key(1), key(2));
        let genesis = Genesis::create("FUZZ", &root, "root", &na, timefmt::now()).expect("genesis");
        std::fs::write(dir.join("genesis.json"), genesis.doc.to_string()).expect("write genesis");
        keys::write_pair(&dir, "na", "na-fuzz", &na).expect("na key");
        let cfg = MeshConfig {
            bind: "127.0.0.1:0".parse().expect("addr"),
            genesis_file: dir.join("genesis.json"),
            na_private_key_file: dir.join("na.key"),
            na_key_id: "na-fuzz".into(),
            operator_public_keys: BTreeMap::from([
                ("op".into(), keys::public_b64(&key(4))),
                ("reader".into(), keys::public_b64(&key(5))),
            ]),
            operator_key_tiers: BTreeMap::from([("op".into(), "privileged".into()), ("reader".into(), "read".into())]),
            renewal_grace_secs: 900,
            max_request_bytes: 64 << 10,
            rate_admin: u32::MAX,
            rate_admin_auth_failures: u32::MAX,
            rate_read: u32::MAX,
            rate_node: u32::MAX,
            public_url: None,
        };
        let material = Material::load(&cfg).expect("material");
        let keyspace = MemKeyspace::new();
        let authority = Arc::new(Authority::new(cfg, material, State::over(keyspace.clone())));
        Service {
            runtime: tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"),
            app: router(authority),
            keyspace,
            audience: keys::public_b64(&na),
        }
    })
}

const ROUTES: [(&str, &str); 19] = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/health"),
    ("GET", "/nodes"),
    ("GET", "/metrics"),
    ("GET", "/genesis"),
    ("GET", "/sovereign.json"),
    ("GET", "/na/key-history"),
    ("GET", "/policy"),
    ("GET", "/crl"),
    ("POST", "/join"),
    ("POST", "/heartbeat"),
    ("POST", "/renew"),
    ("POST", "/admin/invite"),
    ("POST", "/admin/revoke"),
    ("POST", "/admin/policy"),
    ("GET", "/admin/policy/history"),
    ("POST", "/admin/policy/rollback"),
    ("POST", "/admin/operator-keys/"),
];

/// One request: `flags` (bit 0: JSON content type; 1: signed by the privileged operator;
/// 2: by the read-only one; 3: a node body, signed, with a fresh timestamp and nonce;
/// 4: a UTF-8 BOM; 5: another method), a route (past the list: the first line is the
/// path), the first line appended to the route's path (a query, an operator key id),
/// and the body. `$name` in the body stands for the last `name` a reply held (such as
/// `$token_id`, `$cert_id`).
struct Req {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req {
    fn parse(chunk: &[u8], seen: &BTreeMap<String, String>) -> Option<Req> {
        let (&flags, rest) = chunk.split_first()?;
        let (&route, rest) = rest.split_first()?;
        let text = String::from_utf8_lossy(rest);
        let (line, body) = text.split_once('\n').unwrap_or((&text, ""));
        let (method, mut path) = match ROUTES.get(route as usize % 24) {
            Some((m, p)) => (m.to_string(), format!("{p}{line}")),
            None => ("POST".to_string(), line.to_string()),
        };
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        let method = if flags & 32 != 0 {
            ["HEAD", "PUT", "DELETE", "GET"][(route % 4) as usize].to_string()
        } else {
            method
        };
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (path, String::new()),
        };
        let mut body = body.to_string();
        for (name, value) in seen.iter().rev() {
            body = body.replace(&format!("${name}"), value);
        }
        let mut headers = vec![];
        // Signed bodies are JSON.
        if flags & 0b1111 != 0 {
            headers.push(("content-type".to_string(), "application/json".to_string()));
        }
        let mut raw = body.into_bytes();
        if flags & 8 != 0 {
            let mut v: Value = canonical::from_slice(&raw).ok()?;
            if !v.is_object() {
                return None;
            }
            let node = key(6);
            v["node_public_key"] = json!(keys::public_b64(&node));
            v["timestamp"] = json!(timefmt::isoformat(timefmt::now()));
            v["nonce"] = json!(netsy::mesh::models::uuid4());
            auth::sign_node_body(&mut v, &node);
            raw = v.to_string().into_bytes();
        }
        if flags & 6 != 0 {
            let (id, k) = if flags & 2 != 0 { ("op", key(4)) } else { ("reader", key(5)) };
            let signed_body = if raw.is_empty() {
                json!({})
            } else {
                canonical::from_slice(&raw).ok()?
            };
            let decoded = percent_encoding_decode(&path);
            let h = auth::sign_admin(
                &k,
                id,
                &method,
                &decoded,
                &auth::query_map(Some(&query)),
                &service().audience,
                &signed_body,
            );
            headers.extend(h.pairs().into_iter().map(|(k, v)| (k.to_string(), v)));
        }
        if flags & 16 != 0 {
            let mut bom = b"\xef\xbb\xbf".to_vec();
            bom.extend(raw);
            raw = bom;
        }
        Some(Req {
            method,
            path,
            query,
            headers,
            body: raw,
        })
    }
}

fn percent_encoding_decode(path: &str) -> String {
    percent_encoding::percent_decode_str(path).decode_utf8_lossy().into_owned()
}

/// The keyspace but the nonces (claimed before a refusal can be known) and leases.
fn state(ks: &MemKeyspace) -> Vec<(Vec<u8>, i64)> {
    let start = PREFIX.as_bytes().to_vec();
    let mut end = start.clone();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let req = RangeRequest {
        key: start,
        range_end: end,
        ..Default::default()
    };
    let kvs = netsy_fuzz::range(ks, &req);
    kvs.into_iter()
        .filter(|(k, _)| !k.starts_with(format!("{PREFIX}nonces/").as_bytes()))
        .collect()
}

fn requests(bytes: &[u8]) {
    let svc = service();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for chunk in split(bytes, b"\n---\n").into_iter().take(8) {
        let Some(req) = Req::parse(chunk, &seen) else { continue };
        let uri = if req.query.is_empty() {
            req.path.clone()
        } else {
            format!("{}?{}", req.path, req.query)
        };
        let mut builder = Request::builder()
            .method(req.method.as_str())
            .uri(uri.as_str())
            .header("host", "na.test:8443");
        for (k, v) in &req.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let Ok(mut request) = builder.body(Body::from(req.body)) else {
            continue;
        };
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        let before = state(&svc.keyspace);
        let (status, json, text) = svc.runtime.block_on(async {
            let resp = svc.app.clone().oneshot(request).await.expect("the router is infallible");
            let status = resp.status();
            let json = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/json"));
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
            (status, json, bytes)
        });
        if status.is_client_error() {
            assert_eq!(
                state(&svc.keyspace),
                before,
                "a refusal ({status}) changed the keyspace: {}",
                String::from_utf8_lossy(&text)
            );
        }
        // Text answers (`/metrics`) and HEAD's empty body aside, every answer is JSON.
        if (status.is_success() && !json) || req.method == "HEAD" {
            continue;
        }
        let reply: Value = serde_json::from_slice(&text).unwrap_or_else(|e| {
            panic!(
                "{} {} answered {status} with non-JSON ({e}): {:?}",
                req.method,
                req.path,
                String::from_utf8_lossy(&text)
            )
        });
        if status.is_client_error() || status.is_server_error() {
            assert!(reply["error"]["code"].is_string(), "a refusal has the NA's envelope: {reply}");
        }
        collect(&reply, &mut seen);
    }
}

/// Every `*_id` string field of a reply.
fn collect(v: &Value, seen: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match v {
                    Value::String(s) if k.ends_with("_id") => {
                        seen.insert(k.clone(), s.clone());
                    }
                    _ => collect(v, seen),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect(v, seen)),
        _ => {}
    }
}

fn split<'a>(bytes: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some(i) = rest.windows(sep.len()).position(|w| w == sep) {
        out.push(&rest[..i]);
        rest = &rest[i + sep.len()..];
    }
    out.push(rest);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((kind, bytes)) = select(data, 5) else { return };
    match kind {
        0 => canonical_json(bytes),
        1 => timestamp(bytes),
        2 => envelopes(bytes),
        3 => admin_signature(bytes),
        _ => requests(bytes),
    }
});
