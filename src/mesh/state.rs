//! The mesh authority's state in netsy's own keyspace, under the reserved prefix
//! `/netsy/mesh/` (Kubernetes only ever uses `/registry/`). Every change is a Raft
//! transaction through the same write path as etcd clients' writes, so any pod can
//! serve any request and two pods racing for one invite or nonce cannot both win:
//!
//! | key | value | written by |
//! |---|---|---|
//! | `invites/{token}` | the invite (roles, limits, `used_at`, `used_by_key`) | create; consumed by compare-and-swap |
//! | `certs/{cert_id}` | the signed certificate and its status, heartbeat, renewal | put / compare-and-swap |
//! | `compromised/{node key}` | revocation of that key for `key_compromise` | put |
//! | `nonces/{scope}/{nonce}` | empty, on a lease that expires it after 600 s | create-only |
//! | `crl` | the active signed CRL | compare-and-swap on its revision |
//! | `policy/active`, `policy/versions/{id}` | the active policy id; each version | txn |
//! | `operator-keys/revoked/{key_id}` | the revocation | create-only |

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::Mutex;

use crate::core::{CoreError, Replica};
use crate::mvcc::MvccError;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::{request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse};
use crate::proto::mvccpb::KeyValue;

pub const PREFIX: &str = "/netsy/mesh/";

/// How long a claimed nonce is kept (twice the ±300 s window).
pub const NONCE_TTL_SECS: i64 = 600;

/// One stored JSON value and the revision that last changed it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub value: Value,
    pub mod_revision: i64,
}

/// Where the state lives: netsy's keyspace through its one write path (`Replica`), or
/// in unit tests a bare MVCC store (`memory::Keyspace`).
#[async_trait::async_trait]
pub trait Keyspace: Send + Sync {
    /// A linearizable read of `req`'s range.
    async fn range(&self, req: RangeRequest) -> Result<Vec<KeyValue>, CoreError>;
    /// Applies `req` (through Raft).
    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, CoreError>;
    /// Grants lease `id` for `ttl` seconds; returns its id.
    async fn lease_grant(&self, id: i64, ttl: i64) -> Result<i64, CoreError>;
}

#[async_trait::async_trait]
impl Keyspace for Arc<Replica> {
    async fn range(&self, mut req: RangeRequest) -> Result<Vec<KeyValue>, CoreError> {
        req.serializable = false;
        Ok(Replica::range(self, req).await?.reply.kvs)
    }

    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, CoreError> {
        Ok(Replica::txn(self, req).await?.reply)
    }

    async fn lease_grant(&self, id: i64, ttl: i64) -> Result<i64, CoreError> {
        Ok(Replica::lease_grant(self, id, ttl).await?.id)
    }
}

pub struct State {
    keyspace: Box<dyn Keyspace>,
    /// The lease nonces of the current minute are put on: (minute, lease id).
    nonce_lease: Mutex<Option<(i64, i64)>>,
}

fn key(k: &str) -> Vec<u8> {
    format!("{PREFIX}{k}").into_bytes()
}

fn put_op(k: &str, value: &Value, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key(k),
            value: serde_json::to_vec(value).unwrap_or_default(),
            lease,
            ..Default::default()
        })),
    }
}

/// `k`'s mod revision equals `rev` (0: `k` does not exist).
fn unchanged(k: &str, rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key(k),
        target_union: Some(TargetUnion::ModRevision(rev)),
        ..Default::default()
    }
}

impl State {
    pub fn new(replica: Arc<Replica>) -> State {
        State::over(replica)
    }

    /// The state in `keyspace`.
    pub fn over(keyspace: impl Keyspace + 'static) -> State {
        State {
            keyspace: Box::new(keyspace),
            nonce_lease: Mutex::new(None),
        }
    }

    /// A linearizable read of `k`.
    pub async fn get(&self, k: &str) -> Result<Option<Stored>, CoreError> {
        Ok(self.list_range(key(k), Vec::new()).await?.into_iter().next().map(|(_, s)| s))
    }

