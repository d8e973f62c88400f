//! Commands (the state changes a log entry carries) and their results, as
//! `netsy.raft.v1.Command` / `CommandResult`.

use super::{frame, missing, unframe, FormatError};
use crate::mvcc::validate::InvalidRequest;
use crate::mvcc::{Command, CommandResult, MvccError};
use crate::proto::raftpb as pb;

pub fn command_to_pb(c: &Command) -> pb::Command {
    use pb::command::Op;
    let op = match c {
        Command::Put(r) => Op::Put(r.clone()),
        Command::DeleteRange(r) => Op::DeleteRange(r.clone()),
        Command::Txn(r) => Op::Txn(r.clone()),
        Command::Compact(r) => Op::Compact(*r),
        Command::LeaseGrant { id, ttl } => Op::LeaseGrant(pb::LeaseGrant { id: *id, ttl: *ttl }),
        Command::LeaseRevoke { id } => Op::LeaseRevoke(pb::LeaseRevoke { id: *id }),
        Command::Alarm { activate, alarm } => Op::Alarm(pb::Alarm {
            activate: *activate,
            alarm: Some(*alarm),
        }),
    };
    pb::Command { op: Some(op) }
}

pub fn command_from_pb(c: pb::Command) -> Result<Command, FormatError> {
    use pb::command::Op;
    const WHAT: &str = "command";
    Ok(match c.op.ok_or(missing(WHAT, "op"))? {
        Op::Put(r) => Command::Put(r),
        Op::DeleteRange(r) => Command::DeleteRange(r),
        Op::Txn(r) => Command::Txn(r),
        Op::Compact(r) => Command::Compact(r),
        Op::LeaseGrant(g) => Command::LeaseGrant { id: g.id, ttl: g.ttl },
        Op::LeaseRevoke(r) => Command::LeaseRevoke { id: r.id },
        Op::Alarm(a) => Command::Alarm {
            activate: a.activate,
            alarm: a.alarm.ok_or(missing(WHAT, "alarm.alarm"))?,
        },
    })
}

fn invalid_to_pb(e: &InvalidRequest) -> pb::apply_error::Invalid {
    use pb::apply_error::Invalid as P;
    match e {
        InvalidRequest::EmptyKey => P::EmptyKey,
        InvalidRequest::ValueProvided => P::ValueProvided,
        InvalidRequest::LeaseProvided => P::LeaseProvided,
        InvalidRequest::TooManyOps => P::TooManyOps,
        InvalidRequest::DuplicateKey => P::DuplicateKey,
        InvalidRequest::InvalidSortOption => P::SortOption,
        InvalidRequest::RangeEndBeforeKey => P::RangeEndBeforeKey,
        InvalidRequest::NegativeRevision => P::NegativeRevision,
        InvalidRequest::NegativeLimit => P::NegativeLimit,
    }
}

fn invalid_from_pb(e: pb::apply_error::Invalid) -> Option<InvalidRequest> {
    use pb::apply_error::Invalid as P;
    Some(match e {
        P::Unspecified => return None,
        P::EmptyKey => InvalidRequest::EmptyKey,
        P::ValueProvided => InvalidRequest::ValueProvided,
        P::LeaseProvided => InvalidRequest::LeaseProvided,
        P::TooManyOps => InvalidRequest::TooManyOps,
        P::DuplicateKey => InvalidRequest::DuplicateKey,
        P::SortOption => InvalidRequest::InvalidSortOption,
        P::RangeEndBeforeKey => InvalidRequest::RangeEndBeforeKey,
        P::NegativeRevision => InvalidRequest::NegativeRevision,
        P::NegativeLimit => InvalidRequest::NegativeLimit,
    })
}

pub fn error_to_pb(e: &MvccError) -> pb::ApplyError {
    use pb::apply_error::Kind;
    let mut out = pb::ApplyError::default();
    let kind = match e {
        MvccError::Compacted => Kind::Compacted,
        MvccError::FutureRevision => Kind::FutureRevision,
        MvccError::KeyNotFound => Kind::KeyNotFound,
        MvccError::LeaseNotFound => Kind::LeaseNotFound,
        MvccError::LeaseExists => Kind::LeaseExists,
        MvccError::LeaseTtlTooLarge => Kind::LeaseTtlTooLarge,
        MvccError::NoSpace => Kind::NoSpace,
        MvccError::Invalid(i) => {
            out.set_invalid(invalid_to_pb(i));
            Kind::InvalidRequest
        }
        MvccError::Storage(m) => {
            out.detail = m.clone();
            Kind::Storage
        }
    };
    out.set_kind(kind);
    out
}

