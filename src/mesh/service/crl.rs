//! The certificate revocation list: `GET /crl` and `POST /admin/revoke`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::admin::authenticate;
use super::error::REASONS;
use super::fields;
use super::public::stamp_of;
use super::reply::{ok, Json};
use super::request::{Body, Head};
use super::{Authority, Error};
use crate::mesh::auth::Tier;
use crate::mesh::models;
use crate::mesh::state::Stored;
use crate::mesh::timefmt::{self, isoformat};

/// Where a revocation for key compromise is recorded, by node key.
pub(super) fn compromised_key(node_public_key: &str) -> String {
    // Base64 may hold '/', which would nest keys: store it URL-safe.
    format!("compromised/{}", node_public_key.replace('/', "_").replace('+', "-"))
}

/// `GET /crl`: the active CRL, created (sequence 0) on first read, re-signed under the
/// next sequence when under 12 h of validity remain, and with superseded certificates
/// past their grace swept in.
pub(super) async fn current(State(na): State<Arc<Authority>>, _: Body) -> Result<Json<Value>, Error> {
    Ok(ok(current_crl(&na).await?.0.value))
}

/// The active CRL, brought up to date, with the certificate records it was checked against.
async fn current_crl(na: &Authority) -> Result<(Stored, Vec<(String, Stored)>), Error> {
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
    let current = na.state.get("crl").await?.ok_or(Error::CrlUnavailable)?;
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

/// `POST /admin/revoke`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RevokeRequest {
    #[serde(deserialize_with = "fields::text")]
    cert_id: Option<String>,
    /// One of `REASONS`; default (and anything but a string) `unspecified`.
    #[serde(deserialize_with = "fields::text")]
    reason: Option<String>,
}

/// The CRL after a revocation.
#[derive(Serialize)]
pub(super) struct Revoked {
    crl_sequence: Value,
    revoked_count: usize,
}

pub(super) async fn revoke(
    State(na): State<Arc<Authority>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    head: Head,
    body: Body<RevokeRequest>,
) -> Result<Json<Revoked>, Error> {
    authenticate(&na, &addr.ip().to_string(), &head, &body.raw, Tier::Privileged).await?;
    let b = body.fields;
    let cert_id = b.cert_id.filter(|s| !s.is_empty()).ok_or(Error::MissingCertId)?;
    let reason = b.reason.unwrap_or_else(|| "unspecified".into());
    if !REASONS.contains(&reason.as_str()) {
        return Err(Error::InvalidRevocationReason);
    }
    let ckey = format!("certs/{cert_id}");
    for _ in 0..5 {
        let cert = na
            .state
            .get(&ckey)
            .await?
            .ok_or_else(|| Error::CertificateNotFound(cert_id.clone()))?;
        let (current, certs) = current_crl(&na).await?;
        let entries = current.value["revoked_certificates"].as_array().cloned().unwrap_or_default();
        if entries.iter().any(|e| e["certificate_id"] == cert_id.as_str()) {
            return Ok(ok(Revoked {
                crl_sequence: current.value["sequence"].clone(),
                revoked_count: entries.len(),
            }));
        }
        let now = timefmt::now();
        let expired = expired_ids(&certs, now);
        let doc = next_crl(&na, &current.value, &[(cert_id.clone(), reason.clone())], &expired, now);
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
            return Ok(ok(Revoked {
                crl_sequence: doc["sequence"].clone(),
                revoked_count: doc["revoked_certificates"].as_array().map_or(0, Vec::len),
            }));
        }
    }
    Err(Error::CrlConflict)
}
