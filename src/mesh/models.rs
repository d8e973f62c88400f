//! The signed documents, with exactly the field sets Genesis Mesh 1.8.1's pydantic models
//! have (a field more or less breaks the clients' signature checks): the genesis block,
//! join certificates, policy manifests and certificate revocation lists.

use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use super::keys;
use super::timefmt::{self, pydantic};
use super::MeshError;

/// A verified genesis block.
#[derive(Debug, Clone)]
pub struct Genesis {
    /// As pydantic re-serialises it (defaults filled, times normalised, unknown fields
    /// dropped), with its signatures.
    pub doc: Value,
    pub network_name: String,
    pub network_version: String,
    pub root_key: VerifyingKey,
    pub na_key: VerifyingKey,
}

fn invalid(msg: impl Into<String>) -> MeshError {
    MeshError::Genesis(msg.into())
}

fn string(v: &Value, field: &str) -> Result<String, MeshError> {
    v.get(field)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| invalid(format!("`{field}` is missing or not a string")))
}

fn stamp(v: &Value, field: &str) -> Result<Value, MeshError> {
    let s = string(v, field)?;
    let t = timefmt::parse(&s).ok_or_else(|| invalid(format!("`{field}` is not an ISO 8601 time: {s:?}")))?;
    // pydantic refuses an offset with seconds (Python's `fromisoformat` takes it).
    if t.at.offset().seconds_past_minute() != 0 {
        return Err(invalid(format!(
            "`{field}` has an offset with seconds, which Genesis Mesh refuses: {s:?}"
        )));
    }
    Ok(Value::String(timefmt::pydantic_stamp(&t)))
}

fn strings(v: &Value, field: &str, default: &[&str]) -> Result<Value, MeshError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(json!(default)),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => Ok(Value::Array(items.clone())),
        Some(_) => Err(invalid(format!("`{field}` must be a list of strings"))),
    }
}

impl Genesis {
    pub fn load(path: &Path) -> Result<Genesis, MeshError> {
        let text = std::fs::read_to_string(path).map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        let raw: Value =
            super::canonical::from_slice(text.as_bytes()).map_err(|e| invalid(format!("{} is not JSON: {e}", path.display())))?;
        Self::from_value(&raw)
    }

    /// Normalises `raw` the way the Python model does, then checks the root signature.
    pub fn from_value(raw: &Value) -> Result<Genesis, MeshError> {
        let na = raw
            .get("network_authority")
            .ok_or_else(|| invalid("`network_authority` is missing"))?;
        let pm = raw.get("policy_manifest").ok_or_else(|| invalid("`policy_manifest` is missing"))?;
        let anchors = match raw.get("bootstrap_anchors") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(items)) => items
                .iter()
                .map(|a| Ok(json!({"id": string(a, "id")?, "endpoint": string(a, "endpoint")?})))
                .collect::<Result<Vec<_>, MeshError>>()?,
            Some(_) => return Err(invalid("`bootstrap_anchors` must be a list")),
        };
        let mut doc = json!({
            "network_name": string(raw, "network_name")?,
            "network_version": string(raw, "network_version")?,
            "root_public_key": string(raw, "root_public_key")?,
            "network_authority": {
                "public_key": string(na, "public_key")?,
                "valid_from": stamp(na, "valid_from")?,
                "valid_to": stamp(na, "valid_to")?,
            },
            "allowed_crypto_suites": strings(raw, "allowed_crypto_suites", &["ed25519", "x25519"])?,
            "allowed_transports": strings(raw, "allowed_transports", &["quic", "wireguard"])?,
            "policy_manifest": {
                "hash": string(pm, "hash")?,
                "url": pm.get("url").cloned().unwrap_or(Value::Null),
            },
            "bootstrap_anchors": anchors,
        });
        let root_key =
            keys::public_key(&string(raw, "root_public_key")?).ok_or_else(|| invalid("`root_public_key` is not an Ed25519 key"))?;
        let na_key =
            keys::public_key(&string(na, "public_key")?).ok_or_else(|| invalid("`network_authority.public_key` is not an Ed25519 key"))?;
        doc["signatures"] = raw.get("signatures").cloned().unwrap_or_else(|| json!([]));
        if !keys::verify_document(&doc, &root_key) {
            return Err(invalid("the root signature does not verify"));
        }
        Ok(Genesis {
            network_name: string(raw, "network_name")?,
            network_version: string(raw, "network_version")?,
            doc,
            root_key,
            na_key,
        })
    }

    /// A new genesis signed by `root` (`netsy mesh init`), as `genesis-mesh init` writes it.
    pub fn create(
        network_name: &str,
        root: &SigningKey,
        root_key_id: &str,
        na: &SigningKey,
        now: OffsetDateTime,
    ) -> Result<Genesis, MeshError> {
        let mut doc = json!({
            "network_name": network_name,
            "network_version": "v0.1",
            "root_public_key": keys::public_b64(root),
            "network_authority": {
                "public_key": keys::public_b64(na),
                "valid_from": pydantic(now),
                "valid_to": pydantic(now + time::Duration::days(90)),
            },
            "allowed_crypto_suites": ["ed25519", "x25519"],
            "allowed_transports": ["quic", "wireguard"],
            "policy_manifest": {"hash": "sha256:placeholder", "url": null},
            "bootstrap_anchors": [],
        });
        keys::sign_document(&mut doc, root_key_id, root);
        Self::from_value(&doc)
    }
}

