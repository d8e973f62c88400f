//! The mesh authority's HTTP service (port 8443): Genesis Mesh 1.8.1's 19 core routes
//! with their check order, status codes and error codes. State goes through `State`
//! (Raft transactions), so every pod answers every route.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use super::auth::{self, Tier};
use super::config::MeshConfig;
use super::models::{self, Genesis};
use super::state::{State, Stored};
use super::timefmt::{self, isoformat};
use super::{canonical, keys, MeshError};
use crate::api::errors::ApiError;

/// An HTTP error in the NA's envelope.
pub struct Fail {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Value,
}

fn fail(status: u16, code: &'static str, message: impl Into<String>) -> Fail {
    Fail {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        code,
        message: message.into(),
        details: json!({}),
    }
}

impl From<ApiError> for Fail {
    fn from(e: ApiError) -> Fail {
        tracing::warn!(error = %e, "mesh authority: keyspace request failed");
        fail(503, "service_unavailable", format!("keyspace unavailable: {e}"))
    }
}

/// A route's answer: JSON (compact, sorted keys, like Flask's `jsonify`) or plain text.
enum Out {
    Json(Value),
    Text(String),
}

type Reply = Result<(StatusCode, Out), Fail>;

fn ok(v: Value) -> Reply {
    Ok((StatusCode::OK, Out::Json(v)))
}

fn created(v: Value) -> Reply {
    Ok((StatusCode::CREATED, Out::Json(v)))
}

/// (limit name, client) → (minute, requests in it).
type Windows = HashMap<(&'static str, String), (i64, u32)>;

/// Fixed one-minute windows per (limit, client).
#[derive(Default)]
struct Limiter {
    windows: Mutex<Windows>,
}

impl Limiter {
    fn minute() -> i64 {
        OffsetDateTime::now_utc().unix_timestamp() / 60
    }

    fn count(&self, bucket: &'static str, who: &str) -> u32 {
        let w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        match w.get(&(bucket, who.to_string())) {
            Some((m, n)) if *m == Self::minute() => *n,
            _ => 0,
        }
    }

    fn add(&self, bucket: &'static str, who: &str) -> u32 {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let minute = Self::minute();
        if w.len() > 100_000 {
            w.retain(|_, (m, _)| *m == minute);
        }
        let e = w.entry((bucket, who.to_string())).or_insert((minute, 0));
        if e.0 != minute {
            *e = (minute, 0);
        }
        e.1 += 1;
        e.1
    }

    /// Counts a request; `false` once `limit` is passed this minute.
    fn allow(&self, bucket: &'static str, who: &str, limit: u32) -> bool {
        self.add(bucket, who) <= limit
    }
}

fn too_many() -> Fail {
    fail(429, "rate_limited", "Too many requests")
}

pub struct Authority {
    cfg: MeshConfig,
    genesis: Genesis,
    na_key: SigningKey,
    operators: BTreeMap<String, (VerifyingKey, Tier)>,
    /// SHA-256 of the NA public key, hex (`/readyz`'s `signing_key.fingerprint`).
    fingerprint: String,
    state: State,
    limiter: Limiter,
    instance: String,
}

/// The genesis, the NA key and the operator keys, checked: the genesis's root signature
/// verifies, the NA key is the genesis's, every operator key parses and has a tier.
pub struct Material {
    genesis: Genesis,
    na_key: SigningKey,
    operators: BTreeMap<String, (VerifyingKey, Tier)>,
}

impl Material {
    pub fn load(cfg: &MeshConfig) -> Result<Material, MeshError> {
        let genesis = Genesis::load(&cfg.genesis_file)?;
        let na_key = keys::read_private(&cfg.na_private_key_file)?;
        if na_key.verifying_key() != genesis.na_key {
            return Err(MeshError::Genesis("NA private key does not match genesis block".into()));
        }
        let mut operators = BTreeMap::new();
        for (id, public) in &cfg.operator_public_keys {
            let key = keys::public_key(public).ok_or_else(|| MeshError::Config {
                key: "OPERATOR_PUBLIC_KEYS_JSON".into(),
                msg: format!("{id:?} is not a base64 Ed25519 public key"),
            })?;
            let tier = cfg
                .operator_key_tiers
                .get(id)
                .and_then(|t| Tier::parse(t))
                .ok_or_else(|| MeshError::Config {
                    key: "OPERATOR_KEY_TIERS_JSON".into(),
                    msg: format!("{id:?} has no valid tier"),
                })?;
            operators.insert(id.clone(), (key, tier));
        }
        Ok(Material {
            genesis,
            na_key,
            operators,
        })
    }
}

impl Authority {
    /// The authority over checked `material` (see `Material::load`).
    pub fn new(cfg: MeshConfig, material: Material, state: State) -> Authority {
        let Material {
            genesis,
            na_key,
            operators,
        } = material;
        let fingerprint: String = {
            use sha2::Digest;
            sha2::Sha256::digest(genesis.na_key.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        Authority {
            instance: format!("{}:{}", hostname(), &fingerprint[..8]),
            fingerprint,
            cfg,
            genesis,
            na_key,
            operators,
            state,
            limiter: Limiter::default(),
        }
    }

    pub fn bind(&self) -> SocketAddr {
        self.cfg.bind
    }

    fn key_id(&self) -> &str {
        &self.cfg.na_key_id
    }

    fn na_public(&self) -> String {
        keys::b64(self.genesis.na_key.as_bytes())
    }

    fn signed(&self, mut doc: Value) -> Value {
        keys::sign_document(&mut doc, &self.cfg.na_key_id, &self.na_key);
        doc
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "netsy".into())
}

/// The service; serve it with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(na: Arc<Authority>) -> axum::Router {
    axum::Router::new().fallback(dispatch).with_state(na)
}

/// The parts of a request the routes look at.
struct Req {
    method: Method,
    path: String,
    raw_query: Option<String>,
    headers: HeaderMap,
    body: Value,
    ip: String,
    host: Option<String>,
}

async fn dispatch(AxState(na): AxState<Arc<Authority>>, ConnectInfo(addr): ConnectInfo<SocketAddr>, req: Request) -> Response {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(models::uuid4);
    let result = match read_request(&na, addr.ip(), req).await {
        Ok(r) => route(&na, &r).await,
        Err(f) => Err(f),
    };
    let (status, body) = match result {
        Ok((status, out)) => (status, out),
        Err(f) => (
            f.status,
            Out::Json(json!({"error": {"code": f.code, "message": f.message, "details": f.details, "request_id": request_id}})),
        ),
    };
    let (content_type, text) = match body {
        Out::Json(v) => ("application/json", format!("{}\n", canonical::to_string(&v))),
        Out::Text(t) => ("text/plain; version=0.0.4", t),
    };
    let mut resp = (status, text).into_response();
    let h = resp.headers_mut();
    let mut set = |k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set("content-type", content_type);
    set("x-request-id", &request_id);
    set(
        "content-security-policy",
        "default-src 'self'; frame-ancestors 'none'; base-uri 'self'",
    );
    set("x-frame-options", "DENY");
    set("x-content-type-options", "nosniff");
    set("cache-control", "no-store");
    if status == StatusCode::TOO_MANY_REQUESTS {
        set("retry-after", "60");
    }
    resp
}

async fn read_request(na: &Authority, ip: IpAddr, req: Request) -> Result<Req, Fail> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(Body::new(body), na.cfg.max_request_bytes).await.map_err(|_| {
        fail(
            413,
            "request_too_large",
            format!("Request body exceeds {} bytes", na.cfg.max_request_bytes),
        )
    })?;
    let is_json = parts.headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|ct| {
        let ct = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        ct == "application/json" || ct.ends_with("+json")
    });
    let body = if is_json && !bytes.is_empty() {
        let text = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
        serde_json::from_slice::<Value>(text).map_err(|e| Fail {
            details: json!({"reason": e.to_string()}),
            ..fail(400, "invalid_json", "Request body is not valid JSON")
        })?
    } else {
        json!({})
    };
    let path = percent_encoding::percent_decode_str(parts.uri.path())
        .decode_utf8_lossy()
        .into_owned();
    Ok(Req {
        method: parts.method,
        path,
        raw_query: parts.uri.query().map(str::to_string),
        host: parts.headers.get("host").and_then(|v| v.to_str().ok()).map(str::to_string),
        headers: parts.headers,
        body,
        ip: ip.to_string(),
    })
}

