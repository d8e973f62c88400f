//! Event history: the events of past revisions, rebuilt from the `kv` table for watches
//! that start in the past or fell behind the live commit stream.

use rusqlite::{Connection, Row};

use super::read::value_of;

use crate::proto::mvccpb::{event::EventType, Event, KeyValue};

/// The events of one revision, in the order they were made.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionEvents {
    pub revision: i64,
    pub events: Vec<Event>,
}

/// A slice of history: whole revisions only, from the requested start up to `covered_to`.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    pub revisions: Vec<RevisionEvents>,
    /// Every revision up to here (inclusive) is in `revisions` (or had no events).
    pub covered_to: i64,
}

/// One `kv` row and the row it superseded, if any, with their values.
const SQL: &str = concat!(
    "SELECT k.key, k.mod_rev, k.create_rev, k.version, k.lease, ",
    value_of!("k"),
    ", k.deleted, p.create_rev, p.mod_rev, p.version, p.lease, ",
    value_of!("p"),
    ", p.deleted \
     FROM kv k LEFT JOIN kv p ON p.mod_rev = k.prev_rev AND p.sub = k.prev_sub \
     WHERE k.mod_rev >= ?1 AND k.mod_rev <= ?2 ORDER BY k.mod_rev, k.sub"
);

fn row_to_event(r: &Row) -> rusqlite::Result<(i64, Event)> {
    let key: Vec<u8> = r.get(0)?;
    let mod_rev: i64 = r.get(1)?;
    let deleted: bool = r.get(6)?;
    let prev_deleted: Option<bool> = r.get(12)?;
    let prev_kv = match prev_deleted {
        Some(false) => Some(KeyValue {
            key: key.clone(),
            create_revision: r.get(7)?,
            mod_revision: r.get(8)?,
            version: r.get(9)?,
            lease: r.get(10)?,
            value: r.get(11)?,
        }),
        _ => None,
    };
    let (kind, kv) = if deleted {
        (
            EventType::Delete,
            KeyValue {
                key,
                mod_revision: mod_rev,
                ..Default::default()
            },
        )
    } else {
        (
            EventType::Put,
            KeyValue {
                key,
                create_revision: r.get(2)?,
                mod_revision: mod_rev,
                version: r.get(3)?,
                lease: r.get(4)?,
                value: r.get(5)?,
            },
        )
    };
    Ok((
        mod_rev,
        Event {
            r#type: kind as i32,
            kv: Some(kv),
            prev_kv,
        },
    ))
}

/// The keys and values an event holds (its own and its `prev_kv`'s).
fn event_bytes(ev: &Event) -> usize {
    let kv_bytes = |kv: &Option<KeyValue>| kv.as_ref().map_or(0, |kv| kv.key.len() + kv.value.len());
    kv_bytes(&ev.kv) + kv_bytes(&ev.prev_kv)
}

/// Events of revisions `from..=to`, stopping at a revision boundary after about
/// `max_events`, or once their keys and values reach `max_bytes` (a revision is never
/// split, however many events or bytes it has).
pub fn events(conn: &Connection, from: i64, to: i64, max_events: usize, max_bytes: usize) -> rusqlite::Result<History> {
    let mut stmt = conn.prepare_cached(&format!("{SQL} LIMIT ?3"))?;
    let mut rows = Vec::new();
    let mut bytes = 0;
    let mut cut = false;
    for row in stmt.query_map(rusqlite::params![from, to, (max_events + 1) as i64], row_to_event)? {
        let (rev, ev) = row?;
        bytes += event_bytes(&ev);
        rows.push((rev, ev));
        if rows.len() > max_events || bytes >= max_bytes {
            cut = true;
            break;
        }
    }
    let mut covered_to = to;
    if cut {
        // The last revision may be cut short: drop it, or read it whole if it is the only one.
        let last = rows[rows.len() - 1].0;
        rows.retain(|(rev, _)| *rev < last);
        if rows.is_empty() {
            rows = conn
                .prepare_cached(SQL)?
                .query_map(rusqlite::params![last, last], row_to_event)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            covered_to = last;
        } else {
            covered_to = last - 1;
        }
    }
    let mut revisions: Vec<RevisionEvents> = Vec::new();
    for (rev, ev) in rows {
        match revisions.last_mut() {
            Some(r) if r.revision == rev => r.events.push(ev),
            _ => revisions.push(RevisionEvents {
                revision: rev,
                events: vec![ev],
            }),
        }
    }
    Ok(History { revisions, covered_to })
}
