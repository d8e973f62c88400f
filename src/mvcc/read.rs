//! The read path: ranges at the current or a historical revision, and Txn compares.
//! Every function takes a `&Connection` so the same code serves read-only requests and
//! reads inside a write transaction (which see that transaction's earlier writes, as etcd).

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, OptionalExtension, Row};

use super::{MvccError, Reservation};
use crate::proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    Compare, RangeRequest, RangeResponse, ResponseHeader,
};
use crate::proto::mvccpb::KeyValue;

/// The end of a key range, decoded from etcd's `range_end` convention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeEnd {
    /// `range_end` empty: exactly `key`.
    Single,
    /// `range_end == "\0"`: every key >= `key`.
    Open,
    /// `[key, end)`.
    Until(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: RangeEnd,
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        let end = match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Open,
            e => RangeEnd::Until(e.to_vec()),
        };
        KeyRange { start: key.to_vec(), end }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            RangeEnd::Single => key == self.start.as_slice(),
            RangeEnd::Open => key >= self.start.as_slice(),
            RangeEnd::Until(e) => key >= self.start.as_slice() && key < e.as_slice(),
        }
    }

    /// SQL condition on `column` plus its parameters. Always a key range, never LIKE.
    ///
    /// A single key is written `>= ? AND <= ?`: the bundled SQLite (built with STAT4)
    /// re-plans a join with `= ?` on every execution, which costs more than the lookup.
    fn sql(&self, column: &str) -> (String, Vec<Vec<u8>>) {
        match &self.end {
            RangeEnd::Single => (
                format!("{column} >= ? AND {column} <= ?"),
                vec![self.start.clone(), self.start.clone()],
            ),
            RangeEnd::Open => (format!("{column} >= ?"), vec![self.start.clone()]),
            RangeEnd::Until(e) => (format!("{column} >= ? AND {column} < ?"), vec![self.start.clone(), e.clone()]),
        }
    }
}

/// The value of the `kv` or `current` row of table alias `$t`: inline (`blob` 0), or its
/// row in `blobs` (`schema::LARGE_VALUE`). Only the large values take the second lookup
/// (a `CASE` evaluates one branch).
macro_rules! value_of {
    ($t:literal) => {
        concat!(
            "CASE WHEN ",
            $t,
            ".blob = 0 THEN ",
            $t,
            ".value ELSE (SELECT b.value FROM blobs b WHERE b.id = ",
            $t,
            ".blob) END"
        )
    };
}
pub(super) use value_of;

const KV_COLUMNS: &str = "k.key, k.create_rev, k.mod_rev, k.version, k.lease";
/// The live row of a key is complete in `current` (but for a large value): no join with `kv`.
const CURRENT_COLUMNS: &str = "c.key, c.create_rev, c.mod_rev, c.version, c.lease";
const CURRENT_VALUE: &str = value_of!("c");
const KV_VALUE: &str = value_of!("k");

fn row_to_kv(row: &Row, with_value: bool) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: row.get(0)?,
        create_revision: row.get(1)?,
        mod_revision: row.get(2)?,
        version: row.get(3)?,
        lease: row.get(4)?,
        value: if with_value { row.get(5)? } else { Vec::new() },
    })
}

/// Revision counters of the store, read inside the same SQLite transaction as the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revisions {
    pub current: i64,
    pub compacted: i64,
}

pub fn revisions(conn: &Connection) -> rusqlite::Result<Revisions> {
    // One statement: this runs at the start of every read.
    conn.prepare_cached(
        "SELECT (SELECT value FROM meta WHERE name = 'revision'), (SELECT value FROM meta WHERE name = 'compact_revision')",
    )?
    .query_row([], |r| {
        Ok(Revisions {
            current: r.get(0)?,
            compacted: r.get(1)?,
        })
    })
}

/// The revision below which compaction's deletions are done (`mvcc::reclaim`): rows
/// written from here to the compact revision may still have obsolete rows behind them.
pub fn compact_reclaimed(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT value FROM meta WHERE name = 'compact_reclaimed'")?
        .query_row([], |r| r.get(0))
}

/// Keys in `range` at revision `rev` (live only), sorted by key, at most `limit` (0 = all).
///
/// Each row is charged to `meter` before it is kept; once `meter` refuses, rows are only
/// counted (until the read is known to exceed the whole budget) and the result is
/// incomplete: the caller must look at `meter.refused()` before using it.
pub fn kvs_at(
    conn: &Connection,
    range: &KeyRange,
    rev: i64,
    current: i64,
    limit: i64,
    with_value: bool,
    meter: &mut Reservation,
) -> rusqlite::Result<Vec<KeyValue>> {
    let (sql, params) = kvs_at_sql(range, rev, current, limit, with_value);
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(params.iter()), |r| row_to_kv(r, with_value))?;
    let mut kvs = Vec::new();
    for row in rows {
        let kv = row?;
        if meter.charge(super::row_cost(kv.key.len(), kv.value.len())) {
            kvs.push(kv);
        } else if meter.exceeds_budget() {
            break;
        }
    }
    Ok(kvs)
}

