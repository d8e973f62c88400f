//! etcd's HTTP endpoints on the client port, beside the gRPC services, as etcd serves them
//! on 2379: `/health`, `/livez` and `/readyz` (each check also at its own path, with
//! `?verbose` and `?exclude=`), `/version` and `/metrics`, over the port's own TLS (a
//! client certificate is required where the port requires one). The health port keeps
//! its own endpoints for Kubernetes probes (`crate::http`); these answer in etcd's words,
//! for tools written against etcd.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;

use super::errors::code_and_message;
use crate::core::{CoreError, Replica};
use crate::proto::etcdserverpb::{AlarmType, RangeRequest};

/// etcd's request timeout for the read a health check makes (its default: 5 s plus two
/// election timeouts).
const CHECK_TIMEOUT: Duration = Duration::from_secs(7);

struct Endpoints {
    replica: Arc<Replica>,
    /// The etcd server version this node reports.
    version: String,
    /// On a standby cluster: its own object storage, where promotion is asked for.
    standby_store: Option<Arc<dyn object_store::ObjectStore>>,
}

/// The routes, to be merged with the gRPC services' (gRPC requests never reach them:
/// their paths are `/etcdserverpb.*/*`).
pub fn router(replica: Arc<Replica>, version: String, standby_store: Option<Arc<dyn object_store::ObjectStore>>) -> Router {
    Router::new()
        .route("/health", any(health))
        .route("/livez", any(livez))
        .route("/livez/{check}", any(livez_one))
        .route("/readyz", any(readyz))
        .route("/readyz/{check}", any(readyz_one))
        .route("/version", any(version_info))
        .route("/metrics", any(metrics))
        .route("/netsy/standby/promote", any(promote_standby))
        .with_state(Arc::new(Endpoints {
            replica,
            version,
            standby_store,
        }))
}

/// The checks of `/livez` and `/readyz`, in the order etcd 3.6 registers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    DataCorruption,
    SerializableRead,
    LinearizableRead,
    NonLearner,
}

const LIVEZ: &[Check] = &[Check::SerializableRead];
const READYZ: &[Check] = &[
    Check::DataCorruption,
    Check::SerializableRead,
    Check::LinearizableRead,
    Check::NonLearner,
];

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
            Check::NonLearner => "non_learner",
        }
    }

    async fn run(self, replica: &Replica) -> Result<(), String> {
        match self {
            Check::DataCorruption => {
                let alarms = replica.alarms().await.map_err(|e| etcd_error(&e))?;
                if alarms.iter().any(|a| a.alarm == AlarmType::Corrupt as i32) {
                    return Err("alarm activated: CORRUPT".into());
                }
                Ok(())
            }
            Check::SerializableRead => read_check(replica, true).await,
            Check::LinearizableRead => read_check(replica, false).await,
            Check::NonLearner if replica.is_learner() => Err("not supported for learner".into()),
            Check::NonLearner => Ok(()),
        }
    }
}

/// An error as etcd's server words it (`etcdserver: …`).
fn etcd_error(e: &CoreError) -> String {
    code_and_message(&super::errors::ApiError::Core(e.clone())).1
}

/// The read a health check makes: one key, keys only.
async fn read_check(replica: &Replica, serializable: bool) -> Result<(), String> {
    let req = RangeRequest {
        key: vec![0],
        keys_only: true,
        limit: 1,
        serializable,
        ..Default::default()
    };
    match tokio::time::timeout(CHECK_TIMEOUT, replica.range(req)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(etcd_error(&e)),
        Err(_) => Err("etcdserver: request timed out".into()),
    }
}

/// The values of query parameter `name` (repeatable; empty values are skipped).
fn query_values(query: Option<&str>, name: &str) -> BTreeSet<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// Whether query parameter `name` is there with `value` (any value when `None`).
fn has_query(query: Option<&str>, name: &str, value: Option<&str>) -> bool {
    form_urlencoded::parse(query.unwrap_or("").as_bytes()).any(|(k, v)| k == name && value.is_none_or(|want| v == want))
}

/// A plain-text answer as Go's `http.Error` and handlers write them.
fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// etcd's health handlers take GET only.
fn not_get(method: &Method) -> Option<Response> {
    if method == Method::GET {
        return None;
    }
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n".into());
    resp.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET"));
    Some(resp)
}

