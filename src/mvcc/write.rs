//! The write path: every state change is a `Command` that went through the Raft log, and
//! is applied here inside one SQLite transaction per applied batch. A command either
//! applies entirely or (on a client-caused error) not at all, via a savepoint.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::read::{self, KeyRange, Revisions};
use super::{MvccError, MAX_LEASE_TTL, MIN_LEASE_TTL};
use crate::proto::etcdserverpb::{
    request_op::Request, response_op::Response, AlarmMember, AlarmType, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, LeaseGrantResponse, LeaseRevokeResponse, PutRequest, PutResponse, RangeResponse, RequestOp, ResponseHeader,
    ResponseOp, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};

/// A replicated state change (the payload of a Raft log entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    LeaseRevoke {
        id: i64,
    },
    /// Activate or deactivate an alarm on a member.
    Alarm {
        activate: bool,
        alarm: AlarmMember,
    },
}

impl Command {
    /// True when the command cannot fail after it has written something (every check
    /// comes before its one write), so applying it needs no savepoint: a Put, a
    /// DeleteRange, or a Txn whose branches hold at most one operation each and no nested
    /// Txn (kube-apiserver's shapes).
    pub fn fails_before_writing(&self) -> bool {
        let single = |ops: &[RequestOp]| ops.len() <= 1 && !ops.iter().any(|o| matches!(o.request, Some(Request::RequestTxn(_))));
        match self {
            Command::Put(_) | Command::DeleteRange(_) => true,
            Command::Txn(t) => single(&t.success) && single(&t.failure),
            _ => false,
        }
    }
}

/// The outcome of applying one command. Client-caused failures are results too (they
/// must not stop the Raft state machine); only storage failures are fatal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandResult {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    Alarm(Vec<AlarmMember>),
    /// A Raft entry with no payload for the state machine (blank or membership).
    Empty {
        revision: i64,
    },
    Error(MvccError),
}

/// One write transaction at revision `rev` (= current + 1). Changes are numbered by `sub`.
pub(super) struct WriteTxn<'c> {
    conn: &'c Connection,
    begin_rev: i64,
    compacted: i64,
    sub: i64,
    pub events: Vec<Event>,
    /// What the Range operations' rows are charged to: unmetered when applying (the
    /// state machine must give every member the same answer, whatever its memory), the
    /// read budget for a read-only Txn (`Reader::txn_readonly`).
    pub meter: super::Reservation,
    /// Values longer than this go to `blobs` (`schema::LARGE_VALUE`; tests change it).
    pub large_value: usize,
}

impl<'c> WriteTxn<'c> {
    pub fn new(conn: &'c Connection, revs: Revisions) -> Self {
        WriteTxn {
            conn,
            begin_rev: revs.current,
            compacted: revs.compacted,
            sub: 0,
            events: Vec::new(),
            meter: super::Reservation::unmetered(),
            large_value: super::schema::LARGE_VALUE,
        }
    }

    fn rev(&self) -> i64 {
        self.begin_rev + 1
    }

    /// The revision visible to reads in this txn: it includes this txn's own writes.
    fn read_rev(&self) -> i64 {
        if self.events.is_empty() {
            self.begin_rev
        } else {
            self.begin_rev + 1
        }
    }

