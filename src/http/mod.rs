//! The health port: etcd's `/health` and `/version`, Kubernetes-style `/livez` and
//! `/readyz`, and Prometheus `/metrics`. It serves from the start of the process: while
//! the node starts (rebuilding from object storage can take minutes) it is alive, not
//! ready, with metrics (restore progress included); `Health::ready` hands it the replica.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::core::Replica;
use crate::proto::etcdserverpb::AlarmType;

/// What the health port answers from.
pub struct Health {
    /// The etcd server version this node reports.
    version: String,
    /// Set once the node has started.
    replica: OnceLock<Arc<Replica>>,
}

impl Health {
    pub fn starting(version: String) -> Arc<Health> {
        Arc::new(Health {
            version,
            replica: OnceLock::new(),
        })
    }

    /// The node has started: answer from `replica` from now on.
    pub fn ready(&self, replica: Arc<Replica>) {
        let _ = self.replica.set(replica);
    }
}

pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/health", get(health_check))
        .route("/readyz", get(readyz))
        .route("/livez", get(livez))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .with_state(health)
}

fn unhealthy(reason: impl Into<String>) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"health": "false", "reason": reason.into()})),
    )
        .into_response()
}

/// Healthy when a linearizable read succeeds and no NOSPACE/CORRUPT alarm is raised.
async fn health_check(State(health): State<Arc<Health>>) -> Response {
    let Some(replica) = health.replica.get() else {
        return unhealthy("starting");
    };
    let alarms = replica.alarms().await.unwrap_or_default();
    if let Some(a) = alarms.iter().find(|a| a.alarm != AlarmType::None as i32) {
        let name = AlarmType::try_from(a.alarm).map(|t| t.as_str_name()).unwrap_or("UNKNOWN");
        return unhealthy(format!("ALARM {name}"));
    }
    match tokio::time::timeout(Duration::from_secs(2), replica.linearizable_read()).await {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({"health": "true", "reason": ""}))).into_response(),
        Ok(Err(e)) => unhealthy(e.to_string()),
        Err(_) => unhealthy("timeout"),
    }
}

/// Ready once this node has a leader and has applied the log it was started with.
async fn readyz(State(health): State<Arc<Health>>) -> Response {
    match health.replica.get() {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting (restoring from object storage when the data directory was empty)",
        )
            .into_response(),
        Some(r) if r.is_ready() && r.is_standby() => (StatusCode::OK, "ok: standby (read only, following its primary)").into_response(),
        Some(r) if r.is_ready() => (StatusCode::OK, "ok").into_response(),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: no leader").into_response(),
    }
}

async fn livez() -> impl IntoResponse {
    (StatusCode::OK, "ok")
}

async fn version(State(health): State<Arc<Health>>) -> impl IntoResponse {
    Json(json!({"etcdserver": health.version, "etcdcluster": crate::ETCD_CLUSTER_VERSION}))
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if let Some(replica) = health.replica.get() {
        replica.publish_metrics();
    }
    ([("content-type", "text/plain; version=0.0.4")], crate::metrics::render())
}
