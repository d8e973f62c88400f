//! openraft's RPCs as the peer protocol's messages (`proto/netsy/peer.proto`): the
//! sending side (`raft::network`) and the serving side (`peer`) both convert here.

use openraft::error::{Fatal, Infallible, InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{SnapshotSegmentId, StorageError, StorageIOError};

use super::{
    decode_entry, encode_entry, log_id_to_pb, missing, opt_log_id_from_pb, snapshot_meta_from_pb, snapshot_meta_to_pb, vote_from_pb,
    vote_to_pb, FormatError,
};
use crate::proto::peer as wire;
use crate::raft::{NodeId, TypeConfig};

type Vote = openraft::Vote<NodeId>;

fn vote_of(what: &'static str, v: Option<crate::proto::raftpb::Vote>) -> Result<Vote, FormatError> {
    v.map(vote_from_pb).ok_or(missing(what, "vote"))
}

pub fn append_request_to_wire(target: NodeId, r: &AppendEntriesRequest<TypeConfig>) -> wire::AppendEntriesRequest {
    wire::AppendEntriesRequest {
        target,
        vote: Some(vote_to_pb(&r.vote)),
        prev_log_id: r.prev_log_id.as_ref().map(log_id_to_pb),
        entries: r.entries.iter().map(encode_entry).collect(),
        leader_commit: r.leader_commit.as_ref().map(log_id_to_pb),
        // Not openraft's: the sender adds it (`raft::network`, `raft::gate`).
        archived_index: None,
    }
}

pub fn append_request_from_wire(r: wire::AppendEntriesRequest) -> Result<AppendEntriesRequest<TypeConfig>, FormatError> {
    Ok(AppendEntriesRequest {
        vote: vote_of("AppendEntries", r.vote)?,
        prev_log_id: opt_log_id_from_pb(r.prev_log_id),
        entries: r.entries.iter().map(|e| decode_entry(e)).collect::<Result<_, _>>()?,
        leader_commit: opt_log_id_from_pb(r.leader_commit),
    })
}

pub fn vote_request_to_wire(target: NodeId, r: &VoteRequest<NodeId>) -> wire::VoteRequest {
    wire::VoteRequest {
        target,
        vote: Some(vote_to_pb(&r.vote)),
        last_log_id: r.last_log_id.as_ref().map(log_id_to_pb),
    }
}

pub fn vote_request_from_wire(r: wire::VoteRequest) -> Result<VoteRequest<NodeId>, FormatError> {
    Ok(VoteRequest {
        vote: vote_of("Vote", r.vote)?,
        last_log_id: opt_log_id_from_pb(r.last_log_id),
    })
}

pub fn snapshot_request_to_wire(target: NodeId, r: &InstallSnapshotRequest<TypeConfig>) -> wire::InstallSnapshotRequest {
    wire::InstallSnapshotRequest {
        target,
        vote: Some(vote_to_pb(&r.vote)),
        meta: Some(snapshot_meta_to_pb(&r.meta)),
        offset: r.offset,
        data: r.data.clone(),
        done: r.done,
    }
}

pub fn snapshot_request_from_wire(r: wire::InstallSnapshotRequest) -> Result<InstallSnapshotRequest<TypeConfig>, FormatError> {
    Ok(InstallSnapshotRequest {
        vote: vote_of("InstallSnapshot", r.vote)?,
        meta: snapshot_meta_from_pb(r.meta.ok_or(missing("InstallSnapshot", "meta"))?),
        offset: r.offset,
        data: r.data,
        done: r.done,
    })
}

// ---- failures ----

fn fatal_to_wire(f: &Fatal<NodeId>) -> wire::RaftFailure {
    use wire::raft_failure::Kind;
    let kind = match f {
        Fatal::Stopped => Kind::Stopped,
        Fatal::Panicked => Kind::Panicked,
        Fatal::StorageError(_) => Kind::Storage,
    };
    let mut out = wire::RaftFailure {
        message: crate::error_chain(f),
        ..Default::default()
    };
    out.set_kind(kind);
    out
}

/// A failure the receiver reported; an unknown kind (a newer member's) reads as a
/// storage failure that names it.
fn fatal_from_wire(f: &wire::RaftFailure) -> Fatal<NodeId> {
    use wire::raft_failure::Kind;
    match Kind::try_from(f.kind) {
        Ok(Kind::Stopped) => Fatal::Stopped,
        Ok(Kind::Panicked) => Fatal::Panicked,
        _ => {
            let e = std::io::Error::other(format!("the peer's storage failed: {}", f.message));
            Fatal::StorageError(StorageError::from(StorageIOError::read(&e)))
        }
    }
}

fn segment(s: &SnapshotSegmentId) -> wire::SnapshotSegment {
    wire::SnapshotSegment {
        id: s.id.clone(),
        offset: s.offset,
    }
}

fn segment_from(s: Option<&wire::SnapshotSegment>) -> SnapshotSegmentId {
    s.map_or_else(
        || SnapshotSegmentId {
            id: String::new(),
            offset: 0,
        },
        |s| SnapshotSegmentId {
            id: s.id.clone(),
            offset: s.offset,
        },
    )
}

// ---- replies ----

pub type AppendResult = Result<AppendEntriesResponse<NodeId>, RaftError<NodeId, Infallible>>;
pub type VoteResult = Result<VoteResponse<NodeId>, RaftError<NodeId, Infallible>>;
pub type SnapshotResult = Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;

fn fatal_only(e: &RaftError<NodeId, Infallible>) -> wire::RaftFailure {
    match e {
        RaftError::APIError(never) => match *never {},
        RaftError::Fatal(f) => fatal_to_wire(f),
    }
}

pub fn append_reply_to_wire(r: &AppendResult) -> wire::AppendEntriesReply {
    use wire::append_entries_reply::Result as R;
    let result = match r {
        Ok(AppendEntriesResponse::Success) => R::Success(wire::Success {}),
        Ok(AppendEntriesResponse::PartialSuccess(matched)) => R::PartialSuccess(wire::PartialSuccess {
            matched: matched.as_ref().map(log_id_to_pb),
        }),
        Ok(AppendEntriesResponse::Conflict) => R::Conflict(wire::Conflict {}),
        Ok(AppendEntriesResponse::HigherVote(v)) => R::HigherVote(vote_to_pb(v)),
        Err(e) => R::Failure(fatal_only(e)),
    };
    wire::AppendEntriesReply { result: Some(result) }
}

pub fn append_reply_from_wire(r: wire::AppendEntriesReply) -> Result<AppendResult, FormatError> {
    use wire::append_entries_reply::Result as R;
    Ok(match r.result.ok_or(missing("AppendEntries reply", "result"))? {
        R::Success(_) => Ok(AppendEntriesResponse::Success),
        R::PartialSuccess(p) => Ok(AppendEntriesResponse::PartialSuccess(opt_log_id_from_pb(p.matched))),
        R::Conflict(_) => Ok(AppendEntriesResponse::Conflict),
        R::HigherVote(v) => Ok(AppendEntriesResponse::HigherVote(vote_from_pb(v))),
        R::Failure(f) => Err(RaftError::Fatal(fatal_from_wire(&f))),
    })
}

pub fn vote_reply_to_wire(r: &VoteResult) -> wire::VoteReply {
    match r {
        Ok(v) => wire::VoteReply {
            vote: Some(vote_to_pb(&v.vote)),
            vote_granted: v.vote_granted,
            last_log_id: v.last_log_id.as_ref().map(log_id_to_pb),
            failure: None,
        },
        Err(e) => wire::VoteReply {
            failure: Some(fatal_only(e)),
            ..Default::default()
        },
    }
}

pub fn vote_reply_from_wire(r: wire::VoteReply) -> Result<VoteResult, FormatError> {
    if let Some(f) = &r.failure {
        return Ok(Err(RaftError::Fatal(fatal_from_wire(f))));
    }
    Ok(Ok(VoteResponse {
        vote: vote_of("Vote reply", r.vote)?,
        vote_granted: r.vote_granted,
        last_log_id: opt_log_id_from_pb(r.last_log_id),
    }))
}

pub fn snapshot_reply_to_wire(r: &SnapshotResult) -> wire::InstallSnapshotReply {
    use wire::raft_failure::Kind;
    match r {
        Ok(v) => wire::InstallSnapshotReply {
            vote: Some(vote_to_pb(&v.vote)),
            failure: None,
        },
        Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) => {
            let mut failure = wire::RaftFailure {
                message: m.to_string(),
                expect: Some(segment(&m.expect)),
                got: Some(segment(&m.got)),
                ..Default::default()
            };
            failure.set_kind(Kind::SnapshotMismatch);
            wire::InstallSnapshotReply {
                vote: None,
                failure: Some(failure),
            }
        }
        Err(RaftError::Fatal(f)) => wire::InstallSnapshotReply {
            vote: None,
            failure: Some(fatal_to_wire(f)),
        },
    }
}

pub fn snapshot_reply_from_wire(r: wire::InstallSnapshotReply) -> Result<SnapshotResult, FormatError> {
    use wire::raft_failure::Kind;
    if let Some(f) = &r.failure {
        return Ok(Err(match Kind::try_from(f.kind) {
            Ok(Kind::SnapshotMismatch) => RaftError::APIError(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
                expect: segment_from(f.expect.as_ref()),
                got: segment_from(f.got.as_ref()),
            })),
            _ => RaftError::Fatal(fatal_from_wire(f)),
        }));
    }
    Ok(Ok(InstallSnapshotResponse {
        vote: vote_of("InstallSnapshot reply", r.vote)?,
    }))
}
