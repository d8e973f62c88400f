//! Enrollment: `POST /join` (redeem an invite for a certificate), `/heartbeat` and
//! `/renew`, each a body signed by the node's key.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::admin::valid_role;
use super::crl::compromised_key;
use super::error::NodeAuthFailure;
use super::fields::{self, Count};
use super::public::stamp_of;
use super::reply::{created, ok, Json};
use super::request::Body;
use super::{Authority, Error};
use crate::mesh::auth;
use crate::mesh::state::Stored;
use crate::mesh::timefmt::{self, isoformat};
use crate::mesh::{keys, models};

/// The fields every node request carries besides its own: the node's key, and the
/// timestamp, nonce and signature that authenticate the body.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct NodeProof {
    #[serde(deserialize_with = "fields::text")]
    node_public_key: Option<String>,
    #[serde(deserialize_with = "fields::text")]
    timestamp: Option<String>,
    #[serde(deserialize_with = "fields::text")]
    nonce: Option<String>,
    #[serde(deserialize_with = "fields::text")]
    signature: Option<String>,
}

impl NodeProof {
    /// The node key, parsed.
    fn key(&self) -> Result<(String, VerifyingKey), Error> {
        let s = self.node_public_key.clone().unwrap_or_default();
        let key = keys::public_key(&s).ok_or(NodeAuthFailure::BadKey)?;
        Ok((s, key))
    }
}

/// Node body authentication: timestamp window, nonce unused in `scope`, the signature by
/// `key` over the canonical form of `raw` (the body as parsed) without `signature`; the
/// nonce is claimed last (atomically).
async fn authenticate(na: &Authority, proof: &NodeProof, raw: &Value, key: &VerifyingKey, scope: &str) -> Result<(), Error> {
    let (Some(ts), Some(nonce), Some(_)) = (&proof.timestamp, &proof.nonce, &proof.signature) else {
        let missing = [
            ("timestamp", &proof.timestamp),
            ("nonce", &proof.nonce),
            ("signature", &proof.signature),
        ]
        .into_iter()
        .filter(|(_, v)| v.is_none())
        .map(|(name, _)| name)
        .collect();
        return Err(NodeAuthFailure::MissingFields(missing).into());
    };
    match auth::fresh(ts, timefmt::now()) {
        None => return Err(NodeAuthFailure::BadTimestamp.into()),
        Some(false) => return Err(NodeAuthFailure::StaleTimestamp.into()),
        Some(true) => {}
    }
    if na.state.get(&format!("nonces/{scope}/{nonce}")).await?.is_some() {
        return Err(NodeAuthFailure::Replay.into());
    }
    if !auth::node_signature_valid(raw, key) {
        return Err(NodeAuthFailure::BadSignature.into());
    }
    if !na.state.claim_nonce(scope, nonce).await? {
        return Err(NodeAuthFailure::Replay.into());
    }
    Ok(())
}

/// Issues a certificate: the signed certificate, its id and its stored record.
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

fn roles_of(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// `POST /join`. The roles a node asks for are ignored: they come from the invite.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct JoinRequest {
    #[serde(deserialize_with = "fields::text")]
    invite_token: Option<String>,
    /// Default 168, capped by the invite's `max_validity_hours`.
    validity_hours: Count,
    #[serde(flatten)]
    proof: NodeProof,
}

pub(super) async fn join(
    State(na): State<Arc<Authority>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    body: Body<JoinRequest>,
) -> Result<Json<Value>, Error> {
    let (b, ip) = (&body.fields, addr.ip().to_string());
    if !na.limiter.allow("join", &ip, 10) || na.limiter.count("join_token_fail", &ip) >= 3 {
        return Err(Error::RateLimited);
    }
    let validity = b.validity_hours.or(168).ok_or(Error::InvalidValidityHours)?;
    if b.proof.node_public_key.as_deref().is_none_or(str::is_empty) {
        return Err(Error::MissingNodePublicKey);
    }
    let Some(token) = b.invite_token.as_deref().filter(|t| !t.is_empty()) else {
        return Err(Error::MissingInviteToken);
    };
    let bad_token = || {
        na.limiter.add("join_token_fail", &ip);
        Error::InvalidInviteToken
    };
    if token.contains('/') {
        return Err(bad_token());
    }
    let ikey = format!("invites/{token}");
    let invite = na.state.get(&ikey).await?.ok_or_else(bad_token)?;
    let now = timefmt::now();
    let unexpired = stamp_of(&invite.value["expires_at"]).is_some_and(|t| t > now);
    if !invite.value["used_at"].is_null() || !unexpired {
        return Err(bad_token());
    }
    let (node_public_key, key) = b.proof.key()?;
    authenticate(&na, &b.proof, &body.raw, &key, &format!("join:{node_public_key}")).await?;
    if na.state.get(&compromised_key(&node_public_key)).await?.is_some() {
        return Err(Error::NodeKeyCompromised);
    }
    // A token bound to another key is refused without being consumed.
    if let Some(recipient) = invite.value["recipient_public_key"].as_str() {
        if recipient != node_public_key {
            return Err(bad_token());
        }
    }
    let roles = roles_of(&invite.value["roles"]);
    if roles.is_empty() || roles.iter().any(|r| !valid_role(r)) {
        return Err(Error::InviteRolesInvalid);
    }
    let max_validity = invite.value["max_validity_hours"].as_i64().unwrap_or(168);
    let (cert_id, cert, record) = issue(&na, &node_public_key, &roles, validity.min(max_validity), max_validity, &ip, None);
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
    Ok(created(cert))
}

