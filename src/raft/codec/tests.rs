//! Golden bytes: what this netsy writes must not change by accident (a new openraft, prost
//! or etcd proto field), and what netsy 0.1 wrote must stay readable.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{CommittedLeaderId, Entry, EntryPayload, Membership, StoredMembership};

use super::command::{decode_command, decode_result, encode_command, encode_result, encoded_len};
use super::*;
use crate::mvcc::validate::InvalidRequest;
use crate::mvcc::{Command, CommandResult, MvccError};
use crate::proto::etcdserverpb::{
    compare, request_op, AlarmMember, AlarmType, CompactionRequest, Compare, DeleteRangeRequest, PutRequest, PutResponse, RequestOp,
    ResponseHeader, TxnRequest,
};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn log_id(term: u64, node: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

fn node(name: &str, member_id: u64) -> PeerNode {
    PeerNode {
        name: name.into(),
        member_id,
        peer_url: format!("https://{name}:2381"),
        client_url: format!("https://{name}:2378"),
    }
}

fn membership() -> Membership<NodeId, PeerNode> {
    let voters: BTreeSet<NodeId> = [1, 2].into_iter().collect();
    let nodes: BTreeMap<NodeId, PeerNode> = [(1, node("netsy-0", 0xa1)), (2, node("netsy-1", 0xb2)), (3, node("netsy-2", 0xc3))]
        .into_iter()
        .collect();
    Membership::new(vec![voters], nodes)
}

fn commands() -> Vec<Command> {
    vec![
        Command::Put(PutRequest {
            key: b"/registry/pods/default/a".to_vec(),
            value: b"v1".to_vec(),
            lease: 7,
            prev_kv: true,
            ..Default::default()
        }),
        Command::DeleteRange(DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            ..Default::default()
        }),
        Command::Txn(TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Mod as i32,
                key: b"k".to_vec(),
                target_union: Some(compare::TargetUnion::ModRevision(0)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            }],
            failure: vec![],
        }),
        Command::Compact(CompactionRequest {
            revision: 42,
            physical: false,
        }),
        Command::LeaseGrant { id: 0x1234, ttl: 60 },
        Command::LeaseRevoke { id: 0x1234 },
        Command::Alarm {
            activate: true,
            alarm: AlarmMember {
                member_id: 9,
                alarm: AlarmType::Nospace as i32,
            },
        },
    ]
}

pub(crate) fn entries() -> Vec<Entry<TypeConfig>> {
    vec![
        Entry {
            log_id: log_id(1, 1, 1),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(2, 1, 2),
            payload: EntryPayload::Membership(membership()),
        },
        Entry {
            log_id: log_id(2, 1, 3),
            payload: EntryPayload::Normal(crate::raft::Batch::new(commands(), 0)),
        },
    ]
}

/// A normal entry as netsy 0.3 writes it: with the leader's commit time.
fn stamped() -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(2, 1, 3),
        payload: EntryPayload::Normal(crate::raft::Batch::new(commands(), 1_764_633_600_123)),
    }
}

fn three_entries() -> [Entry<TypeConfig>; 3] {
    let mut e = entries().into_iter();
    let mut next = || e.next().expect("three entries");
    [next(), next(), next()]
}

#[test]
fn every_record_round_trips() {
    for e in entries().into_iter().chain([stamped()]) {
        assert_eq!(decode_entry(&encode_entry(&e)).unwrap(), e);
    }
    for c in commands() {
        let bytes = encode_command(&c);
        assert_eq!(bytes.len(), encoded_len(&c), "encoded_len of {c:?}");
        assert_eq!(decode_command(&bytes).unwrap(), c);
    }
    let mut vote = openraft::Vote::new(5, 2);
    assert_eq!(decode_vote(&encode_vote(&vote)).unwrap(), vote);
    vote.committed = true;
    assert_eq!(decode_vote(&encode_vote(&vote)).unwrap(), vote);
    let id = log_id(3, 2, 99);
    assert_eq!(decode_log_id(&encode_log_id(&id)).unwrap(), id);
    let stored = StoredMembership::new(Some(id), membership());
    assert_eq!(decode_membership(&encode_membership(&stored)).unwrap(), stored);
    let meta = SnapshotMeta {
        last_log_id: Some(id),
        last_membership: stored,
        snapshot_id: "3-99".into(),
    };
    assert_eq!(decode_snapshot_meta(&encode_snapshot_meta(&meta)).unwrap(), meta);
}