async fn route(na: &Authority, r: &Req) -> Reply {
    let m = &r.method;
    match r.path.as_str() {
        "/healthz" if m == Method::GET => ok(json!({"status": "ok"})),
        "/readyz" if m == Method::GET => readyz(na).await,
        "/health" if m == Method::GET => ok(json!({
            "status": "healthy",
            "network": na.genesis.network_name,
            "version": na.genesis.network_version,
            "boundary_policies": 0,
            "boundary_policy_enforcement": "off",
            "evidence_store": "off",
        })),
        "/nodes" if m == Method::GET => nodes(na, r).await,
        "/metrics" if m == Method::GET => metrics(na).await,
        "/genesis" if m == Method::GET => ok(na.genesis.doc.clone()),
        "/sovereign.json" if m == Method::GET => ok(sovereign(na, r)),
        "/policy" if m == Method::GET => active_policy(na).await,
        "/na/key-history" if m == Method::GET => {
            if !na.limiter.allow("read", &r.ip, na.cfg.rate_read) {
                return Err(too_many());
            }
            ok(key_history(na))
        }
        "/crl" if m == Method::GET => crl(na).await.map(|s| (StatusCode::OK, Out::Json(s.value))),
        "/join" if m == Method::POST => join(na, r).await,
        "/heartbeat" if m == Method::POST => heartbeat(na, r).await,
        "/renew" if m == Method::POST => renew(na, r).await,
        "/admin/invite" if m == Method::POST => invite(na, r).await,
        "/admin/revoke" if m == Method::POST => revoke(na, r).await,
        "/admin/policy" if m == Method::POST => publish_policy(na, r).await,
        "/admin/policy/history" if m == Method::GET => policy_history(na, r).await,
        "/admin/policy/rollback" if m == Method::POST => rollback_policy(na, r).await,
        p if m == Method::POST && p.starts_with("/admin/operator-keys/") && p.ends_with("/revoke") => {
            let id = &p["/admin/operator-keys/".len()..p.len() - "/revoke".len()];
            revoke_operator_key(na, r, id).await
        }
        _ => Err(fail(404, "not_found", "The requested resource was not found")),
    }
}

// ---- health and public material ----

