//! A linearizability checker for a key-value history (Wing & Gong's search with Lowe's
//! memoisation, as Porcupine does it). Linearizability is compositional, so each key is
//! checked on its own: the history of one key must have an order of its operations that
//! respects real time (an operation that returned before another was invoked comes
//! first) and explains every result from a register model.
//!
//! A write whose outcome the client never learned (an error or a timeout) may or may not
//! have taken effect: it has no return time, so it may be placed anywhere after its
//! invocation, including after everything else (that is, never).

use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        value: String,
    },
    Get,
    /// Puts `value` if the key's value is `expect` (`None`: the key does not exist).
    Cas {
        expect: Option<String>,
        value: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Put,
    Get(Option<String>),
    /// The compare held and the put happened.
    CasOk,
    /// The compare failed; the value seen then (etcd's txn `else` branch reads it).
    CasFailed(Option<String>),
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

/// What the register model allows: the state after `r` applied to `state`, or `None`
/// when `r`'s result cannot be explained by `state`.
fn step(state: &Option<String>, r: &Record) -> Option<Option<String>> {
    match (&r.op, &r.outcome) {
        (Op::Put { value }, Outcome::Put | Outcome::Unknown) => Some(Some(value.clone())),
        (Op::Get, Outcome::Get(seen)) => (seen == state).then(|| state.clone()),
        (Op::Cas { expect, value }, outcome) => {
            let matches = expect == state;
            match outcome {
                Outcome::CasOk => matches.then(|| Some(value.clone())),
                Outcome::CasFailed(seen) => (!matches && seen == state).then(|| state.clone()),
                Outcome::Unknown => Some(if matches { Some(value.clone()) } else { state.clone() }),
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

/// The value an operation saw, if it reports one.
fn observed(r: &Record) -> Option<&str> {
    match (&r.op, &r.outcome) {
        (_, Outcome::Get(seen) | Outcome::CasFailed(seen)) => seen.as_deref(),
        (Op::Cas { expect, .. }, Outcome::CasOk) => expect.as_deref(),
        _ => None,
    }
}

/// The value a write would leave.
fn written(r: &Record) -> Option<&str> {
    match &r.op {
        Op::Put { value } | Op::Cas { value, .. } => Some(value),
        Op::Get => None,
    }
}

/// Checks a whole history: every key's operations, each key starting absent. Values
/// written must be unique.
///
/// A write of unknown outcome whose value nobody observed is left out: had it happened,
/// no operation was linearized between it and the next write (any would have seen its
/// value), so leaving it out changes no other result. Without this, each such write
/// doubles the states to explore.
pub fn check(history: &[Record]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in history {
        by_key.entry(&r.key).or_default().push(r);
    }
    for (key, ops) in by_key {
        let seen: HashSet<&str> = ops.iter().filter_map(|r| observed(r)).collect();
        let ops: Vec<&Record> = ops
            .into_iter()
            .filter(|r| r.outcome != Outcome::Unknown || written(r).is_some_and(|v| seen.contains(v)))
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

    let mut state: Option<String> = None;
    let mut done = vec![0u64; ops.len().div_ceil(64)];
    let mut seen: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
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
    fn put(c: usize, v: &str, call: u64, ret: u64) -> Record {
        rec(c, Op::Put { value: v.into() }, Outcome::Put, call, Some(ret))
    }
    fn get(c: usize, seen: Option<&str>, call: u64, ret: u64) -> Record {
        rec(c, Op::Get, Outcome::Get(seen.map(str::to_string)), call, Some(ret))
    }
    fn cas(c: usize, expect: Option<&str>, v: &str, call: u64, ret: u64) -> Record {
        let op = Op::Cas {
            expect: expect.map(str::to_string),
            value: v.into(),
        };
        rec(c, op, Outcome::CasOk, call, Some(ret))
    }
    fn cas_failed(c: usize, expect: Option<&str>, seen: Option<&str>, call: u64, ret: u64) -> Record {
        let op = Op::Cas {
            expect: expect.map(str::to_string),
            value: format!("never-{call}"),
        };
        rec(c, op, Outcome::CasFailed(seen.map(str::to_string)), call, Some(ret))
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            get(0, None, 0, 1),
            put(0, "a", 2, 3),
            get(1, Some("a"), 4, 5),
            cas(1, Some("a"), "b", 6, 7),
            cas_failed(0, Some("a"), Some("b"), 8, 9),
            get(0, Some("b"), 10, 11),
        ];
        check(&h).unwrap();
    }

    #[test]
    fn stale_read_after_a_completed_write_is_caught() {
        let h = vec![put(0, "a", 0, 1), put(0, "b", 2, 3), get(1, Some("a"), 4, 5)];
        let v = check(&h).expect_err("a stale read");
        assert_eq!(v.key, "k");
        assert!(v.to_string().contains("no linearization"));
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        // The read overlaps both writes: "a" and "b" are both explainable, as is none.
        for seen in [None, Some("a"), Some("b")] {
            let h = vec![put(0, "a", 0, 10), put(1, "b", 1, 9), get(2, seen, 2, 8)];
            check(&h).unwrap();
        }
        // But two reads cannot disagree on the order of writes that both completed
        // before them.
        let h = vec![
            put(0, "a", 0, 10),
            put(1, "b", 1, 9),
            get(2, Some("a"), 11, 12),
            get(2, Some("b"), 13, 14),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn a_write_with_unknown_outcome_may_or_may_not_happen() {
        let unknown = rec(0, Op::Put { value: "x".into() }, Outcome::Unknown, 0, None);
        check(&[unknown.clone(), get(1, Some("x"), 5, 6)]).unwrap();
        check(&[unknown.clone(), get(1, None, 5, 6)]).unwrap();
        // Once seen, it cannot be unseen.
        assert!(check(&[unknown.clone(), get(1, Some("x"), 5, 6), get(1, None, 7, 8)]).is_err());
        // Nor seen before it was invoked.
        let mut late = unknown.clone();
        late.call = 10;
        assert!(check(&[late, get(1, Some("x"), 5, 6)]).is_err());
        // Many unobserved ones are left out rather than searched.
        let mut h: Vec<Record> = (0..500)
            .map(|i| rec(i % 7, Op::Put { value: format!("u{i}") }, Outcome::Unknown, i as u64, None))
            .collect();
        h.push(put(9, "a", 600, 601));
        h.push(get(9, Some("a"), 602, 603));
        check(&h).unwrap();
    }

    #[test]
    fn two_successful_cas_from_the_same_value_are_caught() {
        let h = vec![put(0, "a", 0, 1), cas(1, Some("a"), "b", 2, 5), cas(2, Some("a"), "c", 3, 6)];
        assert!(check(&h).is_err());
        // A failed CAS must have seen a different value, and the current one.
        assert!(check(&[put(0, "a", 0, 1), cas_failed(1, Some("a"), Some("a"), 2, 3)]).is_err());
        assert!(check(&[put(0, "a", 0, 1), cas_failed(1, Some("b"), Some("c"), 2, 3)]).is_err());
        // Creating a key that exists fails.
        check(&[put(0, "a", 0, 1), cas_failed(1, None, Some("a"), 2, 3)]).unwrap();
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let h = vec![put(0, "a", 0, 1), get(1, None, 2, 3)];
        assert!(check(&h).is_err());
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut other = put(0, "z", 0, 1);
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
                let v = format!("v{i}");
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