#[test]
fn every_result_and_error_round_trips() {
    let mut results = vec![
        CommandResult::Put(PutResponse {
            header: Some(ResponseHeader {
                revision: 8,
                ..Default::default()
            }),
            prev_kv: None,
        }),
        CommandResult::Alarm(vec![AlarmMember {
            member_id: 1,
            alarm: AlarmType::Nospace as i32,
        }]),
        CommandResult::Empty { revision: 12 },
    ];
    let errors = [
        MvccError::Compacted,
        MvccError::FutureRevision,
        MvccError::KeyNotFound,
        MvccError::LeaseNotFound,
        MvccError::LeaseExists,
        MvccError::LeaseTtlTooLarge,
        MvccError::NoSpace,
        MvccError::Invalid(InvalidRequest::DuplicateKey),
        MvccError::Invalid(InvalidRequest::NegativeLimit),
        MvccError::Storage("disk I/O error".into()),
    ];
    results.extend(errors.into_iter().map(CommandResult::Error));
    for r in results {
        assert_eq!(decode_result(&encode_result(&r)).unwrap(), r);
    }
}

/// The exact bytes of this format. A change here changes what is on disk and on the
/// wire: make it only by adding fields (docs/formats.md), and add a new golden value.
#[test]
fn golden_bytes_of_format_1() {
    let [blank, membership, normal] = three_entries();
    assert_eq!(hex(&encode_entry(&blank)), GOLDEN_BLANK);
    assert_eq!(hex(&encode_entry(&membership)), GOLDEN_MEMBERSHIP);
    assert_eq!(hex(&encode_entry(&normal)), GOLDEN_NORMAL);
    assert_eq!(hex(&encode_vote(&openraft::Vote::new_committed(5, 2))), GOLDEN_VOTE);
    for (golden, e) in [(GOLDEN_BLANK, blank), (GOLDEN_MEMBERSHIP, membership), (GOLDEN_NORMAL, normal)] {
        assert_eq!(decode_entry(&unhex(golden)).unwrap(), e);
    }
    // netsy 0.3 added the commit time (a new field): entries without it read as time 0.
    assert_eq!(hex(&encode_entry(&stamped())), GOLDEN_NORMAL_STAMPED);
    assert_eq!(decode_entry(&unhex(GOLDEN_NORMAL_STAMPED)).unwrap(), stamped());
}

const GOLDEN_BLANK: &str = "010a060801100118011200";
const GOLDEN_MEMBERSHIP: &str = "010a0608021001180222c0010a040a020102123c080112380a076e657473792d3010a1011a1468747470733a2f2f6e657473792d303a32333831221468747470733a2f2f6e657473792d303a32333738123c080212380a076e657473792d3110b2011a1468747470733a2f2f6e657473792d313a32333831221468747470733a2f2f6e657473792d313a32333738123c080312380a076e657473792d3210c3011a1468747470733a2f2f6e657473792d323a32333831221468747470733a2f2f6e657473792d323a32333738";
const GOLDEN_NORMAL: &str = "010a060802100118031a690a240a220a182f72656769737472792f706f64732f64656661756c742f6112027631180720010a0812060a01611201620a151a130a0710021a016b3000120812060a016b1201760a042202082a0a072a0508b424103c0a05320308b4240a0a3a080801120408091001";
const GOLDEN_NORMAL_STAMPED: &str = "010a060802100118031a700a240a220a182f72656769737472792f706f64732f64656661756c742f6112027631180720010a0812060a01611201620a151a130a0710021a016b3000120812060a016b1201760a042202082a0a072a0508b424103c0a05320308b4240a0a3a08080112040809100110fbc0efe2ad33";
const GOLDEN_VOTE: &str = "01080510021801";

