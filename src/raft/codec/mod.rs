//! netsy's durable and cross-version Raft records, and their conversion to and from
//! openraft's types.
//!
//! Every record that outlives the process or crosses a version boundary — a log entry in
//! the Raft log's segments or an archive segment, the vote, the applied log id and membership in the
//! state database, a local snapshot's meta, a forwarded command and its result — is one
//! byte of format followed by a protobuf message of `proto/netsy/raft.proto`:
//!
//! ```text
//! u8 format (FORMAT = 1) | protobuf message
//! ```
//!
//! A reader refuses a format byte newer than [`FORMAT`] with an error that names it.
//! Fields are only ever added to the messages (docs/formats.md), so a newer netsy reads
//! everything an older one wrote. netsy 0.1 wrote bincode of openraft's structs instead;
//! [`legacy`] reads those, and only those, wherever they can still be found.

pub mod command;
pub mod legacy;
mod peer;

use std::collections::{BTreeMap, BTreeSet};

use openraft::{CommittedLeaderId, Entry, EntryPayload, Membership, StoredMembership};
use prost::Message;

pub use command::{decode_command, decode_result, encode_command, encode_result};
pub use peer::*;

use super::{Batch, LogId, NodeId, PeerNode, TypeConfig};
use crate::proto::raftpb as pb;

/// The format byte written in front of every record this netsy writes.
pub const FORMAT: u8 = 1;

