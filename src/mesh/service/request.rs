//! How the service reads a request, the same for every route: the percent-decoded path
//! (what routing matches and admin signatures cover), the query and headers (`Head`), and
//! the body (`Body`): at most `NA_MAX_REQUEST_BYTES` (else 413), JSON only when the content
//! type says so (else `{}`), a UTF-8 BOM skipped; malformed JSON (or an integer beyond 64 bits, see
//! `canonical::from_slice`) is 400 `invalid_json`.
//! Every handler takes the body, so those refusals come first on every route, unknown
//! paths too, as they always did.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::uri::{PathAndQuery, Uri};
use axum::http::{HeaderMap, Method};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Authority, Error};

/// Bytes kept as they are when a decoded path is written back into the URI: RFC 3986's
/// unreserved characters, sub-delimiters, `:`, `@` and `/`.
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@')
    .remove(b'/');

fn decoded(path: &str) -> String {
    percent_decode_str(path).decode_utf8_lossy().into_owned()
}

/// Before routing: the URI's path percent-decoded, so `/heal%74hz` is `/healthz` and
/// `%2F` separates segments, as the NA matches paths. Bytes that cannot stand in a URI
/// path stay encoded (decoding the result again gives the same decoded path).
pub(super) fn decode_path(mut req: Request) -> Request {
    let path = req.uri().path();
    if !path.contains('%') {
        return req;
    }
    let path = utf8_percent_encode(&decoded(path), PATH).to_string();
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = PathAndQuery::try_from(path_and_query) {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// The request line and headers.
pub(super) struct Head {
    pub method: Method,
    /// Percent-decoded, without the query.
    pub path: String,
    /// The query string as sent.
    pub query: Option<String>,
    pub headers: HeaderMap,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Head {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Head, Infallible> {
        Ok(Head {
            method: parts.method.clone(),
            path: decoded(parts.uri.path()),
            query: parts.uri.query().map(str::to_string),
            headers: parts.headers.clone(),
        })
    }
}

/// A request body: `raw` is the JSON as parsed (what node and admin signatures cover,
/// through its canonical form), `fields` the route's typed reading of it. Fields are read
/// as the NA always read them, so no field makes the body itself invalid (see `fields`):
/// unknown fields are ignored, and a body that is not an object has no fields.
pub(super) struct Body<T = NoFields> {
    pub raw: Value,
    pub fields: T,
}

/// The reading of a body whose fields a route does not look at.
#[derive(Debug, Default, Deserialize)]
pub(super) struct NoFields {}

fn is_json(headers: &HeaderMap) -> bool {
    headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|ct| {
        let ct = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        ct == "application/json" || ct.ends_with("+json")
    })
}

impl<T: DeserializeOwned> FromRequest<Arc<Authority>> for Body<T> {
    type Rejection = Error;

    async fn from_request(req: Request, na: &Arc<Authority>) -> Result<Body<T>, Error> {
        let json = is_json(req.headers());
        let limit = na.cfg.max_request_bytes;
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|source| Error::TooLarge { limit, source })?;
        let raw = if json && !bytes.is_empty() {
            let text = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
            crate::mesh::canonical::from_slice(text).map_err(Error::InvalidJson)?
        } else {
            Value::Object(Map::new())
        };
        let fields = match &raw {
            Value::Object(_) => T::deserialize(&raw),
            _ => T::deserialize(&Value::Object(Map::new())),
        }
        .map_err(Error::InvalidJson)?;
        Ok(Body { raw, fields })
    }
}
