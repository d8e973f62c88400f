//! What the gRPC transport answers before a service sees a request (unknown paths,
//! message framing, the receive size limit, undecodable messages), in etcd's codes and
//! words: grpc-go's, which etcd 3.5 serves with. tonic words these its own way, so its
//! answers are recognised here by code and text and replaced. Clients of etcd match on
//! these codes (a `ResourceExhausted` is not an `OutOfRange`), and people search for
//! these words. Protobuf decode errors keep their code (Internal) and tonic's text: the
//! Go decoder's wording depends on its generated code and is not reproduced.
//!
//! Unary answers are rewritten by `EtcdStatusLayer` on the way out; the streaming
//! services pass what their input stream failed with through `received`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http;
use tonic::{Code, Status};

use crate::mvcc::validate::InvalidRequest;
use crate::proto::etcdserverpb::{auth_server, cluster_server, kv_server, lease_server, maintenance_server, watch_server};

/// The services the client port serves (`api::router`); grpc-go names a known
/// service's unknown method differently from an unknown service.
const SERVICES: &[&str] = &[
    kv_server::SERVICE_NAME,
    watch_server::SERVICE_NAME,
    lease_server::SERVICE_NAME,
    cluster_server::SERVICE_NAME,
    maintenance_server::SERVICE_NAME,
    auth_server::SERVICE_NAME,
];

const TXN_PATH: &str = "/etcdserverpb.KV/Txn";

/// How a request's messages arrived: grpc-go words a few receive errors differently
/// for a unary call and a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Unary,
    Stream,
}

/// etcd's answer for what tonic answered to a unary call on `path`, when they differ.
fn as_etcd(path: &str, status: &Status) -> Option<Status> {
    let msg = status.message();
    match status.code() {
        Code::Unimplemented if msg.is_empty() => Some(Status::unimplemented(unknown_path(path))),
        // Only a nested txn nests messages deeply enough to reach the decoder's
        // recursion limit; etcd refuses one nested past its limit with this error.
        Code::Internal
            if path == TXN_PATH && msg.starts_with("failed to decode Protobuf message") && msg.ends_with("recursion limit reached") =>
        {
            Some(super::errors::ApiError::from(InvalidRequest::TooManyOps).into())
        }
        _ => receive_error(Call::Unary, status),
    }
}

/// etcd's words for an error receiving a message, when tonic's differ.
fn receive_error(call: Call, status: &Status) -> Option<Status> {
    let msg = status.message();
    match status.code() {
        Code::OutOfRange => {
            let rest = msg.strip_prefix("Error, decoded message length too large: found ")?;
            let (len, rest) = rest.split_once(" bytes, the limit is: ")?;
            let limit = rest.strip_suffix(" bytes")?;
            Some(Status::resource_exhausted(format!(
                "grpc: received message larger than max ({len} vs. {limit})"
            )))
        }
        Code::Internal => {
            if msg == "Unexpected EOF decoding stream." {
                // A unary call's receive error keeps its Go error (`Unknown`); a stream's
                // is converted (`io.ErrUnexpectedEOF` is `Internal`).
                let code = if call == Call::Unary { Code::Unknown } else { Code::Internal };
                return Some(Status::new(code, "unexpected EOF"));
            }
            if msg == "Missing request message." {
                return Some(Status::unknown("EOF"));
            }
            if msg == "protocol error: received message with compressed-flag but no grpc-encoding was specified" {
                return Some(Status::internal("grpc: compressed flag set with identity or empty encoding"));
            }
            let rest = msg.strip_prefix("protocol error: received message with invalid compression flag: ")?;
            let (flag, _) = rest.split_once(' ')?;
            Some(Status::internal(format!("grpc: received unexpected payload format {flag}")))
        }
        _ => None,
    }
}

/// What a streaming call's input failed with (it ends the call), in etcd's words.
pub(super) fn received(status: Status) -> Status {
    receive_error(Call::Stream, &status).unwrap_or(status)
}

/// grpc-go's message for a path no service serves.
fn unknown_path(path: &str) -> String {
    let name = path.strip_prefix('/').unwrap_or(path);
    match name.rsplit_once('/') {
        None => format!("malformed method name: {path:?}"),
        Some((service, method)) if SERVICES.contains(&service) => format!("unknown method {method} for service {service}"),
        Some((service, _)) => format!("unknown service {service}"),
    }
}

