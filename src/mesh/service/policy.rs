//! Policy manifests: `GET /policy`, and the operator's `POST /admin/policy`,
//! `GET /admin/policy/history` and `POST /admin/policy/rollback`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::admin::authenticate;
use super::fields::{self, List, Port};
use super::reply::{created, ok, Json};
use super::request::{Body, Head};
use super::{Authority, Error};
use crate::mesh::auth::Tier;
use crate::mesh::models;
use crate::mesh::timefmt::{self, isoformat};

/// `GET /policy`: the active signed manifest. With none yet the default is built, signed
/// and stored, so the answer is stable.
pub(super) async fn active(State(na): State<Arc<Authority>>, _: Body) -> Result<Json<Value>, Error> {
    if let Some(active) = na.state.get("policy/active").await? {
        let id = active.value["policy_id"].as_str().unwrap_or_default().to_string();
        if let Some(v) = na.state.get(&format!("policy/versions/{id}")).await? {
            return Ok(ok(v.value["policy"].clone()));
        }
    }
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
        Some(v) => Ok(ok(v.value["policy"].clone())),
        None => Ok(ok(policy)),
    }
}

/// `POST /admin/policy`; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct PublishRequest {
    /// Default `policy-<uuid4>`; the same id overwrites that version.
    #[serde(deserialize_with = "fields::text")]
    policy_id: Option<String>,
    /// Default `"0.1.0"`.
    #[serde(deserialize_with = "fields::text")]
    min_client_version: Option<String>,
    /// Default `[443, 8443]`.
    allowed_ports: List<Port>,
    /// Default `[]`.
    allowed_services: List<String>,
    /// `preferred_transports` and `max_hops`, each defaulted.
    #[serde(deserialize_with = "fields::object")]
    routing: Map<String, Value>,
}

/// Signs, stores and activates a manifest.
pub(super) async fn publish(
    State(na): State<Arc<Authority>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    head: Head,
    body: Body<PublishRequest>,
) -> Result<Json<Value>, Error> {
    authenticate(&na, &addr.ip().to_string(), &head, &body.raw, Tier::Privileged).await?;
    let b = body.fields;
    let id = b.policy_id.unwrap_or_else(|| format!("policy-{}", models::uuid4()));
    let ports: Vec<i64> = match b.allowed_ports {
        List::Unset => vec![443, 8443],
        List::Items(ports) => ports.into_iter().map(|Port(p)| p).collect(),
        List::Invalid => return Err(Error::InvalidAllowedPorts),
    };
    let services = match b.allowed_services {
        List::Unset => vec![],
        List::Items(services) => services,
        List::Invalid => return Err(Error::InvalidAllowedServices),
    };
    let min_version = b.min_client_version.as_deref().unwrap_or("0.1.0");
    let policy = na.signed(models::policy(
        &id,
        timefmt::now(),
        na.key_id(),
        min_version,
        &ports,
        &services,
        &b.routing,
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
    Ok(created(policy))
}

#[derive(Serialize)]
pub(super) struct History {
    versions: Vec<Version>,
}

/// A stored version.
#[derive(Serialize)]
struct Version {
    policy_id: Value,
    active: bool,
    created_at: Value,
    policy: Value,
}

/// Every stored version, newest first.
pub(super) async fn history(
    State(na): State<Arc<Authority>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    head: Head,
    body: Body,
) -> Result<Json<History>, Error> {
    authenticate(&na, &addr.ip().to_string(), &head, &body.raw, Tier::Standard).await?;
    let active = na.state.get("policy/active").await?.map(|a| a.value["policy_id"].clone());
    let mut versions: Vec<(i64, Version)> = na
        .state
        .list("policy/versions/")
        .await?
        .into_iter()
        .map(|(_, v)| {
            let policy_id = v.value["policy_id"].clone();
            let version = Version {
                active: Some(&policy_id) == active.as_ref(),
                policy_id,
                created_at: v.value["created_at"].clone(),
                policy: v.value["policy"].clone(),
            };
            (v.mod_revision, version)
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    Ok(ok(History {
        versions: versions.into_iter().map(|(_, v)| v).collect(),
    }))
}

/// `POST /admin/policy/rollback`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RollbackRequest {
    #[serde(deserialize_with = "fields::text")]
    policy_id: Option<String>,
}

/// Activates a stored version.
pub(super) async fn rollback(
    State(na): State<Arc<Authority>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    head: Head,
    body: Body<RollbackRequest>,
) -> Result<Json<Value>, Error> {
    authenticate(&na, &addr.ip().to_string(), &head, &body.raw, Tier::Privileged).await?;
    let id = body.fields.policy_id.filter(|s| !s.is_empty()).ok_or(Error::MissingPolicyId)?;
    let version = na
        .state
        .get(&format!("policy/versions/{id}"))
        .await?
        .ok_or_else(|| Error::PolicyNotFound(id.clone()))?;
    na.state.put("policy/active", &json!({"policy_id": id})).await?;
    Ok(ok(version.value["policy"].clone()))
}
