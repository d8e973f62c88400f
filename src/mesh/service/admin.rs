//! Operator requests: their authentication (signature version 2, in the NA's check
//! order), `POST /admin/invite` and `POST /admin/operator-keys/{key_id}/revoke`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::AdminAuthFailure;
use super::fields::{self, Count, List, RoleName};
use super::reply::{created, ok, Json};
use super::request::{Body, Head};
use super::{Authority, Error};
use crate::mesh::auth::{self, Tier};
use crate::mesh::timefmt::{self, isoformat};
use crate::mesh::{keys, models};

const ROLE_PREFIXES: [&str; 5] = ["role:anchor", "role:bridge", "role:client", "role:operator", "role:service:"];

pub(super) fn valid_role(r: &str) -> bool {
    ROLE_PREFIXES.iter().any(|p| r.starts_with(p))
}

/// Authenticates an operator's request for `needed`: 1. throttle, 2. header lengths,
/// 3. presence, 4. key configured and not revoked, 5. timestamp window, 6. nonce unused,
/// 7. signature over the canonical form of method, decoded path, query, the NA key,
/// `body` as parsed (`{}` for GET), key id, timestamp and nonce, 8. atomic nonce claim,
/// 9. tier. The key id.
pub(super) async fn authenticate(na: &Authority, addr: &str, head: &Head, body: &Value, needed: Tier) -> Result<String, Error> {
    let key_id = head.header("x-admin-key-id");
    let per_key = format!("{addr}|{}", key_id.clone().unwrap_or_default());
    if na.limiter.count("admin_fail_key", &per_key) >= na.cfg.rate_admin_auth_failures || na.limiter.count("admin_fail_addr", addr) >= 120 {
        return Err(Error::AdminThrottled);
    }
    if !na.limiter.allow("admin", addr, na.cfg.rate_admin) {
        return Err(Error::RateLimited);
    }
    let failed = |failure: AdminAuthFailure| {
        na.limiter.add("admin_fail_key", &per_key);
        na.limiter.add("admin_fail_addr", addr);
        tracing::warn!(
            addr,
            key_id = per_key.split('|').nth(1),
            reason = %failure,
            "mesh: admin authentication failed"
        );
        Error::AdminAuth(failure)
    };
    let names = ["x-admin-key-id", "x-admin-timestamp", "x-admin-nonce", "x-admin-signature"];
    if names.iter().any(|n| head.header(n).is_some_and(|v| v.len() > 256)) {
        return Err(failed(AdminAuthFailure::HeaderTooLong));
    }
    let (Some(key_id), Some(ts), Some(nonce), Some(sig)) = (key_id, head.header(names[1]), head.header(names[2]), head.header(names[3]))
    else {
        return Err(failed(AdminAuthFailure::MissingHeaders));
    };
    let Some((key, tier)) = na.operators.get(&key_id).cloned() else {
        return Err(failed(AdminAuthFailure::UnknownKey));
    };
    if na.state.get(&format!("operator-keys/revoked/{key_id}")).await?.is_some() {
        return Err(failed(AdminAuthFailure::UnknownKey));
    }
    if auth::fresh(&ts, timefmt::now()) != Some(true) {
        return Err(failed(AdminAuthFailure::StaleTimestamp));
    }
    let scope = format!("admin:{key_id}");
    if na.state.get(&format!("nonces/{scope}/{nonce}")).await?.is_some() {
        return Err(failed(AdminAuthFailure::NonceUsed));
    }
    let query = auth::query_map(head.query.as_deref());
    let empty = json!({});
    let body = if head.method == Method::GET { &empty } else { body };
    let payload = auth::admin_payload(
        head.method.as_str(),
        &head.path,
        &query,
        &na.na_public(),
        body,
        &key_id,
        &ts,
        &nonce,
    );
    if !keys::verify(&key, &payload, &sig) {
        return Err(failed(AdminAuthFailure::BadSignature));
    }
    if !na.state.claim_nonce(&scope, &nonce).await? {
        return Err(failed(AdminAuthFailure::NonceUsed));
    }
    if tier < needed {
        return Err(Error::InsufficientTier(key_id));
    }
    Ok(key_id)
}

/// `POST /admin/invite`; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct InviteRequest {
    /// Default `["role:client"]`.
    roles: List<RoleName>,
    /// Caps the certificate's lifetime; default 168.
    max_validity_hours: Count,
    /// Default 24.
    token_expiry_hours: Count,
    /// Binds the token to one node key (when a string); stored as given.
    recipient_public_key: Value,
    /// Either set (not null) makes an edge invite, which needs a privileged key.
    node_sovereign_id: Option<Value>,
    executor_resource_prefix: Option<Value>,
}