    fn header(&self) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            revision: self.read_rev(),
            ..Default::default()
        })
    }

    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
        let current = read::get_current_at(self.conn, &req.key)?;
        // Where the key's live row sits in `kv`: the new row points back at it.
        let (prev_rev, prev_sub) = current.as_ref().map_or((0, 0), |(kv, sub)| (kv.mod_revision, *sub));
        let prev = current.map(|(kv, _)| kv);
        let value = if req.ignore_value {
            prev.as_ref().ok_or(MvccError::KeyNotFound)?.value.clone()
        } else {
            req.value.clone()
        };
        let lease = if req.ignore_lease {
            prev.as_ref().ok_or(MvccError::KeyNotFound)?.lease
        } else {
            req.lease
        };
        if lease != 0 && !lease_exists(self.conn, lease)? {
            return Err(MvccError::LeaseNotFound);
        }
        let rev = self.rev();
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        // Every check is done: a large value goes to `blobs` now (an `ignore_value` put
        // copies its previous value into a blob of its own, so a blob has one `kv` row).
        let (value, blob) = store_value(self.conn, &kv.value, self.large_value)?;
        self.conn
            .prepare_cached(
                "INSERT INTO kv (mod_rev, sub, key, create_rev, version, lease, value, deleted, prev_rev, prev_sub, blob) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9, ?10)",
            )?
            .execute(params![
                rev,
                self.sub,
                kv.key,
                kv.create_revision,
                kv.version,
                kv.lease,
                value,
                prev_rev,
                prev_sub,
                blob
            ])?;
        // The key's live row: replaced in place when it has one (one lookup; an upsert
        // would look the key up twice).
        let sql = if prev.is_some() {
            "UPDATE current SET mod_rev = ?2, sub = ?3, lease = ?4, create_rev = ?5, version = ?6, value = ?7, blob = ?8 \
             WHERE key = ?1"
        } else {
            "INSERT INTO current (key, mod_rev, sub, lease, create_rev, version, value, blob) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        };
        self.conn
            .prepare_cached(sql)?
            .execute(params![kv.key, rev, self.sub, lease, kv.create_revision, kv.version, value, blob])?;
        self.sub += 1;
        let prev_kv = if req.prev_kv { prev.clone() } else { None };
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: prev,
        });
        Ok(PutResponse {
            header: self.header(),
            prev_kv,
        })
    }

    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        let range = KeyRange::new(&req.key, &req.range_end);
        let rev = self.read_rev();
        let existing = read::kvs_at(self.conn, &range, rev, rev, 0, true, &mut super::Reservation::unmetered())?;
        let deleted = existing.len() as i64;
        for prev in &existing {
            self.delete_key(prev)?;
        }
        let prev_kvs = if req.prev_kv { existing } else { Vec::new() };
        Ok(DeleteRangeResponse {
            header: self.header(),
            deleted,
            prev_kvs,
        })
    }

    fn delete_key(&mut self, prev: &KeyValue) -> Result<(), MvccError> {
        let rev = self.rev();
        let prev_sub: i64 = self
            .conn
            .prepare_cached("DELETE FROM current WHERE key = ?1 RETURNING sub")?
            .query_row([&prev.key], |r| r.get(0))?;
        self.conn
            .prepare_cached(
                "INSERT INTO kv (mod_rev, sub, key, create_rev, version, lease, value, deleted, prev_rev, prev_sub) \
                 VALUES (?1, ?2, ?3, 0, 0, 0, x'', 1, ?4, ?5)",
            )?
            .execute(params![rev, self.sub, prev.key, prev.mod_revision, prev_sub])?;
        self.sub += 1;
        let tombstone = KeyValue {
            key: prev.key.clone(),
            mod_revision: rev,
            ..Default::default()
        };
        self.events.push(Event {
            r#type: EventType::Delete as i32,
            kv: Some(tombstone),
            prev_kv: Some(prev.clone()),
        });
        Ok(())
    }

    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        let mut succeeded = true;
        for c in &req.compare {
            if !read::compare(self.conn, c, self.read_rev())? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(self.op(op)?);
        }
        Ok(TxnResponse {
            header: self.header(),
            succeeded,
            responses,
        })
    }

    fn op(&mut self, op: &RequestOp) -> Result<ResponseOp, MvccError> {
        let response = match &op.request {
            Some(Request::RequestRange(r)) => Response::ResponseRange(self.range(r)?),
            Some(Request::RequestPut(r)) => Response::ResponsePut(self.put(r)?),
            Some(Request::RequestDeleteRange(r)) => Response::ResponseDeleteRange(self.delete_range(r)?),
            Some(Request::RequestTxn(t)) => Response::ResponseTxn(self.txn(t)?),
            None => return Ok(ResponseOp { response: None }),
        };
        Ok(ResponseOp { response: Some(response) })
    }

    fn range(&mut self, r: &crate::proto::etcdserverpb::RangeRequest) -> Result<RangeResponse, MvccError> {
        let revs = Revisions {
            current: self.read_rev(),
            compacted: self.compacted,
        };
        read::range(self.conn, r, revs, &mut self.meter)
    }

    /// Deletes every key attached to the lease, then the lease.
    pub fn lease_revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse, MvccError> {
        if !lease_exists(self.conn, id)? {
            return Err(MvccError::LeaseNotFound);
        }
        let keys: Vec<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT key FROM current WHERE lease = ?1 ORDER BY key")?
            .query_map([id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for key in keys {
            if let Some(prev) = read::get_current(self.conn, &key)? {
                self.delete_key(&prev)?;
            }
        }
        self.conn.prepare_cached("DELETE FROM leases WHERE id = ?1")?.execute([id])?;
        Ok(LeaseRevokeResponse { header: self.header() })
    }
}

/// How a value is written into its `kv` and `current` rows: inline (`blob` 0), or, when
/// longer than `large_value` bytes, once into `blobs` (the rows then hold `x''` and its id).
pub(super) fn store_value<'v>(conn: &Connection, value: &'v [u8], large_value: usize) -> rusqlite::Result<(&'v [u8], i64)> {
    if value.len() <= large_value {
        return Ok((value, 0));
    }
    conn.prepare_cached("INSERT INTO blobs (value) VALUES (?1)")?.execute([value])?;
    Ok((&[], conn.last_insert_rowid()))
}

