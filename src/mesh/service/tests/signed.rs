//! Admin and node signatures, and each route's reading of its fields.

use super::*;

#[tokio::test]
async fn a_tampered_admin_signature_is_refused_and_its_nonce_stays_unused() {
    let f = fixture();
    let body = json!({"roles": ["role:client"]});
    let h = f.sign(&f.op, "op", "POST", "/admin/invite", &body);
    // The same headers over another body, path or method.
    let tampered = f
        .admin_with(&h, "POST", "/admin/invite", &json!({"roles": ["role:anchor"]}).to_string())
        .await;
    assert_eq!(tampered.code(), (401, "admin_auth_failed".into()));
    assert_eq!(tampered.message(), "Invalid admin signature");
    let reordered = f.admin_with(&h, "POST", "/admin/invite?x=1", &body.to_string()).await;
    assert_eq!(reordered.message(), "Invalid admin signature", "the query is signed");
    let mut forged = f.sign(&f.op, "op", "POST", "/admin/invite", &body);
    forged.signature = keys::b64(&[0u8; 64]);
    assert_eq!(
        f.admin_with(&forged, "POST", "/admin/invite", &body.to_string()).await.message(),
        "Invalid admin signature"
    );
    forged.signature = "not base64".into();
    assert_eq!(
        f.admin_with(&forged, "POST", "/admin/invite", &body.to_string()).await.message(),
        "Invalid admin signature"
    );
    assert!(f.stored("invites/").await.is_empty());
    // Signed bytes are the canonical form of the parsed body: key order and spacing do
    // not matter, so the untampered call goes through, once.
    let good = f
        .admin_with(&h, "POST", "/admin/invite", "{ \"roles\" : [ \"role:client\" ] }")
        .await;
    assert_eq!(good.status, StatusCode::CREATED, "{}", good.text);
    assert!(
        good.text.starts_with("{\"expires_at\":\"") && good.text.contains("\",\"token_id\":\""),
        "{}",
        good.text
    );
    let replay = f.admin_with(&h, "POST", "/admin/invite", &body.to_string()).await;
    assert_eq!(replay.message(), "Admin nonce already used");
    // Other refusals, in the NA's order.
    let mut stale = f.sign(&f.op, "op", "POST", "/admin/invite", &body);
    stale.timestamp = "2020-01-01T00:00:00+00:00".into();
    assert_eq!(
        f.admin_with(&stale, "POST", "/admin/invite", &body.to_string()).await.message(),
        "Admin request timestamp too old"
    );
    let mut long = f.sign(&f.op, "op", "POST", "/admin/invite", &body);
    long.nonce = "n".repeat(257);
    assert_eq!(
        f.admin_with(&long, "POST", "/admin/invite", &body.to_string()).await.message(),
        "Admin authentication header too long"
    );
    let unknown = f.admin(&f.op.clone(), "nobody", "POST", "/admin/invite", &body).await;
    assert_eq!(unknown.message(), "Unknown admin key");
    let low = f.admin(&f.reader.clone(), "reader", "POST", "/admin/invite", &body).await;
    assert_eq!(low.code(), (403, "insufficient_operator_tier".into()));
    assert_eq!(low.message(), "Operator key reader lacks the required tier");
    let none = f.post_json("/admin/invite", &body).await;
    assert_eq!(none.message(), "Missing admin authentication headers");
    assert_eq!(f.stored("invites/").await.len(), 1);
}

