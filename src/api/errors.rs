//! The one table from netsy's errors to etcd's gRPC codes and messages
//! (etcd `api/v3rpc/rpctypes/error.go`). Clients match on these strings, so they are exact.

use tonic::{Code, Status};

use crate::core::CoreError;
use crate::mvcc::validate::InvalidRequest;
use crate::mvcc::MvccError;

/// What an etcd service answers with: the replica's errors, and the few that only the
/// API itself decides.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("authentication is not enabled")]
    AuthNotEnabled,
    #[error("not capable")]
    NotCapable,
    /// netsy has no users: enabling etcd's auth finds no root user.
    #[error("root user does not exist")]
    RootUserNotExist,
    #[error("user name not found")]
    UserNotFound,
    #[error("role name not found")]
    RoleNotFound,
    #[error("invalid alarm action")]
    InvalidAlarmAction,
    /// A Downgrade target that is neither `MAJOR.MINOR` nor a semver.
    #[error("wrong downgrade target version format")]
    WrongDowngradeVersionFormat,
    /// netsy cannot run as an older etcd: no downgrade target is valid.
    #[error("invalid downgrade target version")]
    InvalidDowngradeTargetVersion,
    #[error("no inflight downgrade job")]
    NoInflightDowngrade,
    /// A RangeStream asking for an order other than by key (etcd 3.7 refuses it too).
    #[error("RangeStream does not support sorting; use Range")]
    RangeStreamSorted,
    /// A Downgrade action etcd does not know.
    #[error("unknown method")]
    UnknownMethod,
}

impl From<InvalidRequest> for ApiError {
    fn from(e: InvalidRequest) -> Self {
        ApiError::Core(e.into())
    }
}

