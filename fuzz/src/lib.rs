//! What the fuzz targets share: the input layout (a selector byte, then the bytes of one
//! record), scratch space, and a keyspace in one MVCC store for the mesh authority.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use netsy::core::CoreError;
use netsy::mvcc::{AppliedMeta, Command, CommandResult, MvccError, Reader, Store};
use netsy::proto::etcdserverpb::{RangeRequest, TxnRequest, TxnResponse};
use netsy::proto::mvccpb::KeyValue;

/// `(selector, rest)`: the first byte chooses the decoder, modulo `kinds`.
pub fn select(data: &[u8], kinds: u8) -> Option<(u8, &[u8])> {
    let (&kind, rest) = data.split_first()?;
    Some((kind % kinds, rest))
}

/// `decode(bytes)`, and when it succeeds, that encoding is a fixed point: what netsy
/// encodes it decodes, and decoding then encoding it again gives the same bytes.
pub fn fixed_point<T, E: std::fmt::Debug>(
    bytes: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, E>,
    encode: impl Fn(&T) -> Vec<u8>,
) -> Option<T> {
    let value = decode(bytes).ok()?;
    let once = encode(&value);
    let back = decode(&once).unwrap_or_else(|e| panic!("netsy cannot decode what it encoded: {e:?}"));
    assert_eq!(encode(&back), once, "decode then encode is not a fixed point");
    Some(value)
}

/// A directory for this process's scratch files (in memory when /dev/shm exists).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let base = if shm.is_dir() { shm } else { std::env::temp_dir() };
        tempfile::Builder::new()
            .prefix("netsy-fuzz-")
            .tempdir_in(base)
            .expect("scratch dir")
    })
    .path()
}

/// A keyspace in one MVCC store, without Raft (as the mesh authority's unit tests use);
/// clones share the store.
#[derive(Clone)]
pub struct MemKeyspace(std::sync::Arc<Inner>);

pub struct Inner {
    store: Mutex<Store>,
    reader: Reader,
    _dir: tempfile::TempDir,
}

impl MemKeyspace {
    pub fn new() -> MemKeyspace {
        let dir = tempfile::tempdir_in(scratch()).expect("tempdir");
        let store = Store::open(&dir.path().join("state.db")).expect("store");
        let reader = Reader::new(store.path());
        MemKeyspace(std::sync::Arc::new(Inner {
            store: Mutex::new(store),
            reader,
            _dir: dir,
        }))
    }

    fn apply(&self, cmd: Command) -> Result<CommandResult, CoreError> {
        let mut store = self.0.store.lock().map_err(|_| MvccError::Storage("poisoned".into()))?;
        match store.apply_batch(&[Some(cmd)], &AppliedMeta::default())?.pop() {
            Some(CommandResult::Error(e)) => Err(e.into()),
            Some(result) => Ok(result),
            None => Err(MvccError::Storage("no result".into()).into()),
        }
    }
}

impl Default for MemKeyspace {
    fn default() -> Self {
        Self::new()
    }
}

fn unexpected(wanted: &'static str, got: CommandResult) -> CoreError {
    CoreError::UnexpectedResult {
        wanted,
        got: format!("{got:?}"),
    }
}

#[async_trait::async_trait]
impl netsy::mesh::state::Keyspace for MemKeyspace {
    async fn range(&self, req: RangeRequest) -> Result<Vec<KeyValue>, CoreError> {
        Ok(self.0.reader.range(&req)?.kvs)
    }

    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, CoreError> {
        match self.apply(Command::Txn(req))? {
            CommandResult::Txn(resp) => Ok(resp),
            other => Err(unexpected("txn", other)),
        }
    }

    async fn lease_grant(&self, id: i64, ttl: i64) -> Result<i64, CoreError> {
        let id = if id == 0 { 0x6675_7a7a } else { id };
        match self.apply(Command::LeaseGrant { id, ttl }) {
            Ok(CommandResult::LeaseGrant(resp)) => Ok(resp.id),
            Err(CoreError::Apply(MvccError::LeaseExists)) => Ok(id),
            Ok(other) => Err(unexpected("lease grant", other)),
            Err(e) => Err(e),
        }
    }
}

/// `(key, mod_revision)` of every key in `req`'s range.
pub fn range(ks: &MemKeyspace, req: &RangeRequest) -> Vec<(Vec<u8>, i64)> {
    ks.0.reader
        .range(req)
        .expect("range")
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.mod_revision))
        .collect()
}