#[tokio::test]
async fn a_tampered_node_signature_is_refused_and_the_invite_stays_usable() {
    let f = fixture();
    let token = f.invite(json!({"roles": ["role:anchor"], "max_validity_hours": 10})).await;
    let node = keys::generate();
    let mut forged = node_body(&node, json!({"invite_token": token, "validity_hours": 5}));
    forged["validity_hours"] = json!(6);
    let r = f.post_json("/join", &forged).await;
    assert_eq!(r.code(), (401, "node_auth_failed".into()));
    assert_eq!(r.message(), "Invalid signature");
    let mut unsigned = node_body(&node, json!({"invite_token": token}));
    unsigned.as_object_mut().expect("object").remove("signature");
    unsigned.as_object_mut().expect("object").remove("nonce");
    let r = f.post_json("/join", &unsigned).await;
    assert_eq!(r.message(), "Missing authentication fields: nonce, signature");
    let mut stale = node_body(&node, json!({"invite_token": token}));
    stale["timestamp"] = json!("yesterday");
    assert_eq!(f.post_json("/join", &stale).await.message(), "Invalid timestamp format");
    assert!(f.stored("certs/").await.is_empty());
    assert!(f.stored(&format!("invites/{token}")).await[0].1["used_at"].is_null());
    // The signed body, with its fields in another order, joins (roles from the invite,
    // validity capped by it).
    let body = node_body(
        &node,
        json!({"invite_token": token, "validity_hours": 50, "roles": ["role:client"]}),
    );
    let text = {
        let m = body.as_object().expect("object");
        let fields: Vec<String> = m.iter().rev().map(|(k, v)| format!("{}: {v}", Value::String(k.clone()))).collect();
        format!("{{ {} }}", fields.join(", "))
    };
    let r = f
        .send(request("POST", "/join", &[], Some(("application/json", text.into_bytes()))))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let cert = r.json();
    assert_eq!(cert["roles"], json!(["role:anchor"]));
    let na_key = keys::public_key(&f.audience).expect("na key");
    assert!(keys::verify_document(&cert, &na_key));
    let hours = |c: &Value| {
        let t = |k: &str| timefmt::parse(c[k].as_str().expect("time")).expect("parse").at;
        (t("expires_at") - t("issued_at")).whole_hours()
    };
    assert_eq!(hours(&cert), 10);
    // Single use.
    let again = f.post_json("/join", &node_body(&node, json!({"invite_token": token}))).await;
    assert_eq!(again.code(), (403, "invalid_invite_token".into()));

    // Heartbeat: forged, replayed, other key.
    let id = cert["cert_id"].as_str().expect("cert id");
    let hb = node_body(&node, json!({"cert_id": id, "status": {"load": 0.5}}));
    let beat = f.post_json("/heartbeat", &hb).await;
    assert_eq!(beat.status, StatusCode::OK, "{}", beat.text);
    assert_eq!(beat.json()["ack"], true);
    assert_eq!(
        f.stored(&format!("certs/{id}")).await[0].1["heartbeat_status"],
        json!({"load": 0.5})
    );
    assert_eq!(
        f.post_json("/heartbeat", &hb).await.message(),
        "Nonce already used (replay detected)"
    );
    let mut forged = node_body(&node, json!({"cert_id": id, "status": "healthy"}));
    forged["status"] = json!("sick");
    assert_eq!(f.post_json("/heartbeat", &forged).await.message(), "Invalid signature");
    let other = f
        .post_json("/heartbeat", &node_body(&keys::generate(), json!({"cert_id": id})))
        .await;
    assert_eq!(other.code(), (403, "certificate_key_mismatch".into()));
    let missing = f.post_json("/heartbeat", &json!({"cert_id": id})).await;
    assert_eq!(missing.code(), (400, "missing_certificate_identity".into()));
    let unknown = f.post_json("/heartbeat", &node_body(&node, json!({"cert_id": "a/b"}))).await;
    assert_eq!(unknown.code(), (403, "certificate_not_found".into()));

    // Renewal keeps the roles and caps the validity.
    let change = f
        .post_json("/renew", &node_body(&node, json!({"cert_id": id, "roles": ["role:client"]})))
        .await;
    assert_eq!(change.code(), (403, "renewal_role_change_forbidden".into()));
    let renewed = f
        .post_json(
            "/renew",
            &node_body(&node, json!({"cert_id": id, "roles": ["role:anchor", 7], "validity_hours": 99})),
        )
        .await;
    assert_eq!(renewed.status, StatusCode::CREATED, "{}", renewed.text);
    assert_eq!(hours(&renewed.json()), 10);
    let bad = f
        .post_json("/renew", &node_body(&node, json!({"cert_id": id, "validity_hours": 0})))
        .await;
    assert_eq!(bad.code(), (400, "invalid_validity_hours".into()));
}

