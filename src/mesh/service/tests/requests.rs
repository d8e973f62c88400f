//! Routing, how bodies are read, the envelope and the headers, rate limits.

use super::*;

#[tokio::test]
async fn unknown_paths_and_methods_are_404_in_the_envelope_with_every_header() {
    let f = fixture();
    let r = f.send(request("GET", "/no/such/route", &[("x-request-id", "rid-1")], None)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        r.text,
        "{\"error\":{\"code\":\"not_found\",\"details\":{},\"message\":\"The requested resource was not found\",\"request_id\":\"rid-1\"}}\n"
    );
    assert_common_headers(&r, "application/json");
    assert_eq!(header(&r, "x-request-id"), Some("rid-1"));
    for (method, path) in [
        ("GET", "/join"),
        ("DELETE", "/join"),
        ("PUT", "/admin/invite"),
        ("POST", "/healthz"),
        ("HEAD", "/healthz"),
        ("OPTIONS", "/crl"),
        ("GET", "/healthz/"),
        ("GET", "/admin/operator-keys/op/revoke"),
        ("POST", "/admin/operator-keys/op/retire"),
    ] {
        let r = f.send(request(method, path, &[], None)).await;
        if method == "HEAD" {
            // The same answer, without its body.
            assert_eq!((r.status, r.text.as_str()), (StatusCode::NOT_FOUND, ""));
        } else {
            assert_eq!(r.code(), (404, "not_found".into()), "{method} {path}: {}", r.text);
        }
        assert_common_headers(&r, "application/json");
    }
}

#[tokio::test]
async fn bodies_are_compact_with_sorted_keys_and_a_newline_and_paths_are_percent_decoded() {
    let f = fixture();
    let r = f.get("/healthz").await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, "{\"status\":\"ok\"}\n"));
    assert_common_headers(&r, "application/json");
    // A generated request id is a UUID4; an over-long one is replaced.
    assert_eq!(header(&r, "x-request-id").map(str::len), Some(36));
    let long = "x".repeat(129);
    let r = f.send(request("GET", "/healthz", &[("x-request-id", &long)], None)).await;
    assert_eq!(header(&r, "x-request-id").map(str::len), Some(36));
    assert_eq!(f.get("/heal%74hz").await.text, "{\"status\":\"ok\"}\n");
    let health = f.get("/health").await;
    assert_eq!(
        health.text,
        "{\"boundary_policies\":0,\"boundary_policy_enforcement\":\"off\",\"evidence_store\":\"off\",\"network\":\"T\",\"status\":\"healthy\",\"version\":\"v0.1\"}\n"
    );
    let metrics = f.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert_common_headers(&metrics, "text/plain; version=0.0.4");
    assert!(
        metrics.text.contains("genesis_mesh_certificates_issued_total 0\n"),
        "{}",
        metrics.text
    );
    let sovereign = f.get("/sovereign.json").await.json();
    assert_eq!(sovereign["endpoint"], "http://na.test:8443", "the request's Host");
    assert_eq!(sovereign["network_authority"]["public_key"], f.audience.as_str());
    let ready = f.get("/readyz").await.json();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["signing_key"]["key_id"], "na-local");
    assert_eq!(f.get("/na/key-history").await.json()["successions"], json!([]));
    assert_eq!(f.get("/genesis").await.json()["network_name"], "T");
    assert_eq!(f.get("/crl").await.json()["sequence"], 0);
    assert_eq!(f.get("/policy").await.json()["policy_id"], "policy-T-v0.1");
    assert_eq!(f.get("/nodes").await.text, "{\"count\":0}\n");
}

#[tokio::test]
async fn malformed_json_is_400_invalid_json_whatever_the_route_and_changes_nothing() {
    let f = fixture();
    let h = f.sign(&f.op, "op", "POST", "/admin/invite", &json!({}));
    let r = f.admin_with(&h, "POST", "/admin/invite", "{\"roles\": ").await;
    assert_eq!(r.code(), (400, "invalid_json".into()), "{}", r.text);
    assert_eq!(r.message(), "Request body is not valid JSON");
    assert!(
        r.json()["error"]["details"]["reason"].as_str().is_some_and(|s| !s.is_empty()),
        "{}",
        r.text
    );
    assert_common_headers(&r, "application/json");
    assert!(f.stored("invites/").await.is_empty());
    // The nonce was not used: the same headers with the signed body still work.
    assert_eq!(f.admin_with(&h, "POST", "/admin/invite", "{}").await.status, StatusCode::CREATED);
    // Every route reads the body first, GET routes and unknown paths too.
    for (method, path) in [("GET", "/healthz"), ("POST", "/join"), ("POST", "/nowhere"), ("GET", "/crl")] {
        let r = f
            .send(request(method, path, &[], Some(("application/json", b"{\"a\": 1,}".to_vec()))))
            .await;
        assert_eq!(r.code(), (400, "invalid_json".into()), "{method} {path}");
    }
    // JSON content types with parameters, any case, and `+json`; a leading BOM.
    for ct in ["Application/JSON; charset=utf-8", "application/merge-patch+json"] {
        let r = f.send(request("POST", "/join", &[], Some((ct, b"[".to_vec())))).await;
        assert_eq!(r.code(), (400, "invalid_json".into()), "{ct}");
    }
    let bom = [b"\xef\xbb\xbf".as_slice(), b"{\"node_public_key\": \"\"}"].concat();
    let r = f.send(request("POST", "/join", &[], Some(("application/json", bom)))).await;
    assert_eq!(r.code(), (400, "missing_node_public_key".into()), "{}", r.text);
}

