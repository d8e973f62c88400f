//! The reference history of a run, and the checks of reads, writes, lists and leases
//! against it.
//!
//! Where the history comes from, and why it can be trusted. Acknowledged writes alone
//! are not the history: writes whose outcome is unknown, lease expiries and revokes
//! also make revisions. A watch from revision 1 opened only at the end is not it
//! either once anything was compacted. So the history is what an all-keys watch from
//! revision 1, running through the whole run, was given (the recorder, `observe`),
//! and compaction is kept behind it: the compactor never compacts past the revisions
//! the recorder already has (`traffic::compactor`), so when it resumes, after any
//! error, its next revision is always still there. It is then checked on its own terms
//! (`History::build`): every revision from 2 up to the last one it covers must be
//! there (netsy, like etcd, makes a revision only for a change, so an all-keys watch
//! with a gap lost one), and every event must follow from the one before it on its
//! key (create revision, version, tombstones). And every other observation of the run
//! must agree with it: each acknowledged write is the whole of the revision its
//! response names (`check_write`), each read, page, count and historical read returns
//! exactly what the history held at its revision (`check_read`), and the other watches,
//! including one per member from the last compaction at the end, deliver the same
//! events (`watches`). A recorder that dropped or invented an event would disagree
//! with those.

use std::collections::{BTreeMap, BTreeSet};

/// etcd's key range: `end` empty is the single key `key`; `end` "\0" is every key from
/// `key` on; otherwise `[key, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub key: String,
    pub end: String,
}

impl KeyRange {
    pub fn key(key: &str) -> KeyRange {
        KeyRange {
            key: key.to_string(),
            end: String::new(),
        }
    }

    /// Every key that starts with `prefix` (ASCII).
    pub fn prefix(prefix: &str) -> KeyRange {
        let mut end = prefix.as_bytes().to_vec();
        let last = end.pop().expect("a non-empty prefix");
        end.push(last + 1);
        KeyRange {
            key: prefix.to_string(),
            end: String::from_utf8(end).expect("an ASCII prefix"),
        }
    }

    /// Every key (etcd's `--from-key ""`, what `with_all_keys` sends).
    pub fn all() -> KeyRange {
        KeyRange {
            key: "\0".into(),
            end: "\0".into(),
        }
    }

    pub fn contains(&self, k: &str) -> bool {
        if self.end.is_empty() {
            k == self.key
        } else if self.end == "\0" {
            k >= self.key.as_str()
        } else {
            k >= self.key.as_str() && k < self.end.as_str()
        }
    }
}

/// A key-value as etcd returns it. Keys and values in this test are ASCII.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub create_rev: i64,
    pub mod_rev: i64,
    pub version: i64,
    pub lease: i64,
}

impl Kv {
    pub fn from_client(kv: &etcd_client::KeyValue) -> Kv {
        Kv {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: String::from_utf8_lossy(kv.value()).into_owned(),
            create_rev: kv.create_revision(),
            mod_rev: kv.mod_revision(),
            version: kv.version(),
            lease: kv.lease(),
        }
    }
}

/// A watch event: a put of `kv`, or a delete (then `kv` is the tombstone: the key and
/// the deletion's revision, everything else zero). `prev` is the key's previous value
/// (`prev_kv`; in the history, always filled in from the event before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub delete: bool,
    pub kv: Kv,
    pub prev: Option<Kv>,
}

impl Event {
    pub fn from_client(e: &etcd_client::Event) -> Option<Event> {
        Some(Event {
            delete: e.event_type() == etcd_client::EventType::Delete,
            kv: Kv::from_client(e.kv()?),
            prev: e.prev_kv().map(Kv::from_client),
        })
    }

    pub fn rev(&self) -> i64 {
        self.kv.mod_rev
    }
}

/// Every compaction the run asked for, whatever its outcome (one that timed out may
/// still have happened).
#[derive(Debug, Clone, Default)]
pub struct Compactions(pub Vec<Compaction>);

#[derive(Debug, Clone)]
pub struct Compaction {
    /// When it was asked for (nanoseconds since the run started).
    pub call: u64,
    pub rev: i64,
    pub acked: bool,
}

