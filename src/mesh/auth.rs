//! Request authentication: operator (admin) signatures, version 2, and node body
//! signatures. Pure checks; nonce claims and throttling are the service's.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde_json::{json, Map, Value};

use super::{canonical, keys, timefmt};

/// The timestamp window either way.
pub const WINDOW_SECS: i64 = 300;

/// Operator tiers, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    Read,
    Standard,
    Privileged,
}

impl Tier {
    pub fn parse(s: &str) -> Option<Tier> {
        match s {
            "read" => Some(Tier::Read),
            "standard" => Some(Tier::Standard),
            "privileged" => Some(Tier::Privileged),
            _ => None,
        }
    }
}

/// The canonical bytes an admin request signs (signature version 2).
#[allow(clippy::too_many_arguments)]
pub fn admin_payload(
    method: &str,
    path: &str,
    query: &Map<String, Value>,
    audience: &str,
    body: &Value,
    key_id: &str,
    timestamp: &str,
    nonce: &str,
) -> Vec<u8> {
    canonical::to_vec(&json!({
        "v": 2,
        "method": method.to_ascii_uppercase(),
        "path": path,
        "query": query,
        "audience": audience,
        "body": body,
        "key_id": key_id,
        "timestamp": timestamp,
        "nonce": nonce,
    }))
}

/// A query string as the signed multi-map: `{name: [values in order]}`.
pub fn query_map(raw: Option<&str>) -> Map<String, Value> {
    let mut out: Map<String, Value> = Map::new();
    for (k, v) in form_urlencoded_pairs(raw.unwrap_or("")) {
        match out.entry(k).or_insert_with(|| json!([])) {
            Value::Array(a) => a.push(Value::String(v)),
            other => *other = json!([v]),
        }
    }
    out
}

