//! The health port: etcd's `/health` and `/version`, Kubernetes-style `/livez` and
//! `/readyz`, and Prometheus `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::proto::etcdserverpb::AlarmType;
use crate::server::Node;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/readyz", get(readyz))
        .route("/livez", get(livez))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .with_state(node)
}

/// The health port while the node is starting (rebuilding from object storage can take
/// minutes): alive, not ready, with metrics (restore progress included).
pub fn starting_router() -> Router {
    async fn not_ready() -> impl IntoResponse {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting (restoring from object storage when the data directory was empty)",
        )
    }
    async fn not_healthy() -> impl IntoResponse {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"health": "false", "reason": "starting"})),
        )
    }
    async fn plain_metrics() -> impl IntoResponse {
        ([("content-type", "text/plain; version=0.0.4")], crate::metrics::render())
    }
    Router::new()
        .route("/health", get(not_healthy))
        .route("/readyz", get(not_ready))
        .route("/livez", get(livez))
        .route("/metrics", get(plain_metrics))
}

/// Healthy when a linearizable read succeeds and no NOSPACE/CORRUPT alarm is raised.
async fn health(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let alarms = node.read(|r| r.alarms()).await.unwrap_or_default();
    if let Some(a) = alarms.iter().find(|a| a.alarm != AlarmType::None as i32) {
        let name = AlarmType::try_from(a.alarm).map(|t| t.as_str_name()).unwrap_or("UNKNOWN");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"health": "false", "reason": format!("ALARM {name}")})),
        );
    }
    match tokio::time::timeout(Duration::from_secs(2), node.linearizable_read()).await {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({"health": "true", "reason": ""}))),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"health": "false", "reason": e.to_string()})),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"health": "false", "reason": "timeout"})),
        ),
    }
}

/// Ready once this node has a leader and has applied the log it was started with.
async fn readyz(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let m = node.raft.metrics().borrow().clone();
    if m.current_leader.is_some() && m.last_applied.is_some() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: no leader")
    }
}

async fn livez() -> impl IntoResponse {
    (StatusCode::OK, "ok")
}

async fn version(State(node): State<Arc<Node>>) -> impl IntoResponse {
    Json(json!({"etcdserver": node.config.etcd_version, "etcdcluster": crate::ETCD_CLUSTER_VERSION}))
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let m = node.raft.metrics().borrow().clone();
    crate::metrics::HAS_LEADER.set(m.current_leader.is_some() as i64);
    crate::metrics::IS_LEADER.set((m.current_leader == Some(node.identity.raft_id)) as i64);
    crate::metrics::APPLIED_INDEX.set(m.last_applied.map_or(0, |l| l.index) as i64);
    if let Ok(revs) = node.reader.revisions() {
        crate::metrics::CURRENT_REVISION.set(revs.current);
        crate::metrics::COMPACT_REVISION.set(revs.compacted);
    }
    ([("content-type", "text/plain; version=0.0.4")], crate::metrics::render())
}
