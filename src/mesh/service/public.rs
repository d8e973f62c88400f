//! Health and public trust material: `/healthz`, `/readyz`, `/health`, `/nodes`,
//! `/metrics`, `/genesis`, `/sovereign.json`, `/na/key-history`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use serde::Serialize;
use serde_json::Value;

use super::admin;
use super::reply::{ok, Json, Metrics};
use super::request::{Body, Head};
use super::{Authority, Error};
use crate::mesh::auth::Tier;
use crate::mesh::timefmt::{self, isoformat};

type Answer<T> = Result<Json<T>, Error>;

/// `{"status": …}`.
#[derive(Serialize)]
pub(super) struct Status {
    status: &'static str,
}

pub(super) async fn healthz(_: Body) -> Json<Status> {
    ok(Status { status: "ok" })
}

#[derive(Serialize)]
pub(super) struct Ready {
    status: &'static str,
    database: Database,
    db_path: &'static str,
    ha_mode: &'static str,
    instance: String,
    na_key: NaKey,
    rate_limiter: &'static str,
    reissue: BTreeMap<String, Value>,
    signing_key: SigningKey,
}

#[derive(Serialize)]
struct Database {
    backend: &'static str,
    expected_schema_version: u32,
    schema_version: u32,
    writable: bool,
}

#[derive(Serialize)]
struct NaKey {
    key_sequence: u32,
    state: &'static str,
}

#[derive(Serialize)]
struct SigningKey {
    fingerprint: String,
    key_id: String,
    provider: &'static str,
}

/// Ready when the keyspace answers a linearizable read. The genesis is loaded and the NA
/// key matches it by construction (`Material::load`).
pub(super) async fn readyz(State(na): State<Arc<Authority>>, _: Body) -> Answer<Ready> {
    if !na.check_ready().await {
        return Err(Error::NotReady);
    }
    Ok(ok(Ready {
        status: "ready",
        database: Database {
            backend: "netsy",
            expected_schema_version: 20,
            schema_version: 20,
            writable: true,
        },
        db_path: crate::mesh::state::PREFIX,
        ha_mode: "raft",
        instance: na.instance.clone(),
        na_key: NaKey {
            key_sequence: 1,
            state: "signing",
        },
        rate_limiter: "memory",
        reissue: BTreeMap::new(),
        signing_key: SigningKey {
            fingerprint: na.fingerprint.clone(),
            key_id: na.key_id().to_string(),
            provider: "file",
        },
    }))
}

#[derive(Serialize)]
pub(super) struct Health {
    status: &'static str,
    network: String,
    version: String,
    boundary_policies: u32,
    boundary_policy_enforcement: &'static str,
    evidence_store: &'static str,
}

pub(super) async fn health(State(na): State<Arc<Authority>>, _: Body) -> Json<Health> {
    ok(Health {
        status: "healthy",
        network: na.genesis.network_name.clone(),
        version: na.genesis.network_version.clone(),
        boundary_policies: 0,
        boundary_policy_enforcement: "off",
        evidence_store: "off",
    })
}

/// `/nodes`: the count, and with a read-tier admin signature each node.
#[derive(Serialize)]
pub(super) struct Nodes {
    count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<BTreeMap<String, NodeEntry>>,
}

/// Copied from the node's certificate record.
#[derive(Serialize)]
struct NodeEntry {
    node_public_key: Value,
    roles: Value,
    status: Value,
    last_heartbeat: Value,
    remote_addr: Value,
    expires_at: Value,
}

pub(super) fn stamp_of(v: &Value) -> Option<time::OffsetDateTime> {
    v.as_str().and_then(timefmt::parse).map(|s| s.at)
}

/// Certificates not revoked that sent a heartbeat (or joined) within 5 minutes.
pub(super) async fn nodes(
    State(na): State<Arc<Authority>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    head: Head,
    body: Body,
) -> Answer<Nodes> {
    let detailed = head.headers.contains_key("x-admin-key-id");
    if detailed {
        admin::authenticate(&na, &addr.ip().to_string(), &head, &body.raw, Tier::Read).await?;
    }
    let now = timefmt::now();
    let mut count = 0;
    let mut detail = BTreeMap::new();
    for (_, c) in na.state.list("certs/").await? {
        let c = c.value;
        let recent = stamp_of(&c["last_heartbeat"]).is_some_and(|t| now - t < time::Duration::minutes(5));
        if c["status"] == "revoked" || !recent {
            continue;
        }
        count += 1;
        if detailed {
            let cert = &c["cert"];
            detail.insert(
                cert["cert_id"].as_str().unwrap_or_default().to_string(),
                NodeEntry {
                    node_public_key: cert["node_public_key"].clone(),
                    roles: cert["roles"].clone(),
                    status: c["heartbeat_status"].clone(),
                    last_heartbeat: c["last_heartbeat"].clone(),
                    remote_addr: c["remote_addr"].clone(),
                    expires_at: cert["expires_at"].clone(),
                },
            );
        }
    }
    Ok(ok(Nodes {
        count,
        nodes: detailed.then_some(detail),
    }))
}