    /// Every value under `prefix` (linearizable), by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, Stored)>, CoreError> {
        let start = key(prefix);
        let mut end = start.clone();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        self.list_range(start, end).await
    }

    async fn list_range(&self, start: Vec<u8>, end: Vec<u8>) -> Result<Vec<(String, Stored)>, CoreError> {
        let req = RangeRequest {
            key: start,
            range_end: end,
            ..Default::default()
        };
        Ok(self
            .keyspace
            .range(req)
            .await?
            .into_iter()
            .filter_map(|kv| {
                let value = serde_json::from_slice(&kv.value).ok()?;
                let name = String::from_utf8_lossy(&kv.key[PREFIX.len()..]).into_owned();
                Some((
                    name,
                    Stored {
                        value,
                        mod_revision: kv.mod_revision,
                    },
                ))
            })
            .collect())
    }

    /// Writes every `(key, value)` if each `(key, revision)` in `expect` is unchanged;
    /// `false` when one changed (someone else won).
    pub async fn write_if(&self, expect: &[(&str, i64)], writes: &[(&str, &Value)]) -> Result<bool, CoreError> {
        let txn = TxnRequest {
            compare: expect.iter().map(|(k, rev)| unchanged(k, *rev)).collect(),
            success: writes.iter().map(|(k, v)| put_op(k, v, 0)).collect(),
            failure: vec![],
        };
        Ok(self.keyspace.txn(txn).await?.succeeded)
    }

    /// Writes unconditionally.
    pub async fn put(&self, k: &str, value: &Value) -> Result<(), CoreError> {
        self.write_if(&[], &[(k, value)]).await.map(|_| ())
    }

    /// Claims `nonce` in `scope` once: `false` if it was claimed before (a replay). The
    /// claim expires with its lease after about `NONCE_TTL_SECS`.
    pub async fn claim_nonce(&self, scope: &str, nonce: &str) -> Result<bool, CoreError> {
        let k = format!("nonces/{scope}/{nonce}");
        for _ in 0..2 {
            let lease = self.nonce_lease().await?;
            let txn = TxnRequest {
                compare: vec![unchanged(&k, 0)],
                success: vec![put_op(&k, &Value::Null, lease)],
                failure: vec![],
            };
            match self.keyspace.txn(txn).await {
                Ok(resp) => return Ok(resp.succeeded),
                // The minute's lease expired under us: take a new one and retry once.
                Err(CoreError::Apply(MvccError::LeaseNotFound)) => *self.nonce_lease.lock().await = None,
                Err(e) => return Err(e),
            }
        }
        // The lease expired twice in a row: a clock far off, or leases expiring at once.
        Err(MvccError::LeaseNotFound.into())
    }

    /// One lease per minute for that minute's nonces, living `NONCE_TTL_SECS` past it.
    async fn nonce_lease(&self) -> Result<i64, CoreError> {
        let minute = time::OffsetDateTime::now_utc().unix_timestamp() / 60;
        let mut current = self.nonce_lease.lock().await;
        if let Some((m, id)) = *current {
            if m == minute {
                return Ok(id);
            }
        }
        let id = self.keyspace.lease_grant(0, NONCE_TTL_SECS + 60).await?;
        *current = Some((minute, id));
        Ok(id)
    }
}

/// A keyspace in one MVCC store, without Raft, for unit tests.
#[cfg(test)]
pub mod memory {
    use std::sync::Mutex;

    use crate::core::CoreError;
    use crate::mvcc::{AppliedMeta, Command, CommandResult, MvccError, Reader, Store};
    use crate::proto::etcdserverpb::{RangeRequest, TxnRequest, TxnResponse};
    use crate::proto::mvccpb::KeyValue;

    pub struct Keyspace {
        store: Mutex<Store>,
        reader: Reader,
        _dir: tempfile::TempDir,
    }

    impl Keyspace {
        pub fn new() -> Result<Keyspace, Box<dyn std::error::Error + Send + Sync>> {
            let dir = tempfile::tempdir()?;
            let store = Store::open(&dir.path().join("state.db"))?;
            let reader = Reader::new(store.path());
            Ok(Keyspace {
                store: Mutex::new(store),
                reader,
                _dir: dir,
            })
        }

        fn apply(&self, cmd: Command) -> Result<CommandResult, CoreError> {
            let mut store = self.store.lock().map_err(|_| MvccError::Storage("poisoned test store".into()))?;
            match store.apply_batch(&[Some(cmd)], &AppliedMeta::default())?.pop() {
                Some(CommandResult::Error(e)) => Err(e.into()),
                Some(result) => Ok(result),
                None => Err(MvccError::Storage("no result".into()).into()),
            }
        }
    }

    fn unexpected(wanted: &'static str, got: CommandResult) -> CoreError {
        CoreError::UnexpectedResult {
            wanted,
            got: format!("{got:?}"),
        }
    }

    #[async_trait::async_trait]
    impl super::Keyspace for Keyspace {
        async fn range(&self, req: RangeRequest) -> Result<Vec<KeyValue>, CoreError> {
            Ok(self.reader.run(move |r| r.range(&req)).await?.kvs)
        }

        async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, CoreError> {
            match self.apply(Command::Txn(req))? {
                CommandResult::Txn(resp) => Ok(resp),
                other => Err(unexpected("txn", other)),
            }
        }

        async fn lease_grant(&self, id: i64, ttl: i64) -> Result<i64, CoreError> {
            let id = if id == 0 { crate::lease::new_lease_id() } else { id };
            match self.apply(Command::LeaseGrant { id, ttl })? {
                CommandResult::LeaseGrant(resp) => Ok(resp.id),
                other => Err(unexpected("lease grant", other)),
            }
        }
    }
}