#[test]
fn a_future_format_is_refused_by_name() {
    let mut bytes = encode_entry(&entries()[0]);
    bytes[0] = 2;
    let err = decode_entry(&bytes).unwrap_err();
    assert!(matches!(err, FormatError::Future { found: 2, .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("format 2") && text.contains("log entry"), "{text}");
    assert!(matches!(decode_vote(&[]), Err(FormatError::Empty { .. })));
    assert!(matches!(decode_command(&[0, 1, 2]), Err(FormatError::Unknown { found: 0, .. })));
    assert!(matches!(decode_entry(&[FORMAT, 0xff, 0xff]), Err(FormatError::Decode { .. })));
    // Well-formed protobuf without the fields an entry must have.
    assert!(matches!(decode_entry(&[FORMAT]), Err(FormatError::Missing { .. })));
}

/// Records exactly as netsy 0.1 wrote them (bincode 1 of openraft 0.9's structs).
#[test]
fn netsy_0_1_records_are_read() {
    let [blank, membership, normal] = three_entries();
    assert_eq!(legacy::decode_entry(&unhex(LEGACY_BLANK)).unwrap(), blank);
    assert_eq!(legacy::decode_entry(&unhex(LEGACY_MEMBERSHIP)).unwrap(), membership);
    assert_eq!(legacy::decode_entry(&unhex(LEGACY_NORMAL)).unwrap(), normal);
    assert_eq!(
        legacy::decode_vote(&unhex(LEGACY_VOTE)).unwrap(),
        openraft::Vote::new_committed(5, 2)
    );
    assert_eq!(legacy::decode_applied(&unhex(LEGACY_APPLIED)).unwrap(), Some(log_id(3, 2, 99)));
    assert_eq!(
        legacy::decode_membership(&unhex(LEGACY_STORED_MEMBERSHIP)).unwrap(),
        StoredMembership::new(Some(log_id(3, 2, 99)), self::membership())
    );
    let meta = decode_snapshot_meta(LEGACY_SNAPSHOT_META.as_bytes()).unwrap();
    assert_eq!(meta.last_log_id, Some(log_id(3, 2, 99)));
    assert_eq!(meta.last_membership.membership(), &self::membership());
    assert_eq!(meta.snapshot_id, "3-99");
}

pub(crate) const LEGACY_BLANK: &str = "01000000000000000100000000000000010000000000000000000000";
pub(crate) const LEGACY_MEMBERSHIP: &str = "0200000000000000010000000000000002000000000000000200000001000000000000000200000000000000010000000000000002000000000000000300000000000000010000000000000007000000000000006e657473792d30a100000000000000140000000000000068747470733a2f2f6e657473792d303a32333831140000000000000068747470733a2f2f6e657473792d303a32333738020000000000000007000000000000006e657473792d31b200000000000000140000000000000068747470733a2f2f6e657473792d313a32333831140000000000000068747470733a2f2f6e657473792d313a32333738030000000000000007000000000000006e657473792d32c300000000000000140000000000000068747470733a2f2f6e657473792d323a32333831140000000000000068747470733a2f2f6e657473792d323a32333738";
pub(crate) const LEGACY_NORMAL: &str = "0200000000000000010000000000000003000000000000000100000007000000000000000000000018000000000000002f72656769737472792f706f64732f64656661756c742f610200000000000000763107000000000000000100000100000001000000000000006101000000000000006200020000000100000000000000000000000200000001000000000000006b0000000000000000010200000000000000000000000100000000000000010100000001000000000000006b01000000000000007600000000000000000000000000000000000000030000002a00000000000000000400000034120000000000003c000000000000000500000034120000000000000600000001090000000000000001000000";
pub(crate) const LEGACY_VOTE: &str = "0500000000000000020000000000000001";
pub(crate) const LEGACY_APPLIED: &str = "01030000000000000002000000000000006300000000000000";
pub(crate) const LEGACY_STORED_MEMBERSHIP: &str = "0103000000000000000200000000000000630000000000000001000000000000000200000000000000010000000000000002000000000000000300000000000000010000000000000007000000000000006e657473792d30a100000000000000140000000000000068747470733a2f2f6e657473792d303a32333831140000000000000068747470733a2f2f6e657473792d303a32333738020000000000000007000000000000006e657473792d31b200000000000000140000000000000068747470733a2f2f6e657473792d313a32333831140000000000000068747470733a2f2f6e657473792d313a32333738030000000000000007000000000000006e657473792d32c300000000000000140000000000000068747470733a2f2f6e657473792d323a32333831140000000000000068747470733a2f2f6e657473792d323a32333738";
pub(crate) const LEGACY_SNAPSHOT_META: &str = r#"{"last_log_id":{"leader_id":{"term":3,"node_id":2},"index":99},"last_membership":{"log_id":{"leader_id":{"term":3,"node_id":2},"index":99},"membership":{"configs":[[1,2]],"nodes":{"1":{"name":"netsy-0","member_id":161,"peer_url":"https://netsy-0:2381","client_url":"https://netsy-0:2378"},"2":{"name":"netsy-1","member_id":178,"peer_url":"https://netsy-1:2381","client_url":"https://netsy-1:2378"},"3":{"name":"netsy-2","member_id":195,"peer_url":"https://netsy-2:2381","client_url":"https://netsy-2:2378"}}}},"snapshot_id":"3-99"}"#;

/// Prints the golden values (run with `--ignored --nocapture` after a deliberate change).
#[test]
#[ignore]
fn print_golden_values() {
    let [blank, membership, normal] = three_entries();
    println!("GOLDEN_BLANK {}", hex(&encode_entry(&blank)));
    println!("GOLDEN_MEMBERSHIP {}", hex(&encode_entry(&membership)));
    println!("GOLDEN_NORMAL {}", hex(&encode_entry(&normal)));
    println!("GOLDEN_NORMAL_STAMPED {}", hex(&encode_entry(&stamped())));
    println!("GOLDEN_VOTE {}", hex(&encode_vote(&openraft::Vote::new_committed(5, 2))));
}
