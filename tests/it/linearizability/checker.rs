//! A linearizability checker for a key-value history (Wing & Gong's search with Lowe's
//! memoisation, as Porcupine does it). Linearizability is compositional, so each key is
//! checked on its own: the history of one key must have an order of its operations that
//! respects real time (an operation that returned before another was invoked comes
//! first) and explains every result from a register model. The register holds a value
//! and the revision that wrote it (etcd's `mod_revision`), so reads check both, and
//! kube-apiserver's guarded writes (create if mod revision 0, update or delete if it is
//! the revision read before) are modelled as they are asked.
//!
//! A write whose outcome the client never learned (an error or a timeout) may or may not
//! have taken effect: it has no return time, so it may be placed anywhere after its
//! invocation, including after everything else (that is, never).

use std::collections::{BTreeMap, HashSet};

/// A key's value and the revision that wrote it (etcd's `mod_revision`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Seen {
    pub value: String,
    pub mod_rev: i64,
}

/// The register: the key's value and mod revision, `None` while it does not exist
/// (mod revision 0).
pub type State = Option<Seen>;

/// What a transaction compares before writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// The key's value is this (`None`: the key does not exist), as `Compare::value` or
    /// `Compare::version(key) == 0` check.
    Value(Option<String>),
    /// The key's mod revision is this (0: the key does not exist), as kube-apiserver's
    /// create (0), update and delete (the revision it read) check.
    ModRev(i64),
}

/// What a transaction does when its guard holds (else it reads the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Then {
    /// `rev`: the revision the put made, from its response or, when the outcome is
    /// unknown, from the run's history (`None`: the history has no such write).
    Put {
        value: String,
        rev: Option<i64>,
    },
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { value: String, rev: Option<i64> },
    Get,
    Txn { guard: Guard, then: Then },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Put,
    Get(State),
    /// The guard held and the write happened.
    TxnOk,
    /// The guard failed; the key as the `else` branch read it.
    TxnFailed(State),
    /// The write may or may not have happened.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Record {
    pub client: usize,
    pub key: String,
    pub op: Op,
    pub outcome: Outcome,
    /// Invocation and response, in nanoseconds since the run started; `None` when the
    /// outcome is unknown.
    pub call: u64,
    pub ret: Option<u64>,
}

/// The state a write leaves (`None` for a put the history says never happened).
fn written_state(value: &str, rev: Option<i64>) -> Option<State> {
    rev.map(|rev| {
        Some(Seen {
            value: value.to_string(),
            mod_rev: rev,
        })
    })
}

fn holds(guard: &Guard, state: &State) -> bool {
    match guard {
        Guard::Value(v) => state.as_ref().map(|s| &s.value) == v.as_ref(),
        Guard::ModRev(r) => state.as_ref().map_or(0, |s| s.mod_rev) == *r,
    }
}

