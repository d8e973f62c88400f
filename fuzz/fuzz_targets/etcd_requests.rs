//! etcd requests as clients send them (Put, Range, DeleteRange, Txn, Compaction,
//! LeaseGrant, LeaseRevoke), built well-formed from the input with `arbitrary`, through
//! the checks the KV service makes (src/mvcc/validate.rs) and the store's apply and read
//! paths (src/mvcc), on a new store for each input. No request panics; a refused one
//! (by the checks or by the store) changes nothing: the revision, the compact revision,
//! the data's hash and the leases are as before; an applied one moves the revision by at
//! most one.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use netsy::mvcc::validate;
use netsy::mvcc::{AppliedMeta, Command, CommandResult, Reader, Store};
use netsy::proto::etcdserverpb::compare::TargetUnion;
use netsy::proto::etcdserverpb::request_op::Request;
use netsy::proto::etcdserverpb::{CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};
use netsy_fuzz::scratch;

/// etcd's default `--max-txn-ops`, as the KV service checks it.
const MAX_TXN_OPS: usize = 128;

/// A key: one of a few (so requests meet), or any bytes.
#[derive(Arbitrary, Debug, Clone)]
enum Key {
    Small(u8),
    Raw(Vec<u8>),
}

impl Key {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Key::Small(n) => vec![b'k', b'0' + n % 8],
            Key::Raw(b) => b.clone(),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum End {
    One,
    Prefix,
    All,
    Raw(Vec<u8>),
}

fn range_end(key: &[u8], end: &End) -> Vec<u8> {
    match end {
        End::One => vec![],
        End::Prefix => {
            let mut e = key.to_vec();
            match e.iter().rposition(|b| *b < 0xff) {
                Some(i) => {
                    e.truncate(i + 1);
                    e[i] += 1;
                    e
                }
                None => vec![0],
            }
        }
        End::All => vec![0],
        End::Raw(b) => b.clone(),
    }
}

/// A revision near the store's (so both sides of each check are reached), or any.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Rev {
    Near(i8),
    Any(i64),
}