/// Ready when the keyspace answers a linearizable read. The genesis is loaded and the NA
/// key matches it by construction (`Material::load`).
async fn readyz(na: &Authority) -> Reply {
    let writable = na.state.get("crl").await.is_ok();
    let body = json!({
        "status": "ready",
        "database": {"backend": "netsy", "expected_schema_version": 20, "schema_version": 20, "writable": writable},
        "db_path": super::state::PREFIX,
        "ha_mode": "raft",
        "instance": na.instance,
        "na_key": {"key_sequence": 1, "state": "signing"},
        "rate_limiter": "memory",
        "reissue": {},
        "signing_key": {"fingerprint": na.fingerprint, "key_id": na.key_id(), "provider": "file"},
    });
    if writable {
        ok(body)
    } else {
        Err(Fail {
            details: json!({"keyspace": writable, "genesis_loaded": true, "na_key_matches_genesis": true}),
            ..fail(503, "service_not_ready", "Service not ready")
        })
    }
}

fn sovereign(na: &Authority, r: &Req) -> Value {
    let g = &na.genesis.doc;
    let valid_to = g["network_authority"]["valid_to"]
        .as_str()
        .and_then(timefmt::parse)
        .map(|s| isoformat(s.at));
    let endpoint = na
        .cfg
        .public_url
        .clone()
        .or_else(|| r.host.as_ref().map(|h| format!("http://{h}")))
        .unwrap_or_default();
    json!({
        "sovereign_id": na.genesis.network_name,
        "network_name": na.genesis.network_name,
        "network_version": na.genesis.network_version,
        "endpoint": endpoint,
        "network_authority": {
            "public_key": na.na_public(),
            "valid_from": g["network_authority"]["valid_from"],
            "valid_to": valid_to,
            "valid_to_enforced": false,
        },
        "signing_key": {"key_sequence": 1, "public_key": na.na_public(), "signs_until": null},
        "root_public_key": g["root_public_key"],
        "policy_manifest": g["policy_manifest"],
        "bootstrap_anchor_count": g["bootstrap_anchors"].as_array().map_or(0, Vec::len),
        "supported_surfaces": {"genesis": "/genesis", "policy": "/policy", "crl": "/crl", "key_history": "/na/key-history"},
    })
}

fn key_history(na: &Authority) -> Value {
    let g = &na.genesis.doc;
    json!({
        "sovereign_id": na.genesis.network_name,
        "root_public_key": g["root_public_key"],
        "handover_seconds": 300,
        "genesis": g,
        "successions": [],
        "keys": [{
            "key_sequence": 1, "key_id": na.key_id(), "public_key": na.na_public(), "valid_from": null,
            "valid_to": g["network_authority"]["valid_to"], "valid_to_enforced": false, "succeeded_at": null, "current": true,
        }],
        "signing_key_sequence": 1,
        "vouching_grace_seconds": 86400,
    })
}

fn stamp_of(v: &Value) -> Option<OffsetDateTime> {
    v.as_str().and_then(timefmt::parse).map(|s| s.at)
}

/// Certificates not revoked that sent a heartbeat (or joined) within 5 minutes.
async fn nodes(na: &Authority, r: &Req) -> Reply {
    let detailed = r.headers.contains_key("x-admin-key-id");
    if detailed {
        admin(na, r, Tier::Read).await?;
    }
    let now = timefmt::now();
    let mut count = 0;
    let mut detail = Map::new();
    for (_, c) in na.state.list("certs/").await? {
        let c = c.value;
        let recent = stamp_of(&c["last_heartbeat"]).is_some_and(|t| now - t < time::Duration::minutes(5));
        if c["status"] == "revoked" || !recent {
            continue;
        }
        count += 1;
        if detailed {
            let id = c["cert"]["cert_id"].as_str().unwrap_or_default().to_string();
            detail.insert(
                id,
                json!({
                    "node_public_key": c["cert"]["node_public_key"], "roles": c["cert"]["roles"], "status": c["heartbeat_status"],
                    "last_heartbeat": c["last_heartbeat"], "remote_addr": c["remote_addr"], "expires_at": c["cert"]["expires_at"],
                }),
            );
        }
    }
    if detailed {
        ok(json!({"count": count, "nodes": detail}))
    } else {
        ok(json!({"count": count}))
    }
}

async fn metrics(na: &Authority) -> Reply {
    let certs = na.state.list("certs/").await?;
    let issued = certs.len();
    let revoked = certs.iter().filter(|(_, c)| c.value["status"] == "revoked").count();
    let now = timefmt::now();
    let active = certs
        .iter()
        .filter(|(_, c)| c.value["status"] != "revoked" && stamp_of(&c.value["cert"]["expires_at"]).is_some_and(|t| t > now))
        .count();
    let crl_seq = na.state.get("crl").await?.and_then(|c| c.value["sequence"].as_u64()).unwrap_or(0);
    let policies = na.state.list("policy/versions/").await?.len();
    let text = format!(
        "# TYPE genesis_mesh_certificates_issued_total counter\ngenesis_mesh_certificates_issued_total {issued}\n\
         # TYPE genesis_mesh_certificates_active gauge\ngenesis_mesh_certificates_active {active}\n\
         # TYPE genesis_mesh_certificates_revoked_total counter\ngenesis_mesh_certificates_revoked_total {revoked}\n\
         # TYPE genesis_mesh_crl_sequence gauge\ngenesis_mesh_crl_sequence {crl_seq}\n\
         # TYPE genesis_mesh_policy_versions gauge\ngenesis_mesh_policy_versions {policies}\n\
         # TYPE genesis_mesh_audit_write_failures_total counter\ngenesis_mesh_audit_write_failures_total 0\n"
    );
    Ok((StatusCode::OK, Out::Text(text)))
}

// ---- policy ----

