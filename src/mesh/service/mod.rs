//! The mesh authority's HTTP service (port 8443): Genesis Mesh 1.8.1's 19 core routes
//! with their check order, status codes and error codes. State goes through `State`
//! (Raft transactions), so every pod answers every route.
//!
//! - `request`: how every request is read (decoded path, body limit, JSON), `fields`:
//!   how body fields are read;
//! - `reply`: JSON and text answers and the headers on every response; `error`: every
//!   refusal, in the NA's envelope;
//! - the routes: `public` (health, trust material), `policy`, `crl` (and revocation),
//!   `admin` (operator authentication, invites, operator keys), `enroll` (join,
//!   heartbeat, renew); `limiter`: the per-address rate limits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::handler::Handler;
use axum::routing::{any, get, post, MethodRouter};
use axum::Router;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::Value;
use tower::ServiceExt;

use super::auth::Tier;
use super::models::Genesis;
use super::state::State;
use super::{keys, MeshError};
use crate::config::MeshConfig;

mod admin;
mod crl;
mod enroll;
mod error;
mod fields;
mod limiter;
mod policy;
mod public;
mod reply;
mod request;

pub use error::{AdminAuthFailure, Error, NodeAuthFailure};

pub struct Authority {
    cfg: MeshConfig,
    genesis: Genesis,
    na_key: SigningKey,
    operators: BTreeMap<String, (VerifyingKey, Tier)>,
    /// SHA-256 of the NA public key, hex (`/readyz`'s `signing_key.fingerprint`).
    fingerprint: String,
    state: State,
    limiter: limiter::Limiter,
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
            limiter: limiter::Limiter::default(),
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

type Shared = Arc<Authority>;

/// Anything the routes do not serve, after reading the body like every route.
async fn not_found(_: request::Body) -> Error {
    Error::NotFound
}

/// A GET route. HEAD and the other methods are 404 `not_found` like an unknown path
/// (not axum's 405 with an `Allow` header).
fn get_only<H: Handler<T, Shared>, T: 'static>(handler: H) -> MethodRouter<Shared> {
    get(handler).head(not_found).merge(any(not_found))
}

/// A POST route; the other methods are 404 `not_found`.
fn post_only<H: Handler<T, Shared>, T: 'static>(handler: H) -> MethodRouter<Shared> {
    post(handler).merge(any(not_found))
}

/// The service; serve it with `into_make_service_with_connect_info::<SocketAddr>()`.
/// How often `Authority::watch_readiness` checks, and how long one check may take.
const READINESS_EVERY: Duration = Duration::from_secs(10);
const READINESS_TIMEOUT: Duration = Duration::from_secs(5);

impl Authority {
    /// `/readyz`'s check: the keyspace answers a linearizable read of the authority's
    /// state. Records the result in `netsy_mesh_authority_ready`.
    pub async fn check_ready(&self) -> bool {
        let ready = matches!(tokio::time::timeout(READINESS_TIMEOUT, self.state.get("crl")).await, Ok(Ok(_)));
        crate::metrics::MESH_AUTHORITY_READY.set(ready as i64);
        ready
    }

    /// Runs `check_ready` every `READINESS_EVERY`, so that the metric follows the
    /// authority whether or not anything probes `/readyz`. Never returns.
    pub async fn watch_readiness(self: Arc<Self>) {
        let mut tick = tokio::time::interval(READINESS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.check_ready().await;
        }
    }
}

pub fn router(na: Arc<Authority>) -> Router {
    let routes = Router::new()
        .route("/healthz", get_only(public::healthz))
        .route("/readyz", get_only(public::readyz))
        .route("/health", get_only(public::health))
        .route("/nodes", get_only(public::nodes))
        .route("/metrics", get_only(public::metrics))
        .route("/genesis", get_only(public::genesis))
        .route("/sovereign.json", get_only(public::sovereign))
        .route("/na/key-history", get_only(public::key_history))
        .route("/policy", get_only(policy::active))
        .route("/crl", get_only(crl::current))
        .route("/join", post_only(enroll::join))
        .route("/heartbeat", post_only(enroll::heartbeat))
        .route("/renew", post_only(enroll::renew))
        .route("/admin/invite", post_only(admin::invite))
        .route("/admin/revoke", post_only(crl::revoke))
        .route("/admin/policy", post_only(policy::publish))
        .route("/admin/policy/history", get_only(policy::history))
        .route("/admin/policy/rollback", post_only(policy::rollback))
        .route("/admin/operator-keys/{*key_id_and_action}", post_only(admin::revoke_operator_key))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(reply::finish))
        .with_state(na);
    // Routes match the percent-decoded path, so the URI is rewritten before routing, in
    // front of the routes.
    Router::new().fallback_service(routes.map_request(request::decode_path))
}

#[cfg(test)]
mod tests;