#[tokio::test]
async fn fields_of_the_wrong_type_get_the_routes_own_errors() {
    let f = fixture();
    let op = f.op.clone();
    let invite = |body: Value| {
        let op = op.clone();
        let f = &f;
        async move { f.admin(&op, "op", "POST", "/admin/invite", &body).await }
    };
    assert_eq!(invite(json!({"roles": "role:client"})).await.message(), "roles must be a list");
    assert_eq!(invite(json!({"roles": [5]})).await.message(), "Invalid role: ");
    assert_eq!(invite(json!({"roles": ["role:king"]})).await.message(), "Invalid role: role:king");
    for v in [json!(0), json!(-1), json!(1.5), json!("5"), json!(true), json!(u64::MAX)] {
        let r = invite(json!({"max_validity_hours": v})).await;
        assert_eq!(r.code(), (400, "invalid_max_validity_hours".into()), "{v}");
        let r = invite(json!({"token_expiry_hours": v})).await;
        assert_eq!(r.code(), (400, "invalid_token_expiry_hours".into()), "{v}");
    }
    // Unknown fields and nulls are accepted; a body that is not an object counts as
    // one without fields (and is signed as sent).
    assert_eq!(
        invite(json!({"roles": null, "max_validity_hours": null, "extra": [1]}))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(invite(json!([1, 2])).await.status, StatusCode::CREATED);
    // An edge invite (any non-null marker) needs a privileged key.
    let r = f
        .admin(
            &f.reader.clone(),
            "reader",
            "POST",
            "/admin/invite",
            &json!({"node_sovereign_id": false}),
        )
        .await;
    assert_eq!(r.code(), (403, "insufficient_operator_tier".into()));

    let node = keys::generate();
    for (body, code) in [
        (json!({"validity_hours": true}), (400, "invalid_validity_hours")),
        (json!({"validity_hours": 2.0}), (400, "invalid_validity_hours")),
        (json!({"node_public_key": 5}), (400, "missing_node_public_key")),
        (json!({"node_public_key": ""}), (400, "missing_node_public_key")),
        (json!({"node_public_key": "x", "invite_token": 5}), (403, "missing_invite_token")),
        (
            json!({"node_public_key": "x", "invite_token": "a/b"}),
            (403, "invalid_invite_token"),
        ),
    ] {
        let r = f
            .send_from(
                [127, 0, 0, 9],
                request("POST", "/join", &[], Some(("application/json", body.to_string().into_bytes()))),
            )
            .await;
        assert_eq!(r.code(), (code.0, code.1.to_string()), "{body}: {}", r.text);
    }
    let token = f.invite(json!({})).await;
    let mut body = node_body(&node, json!({"invite_token": token}));
    body["node_public_key"] = json!("not a key");
    let r = f.post_json("/join", &body).await;
    assert_eq!(
        (r.code(), r.message()),
        ((401, "node_auth_failed".into()), "Invalid node public key".into())
    );

    let revoke = |body: Value| {
        let op = op.clone();
        let f = &f;
        async move { f.admin(&op, "op", "POST", "/admin/revoke", &body).await }
    };
    assert_eq!(revoke(json!({"cert_id": 5})).await.code(), (400, "missing_cert_id".into()));
    assert_eq!(revoke(json!({"cert_id": ""})).await.code(), (400, "missing_cert_id".into()));
    let r = revoke(json!({"cert_id": "c", "reason": "bored"})).await;
    assert_eq!(r.code(), (400, "invalid_revocation_reason".into()));
    assert_eq!(
        r.message(),
        "reason must be one of key_compromise, cessation_of_operation, superseded, unspecified"
    );
    let r = revoke(json!({"cert_id": "c", "reason": 5})).await;
    assert_eq!(
        (r.code(), r.message()),
        ((404, "certificate_not_found".into()), "Certificate c not found".into()),
        "a reason that is no string is unspecified"
    );

    let policy = |body: Value| {
        let op = op.clone();
        let f = &f;
        async move { f.admin(&op, "op", "POST", "/admin/policy", &body).await }
    };
    for ports in [json!([0]), json!([65536]), json!(["443"]), json!(443)] {
        assert_eq!(
            policy(json!({"allowed_ports": ports})).await.code(),
            (400, "invalid_allowed_ports".into()),
            "{ports}"
        );
    }
    for services in [json!([1]), json!("api")] {
        assert_eq!(
            policy(json!({"allowed_services": services})).await.code(),
            (400, "invalid_allowed_services".into())
        );
    }
    let p = policy(json!({"policy_id": 7, "routing": "fast", "min_client_version": 2, "allowed_ports": [1, 65535]})).await;
    assert_eq!(p.status, StatusCode::CREATED, "{}", p.text);
    let p = p.json();
    assert!(p["policy_id"].as_str().is_some_and(|id| id.starts_with("policy-")));
    assert_eq!(p["min_client_version"], "0.1.0");
    assert_eq!(p["routing"], json!({"max_hops": 6, "preferred_transports": ["quic", "wireguard"]}));
    assert_eq!(p["allowed_ports"], json!([1, 65535]));
    let r = f.admin(&op, "op", "POST", "/admin/policy/rollback", &json!({"policy_id": 1})).await;
    assert_eq!(r.code(), (400, "missing_policy_id".into()));
    let r = f
        .admin(&op, "op", "POST", "/admin/policy/rollback", &json!({"policy_id": "gone"}))
        .await;
    assert_eq!(
        (r.code(), r.message()),
        ((404, "policy_not_found".into()), "Policy gone not found".into())
    );
    let history = f.admin(&op, "op", "GET", "/admin/policy/history", &json!({})).await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.text);
    assert_eq!(history.json()["versions"][0]["active"], true);
}