async fn active_policy(na: &Authority) -> Reply {
    if let Some(active) = na.state.get("policy/active").await? {
        let id = active.value["policy_id"].as_str().unwrap_or_default().to_string();
        if let Some(v) = na.state.get(&format!("policy/versions/{id}")).await? {
            return ok(v.value["policy"].clone());
        }
    }
    // None yet: build, sign and store the default, so the answer is stable.
    let g = &na.genesis;
    let id = format!("policy-{}-{}", g.network_name, g.network_version);
    let policy = na.signed(models::policy(
        &id,
        timefmt::now(),
        na.key_id(),
        "0.1.0",
        &[443, 8443],
        &["service-1".to_string(), "service-2".to_string()],
        &Map::new(),
    ));
    let version = json!({"policy_id": id, "created_at": isoformat(timefmt::now()), "policy": policy});
    let vkey = format!("policy/versions/{id}");
    na.state
        .write_if(
            &[("policy/active", 0)],
            &[("policy/active", &json!({"policy_id": id})), (&vkey, &version)],
        )
        .await?;
    // Whoever won, the stored one is the answer.
    match na.state.get(&vkey).await? {
        Some(v) => ok(v.value["policy"].clone()),
        None => ok(policy),
    }
}

async fn publish_policy(na: &Authority, r: &Req) -> Reply {
    admin(na, r, Tier::Privileged).await?;
    let b = &r.body;
    let id = b["policy_id"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("policy-{}", models::uuid4()));
    let ports: Vec<i64> = match &b["allowed_ports"] {
        Value::Null => vec![443, 8443],
        Value::Array(a) => a
            .iter()
            .map(|p| p.as_i64().filter(|p| (1..=65535).contains(p)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| fail(400, "invalid_allowed_ports", "allowed_ports must be a list of port numbers"))?,
        _ => return Err(fail(400, "invalid_allowed_ports", "allowed_ports must be a list of port numbers")),
    };
    let services: Vec<String> = match &b["allowed_services"] {
        Value::Null => vec![],
        Value::Array(a) => a
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| fail(400, "invalid_allowed_services", "allowed_services must be a list of strings"))?,
        _ => return Err(fail(400, "invalid_allowed_services", "allowed_services must be a list of strings")),
    };
    let routing = b["routing"].as_object().cloned().unwrap_or_default();
    let min_version = b["min_client_version"].as_str().unwrap_or("0.1.0");
    let policy = na.signed(models::policy(
        &id,
        timefmt::now(),
        na.key_id(),
        min_version,
        &ports,
        &services,
        &routing,
    ));
    let version = json!({"policy_id": id, "created_at": isoformat(timefmt::now()), "policy": policy});
    na.state
        .write_if(
            &[],
            &[
                (&format!("policy/versions/{id}"), &version),
                ("policy/active", &json!({"policy_id": id})),
            ],
        )
        .await?;
    created(policy)
}