impl Compactions {
    /// The highest revision compacted to by a request made before `t` (0: none).
    pub fn max_requested_before(&self, t: u64) -> i64 {
        self.0.iter().filter(|c| c.call < t).map(|c| c.rev).max().unwrap_or(0)
    }

    /// Whether a compaction to exactly `rev` was requested before `t`.
    pub fn requested_before(&self, rev: i64, t: u64) -> bool {
        self.0.iter().any(|c| c.call < t && c.rev == rev)
    }
}

/// The whole history, and each key's states by revision.
#[derive(Debug, Default)]
pub struct History {
    /// Each revision's events, sorted by key, each with its `prev`.
    revisions: BTreeMap<i64, Vec<Event>>,
    /// Each key's states in revision order: (revision, state from then on).
    keys: BTreeMap<String, Vec<(i64, Option<Kv>)>>,
    /// (key, value) of each put, and its revision (values are written once).
    puts: BTreeMap<(String, String), i64>,
    /// Revisions at which a key held by each lease was deleted.
    lease_deletes: BTreeMap<i64, BTreeSet<i64>>,
    /// Puts attached to each lease: (revision, key).
    lease_puts: BTreeMap<i64, Vec<(i64, String)>>,
    /// Every revision up to here is in the history.
    pub covered: i64,
}

impl History {
    /// The history from an all-keys watch's events (in any order) that covers every
    /// revision up to `covered`. `Err` when they cannot be a complete history.
    pub fn build(events: Vec<Event>, covered: i64) -> Result<History, String> {
        let mut by_rev: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
        for e in events {
            by_rev.entry(e.rev()).or_default().push(e);
        }
        let covered = covered.max(by_rev.keys().next_back().copied().unwrap_or(1));
        let mut h = History {
            covered,
            ..Default::default()
        };
        let mut current: BTreeMap<String, Kv> = BTreeMap::new();
        for rev in 2..=covered {
            let Some(mut events) = by_rev.remove(&rev) else {
                return Err(format!(
                    "reference history: revision {rev} has no event (the all-keys watch covering 1..={covered} skipped it)"
                ));
            };
            events.sort_by(|a, b| a.kv.key.cmp(&b.kv.key));
            for pair in events.windows(2) {
                if pair[0].kv.key == pair[1].kv.key {
                    return Err(format!(
                        "reference history: key {:?} has two events at revision {rev}",
                        pair[0].kv.key
                    ));
                }
            }
            for e in &mut events {
                let key = e.kv.key.clone();
                let prev = current.get(&key).cloned();
                if e.delete {
                    let tombstone = Kv {
                        key: key.clone(),
                        value: String::new(),
                        create_rev: 0,
                        mod_rev: rev,
                        version: 0,
                        lease: 0,
                    };
                    if e.kv != tombstone {
                        return Err(format!("reference history: delete event {:?} is not a tombstone", e.kv));
                    }
                    let Some(p) = &prev else {
                        return Err(format!("reference history: revision {rev} deletes {key:?}, which did not exist"));
                    };
                    if p.lease != 0 {
                        h.lease_deletes.entry(p.lease).or_default().insert(rev);
                    }
                    current.remove(&key);
                    h.keys.entry(key).or_default().push((rev, None));
                } else {
                    let create_rev = prev.as_ref().map_or(rev, |p| p.create_rev);
                    let version = prev.as_ref().map_or(1, |p| p.version + 1);
                    if (e.kv.create_rev, e.kv.mod_rev, e.kv.version) != (create_rev, rev, version) {
                        return Err(format!(
                            "reference history: put {:?} at revision {rev} should have create {create_rev}, mod {rev}, version {version} (previous: {prev:?})",
                            e.kv
                        ));
                    }
                    // Test keys get unique values (others, such as kube-apiserver's
                    // compaction key, may repeat one).
                    if h.puts.insert((key.clone(), e.kv.value.clone()), rev).is_some() && key.starts_with("lin/") {
                        return Err(format!("reference history: {key:?} = {:?} was written twice", e.kv.value));
                    }
                    if e.kv.lease != 0 {
                        h.lease_puts.entry(e.kv.lease).or_default().push((rev, key.clone()));
                    }
                    current.insert(key.clone(), e.kv.clone());
                    h.keys.entry(key).or_default().push((rev, Some(e.kv.clone())));
                }
                e.prev = prev;
            }
            h.revisions.insert(rev, events);
        }
        if let Some((rev, _)) = by_rev.into_iter().next() {
            return Err(format!("reference history: an event at revision {rev}, below 2"));
        }
        Ok(h)
    }

