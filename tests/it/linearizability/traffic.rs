//! The traffic: what clients do during a run, and what they saw, with when they asked
//! and when they were answered (nanoseconds since the run started).
//!
//! Keys: `lin/reg/{0..4}` are registers, checked for linearizability by `checker`:
//! puts, compare-and-set on the value, gets, and kube-apiserver's guarded create,
//! update and delete (`Txn(mod_revision(key) == R → put or delete, else get)`).
//! `lin/obj/{00..23}` are objects: the same kube-apiserver writes, plain etcd
//! multi-key txns and DeleteRange over a sub-prefix, paginated lists (limit, continue
//! from the last key + "\0" at the first page's revision), count-only and keys-only
//! ranges, historical reads. `lin/lease/...` are keys attached to leases (granted with
//! a 2–5 s TTL, kept alive for a while or not, then left to expire or revoked).
//! `compact_rev_key` is kube-apiserver's compaction lock (`compactor`). Every read and
//! acknowledged write is checked against the history (`history`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, GetResponse, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::checker::{Guard, Op, Outcome, Record, Seen, State, Then};
use super::history::{Compaction, Compactions, Effect, KeyRange, Kv, Lease, List, Read, Write};
use super::observe::Shared;

pub const REGISTERS: usize = 4;
pub const OBJECTS: usize = 24;
pub const OBJ_PREFIX: &str = "lin/obj/";
pub const COMPACT_KEY: &str = "compact_rev_key";
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);

pub fn register(k: usize) -> String {
    format!("lin/reg/{k}")
}

fn object(k: usize) -> String {
    format!("{OBJ_PREFIX}{k:02}")
}

/// Requests that failed, by error.
pub type Errors = BTreeMap<String, usize>;

/// Everything one client saw.
#[derive(Default)]
pub struct Recorded {
    /// Operations on the registers, for `checker`.
    pub register: Vec<Record>,
    pub reads: Vec<Read>,
    pub writes: Vec<Write>,
    /// Historical reads answered "compacted": (answered at, revision asked for).
    pub compacted_reads: Vec<(u64, i64)>,
    pub lists: Vec<List>,
    pub leases: Vec<Lease>,
    /// Operations issued, and writes whose outcome is unknown.
    pub ops: usize,
    pub unknown: usize,
    pub errors: Errors,
}

impl Recorded {
    pub fn merge(&mut self, other: Recorded) {
        self.register.extend(other.register);
        self.reads.extend(other.reads);
        self.writes.extend(other.writes);
        self.compacted_reads.extend(other.compacted_reads);
        self.lists.extend(other.lists);
        self.leases.extend(other.leases);
        self.ops += other.ops;
        self.unknown += other.unknown;
        for (what, n) in other.errors {
            *self.errors.entry(what).or_default() += n;
        }
    }

    fn fail(&mut self, e: &Failure) {
        *self.errors.entry(e.0.clone()).or_default() += 1;
    }
}

/// Acknowledged writes and completed reads so far, across clients.
#[derive(Default)]
pub struct Progress {
    pub writes: AtomicUsize,
    pub reads: AtomicUsize,
}

/// A request that got no answer, or an error: what it was.
struct Failure(String);

impl Failure {
    fn compacted(&self) -> bool {
        self.0.contains("required revision has been compacted")
    }
}

/// Runs `fut` with the operation timeout.
async fn call<T>(fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>) -> Result<T, Failure> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(etcd_client::Error::GRpcStatus(s))) => Err(Failure(format!("{:?}: {}", s.code(), s.message()))),
        Ok(Err(e)) => Err(Failure(e.to_string())),
        Err(_) => Err(Failure(format!("no answer within {OP_TIMEOUT:?}"))),
    }
}

fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.map_or(0, |h| h.revision())
}

fn seen_of(kvs: &[etcd_client::KeyValue]) -> State {
    kvs.first().map(|kv| Seen {
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        mod_rev: kv.mod_revision(),
    })
}

