//! `CoreError` on the peer wire: the typed `PeerError` message (proto/netsy/peer.proto),
//! in a `ProposalResult` or in the details of a unary RPC's gRPC status.

use tonic::{Code, Status};

use crate::core::CoreError;
use crate::proto::peer::{peer_error::Kind, PeerError};
use crate::raft::codec::{self, command::error_from_pb, command::error_to_pb};

pub fn to_pb(e: &CoreError) -> PeerError {
    let mut out = PeerError::default();
    let kind = match e {
        CoreError::Apply(m) => {
            out.apply = Some(error_to_pb(m));
            Kind::Apply
        }
        CoreError::RequestTooLarge { size, limit } => {
            out.size = *size as u64;
            out.limit = *limit as u64;
            Kind::RequestTooLarge
        }
        CoreError::NoLeader => Kind::NoLeader,
        CoreError::LeaderChanged => Kind::LeaderChanged,
        CoreError::Timeout => Kind::Timeout,
        CoreError::Stopped => Kind::Stopped,
        CoreError::MemberNotFound => Kind::MemberNotFound,
        CoreError::MemberNotLearner => Kind::MemberNotLearner,
        CoreError::BadLeaderTransferee => Kind::BadLeaderTransferee,
        CoreError::LeaderTransferTimeout => Kind::LeaderTransferTimeout,
        CoreError::LastVoter => Kind::LastVoter,
        CoreError::Standby => Kind::Standby,
        CoreError::Raft(_)
        | CoreError::Format(_)
        | CoreError::Leader(_)
        | CoreError::UnexpectedResult { .. }
        | CoreError::Io { .. }
        | CoreError::Task(_)
        // Reads are served where they arrive, never forwarded: these do not travel.
        | CoreError::ReadTooLarge { .. }
        | CoreError::ReadBudgetBusy { .. } => {
            out.message = crate::error_chain(e);
            Kind::Internal
        }
    };
    out.set_kind(kind);
    out
}

/// A kind this netsy does not know (a newer member's) reads as an internal error of the
/// leader that names it, never as success or as a retryable error.
pub fn from_pb(e: PeerError) -> CoreError {
    match Kind::try_from(e.kind) {
        Ok(Kind::Apply) => match e.apply {
            Some(apply) => CoreError::Apply(error_from_pb(apply)),
            None => CoreError::Leader(format!("an apply error without its details: {}", e.message)),
        },
        Ok(Kind::RequestTooLarge) => CoreError::RequestTooLarge {
            size: e.size as usize,
            limit: e.limit as usize,
        },
        Ok(Kind::NoLeader) => CoreError::NoLeader,
        Ok(Kind::LeaderChanged) => CoreError::LeaderChanged,
        Ok(Kind::Timeout) => CoreError::Timeout,
        Ok(Kind::Stopped) => CoreError::Stopped,
        Ok(Kind::Standby) => CoreError::Standby,
        Ok(Kind::MemberNotFound) => CoreError::MemberNotFound,
        Ok(Kind::MemberNotLearner) => CoreError::MemberNotLearner,
        Ok(Kind::BadLeaderTransferee) => CoreError::BadLeaderTransferee,
        Ok(Kind::LeaderTransferTimeout) => CoreError::LeaderTransferTimeout,
        Ok(Kind::LastVoter) => CoreError::LastVoter,
        Ok(Kind::Internal) => CoreError::Leader(e.message),
        Ok(Kind::Unspecified) | Err(_) => CoreError::Leader(format!("an error this netsy does not know (kind {}): {}", e.kind, e.message)),
    }
}

/// The status a leader answers a unary peer RPC with: the typed error in the details;
/// the code and message only for logs.
pub fn to_status(e: &CoreError) -> Status {
    let code = match e {
        CoreError::NoLeader | CoreError::LeaderChanged | CoreError::Timeout | CoreError::Stopped => Code::Unavailable,
        CoreError::Apply(_) | CoreError::RequestTooLarge { .. } => Code::InvalidArgument,
        CoreError::MemberNotFound | CoreError::MemberNotLearner | CoreError::BadLeaderTransferee | CoreError::LastVoter => {
            Code::FailedPrecondition
        }
        _ => Code::Internal,
    };
    let details = codec::frame(&to_pb(e));
    Status::with_details(code, crate::error_chain(e), details.into())
}

/// The error a forwarded request came back with. A status without our details is a
/// transport failure (the connection broke, the leader went away mid-request): the
/// outcome is unknown, etcd's "request timed out".
pub fn from_status(s: &Status) -> CoreError {
    if s.details().is_empty() {
        tracing::debug!(code = ?s.code(), message = %s.message(), "a forwarded request failed in transport");
        return CoreError::Timeout;
    }
    match codec::unframe::<PeerError>("peer error", s.details()) {
        Ok(e) => from_pb(e),
        Err(e) => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::validate::InvalidRequest;
    use crate::mvcc::MvccError;

    fn every_kind() -> Vec<CoreError> {
        vec![
            CoreError::Apply(MvccError::Compacted),
            CoreError::Apply(MvccError::LeaseNotFound),
            CoreError::Apply(MvccError::NoSpace),
            CoreError::Apply(MvccError::Invalid(InvalidRequest::DuplicateKey)),
            CoreError::Apply(MvccError::Storage("disk I/O error".into())),
            CoreError::RequestTooLarge { size: 3, limit: 2 },
            CoreError::NoLeader,
            CoreError::LeaderChanged,
            CoreError::Timeout,
            CoreError::Stopped,
            CoreError::MemberNotFound,
            CoreError::MemberNotLearner,
            CoreError::BadLeaderTransferee,
            CoreError::LeaderTransferTimeout,
            CoreError::LastVoter,
        ]
    }

    #[test]
    fn every_kind_survives_the_wire_in_a_status_and_in_a_message() {
        for e in every_kind() {
            let through_status = from_status(&to_status(&e));
            let through_message = from_pb(to_pb(&e));
            for back in [through_status, through_message] {
                assert_eq!(format!("{back:?}"), format!("{e:?}"));
            }
        }
    }

    #[test]
    fn an_internal_error_arrives_with_its_causes() {
        let cause = std::io::Error::other("disk on fire");
        let e = CoreError::io("writing the snapshot copy", cause);
        match from_status(&to_status(&e)) {
            CoreError::Leader(m) => assert_eq!(m, "writing the snapshot copy: disk on fire"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_status_without_details_is_an_unknown_outcome() {
        let e = from_status(&Status::unavailable("connection refused"));
        assert!(matches!(e, CoreError::Timeout), "{e:?}");
        // Even one that reads like etcd's: strings are never parsed.
        let e = from_status(&Status::unavailable("etcdserver: leader changed"));
        assert!(matches!(e, CoreError::Timeout), "{e:?}");
    }

    #[test]
    fn an_unknown_kind_is_an_error_that_names_it() {
        let e = from_pb(PeerError {
            kind: 99,
            message: "from the future".into(),
            ..Default::default()
        });
        match e {
            CoreError::Leader(m) => assert!(m.contains("kind 99") && m.contains("from the future"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn undecodable_details_are_a_format_error() {
        let s = Status::with_details(Code::Internal, "x", vec![9u8, 1, 2].into());
        assert!(matches!(from_status(&s), CoreError::Format(_)));
    }
}