    /// The key's value at `rev`.
    pub fn state(&self, key: &str, rev: i64) -> Option<&Kv> {
        let states = self.keys.get(key)?;
        let i = states.partition_point(|(r, _)| *r <= rev);
        if i == 0 {
            None
        } else {
            states[i - 1].1.as_ref()
        }
    }

    /// What `range` held at `rev`, by key.
    pub fn range(&self, range: &KeyRange, rev: i64) -> Vec<&Kv> {
        self.keys
            .range(range.key.clone()..)
            .take_while(|(k, _)| {
                if range.end.is_empty() {
                    **k == range.key
                } else {
                    range.end == "\0" || k.as_str() < range.end.as_str()
                }
            })
            .filter(|(k, _)| range.contains(k))
            .filter_map(|(k, _)| self.state(k, rev))
            .collect()
    }

    /// The events of revision `rev`.
    pub fn events(&self, rev: i64) -> &[Event] {
        self.revisions.get(&rev).map_or(&[], Vec::as_slice)
    }

    /// The revisions in `[from, to]` with events in `range`, and those events.
    pub fn events_in(&self, range: &KeyRange, from: i64, to: i64) -> Vec<(i64, Vec<&Event>)> {
        if from > to {
            return Vec::new();
        }
        self.revisions
            .range(from..=to)
            .filter_map(|(rev, events)| {
                let inside: Vec<&Event> = events.iter().filter(|e| range.contains(&e.kv.key)).collect();
                (!inside.is_empty()).then_some((*rev, inside))
            })
            .collect()
    }

    /// The revision that wrote `value` to `key`, if any did.
    pub fn put_revision(&self, key: &str, value: &str) -> Option<i64> {
        self.puts.get(&(key.to_string(), value.to_string())).copied()
    }
}

/// A read as a client saw it: `range` at `at_rev` (0: the current revision, which the
/// header names), with etcd's `limit`, `keys_only` and `count_only`.
#[derive(Debug, Clone)]
pub struct Read {
    pub call: u64,
    pub ret: u64,
    pub header_rev: i64,
    pub at_rev: i64,
    pub range: KeyRange,
    pub limit: i64,
    pub keys_only: bool,
    pub count_only: bool,
    pub kvs: Vec<Kv>,
    pub count: i64,
    pub more: bool,
}

impl Read {
    pub fn rev(&self) -> i64 {
        if self.at_rev > 0 {
            self.at_rev
        } else {
            self.header_rev
        }
    }
}

/// A read must return exactly what the history held at its revision.
pub fn check_read(h: &History, r: &Read) -> Result<(), String> {
    let rev = r.rev();
    if rev > h.covered {
        return Err(format!("read at revision {rev} beyond the history (covers {}): {r:?}", h.covered));
    }
    if r.at_rev > r.header_rev {
        return Err(format!(
            "a read at revision {} answered with header revision {}: {r:?}",
            r.at_rev, r.header_rev
        ));
    }
    let all = h.range(&r.range, rev);
    let mut expected: Vec<Kv> = if r.count_only {
        Vec::new()
    } else {
        all.iter().map(|kv| (*kv).clone()).collect()
    };
    if r.limit > 0 {
        expected.truncate(r.limit as usize);
    }
    if r.keys_only {
        for kv in &mut expected {
            kv.value.clear();
        }
    }
    let more = !r.count_only && r.limit > 0 && all.len() > r.limit as usize;
    if r.kvs != expected || r.count != all.len() as i64 || r.more != more {
        return Err(format!(
            "read of {:?} at revision {rev} returned {:?} (count {}, more {}), but the history holds {:?} (count {}, more {more})",
            r.range,
            r.kvs,
            r.count,
            r.more,
            expected,
            all.len()
        ));
    }
    Ok(())
}