#[tokio::test]
async fn nodes_detail_needs_a_read_signature_and_operator_keys_revoke_by_decoded_id() {
    let f = fixture();
    let token = f.invite(json!({})).await;
    let node = keys::generate();
    assert_eq!(
        f.post_json("/join", &node_body(&node, json!({"invite_token": token}))).await.status,
        StatusCode::CREATED
    );
    assert_eq!(f.get("/nodes").await.json(), json!({"count": 1}));
    let detailed = f.admin(&f.reader.clone(), "reader", "GET", "/nodes", &json!({})).await;
    assert_eq!(detailed.status, StatusCode::OK, "{}", detailed.text);
    let nodes = detailed.json();
    assert_eq!(nodes["count"], 1);
    let (_, entry) = nodes["nodes"].as_object().and_then(|m| m.iter().next()).expect("one node");
    assert_eq!(entry["node_public_key"], keys::public_b64(&node).as_str());
    assert_eq!(entry["status"], "healthy");
    let anonymous = f.send(request("GET", "/nodes", &[("x-admin-key-id", "reader")], None)).await;
    assert_eq!(anonymous.message(), "Missing admin authentication headers");

    // The key id is the percent-decoded path segment, and that path is what is signed.
    let op = f.op.clone();
    let ghost = f.admin(&op, "op", "POST", "/admin/operator-keys/gh%6Fst/revoke", &json!({})).await;
    assert_eq!(
        (ghost.code(), ghost.message()),
        ((404, "unknown_operator_key".into()), "Unknown operator key ghost".into())
    );
    let r = f
        .admin(
            &op,
            "op",
            "POST",
            "/admin/operator-keys/rea%64er/revoke",
            &json!({"reason": "rotated"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let body = r.json();
    assert_eq!(
        (&body["key_id"], &body["reason"], &body["remaining_active_keys"]),
        (&json!("reader"), &json!("rotated"), &json!(1))
    );
    let again = f
        .admin(&op, "op", "POST", "/admin/operator-keys/reader/revoke", &json!({}))
        .await
        .json();
    assert_eq!(again, json!({"key_id": "reader", "revoked": true, "already_revoked": true}));
    let last = f.admin(&op, "op", "POST", "/admin/operator-keys/op/revoke", &json!({})).await;
    assert_eq!(last.code(), (409, "last_active_operator_key".into()));
    let gone = f.admin(&f.reader.clone(), "reader", "GET", "/nodes", &json!({})).await;
    assert_eq!(gone.message(), "Unknown admin key");
}
