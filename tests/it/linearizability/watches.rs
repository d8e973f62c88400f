//! Validation of what each watch delivered against the reference history (`history`),
//! by the guarantees etcd's robustness suite states for watches:
//!
//! - unique: no event (revision, key) is delivered twice;
//! - atomic: all the events of one revision in the watched range arrive in one response;
//! - ordered: revisions strictly increase from one response to the next;
//! - resumable: a watch started at R delivers nothing before R, and first the first
//!   revision at or after R that touched its range;
//! - reliable: no gap: every revision in range from the start up to the last one
//!   delivered (or confirmed by a progress notification) is delivered;
//! - content: every event (type, key, value, create/mod revision, version, lease) is the
//!   history's event, and only keys in range;
//! - prev_kv: equal to the key's value before the event (a watch without `prev_kv` gets
//!   none; one whose previous value was compacted away may get none);
//! - progress: a progress notification at P comes after every event in range up to P,
//!   and no event at or before P comes after it;
//! - compaction: a watch is canceled as compacted only when the revision it needed next
//!   is below the compaction revision it is told, and that compaction was asked for.
//!
//! A watch is a sequence of sessions (one created watcher each: a restart opens the
//! next); each session is checked on its own from the start revision it asked for.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::history::{Compactions, Event, History, KeyRange};

/// What a watch watches.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub range: KeyRange,
    pub prev_kv: bool,
}

/// One response, with when it arrived (nanoseconds since the run started) and its
/// header revision.
#[derive(Debug, Clone)]
pub enum Response {
    Created {
        at: u64,
        rev: i64,
    },
    Events {
        at: u64,
        rev: i64,
        events: Vec<Event>,
    },
    /// No events: a progress notification (requested or periodic).
    Progress {
        at: u64,
        rev: i64,
    },
    /// Canceled because the revision it needed was compacted.
    Compacted {
        at: u64,
        compact_rev: i64,
    },
    Canceled {
        at: u64,
        reason: String,
    },
}

/// One created watcher: from `start` (a revision, never 0) on member `member`.
#[derive(Debug, Clone)]
pub struct Session {
    pub member: usize,
    pub start: i64,
    pub responses: Vec<Response>,
    /// Why it ended.
    pub end: String,
}

#[derive(Debug, Clone)]
pub struct WatchLog {
    pub spec: Spec,
    pub sessions: Vec<Session>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    Unique,
    Atomic,
    Ordered,
    Resumable,
    Reliable,
    Content,
    PrevKv,
    Progress,
    Compaction,
}

#[derive(Debug)]
pub struct WatchViolation {
    pub guarantee: Guarantee,
    pub watch: String,
    pub session: usize,
    pub detail: String,
    pub summary: String,
}

impl std::fmt::Display for WatchViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "watch {:?} session {} broke {:?}: {}\n{}",
            self.watch, self.session, self.guarantee, self.detail, self.summary
        )
    }
}

/// What one watch's validation counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct Validated {
    pub events: usize,
    pub progress: usize,
    pub compactions_reported: usize,
}

/// Checks every session of `log`.
pub fn validate(h: &History, compactions: &Compactions, log: &WatchLog) -> Result<Validated, WatchViolation> {
    let mut total = Validated::default();
    for (i, s) in log.sessions.iter().enumerate() {
        match validate_session(h, compactions, &log.spec, s) {
            Ok(v) => {
                total.events += v.events;
                total.progress += v.progress;
                total.compactions_reported += v.compactions_reported;
            }
            Err((guarantee, detail)) => {
                return Err(WatchViolation {
                    guarantee,
                    watch: log.spec.name.clone(),
                    session: i,
                    detail,
                    summary: summary(s),
                })
            }
        }
    }
    Ok(total)
}

