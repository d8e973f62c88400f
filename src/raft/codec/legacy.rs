//! Reading what netsy 0.1 wrote: bincode 1 (and, for a local snapshot's meta, JSON) of
//! openraft 0.9's structs, with commands holding etcd's requests in their serde form.
//!
//! The structs here mirror those layouts field by field, so these records stay
//! readable whatever openraft version netsy runs. Nothing writes this format any more;
//! the committed fixtures (tests/fixtures) hold data of this form, and the tests that
//! restore them keep this module honest.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{Entry, EntryPayload};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::FormatError;
use crate::mvcc::Command;
use crate::proto::etcdserverpb::{AlarmMember, CompactionRequest, DeleteRangeRequest, PutRequest, TxnRequest};
use crate::raft::{LogId, NodeId, PeerNode, TypeConfig};

#[derive(Deserialize)]
struct LeaderIdV0 {
    term: u64,
    node_id: u64,
}

#[derive(Deserialize)]
struct LogIdV0 {
    leader_id: LeaderIdV0,
    index: u64,
}

impl From<LogIdV0> for LogId {
    fn from(l: LogIdV0) -> LogId {
        LogId::new(openraft::CommittedLeaderId::new(l.leader_id.term, l.leader_id.node_id), l.index)
    }
}

#[derive(Deserialize)]
struct VoteV0 {
    leader_id: LeaderIdV0,
    committed: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct NodeV0 {
    name: String,
    member_id: u64,
    #[serde(alias = "addr")]
    peer_url: String,
    client_url: String,
}

#[derive(Deserialize)]
struct MembershipV0 {
    configs: Vec<BTreeSet<u64>>,
    nodes: BTreeMap<u64, NodeV0>,
}

impl From<MembershipV0> for openraft::Membership<NodeId, PeerNode> {
    fn from(m: MembershipV0) -> Self {
        let nodes: BTreeMap<NodeId, PeerNode> = m
            .nodes
            .into_iter()
            .map(|(id, n)| {
                (
                    id,
                    PeerNode {
                        name: n.name,
                        member_id: n.member_id,
                        peer_url: n.peer_url,
                        client_url: n.client_url,
                    },
                )
            })
            .collect();
        openraft::Membership::new(m.configs, nodes)
    }
}

#[derive(Deserialize)]
struct StoredMembershipV0 {
    log_id: Option<LogIdV0>,
    membership: MembershipV0,
}

impl From<StoredMembershipV0> for openraft::StoredMembership<NodeId, PeerNode> {
    fn from(m: StoredMembershipV0) -> Self {
        openraft::StoredMembership::new(m.log_id.map(Into::into), m.membership.into())
    }
}

#[derive(Deserialize)]
enum CommandV0 {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    LeaseGrant { id: i64, ttl: i64 },
    LeaseRevoke { id: i64 },
    Alarm { activate: bool, alarm: AlarmMember },
}

impl From<CommandV0> for Command {
    fn from(c: CommandV0) -> Command {
        match c {
            CommandV0::Put(r) => Command::Put(r),
            CommandV0::DeleteRange(r) => Command::DeleteRange(r),
            CommandV0::Txn(r) => Command::Txn(r),
            CommandV0::Compact(r) => Command::Compact(r),
            CommandV0::LeaseGrant { id, ttl } => Command::LeaseGrant { id, ttl },
            CommandV0::LeaseRevoke { id } => Command::LeaseRevoke { id },
            CommandV0::Alarm { activate, alarm } => Command::Alarm { activate, alarm },
        }
    }
}

#[derive(Deserialize)]
enum PayloadV0 {
    Blank,
    Normal(Vec<CommandV0>),
    Membership(MembershipV0),
}

#[derive(Deserialize)]
struct EntryV0 {
    log_id: LogIdV0,
    payload: PayloadV0,
}

#[derive(Deserialize)]
struct SnapshotMetaV0 {
    last_log_id: Option<LogIdV0>,
    last_membership: StoredMembershipV0,
    snapshot_id: String,
}

fn bincode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, FormatError> {
    bincode::deserialize(bytes).map_err(|source| FormatError::Legacy { what, source })
}

/// A log entry of a netsy 0.1 `raft.db` or archive segment.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, FormatError> {
    let e: EntryV0 = bincode("log entry", bytes)?;
    let payload = match e.payload {
        PayloadV0::Blank => EntryPayload::Blank,
        PayloadV0::Normal(cmds) => EntryPayload::Normal(crate::raft::Batch::new(cmds.into_iter().map(Into::into).collect(), 0)),
        PayloadV0::Membership(m) => EntryPayload::Membership(m.into()),
    };
    Ok(Entry {
        log_id: e.log_id.into(),
        payload,
    })
}

/// The vote of a netsy 0.1 `raft.db`.
pub fn decode_vote(bytes: &[u8]) -> Result<openraft::Vote<NodeId>, FormatError> {
    let v: VoteV0 = bincode("vote", bytes)?;
    let mut vote = openraft::Vote::new(v.leader_id.term, v.leader_id.node_id);
    vote.committed = v.committed;
    Ok(vote)
}

/// A log id (`raft.db`'s last purged entry).
pub fn decode_log_id(bytes: &[u8]) -> Result<LogId, FormatError> {
    Ok(bincode::<LogIdV0>("log id", bytes)?.into())
}

/// The applied log id of a netsy 0.1 state database (`Option<LogId>`).
pub fn decode_applied(bytes: &[u8]) -> Result<Option<LogId>, FormatError> {
    Ok(bincode::<Option<LogIdV0>>("applied log id", bytes)?.map(Into::into))
}

/// The applied membership of a netsy 0.1 state database.
pub fn decode_membership(bytes: &[u8]) -> Result<openraft::StoredMembership<NodeId, PeerNode>, FormatError> {
    Ok(bincode::<StoredMembershipV0>("membership", bytes)?.into())
}

/// A netsy 0.1 local snapshot's meta (`current.meta`, JSON).
pub fn decode_snapshot_meta_json(bytes: &[u8]) -> Result<super::SnapshotMeta, FormatError> {
    let m: SnapshotMetaV0 = serde_json::from_slice(bytes).map_err(|source| FormatError::LegacyJson {
        what: "snapshot meta",
        source,
    })?;
    Ok(super::SnapshotMeta {
        last_log_id: m.last_log_id.map(Into::into),
        last_membership: m.last_membership.into(),
        snapshot_id: m.snapshot_id,
    })
}