/// `/health`: alarms (but those named in `exclude`), a leader (unless
/// `serializable=true`), then a read; `{"health":"true","reason":""}` or 503.
async fn health(State(s): State<Arc<Endpoints>>, method: Method, RawQuery(query): RawQuery) -> Response {
    if let Some(refused) = not_get(&method) {
        return refused;
    }
    let excluded = query_values(query.as_deref(), "exclude");
    let serializable = has_query(query.as_deref(), "serializable", Some("true"));
    let reason = health_reason(&s.replica, &excluded, serializable).await;
    let body = serde_json::json!({"health": if reason.is_none() { "true" } else { "false" }, "reason": reason.clone().unwrap_or_default()})
        .to_string();
    match reason {
        None => (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response(),
        Some(_) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{body}\n")),
    }
}

async fn health_reason(replica: &Replica, excluded: &BTreeSet<String>, serializable: bool) -> Option<String> {
    let alarms = match replica.alarms().await {
        Ok(alarms) => alarms,
        Err(e) => return Some(format!("RANGE ERROR:{}", etcd_error(&e))),
    };
    for alarm in alarms {
        let name = AlarmType::try_from(alarm.alarm).map_or("UNKNOWN", |t| t.as_str_name());
        if excluded.contains(name) {
            continue;
        }
        return Some(match AlarmType::try_from(alarm.alarm) {
            Ok(AlarmType::Nospace) => "ALARM NOSPACE".into(),
            Ok(AlarmType::Corrupt) => "ALARM CORRUPT".into(),
            _ => "ALARM UNKNOWN".into(),
        });
    }
    if !serializable && !replica.has_leader() {
        return Some("RAFT NO LEADER".into());
    }
    read_check(replica, serializable).await.err().map(|e| format!("RANGE ERROR:{e}"))
}

/// Runs `checks`; 200 with `ok` (the per-check lines first when `verbose`), or 503 with
/// every check's line.
async fn run_checks(replica: &Replica, checks: &[Check], verbose: bool) -> Response {
    let mut lines = String::new();
    let mut failed = false;
    for check in checks {
        match check.run(replica).await {
            Ok(()) => lines.push_str(&format!("[+]{} ok\n", check.name())),
            Err(e) => {
                failed = true;
                lines.push_str(&format!("[-]{} failed: {e}\n", check.name()));
            }
        }
    }
    if failed {
        return text(StatusCode::SERVICE_UNAVAILABLE, format!("{lines}\n"));
    }
    let body = if verbose { format!("{lines}ok\n") } else { "ok\n".into() };
    text(StatusCode::OK, body)
}

async fn checks_root(s: &Endpoints, all: &[Check], method: Method, query: Option<String>) -> Response {
    if let Some(refused) = not_get(&method) {
        return refused;
    }
    // Excluding a check that does not exist is no error (etcd only logs it).
    let excluded = query_values(query.as_deref(), "exclude");
    let checks: Vec<Check> = all.iter().copied().filter(|c| !excluded.contains(c.name())).collect();
    run_checks(&s.replica, &checks, has_query(query.as_deref(), "verbose", None)).await
}

async fn check_one(s: &Endpoints, all: &[Check], name: &str, method: Method, query: Option<String>) -> Response {
    let Some(check) = all.iter().copied().find(|c| c.name() == name) else {
        return not_found().await;
    };
    if let Some(refused) = not_get(&method) {
        return refused;
    }
    run_checks(&s.replica, &[check], has_query(query.as_deref(), "verbose", None)).await
}

async fn livez(State(s): State<Arc<Endpoints>>, method: Method, RawQuery(query): RawQuery) -> Response {
    checks_root(&s, LIVEZ, method, query).await
}

/// `POST /netsy/standby/promote` (netsy's own admin call, behind the client port's mTLS):
/// what `netsy standby promote` does, answered with the promotion record as JSON.
async fn promote_standby(State(s): State<Arc<Endpoints>>, method: Method) -> Response {
    use crate::archive::standby;
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "use POST\n").into_response();
    }
    let Some(store) = &s.standby_store else {
        return (StatusCode::CONFLICT, "this cluster is not a standby (or was promoted already)\n").into_response();
    };
    let failed = |e: standby::StandbyError| (StatusCode::BAD_GATEWAY, format!("{}\n", crate::error_chain(&e))).into_response();
    if let Err(e) = standby::request_promotion(store.as_ref()).await {
        return failed(e);
    }
    match standby::wait_promoted(store.as_ref(), standby::PROMOTE_WAIT).await {
        Ok(Some(record)) => axum::Json(record).into_response(),
        Ok(None) => (
            StatusCode::GATEWAY_TIMEOUT,
            "the standby's leader did not record the promotion in time; the request stays and is acted on\n",
        )
            .into_response(),
        Err(e) => failed(e),
    }
}

async fn readyz(State(s): State<Arc<Endpoints>>, method: Method, RawQuery(query): RawQuery) -> Response {
    checks_root(&s, READYZ, method, query).await
}

async fn livez_one(State(s): State<Arc<Endpoints>>, Path(name): Path<String>, method: Method, RawQuery(query): RawQuery) -> Response {
    check_one(&s, LIVEZ, &name, method, query).await
}

async fn readyz_one(State(s): State<Arc<Endpoints>>, Path(name): Path<String>, method: Method, RawQuery(query): RawQuery) -> Response {
    check_one(&s, READYZ, &name, method, query).await
}

async fn version_info(State(s): State<Arc<Endpoints>>) -> Response {
    let body = serde_json::json!({"etcdserver": s.version, "etcdcluster": crate::ETCD_CLUSTER_VERSION}).to_string();
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn metrics(State(s): State<Arc<Endpoints>>) -> Response {
    s.replica.publish_metrics();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        crate::metrics::render(),
    )
        .into_response()
}

/// What etcd's HTTP mux answers for any other path (Go's `http.NotFound`).
async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "404 page not found\n".into())
}

/// The answer for a request that matched neither a gRPC service nor an endpoint above: a
/// gRPC call gets gRPC's Unimplemented (worded as etcd's by the status layer), anything
/// else etcd's 404.
pub async fn fallback(req: axum::http::Request<Body>) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unimplemented("").into_http();
    }
    not_found().await
}
