//! etcd's request checks (v3rpc `checkRangeRequest`, `checkPutRequest`, `checkTxnRequest`,
//! `checkIntervals`), run before a request is proposed so bad input changes nothing.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::proto::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum InvalidRequest {
    #[error("key is not provided")]
    EmptyKey,
    #[error("value is provided")]
    ValueProvided,
    #[error("lease is provided")]
    LeaseProvided,
    #[error("too many operations in txn request")]
    TooManyOps,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("invalid sort option")]
    InvalidSortOption,
    /// No longer answered (etcd answers an empty range); kept because the Raft codec
    /// names it in results that members exchange.
    #[error("range end must be greater than or equal to key")]
    RangeEndBeforeKey,
    /// No longer answered (etcd reads the current revision); kept for the Raft codec.
    #[error("revision must not be negative")]
    NegativeRevision,
    /// No longer answered (etcd applies no limit); kept for the Raft codec.
    #[error("limit must not be negative")]
    NegativeLimit,
}

pub fn check_range(r: &RangeRequest) -> Result<(), InvalidRequest> {
    if r.key.is_empty() {
        return Err(InvalidRequest::EmptyKey);
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(InvalidRequest::InvalidSortOption);
    }
    // As in etcd, these are no errors: a `range_end` before `key` is an empty range, a
    // negative `revision` means the current one and a negative `limit` no limit
    // (`read::range`).
    Ok(())
}

pub fn check_put(r: &PutRequest) -> Result<(), InvalidRequest> {
    if r.key.is_empty() {
        return Err(InvalidRequest::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(InvalidRequest::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(InvalidRequest::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(r: &DeleteRangeRequest) -> Result<(), InvalidRequest> {
    if r.key.is_empty() {
        return Err(InvalidRequest::EmptyKey);
    }
    Ok(())
}

pub fn check_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), InvalidRequest> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    if ops > max_txn_ops {
        return Err(InvalidRequest::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(InvalidRequest::EmptyKey);
    }
    for op in r.success.iter().chain(r.failure.iter()) {
        check_op(op, max_txn_ops - ops)?;
    }
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_op(op: &RequestOp, max_txn_ops: usize) -> Result<(), InvalidRequest> {
    match &op.request {
        Some(Request::RequestRange(r)) => check_range(r),
        Some(Request::RequestPut(r)) => check_put(r),
        Some(Request::RequestDeleteRange(r)) => check_delete(r),
        Some(Request::RequestTxn(t)) => check_txn(t, max_txn_ops),
        None => Ok(()),
    }
}

/// A half-open key interval; `end == None` is a single key, `Some(vec![0])` is "to the end".
#[derive(Debug, Clone)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            None => key == self.start.as_slice(),
            Some(end) if end.as_slice() == [0] => key >= self.start.as_slice(),
            Some(end) => key >= self.start.as_slice() && key < end.as_slice(),
        }
    }
}

/// Puts may not repeat a key, nor fall inside a delete range, within one branch (nested
/// txns included; a nested txn's success and failure branches are alternatives, so the
/// same key may be put in both). Mirrors etcd's `checkIntervals`.
fn check_intervals(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<Interval>), InvalidRequest> {
    let mut dels: Vec<Interval> = Vec::new();
    for op in ops {
        if let Some(Request::RequestDeleteRange(d)) = &op.request {
            let end = if d.range_end.is_empty() { None } else { Some(d.range_end.clone()) };
            dels.push(Interval { start: d.key.clone(), end });
        }
    }
    let covered = |dels: &[Interval], k: &[u8]| dels.iter().any(|d| d.contains(k));
    let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || covered(&dels, k) {
                return Err(InvalidRequest::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || covered(&dels, k) {
                return Err(InvalidRequest::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else { continue };
        if puts.contains(&p.key) || covered(&dels, &p.key) {
            return Err(InvalidRequest::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn duplicate_puts_rejected() {
        assert_eq!(
            check_txn(&txn(vec![put("a"), put("a")], vec![]), 128),
            Err(InvalidRequest::DuplicateKey)
        );
        assert_eq!(check_txn(&txn(vec![put("a"), put("b")], vec![put("a")]), 128), Ok(()));
    }

    #[test]
    fn put_inside_delete_range_rejected() {
        assert_eq!(
            check_txn(&txn(vec![del("a", "c"), put("b")], vec![]), 128),
            Err(InvalidRequest::DuplicateKey)
        );
        assert_eq!(
            check_txn(&txn(vec![put("b"), del("a", "c")], vec![]), 128),
            Err(InvalidRequest::DuplicateKey)
        );
        assert_eq!(check_txn(&txn(vec![put("c"), del("a", "c")], vec![]), 128), Ok(()));
        assert_eq!(check_txn(&txn(vec![del("a", "b"), del("a", "c")], vec![]), 128), Ok(()));
    }

    #[test]
    fn nested_txn_checked() {
        let nested = RequestOp {
            request: Some(Request::RequestTxn(txn(vec![put("a")], vec![put("a")]))),
        };
        assert_eq!(check_txn(&txn(vec![nested.clone()], vec![]), 128), Ok(()));
        assert_eq!(
            check_txn(&txn(vec![put("a"), nested], vec![]), 128),
            Err(InvalidRequest::DuplicateKey)
        );
    }

    #[test]
    fn too_many_ops() {
        let ops: Vec<_> = (0..3).map(|i| put(&i.to_string())).collect();
        assert_eq!(check_txn(&txn(ops, vec![]), 2), Err(InvalidRequest::TooManyOps));
    }

    #[test]
    fn range_checks() {
        let r = |k: &str, e: &str| RangeRequest {
            key: k.into(),
            range_end: e.into(),
            ..Default::default()
        };
        assert_eq!(check_range(&r("", "")), Err(InvalidRequest::EmptyKey));
        assert_eq!(check_range(&r("b", "a")), Ok(()), "an empty range, as in etcd");
        assert_eq!(check_range(&r("b", "\0")), Ok(()));
        assert_eq!(
            check_range(&RangeRequest {
                key: b"a".to_vec(),
                sort_order: 9,
                ..Default::default()
            }),
            Err(InvalidRequest::InvalidSortOption)
        );
        assert_eq!(
            check_range(&RangeRequest {
                key: b"a".to_vec(),
                limit: -1,
                revision: -1,
                ..Default::default()
            }),
            Ok(()),
            "no limit at the current revision, as in etcd"
        );
    }
}
