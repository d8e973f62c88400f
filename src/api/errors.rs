//! The one table from internal errors to etcd's gRPC codes and messages
//! (etcd `api/v3rpc/rpctypes/error.go`). Clients match on these strings, so they are exact.

use tonic::{Code, Status};

use crate::mvcc::validate::InvalidRequest;
use crate::mvcc::MvccError;
use crate::raft::proposer::ProposeError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error("request is too large")]
    RequestTooLarge,
    #[error("no leader")]
    NoLeader,
    #[error("leader changed")]
    LeaderChanged,
    #[error("request timed out")]
    Timeout,
    #[error("server stopped")]
    Stopped,
    #[error("authentication is not enabled")]
    AuthNotEnabled,
    #[error("member not found")]
    MemberNotFound,
    #[error("can only promote a learner member")]
    MemberNotLearner,
    #[error("bad leader transferee")]
    BadLeaderTransferee,
    #[error("leader transfer took too long")]
    LeaderTransferTimeout,
    #[error("not capable")]
    NotCapable,
    #[error("lease not found")]
    LeaseNotFound,
    #[error("internal: {0}")]
    Internal(String),
    /// An error the leader answered a forwarded request with, passed on as it came.
    #[error("{message}")]
    Forwarded { code: i32, message: String },
}

impl ApiError {
    /// The error a forwarded request came back with: etcd's retryable errors by name,
    /// anything else verbatim. Transport failures (the leader went away mid-request)
    /// become etcd's "request timed out": the write may or may not have applied.
    pub fn from_peer(status: &Status) -> ApiError {
        let (m, code) = (status.message(), status.code());
        match m {
            "etcdserver: no leader" => ApiError::NoLeader,
            "etcdserver: leader changed" => ApiError::LeaderChanged,
            "etcdserver: request timed out" => ApiError::Timeout,
            "etcdserver: server stopped" => ApiError::Stopped,
            _ if !m.starts_with("etcdserver: ") => ApiError::Timeout,
            _ => ApiError::Forwarded {
                code: code as i32,
                message: m.to_string(),
            },
        }
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NoLeader => ApiError::NoLeader,
            ProposeError::LeaderChanged => ApiError::LeaderChanged,
            ProposeError::Stopped => ApiError::Stopped,
            ProposeError::NoQuorum => ApiError::Timeout,
            ProposeError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<InvalidRequest> for ApiError {
    fn from(e: InvalidRequest) -> Self {
        ApiError::Mvcc(MvccError::Invalid(e))
    }
}

/// (code, message) for every error. Messages carry etcd's `etcdserver: ` prefix.
pub fn code_and_message(e: &ApiError) -> (Code, String) {
    let m = |s: &str| format!("etcdserver: {s}");
    match e {
        ApiError::Mvcc(err) => match err {
            MvccError::Compacted => (Code::OutOfRange, m("mvcc: required revision has been compacted")),
            MvccError::FutureRevision => (Code::OutOfRange, m("mvcc: required revision is a future revision")),
            MvccError::KeyNotFound => (Code::InvalidArgument, m("key not found")),
            MvccError::LeaseNotFound => (Code::NotFound, m("requested lease not found")),
            MvccError::LeaseExists => (Code::FailedPrecondition, m("lease already exists")),
            MvccError::LeaseTtlTooLarge => (Code::OutOfRange, m("too large lease TTL")),
            MvccError::NoSpace => (Code::ResourceExhausted, m("mvcc: database space exceeded")),
            MvccError::Invalid(inv) => (Code::InvalidArgument, m(&inv.to_string())),
            MvccError::Storage(s) => (Code::Internal, m(&format!("storage error: {s}"))),
        },
        ApiError::RequestTooLarge => (Code::InvalidArgument, m("request is too large")),
        ApiError::NoLeader => (Code::Unavailable, m("no leader")),
        ApiError::LeaderChanged => (Code::Unavailable, m("leader changed")),
        ApiError::Timeout => (Code::Unavailable, m("request timed out")),
        ApiError::Stopped => (Code::Unavailable, m("server stopped")),
        ApiError::AuthNotEnabled => (Code::FailedPrecondition, m("authentication is not enabled")),
        ApiError::MemberNotFound => (Code::NotFound, m("member not found")),
        ApiError::MemberNotLearner => (Code::FailedPrecondition, m("can only promote a learner member")),
        ApiError::BadLeaderTransferee => (Code::FailedPrecondition, m("bad leader transferee")),
        ApiError::LeaderTransferTimeout => (Code::Unavailable, m("request timed out, leader transfer took too long")),
        ApiError::NotCapable => (Code::FailedPrecondition, m("not capable")),
        ApiError::LeaseNotFound => (Code::NotFound, m("requested lease not found")),
        ApiError::Internal(s) => (Code::Internal, m(s)),
        ApiError::Forwarded { code, message } => (Code::from_i32(*code), message.clone()),
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let (code, msg) = code_and_message(&e);
        Status::new(code, msg)
    }
}

impl From<MvccError> for Status {
    fn from(e: MvccError) -> Status {
        ApiError::Mvcc(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_etcd_strings() {
        let cases: Vec<(ApiError, Code, &str)> = vec![
            (
                MvccError::Compacted.into(),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                MvccError::FutureRevision.into(),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                MvccError::LeaseNotFound.into(),
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                MvccError::NoSpace.into(),
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (
                InvalidRequest::EmptyKey.into(),
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                InvalidRequest::TooManyOps.into(),
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                InvalidRequest::DuplicateKey.into(),
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (ApiError::RequestTooLarge, Code::InvalidArgument, "etcdserver: request is too large"),
            (ApiError::NoLeader, Code::Unavailable, "etcdserver: no leader"),
            (
                ApiError::AuthNotEnabled,
                Code::FailedPrecondition,
                "etcdserver: authentication is not enabled",
            ),
        ];
        for (err, code, msg) in cases {
            let s: Status = err.into();
            assert_eq!((s.code(), s.message()), (code, msg));
        }
    }
}