/// Like [`kvs_at`], unmetered (RangeStream bounds its chunks itself), but stops after the
/// row that brings the keys and values read to `max_bytes` (so at least one row); also
/// tells whether the range has no more rows.
pub fn kvs_at_within(
    conn: &Connection,
    range: &KeyRange,
    rev: i64,
    current: i64,
    limit: i64,
    with_value: bool,
    max_bytes: usize,
) -> rusqlite::Result<(Vec<KeyValue>, bool)> {
    let (sql, params) = kvs_at_sql(range, rev, current, limit, with_value);
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query_map(params_from_iter(params.iter()), |r| row_to_kv(r, with_value))?;
    let mut kvs = Vec::new();
    let mut bytes = 0;
    for row in rows.by_ref() {
        let kv = row?;
        bytes += kv.key.len() + kv.value.len();
        kvs.push(kv);
        if bytes >= max_bytes {
            break;
        }
    }
    let ended = (limit <= 0 || (kvs.len() as i64) < limit) && bytes < max_bytes;
    Ok((kvs, ended))
}

/// The SQL and parameters of [`kvs_at`].
fn kvs_at_sql(range: &KeyRange, rev: i64, current: i64, limit: i64, with_value: bool) -> (String, Vec<Value>) {
    let limit_sql = if limit > 0 { format!(" LIMIT {limit}") } else { String::new() };
    if rev >= current {
        let current_value = if with_value { format!(", {CURRENT_VALUE}") } else { String::new() };
        let (cond, params) = range.sql("c.key");
        (
            format!("SELECT {CURRENT_COLUMNS}{current_value} FROM current c WHERE {cond} ORDER BY c.key{limit_sql}"),
            params.into_iter().map(Value::Blob).collect(),
        )
    } else {
        let (rows, params) = rows_at(range, rev, with_value);
        (format!("SELECT * FROM ({rows}) ORDER BY key{limit_sql}"), params)
    }
}

/// SQL (and its parameters) for the live rows of `range` at the past revision `rev`:
/// a key unchanged since `rev` has its row in `current`; any other key (changed or deleted
/// after `rev`) had, at `rev`, the row that its first later change points back at.
fn rows_at(range: &KeyRange, rev: i64, with_value: bool) -> (String, Vec<Value>) {
    let (c_value, k_value) = if with_value {
        (format!(", {CURRENT_VALUE}"), format!(", {KV_VALUE}"))
    } else {
        (String::new(), String::new())
    };
    let (c_cond, c_params) = range.sql("c.key");
    let (a_cond, a_params) = range.sql("a.key");
    let sql = format!(
        "SELECT {CURRENT_COLUMNS}{c_value} FROM current c WHERE {c_cond} AND c.mod_rev <= ? \
         UNION ALL \
         SELECT {KV_COLUMNS}{k_value} FROM \
           (SELECT MIN(a.mod_rev), a.prev_rev, a.prev_sub FROM kv a WHERE a.mod_rev > ? AND {a_cond} GROUP BY a.key) f \
           JOIN kv k ON k.mod_rev = f.prev_rev AND k.sub = f.prev_sub WHERE k.deleted = 0"
    );
    let mut params: Vec<Value> = c_params.into_iter().map(Value::Blob).collect();
    params.push(Value::Integer(rev));
    params.push(Value::Integer(rev));
    params.extend(a_params.into_iter().map(Value::Blob));
    (sql, params)
}

/// Number of live keys in `range` at revision `rev`.
pub fn count_at(conn: &Connection, range: &KeyRange, rev: i64, current: i64) -> rusqlite::Result<i64> {
    let (sql, params) = if rev >= current {
        let (cond, params) = range.sql("c.key");
        (
            format!("SELECT COUNT(*) FROM current c WHERE {cond}"),
            params.into_iter().map(Value::Blob).collect(),
        )
    } else {
        let (rows, params) = rows_at(range, rev, false);
        (format!("SELECT COUNT(*) FROM ({rows})"), params)
    };
    conn.prepare_cached(&sql)?.query_row(params_from_iter(params.iter()), |r| r.get(0))
}

/// The live value of one key, if any.
pub fn get_current(conn: &Connection, key: &[u8]) -> rusqlite::Result<Option<KeyValue>> {
    Ok(get_current_at(conn, key)?.map(|(kv, _)| kv))
}

