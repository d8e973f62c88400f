//! The peer port's payloads as a member receives them: Raft's AppendEntries, Vote and
//! InstallSnapshot requests and replies (src/raft/codec/peer.rs), forwarded commands
//! (`Proposal`) and their results (`ProposalResult`), and the typed errors a leader
//! answers with (src/core/forward/wire.rs). Input: a selector byte, then the protobuf
//! message. What decodes converts back to a message that converts again to the same one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netsy::core::forward::wire as errors;
use netsy::proto::peer as wire;
use netsy::raft::codec;
use netsy_fuzz::{fixed_point, select};
use prost::Message;

/// A reply with its failure messages blanked: a storage failure's message names the
/// peer's failure, so it grows each time it crosses the wire; its kind must not change.
fn failure_kind(f: &mut Option<wire::RaftFailure>) {
    if let Some(f) = f {
        f.message.clear();
    }
}

fn append_reply(mut r: wire::AppendEntriesReply) -> wire::AppendEntriesReply {
    if let Some(wire::append_entries_reply::Result::Failure(f)) = &mut r.result {
        f.message.clear();
    }
    r
}

fn vote_reply(mut r: wire::VoteReply) -> wire::VoteReply {
    failure_kind(&mut r.failure);
    r
}

fn snapshot_reply(mut r: wire::InstallSnapshotReply) -> wire::InstallSnapshotReply {
    failure_kind(&mut r.failure);
    r
}

/// An error netsy sent keeps its kind (and its apply error's) when it is read back.
fn same_kind(once: wire::PeerError) {
    let twice = errors::to_pb(&errors::from_pb(once.clone()));
    assert_eq!(twice.kind, once.kind, "an error keeps its kind across the wire");
    assert_eq!(twice.apply.map(|a| (a.kind, a.invalid)), once.apply.map(|a| (a.kind, a.invalid)));
}

fuzz_target!(|data: &[u8]| {
    let Some((kind, bytes)) = select(data, 9) else { return };
    match kind {
        0 => {
            let Ok(w) = wire::AppendEntriesRequest::decode(bytes) else { return };
            if let Ok(rpc) = codec::append_request_from_wire(w.clone()) {
                let again = codec::append_request_to_wire(w.target, &rpc);
                let rpc2 = codec::append_request_from_wire(again.clone()).expect("re-encoded AppendEntries");
                assert_eq!(codec::append_request_to_wire(w.target, &rpc2), again);
            }
        }
        1 => {
            let Ok(w) = wire::VoteRequest::decode(bytes) else { return };
            if let Ok(rpc) = codec::vote_request_from_wire(w.clone()) {
                let again = codec::vote_request_to_wire(w.target, &rpc);
                assert_eq!(again.vote, w.vote, "a vote crosses the wire unchanged");
                let rpc2 = codec::vote_request_from_wire(again.clone()).expect("re-encoded Vote");
                assert_eq!(codec::vote_request_to_wire(w.target, &rpc2), again);
            }
        }
        2 => {
            let Ok(w) = wire::InstallSnapshotRequest::decode(bytes) else {
                return;
            };
            if let Ok(rpc) = codec::snapshot_request_from_wire(w.clone()) {
                let again = codec::snapshot_request_to_wire(w.target, &rpc);
                assert_eq!((&again.data, again.offset, again.done), (&w.data, w.offset, w.done));
                let rpc2 = codec::snapshot_request_from_wire(again.clone()).expect("re-encoded InstallSnapshot");
                assert_eq!(codec::snapshot_request_to_wire(w.target, &rpc2), again);
            }
        }
        3 => {
            let Ok(w) = wire::AppendEntriesReply::decode(bytes) else { return };
            if let Ok(r) = codec::append_reply_from_wire(w) {
                let again = codec::append_reply_to_wire(&r);
                let r2 = codec::append_reply_from_wire(again.clone()).expect("re-encoded reply");
                assert_eq!(append_reply(codec::append_reply_to_wire(&r2)), append_reply(again));
            }
        }
        4 => {
            let Ok(w) = wire::VoteReply::decode(bytes) else { return };
            if let Ok(r) = codec::vote_reply_from_wire(w) {
                let again = codec::vote_reply_to_wire(&r);
                let r2 = codec::vote_reply_from_wire(again.clone()).expect("re-encoded reply");
                assert_eq!(vote_reply(codec::vote_reply_to_wire(&r2)), vote_reply(again));
            }
        }
        5 => {
            let Ok(w) = wire::InstallSnapshotReply::decode(bytes) else { return };
            if let Ok(r) = codec::snapshot_reply_from_wire(w) {
                let again = codec::snapshot_reply_to_wire(&r);
                let r2 = codec::snapshot_reply_from_wire(again.clone()).expect("re-encoded reply");
                assert_eq!(snapshot_reply(codec::snapshot_reply_to_wire(&r2)), snapshot_reply(again));
            }
        }
        6 => {
            // What the leader's write stream receives.
            let Ok(p) = wire::Proposal::decode(bytes) else { return };
            fixed_point(&p.command, codec::decode_command, codec::encode_command);
        }
        7 => {
            // What the member's write stream receives back.
            let Ok(r) = wire::ProposalResult::decode(bytes) else { return };
            fixed_point(&r.result, codec::decode_result, codec::encode_result);
            if let Some(e) = r.error {
                same_kind(errors::to_pb(&errors::from_pb(e)));
            }
        }
        _ => {
            // A unary RPC's error: the typed error in the gRPC status's details.
            let status = tonic::Status::with_details(tonic::Code::Internal, "fuzz", bytes.to_vec().into());
            same_kind(errors::to_pb(&errors::from_status(&status)));
        }
    }
});