/// A historical read answered `ErrCompacted`: some compaction past its revision must
/// have been asked for by then.
pub fn check_compacted_read(compactions: &Compactions, at_rev: i64, ret: u64) -> Result<(), String> {
    let max = compactions.max_requested_before(ret);
    if max > at_rev {
        Ok(())
    } else {
        Err(format!(
            "a read at revision {at_rev} was refused as compacted, but the highest compaction asked for by then was {max}"
        ))
    }
}

/// What an acknowledged write did, as its request and response say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Put {
        key: String,
        value: String,
        lease: i64,
    },
    /// A DeleteRange (or a single-key delete) that reported `deleted` keys deleted.
    Delete {
        range: KeyRange,
        deleted: i64,
    },
}

#[derive(Debug, Clone)]
pub struct Write {
    pub call: u64,
    pub ret: u64,
    /// The response header's revision.
    pub rev: i64,
    pub effects: Vec<Effect>,
}

impl Write {
    /// Whether it changed anything (a delete of nothing does not).
    pub fn changed(&self) -> bool {
        self.effects.iter().any(|e| !matches!(e, Effect::Delete { deleted: 0, .. }))
    }
}

/// An acknowledged write is the whole of the revision its response names: each put is
/// there with its value and lease, each delete deleted what it reported, and nothing
/// else happened at that revision. A write that changed nothing made no revision, and
/// whatever it deleted nothing of was empty at its header revision.
pub fn check_write(h: &History, w: &Write) -> Result<(), String> {
    if w.rev > h.covered {
        return Err(format!(
            "write at revision {} beyond the history (covers {}): {w:?}",
            w.rev, h.covered
        ));
    }
    if !w.changed() {
        for e in &w.effects {
            if let Effect::Delete { range, .. } = e {
                let there = h.range(range, w.rev);
                if !there.is_empty() {
                    return Err(format!(
                        "a delete of {range:?} deleted nothing at revision {}, which held {there:?}",
                        w.rev
                    ));
                }
            }
        }
        return Ok(());
    }
    let events = h.events(w.rev);
    for e in &w.effects {
        match e {
            Effect::Put { key, value, lease } => {
                let found = events
                    .iter()
                    .any(|ev| !ev.delete && &ev.kv.key == key && &ev.kv.value == value && ev.kv.lease == *lease);
                if !found {
                    return Err(format!(
                        "acknowledged put {key:?} = {value:?} (lease {lease}) is not at its revision {}, which holds {events:?}",
                        w.rev
                    ));
                }
            }
            Effect::Delete { range, deleted } => {
                let n = events.iter().filter(|ev| ev.delete && range.contains(&ev.kv.key)).count() as i64;
                if n != *deleted {
                    return Err(format!(
                        "acknowledged delete of {range:?} reported {deleted} deleted, but revision {} deletes {n}: {events:?}",
                        w.rev
                    ));
                }
            }
        }
    }
    for ev in events {
        let explained = w.effects.iter().any(|e| match e {
            Effect::Put { key, .. } => !ev.delete && &ev.kv.key == key,
            Effect::Delete { range, .. } => ev.delete && range.contains(&ev.kv.key),
        });
        if !explained {
            return Err(format!(
                "revision {} of an acknowledged write {:?} also holds {ev:?}, which it did not do",
                w.rev, w.effects
            ));
        }
    }
    Ok(())
}

/// An operation's place in time and in the revision order: a read's revision is the one
/// it read at, a write's the one it made.
#[derive(Debug, Clone)]
pub struct Timed {
    pub call: u64,
    pub ret: u64,
    pub rev: i64,
    pub write: bool,
}

/// Revisions respect real time: an operation invoked after another returned reads at
/// that one's revision or later, and writes strictly later.
pub fn check_real_time(ops: &[Timed]) -> Result<(), String> {
    let mut by_ret: Vec<&Timed> = ops.iter().collect();
    by_ret.sort_by_key(|o| o.ret);
    let mut by_call: Vec<&Timed> = ops.iter().collect();
    by_call.sort_by_key(|o| o.call);
    let mut done = 0;
    let mut latest: Option<&Timed> = None;
    for op in by_call {
        while done < by_ret.len() && by_ret[done].ret < op.call {
            if latest.is_none_or(|l| by_ret[done].rev > l.rev) {
                latest = Some(by_ret[done]);
            }
            done += 1;
        }
        if let Some(before) = latest {
            let ok = if op.write { op.rev > before.rev } else { op.rev >= before.rev };
            if !ok {
                return Err(format!(
                    "{op:?} went back in time: it was invoked after {before:?} had returned, yet its revision is not later"
                ));
            }
        }
    }
    Ok(())
}