/// A Range answer as a `Read`.
fn read_of(call: u64, ret: u64, range: KeyRange, at_rev: i64, opts: (i64, bool, bool), resp: &GetResponse) -> Read {
    Read {
        call,
        ret,
        header_rev: header_rev(resp.header()),
        at_rev,
        range,
        limit: opts.0,
        keys_only: opts.1,
        count_only: opts.2,
        kvs: resp.kvs().iter().map(Kv::from_client).collect(),
        count: resp.count(),
        more: resp.more(),
    }
}

/// A client connected to one member, moving on to the next after a failure.
struct Conn {
    endpoints: Vec<String>,
    at: usize,
    client: Option<Client>,
}

impl Conn {
    fn new(endpoints: Vec<String>, at: usize) -> Conn {
        let at = at % endpoints.len();
        Conn {
            endpoints,
            at,
            client: None,
        }
    }

    /// The client, connecting if needed; `None` (after a pause) when that failed.
    async fn get(&mut self, rng: &mut StdRng) -> Option<&mut Client> {
        if self.client.is_none() {
            let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
            match tokio::time::timeout(OP_TIMEOUT, Client::connect([self.endpoints[self.at].clone()], Some(options))).await {
                Ok(Ok(c)) => self.client = Some(c),
                _ => {
                    self.next(rng).await;
                    return None;
                }
            }
        }
        self.client.as_mut()
    }

    /// Drops the connection and moves to the next member, after a pause.
    async fn next(&mut self, rng: &mut StdRng) {
        self.client = None;
        self.at = (self.at + 1) % self.endpoints.len();
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..300))).await;
    }
}

/// One traffic client.
pub struct ClientLoop {
    pub id: usize,
    pub seed: u64,
    pub endpoints: Vec<String>,
    pub start: Instant,
    pub stop: Arc<AtomicBool>,
    pub progress: Arc<Progress>,
}

/// Per-client state: what it last saw of each key (kube-apiserver updates from the
/// revision it read), and the newest revision it saw anywhere.
struct View {
    last: HashMap<String, State>,
    newest: i64,
    seq: usize,
}