/// A session, one line per response.
fn summary(s: &Session) -> String {
    let mut out = format!("session from revision {} on netsy-{} (ended: {}):\n", s.start, s.member, s.end);
    for r in &s.responses {
        let line = match r {
            Response::Created { at, rev } => format!("  {:.3} created, header {rev}", *at as f64 / 1e9),
            Response::Events { at, rev, events } => {
                let evs: Vec<String> = events
                    .iter()
                    .map(|e| format!("{}{}@{}", if e.delete { "-" } else { "+" }, e.kv.key, e.rev()))
                    .collect();
                format!("  {:.3} header {rev}: {}", *at as f64 / 1e9, evs.join(" "))
            }
            Response::Progress { at, rev } => format!("  {:.3} progress {rev}", *at as f64 / 1e9),
            Response::Compacted { at, compact_rev } => format!("  {:.3} compacted at {compact_rev}", *at as f64 / 1e9),
            Response::Canceled { at, reason } => format!("  {:.3} canceled: {reason}", *at as f64 / 1e9),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

type Failure = (Guarantee, String);

fn validate_session(h: &History, compactions: &Compactions, spec: &Spec, s: &Session) -> Result<Validated, Failure> {
    let mut v = Validated::default();
    // (response index, arrival, event), for events the history covers.
    let mut delivered: Vec<(usize, u64, &Event)> = Vec::new();
    for (i, r) in s.responses.iter().enumerate() {
        if let Response::Events { at, events, .. } = r {
            delivered.extend(events.iter().filter(|e| e.rev() <= h.covered).map(|e| (i, *at, e)));
        }
    }
    v.events = delivered.len();

    // Unique.
    let mut seen = HashSet::new();
    for (_, _, e) in &delivered {
        if !seen.insert((e.rev(), e.kv.key.as_str())) {
            return Err((Guarantee::Unique, format!("{:?} at revision {} delivered twice", e.kv.key, e.rev())));
        }
    }

    // Atomic: one response per revision, holding all of the revision's events in range.
    let mut response_of: BTreeMap<i64, usize> = BTreeMap::new();
    let mut keys_of: BTreeMap<i64, BTreeSet<&str>> = BTreeMap::new();
    for (i, _, e) in &delivered {
        if let Some(j) = response_of.insert(e.rev(), *i) {
            if j != *i {
                return Err((
                    Guarantee::Atomic,
                    format!("revision {} split across responses {j} and {i}", e.rev()),
                ));
            }
        }
        keys_of.entry(e.rev()).or_default().insert(&e.kv.key);
    }
    for (rev, keys) in &keys_of {
        let want: BTreeSet<&str> = h
            .events(*rev)
            .iter()
            .filter(|e| spec.range.contains(&e.kv.key))
            .map(|e| e.kv.key.as_str())
            .collect();
        if keys.is_subset(&want) && keys != &want {
            return Err((
                Guarantee::Atomic,
                format!("revision {rev} delivered with keys {keys:?}, only part of {want:?}"),
            ));
        }
    }

    // Ordered.
    let mut last = 0;
    for (_, _, e) in &delivered {
        if e.rev() < last {
            return Err((Guarantee::Ordered, format!("revision {} delivered after revision {last}", e.rev())));
        }
        last = e.rev();
    }

    // Resumable: nothing before the start, and first the first revision in range.
    let progress_max = s
        .responses
        .iter()
        .filter_map(|r| match r {
            Response::Progress { rev, .. } => Some(*rev),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let upto = last.max(progress_max).min(h.covered);
    let expected = h.events_in(&spec.range, s.start, upto);
    if let Some((_, _, first)) = delivered.first() {
        if first.rev() < s.start {
            return Err((
                Guarantee::Resumable,
                format!("a watch from revision {} delivered revision {} first", s.start, first.rev()),
            ));
        }
        if let Some((want, _)) = expected.first() {
            if first.rev() > *want {
                return Err((
                    Guarantee::Resumable,
                    format!(
                        "a watch from revision {} delivered revision {} first, but revision {want} is the first in range",
                        s.start,
                        first.rev()
                    ),
                ));
            }
        }
    }

    // Reliable: every revision in range up to the last delivered or confirmed one.
    for (rev, _) in &expected {
        if !response_of.contains_key(rev) {
            return Err((
                Guarantee::Reliable,
                format!("revision {rev} (in range) was never delivered; the watch got to {upto}"),
            ));
        }
    }

    // Content and prev_kv.
    for (_, at, e) in &delivered {
        let Some(want) = h.events(e.rev()).iter().find(|w| w.kv.key == e.kv.key) else {
            return Err((Guarantee::Content, format!("{e:?} is not in the history")));
        };
        if !spec.range.contains(&e.kv.key) {
            return Err((Guarantee::Content, format!("{e:?} is outside the watched range {:?}", spec.range)));
        }
        if (e.delete, &e.kv) != (want.delete, &want.kv) {
            return Err((Guarantee::Content, format!("delivered {e:?}, the history has {want:?}")));
        }
        let prev_ok = if !spec.prev_kv {
            e.prev.is_none()
        } else {
            e.prev == want.prev || (e.prev.is_none() && e.rev() <= compactions.max_requested_before(*at))
        };
        if !prev_ok {
            return Err((
                Guarantee::PrevKv,
                format!(
                    "revision {} of {:?}: prev_kv {:?}, the history's previous value is {:?}",
                    e.rev(),
                    e.kv.key,
                    e.prev,
                    want.prev
                ),
            ));
        }
    }

    // Progress notifications and compaction reports, in arrival order.
    let mut got: BTreeSet<i64> = BTreeSet::new();
    let mut confirmed = 0;
    let mut next = s.start;
    for r in &s.responses {
        match r {
            Response::Events { events, .. } => {
                for e in events.iter().filter(|e| e.rev() <= h.covered) {
                    if e.rev() <= confirmed {
                        return Err((
                            Guarantee::Progress,
                            format!("revision {} delivered after a progress notification at {confirmed}", e.rev()),
                        ));
                    }
                    got.insert(e.rev());
                    next = next.max(e.rev() + 1);
                }
            }
            Response::Progress { rev, .. } => {
                v.progress += 1;
                let p = (*rev).min(h.covered);
                if let Some((missing, _)) = h.events_in(&spec.range, s.start, p).into_iter().find(|(r, _)| !got.contains(r)) {
                    return Err((
                        Guarantee::Progress,
                        format!("a progress notification at {rev} came before revision {missing} (in range) was delivered"),
                    ));
                }
                confirmed = confirmed.max(*rev);
                next = next.max(rev + 1);
            }
            Response::Compacted { at, compact_rev } => {
                v.compactions_reported += 1;
                if *compact_rev <= next {
                    return Err((
                        Guarantee::Compaction,
                        format!("canceled as compacted at {compact_rev}, but the watch needed revision {next} next, which is kept"),
                    ));
                }
                if !compactions.requested_before(*compact_rev, *at) {
                    return Err((
                        Guarantee::Compaction,
                        format!("canceled as compacted at {compact_rev}, a compaction nobody asked for by then"),
                    ));
                }
            }
            Response::Created { .. } | Response::Canceled { .. } => {}
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::super::history::tests::sample;
    use super::super::history::Compaction;
    use super::*;

    fn spec(prev_kv: bool) -> Spec {
        Spec {
            name: "w".into(),
            range: KeyRange::all(),
            prev_kv,
        }
    }

    /// The history's events of `rev`, as a watch with `prev_kv` delivers them.
    fn evs(h: &History, rev: i64, prev_kv: bool) -> Vec<Event> {
        h.events(rev)
            .iter()
            .map(|e| {
                let mut e = e.clone();
                if !prev_kv {
                    e.prev = None;
                }
                e
            })
            .collect()
    }

    fn events(h: &History, revs: &[i64]) -> Vec<Response> {
        revs.iter()
            .map(|r| Response::Events {
                at: *r as u64,
                rev: *r,
                events: evs(h, *r, true),
            })
            .collect()
    }

    fn session(start: i64, responses: Vec<Response>) -> Session {
        Session {
            member: 0,
            start,
            responses,
            end: "test".into(),
        }
    }

    fn check(h: &History, c: &Compactions, s: Session) -> Result<Validated, Guarantee> {
        let log = WatchLog {
            spec: spec(true),
            sessions: vec![s],
        };
        validate(h, c, &log).map_err(|v| v.guarantee)
    }

    #[test]
    fn a_faithful_watch_passes() {
        let h = sample();
        let mut responses = vec![Response::Created { at: 0, rev: 1 }];
        responses.extend(events(&h, &[2, 3, 4, 5, 6, 7, 8]));
        responses.push(Response::Progress { at: 9, rev: 8 });
        let v = check(&h, &Compactions::default(), session(2, responses)).unwrap();
        assert_eq!((v.events, v.progress), (9, 1));
        // Resumed at 4: starts with 4.
        check(&h, &Compactions::default(), session(4, events(&h, &[4, 5, 6]))).unwrap();
        // Without prev_kv asked for, none must come.
        let plain = WatchLog {
            spec: spec(false),
            sessions: vec![session(
                2,
                vec![Response::Events {
                    at: 1,
                    rev: 4,
                    events: evs(&h, 2, false),
                }],
            )],
        };
        validate(&h, &Compactions::default(), &plain).unwrap();
    }

    #[test]
    fn an_event_delivered_twice_breaks_unique() {
        let h = sample();
        assert_eq!(
            check(&h, &Compactions::default(), session(2, events(&h, &[2, 3, 3, 4]))).unwrap_err(),
            Guarantee::Unique
        );
    }

    #[test]
    fn a_revision_split_across_responses_breaks_atomic() {
        let h = sample();
        let mut responses = events(&h, &[6]);
        let both = evs(&h, 7, true);
        responses.push(Response::Events {
            at: 7,
            rev: 7,
            events: vec![both[0].clone()],
        });
        responses.push(Response::Events {
            at: 7,
            rev: 7,
            events: vec![both[1].clone()],
        });
        assert_eq!(
            check(&h, &Compactions::default(), session(6, responses)).unwrap_err(),
            Guarantee::Atomic
        );
        // Or one response with part of it.
        let mut partial = events(&h, &[6]);
        partial.push(Response::Events {
            at: 7,
            rev: 7,
            events: vec![both[1].clone()],
        });
        assert_eq!(
            check(&h, &Compactions::default(), session(6, partial)).unwrap_err(),
            Guarantee::Atomic
        );
    }

    #[test]
    fn revisions_going_backwards_break_ordered() {
        let h = sample();
        assert_eq!(
            check(&h, &Compactions::default(), session(2, events(&h, &[2, 4, 3]))).unwrap_err(),
            Guarantee::Ordered
        );
    }

    #[test]
    fn a_restart_that_starts_elsewhere_breaks_resumable() {
        let h = sample();
        // From 4, revision 3 first.
        assert_eq!(
            check(&h, &Compactions::default(), session(4, events(&h, &[3, 4]))).unwrap_err(),
            Guarantee::Resumable
        );
        // From 4, revision 5 first (4 skipped).
        assert_eq!(
            check(&h, &Compactions::default(), session(4, events(&h, &[5, 6]))).unwrap_err(),
            Guarantee::Resumable
        );
    }

    #[test]
    fn a_gap_breaks_reliable() {
        let h = sample();
        assert_eq!(
            check(&h, &Compactions::default(), session(2, events(&h, &[2, 3, 5, 6]))).unwrap_err(),
            Guarantee::Reliable
        );
        // A gap before a progress notification's revision too.
        let mut responses = events(&h, &[2, 3]);
        responses.push(Response::Progress { at: 9, rev: 5 });
        let r = check(&h, &Compactions::default(), session(2, responses)).unwrap_err();
        assert_eq!(r, Guarantee::Reliable);
    }

    #[test]
    fn a_wrong_event_breaks_content() {
        let h = sample();
        let mut responses = events(&h, &[2, 3, 4]);
        if let Response::Events { events, .. } = &mut responses[2] {
            events[0].kv.value = "x".into();
        }
        assert_eq!(
            check(&h, &Compactions::default(), session(2, responses)).unwrap_err(),
            Guarantee::Content
        );
        // Or the lease, or the version.
        let mut responses = events(&h, &[6]);
        if let Response::Events { events, .. } = &mut responses[0] {
            events[0].kv.lease = 0;
        }
        assert_eq!(
            check(&h, &Compactions::default(), session(6, responses)).unwrap_err(),
            Guarantee::Content
        );
        // An event outside the watched range.
        let narrow = WatchLog {
            spec: Spec {
                name: "w".into(),
                range: KeyRange::key("a"),
                prev_kv: true,
            },
            sessions: vec![session(2, events(&h, &[2, 3]))],
        };
        assert_eq!(
            validate(&h, &Compactions::default(), &narrow).unwrap_err().guarantee,
            Guarantee::Content
        );
    }

    #[test]
    fn a_wrong_previous_value_breaks_prev_kv() {
        let h = sample();
        let mut responses = events(&h, &[2, 3, 4]);
        if let Response::Events { events, .. } = &mut responses[2] {
            events[0].prev.as_mut().unwrap().value = "0".into();
        }
        assert_eq!(
            check(&h, &Compactions::default(), session(2, responses.clone())).unwrap_err(),
            Guarantee::PrevKv
        );
        // A missing one too, unless that revision may have been compacted.
        if let Response::Events { events, .. } = &mut responses[2] {
            events[0].prev = None;
        }
        assert_eq!(
            check(&h, &Compactions::default(), session(2, responses.clone())).unwrap_err(),
            Guarantee::PrevKv
        );
        let compacted = Compactions(vec![Compaction {
            call: 0,
            rev: 4,
            acked: true,
        }]);
        check(&h, &compacted, session(2, responses)).unwrap();
    }

    #[test]
    fn a_progress_notification_ahead_of_events_is_caught() {
        let h = sample();
        let mut responses = events(&h, &[2, 3]);
        responses.push(Response::Progress { at: 4, rev: 5 });
        responses.extend(events(&h, &[4, 5]));
        assert_eq!(
            check(&h, &Compactions::default(), session(2, responses)).unwrap_err(),
            Guarantee::Progress
        );
    }

    #[test]
    fn an_untruthful_compaction_is_caught() {
        let h = sample();
        let asked = Compactions(vec![Compaction {
            call: 0,
            rev: 5,
            acked: true,
        }]);
        // Needed 2 next, compacted at 5: truthful.
        let mut ok = events(&h, &[]);
        ok.push(Response::Compacted { at: 1, compact_rev: 5 });
        assert_eq!(check(&h, &asked, session(2, ok)).unwrap().compactions_reported, 1);
        // Needed 5 next (got 2, 3, 4), told "compacted at 5": 5 is kept.
        let mut kept = events(&h, &[2, 3, 4]);
        kept.push(Response::Compacted { at: 9, compact_rev: 5 });
        assert_eq!(check(&h, &asked, session(2, kept)).unwrap_err(), Guarantee::Compaction);
        // A compaction nobody asked for.
        let mut unasked = events(&h, &[2]);
        unasked.push(Response::Compacted { at: 9, compact_rev: 4 });
        assert_eq!(check(&h, &asked, session(2, unasked)).unwrap_err(), Guarantee::Compaction);
        // Nor one asked for only after it was reported.
        let late = Compactions(vec![Compaction {
            call: 10,
            rev: 5,
            acked: true,
        }]);
        let mut early = events(&h, &[]);
        early.push(Response::Compacted { at: 9, compact_rev: 5 });
        assert_eq!(check(&h, &late, session(2, early)).unwrap_err(), Guarantee::Compaction);
    }
}