pub(super) async fn metrics(State(na): State<Arc<Authority>>, _: Body) -> Result<Metrics, Error> {
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
    Ok(Metrics(format!(
        "# TYPE genesis_mesh_certificates_issued_total counter\ngenesis_mesh_certificates_issued_total {issued}\n\
         # TYPE genesis_mesh_certificates_active gauge\ngenesis_mesh_certificates_active {active}\n\
         # TYPE genesis_mesh_certificates_revoked_total counter\ngenesis_mesh_certificates_revoked_total {revoked}\n\
         # TYPE genesis_mesh_crl_sequence gauge\ngenesis_mesh_crl_sequence {crl_seq}\n\
         # TYPE genesis_mesh_policy_versions gauge\ngenesis_mesh_policy_versions {policies}\n\
         # TYPE genesis_mesh_audit_write_failures_total counter\ngenesis_mesh_audit_write_failures_total 0\n"
    )))
}

/// The genesis block, signatures included, as loaded.
pub(super) async fn genesis(State(na): State<Arc<Authority>>, _: Body) -> Json<Value> {
    ok(na.genesis.doc.clone())
}

#[derive(Serialize)]
pub(super) struct Sovereign {
    sovereign_id: String,
    network_name: String,
    network_version: String,
    endpoint: String,
    network_authority: NetworkAuthority,
    signing_key: CurrentKey,
    root_public_key: Value,
    policy_manifest: Value,
    bootstrap_anchor_count: usize,
    supported_surfaces: Surfaces,
}

#[derive(Serialize)]
struct NetworkAuthority {
    public_key: String,
    valid_from: Value,
    /// In `isoformat()` form.
    valid_to: Option<String>,
    valid_to_enforced: bool,
}

#[derive(Serialize)]
struct CurrentKey {
    key_sequence: u32,
    public_key: String,
    signs_until: Option<String>,
}

#[derive(Serialize)]
struct Surfaces {
    genesis: &'static str,
    policy: &'static str,
    crl: &'static str,
    key_history: &'static str,
}

pub(super) async fn sovereign(State(na): State<Arc<Authority>>, head: Head, _: Body) -> Json<Sovereign> {
    let g = &na.genesis.doc;
    let endpoint = na
        .cfg
        .public_url
        .clone()
        .or_else(|| head.header("host").map(|h| format!("http://{h}")))
        .unwrap_or_default();
    ok(Sovereign {
        sovereign_id: na.genesis.network_name.clone(),
        network_name: na.genesis.network_name.clone(),
        network_version: na.genesis.network_version.clone(),
        endpoint,
        network_authority: NetworkAuthority {
            public_key: na.na_public(),
            valid_from: g["network_authority"]["valid_from"].clone(),
            valid_to: stamp_of(&g["network_authority"]["valid_to"]).map(isoformat),
            valid_to_enforced: false,
        },
        signing_key: CurrentKey {
            key_sequence: 1,
            public_key: na.na_public(),
            signs_until: None,
        },
        root_public_key: g["root_public_key"].clone(),
        policy_manifest: g["policy_manifest"].clone(),
        bootstrap_anchor_count: g["bootstrap_anchors"].as_array().map_or(0, Vec::len),
        supported_surfaces: Surfaces {
            genesis: "/genesis",
            policy: "/policy",
            crl: "/crl",
            key_history: "/na/key-history",
        },
    })
}

#[derive(Serialize)]
pub(super) struct KeyHistory {
    sovereign_id: String,
    root_public_key: Value,
    handover_seconds: u32,
    genesis: Value,
    successions: Vec<Value>,
    keys: Vec<HistoricKey>,
    signing_key_sequence: u32,
    vouching_grace_seconds: u32,
}

#[derive(Serialize)]
struct HistoricKey {
    key_sequence: u32,
    key_id: String,
    public_key: String,
    valid_from: Option<String>,
    valid_to: Value,
    valid_to_enforced: bool,
    succeeded_at: Option<String>,
    current: bool,
}

pub(super) async fn key_history(
    State(na): State<Arc<Authority>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    _: Body,
) -> Answer<KeyHistory> {
    if !na.limiter.allow("read", &addr.ip().to_string(), na.cfg.rate_read) {
        return Err(Error::RateLimited);
    }
    let g = &na.genesis.doc;
    Ok(ok(KeyHistory {
        sovereign_id: na.genesis.network_name.clone(),
        root_public_key: g["root_public_key"].clone(),
        handover_seconds: 300,
        genesis: g.clone(),
        successions: vec![],
        keys: vec![HistoricKey {
            key_sequence: 1,
            key_id: na.key_id().to_string(),
            public_key: na.na_public(),
            valid_from: None,
            valid_to: g["network_authority"]["valid_to"].clone(),
            valid_to_enforced: false,
            succeeded_at: None,
            current: true,
        }],
        signing_key_sequence: 1,
        vouching_grace_seconds: 86400,
    }))
}