impl ClientLoop {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub async fn run(self) -> Recorded {
        let mut rng = StdRng::seed_from_u64(self.seed ^ (self.id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut conn = Conn::new(self.endpoints.clone(), self.id);
        let mut out = Recorded::default();
        let mut view = View {
            last: HashMap::new(),
            newest: 1,
            seq: 0,
        };
        while !self.stop.load(Ordering::Relaxed) {
            let Some(c) = conn.get(&mut rng).await else { continue };
            let mut c = c.clone();
            out.ops += 1;
            view.seq += 1;
            let value = format!("c{}-{}", self.id, view.seq);
            let (writes, reads) = (out.writes.len(), out.reads.len());
            let ok = match rng.random_range(0..100) {
                0..18 => self.put(&mut c, &mut out, &register(rng.random_range(0..REGISTERS)), value).await,
                18..26 => {
                    let key = register(rng.random_range(0..REGISTERS));
                    let expect = if rng.random_bool(0.7) {
                        view.last.get(&key).cloned().flatten().map(|s| s.value)
                    } else {
                        None
                    };
                    self.guarded(&mut c, &mut out, &mut view, key, Guard::Value(expect), Some(value))
                        .await
                }
                26..44 => {
                    self.get(&mut c, &mut out, &mut view, register(rng.random_range(0..REGISTERS)))
                        .await
                }
                44..58 => {
                    let key = register(rng.random_range(0..REGISTERS));
                    self.kube_write(&mut c, &mut out, &mut view, &mut rng, key, value).await
                }
                58..68 => {
                    let key = object(rng.random_range(0..OBJECTS));
                    self.kube_write(&mut c, &mut out, &mut view, &mut rng, key, value).await
                }
                68..74 => self.list(&mut c, &mut out, &mut view, rng.random_range(2..8)).await,
                74..77 => {
                    let prefix = if rng.random_bool(0.5) { "lin/" } else { OBJ_PREFIX };
                    self.range(&mut c, &mut out, &mut view, KeyRange::prefix(prefix), (0, false, true))
                        .await
                }
                77..80 => {
                    let prefix = if rng.random_bool(0.5) { "lin/" } else { OBJ_PREFIX };
                    self.range(&mut c, &mut out, &mut view, KeyRange::prefix(prefix), (0, true, false))
                        .await
                }
                80..86 => self.multi_key_txn(&mut c, &mut out, &mut view, &mut rng).await,
                86..88 => {
                    let prefix = format!("{OBJ_PREFIX}{}", rng.random_range(0..=(OBJECTS - 1) / 10));
                    self.delete_range(&mut c, &mut out, &mut view, KeyRange::prefix(&prefix)).await
                }
                88..94 => {
                    let back = rng.random_range(0..300);
                    let at = (view.newest - back).max(1);
                    self.historical(&mut c, &mut out, &mut view, at).await
                }
                _ => {
                    let key = object(rng.random_range(0..OBJECTS));
                    self.range(&mut c, &mut out, &mut view, KeyRange::key(&key), (0, false, false))
                        .await
                }
            };
            self.progress.writes.fetch_add(out.writes.len() - writes, Ordering::Relaxed);
            self.progress.reads.fetch_add(out.reads.len() - reads, Ordering::Relaxed);
            if !ok {
                // This member may be down or cut off: try the next one.
                conn.next(&mut rng).await;
            }
        }
        out
    }

    /// A put of a register. Returns whether it was answered.
    async fn put(&self, c: &mut Client, out: &mut Recorded, key: &str, value: String) -> bool {
        let t = self.now();
        let r = call(c.put(key, value.clone(), None)).await;
        let ret = self.now();
        match r {
            Ok(resp) => {
                let rev = header_rev(resp.header());
                out.writes.push(Write {
                    call: t,
                    ret,
                    rev,
                    effects: vec![Effect::Put {
                        key: key.to_string(),
                        value: value.clone(),
                        lease: 0,
                    }],
                });
                out.register.push(Record {
                    client: self.id,
                    key: key.to_string(),
                    op: Op::Put { value, rev: Some(rev) },
                    outcome: Outcome::Put,
                    call: t,
                    ret: Some(ret),
                });
                true
            }
            Err(e) => {
                out.fail(&e);
                out.unknown += 1;
                out.register.push(Record {
                    client: self.id,
                    key: key.to_string(),
                    op: Op::Put { value, rev: None },
                    outcome: Outcome::Unknown,
                    call: t,
                    ret: None,
                });
                false
            }
        }
    }

    async fn get(&self, c: &mut Client, out: &mut Recorded, view: &mut View, key: String) -> bool {
        self.range(c, out, view, KeyRange::key(&key), (0, false, false)).await
    }

    /// A Range (`opts`: limit, keys only, count only). A single-key full read of a
    /// register also goes to the checker.
    async fn range(&self, c: &mut Client, out: &mut Recorded, view: &mut View, range: KeyRange, opts: (i64, bool, bool)) -> bool {
        let mut options = GetOptions::new();
        if !range.end.is_empty() {
            options = options.with_range(range.end.clone());
        }
        if opts.0 > 0 {
            options = options.with_limit(opts.0);
        }
        if opts.1 {
            options = options.with_keys_only();
        }
        if opts.2 {
            options = options.with_count_only();
        }
        let t = self.now();
        let r = call(c.get(range.key.clone(), Some(options))).await;
        let ret = self.now();
        match r {
            Ok(resp) => {
                let read = read_of(t, ret, range.clone(), 0, opts, &resp);
                view.newest = view.newest.max(read.header_rev);
                if range.end.is_empty() && opts == (0, false, false) {
                    let seen = seen_of(resp.kvs());
                    view.last.insert(range.key.clone(), seen.clone());
                    if range.key.starts_with("lin/reg/") {
                        out.register.push(Record {
                            client: self.id,
                            key: range.key.clone(),
                            op: Op::Get,
                            outcome: Outcome::Get(seen),
                            call: t,
                            ret: Some(ret),
                        });
                    }
                }
                out.reads.push(read);
                true
            }
            Err(e) => {
                out.fail(&e);
                false
            }
        }
    }

    /// kube-apiserver's create (the key does not exist: mod revision 0), update or
    /// delete (mod revision is the one last read), chosen by what this client last saw.
    async fn kube_write(&self, c: &mut Client, out: &mut Recorded, view: &mut View, rng: &mut StdRng, key: String, value: String) -> bool {
        let last = view.last.get(&key).cloned().flatten();
        let (guard, then) = match last {
            None => (Guard::ModRev(0), Some(value)),
            Some(s) if rng.random_bool(0.3) => (Guard::ModRev(s.mod_rev), None),
            Some(s) => (Guard::ModRev(s.mod_rev), Some(value)),
        };
        self.guarded(c, out, view, key, guard, then).await
    }

    /// `Txn(guard → put value (or delete, for None), else get)`.
    async fn guarded(&self, c: &mut Client, out: &mut Recorded, view: &mut View, key: String, guard: Guard, value: Option<String>) -> bool {
        let compare = match &guard {
            Guard::Value(Some(v)) => Compare::value(key.clone(), CompareOp::Equal, v.clone()),
            Guard::Value(None) => Compare::version(key.clone(), CompareOp::Equal, 0),
            Guard::ModRev(r) => Compare::mod_revision(key.clone(), CompareOp::Equal, *r),
        };
        let then = match &value {
            Some(v) => TxnOp::put(key.clone(), v.clone(), None),
            None => TxnOp::delete(key.clone(), None),
        };
        let txn = Txn::new().when([compare]).and_then([then]).or_else([TxnOp::get(key.clone(), None)]);
        let t = self.now();
        let r = call(c.txn(txn)).await;
        let ret = self.now();
        let checked = key.starts_with("lin/reg/");
        let then_of = |rev: Option<i64>| match &value {
            Some(v) => Then::Put { value: v.clone(), rev },
            None => Then::Delete,
        };
        let (op, outcome, answered) = match r {
            Ok(resp) if resp.succeeded() => {
                let rev = header_rev(resp.header());
                view.newest = view.newest.max(rev);
                let effect = match &value {
                    Some(v) => {
                        view.last.insert(
                            key.clone(),
                            Some(Seen {
                                value: v.clone(),
                                mod_rev: rev,
                            }),
                        );
                        Effect::Put {
                            key: key.clone(),
                            value: v.clone(),
                            lease: 0,
                        }
                    }
                    None => {
                        view.last.insert(key.clone(), None);
                        Effect::Delete {
                            range: KeyRange::key(&key),
                            deleted: deleted_of(&resp),
                        }
                    }
                };
                out.writes.push(Write {
                    call: t,
                    ret,
                    rev,
                    effects: vec![effect],
                });
                (
                    Op::Txn {
                        guard,
                        then: then_of(Some(rev)),
                    },
                    Outcome::TxnOk,
                    true,
                )
            }
            Ok(resp) => {
                let got = resp.op_responses().into_iter().find_map(|op| match op {
                    TxnOpResponse::Get(g) => Some(g),
                    _ => None,
                });
                let Some(g) = got else {
                    out.fail(&Failure("a failed txn without its else branch's answer".into()));
                    return true;
                };
                let mut read = read_of(t, ret, KeyRange::key(&key), 0, (0, false, false), &g);
                // The Range inside a txn has no header of its own: the txn's is the one.
                read.header_rev = header_rev(resp.header());
                view.newest = view.newest.max(read.header_rev);
                let seen = seen_of(g.kvs());
                view.last.insert(key.clone(), seen.clone());
                out.reads.push(read);
                (
                    Op::Txn {
                        guard,
                        then: then_of(None),
                    },
                    Outcome::TxnFailed(seen),
                    true,
                )
            }
            Err(e) => {
                out.fail(&e);
                out.unknown += 1;
                (
                    Op::Txn {
                        guard,
                        then: then_of(None),
                    },
                    Outcome::Unknown,
                    false,
                )
            }
        };
        if checked {
            out.register.push(Record {
                client: self.id,
                key,
                op,
                ret: (outcome != Outcome::Unknown).then_some(ret),
                outcome,
                call: t,
            });
        }
        answered
    }

    /// A paginated list of the objects, as kube-apiserver pages: `limit` keys a page,
    /// the next page from the last key + "\0", at the first page's revision.
    async fn list(&self, c: &mut Client, out: &mut Recorded, view: &mut View, limit: i64) -> bool {
        let range = KeyRange::prefix(OBJ_PREFIX);
        let mut from = range.key.clone();
        let mut rev = 0;
        let mut page_revs = Vec::new();
        let mut kvs = Vec::new();
        loop {
            let mut options = GetOptions::new().with_range(range.end.clone()).with_limit(limit);
            if rev > 0 {
                options = options.with_revision(rev);
            }
            let t = self.now();
            let r = call(c.get(from.clone(), Some(options))).await;
            let ret = self.now();
            let resp = match r {
                Ok(resp) => resp,
                Err(e) if e.compacted() && rev > 0 => {
                    // The list's revision was compacted between pages; kube-apiserver
                    // would start over. That must be a compaction someone asked for.
                    out.compacted_reads.push((ret, rev));
                    return true;
                }
                Err(e) => {
                    out.fail(&e);
                    return false;
                }
            };
            let page = KeyRange {
                key: from.clone(),
                end: range.end.clone(),
            };
            let read = read_of(t, ret, page, rev, (limit, false, false), &resp);
            view.newest = view.newest.max(read.header_rev);
            if rev == 0 {
                rev = read.header_rev;
            }
            page_revs.push(read.rev());
            kvs.extend(read.kvs.iter().cloned());
            let more = read.more;
            let last = read.kvs.last().map(|kv| kv.key.clone());
            out.reads.push(read);
            match (more, last) {
                (true, Some(last)) => from = format!("{last}\0"),
                _ => break,
            }
        }
        out.lists.push(List {
            range,
            rev,
            page_revs,
            kvs,
        });
        true
    }

    /// A plain etcd txn on two or three objects: puts and deletes, unconditionally.
    async fn multi_key_txn(&self, c: &mut Client, out: &mut Recorded, view: &mut View, rng: &mut StdRng) -> bool {
        let n = rng.random_range(2..=3);
        let mut keys: Vec<usize> = Vec::new();
        while keys.len() < n {
            let k = rng.random_range(0..OBJECTS);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let mut ops = Vec::new();
        let mut planned = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let key = object(*k);
            if rng.random_bool(0.25) {
                ops.push(TxnOp::delete(key.clone(), None));
                planned.push((key, None));
            } else {
                let value = format!("c{}-{}-{i}", self.id, view.seq);
                ops.push(TxnOp::put(key.clone(), value.clone(), None));
                planned.push((key, Some(value)));
            }
        }
        let t = self.now();
        let r = call(c.txn(Txn::new().and_then(ops))).await;
        let ret = self.now();
        match r {
            Ok(resp) => {
                let rev = header_rev(resp.header());
                view.newest = view.newest.max(rev);
                let answers = resp.op_responses();
                let effects = planned
                    .into_iter()
                    .zip(answers)
                    .map(|((key, value), answer)| match value {
                        Some(value) => Effect::Put { key, value, lease: 0 },
                        None => Effect::Delete {
                            range: KeyRange::key(&key),
                            deleted: match answer {
                                TxnOpResponse::Delete(d) => d.deleted(),
                                _ => -1,
                            },
                        },
                    })
                    .collect();
                out.writes.push(Write {
                    call: t,
                    ret,
                    rev,
                    effects,
                });
                true
            }
            Err(e) => {
                out.fail(&e);
                out.unknown += 1;
                false
            }
        }
    }

    async fn delete_range(&self, c: &mut Client, out: &mut Recorded, view: &mut View, range: KeyRange) -> bool {
        let t = self.now();
        let r = call(c.delete(range.key.clone(), Some(DeleteOptions::new().with_range(range.end.clone())))).await;
        let ret = self.now();
        match r {
            Ok(resp) => {
                let rev = header_rev(resp.header());
                view.newest = view.newest.max(rev);
                out.writes.push(Write {
                    call: t,
                    ret,
                    rev,
                    effects: vec![Effect::Delete {
                        range,
                        deleted: resp.deleted(),
                    }],
                });
                true
            }
            Err(e) => {
                out.fail(&e);
                out.unknown += 1;
                false
            }
        }
    }

    /// A Range of every test key at revision `at`: what the history held then, or
    /// "compacted" if a compaction past it was asked for.
    async fn historical(&self, c: &mut Client, out: &mut Recorded, view: &mut View, at: i64) -> bool {
        let range = KeyRange::prefix("lin/");
        let options = GetOptions::new().with_range(range.end.clone()).with_revision(at);
        let t = self.now();
        let r = call(c.get(range.key.clone(), Some(options))).await;
        let ret = self.now();
        match r {
            Ok(resp) => {
                let read = read_of(t, ret, range, at, (0, false, false), &resp);
                view.newest = view.newest.max(read.header_rev);
                out.reads.push(read);
                true
            }
            Err(e) if e.compacted() => {
                out.compacted_reads.push((ret, at));
                true
            }
            Err(e) => {
                out.fail(&e);
                false
            }
        }
    }
}

fn deleted_of(resp: &TxnResponse) -> i64 {
    resp.op_responses()
        .into_iter()
        .find_map(|op| match op {
            TxnOpResponse::Delete(d) => Some(d.deleted()),
            _ => None,
        })
        .unwrap_or(-1)
}

/// Leases: grant one (2–5 s), attach one to three keys to it, then keep it alive for a
/// while or not, and revoke it or let it expire; and again, with a few alive at once.
pub async fn lease_loop(id: usize, seed: u64, endpoints: Vec<String>, start: Instant, stop: Arc<AtomicBool>) -> Recorded {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x1ea5e ^ (id as u64) << 32);
    let now = || start.elapsed().as_nanos() as u64;
    let mut conn = Conn::new(endpoints, id + 1);
    let mut out = Recorded::default();
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = conn.get(&mut rng).await else { continue };
        let mut c = c.clone();
        seq += 1;
        out.ops += 1;
        let t = now();
        let grant = match call(c.lease_grant(rng.random_range(2..=5), None)).await {
            Ok(g) => g,
            Err(e) => {
                out.fail(&e);
                conn.next(&mut rng).await;
                continue;
            }
        };
        let mut lease = Lease {
            id: grant.id(),
            ttl: grant.ttl(),
            renewed: t,
            revoked: None,
        };
        let mut ok = true;
        for j in 0..rng.random_range(1..=3) {
            let key = format!("lin/lease/{id}-{seq}/{j}");
            let value = format!("l{id}-{seq}-{j}");
            out.ops += 1;
            let t = now();
            match call(c.put(key.clone(), value.clone(), Some(PutOptions::new().with_lease(lease.id)))).await {
                Ok(resp) => out.writes.push(Write {
                    call: t,
                    ret: now(),
                    rev: header_rev(resp.header()),
                    effects: vec![Effect::Put {
                        key,
                        value,
                        lease: lease.id,
                    }],
                }),
                Err(e) => {
                    out.fail(&e);
                    out.unknown += 1;
                    ok = false;
                    break;
                }
            }
        }
        // 0: left alone to expire; 1: kept alive, then left to expire; 2: kept alive, then revoked.
        let plan = if ok { rng.random_range(0..3) } else { 0 };
        if plan > 0 {
            let keep_for = Duration::from_millis(rng.random_range(1000..4000));
            let every = Duration::from_millis(lease.ttl as u64 * 1000 / 3);
            if let Ok((mut keeper, mut answers)) = call(c.lease_keep_alive(lease.id)).await {
                let until = Instant::now() + keep_for;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    let t = now();
                    out.ops += 1;
                    if keeper.keep_alive().await.is_err() {
                        break;
                    }
                    // One request, one answer: a late answer would be taken for the next.
                    match tokio::time::timeout(OP_TIMEOUT, answers.message()).await {
                        Ok(Ok(Some(a))) if a.ttl() > 0 => lease.renewed = t,
                        _ => break,
                    }
                    tokio::time::sleep(every).await;
                }
            }
        }
        if plan == 2 {
            out.ops += 1;
            lease.revoked = Some(now());
            if let Err(e) = call(c.lease_revoke(lease.id)).await {
                out.fail(&e);
                ok = false;
            }
        }
        out.leases.push(lease);
        if !ok {
            conn.next(&mut rng).await;
        } else {
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
        }
    }
    out
}