/// An unsigned join certificate.
pub fn certificate(
    cert_id: &str,
    node_public_key: &str,
    network_name: &str,
    roles: &[String],
    issued_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    issued_by: &str,
) -> Value {
    json!({
        "cert_id": cert_id,
        "node_public_key": node_public_key,
        "network_name": network_name,
        "roles": roles,
        "issued_at": pydantic(issued_at),
        "expires_at": pydantic(expires_at),
        "issued_by": issued_by,
    })
}

/// An unsigned policy manifest.
pub fn policy(
    policy_id: &str,
    issued_at: OffsetDateTime,
    issued_by: &str,
    min_client_version: &str,
    allowed_ports: &[i64],
    allowed_services: &[String],
    routing: &Map<String, Value>,
) -> Value {
    let preferred = routing
        .get("preferred_transports")
        .cloned()
        .unwrap_or_else(|| json!(["quic", "wireguard"]));
    let max_hops = routing.get("max_hops").cloned().unwrap_or_else(|| json!(6));
    json!({
        "policy_id": policy_id,
        "issued_at": pydantic(issued_at),
        "issued_by": issued_by,
        "min_client_version": min_client_version,
        "allowed_ports": allowed_ports,
        "allowed_services": allowed_services,
        "routing": {"preferred_transports": preferred, "max_hops": max_hops},
    })
}

/// An unsigned CRL.
pub fn crl(crl_id: &str, sequence: u64, issued_at: OffsetDateTime, issuer: &str, revoked: Vec<Value>) -> Value {
    json!({
        "crl_id": crl_id,
        "sequence": sequence,
        "issued_at": pydantic(issued_at),
        "next_update": pydantic(issued_at + time::Duration::hours(24)),
        "issuer": issuer,
        "revoked_certificates": revoked,
    })
}

/// One CRL entry.
pub fn revoked_entry(cert_id: &str, revoked_at: OffsetDateTime, reason: &str, issuer: &str) -> Value {
    json!({"certificate_id": cert_id, "revoked_at": pydantic(revoked_at), "reason": reason, "issuer": issuer})
}