impl Rev {
    fn value(self, current: i64) -> i64 {
        match self {
            Rev::Near(d) => current.saturating_add(i64::from(d)),
            Rev::Any(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
struct Put {
    key: Key,
    value: Vec<u8>,
    lease: u8,
    prev_kv: bool,
    ignore_value: bool,
    ignore_lease: bool,
}

#[derive(Arbitrary, Debug, Clone)]
struct Range {
    key: Key,
    end: End,
    limit: i64,
    revision: Rev,
    sort_order: i8,
    sort_target: i8,
    serializable: bool,
    keys_only: bool,
    count_only: bool,
    min_mod_revision: Rev,
    max_mod_revision: Rev,
    min_create_revision: Rev,
    max_create_revision: Rev,
}

#[derive(Arbitrary, Debug, Clone)]
struct Delete {
    key: Key,
    end: End,
    prev_kv: bool,
}

#[derive(Arbitrary, Debug, Clone)]
enum Target {
    Version(Rev),
    Create(Rev),
    Mod(Rev),
    Value(Vec<u8>),
    Lease(u8),
}

#[derive(Arbitrary, Debug, Clone)]
struct Cmp {
    key: Key,
    end: Option<End>,
    result: i8,
    target: Target,
    /// The `target` field disagreeing with the union, as a client may send it.
    target_field: Option<i8>,
}

#[derive(Arbitrary, Debug, Clone)]
enum TxnOp {
    Put(Put),
    Range(Range),
    Delete(Delete),
    Txn(Box<Txn>),
}

#[derive(Arbitrary, Debug, Clone)]
struct Txn {
    compare: Vec<Cmp>,
    success: Vec<TxnOp>,
    failure: Vec<TxnOp>,
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    Put(Put),
    Range(Range),
    Delete(Delete),
    Txn(Txn),
    Compact { revision: Rev, physical: bool },
    LeaseGrant { id: u8, ttl: i64 },
    LeaseRevoke { id: u8 },
}

fn lease(n: u8) -> i64 {
    // A few leases that exist or not; 0 is "no lease".
    i64::from(n % 4)
}

fn put(p: &Put) -> PutRequest {
    PutRequest {
        key: p.key.bytes(),
        value: p.value.clone(),
        lease: lease(p.lease),
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    }
}

fn range(r: &Range, rev: i64) -> RangeRequest {
    let key = r.key.bytes();
    RangeRequest {
        range_end: range_end(&key, &r.end),
        key,
        limit: r.limit,
        revision: r.revision.value(rev),
        sort_order: i32::from(r.sort_order),
        sort_target: i32::from(r.sort_target),
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision.value(rev),
        max_mod_revision: r.max_mod_revision.value(rev),
        min_create_revision: r.min_create_revision.value(rev),
        max_create_revision: r.max_create_revision.value(rev),
    }
}

fn delete(d: &Delete) -> DeleteRangeRequest {
    let key = d.key.bytes();
    DeleteRangeRequest {
        range_end: range_end(&key, &d.end),
        key,
        prev_kv: d.prev_kv,
    }
}

fn compare(c: &Cmp, rev: i64) -> Compare {
    let key = c.key.bytes();
    let (target, union) = match &c.target {
        Target::Version(r) => (0, TargetUnion::Version(r.value(rev))),
        Target::Create(r) => (1, TargetUnion::CreateRevision(r.value(rev))),
        Target::Mod(r) => (2, TargetUnion::ModRevision(r.value(rev))),
        Target::Value(v) => (3, TargetUnion::Value(v.clone())),
        Target::Lease(l) => (4, TargetUnion::Lease(lease(*l))),
    };
    Compare {
        result: i32::from(c.result % 5),
        target: c.target_field.map_or(target, i32::from),
        range_end: c.end.as_ref().map(|e| range_end(&key, e)).unwrap_or_default(),
        key,
        target_union: Some(union),
    }
}

fn txn(t: &Txn, rev: i64) -> TxnRequest {
    let ops = |ops: &[TxnOp]| {
        ops.iter()
            .map(|op| RequestOp {
                request: Some(match op {
                    TxnOp::Put(p) => Request::RequestPut(put(p)),
                    TxnOp::Range(r) => Request::RequestRange(range(r, rev)),
                    TxnOp::Delete(d) => Request::RequestDeleteRange(delete(d)),
                    TxnOp::Txn(t) => Request::RequestTxn(txn(t, rev)),
                }),
            })
            .collect()
    };
    TxnRequest {
        compare: t.compare.iter().map(|c| compare(c, rev)).collect(),
        success: ops(&t.success),
        failure: ops(&t.failure),
    }
}

fn writes(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).any(|op| match &op.request {
        Some(Request::RequestPut(_) | Request::RequestDeleteRange(_)) => true,
        Some(Request::RequestTxn(t)) => writes(t),
        _ => false,
    })
}

/// What a refused request must leave as it was.
#[derive(Debug, PartialEq)]
struct Observed {
    revision: i64,
    compacted: i64,
    hash: u32,
    leases: Vec<(i64, i64)>,
}

fn observe(store: &Store, reader: &Reader) -> Observed {
    let revs = reader.revisions().expect("revisions");
    assert_eq!(revs.current, store.revision(), "the reader and the store agree");
    Observed {
        revision: revs.current,
        compacted: revs.compacted,
        hash: reader.hash_all().expect("hash"),
        leases: reader.lease_ids().expect("leases"),
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let dir = tempfile::tempdir_in(scratch()).expect("tempdir");
    let mut store = Store::open(&dir.path().join("state.db")).expect("store");
    let reader = Reader::new(store.path());
    for op in ops.iter().take(24) {
        let before = observe(&store, &reader);
        let rev = before.revision;
        let cmd = match op {
            Op::Range(r) => {
                let req = range(r, rev);
                if validate::check_range(&req).is_ok() {
                    let _ = reader.range(&req);
                }
                assert_eq!(observe(&store, &reader), before, "a read changed the store");
                continue;
            }
            Op::Put(p) => {
                let req = put(p);
                validate::check_put(&req).map(|_| Command::Put(req))
            }
            Op::Delete(d) => {
                let req = delete(d);
                validate::check_delete(&req).map(|_| Command::DeleteRange(req))
            }
            Op::Txn(t) => {
                let req = txn(t, rev);
                match validate::check_txn(&req, MAX_TXN_OPS) {
                    Ok(()) if !writes(&req) => {
                        let _ = reader.txn_readonly(&req);
                        assert_eq!(observe(&store, &reader), before, "a read-only txn changed the store");
                        continue;
                    }
                    checked => checked.map(|_| Command::Txn(req)),
                }
            }
            Op::Compact { revision, physical } => Ok(Command::Compact(CompactionRequest {
                revision: revision.value(rev),
                physical: *physical,
            })),
            Op::LeaseGrant { id, ttl } => Ok(Command::LeaseGrant { id: lease(*id), ttl: *ttl }),
            Op::LeaseRevoke { id } => Ok(Command::LeaseRevoke { id: lease(*id) }),
        };
        let Ok(cmd) = cmd else {
            assert_eq!(observe(&store, &reader), before);
            continue;
        };
        let result = store
            .apply_batch(&[Some(cmd.clone())], &AppliedMeta::default())
            .expect("apply")
            .pop()
            .expect("one result");
        let after = observe(&store, &reader);
        match result {
            CommandResult::Error(e) => assert_eq!(after, before, "{cmd:?} was refused ({e}) but changed the store"),
            _ => {
                assert!(
                    after.revision == before.revision || after.revision == before.revision + 1,
                    "{cmd:?}: {before:?} -> {after:?}"
                );
                assert!(after.compacted <= after.revision && after.compacted >= before.compacted);
            }
        }
    }
});