/// The checks heartbeat and renew share: identity, known, key, not revoked, signature,
/// validity. The record's key and the stored record.
async fn check_certificate(na: &Authority, cert_id: Option<&str>, proof: &NodeProof, raw: &Value) -> Result<(String, Stored), Error> {
    let (Some(cert_id), Some(node_public_key)) = (cert_id, proof.node_public_key.as_deref()) else {
        return Err(Error::MissingCertificateIdentity);
    };
    if cert_id.contains('/') {
        return Err(Error::UnknownCertificate);
    }
    let ckey = format!("certs/{cert_id}");
    let stored = na.state.get(&ckey).await?.ok_or(Error::UnknownCertificate)?;
    if stored.value["cert"]["node_public_key"] != node_public_key {
        return Err(Error::CertificateKeyMismatch);
    }
    if stored.value["status"] == "revoked" {
        return Err(Error::CertificateRevoked);
    }
    let (pk, key) = proof.key()?;
    authenticate(na, proof, raw, &key, &format!("node:{pk}")).await?;
    let now = timefmt::now();
    if stamp_of(&stored.value["cert"]["issued_at"]).is_some_and(|t| t > now + time::Duration::minutes(5)) {
        return Err(Error::CertificateNotYetValid);
    }
    if stamp_of(&stored.value["cert"]["expires_at"]).is_some_and(|t| t < now) {
        return Err(Error::CertificateExpired);
    }
    if stamp_of(&stored.value["revoke_after"]).is_some_and(|t| t <= now) {
        return Err(Error::CertificateSuperseded);
    }
    Ok((ckey, stored))
}

/// `POST /heartbeat`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct HeartbeatRequest {
    #[serde(deserialize_with = "fields::text")]
    cert_id: Option<String>,
    /// Stored as sent (the CLI sends `"healthy"`).
    status: Value,
    #[serde(flatten)]
    proof: NodeProof,
}

#[derive(Serialize)]
pub(super) struct Ack {
    ack: bool,
    server_time: String,
}

pub(super) async fn heartbeat(
    State(na): State<Arc<Authority>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    body: Body<HeartbeatRequest>,
) -> Result<Json<Ack>, Error> {
    let (b, ip) = (&body.fields, addr.ip().to_string());
    if !na.limiter.allow("node", &ip, na.cfg.rate_node) {
        return Err(Error::RateLimited);
    }
    let (ckey, stored) = check_certificate(&na, b.cert_id.as_deref(), &b.proof, &body.raw).await?;
    let mut record = stored.value;
    let now = timefmt::now();
    record["last_heartbeat"] = json!(isoformat(now));
    record["heartbeat_status"] = b.status.clone();
    record["remote_addr"] = json!(ip);
    na.state.put(&ckey, &record).await?;
    Ok(ok(Ack {
        ack: true,
        server_time: isoformat(now),
    }))
}

/// `POST /renew`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RenewRequest {
    #[serde(deserialize_with = "fields::text")]
    cert_id: Option<String>,
    /// When a list, its strings must be the certificate's roles.
    #[serde(deserialize_with = "fields::strings")]
    roles: Option<Vec<String>>,
    /// Default and cap: the original invite's `max_validity_hours`.
    validity_hours: Count,
    #[serde(flatten)]
    proof: NodeProof,
}

pub(super) async fn renew(
    State(na): State<Arc<Authority>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    body: Body<RenewRequest>,
) -> Result<Json<Value>, Error> {
    let (b, ip) = (&body.fields, addr.ip().to_string());
    if !na.limiter.allow("node", &ip, na.cfg.rate_node) {
        return Err(Error::RateLimited);
    }
    let (ckey, stored) = check_certificate(&na, b.cert_id.as_deref(), &b.proof, &body.raw).await?;
    let roles = roles_of(&stored.value["cert"]["roles"]);
    if let Some(asked) = &b.roles {
        let asked: BTreeSet<&str> = asked.iter().map(String::as_str).collect();
        let have: BTreeSet<&str> = roles.iter().map(String::as_str).collect();
        if asked != have {
            return Err(Error::RenewalRoleChange);
        }
    }
    let max_validity = stored.value["max_validity_hours"].as_i64().unwrap_or(168);
    let validity = b.validity_hours.or(max_validity).ok_or(Error::InvalidValidityHours)?;
    let pk = b.proof.node_public_key.as_deref().unwrap_or_default();
    let old_id = stored.value["cert"]["cert_id"].as_str().unwrap_or_default().to_string();
    let (cert_id, cert, record) = issue(&na, pk, &roles, validity.min(max_validity), max_validity, &ip, Some(&old_id));
    let mut old = stored.value.clone();
    old["revoke_after"] = json!(isoformat(timefmt::now() + time::Duration::seconds(na.cfg.renewal_grace_secs)));
    let nkey = format!("certs/{cert_id}");
    if !na
        .state
        .write_if(&[(&ckey, stored.mod_revision)], &[(&ckey, &old), (&nkey, &record)])
        .await?
    {
        return Err(Error::ConcurrentRenewal);
    }
    Ok(created(cert))
}