#[derive(Serialize)]
pub(super) struct Invite {
    token_id: String,
    expires_at: String,
}

pub(super) async fn invite(
    State(na): State<Arc<Authority>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    head: Head,
    body: Body<InviteRequest>,
) -> Result<Json<Invite>, Error> {
    let b = body.fields;
    let edge = b.node_sovereign_id.is_some() || b.executor_resource_prefix.is_some();
    let needed = if edge { Tier::Privileged } else { Tier::Standard };
    authenticate(&na, &addr.ip().to_string(), &head, &body.raw, needed).await?;
    let roles: Vec<String> = match b.roles {
        List::Unset => vec!["role:client".into()],
        List::Items(roles) => roles.into_iter().map(|RoleName(r)| r).collect(),
        List::Invalid => return Err(Error::RolesNotAList),
    };
    if let Some(bad) = roles.iter().find(|r| !valid_role(r)) {
        return Err(Error::InvalidRole(bad.clone()));
    }
    let max_validity = b.max_validity_hours.or(168).ok_or(Error::InvalidMaxValidityHours)?;
    let expiry = b.token_expiry_hours.or(24).ok_or(Error::InvalidTokenExpiryHours)?;
    let now = timefmt::now();
    let token = models::uuid4();
    let expires_at = now + time::Duration::hours(expiry);
    let record = json!({
        "token_id": token, "roles": roles, "max_validity_hours": max_validity,
        "created_at": isoformat(now), "expires_at": isoformat(expires_at),
        "used_at": null, "used_by_key": null, "recipient_public_key": b.recipient_public_key,
    });
    let k = format!("invites/{token}");
    na.state.write_if(&[(&k, 0)], &[(&k, &record)]).await?;
    Ok(created(Invite {
        token_id: token,
        expires_at: isoformat(expires_at),
    }))
}

/// `POST /admin/operator-keys/{key_id}/revoke`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RevokeKeyRequest {
    /// Default `unspecified`.
    #[serde(deserialize_with = "fields::text")]
    reason: Option<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum KeyRevoked {
    Now {
        key_id: String,
        revoked: bool,
        revoked_at: String,
        reason: String,
        remaining_active_keys: usize,
    },
    Before {
        key_id: String,
        revoked: bool,
        already_revoked: bool,
    },
}

impl KeyRevoked {
    fn before(key_id: &str) -> KeyRevoked {
        KeyRevoked::Before {
            key_id: key_id.to_string(),
            revoked: true,
            already_revoked: true,
        }
    }
}

/// Revokes an operator key for good. The key id is what the decoded path holds between
/// the prefix and `/revoke`, slashes included; any other path under the prefix is 404.
pub(super) async fn revoke_operator_key(
    State(na): State<Arc<Authority>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    head: Head,
    body: Body<RevokeKeyRequest>,
) -> Result<Json<KeyRevoked>, Error> {
    let key_id = head
        .path
        .strip_prefix("/admin/operator-keys/")
        .and_then(|rest| rest.strip_suffix("/revoke"))
        .ok_or(Error::NotFound)?;
    authenticate(&na, &addr.ip().to_string(), &head, &body.raw, Tier::Privileged).await?;
    if !na.operators.contains_key(key_id) {
        return Err(Error::UnknownOperatorKey(key_id.to_string()));
    }
    let k = format!("operator-keys/revoked/{key_id}");
    if na.state.get(&k).await?.is_some() {
        return Ok(ok(KeyRevoked::before(key_id)));
    }
    // Revocations of keys no longer configured do not count.
    let revoked = na
        .state
        .list("operator-keys/revoked/")
        .await?
        .iter()
        .filter(|(k, _)| {
            k.strip_prefix("operator-keys/revoked/")
                .is_some_and(|id| na.operators.contains_key(id))
        })
        .count();
    let remaining = na.operators.len().saturating_sub(revoked + 1);
    if remaining == 0 {
        return Err(Error::LastActiveOperatorKey);
    }
    let now = isoformat(timefmt::now());
    let reason = body.fields.reason.unwrap_or_else(|| "unspecified".into());
    let record = json!({"revoked_at": now, "reason": reason});
    if !na.state.write_if(&[(&k, 0)], &[(&k, &record)]).await? {
        return Ok(ok(KeyRevoked::before(key_id)));
    }
    Ok(ok(KeyRevoked::Now {
        key_id: key_id.to_string(),
        revoked: true,
        revoked_at: now,
        reason,
        remaining_active_keys: remaining,
    }))
}