/// (code, message) for every error. Messages carry etcd's `etcdserver: ` prefix.
pub fn code_and_message(e: &ApiError) -> (Code, String) {
    let m = |s: &str| format!("etcdserver: {s}");
    let core = match e {
        ApiError::Core(core) => core,
        ApiError::AuthNotEnabled => return (Code::FailedPrecondition, m("authentication is not enabled")),
        ApiError::NotCapable => return (Code::FailedPrecondition, m("not capable")),
        ApiError::RootUserNotExist => return (Code::FailedPrecondition, m("root user does not exist")),
        ApiError::UserNotFound => return (Code::FailedPrecondition, m("user name not found")),
        ApiError::RoleNotFound => return (Code::FailedPrecondition, m("role name not found")),
        ApiError::InvalidAlarmAction => return (Code::InvalidArgument, m("invalid alarm action")),
        ApiError::WrongDowngradeVersionFormat => return (Code::InvalidArgument, m("wrong downgrade target version format")),
        ApiError::InvalidDowngradeTargetVersion => return (Code::InvalidArgument, m("invalid downgrade target version")),
        ApiError::NoInflightDowngrade => return (Code::FailedPrecondition, m("no inflight downgrade job")),
        ApiError::RangeStreamSorted => return (Code::InvalidArgument, m("RangeStream does not support sorting; use Range")),
        // Not in etcd's gRPC error table, so it goes out as Unknown.
        ApiError::UnknownMethod => return (Code::Unknown, m("unknown method")),
    };
    match core {
        CoreError::Apply(err) => match err {
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
        CoreError::RequestTooLarge { .. } => (Code::InvalidArgument, m("request is too large")),
        // Not etcd's "request is too large" (InvalidArgument, about the request): the
        // request is fine, its reply is not, and the operator needs the key to raise.
        // ResourceExhausted is what a gRPC client itself answers for a reply above its
        // receive limit.
        CoreError::ReadTooLarge { .. } => (
            Code::ResourceExhausted,
            m(&format!(
                "{core}; read it in pages (limit and a range from the last key) or with RangeStream"
            )),
        ),
        // etcd's own answer when it is too busy to take a request (ErrGRPCTooManyRequests).
        CoreError::ReadBudgetBusy { .. } => (Code::ResourceExhausted, m("too many requests")),
        CoreError::NoLeader => (Code::Unavailable, m("no leader")),
        CoreError::LeaderChanged => (Code::Unavailable, m("leader changed")),
        CoreError::Timeout => (Code::Unavailable, m("request timed out")),
        CoreError::Stopped => (Code::Unavailable, m("server stopped")),
        CoreError::MemberNotFound => (Code::NotFound, m("member not found")),
        // As etcd answers a write to a learner ("rpc not supported for learner").
        CoreError::Standby => (Code::Unavailable, m(&core.to_string())),
        CoreError::MemberNotLearner => (Code::FailedPrecondition, m("can only promote a learner member")),
        CoreError::BadLeaderTransferee => (Code::FailedPrecondition, m("bad leader transferee")),
        CoreError::LeaderTransferTimeout => (Code::Unavailable, m("request timed out, leader transfer took too long")),
        CoreError::LastVoter
        | CoreError::Raft(_)
        | CoreError::Format(_)
        | CoreError::Leader(_)
        | CoreError::UnexpectedResult { .. }
        | CoreError::Io { .. }
        | CoreError::Task(_) => (Code::Internal, m(&crate::error_chain(core))),
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let (code, msg) = code_and_message(&e);
        if code == Code::Internal {
            tracing::warn!(error = %crate::error_chain(&e), "request failed");
        }
        Status::new(code, msg)
    }
}

impl From<CoreError> for Status {
    fn from(e: CoreError) -> Status {
        ApiError::Core(e).into()
    }
}

impl From<MvccError> for Status {
    fn from(e: MvccError) -> Status {
        ApiError::Core(e.into()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_etcd_strings() {
        let core = |e: CoreError| ApiError::Core(e);
        let cases: Vec<(ApiError, Code, &str)> = vec![
            (
                core(MvccError::Compacted.into()),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                core(MvccError::FutureRevision.into()),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                core(MvccError::LeaseNotFound.into()),
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                core(MvccError::NoSpace.into()),
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
            (
                core(CoreError::RequestTooLarge { size: 2, limit: 1 }),
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                core(CoreError::ReadTooLarge { needed: 3 << 20, budget: 1 << 20 }),
                Code::ResourceExhausted,
                "etcdserver: the reply needs at least 3145728 bytes of memory, more than limits.read_memory_bytes (1048576); read it in pages (limit and a range from the last key) or with RangeStream",
            ),
            (
                core(CoreError::ReadBudgetBusy {
                    needed: 3,
                    budget: 1,
                    waited_ms: 7000,
                }),
                Code::ResourceExhausted,
                "etcdserver: too many requests",
            ),
            (core(CoreError::NoLeader), Code::Unavailable, "etcdserver: no leader"),
            (core(CoreError::LeaderChanged), Code::Unavailable, "etcdserver: leader changed"),
            (core(CoreError::Timeout), Code::Unavailable, "etcdserver: request timed out"),
            (core(CoreError::MemberNotFound), Code::NotFound, "etcdserver: member not found"),
            (
                core(CoreError::Standby),
                Code::Unavailable,
                "etcdserver: rpc not supported for a standby cluster (it only follows its primary; `netsy standby promote` makes it writable)",
            ),
            (
                ApiError::AuthNotEnabled,
                Code::FailedPrecondition,
                "etcdserver: authentication is not enabled",
            ),
            (ApiError::NotCapable, Code::FailedPrecondition, "etcdserver: not capable"),
            (
                ApiError::WrongDowngradeVersionFormat,
                Code::InvalidArgument,
                "etcdserver: wrong downgrade target version format",
            ),
            (
                ApiError::InvalidDowngradeTargetVersion,
                Code::InvalidArgument,
                "etcdserver: invalid downgrade target version",
            ),
            (
                ApiError::NoInflightDowngrade,
                Code::FailedPrecondition,
                "etcdserver: no inflight downgrade job",
            ),
            (ApiError::UnknownMethod, Code::Unknown, "etcdserver: unknown method"),
        ];
        for (err, code, msg) in cases {
            let s: Status = err.into();
            assert_eq!((s.code(), s.message()), (code, msg));
        }
    }

    #[test]
    fn an_internal_error_keeps_its_causes_in_the_message() {
        let e = CoreError::io("writing the snapshot copy", std::io::Error::other("disk full"));
        let s: Status = e.into();
        assert_eq!(s.code(), Code::Internal);
        assert_eq!(s.message(), "etcdserver: writing the snapshot copy: disk full");
    }
}