/// An error of a kind this netsy does not know (a newer member's) reads as a storage
/// failure that names it, never as success.
pub fn error_from_pb(e: pb::ApplyError) -> MvccError {
    use pb::apply_error::Kind;
    let unknown = || {
        MvccError::Storage(format!(
            "unknown apply error (kind {}, invalid {}): {}",
            e.kind, e.invalid, e.detail
        ))
    };
    match Kind::try_from(e.kind) {
        Ok(Kind::Compacted) => MvccError::Compacted,
        Ok(Kind::FutureRevision) => MvccError::FutureRevision,
        Ok(Kind::KeyNotFound) => MvccError::KeyNotFound,
        Ok(Kind::LeaseNotFound) => MvccError::LeaseNotFound,
        Ok(Kind::LeaseExists) => MvccError::LeaseExists,
        Ok(Kind::LeaseTtlTooLarge) => MvccError::LeaseTtlTooLarge,
        Ok(Kind::NoSpace) => MvccError::NoSpace,
        Ok(Kind::InvalidRequest) => match pb::apply_error::Invalid::try_from(e.invalid).ok().and_then(invalid_from_pb) {
            Some(i) => MvccError::Invalid(i),
            None => unknown(),
        },
        Ok(Kind::Storage) => MvccError::Storage(e.detail),
        Ok(Kind::Unspecified) | Err(_) => unknown(),
    }
}

pub fn result_to_pb(r: &CommandResult) -> pb::CommandResult {
    use pb::command_result::Result as R;
    let result = match r {
        CommandResult::Put(x) => R::Put(x.clone()),
        CommandResult::DeleteRange(x) => R::DeleteRange(x.clone()),
        CommandResult::Txn(x) => R::Txn(x.clone()),
        CommandResult::Compact(x) => R::Compact(*x),
        CommandResult::LeaseGrant(x) => R::LeaseGrant(x.clone()),
        CommandResult::LeaseRevoke(x) => R::LeaseRevoke(*x),
        CommandResult::Alarm(alarms) => R::Alarms(pb::Alarms { alarms: alarms.clone() }),
        CommandResult::Empty { revision } => R::EmptyRevision(*revision),
        CommandResult::Error(e) => R::Error(error_to_pb(e)),
    };
    pb::CommandResult { result: Some(result) }
}

pub fn result_from_pb(r: pb::CommandResult) -> Result<CommandResult, FormatError> {
    use pb::command_result::Result as R;
    Ok(match r.result.ok_or(missing("command result", "result"))? {
        R::Put(x) => CommandResult::Put(x),
        R::DeleteRange(x) => CommandResult::DeleteRange(x),
        R::Txn(x) => CommandResult::Txn(x),
        R::Compact(x) => CommandResult::Compact(x),
        R::LeaseGrant(x) => CommandResult::LeaseGrant(x),
        R::LeaseRevoke(x) => CommandResult::LeaseRevoke(x),
        R::Alarms(a) => CommandResult::Alarm(a.alarms),
        R::EmptyRevision(revision) => CommandResult::Empty { revision },
        R::Error(e) => CommandResult::Error(error_from_pb(e)),
    })
}

/// A command as a member forwards it to the leader.
pub fn encode_command(c: &Command) -> Vec<u8> {
    frame(&command_to_pb(c))
}

pub fn decode_command(bytes: &[u8]) -> Result<Command, FormatError> {
    command_from_pb(unframe("command", bytes)?)
}

/// The length of `encode_command(c)`, without copying the request into a message.
pub fn encoded_len(c: &Command) -> usize {
    use prost::encoding::message::encoded_len as field;
    use prost::Message;
    1 + match c {
        Command::Put(r) => field(1, r),
        Command::DeleteRange(r) => field(2, r),
        Command::Txn(r) => field(3, r),
        Command::Compact(r) => field(4, r),
        // No byte strings: the message is small.
        other => command_to_pb(other).encoded_len(),
    }
}

/// A result as the leader returns it to the member that forwarded the command.
pub fn encode_result(r: &CommandResult) -> Vec<u8> {
    frame(&result_to_pb(r))
}

pub fn decode_result(bytes: &[u8]) -> Result<CommandResult, FormatError> {
    result_from_pb(unframe("command result", bytes)?)
}
