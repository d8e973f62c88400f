//! etcd's HTTP endpoints on the client port (beside gRPC), black-box: `/health` and
//! `/version`, 405s and 404s compared with real etcd 3.5.1; `/livez` and `/readyz` (etcd
//! 3.6's, which 3.5.1 does not have) with `verbose`, `exclude=` and one path per check;
//! `/metrics`; and the answers while a CORRUPT alarm is raised.

use std::collections::BTreeMap;

use netsy::proto::etcdserverpb as pb;
use tonic::transport::Channel;

use crate::common::{Etcd, Netsy};

/// One HTTP/1.1 exchange on the loopback `port`: status, headers (lower-case names) and
/// body.
fn http(port: u16, method: &str, path: &str) -> (u16, BTreeMap<String, String>, String) {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    exchange(s, request.as_bytes())
}

/// Sends `request` and reads the response until the server closes.
pub fn exchange(mut s: impl std::io::Read + std::io::Write, request: &[u8]) -> (u16, BTreeMap<String, String>, String) {
    s.write_all(request).expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    parse(&String::from_utf8_lossy(&raw))
}

/// Status, headers and (de-chunked) body of an HTTP/1.1 response.
pub fn parse(text: &str) -> (u16, BTreeMap<String, String>, String) {
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if headers.get("transfer-encoding").is_some_and(|t| t == "chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, headers, body)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

#[test]
fn health_version_and_refusals_answer_as_etcd_does() {
    let netsy = Netsy::start();
    let etcd = Etcd::start();
    let (n, e) = (netsy.client_port, etcd.client_port);
    for path in ["/health", "/health?serializable=true", "/health?exclude=NOSPACE"] {
        let (ns, _, nb) = http(n, "GET", path);
        let (es, _, eb) = http(e, "GET", path);
        assert_eq!((ns, nb.as_str()), (es, eb.as_str()), "GET {path}");
        assert_eq!((ns, nb.as_str()), (200, r#"{"health":"true","reason":""}"#), "GET {path}");
    }
    // Other methods and unknown paths.
    for (method, path) in [
        ("POST", "/health"),
        ("PUT", "/health"),
        ("GET", "/nothing-here"),
        ("GET", "/health/x"),
    ] {
        let (ns, nh, nb) = http(n, method, path);
        let (es, eh, eb) = http(e, method, path);
        assert_eq!((ns, &nb), (es, &eb), "{method} {path}");
        assert_eq!(nh.get("allow"), eh.get("allow"), "{method} {path}: Allow");
        assert_eq!(nh.get("content-type"), eh.get("content-type"), "{method} {path}: Content-Type");
    }
    let version = |port| {
        let (status, _, body) = http(port, "GET", "/version");
        assert_eq!(status, 200);
        serde_json::from_str::<serde_json::Value>(&body).expect("JSON")
    };
    let (nv, ev) = (version(n), version(e));
    assert_eq!(nv["etcdcluster"], ev["etcdcluster"]);
    assert!(nv["etcdserver"].as_str().is_some_and(|v| v.starts_with("3.")), "{nv}");
    let (status, _, body) = http(n, "GET", "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("etcd_server_has_leader 1"), "{body}");
}

#[test]
fn livez_and_readyz_run_etcds_checks() {
    let n = Netsy::start();
    let get = |path: &str| {
        let (status, headers, body) = http(n.client_port, "GET", path);
        (status, headers.get("content-type").cloned().unwrap_or_default(), body)
    };
    let ok = |body: &str| (200, "text/plain; charset=utf-8".to_string(), body.to_string());
    assert_eq!(get("/livez"), ok("ok\n"));
    assert_eq!(get("/livez?verbose"), ok("[+]serializable_read ok\nok\n"));
    assert_eq!(get("/readyz"), ok("ok\n"));
    assert_eq!(
        get("/readyz?verbose"),
        ok("[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n[+]non_learner ok\nok\n")
    );
    assert_eq!(
        get("/readyz?verbose&exclude=linearizable_read&exclude=no_such_check"),
        ok("[+]data_corruption ok\n[+]serializable_read ok\n[+]non_learner ok\nok\n")
    );
    assert_eq!(get("/readyz/linearizable_read?verbose"), ok("[+]linearizable_read ok\nok\n"));
    assert_eq!(get("/livez/serializable_read"), ok("ok\n"));
    assert_eq!(get("/readyz/no_such_check").0, 404);
    assert_eq!(get("/livez/linearizable_read").0, 404, "livez has one check");
    let (status, headers, body) = http(n.client_port, "POST", "/readyz");
    assert_eq!(
        (status, headers.get("allow").map(String::as_str), body.as_str()),
        (405, Some("GET"), "Method Not Allowed\n")
    );
}

async fn raise_corrupt_alarm(endpoint: String) {
    let channel = Channel::from_shared(endpoint).expect("uri").connect().await.expect("connect");
    let mut maintenance = pb::maintenance_client::MaintenanceClient::new(channel);
    let status = maintenance.status(pb::StatusRequest {}).await.expect("status").into_inner();
    maintenance
        .alarm(pb::AlarmRequest {
            action: pb::alarm_request::AlarmAction::Activate as i32,
            member_id: status.header.expect("header").member_id,
            alarm: pb::AlarmType::Corrupt as i32,
        })
        .await
        .expect("raise the alarm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_alarm_fails_health_and_readyz_as_in_etcd() {
    let netsy = Netsy::start();
    let etcd = Etcd::start();
    raise_corrupt_alarm(netsy.endpoint()).await;
    raise_corrupt_alarm(format!("http://{}", etcd.endpoint())).await;
    let (n, e) = (netsy.client_port, etcd.client_port);
    for path in ["/health", "/health?exclude=CORRUPT", "/health?exclude=CORRUPT&serializable=true"] {
        let (ns, nh, nb) = tokio::task::block_in_place(|| http(n, "GET", path));
        let (es, eh, eb) = tokio::task::block_in_place(|| http(e, "GET", path));
        assert_eq!((ns, &nb), (es, &eb), "GET {path}");
        assert_eq!(nh.get("content-type"), eh.get("content-type"), "GET {path}");
    }
    assert_eq!(
        tokio::task::block_in_place(|| http(n, "GET", "/health")).2,
        "{\"health\":\"false\",\"reason\":\"ALARM CORRUPT\"}\n"
    );
    let (status, _, body) = tokio::task::block_in_place(|| http(n, "GET", "/readyz"));
    assert_eq!(
        (status, body.as_str()),
        (
            503,
            "[-]data_corruption failed: alarm activated: CORRUPT\n[+]serializable_read ok\n[+]linearizable_read ok\n[+]non_learner ok\n\n"
        )
    );
    let (status, _, body) = tokio::task::block_in_place(|| http(n, "GET", "/readyz?exclude=data_corruption"));
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(
        tokio::task::block_in_place(|| http(n, "GET", "/livez")).0,
        200,
        "alive all the same"
    );
}