pub(super) fn lease_exists(conn: &Connection, id: i64) -> rusqlite::Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM leases WHERE id = ?1")?
        .query_row([id], |_| Ok(()))
        .optional()?
        .is_some())
}

pub(super) fn lease_grant(conn: &Connection, id: i64, ttl: i64, revision: i64) -> Result<LeaseGrantResponse, MvccError> {
    if ttl > MAX_LEASE_TTL {
        return Err(MvccError::LeaseTtlTooLarge);
    }
    if id <= 0 {
        return Err(MvccError::LeaseNotFound);
    }
    if lease_exists(conn, id)? {
        return Err(MvccError::LeaseExists);
    }
    let ttl = ttl.max(MIN_LEASE_TTL);
    conn.prepare_cached("INSERT INTO leases (id, ttl) VALUES (?1, ?2)")?
        .execute([id, ttl])?;
    Ok(LeaseGrantResponse {
        header: Some(ResponseHeader {
            revision,
            ..Default::default()
        }),
        id,
        ttl,
        error: String::new(),
    })
}

/// Compaction at `rev`, as applied: from now on reads below `rev` are refused. The rows
/// it makes obsolete are deleted afterwards, off the apply path, by [`delete_compacted`]
/// (`mvcc::reclaim`); until then reads never reach them (a read at or above `rev` takes
/// each key's newest row at or below its revision, and the obsolete ones are older).
pub(super) fn compact(conn: &Connection, rev: i64, revs: Revisions) -> Result<CompactionResponse, MvccError> {
    if rev > revs.current {
        return Err(MvccError::FutureRevision);
    }
    if rev <= revs.compacted {
        return Err(MvccError::Compacted);
    }
    conn.prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'compact_revision'")?
        .execute([rev])?;
    Ok(CompactionResponse {
        header: Some(ResponseHeader {
            revision: revs.current,
            ..Default::default()
        }),
    })
}

/// Deletes the history that compaction made obsolete among the rows written in revisions
/// `from..to` (with `to` at most the compact revision): each row written there makes the
/// row it replaced obsolete, and a tombstone there is obsolete itself. Rows at and above
/// the compact revision are never touched, so reads at it stay exact, and so do watches
/// from it (the rows its events replaced are kept for their `prev_kv`). Records `to` as
/// reclaimed. The values in `blobs` of the deleted rows go with them (tombstones have
/// none). Returns the number of rows deleted.
pub(super) fn delete_compacted(conn: &Connection, from: i64, to: i64) -> rusqlite::Result<usize> {
    let blobs: Vec<i64> = conn
        .prepare_cached(
            "DELETE FROM kv WHERE (mod_rev, sub) IN \
             (SELECT prev_rev, prev_sub FROM kv WHERE mod_rev >= ?1 AND mod_rev < ?2 AND prev_rev > 0) \
             RETURNING blob",
        )?
        .query_map([from, to], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let replaced = blobs.len();
    let mut delete_blob = conn.prepare_cached("DELETE FROM blobs WHERE id = ?1")?;
    for id in blobs.into_iter().filter(|&id| id != 0) {
        delete_blob.execute([id])?;
    }
    let tombstones = conn
        .prepare_cached("DELETE FROM kv WHERE mod_rev >= ?1 AND mod_rev < ?2 AND deleted = 1")?
        .execute([from, to])?;
    conn.prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'compact_reclaimed'")?
        .execute([to])?;
    Ok(replaced + tombstones)
}

pub(super) fn alarms(conn: &Connection) -> rusqlite::Result<Vec<AlarmMember>> {
    let raw: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE name = 'alarms'", [], |r| r.get(0))
        .optional()?;
    Ok(raw.and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default())
}

pub(super) fn set_alarm(conn: &Connection, activate: bool, alarm: &AlarmMember) -> rusqlite::Result<Vec<AlarmMember>> {
    let mut all = alarms(conn)?;
    all.retain(|a| !(a.member_id == alarm.member_id && a.alarm == alarm.alarm));
    if activate && alarm.alarm != AlarmType::None as i32 {
        all.push(*alarm);
        all.sort_by_key(|a| (a.member_id, a.alarm));
    }
    let raw = serde_json::to_vec(&all).unwrap_or_default();
    conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('alarms', ?1)", [raw])?;
    Ok(all)
}
