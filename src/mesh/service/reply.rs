//! What every answer looks like: JSON as Flask's `jsonify` writes it (compact, sorted
//! keys, a trailing newline) or Prometheus text, and the headers every response carries,
//! errors included: `X-Request-ID` (the request's, else a new UUID4), the CSP,
//! `X-Frame-Options`, `nosniff`, `Cache-Control: no-store`, and `Retry-After` on 429.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use super::Error;
use crate::mesh::{canonical, models};

tokio::task_local! {
    /// The request id of the request being answered (set by `finish`).
    static REQUEST_ID: String;
}

/// The id of the request being answered, for the error envelope.
pub(super) fn request_id() -> String {
    REQUEST_ID.try_with(String::clone).unwrap_or_else(|_| models::uuid4())
}

/// Runs the request with its id, then sets the common headers on whatever came back.
pub(super) async fn finish(req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(models::uuid4);
    let mut resp = REQUEST_ID.scope(request_id.clone(), next.run(req)).await;
    let status = resp.status();
    let h = resp.headers_mut();
    let mut set = |k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set("x-request-id", &request_id);
    set(
        "content-security-policy",
        "default-src 'self'; frame-ancestors 'none'; base-uri 'self'",
    );
    set("x-frame-options", "DENY");
    set("x-content-type-options", "nosniff");
    set("cache-control", "no-store");
    if status == StatusCode::TOO_MANY_REQUESTS {
        set("retry-after", "60");
    }
    resp
}

/// `v` as the NA writes JSON.
pub(super) fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut resp = (status, format!("{}\n", canonical::to_string(v))).into_response();
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    resp
}

/// A JSON answer with its status.
pub(super) struct Json<T>(pub StatusCode, pub T);

/// 200 with `body`.
pub(super) fn ok<T: Serialize>(body: T) -> Json<T> {
    Json(StatusCode::OK, body)
}

/// 201 with `body`.
pub(super) fn created<T: Serialize>(body: T) -> Json<T> {
    Json(StatusCode::CREATED, body)
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match serde_json::to_value(&self.1) {
            Ok(v) => json_response(self.0, &v),
            Err(e) => Error::Encode(e).into_response(),
        }
    }
}

/// Prometheus' text format (`/metrics`).
pub(super) struct Metrics(pub String);

impl IntoResponse for Metrics {
    fn into_response(self) -> Response {
        let mut resp = self.0.into_response();
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("text/plain; version=0.0.4"));
        resp
    }
}