/// Rewrites trailers-only answers (the status in the response headers: how tonic
/// answers a unary call it could not decode, and a path it does not serve).
#[derive(Debug, Clone, Copy, Default)]
pub struct EtcdStatusLayer;

impl<S> tower::Layer<S> for EtcdStatusLayer {
    type Service = EtcdStatus<S>;

    fn layer(&self, inner: S) -> EtcdStatus<S> {
        EtcdStatus { inner }
    }
}

#[derive(Debug, Clone)]
pub struct EtcdStatus<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for EtcdStatus<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let mut resp = answer.await?;
            rewrite(&path, resp.headers_mut());
            Ok(resp)
        })
    }
}

fn rewrite(path: &str, headers: &mut http::HeaderMap) {
    let Some(status) = Status::from_header_map(headers) else { return };
    let Some(etcd) = as_etcd(path, &status) else { return };
    headers.remove(Status::GRPC_MESSAGE);
    if let Err(e) = etcd.add_header(headers) {
        // Every message above is ASCII: this does not happen.
        tracing::warn!(error = %e, "could not word a transport error as etcd does");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd(path: &str, call: Call, code: Code, msg: &str) -> Option<(Code, String)> {
        let status = Status::new(code, msg);
        let etcd = match call {
            Call::Unary => as_etcd(path, &status),
            Call::Stream => Some(received(status)),
        };
        etcd.map(|s| (s.code(), s.message().to_string()))
    }

    #[test]
    fn tonic_transport_errors_in_grpc_go_words() {
        let put = "/etcdserverpb.KV/Put";
        let cases = [
            (
                Code::OutOfRange,
                "Error, decoded message length too large: found 2097172 bytes, the limit is: 2097152 bytes",
                Call::Unary,
                Code::ResourceExhausted,
                "grpc: received message larger than max (2097172 vs. 2097152)",
            ),
            (
                Code::Internal,
                "Unexpected EOF decoding stream.",
                Call::Unary,
                Code::Unknown,
                "unexpected EOF",
            ),
            (
                Code::Internal,
                "Unexpected EOF decoding stream.",
                Call::Stream,
                Code::Internal,
                "unexpected EOF",
            ),
            (Code::Internal, "Missing request message.", Call::Unary, Code::Unknown, "EOF"),
            (
                Code::Internal,
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
                Call::Unary,
                Code::Internal,
                "grpc: compressed flag set with identity or empty encoding",
            ),
            (
                Code::Internal,
                "protocol error: received message with invalid compression flag: 7 (valid flags are 0 and 1), while sending request",
                Call::Unary,
                Code::Internal,
                "grpc: received unexpected payload format 7",
            ),
        ];
        for (code, msg, call, want_code, want_msg) in cases {
            assert_eq!(etcd(put, call, code, msg), Some((want_code, want_msg.to_string())), "{msg}");
        }
        assert_eq!(etcd(put, Call::Unary, Code::Internal, "failed to decode Protobuf message: x"), None);
        assert_eq!(
            etcd(put, Call::Unary, Code::InvalidArgument, "etcdserver: key is not provided"),
            None
        );
    }

    #[test]
    fn unknown_paths_and_deep_txns() {
        let unknown = |path: &str| etcd(path, Call::Unary, Code::Unimplemented, "").map(|(_, m)| m);
        assert_eq!(
            unknown("/etcdserverpb.KV/Nope").as_deref(),
            Some("unknown method Nope for service etcdserverpb.KV")
        );
        assert_eq!(unknown("/v3lockpb.Lock/Lock").as_deref(), Some("unknown service v3lockpb.Lock"));
        assert_eq!(unknown("/nothing").as_deref(), Some("malformed method name: \"/nothing\""));
        let deep = "failed to decode Protobuf message: TxnRequest.success: RequestOp.request: recursion limit reached";
        assert_eq!(
            etcd(TXN_PATH, Call::Unary, Code::Internal, deep),
            Some((Code::InvalidArgument, "etcdserver: too many operations in txn request".into()))
        );
        assert_eq!(etcd("/etcdserverpb.KV/Range", Call::Unary, Code::Internal, deep), None);
    }
}