fn form_urlencoded_pairs(q: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        percent_encoding::percent_decode_str(&s).decode_utf8_lossy().into_owned()
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// Whether `timestamp` (ISO 8601; no offset means UTC) is within the window of `now`.
pub fn fresh(timestamp: &str, now: time::OffsetDateTime) -> Option<bool> {
    let t = timefmt::parse(timestamp)?.at;
    Some((now - t).whole_seconds().abs() <= WINDOW_SECS)
}

/// Signs an admin request (`netsy mesh` commands): the four headers' values.
pub struct AdminHeaders {
    pub key_id: String,
    pub timestamp: String,
    pub nonce: String,
    pub signature: String,
}

impl AdminHeaders {
    /// The four headers, named.
    pub fn pairs(&self) -> [(&'static str, String); 4] {
        [
            ("X-Admin-Key-Id", self.key_id.clone()),
            ("X-Admin-Timestamp", self.timestamp.clone()),
            ("X-Admin-Nonce", self.nonce.clone()),
            ("X-Admin-Signature", self.signature.clone()),
        ]
    }
}

#[allow(clippy::too_many_arguments)]
pub fn sign_admin(
    key: &SigningKey,
    key_id: &str,
    method: &str,
    path: &str,
    query: &Map<String, Value>,
    audience: &str,
    body: &Value,
) -> AdminHeaders {
    let timestamp = timefmt::isoformat(timefmt::now());
    let nonce = super::models::uuid4();
    let payload = admin_payload(method, path, query, audience, body, key_id, &timestamp, &nonce);
    AdminHeaders {
        key_id: key_id.to_string(),
        signature: keys::b64(&key.sign(&payload).to_bytes()),
        timestamp,
        nonce,
    }
}

/// Node requests: the signature by `node_public_key` over the body without `signature`.
pub fn node_signature_valid(body: &Value, key: &VerifyingKey) -> bool {
    let Some(sig) = body.get("signature").and_then(Value::as_str) else {
        return false;
    };
    let mut unsigned = body.clone();
    if let Some(m) = unsigned.as_object_mut() {
        m.remove("signature");
    }
    keys::verify(key, &canonical::to_vec(&unsigned), sig)
}

/// Signs a node request body in place (tests and tools).
pub fn sign_node_body(body: &mut Value, key: &SigningKey) {
    let sig = key.sign(&canonical::to_vec(body));
    body["signature"] = Value::String(keys::b64(&sig.to_bytes()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_golden_admin_payload_and_signature() {
        let body = json!({"roles": ["role:anchor"], "max_validity_hours": 168});
        let payload = admin_payload(
            "POST",
            "/admin/invite",
            &Map::new(),
            "qpaIVojb50opzlFBTc8AL1FhCcqShXUYn9SCXOM9J9Q=",
            &body,
            "operator-local",
            "2026-11-22T02:10:10.378857+00:00",
            "ad769df3-4bf9-4e56-a52f-8eaf7e2701f9",
        );
        assert_eq!(
            String::from_utf8(payload.clone()).expect("utf8"),
            r#"{"audience":"qpaIVojb50opzlFBTc8AL1FhCcqShXUYn9SCXOM9J9Q=","body":{"max_validity_hours":168,"roles":["role:anchor"]},"key_id":"operator-local","method":"POST","nonce":"ad769df3-4bf9-4e56-a52f-8eaf7e2701f9","path":"/admin/invite","query":{},"timestamp":"2026-11-22T02:10:10.378857+00:00","v":2}"#
        );
        let op = keys::public_key("TWufYUZyvlwoE1/79/Oj9L/qDkbikpzf5qLNoBMgwAc=").expect("key");
        assert!(keys::verify(
            &op,
            &payload,
            "aKpMyBPK5cGN0ZqSqR+0T/XgG1RDk0R2+xbMiKmHjcyMQNMPDY+GOeLVNweRjVBkHvGW9DlIp0PyOHNeDfEQBg=="
        ));
    }

    #[test]
    fn the_golden_join_body_signature() {
        let body = json!({
            "invite_token": "4d554de9-ef35-4d24-b7fb-6cb78145ea8a",
            "node_public_key": "Q5VwaOhf29w9QL2VjYwFiVY96q+DknMBEHuSlEzWXjI=",
            "nonce": "3bad181d-99c6-4324-8ea1-7862f1f1fa6a",
            "roles": ["role:client"],
            "timestamp": "2026-11-22T02:10:11.096492+00:00",
            "validity_hours": 168,
            "signature": "Z8FCp8+1kIqz91vIbzgnC+qsRLvGOtKRJx0OkoW97AJcMMD8XvWqr1Batvu8afdL9j+J1qdMHC7v5kvsuqyICQ==",
        });
        let key = keys::public_key("Q5VwaOhf29w9QL2VjYwFiVY96q+DknMBEHuSlEzWXjI=").expect("key");
        assert!(node_signature_valid(&body, &key));
        let mut tampered = body.clone();
        tampered["validity_hours"] = json!(169);
        assert!(!node_signature_valid(&tampered, &key));
    }

    #[test]
    fn repeated_query_names_keep_their_order() {
        assert_eq!(
            Value::Object(query_map(Some("x=1&x=2&y=a%20b"))),
            json!({"x": ["1", "2"], "y": ["a b"]})
        );
        assert_eq!(Value::Object(query_map(None)), json!({}));
    }

    #[test]
    fn the_window_is_300_seconds_either_way() {
        let now = timefmt::parse("2026-11-22T02:10:10Z").expect("t").at;
        assert_eq!(fresh("2026-11-22T02:15:10+00:00", now), Some(true));
        assert_eq!(fresh("2026-11-22T02:15:11+00:00", now), Some(false));
        assert_eq!(fresh("2026-11-22T02:05:09Z", now), Some(false));
        assert_eq!(fresh("2026-11-22T02:10:10", now), Some(true), "no offset means UTC");
        assert_eq!(fresh("soon", now), None);
    }
}