/// The live value of one key and its `sub` (with `mod_revision`, its place in `kv`).
pub fn get_current_at(conn: &Connection, key: &[u8]) -> rusqlite::Result<Option<(KeyValue, i64)>> {
    conn.prepare_cached(&format!(
        "SELECT {CURRENT_COLUMNS}, {CURRENT_VALUE}, c.sub FROM current c WHERE c.key = ?1"
    ))?
    .query_row([key], |r| Ok((row_to_kv(r, true)?, r.get(6)?)))
    .optional()
}

/// etcd's Range, exactly: see `applierV3backend.Range` (limit+1 fetch for `more`, count
/// before filters, sort in the applier, header revision = current store revision).
///
/// The rows are charged to `meter` as they are read (see [`kvs_at`]): when it refuses, the
/// answer is incomplete and must not be used.
pub fn range(conn: &Connection, req: &RangeRequest, revs: Revisions, meter: &mut Reservation) -> Result<RangeResponse, MvccError> {
    let rev = if req.revision <= 0 { revs.current } else { req.revision };
    if rev > revs.current {
        return Err(MvccError::FutureRevision);
    }
    if rev < revs.compacted {
        return Err(MvccError::Compacted);
    }
    let range = KeyRange::new(&req.key, &req.range_end);
    let header = Some(ResponseHeader {
        revision: revs.current,
        ..Default::default()
    });
    if req.count_only {
        let count = count_at(conn, &range, rev, revs.current)?;
        return Ok(RangeResponse {
            header,
            kvs: vec![],
            more: false,
            count,
        });
    }

    let has_filter = req.min_mod_revision != 0 || req.max_mod_revision != 0 || req.min_create_revision != 0 || req.max_create_revision != 0;
    let mut fetch_limit = req.limit;
    if req.sort_order != SortOrder::None as i32 || has_filter {
        fetch_limit = 0;
    }
    if fetch_limit > 0 {
        fetch_limit += 1;
    }
    let mut kvs = kvs_at(conn, &range, rev, revs.current, fetch_limit, !req.keys_only, meter)?;
    let count = if fetch_limit > 0 && kvs.len() as i64 >= fetch_limit && range.end != RangeEnd::Single {
        count_at(conn, &range, rev, revs.current)?
    } else {
        kvs.len() as i64
    };

    if req.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= req.max_mod_revision);
    }
    if req.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= req.min_mod_revision);
    }
    if req.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= req.max_create_revision);
    }
    if req.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= req.min_create_revision);
    }

    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    } else if target == SortTarget::Key && order == SortOrder::Ascend {
        order = SortOrder::None; // already sorted by key
    }
    if order != SortOrder::None {
        kvs.sort_by(|a, b| {
            let o = match target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            };
            if order == SortOrder::Descend {
                o.reverse()
            } else {
                o
            }
        });
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() as i64 > req.limit {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    Ok(RangeResponse { header, kvs, more, count })
}

/// etcd's `applyCompare`: every key in the compare's range must satisfy it; a missing
/// key compares as the zero KeyValue, except that a VALUE compare on it always fails.
pub fn compare(conn: &Connection, c: &Compare, current: i64) -> Result<bool, MvccError> {
    // Row by row, keeping none: a compare over a large range holds one row at a time.
    let range = KeyRange::new(&c.key, &c.range_end);
    let with_value = c.target == CompareTarget::Value as i32;
    let (sql, params) = kvs_at_sql(&range, current, current, 0, with_value);
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query_map(params_from_iter(params.iter()), |r| row_to_kv(r, with_value))?;
    let mut any = false;
    for row in rows.by_ref() {
        any = true;
        if !compare_kv(c, &row?) {
            return Ok(false);
        }
    }
    if !any {
        if with_value {
            return Ok(false);
        }
        return Ok(compare_kv(c, &KeyValue::default()));
    }
    Ok(true)
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let v: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(v)
        }
        Ok(CompareTarget::Create) => kv
            .create_revision
            .cmp(&int_target(c, |t| matches!(t, TargetUnion::CreateRevision(_)))),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&int_target(c, |t| matches!(t, TargetUnion::ModRevision(_)))),
        Ok(CompareTarget::Version) => kv.version.cmp(&int_target(c, |t| matches!(t, TargetUnion::Version(_)))),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&int_target(c, |t| matches!(t, TargetUnion::Lease(_)))),
        Err(_) => return true,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}

/// The integer in the compare's target union when it matches the target, else 0 (etcd).
fn int_target(c: &Compare, is_target: impl Fn(&TargetUnion) -> bool) -> i64 {
    match &c.target_union {
        Some(t) if is_target(t) => match t {
            TargetUnion::Version(v) | TargetUnion::CreateRevision(v) | TargetUnion::ModRevision(v) | TargetUnion::Lease(v) => *v,
            TargetUnion::Value(_) => 0,
        },
        _ => 0,
    }
}