/// A record that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{what}: empty record")]
    Empty { what: &'static str },
    #[error("{what} is in format {found}, newer than this netsy reads (formats up to {FORMAT}); run a netsy at least as new as the one that wrote it")]
    Future { what: &'static str, found: u8 },
    #[error("{what} is in unknown format {found}")]
    Unknown { what: &'static str, found: u8 },
    #[error("{what}: undecodable")]
    Decode {
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{what}: {field} is missing")]
    Missing { what: &'static str, field: &'static str },
    #[error("{what} of netsy 0.1 (bincode): undecodable")]
    Legacy {
        what: &'static str,
        #[source]
        source: bincode::Error,
    },
    #[error("{what} of netsy 0.1 (JSON): undecodable")]
    LegacyJson {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// `FORMAT` followed by `msg`.
pub fn frame(msg: &impl Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + msg.encoded_len());
    out.push(FORMAT);
    // A Vec grows as needed: encoding into it cannot fail.
    msg.encode_raw(&mut out);
    out
}

/// The message behind a record's format byte.
pub fn unframe<M: Message + Default>(what: &'static str, bytes: &[u8]) -> Result<M, FormatError> {
    let (&format, body) = bytes.split_first().ok_or(FormatError::Empty { what })?;
    match format {
        FORMAT => M::decode(body).map_err(|source| FormatError::Decode { what, source }),
        0 => Err(FormatError::Unknown { what, found: format }),
        newer => Err(FormatError::Future { what, found: newer }),
    }
}

fn missing(what: &'static str, field: &'static str) -> FormatError {
    FormatError::Missing { what, field }
}

// ---- openraft types <-> messages ----

pub fn log_id_to_pb(id: &LogId) -> pb::LogId {
    pb::LogId {
        term: id.leader_id.term,
        node_id: id.leader_id.node_id,
        index: id.index,
    }
}

pub fn log_id_from_pb(id: pb::LogId) -> LogId {
    LogId::new(CommittedLeaderId::new(id.term, id.node_id), id.index)
}

pub fn opt_log_id_from_pb(id: Option<pb::LogId>) -> Option<LogId> {
    id.map(log_id_from_pb)
}

pub fn vote_to_pb(v: &openraft::Vote<NodeId>) -> pb::Vote {
    pb::Vote {
        term: v.leader_id.term,
        node_id: v.leader_id.node_id,
        committed: v.committed,
    }
}

pub fn vote_from_pb(v: pb::Vote) -> openraft::Vote<NodeId> {
    let mut vote = openraft::Vote::new(v.term, v.node_id);
    vote.committed = v.committed;
    vote
}

fn node_to_pb(n: &PeerNode) -> pb::Node {
    pb::Node {
        name: n.name.clone(),
        member_id: n.member_id,
        peer_url: n.peer_url.clone(),
        client_url: n.client_url.clone(),
    }
}

fn node_from_pb(n: pb::Node) -> PeerNode {
    PeerNode {
        name: n.name,
        member_id: n.member_id,
        peer_url: n.peer_url,
        client_url: n.client_url,
    }
}

pub fn membership_to_pb(m: &Membership<NodeId, PeerNode>) -> pb::Membership {
    pb::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|set| pb::VoterSet {
                ids: set.iter().copied().collect(),
            })
            .collect(),
        nodes: m.nodes().map(|(id, n)| (*id, node_to_pb(n))).collect(),
    }
}

pub fn membership_from_pb(m: pb::Membership) -> Membership<NodeId, PeerNode> {
    let configs: Vec<BTreeSet<NodeId>> = m.configs.into_iter().map(|c| c.ids.into_iter().collect()).collect();
    let nodes: BTreeMap<NodeId, PeerNode> = m.nodes.into_iter().map(|(id, n)| (id, node_from_pb(n))).collect();
    Membership::new(configs, nodes)
}

pub fn stored_membership_to_pb(m: &StoredMembership<NodeId, PeerNode>) -> pb::StoredMembership {
    pb::StoredMembership {
        log_id: m.log_id().as_ref().map(log_id_to_pb),
        membership: Some(membership_to_pb(m.membership())),
    }
}

pub fn stored_membership_from_pb(m: pb::StoredMembership) -> StoredMembership<NodeId, PeerNode> {
    StoredMembership::new(
        opt_log_id_from_pb(m.log_id),
        m.membership.map(membership_from_pb).unwrap_or_default(),
    )
}

pub fn entry_to_pb(e: &Entry<TypeConfig>) -> pb::Entry {
    use pb::entry::Payload;
    let payload = match &e.payload {
        EntryPayload::Blank => Payload::Blank(pb::Blank {}),
        EntryPayload::Normal(batch) => Payload::Commands(pb::Commands {
            commands: batch.commands.iter().map(command::command_to_pb).collect(),
            unix_ms: batch.unix_ms,
            source: batch.source.map(|s| pb::SourcePosition {
                epoch: s.epoch,
                index: s.index,
            }),
        }),
        EntryPayload::Membership(m) => Payload::Membership(membership_to_pb(m)),
    };
    pb::Entry {
        log_id: Some(log_id_to_pb(&e.log_id)),
        payload: Some(payload),
    }
}

pub fn entry_from_pb(e: pb::Entry) -> Result<Entry<TypeConfig>, FormatError> {
    use pb::entry::Payload;
    const WHAT: &str = "log entry";
    let log_id = log_id_from_pb(e.log_id.ok_or(missing(WHAT, "log_id"))?);
    let payload = match e.payload.ok_or(missing(WHAT, "payload"))? {
        Payload::Blank(_) => EntryPayload::Blank,
        Payload::Commands(c) => EntryPayload::Normal(Batch {
            commands: c.commands.into_iter().map(command::command_from_pb).collect::<Result<_, _>>()?,
            unix_ms: c.unix_ms,
            source: c.source.map(|s| super::SourcePosition {
                epoch: s.epoch,
                index: s.index,
            }),
        }),
        Payload::Membership(m) => EntryPayload::Membership(membership_from_pb(m)),
    };
    Ok(Entry { log_id, payload })
}

// ---- records ----

/// A log entry as the Raft log's segments, archive segments and `AppendEntries` carry it.
pub fn encode_entry(e: &Entry<TypeConfig>) -> Vec<u8> {
    frame(&entry_to_pb(e))
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, FormatError> {
    entry_from_pb(unframe("log entry", bytes)?)
}

pub fn encode_vote(v: &openraft::Vote<NodeId>) -> Vec<u8> {
    frame(&vote_to_pb(v))
}

pub fn decode_vote(bytes: &[u8]) -> Result<openraft::Vote<NodeId>, FormatError> {
    Ok(vote_from_pb(unframe("vote", bytes)?))
}

pub fn encode_log_id(id: &LogId) -> Vec<u8> {
    frame(&log_id_to_pb(id))
}

pub fn decode_log_id(bytes: &[u8]) -> Result<LogId, FormatError> {
    Ok(log_id_from_pb(unframe("log id", bytes)?))
}

pub fn encode_membership(m: &StoredMembership<NodeId, PeerNode>) -> Vec<u8> {
    frame(&stored_membership_to_pb(m))
}

pub fn decode_membership(bytes: &[u8]) -> Result<StoredMembership<NodeId, PeerNode>, FormatError> {
    Ok(stored_membership_from_pb(unframe("membership", bytes)?))
}

pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, PeerNode>;

pub fn snapshot_meta_to_pb(m: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: m.last_log_id.as_ref().map(log_id_to_pb),
        last_membership: Some(stored_membership_to_pb(&m.last_membership)),
        snapshot_id: m.snapshot_id.clone(),
    }
}

pub fn snapshot_meta_from_pb(m: pb::SnapshotMeta) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: opt_log_id_from_pb(m.last_log_id),
        last_membership: m.last_membership.map(stored_membership_from_pb).unwrap_or_default(),
        snapshot_id: m.snapshot_id,
    }
}

pub fn encode_snapshot_meta(m: &SnapshotMeta) -> Vec<u8> {
    frame(&snapshot_meta_to_pb(m))
}

/// A local snapshot's meta file: the current encoding, or netsy 0.1's JSON (which starts
/// with `{`, never a format byte).
pub fn decode_snapshot_meta(bytes: &[u8]) -> Result<SnapshotMeta, FormatError> {
    if bytes.first() == Some(&b'{') {
        return legacy::decode_snapshot_meta_json(bytes);
    }
    Ok(snapshot_meta_from_pb(unframe("snapshot meta", bytes)?))
}

#[cfg(test)]
pub(crate) mod tests;