#[tokio::test]
async fn a_body_that_is_not_declared_json_reads_as_empty() {
    let f = fixture();
    let body = node_body(&keys::generate(), json!({"invite_token": "t"})).to_string().into_bytes();
    for ct in [Some("text/plain"), Some("application/jsonx"), None] {
        let mut req = request("POST", "/join", &[], Some(("text/plain", body.clone())));
        match ct {
            Some(ct) => {
                req.headers_mut().insert("content-type", ct.parse().expect("ct"));
            }
            None => {
                req.headers_mut().remove("content-type");
            }
        }
        let r = f.send(req).await;
        assert_eq!(r.code(), (400, "missing_node_public_key".into()), "{ct:?}: {}", r.text);
    }
    // Not even parsed: garbage is no error either.
    let r = f.send(request("POST", "/join", &[], Some(("text/plain", b"{{{".to_vec())))).await;
    assert_eq!(r.code(), (400, "missing_node_public_key".into()));
}

#[tokio::test]
async fn oversized_bodies_are_413_before_anything_else_and_change_nothing() {
    let f = fixture();
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(LIMIT));
    let h = f.sign(&f.op, "op", "POST", "/admin/invite", &serde_json::from_str(&big).expect("json"));
    let r = f.admin_with(&h, "POST", "/admin/invite", &big).await;
    assert_eq!(r.code(), (413, "request_too_large".into()), "{}", r.text);
    assert_eq!(r.message(), format!("Request body exceeds {LIMIT} bytes"));
    assert_common_headers(&r, "application/json");
    assert!(f.stored("invites/").await.is_empty());
    assert!(f.stored("nonces/").await.is_empty(), "the nonce was not claimed");
    // Whatever the content type or route.
    for (ct, path) in [
        ("text/plain", "/join"),
        ("application/json", "/healthz"),
        ("application/json", "/nowhere"),
    ] {
        let r = f.send(request("POST", path, &[], Some((ct, vec![b' '; LIMIT + 1])))).await;
        assert_eq!(r.code(), (413, "request_too_large".into()), "{ct} {path}");
    }
    // The limit itself is allowed.
    let padded = format!("{{\"p\":\"{}\"}}", "x".repeat(LIMIT - 8));
    assert_eq!(padded.len(), LIMIT);
    let r = f
        .send(request("POST", "/join", &[], Some(("application/json", padded.into_bytes()))))
        .await;
    assert_eq!(r.code(), (400, "missing_node_public_key".into()), "{}", r.text);
}

#[tokio::test]
async fn joins_are_rate_limited_per_address_with_retry_after() {
    let f = fixture();
    for _ in 0..10 {
        let r = f.send_from([127, 0, 0, 7], request("POST", "/join", &[], None)).await;
        assert_eq!(r.code(), (400, "missing_node_public_key".into()));
    }
    let r = f.send_from([127, 0, 0, 7], request("POST", "/join", &[], None)).await;
    assert_eq!(r.code(), (429, "rate_limited".into()));
    assert_eq!(r.message(), "Too many requests");
    assert_eq!(header(&r, "retry-after"), Some("60"));
    assert_common_headers(&r, "application/json");
    let other = f.send_from([127, 0, 0, 8], request("POST", "/join", &[], None)).await;
    assert_eq!(other.code(), (400, "missing_node_public_key".into()));
    assert!(header(&other, "retry-after").is_none());
}

#[tokio::test]
async fn routes_match_the_percent_decoded_path() {
    let f = fixture();
    assert_eq!(f.get("/%68ealthz").await.status, StatusCode::OK);
    for path in ["/healthz%3F", "/%68ealthz/", "/%ff", "/healthz%00"] {
        assert_eq!(f.get(path).await.code(), (404, "not_found".into()), "{path}");
    }
    // `%2F` separates segments; the decoded path is what the operator signs.
    let r = f.admin(&f.op, "op", "POST", "/admin%2Finvite", &json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // No key id before `/revoke`: an unknown path, refused before authentication.
    let r = f.admin(&f.op, "op", "POST", "/admin/operator-keys/revoke", &json!({})).await;
    assert_eq!(r.code(), (404, "not_found".into()));
    let r = f.post_json("/admin/operator-keys/revoke", &json!({})).await;
    assert_eq!(r.code(), (404, "not_found".into()));
}