/// A paginated list: pages of `range` at one revision, the first at the current one.
#[derive(Debug, Clone)]
pub struct List {
    pub range: KeyRange,
    /// The revision of the first page, at which every later page was asked for.
    pub rev: i64,
    /// The revision each page was read at.
    pub page_revs: Vec<i64>,
    pub kvs: Vec<Kv>,
}

/// Every page at the same revision, and together exactly what the history held then.
pub fn check_list(h: &History, l: &List) -> Result<(), String> {
    if let Some(r) = l.page_revs.iter().find(|r| **r != l.rev) {
        return Err(format!("a list at revision {} has a page at revision {r}: {l:?}", l.rev));
    }
    let expected: Vec<Kv> = h.range(&l.range, l.rev).into_iter().cloned().collect();
    if l.kvs != expected {
        return Err(format!(
            "a list of {:?} in {} pages at revision {} returned {:?}, but the history holds {expected:?}",
            l.range,
            l.page_revs.len(),
            l.rev,
            l.kvs
        ));
    }
    Ok(())
}

/// A lease as its client saw it.
#[derive(Debug, Clone)]
pub struct Lease {
    pub id: i64,
    /// The TTL the grant answered, in seconds.
    pub ttl: i64,
    /// When the grant, or the last keep-alive answered with a positive TTL, was sent.
    pub renewed: u64,
    /// When a revoke was sent, if one was.
    pub revoked: Option<u64>,
}