/// A random UUID4, as Python's `uuid.uuid4()` prints it.
pub fn uuid4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The golden genesis of the reference (genesis-mesh 1.8.1's `init`).
    fn golden_genesis() -> Value {
        let mut v: Value = serde_json::from_str(r#"{"allowed_crypto_suites":["ed25519","x25519"],"allowed_transports":["quic","wireguard"],"bootstrap_anchors":[],"network_authority":{"public_key":"qpaIVojb50opzlFBTc8AL1FhCcqShXUYn9SCXOM9J9Q=","valid_from":"2026-11-22T02:10:00.097066Z","valid_to":"2027-02-20T02:10:00.097066Z"},"network_name":"USG","network_version":"v0.1","policy_manifest":{"hash":"sha256:placeholder","url":null},"root_public_key":"kg2g4cXL++qZbYGq/Va83BlixWigjXApvso3jH8E5Dk="}"#).expect("json");
        v["signatures"] = json!([{"key_id": "rs-local", "sig": "s7KyVGR5s/gG4oBSTzfifkYzeYEP4Go6fP2OdWmyLuyH9xo/Yt454u3v3/+s3bLaQ37qrZNmNR58+CNccc9bCg=="}]);
        v
    }

    #[test]
    fn the_golden_genesis_verifies_also_as_python_would_reformat_it() {
        let g = Genesis::from_value(&golden_genesis()).expect("verifies");
        assert_eq!(g.network_name, "USG");
        // Written with +00:00, unknown fields and missing defaults: pydantic's form still verifies.
        let mut v = golden_genesis();
        v["network_authority"]["valid_from"] = json!("2026-11-22T02:10:00.097066+00:00");
        v["extra"] = json!("dropped by the model");
        v.as_object_mut().expect("obj").remove("allowed_transports");
        Genesis::from_value(&v).expect("normalised form verifies");
        // A changed field does not.
        let mut bad = golden_genesis();
        bad["network_name"] = json!("EVIL");
        assert!(Genesis::from_value(&bad).is_err());
    }

    /// An offset with seconds was re-emitted without them (the `mesh_json` fuzz target
    /// finds it at once in the unfixed code). pydantic refuses such a genesis, and so does
    /// netsy, by name.
    #[test]
    fn a_genesis_time_whose_offset_has_seconds_is_refused_by_name() {
        let mut v = golden_genesis();
        v["network_authority"]["valid_from"] = json!("2026-11-22T03:10:00.097066+01:00:30");
        let err = Genesis::from_value(&v).expect_err("refused").to_string();
        assert!(err.contains("valid_from") && err.contains("offset with seconds"), "{err}");
    }

    #[test]
    fn the_golden_certificate_verifies() {
        let t = |s: &str| timefmt::parse(s).expect("time").at;
        let cert = certificate(
            "b0b96b12-a238-4e7a-bff7-40d2ffd4ac08",
            "Q5VwaOhf29w9QL2VjYwFiVY96q+DknMBEHuSlEzWXjI=",
            "USG",
            &["role:anchor".to_string()],
            t("2026-11-22T02:10:11.101422Z"),
            t("2026-11-29T02:10:11.101422Z"),
            "na-local",
        );
        assert_eq!(
            super::super::canonical::to_string(&cert),
            r#"{"cert_id":"b0b96b12-a238-4e7a-bff7-40d2ffd4ac08","expires_at":"2026-11-29T02:10:11.101422Z","issued_at":"2026-11-22T02:10:11.101422Z","issued_by":"na-local","network_name":"USG","node_public_key":"Q5VwaOhf29w9QL2VjYwFiVY96q+DknMBEHuSlEzWXjI=","roles":["role:anchor"]}"#
        );
        let na = keys::public_key("qpaIVojb50opzlFBTc8AL1FhCcqShXUYn9SCXOM9J9Q=").expect("key");
        assert!(keys::verify(
            &na,
            &keys::signed_bytes(&cert),
            "PLqGE0uBOsyjen2JdMOb3884hbNApafVqKWz5RV3Fh+wm+zEx151RW+sTpk++tGp+oWwizA3XhhCAsTnHJhPDw=="
        ));
    }

    #[test]
    fn a_created_genesis_verifies_and_uuid4_has_the_python_shape() {
        let root = keys::generate();
        let na = keys::generate();
        let g = Genesis::create("T", &root, "rs-local", &na, timefmt::now()).expect("create");
        assert_eq!(g.na_key, na.verifying_key());
        let u = uuid4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