/// kube-apiserver's compactor: every few seconds, `Txn(version(compact_rev_key) == V →
/// put compact_rev_key = R, else get)`, and if that succeeded, `Compact(R)`, where R
/// is the revision the previous round saw (some seconds old). Two of them race, as two
/// API servers do; the version guard lets one win each round. R never passes what the
/// recorder (the reference watch) has been given, so compaction never removes history
/// the run is still to record.
pub async fn compactor(
    id: usize,
    seed: u64,
    endpoints: Vec<String>,
    start: Instant,
    stop: Arc<AtomicBool>,
    recorder: Arc<Shared>,
    compactions: Arc<Mutex<Compactions>>,
) -> Recorded {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xc0c0 ^ (id as u64) << 40);
    let now = || start.elapsed().as_nanos() as u64;
    let mut conn = Conn::new(endpoints, id + 2);
    let mut out = Recorded::default();
    let mut version = 0;
    let mut previous: Option<i64> = None;
    loop {
        let pause = Duration::from_millis(rng.random_range(1500..3500));
        let until = Instant::now() + pause;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if stop.load(Ordering::Relaxed) {
            return out;
        }
        let Some(c) = conn.get(&mut rng).await else { continue };
        let mut c = c.clone();
        out.ops += 1;
        let value = previous.unwrap_or(0).to_string();
        let txn = Txn::new()
            .when([Compare::version(COMPACT_KEY, CompareOp::Equal, version)])
            .and_then([TxnOp::put(COMPACT_KEY, value.clone(), None)])
            .or_else([TxnOp::get(COMPACT_KEY, None)]);
        let t = now();
        let r = call(c.txn(txn)).await;
        let ret = now();
        match r {
            Ok(resp) if resp.succeeded() => {
                let rev = header_rev(resp.header());
                out.writes.push(Write {
                    call: t,
                    ret,
                    rev,
                    effects: vec![Effect::Put {
                        key: COMPACT_KEY.into(),
                        value,
                        lease: 0,
                    }],
                });
                version += 1;
                let target = previous.map(|p| p.min(recorder.covered()));
                previous = Some(rev);
                let Some(target) = target.filter(|t| *t > 1) else { continue };
                let already = compactions.lock().expect("compactions").max_requested_before(u64::MAX);
                if target <= already {
                    continue;
                }
                out.ops += 1;
                let t = now();
                compactions.lock().expect("compactions").0.push(Compaction {
                    call: t,
                    rev: target,
                    acked: false,
                });
                match call(c.compact(target, None)).await {
                    Ok(_) => {
                        let mut all = compactions.lock().expect("compactions");
                        if let Some(mine) = all.0.iter_mut().rev().find(|x| x.call == t && x.rev == target) {
                            mine.acked = true;
                        }
                    }
                    Err(e) => {
                        out.fail(&e);
                        conn.next(&mut rng).await;
                    }
                }
            }
            Ok(resp) => {
                let got = resp.op_responses().into_iter().find_map(|op| match op {
                    TxnOpResponse::Get(g) => Some(g),
                    _ => None,
                });
                if let Some(g) = got {
                    version = g.kvs().first().map_or(0, |kv| kv.version());
                    let mut read = read_of(t, ret, KeyRange::key(COMPACT_KEY), 0, (0, false, false), &g);
                    read.header_rev = header_rev(resp.header());
                    previous = Some(read.header_rev);
                    out.reads.push(read);
                }
            }
            Err(e) => {
                out.fail(&e);
                out.unknown += 1;
                conn.next(&mut rng).await;
            }
        }
    }
}