/// What the register model allows: the state after `r` applied to `state`, or `None`
/// when `r`'s result cannot be explained by `state`.
fn step(state: &State, r: &Record) -> Option<State> {
    match (&r.op, &r.outcome) {
        (Op::Put { value, rev }, Outcome::Put | Outcome::Unknown) => written_state(value, *rev),
        (Op::Get, Outcome::Get(seen)) => (seen == state).then(|| state.clone()),
        (Op::Txn { guard, then }, outcome) => {
            let matches = holds(guard, state);
            let after = match then {
                Then::Put { value, rev } => written_state(value, *rev),
                Then::Delete => Some(None),
            };
            match outcome {
                Outcome::TxnOk if matches => after,
                Outcome::TxnFailed(seen) => (!matches && seen == state).then(|| state.clone()),
                Outcome::Unknown if matches => after,
                Outcome::Unknown => Some(state.clone()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A failure: the key whose history has no linearization, and that history.
#[derive(Debug)]
pub struct Violation {
    pub key: String,
    pub history: Vec<Record>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "no linearization for key {:?} ({} operations):", self.key, self.history.len())?;
        let mut ops: Vec<&Record> = self.history.iter().collect();
        ops.sort_by_key(|r| r.call);
        for r in ops {
            let ret = r.ret.map_or("?".to_string(), |t| format!("{:.3}", t as f64 / 1e9));
            writeln!(
                f,
                "  [{:.3}, {ret}] client {}: {:?} -> {:?}",
                r.call as f64 / 1e9,
                r.client,
                r.op,
                r.outcome
            )?;
        }
        Ok(())
    }
}

/// Values and mod revisions an operation saw (reads and failed guards), or relied on
/// (a guard that held).
fn observed(r: &Record) -> (Option<&str>, Option<i64>) {
    match (&r.op, &r.outcome) {
        (_, Outcome::Get(Some(s)) | Outcome::TxnFailed(Some(s))) => (Some(&s.value), Some(s.mod_rev)),
        (
            Op::Txn {
                guard: Guard::Value(v), ..
            },
            Outcome::TxnOk,
        ) => (v.as_deref(), None),
        (
            Op::Txn {
                guard: Guard::ModRev(rev), ..
            },
            Outcome::TxnOk,
        ) => (None, Some(*rev)),
        _ => (None, None),
    }
}

/// The value and revision a put would leave.
fn written(r: &Record) -> Option<(&str, Option<i64>)> {
    match &r.op {
        Op::Put { value, rev }
        | Op::Txn {
            then: Then::Put { value, rev },
            ..
        } => Some((value, *rev)),
        _ => None,
    }
}

/// Checks a whole history: every key's operations, each key starting absent. Values
/// written must be unique.
///
/// A put of unknown outcome that nobody observed (no read saw its value or revision,
/// no guard relied on it) is left out: had it happened, no operation was linearized
/// between it and the next write (any would have seen it), so leaving it out changes
/// no other result. Without this, each such write doubles the states to explore. A put
/// the history says never happened (`rev` is `None`) is left out too. Deletes of
/// unknown outcome stay in.
pub fn check(history: &[Record]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in history {
        by_key.entry(&r.key).or_default().push(r);
    }
    for (key, ops) in by_key {
        let mut values: HashSet<&str> = HashSet::new();
        let mut revs: HashSet<i64> = HashSet::new();
        for r in &ops {
            let (v, rev) = observed(r);
            values.extend(v);
            revs.extend(rev);
        }
        let ops: Vec<&Record> = ops
            .into_iter()
            .filter(|r| match (&r.outcome, written(r)) {
                (Outcome::Unknown, Some((_, None))) => false,
                (Outcome::Unknown, Some((v, Some(rev)))) => values.contains(v) || revs.contains(&rev),
                _ => true,
            })
            .collect();
        if !linearizable(&ops) {
            return Err(Violation {
                key: key.to_string(),
                history: ops.into_iter().cloned().collect(),
            });
        }
    }
    Ok(())
}

const NIL: usize = usize::MAX;

/// The search over one key's operations. Events (invocations and responses) form a
/// doubly linked list in time order; linearizing an operation lifts its two events out
/// of the list, backtracking puts them back. A state (set of linearized operations,
/// register value) already explored is not explored again.
fn linearizable(ops: &[&Record]) -> bool {
    // (time, is_return, op). At equal times invocations come first.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, r) in ops.iter().enumerate() {
        events.push((r.call, false, i));
        events.push((r.ret.unwrap_or(u64::MAX), true, i));
    }
    events.sort();
    // Node 0 is the list head; node k + 1 is events[k].
    let len = events.len() + 1;
    let mut next: Vec<usize> = (1..=len).map(|k| if k < len { k } else { NIL }).collect();
    let mut prev: Vec<usize> = (0..len).map(|k| if k == 0 { NIL } else { k - 1 }).collect();
    let mut return_node = vec![0; ops.len()];
    for (k, &(_, is_return, i)) in events.iter().enumerate() {
        if is_return {
            return_node[i] = k + 1;
        }
    }
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, k: usize| {
        next[prev[k]] = next[k];
        if next[k] != NIL {
            prev[next[k]] = prev[k];
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, k: usize| {
        next[prev[k]] = k;
        if next[k] != NIL {
            prev[next[k]] = k;
        }
    };

    let mut state: State = None;
    let mut done = vec![0u64; ops.len().div_ceil(64)];
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut node = next[0];
    while next[0] != NIL {
        let (_, is_return, i) = events[node - 1];
        if !is_return {
            if let Some(after) = step(&state, ops[i]) {
                let mut with = done.clone();
                with[i / 64] |= 1 << (i % 64);
                if seen.insert((with.clone(), after.clone())) {
                    stack.push((node, std::mem::replace(&mut state, after)));
                    done = with;
                    lift(&mut next, &mut prev, node);
                    lift(&mut next, &mut prev, return_node[i]);
                    node = next[0];
                    continue;
                }
            }
            node = next[node];
        } else {
            // An operation's response is reached before it was linearized: undo the
            // latest choice and try the next candidate after it.
            let Some((call, before)) = stack.pop() else {
                return false;
            };
            let i = events[call - 1].2;
            done[i / 64] &= !(1 << (i % 64));
            state = before;
            unlift(&mut next, &mut prev, return_node[i]);
            unlift(&mut next, &mut prev, call);
            node = next[call];
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(client: usize, op: Op, outcome: Outcome, call: u64, ret: Option<u64>) -> Record {
        Record {
            client,
            key: "k".into(),
            op,
            outcome,
            call,
            ret,
        }
    }
    /// Values are written at the revision named by their digits ("a3" at 3, "b" at 0).
    fn rev_of(v: &str) -> i64 {
        v.trim_start_matches(|c: char| !c.is_ascii_digit()).parse().unwrap_or(0)
    }
    fn seen(v: Option<&str>) -> State {
        v.map(|v| Seen {
            value: v.into(),
            mod_rev: rev_of(v),
        })
    }
    fn put(c: usize, v: &str, call: u64, ret: u64) -> Record {
        let op = Op::Put {
            value: v.into(),
            rev: Some(rev_of(v)),
        };
        rec(c, op, Outcome::Put, call, Some(ret))
    }
    fn get(c: usize, v: Option<&str>, call: u64, ret: u64) -> Record {
        rec(c, Op::Get, Outcome::Get(seen(v)), call, Some(ret))
    }
    fn cas(c: usize, expect: Option<&str>, v: &str, call: u64, ret: u64) -> Record {
        let op = Op::Txn {
            guard: Guard::Value(expect.map(str::to_string)),
            then: Then::Put {
                value: v.into(),
                rev: Some(rev_of(v)),
            },
        };
        rec(c, op, Outcome::TxnOk, call, Some(ret))
    }
    fn cas_failed(c: usize, expect: Option<&str>, v: Option<&str>, call: u64, ret: u64) -> Record {
        let op = Op::Txn {
            guard: Guard::Value(expect.map(str::to_string)),
            then: Then::Put {
                value: format!("never-{call}"),
                rev: None,
            },
        };
        rec(c, op, Outcome::TxnFailed(seen(v)), call, Some(ret))
    }
    /// kube-apiserver's guarded writes: `then` if the mod revision is `rev`.
    fn guarded(c: usize, rev: i64, then: Then, outcome: Outcome, call: u64, ret: Option<u64>) -> Record {
        rec(
            c,
            Op::Txn {
                guard: Guard::ModRev(rev),
                then,
            },
            outcome,
            call,
            ret,
        )
    }
    fn then_put(v: &str) -> Then {
        Then::Put {
            value: v.into(),
            rev: Some(rev_of(v)),
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            get(0, None, 0, 1),
            put(0, "a2", 2, 3),
            get(1, Some("a2"), 4, 5),
            cas(1, Some("a2"), "b3", 6, 7),
            cas_failed(0, Some("a2"), Some("b3"), 8, 9),
            get(0, Some("b3"), 10, 11),
        ];
        check(&h).unwrap();
    }

    #[test]
    fn stale_read_after_a_completed_write_is_caught() {
        let h = vec![put(0, "a2", 0, 1), put(0, "b3", 2, 3), get(1, Some("a2"), 4, 5)];
        let v = check(&h).expect_err("a stale read");
        assert_eq!(v.key, "k");
        assert!(v.to_string().contains("no linearization"));
    }

    #[test]
    fn a_read_with_the_wrong_mod_revision_is_caught() {
        let bad = rec(
            1,
            Op::Get,
            Outcome::Get(Some(Seen {
                value: "a2".into(),
                mod_rev: 3,
            })),
            2,
            Some(3),
        );
        assert!(check(&[put(0, "a2", 0, 1), bad]).is_err());
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        // The read overlaps both writes: "a" and "b" are both explainable, as is none.
        for v in [None, Some("a2"), Some("b3")] {
            let h = vec![put(0, "a2", 0, 10), put(1, "b3", 1, 9), get(2, v, 2, 8)];
            check(&h).unwrap();
        }
        // But two reads cannot disagree on the order of writes that both completed
        // before them.
        let h = vec![
            put(0, "a2", 0, 10),
            put(1, "b3", 1, 9),
            get(2, Some("a2"), 11, 12),
            get(2, Some("b3"), 13, 14),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn a_write_with_unknown_outcome_may_or_may_not_happen() {
        let op = Op::Put {
            value: "x2".into(),
            rev: Some(2),
        };
        let unknown = rec(0, op, Outcome::Unknown, 0, None);
        check(&[unknown.clone(), get(1, Some("x2"), 5, 6)]).unwrap();
        check(&[unknown.clone(), get(1, None, 5, 6)]).unwrap();
        // Once seen, it cannot be unseen.
        assert!(check(&[unknown.clone(), get(1, Some("x2"), 5, 6), get(1, None, 7, 8)]).is_err());
        // Nor seen before it was invoked.
        let mut late = unknown.clone();
        late.call = 10;
        assert!(check(&[late, get(1, Some("x2"), 5, 6)]).is_err());
        // Nor seen when the history says it never happened.
        let never = rec(
            0,
            Op::Put {
                value: "x2".into(),
                rev: None,
            },
            Outcome::Unknown,
            0,
            None,
        );
        assert!(check(&[never, get(1, Some("x2"), 5, 6)]).is_err());
        // Many unobserved ones are left out rather than searched.
        let mut h: Vec<Record> = (0..500)
            .map(|i| {
                let op = Op::Put {
                    value: format!("u{}", i + 1000),
                    rev: Some(i + 1000),
                };
                rec(i as usize % 7, op, Outcome::Unknown, i as u64, None)
            })
            .collect();
        h.push(put(9, "a2000", 600, 601));
        h.push(get(9, Some("a2000"), 602, 603));
        check(&h).unwrap();
    }

    #[test]
    fn two_successful_cas_from_the_same_value_are_caught() {
        let h = vec![put(0, "a2", 0, 1), cas(1, Some("a2"), "b3", 2, 5), cas(2, Some("a2"), "c4", 3, 6)];
        assert!(check(&h).is_err());
        // A failed CAS must have seen a different value, and the current one.
        assert!(check(&[put(0, "a2", 0, 1), cas_failed(1, Some("a2"), Some("a2"), 2, 3)]).is_err());
        assert!(check(&[put(0, "a2", 0, 1), cas_failed(1, Some("b3"), Some("c4"), 2, 3)]).is_err());
        // Creating a key that exists fails.
        check(&[put(0, "a2", 0, 1), cas_failed(1, None, Some("a2"), 2, 3)]).unwrap();
    }

    #[test]
    fn kube_creates_updates_and_deletes_are_checked_by_mod_revision() {
        // create (mod revision 0), update at 2, delete at 3, create again.
        let h = vec![
            guarded(0, 0, then_put("a2"), Outcome::TxnOk, 0, Some(1)),
            guarded(0, 2, then_put("b3"), Outcome::TxnOk, 2, Some(3)),
            guarded(1, 3, Then::Delete, Outcome::TxnOk, 4, Some(5)),
            get(1, None, 6, 7),
            guarded(0, 0, then_put("c8"), Outcome::TxnOk, 8, Some(9)),
            guarded(1, 3, Then::Delete, Outcome::TxnFailed(seen(Some("c8"))), 10, Some(11)),
        ];
        check(&h).unwrap();
        // An update from a revision that is no longer current cannot succeed.
        let stale = vec![
            put(0, "a2", 0, 1),
            put(0, "b3", 2, 3),
            guarded(1, 2, then_put("c4"), Outcome::TxnOk, 4, Some(5)),
        ];
        assert!(check(&stale).is_err());
        // A delete that succeeded leaves nothing behind.
        let ghost = vec![
            put(0, "a2", 0, 1),
            guarded(1, 2, Then::Delete, Outcome::TxnOk, 2, Some(3)),
            get(1, Some("a2"), 4, 5),
        ];
        assert!(check(&ghost).is_err());
        // A create of an existing key fails, seeing it.
        let dup = vec![put(0, "a2", 0, 1), guarded(1, 0, then_put("b3"), Outcome::TxnOk, 2, Some(3))];
        assert!(check(&dup).is_err());
        // A delete of unknown outcome may or may not have happened.
        let maybe = guarded(1, 2, Then::Delete, Outcome::Unknown, 2, None);
        check(&[put(0, "a2", 0, 1), maybe.clone(), get(1, None, 4, 5)]).unwrap();
        check(&[put(0, "a2", 0, 1), maybe, get(1, Some("a2"), 4, 5)]).unwrap();
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let h = vec![put(0, "a2", 0, 1), get(1, None, 2, 3)];
        assert!(check(&h).is_err());
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut other = put(0, "z2", 0, 1);
        other.key = "other".into();
        let h = vec![other, get(1, None, 2, 3)];
        check(&h).unwrap();
    }

    #[test]
    fn large_concurrent_history_is_checked() {
        // 5 clients, 2,000 overlapping operations, all consistent with one order.
        let mut h = Vec::new();
        let mut value: Option<String> = None;
        for i in 0..2000u64 {
            let c = (i % 5) as usize;
            let (call, ret) = (i * 10, i * 10 + 35); // overlaps the next three
            if i % 3 == 0 {
                h.push(get(c, value.as_deref(), call, ret));
            } else {
                let v = format!("v{}", i + 2);
                h.push(put(c, &v, call, ret));
                value = Some(v);
            }
        }
        // The gets above read at their own position; make their windows end before the
        // next write starts so the expected order is also the only one for reads.
        for r in h.iter_mut().filter(|r| r.op == Op::Get) {
            r.ret = Some(r.call + 5);
        }
        check(&h).unwrap();
    }
}