async fn policy_history(na: &Authority, r: &Req) -> Reply {
    admin(na, r, Tier::Standard).await?;
    let active = na.state.get("policy/active").await?.map(|a| a.value["policy_id"].clone());
    let mut versions: Vec<(i64, Value)> = na
        .state
        .list("policy/versions/")
        .await?
        .into_iter()
        .map(|(_, v)| {
            let id = v.value["policy_id"].clone();
            (
                v.mod_revision,
                json!({"policy_id": id, "active": Some(&id) == active.as_ref(), "created_at": v.value["created_at"], "policy": v.value["policy"]}),
            )
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    ok(json!({"versions": versions.into_iter().map(|(_, v)| v).collect::<Vec<_>>()}))
}

async fn rollback_policy(na: &Authority, r: &Req) -> Reply {
    admin(na, r, Tier::Privileged).await?;
    let id = r.body["policy_id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| fail(400, "missing_policy_id", "policy_id is required"))?;
    let version = na
        .state
        .get(&format!("policy/versions/{id}"))
        .await?
        .ok_or_else(|| fail(404, "policy_not_found", format!("Policy {id} not found")))?;
    na.state.put("policy/active", &json!({"policy_id": id})).await?;
    ok(version.value["policy"].clone())
}

// ---- CRL ----

/// Revocation reasons the NA accepts.
const REASONS: [&str; 4] = ["key_compromise", "cessation_of_operation", "superseded", "unspecified"];

/// The active CRL, created (sequence 0) on first read, re-signed under the next sequence
/// when under 12 h of validity remain, and with superseded certificates past their grace
/// swept in.
async fn crl(na: &Authority) -> Result<Stored, Fail> {
    Ok(current_crl(na).await?.0)
}

/// `crl`, with the certificate records it was checked against.
async fn current_crl(na: &Authority) -> Result<(Stored, Vec<(String, Stored)>), Fail> {
    for _ in 0..5 {
        let now = timefmt::now();
        let current = na.state.get("crl").await?;
        let Some(current) = current else {
            let doc = na.signed(models::crl(&models::uuid4(), 0, now, na.key_id(), vec![]));
            na.state.write_if(&[("crl", 0)], &[("crl", &doc)]).await?;
            continue;
        };
        let certs = na.state.list("certs/").await?;
        let expired = expired_ids(&certs, now);
        let sweep: Vec<&(String, Stored)> = certs
            .iter()
            .filter(|(_, c)| c.value["status"] != "revoked" && stamp_of(&c.value["revoke_after"]).is_some_and(|t| t <= now))
            .collect();
        let next_update = stamp_of(&current.value["next_update"]).unwrap_or(now);
        if sweep.is_empty() && next_update - now > time::Duration::hours(12) {
            return Ok((current, certs));
        }
        let additions: Vec<(String, String)> = sweep
            .iter()
            .map(|(_, c)| {
                (
                    c.value["cert"]["cert_id"].as_str().unwrap_or_default().to_string(),
                    "superseded".to_string(),
                )
            })
            .collect();
        let doc = next_crl(na, &current.value, &additions, &expired, now);
        let mut writes: Vec<(String, Value)> = vec![("crl".into(), doc)];
        let mut expect: Vec<(String, i64)> = vec![("crl".into(), current.mod_revision)];
        for (k, c) in sweep {
            let mut v = c.value.clone();
            v["status"] = json!("revoked");
            v["revoked_at"] = json!(isoformat(now));
            v["revocation_reason"] = json!("superseded");
            writes.push((k.clone(), v));
            expect.push((k.clone(), c.mod_revision));
        }
        let e: Vec<(&str, i64)> = expect.iter().map(|(k, r)| (k.as_str(), *r)).collect();
        let w: Vec<(&str, &Value)> = writes.iter().map(|(k, v)| (k.as_str(), v)).collect();
        na.state.write_if(&e, &w).await?;
    }
    let current = na
        .state
        .get("crl")
        .await?
        .ok_or_else(|| fail(500, "crl_unavailable", "CRL could not be built"))?;
    Ok((current, na.state.list("certs/").await?))
}

/// Ids of certificates that expired over an hour ago (their CRL entries are pruned).
fn expired_ids(certs: &[(String, Stored)], now: OffsetDateTime) -> HashSet<String> {
    certs
        .iter()
        .filter(|(_, c)| stamp_of(&c.value["cert"]["expires_at"]).is_some_and(|t| now - t > time::Duration::hours(1)))
        .filter_map(|(_, c)| c.value["cert"]["cert_id"].as_str().map(str::to_string))
        .collect()
}

/// The successor of `current`: its entries (minus those of certificates expired over an
/// hour ago) plus `additions`, under the next sequence.
fn next_crl(na: &Authority, current: &Value, additions: &[(String, String)], expired: &HashSet<String>, now: OffsetDateTime) -> Value {
    let seq = current["sequence"].as_u64().unwrap_or(0) + 1;
    let mut entries: Vec<Value> = current["revoked_certificates"].as_array().cloned().unwrap_or_default();
    entries.retain(|e| e["certificate_id"].as_str().is_none_or(|id| !expired.contains(id)));
    for (id, reason) in additions {
        entries.push(models::revoked_entry(id, now, reason, na.key_id()));
    }
    na.signed(models::crl(&models::uuid4(), seq, now, na.key_id(), entries))
}

async fn revoke(na: &Authority, r: &Req) -> Reply {
    admin(na, r, Tier::Privileged).await?;
    let cert_id = r.body["cert_id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| fail(400, "missing_cert_id", "cert_id is required"))?
        .to_string();
    let reason = r.body["reason"].as_str().unwrap_or("unspecified").to_string();
    if !REASONS.contains(&reason.as_str()) {
        return Err(fail(
            400,
            "invalid_revocation_reason",
            format!("reason must be one of {}", REASONS.join(", ")),
        ));
    }
    let ckey = format!("certs/{cert_id}");
    for _ in 0..5 {
        let cert = na
            .state
            .get(&ckey)
            .await?
            .ok_or_else(|| fail(404, "certificate_not_found", format!("Certificate {cert_id} not found")))?;
        let (current, certs) = current_crl(na).await?;
        let entries = current.value["revoked_certificates"].as_array().cloned().unwrap_or_default();
        if entries.iter().any(|e| e["certificate_id"] == cert_id.as_str()) {
            return ok(json!({"crl_sequence": current.value["sequence"], "revoked_count": entries.len()}));
        }
        let now = timefmt::now();
        let expired = expired_ids(&certs, now);
        let doc = next_crl(na, &current.value, &[(cert_id.clone(), reason.clone())], &expired, now);
        let mut record = cert.value.clone();
        record["status"] = json!("revoked");
        record["revoked_at"] = json!(isoformat(now));
        record["revocation_reason"] = json!(reason);
        let mut writes: Vec<(String, Value)> = vec![("crl".into(), doc.clone()), (ckey.clone(), record)];
        if reason == "key_compromise" {
            let node_key = cert.value["cert"]["node_public_key"].as_str().unwrap_or_default();
            writes.push((compromised_key(node_key), json!({"cert_id": cert_id, "revoked_at": isoformat(now)})));
        }
        let w: Vec<(&str, &Value)> = writes.iter().map(|(k, v)| (k.as_str(), v)).collect();
        if na
            .state
            .write_if(&[("crl", current.mod_revision), (&ckey, cert.mod_revision)], &w)
            .await?
        {
            tracing::info!(cert_id, reason, sequence = doc["sequence"].as_u64(), "mesh: certificate revoked");
            return ok(
                json!({"crl_sequence": doc["sequence"], "revoked_count": doc["revoked_certificates"].as_array().map_or(0, Vec::len)}),
            );
        }
    }
    Err(fail(503, "conflict_retry", "The CRL changed concurrently too often; retry"))
}

fn compromised_key(node_public_key: &str) -> String {
    // Base64 may hold '/', which would nest keys: store it URL-safe.
    format!("compromised/{}", node_public_key.replace('/', "_").replace('+', "-"))
}

// ---- operator admin ----

/// Operator authentication (signature version 2), in the NA's check order; the key id.
async fn admin(na: &Authority, r: &Req, needed: Tier) -> Result<String, Fail> {
    let addr = r.ip.as_str();
    let header = |n: &str| r.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let key_id = header("x-admin-key-id");
    let per_key = format!("{addr}|{}", key_id.clone().unwrap_or_default());
    // 1. throttle
    if na.limiter.count("admin_fail_key", &per_key) >= na.cfg.rate_admin_auth_failures || na.limiter.count("admin_fail_addr", addr) >= 120 {
        return Err(fail(429, "admin_auth_throttled", "Too many failed admin authentication attempts"));
    }
    if !na.limiter.allow("admin", addr, na.cfg.rate_admin) {
        return Err(too_many());
    }
    let failed = |msg: &str| {
        na.limiter.add("admin_fail_key", &per_key);
        na.limiter.add("admin_fail_addr", addr);
        tracing::warn!(
            addr,
            key_id = per_key.split('|').nth(1),
            reason = msg,
            "mesh: admin authentication failed"
        );
        fail(401, "admin_auth_failed", msg)
    };
    let names = ["x-admin-key-id", "x-admin-timestamp", "x-admin-nonce", "x-admin-signature"];
    // 2. lengths, 3. presence
    if names.iter().any(|n| header(n).is_some_and(|v| v.len() > 256)) {
        return Err(failed("Admin authentication header too long"));
    }
    let (Some(key_id), Some(ts), Some(nonce), Some(sig)) = (key_id, header(names[1]), header(names[2]), header(names[3])) else {
        return Err(failed("Missing admin authentication headers"));
    };
    // 4. key configured and not revoked
    let Some((key, tier)) = na.operators.get(&key_id).cloned() else {
        return Err(failed("Unknown admin key"));
    };
    if na.state.get(&format!("operator-keys/revoked/{key_id}")).await?.is_some() {
        return Err(failed("Unknown admin key"));
    }
    // 5. timestamp window
    if auth::fresh(&ts, timefmt::now()) != Some(true) {
        return Err(failed("Admin request timestamp too old"));
    }
    // 6. nonce unused
    let scope = format!("admin:{key_id}");
    if na.state.get(&format!("nonces/{scope}/{nonce}")).await?.is_some() {
        return Err(failed("Admin nonce already used"));
    }
    // 7. signature
    let query = auth::query_map(r.raw_query.as_deref());
    let body = if r.method == Method::GET { json!({}) } else { r.body.clone() };
    let payload = auth::admin_payload(r.method.as_str(), &r.path, &query, &na.na_public(), &body, &key_id, &ts, &nonce);
    if !keys::verify(&key, &payload, &sig) {
        return Err(failed("Invalid admin signature"));
    }
    // 8. atomic nonce claim
    if !na.state.claim_nonce(&scope, &nonce).await? {
        return Err(failed("Admin nonce already used"));
    }
    // 9. tier
    if tier < needed {
        return Err(fail(
            403,
            "insufficient_operator_tier",
            format!("Operator key {key_id} lacks the required tier"),
        ));
    }
    Ok(key_id)
}

const ROLE_PREFIXES: [&str; 5] = ["role:anchor", "role:bridge", "role:client", "role:operator", "role:service:"];

fn valid_role(r: &str) -> bool {
    ROLE_PREFIXES.iter().any(|p| r.starts_with(p))
}

/// A positive integer field, or `default` when absent.
fn positive(v: &Value, default: i64) -> Option<i64> {
    match v {
        Value::Null => Some(default),
        Value::Number(n) => n.as_i64().filter(|n| *n > 0),
        _ => None,
    }
}

async fn invite(na: &Authority, r: &Req) -> Reply {
    let b = &r.body;
    let edge = !b["node_sovereign_id"].is_null() || !b["executor_resource_prefix"].is_null();
    admin(na, r, if edge { Tier::Privileged } else { Tier::Standard }).await?;
    let roles: Vec<String> = match &b["roles"] {
        Value::Null => vec!["role:client".into()],
        Value::Array(a) => a.iter().map(|x| x.as_str().unwrap_or("").to_string()).collect(),
        _ => return Err(fail(400, "invalid_role", "roles must be a list")),
    };
    if let Some(bad) = roles.iter().find(|r| !valid_role(r)) {
        return Err(fail(400, "invalid_role", format!("Invalid role: {bad}")));
    }
    let max_validity = positive(&b["max_validity_hours"], 168)
        .ok_or_else(|| fail(400, "invalid_max_validity_hours", "max_validity_hours must be a positive integer"))?;
    let expiry = positive(&b["token_expiry_hours"], 24)
        .ok_or_else(|| fail(400, "invalid_token_expiry_hours", "token_expiry_hours must be a positive integer"))?;
    let now = timefmt::now();
    let token = models::uuid4();
    let expires_at = now + time::Duration::hours(expiry);
    let record = json!({
        "token_id": token, "roles": roles, "max_validity_hours": max_validity,
        "created_at": isoformat(now), "expires_at": isoformat(expires_at),
        "used_at": null, "used_by_key": null, "recipient_public_key": b["recipient_public_key"],
    });
    na.state
        .write_if(&[(&format!("invites/{token}"), 0)], &[(&format!("invites/{token}"), &record)])
        .await?;
    created(json!({"token_id": token, "expires_at": isoformat(expires_at)}))
}

async fn revoke_operator_key(na: &Authority, r: &Req, key_id: &str) -> Reply {
    admin(na, r, Tier::Privileged).await?;
    if !na.operators.contains_key(key_id) {
        return Err(fail(404, "unknown_operator_key", format!("Unknown operator key {key_id}")));
    }
    let k = format!("operator-keys/revoked/{key_id}");
    if na.state.get(&k).await?.is_some() {
        return ok(json!({"key_id": key_id, "revoked": true, "already_revoked": true}));
    }
    let revoked = na.state.list("operator-keys/revoked/").await?.len();
    let remaining = na.operators.len() - revoked - 1;
    if remaining == 0 {
        return Err(fail(
            409,
            "last_active_operator_key",
            "Refusing to revoke the last active operator key",
        ));
    }
    let now = isoformat(timefmt::now());
    let reason = r.body["reason"].as_str().unwrap_or("unspecified");
    if !na
        .state
        .write_if(&[(&k, 0)], &[(&k, &json!({"revoked_at": now, "reason": reason}))])
        .await?
    {
        return ok(json!({"key_id": key_id, "revoked": true, "already_revoked": true}));
    }
    ok(json!({"key_id": key_id, "revoked": true, "revoked_at": now, "reason": reason, "remaining_active_keys": remaining}))
}

// ---- enrollment ----

/// Node body authentication: timestamp window, nonce in `scope`, signature; the nonce is
/// claimed last (atomically).
async fn node_auth(na: &Authority, b: &Value, key: &VerifyingKey, scope: &str) -> Result<(), Fail> {
    let missing: Vec<&str> = ["timestamp", "nonce", "signature"]
        .into_iter()
        .filter(|f| b[*f].as_str().is_none())
        .collect();
    if !missing.is_empty() {
        return Err(fail(
            401,
            "node_auth_failed",
            format!("Missing authentication fields: {}", missing.join(", ")),
        ));
    }
    let ts = b["timestamp"].as_str().unwrap_or_default();
    match auth::fresh(ts, timefmt::now()) {
        None => return Err(fail(401, "node_auth_failed", "Invalid timestamp format")),
        Some(false) => {
            return Err(fail(
                401,
                "node_auth_failed",
                format!("Request timestamp too old (window is {} seconds)", auth::WINDOW_SECS),
            ))
        }
        Some(true) => {}
    }
    let nonce = b["nonce"].as_str().unwrap_or_default();
    if na.state.get(&format!("nonces/{scope}/{nonce}")).await?.is_some() {
        return Err(fail(401, "node_auth_failed", "Nonce already used (replay detected)"));
    }
    if !auth::node_signature_valid(b, key) {
        return Err(fail(401, "node_auth_failed", "Invalid signature"));
    }
    if !na.state.claim_nonce(scope, nonce).await? {
        return Err(fail(401, "node_auth_failed", "Nonce already used (replay detected)"));
    }
    Ok(())
}

fn node_key(b: &Value) -> Result<(String, VerifyingKey), Fail> {
    let s = b["node_public_key"].as_str().unwrap_or_default().to_string();
    let key = keys::public_key(&s).ok_or_else(|| fail(401, "node_auth_failed", "Invalid node public key"))?;
    Ok((s, key))
}

/// Issues and stores a certificate record.
fn issue(
    na: &Authority,
    node_public_key: &str,
    roles: &[String],
    hours: i64,
    max_validity: i64,
    remote: &str,
    renewed_from: Option<&str>,
) -> (String, Value, Value) {
    let now = timefmt::now();
    let cert_id = models::uuid4();
    let cert = na.signed(models::certificate(
        &cert_id,
        node_public_key,
        &na.genesis.network_name,
        roles,
        now,
        now + time::Duration::hours(hours),
        na.key_id(),
    ));
    let record = json!({
        "cert": cert, "status": "issued", "last_heartbeat": isoformat(now), "heartbeat_status": "healthy",
        "remote_addr": remote, "max_validity_hours": max_validity, "renewed_from": renewed_from,
        "revoked_at": null, "revocation_reason": null, "revoke_after": null,
    });
    (cert_id, cert, record)
}

async fn join(na: &Authority, r: &Req) -> Reply {
    let b = &r.body;
    if !na.limiter.allow("join", &r.ip, 10) || na.limiter.count("join_token_fail", &r.ip) >= 3 {
        return Err(too_many());
    }
    let validity = positive(&b["validity_hours"], 168)
        .ok_or_else(|| fail(400, "invalid_validity_hours", "validity_hours must be a positive integer"))?;
    if b["node_public_key"].as_str().is_none_or(str::is_empty) {
        return Err(fail(400, "missing_node_public_key", "node_public_key is required"));
    }
    let Some(token) = b["invite_token"].as_str().filter(|t| !t.is_empty()) else {
        return Err(fail(403, "missing_invite_token", "invite_token is required"));
    };
    let bad_token = || {
        na.limiter.add("join_token_fail", &r.ip);
        fail(403, "invalid_invite_token", "Invalid or expired invite token")
    };
    let ikey = format!("invites/{token}");
    if token.contains('/') {
        return Err(bad_token());
    }
    let invite = na.state.get(&ikey).await?.ok_or_else(bad_token)?;
    let now = timefmt::now();
    let unexpired = stamp_of(&invite.value["expires_at"]).is_some_and(|t| t > now);
    if !invite.value["used_at"].is_null() || !unexpired {
        return Err(bad_token());
    }
    let (node_public_key, key) = node_key(b)?;
    node_auth(na, b, &key, &format!("join:{node_public_key}")).await?;
    if na.state.get(&compromised_key(&node_public_key)).await?.is_some() {
        return Err(fail(403, "node_key_compromised", "This node key was revoked for key compromise"));
    }
    // A token bound to another key is refused without being consumed.
    if let Some(recipient) = invite.value["recipient_public_key"].as_str() {
        if recipient != node_public_key {
            return Err(bad_token());
        }
    }
    let roles: Vec<String> = invite.value["roles"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if roles.is_empty() || roles.iter().any(|r| !valid_role(r)) {
        return Err(fail(400, "invalid_role", "The invite's roles are invalid"));
    }
    let max_validity = invite.value["max_validity_hours"].as_i64().unwrap_or(168);
    let (cert_id, cert, record) = issue(na, &node_public_key, &roles, validity.min(max_validity), max_validity, &r.ip, None);
    let mut used = invite.value.clone();
    used["used_at"] = json!(isoformat(now));
    used["used_by_key"] = json!(node_public_key);
    let ckey = format!("certs/{cert_id}");
    // The token is consumed and the certificate stored in one transaction, if nobody
    // consumed the token first.
    if !na
        .state
        .write_if(&[(&ikey, invite.mod_revision)], &[(&ikey, &used), (&ckey, &record)])
        .await?
    {
        return Err(bad_token());
    }
    tracing::info!(cert_id, roles = ?roles, "mesh: node enrolled");
    created(cert)
}

/// The checks heartbeat and renew share: identity, known, key, not revoked, signature,
/// validity. The stored record.
async fn check_certificate(na: &Authority, b: &Value) -> Result<(String, Stored), Fail> {
    let (Some(cert_id), Some(node_public_key)) = (b["cert_id"].as_str(), b["node_public_key"].as_str()) else {
        return Err(fail(
            400,
            "missing_certificate_identity",
            "cert_id and node_public_key are required",
        ));
    };
    if cert_id.contains('/') {
        return Err(fail(403, "certificate_not_found", "Certificate not found"));
    }
    let ckey = format!("certs/{cert_id}");
    let stored = na
        .state
        .get(&ckey)
        .await?
        .ok_or_else(|| fail(403, "certificate_not_found", "Certificate not found"))?;
    if stored.value["cert"]["node_public_key"] != node_public_key {
        return Err(fail(
            403,
            "certificate_key_mismatch",
            "node_public_key does not match the certificate",
        ));
    }
    if stored.value["status"] == "revoked" {
        return Err(fail(403, "certificate_revoked", "Certificate has been revoked"));
    }
    let (pk, key) = node_key(b)?;
    node_auth(na, b, &key, &format!("node:{pk}")).await?;
    let now = timefmt::now();
    if stamp_of(&stored.value["cert"]["issued_at"]).is_some_and(|t| t > now + time::Duration::minutes(5)) {
        return Err(fail(403, "certificate_not_yet_valid", "Certificate is not yet valid"));
    }
    if stamp_of(&stored.value["cert"]["expires_at"]).is_some_and(|t| t < now) {
        return Err(fail(403, "certificate_expired", "Certificate has expired"));
    }
    if stamp_of(&stored.value["revoke_after"]).is_some_and(|t| t <= now) {
        return Err(fail(
            403,
            "certificate_superseded",
            "Certificate was renewed and its grace period is over",
        ));
    }
    Ok((ckey, stored))
}

async fn heartbeat(na: &Authority, r: &Req) -> Reply {
    if !na.limiter.allow("node", &r.ip, na.cfg.rate_node) {
        return Err(too_many());
    }
    let (ckey, stored) = check_certificate(na, &r.body).await?;
    let mut record = stored.value;
    let now = timefmt::now();
    record["last_heartbeat"] = json!(isoformat(now));
    record["heartbeat_status"] = r.body["status"].clone();
    record["remote_addr"] = json!(r.ip);
    na.state.put(&ckey, &record).await?;
    ok(json!({"ack": true, "server_time": isoformat(now)}))
}

async fn renew(na: &Authority, r: &Req) -> Reply {
    if !na.limiter.allow("node", &r.ip, na.cfg.rate_node) {
        return Err(too_many());
    }
    let b = &r.body;
    let (ckey, stored) = check_certificate(na, b).await?;
    let roles: Vec<String> = stored.value["cert"]["roles"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if let Some(asked) = b["roles"].as_array() {
        let asked: std::collections::BTreeSet<&str> = asked.iter().filter_map(Value::as_str).collect();
        let have: std::collections::BTreeSet<&str> = roles.iter().map(String::as_str).collect();
        if asked != have {
            return Err(fail(
                403,
                "renewal_role_change_forbidden",
                "Renewal cannot change the certificate's roles",
            ));
        }
    }
    let max_validity = stored.value["max_validity_hours"].as_i64().unwrap_or(168);
    let validity = positive(&b["validity_hours"], max_validity)
        .ok_or_else(|| fail(400, "invalid_validity_hours", "validity_hours must be a positive integer"))?;
    let pk = b["node_public_key"].as_str().unwrap_or_default();
    let old_id = stored.value["cert"]["cert_id"].as_str().unwrap_or_default().to_string();
    let (cert_id, cert, record) = issue(na, pk, &roles, validity.min(max_validity), max_validity, &r.ip, Some(&old_id));
    let mut old = stored.value.clone();
    old["revoke_after"] = json!(isoformat(timefmt::now() + time::Duration::seconds(na.cfg.renewal_grace_secs)));
    let nkey = format!("certs/{cert_id}");
    if !na
        .state
        .write_if(&[(&ckey, stored.mod_revision)], &[(&ckey, &old), (&nkey, &record)])
        .await?
    {
        return Err(fail(409, "concurrent_renewal", "The certificate changed concurrently; retry"));
    }
    created(cert)
}

#[cfg(test)]
mod tests;