/// A lease's keys all go in one revision, nothing is attached to it after, and unless
/// it was revoked, not before its TTL has passed since its last renewal. `seen(rev)` is
/// the earliest time any watch delivered revision `rev` (later than it happened).
/// Returns whether the lease's end was in the history.
pub fn check_lease(h: &History, l: &Lease, seen: &dyn Fn(i64) -> Option<u64>) -> Result<bool, String> {
    let Some(deletes) = h.lease_deletes.get(&l.id) else {
        return Ok(false);
    };
    if deletes.len() > 1 {
        return Err(format!("the keys of lease {} were deleted in several revisions: {deletes:?}", l.id));
    }
    let end = *deletes.iter().next().expect("one revision");
    for (rev, key) in h.lease_puts.get(&l.id).into_iter().flatten() {
        if *rev > end {
            return Err(format!(
                "{key:?} was put with lease {} at revision {rev}, after the lease ended at {end}",
                l.id
            ));
        }
        if h.state(key, end).is_some_and(|kv| kv.lease == l.id) {
            return Err(format!(
                "{key:?} still holds lease {} after the lease's other keys were deleted at {end}",
                l.id
            ));
        }
    }
    let at = seen(end);
    let revoked_first = match (l.revoked, at) {
        (Some(r), Some(at)) => r < at,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if let (false, Some(at)) = (revoked_first, at) {
        let due = l.renewed + l.ttl as u64 * 1_000_000_000;
        if at < due {
            return Err(format!(
                "lease {} (TTL {} s, last renewed at {:.3} s) expired at revision {end}, delivered at {:.3} s: {:.3} s early",
                l.id,
                l.ttl,
                l.renewed as f64 / 1e9,
                at as f64 / 1e9,
                (due - at) as f64 / 1e9
            ));
        }
    }
    Ok(true)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    fn kv(key: &str, value: &str, create: i64, rev: i64, version: i64, lease: i64) -> Kv {
        Kv {
            key: key.into(),
            value: value.into(),
            create_rev: create,
            mod_rev: rev,
            version,
            lease,
        }
    }
    pub fn put(key: &str, value: &str, create: i64, rev: i64, version: i64) -> Event {
        Event {
            delete: false,
            kv: kv(key, value, create, rev, version, 0),
            prev: None,
        }
    }
    pub fn del(key: &str, rev: i64) -> Event {
        Event {
            delete: true,
            kv: kv(key, "", 0, rev, 0, 0),
            prev: None,
        }
    }

    /// a=1 (2), b=1 (3), a=2 (4), del b (5), c=1 with lease 7 (6), c=2 lease 7 and d lease 7 (7), del c,d (8).
    pub fn sample() -> History {
        let mut c1 = put("c", "1", 6, 6, 1);
        c1.kv.lease = 7;
        let mut c2 = put("c", "2", 6, 7, 2);
        c2.kv.lease = 7;
        let mut d1 = put("d", "1", 7, 7, 1);
        d1.kv.lease = 7;
        History::build(
            vec![
                put("a", "1", 2, 2, 1),
                put("b", "1", 3, 3, 1),
                put("a", "2", 2, 4, 2),
                del("b", 5),
                c1,
                c2,
                d1,
                del("c", 8),
                del("d", 8),
            ],
            8,
        )
        .expect("a consistent history")
    }

    #[test]
    fn history_answers_states_ranges_and_prev() {
        let h = sample();
        assert_eq!(h.state("a", 3).unwrap().value, "1");
        assert_eq!(h.state("a", 4).unwrap().value, "2");
        assert!(h.state("b", 5).is_none());
        assert_eq!(h.range(&KeyRange::prefix("a"), 9).len(), 1);
        assert_eq!(h.range(&KeyRange::all(), 4).len(), 2);
        assert_eq!(h.events(4)[0].prev.as_ref().unwrap().value, "1");
        assert_eq!(h.put_revision("a", "2"), Some(4));
        assert_eq!(h.events_in(&KeyRange::key("a"), 2, 8).len(), 2);
    }

    #[test]
    fn an_incomplete_or_inconsistent_history_is_refused() {
        let gap = History::build(vec![put("a", "1", 2, 2, 1), put("a", "2", 2, 4, 2)], 4);
        assert!(gap.unwrap_err().contains("revision 3 has no event"));
        let version = History::build(vec![put("a", "1", 2, 2, 1), put("a", "2", 2, 3, 3)], 3);
        assert!(version.unwrap_err().contains("version 2"));
        let phantom = History::build(vec![del("a", 2)], 2);
        assert!(phantom.unwrap_err().contains("did not exist"));
    }

    fn read(range: KeyRange, rev: i64, kvs: Vec<Kv>, count: i64) -> Read {
        Read {
            call: 0,
            ret: 1,
            header_rev: rev,
            at_rev: 0,
            range,
            limit: 0,
            keys_only: false,
            count_only: false,
            kvs,
            count,
            more: false,
        }
    }

    #[test]
    fn reads_must_match_the_history_at_their_revision() {
        let h = sample();
        check_read(&h, &read(KeyRange::key("a"), 3, vec![kv("a", "1", 2, 2, 1, 0)], 1)).unwrap();
        // Stale: at revision 4, a is "2".
        assert!(check_read(&h, &read(KeyRange::key("a"), 4, vec![kv("a", "1", 2, 2, 1, 0)], 1)).is_err());
        // A page: limit 1 of two keys, keys only.
        let mut page = read(KeyRange::all(), 3, vec![kv("a", "", 2, 2, 1, 0)], 2);
        page.limit = 1;
        page.keys_only = true;
        page.more = true;
        check_read(&h, &page).unwrap();
        page.more = false;
        assert!(check_read(&h, &page).is_err());
        // Count only.
        let mut count = read(KeyRange::all(), 3, vec![], 2);
        count.count_only = true;
        check_read(&h, &count).unwrap();
        count.count = 1;
        assert!(check_read(&h, &count).is_err());
        // Historical: at revision 2 while the header says 8.
        let mut old = read(KeyRange::key("a"), 8, vec![kv("a", "1", 2, 2, 1, 0)], 1);
        old.at_rev = 2;
        check_read(&h, &old).unwrap();
    }

    #[test]
    fn compacted_answers_need_a_compaction_past_the_revision() {
        let c = Compactions(vec![Compaction {
            call: 10,
            rev: 5,
            acked: true,
        }]);
        check_compacted_read(&c, 4, 11).unwrap();
        assert!(check_compacted_read(&c, 5, 11).is_err(), "revision 5 itself is kept");
        assert!(check_compacted_read(&c, 4, 9).is_err(), "not asked for yet");
    }

    #[test]
    fn acknowledged_writes_must_be_their_whole_revision() {
        let h = sample();
        let w = |rev, effects| Write {
            call: 0,
            ret: 1,
            rev,
            effects,
        };
        let put_a2 = Effect::Put {
            key: "a".into(),
            value: "2".into(),
            lease: 0,
        };
        check_write(&h, &w(4, vec![put_a2.clone()])).unwrap();
        // Lost: not at the revision it was acknowledged with.
        assert!(check_write(&h, &w(3, vec![put_a2])).is_err());
        let del_cd = Effect::Delete {
            range: KeyRange::prefix("c"),
            deleted: 1,
        };
        // Revision 8 also deletes d, which a delete of c alone did not do.
        assert!(check_write(&h, &w(8, vec![del_cd])).is_err());
        let del_all = Effect::Delete {
            range: KeyRange {
                key: "c".into(),
                end: "e".into(),
            },
            deleted: 2,
        };
        check_write(&h, &w(8, vec![del_all])).unwrap();
        // A delete of nothing, while b existed.
        let nothing = Effect::Delete {
            range: KeyRange::key("b"),
            deleted: 0,
        };
        assert!(check_write(&h, &w(3, vec![nothing.clone()])).is_err());
        check_write(&h, &w(5, vec![nothing])).unwrap();
    }

    #[test]
    fn revisions_must_respect_real_time() {
        let t = |call, ret, rev, write| Timed { call, ret, rev, write };
        check_real_time(&[t(0, 10, 5, true), t(11, 12, 5, false), t(13, 14, 6, true)]).unwrap();
        // A read after an acknowledged write at 5 reads at 4: stale.
        assert!(check_real_time(&[t(0, 10, 5, true), t(11, 12, 4, false)]).is_err());
        // A write after a read at 5 cannot be at 5.
        assert!(check_real_time(&[t(0, 10, 5, false), t(11, 12, 5, true)]).is_err());
        // Overlapping operations may go either way.
        check_real_time(&[t(0, 10, 5, true), t(5, 12, 4, false)]).unwrap();
    }

    #[test]
    fn lists_must_be_one_revision_and_whole() {
        let h = sample();
        let mut l = List {
            range: KeyRange::all(),
            rev: 3,
            page_revs: vec![3, 3],
            kvs: vec![kv("a", "1", 2, 2, 1, 0), kv("b", "1", 3, 3, 1, 0)],
        };
        check_list(&h, &l).unwrap();
        l.page_revs = vec![3, 4];
        assert!(check_list(&h, &l).is_err());
        l.page_revs = vec![3, 3];
        l.kvs.pop();
        assert!(check_list(&h, &l).is_err());
    }

    #[test]
    fn leases_end_whole_and_not_early() {
        let h = sample();
        let lease = Lease {
            id: 7,
            ttl: 2,
            renewed: 1_000_000_000,
            revoked: None,
        };
        // Deleted at 8, delivered 3 s after the renewal: fine.
        assert!(check_lease(&h, &lease, &|_| Some(4_000_000_000)).unwrap());
        // Delivered 1.5 s after the renewal with a 2 s TTL: expired early.
        assert!(check_lease(&h, &lease, &|_| Some(2_500_000_000)).unwrap_err().contains("early"));
        // Unless revoked.
        let revoked = Lease {
            revoked: Some(2_000_000_000),
            ..lease.clone()
        };
        assert!(check_lease(&h, &revoked, &|_| Some(2_500_000_000)).unwrap());
        // Keys of one lease deleted in two revisions.
        let mut c = put("c", "1", 2, 2, 1);
        c.kv.lease = 7;
        let mut d = put("d", "1", 3, 3, 1);
        d.kv.lease = 7;
        let split = History::build(vec![c, d, del("c", 4), del("d", 5)], 5).unwrap();
        assert!(check_lease(&split, &lease, &|_| Some(u64::MAX))
            .unwrap_err()
            .contains("several revisions"));
    }
}
