//! `EncryptedStore`: the object store layer that encrypts every object written and
//! authenticates and decrypts every object read (format: `sealed`; keys: `keys`).
//!
//! Every archive module (segments, snapshots, manifests, restore, clone, points, GC) goes
//! through it unchanged: they see plaintext, the backend sees only `NETSYEN1` objects.
//!
//! - Data keys: one random 256-bit data key is wrapped by the key service and reused for
//!   new objects for at most `DATA_KEY_MAX_AGE` or `DATA_KEY_MAX_USES` objects, and only
//!   while the service's current key id (`Status`, asked at most every
//!   `status_interval`) is the one that wrapped it. Each object derives its own key from
//!   the data key and a random salt (HKDF), so reuse never repeats a (key, nonce) pair.
//! - Unwrapped data keys are cached by (key id, wrapped key): a restore of thousands of
//!   segments makes one `Decrypt` call per data key, not per object.
//! - Conditional puts pass through: the e-tag is the stored object's.
//! - `head` and `list` report the stored (encrypted) size; `get` reports the plaintext's.
//! - A whole-object `get` streams: each chunk is authenticated before it is passed on, and
//!   a cut or changed object ends the stream with an error naming it.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyMode, CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use rand::RngCore;

use super::keys::{KeyError, KeyService, Wrapped};
use super::sealed::{self, FormatError, Header, Layout, ObjectCipher};

/// A data key wraps new objects for at most this long.
pub const DATA_KEY_MAX_AGE: Duration = Duration::from_secs(3600);
/// A data key wraps at most this many objects.
pub const DATA_KEY_MAX_USES: u64 = 100_000;
/// Unwrapped data keys kept for reads.
const CACHE_ENTRIES: usize = 4096;
/// Ciphertext gathered before a part is handed to a multipart upload (S3 needs 5 MiB).
const PART: usize = 8 * 1024 * 1024;
/// The first bytes fetched by a ranged read: the header, usually whole.
const PREFETCH: u64 = 4096;
const STORE: &str = "Encrypted";

#[derive(Debug, thiserror::Error)]
pub enum EncryptError {
    #[error("{path} is not encrypted (no NETSYEN1 header), and storage.encryption is set: an archive is encrypted from its first object on; to encrypt an existing archive, `netsy clone` it into a bucket or key prefix configured with encryption")]
    Plaintext { path: String },
    #[error("{path}: {source}")]
    Format {
        path: String,
        #[source]
        source: FormatError,
    },
    #[error("{path}: cannot unwrap its data key (key id {key_id:?}): {source}")]
    Unwrap {
        path: String,
        key_id: String,
        #[source]
        source: KeyError,
    },
    #[error("{path}: cannot get a data key to encrypt it: {source}")]
    Wrap {
        path: String,
        #[source]
        source: KeyError,
    },
}

fn generic(e: EncryptError) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: Box::new(e),
    }
}

fn format_err(path: &Path, source: FormatError) -> object_store::Error {
    generic(match source {
        FormatError::NotEncrypted => EncryptError::Plaintext { path: path.to_string() },
        source => EncryptError::Format {
            path: path.to_string(),
            source,
        },
    })
}

struct DataKey {
    key: [u8; 32],
    wrapped: Wrapped,
    created: Instant,
    checked: Instant,
    uses: u64,
}

/// Encrypts on write and decrypts on read (module docs).
pub struct EncryptedStore {
    inner: Arc<dyn ObjectStore>,
    keys: Arc<dyn KeyService>,
    current: tokio::sync::Mutex<Option<DataKey>>,
    unwrapped: Mutex<HashMap<WrappedId, [u8; 32]>>,
}

/// A wrapped data key: its key id and ciphertext.
type WrappedId = (String, Vec<u8>);

impl fmt::Debug for EncryptedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedStore")
            .field("inner", &self.inner)
            .field("keys", &self.keys)
            .finish()
    }
}

impl fmt::Display for EncryptedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Encrypted({})", self.inner)
    }
}

impl EncryptedStore {
    pub fn new(inner: Arc<dyn ObjectStore>, keys: Arc<dyn KeyService>) -> Self {
        EncryptedStore {
            inner,
            keys,
            current: tokio::sync::Mutex::new(None),
            unwrapped: Mutex::new(HashMap::new()),
        }
    }

    /// Asks the key service for its current key id: an unreachable or unhealthy service
    /// fails here, at startup, rather than at the first upload.
    pub async fn check(&self) -> Result<String, KeyError> {
        self.keys.current_key_id().await
    }

    /// The data key for the next object, and its wrapped form.
    async fn data_key(&self, path: &Path) -> Result<([u8; 32], Wrapped), object_store::Error> {
        let wrap_err = |source| {
            generic(EncryptError::Wrap {
                path: path.to_string(),
                source,
            })
        };
        let mut current = self.current.lock().await;
        if let Some(k) = current.as_mut() {
            let fresh = k.created.elapsed() < DATA_KEY_MAX_AGE && k.uses < DATA_KEY_MAX_USES;
            let mut same_key = true;
            if fresh && k.checked.elapsed() >= self.keys.status_interval() {
                let id = self.keys.current_key_id().await.map_err(wrap_err)?;
                k.checked = Instant::now();
                same_key = id == k.wrapped.key_id;
            }
            if fresh && same_key {
                k.uses += 1;
                return Ok((k.key, k.wrapped.clone()));
            }
        }
        // Status first: an unhealthy plugin is reported as such, not as a failed Encrypt.
        self.keys.current_key_id().await.map_err(wrap_err)?;
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let wrapped = self.keys.wrap(&key).await.map_err(wrap_err)?;
        tracing::info!(key_id = %wrapped.key_id, "archive encryption: a new data key");
        self.remember(&wrapped, key);
        let now = Instant::now();
        *current = Some(DataKey {
            key,
            wrapped: wrapped.clone(),
            created: now,
            checked: now,
            uses: 1,
        });
        Ok((key, wrapped))
    }

    fn remember(&self, w: &Wrapped, key: [u8; 32]) {
        let mut cache = self.unwrapped.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert((w.key_id.clone(), w.ciphertext.clone()), key);
    }

    /// The data key of an object, from the cache or the key service.
    async fn unwrap(&self, path: &Path, h: &Header) -> Result<[u8; 32], object_store::Error> {
        let id = (h.key_id.clone(), h.wrapped_key.clone());
        if let Some(k) = self.unwrapped.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return Ok(*k);
        }
        let w = Wrapped {
            key_id: h.key_id.clone(),
            ciphertext: h.wrapped_key.clone(),
            annotations: h.annotations.clone(),
        };
        let key = self.keys.unwrap(&w).await.map_err(|source| {
            generic(EncryptError::Unwrap {
                path: path.to_string(),
                key_id: h.key_id.clone(),
                source,
            })
        })?;
        self.remember(&w, key);
        Ok(key)
    }

    /// A new object's prefix and cipher.
    async fn begin(&self, path: &Path) -> Result<(Vec<u8>, ObjectCipher), object_store::Error> {
        let (key, wrapped) = self.data_key(path).await?;
        let mut salt = [0u8; 32];
        rand::rng().fill_bytes(&mut salt);
        let header = Header {
            chunk_size: sealed::CHUNK as u32,
            salt,
            key_id: wrapped.key_id,
            wrapped_key: wrapped.ciphertext,
            annotations: wrapped.annotations,
        };
        let prefix = header.encode();
        let cipher = ObjectCipher::new(&key, &salt, path.as_ref(), &prefix);
        Ok((prefix, cipher))
    }

    /// Reads the prefix of an object from its first bytes (fetching the rest if the
    /// header is longer), and returns it with the object's cipher.
    async fn open_prefix(
        &self,
        path: &Path,
        first: &[u8],
        options: &GetOptions,
        meta: &ObjectMeta,
    ) -> Result<(Vec<u8>, Header, ObjectCipher), object_store::Error> {
        let n = Header::prefix_len(first).map_err(|e| format_err(path, e))?;
        let prefix = if first.len() >= n {
            first[..n].to_vec()
        } else {
            let opts = pinned(options, meta, 0..n as u64);
            let b = self.inner.get_opts(path, opts).await?.bytes().await?;
            if b.len() != n {
                return Err(format_err(path, FormatError::Truncated { size: meta.size }));
            }
            b.to_vec()
        };
        let header = Header::decode(&prefix).map_err(|e| format_err(path, e))?;
        let key = self.unwrap(path, &header).await?;
        let cipher = ObjectCipher::new(&key, &header.salt, path.as_ref(), &prefix);
        Ok((prefix, header, cipher))
    }

    async fn get_whole(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let mut r = self.inner.get_opts(location, options.clone()).await?;
        let meta = r.meta.clone();
        let attributes = r.attributes.clone();
        let extensions = std::mem::take(&mut r.extensions);
        let mut body = r.into_stream();
        // The first 12 bytes say how long the prefix is.
        // Taking a chunk off the front is O(1): an inner store may hand over the whole object at once.
        let mut buf = bytes::BytesMut::new();
        loop {
            if buf.len() >= 12 && buf.len() >= Header::prefix_len(&buf).map_err(|e| format_err(location, e))? {
                break;
            }
            match body.try_next().await? {
                Some(b) => buf.extend_from_slice(&b),
                None => {
                    Header::prefix_len(&buf).map_err(|e| format_err(location, e))?;
                    return Err(format_err(location, FormatError::Truncated { size: meta.size }));
                }
            }
        }
        let n = Header::prefix_len(&buf).map_err(|e| format_err(location, e))?;
        let (_, header, cipher) = self.open_prefix(location, &buf, &options, &meta).await?;
        let layout = Layout::new(n, header.chunk_size, meta.size).map_err(|e| format_err(location, e))?;
        let _ = buf.split_to(n);
        let path = location.clone();
        struct St {
            body: BoxStream<'static, object_store::Result<Bytes>>,
            buf: bytes::BytesMut,
            next: u64,
            cipher: ObjectCipher,
            layout: Layout,
            path: Path,
        }
        let st = St {
            body,
            buf,
            next: 0,
            cipher,
            layout,
            path,
        };
        let stream = futures::stream::try_unfold(st, |mut st| async move {
            if st.next == st.layout.chunks {
                // Nothing may follow the last chunk.
                while let Some(b) = st.body.try_next().await? {
                    st.buf.extend_from_slice(&b);
                }
                if !st.buf.is_empty() {
                    return Err(format_err(&st.path, FormatError::Truncated { size: st.layout.plaintext }));
                }
                return Ok(None);
            }
            let len = st.layout.chunk_range(st.next).end - st.layout.chunk_range(st.next).start;
            while (st.buf.len() as u64) < len {
                match st.body.try_next().await? {
                    Some(b) => st.buf.extend_from_slice(&b),
                    None => return Err(format_err(&st.path, FormatError::Truncated { size: st.buf.len() as u64 })),
                }
            }
            let last = st.next + 1 == st.layout.chunks;
            let plain = st
                .cipher
                .open(st.next, last, &st.buf[..len as usize])
                .map_err(|e| format_err(&st.path, e))?;
            let _ = st.buf.split_to(len as usize);
            st.next += 1;
            Ok(Some((Bytes::from(plain), st)))
        });
        let plaintext = layout.plaintext;
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream.boxed()),
            meta: ObjectMeta { size: plaintext, ..meta },
            range: 0..plaintext,
            attributes,
            extensions,
        })
    }

    async fn get_range_of(&self, location: &Path, options: GetOptions, range: GetRange) -> object_store::Result<GetResult> {
        let first_opts = GetOptions {
            range: Some(GetRange::Bounded(0..PREFETCH)),
            head: false,
            ..options.clone()
        };
        let mut first = self.inner.get_opts(location, first_opts).await?;
        let meta = first.meta.clone();
        let attributes = first.attributes.clone();
        let extensions = std::mem::take(&mut first.extensions);
        let first = first.bytes().await?;
        let (prefix, header, cipher) = self.open_prefix(location, &first, &options, &meta).await?;
        let layout = Layout::new(prefix.len(), header.chunk_size, meta.size).map_err(|e| format_err(location, e))?;
        let want = range.as_range(layout.plaintext).map_err(|e| object_store::Error::Generic {
            store: STORE,
            source: Box::new(e),
        })?;
        // The answer, with the plaintext's size and range.
        let answer = |payload, meta: ObjectMeta, want| GetResult {
            payload: GetResultPayload::Stream(payload),
            meta: ObjectMeta {
                size: layout.plaintext,
                ..meta
            },
            range: want,
            attributes,
            extensions,
        };
        if want.is_empty() {
            return Ok(answer(futures::stream::empty().boxed(), meta, want));
        }
        let (a, b) = (want.start / layout.chunk, (want.end - 1) / layout.chunk);
        let stored = layout.chunk_range(a).start..layout.chunk_range(b).end;
        let bytes = if stored.end <= first.len() as u64 {
            first.slice(stored.start as usize..stored.end as usize)
        } else {
            self.inner
                .get_opts(location, pinned(&options, &meta, stored.clone()))
                .await?
                .bytes()
                .await?
        };
        if bytes.len() as u64 != stored.end - stored.start {
            return Err(format_err(location, FormatError::Truncated { size: meta.size }));
        }
        let plain = sealed::open_chunks(&cipher, &layout, a, &bytes).map_err(|e| format_err(location, e))?;
        let base = a * layout.chunk;
        let out = Bytes::from(plain).slice((want.start - base) as usize..(want.end - base) as usize);
        Ok(answer(futures::stream::once(async move { Ok(out) }).boxed(), meta, want))
    }
}

/// Options for a further read of the same object: the same version (its e-tag, when the
/// backend gives one), so a concurrent replacement fails the read instead of mixing two.
fn pinned(options: &GetOptions, meta: &ObjectMeta, range: Range<u64>) -> GetOptions {
    GetOptions {
        range: Some(GetRange::Bounded(range)),
        if_match: meta.e_tag.clone().or_else(|| options.if_match.clone()),
        version: meta.version.clone().or_else(|| options.version.clone()),
        ..Default::default()
    }
}

#[async_trait]
impl ObjectStore for EncryptedStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> object_store::Result<PutResult> {
        let plaintext = Bytes::from(payload);
        let (prefix, cipher) = self.begin(location).await?;
        let sealed = sealed::seal_all(&cipher, &prefix, sealed::CHUNK, &plaintext);
        self.inner.put_opts(location, sealed.into(), opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> object_store::Result<Box<dyn MultipartUpload>> {
        let (prefix, cipher) = self.begin(location).await?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(EncryptedUpload {
            inner,
            cipher,
            plain: Vec::new(),
            out: prefix,
            next: 0,
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        if options.head {
            return self.inner.get_opts(location, options).await;
        }
        match options.range.clone() {
            None => self.get_whole(location, options).await,
            Some(range) => self.get_range_of(location, options, range).await,
        }
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            let opts = GetOptions {
                range: Some(GetRange::Bounded(r.clone())),
                ..Default::default()
            };
            out.push(self.get_opts(location, opts).await?.bytes().await?);
        }
        Ok(out)
    }

    fn delete_stream(&self, locations: BoxStream<'static, object_store::Result<Path>>) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    /// The path is bound into every object, so a copy is a read and a new write.
    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        let data = self.get_opts(from, GetOptions::default()).await?.bytes().await?;
        let mode = match options.mode {
            CopyMode::Create => PutMode::Create,
            CopyMode::Overwrite => PutMode::Overwrite,
        };
        self.put_opts(to, data.into(), mode.into()).await.map(|_| ())
    }
}

/// A multipart upload that encrypts as it goes: plaintext is cut into chunks (the last
/// one, sealed as final, at `complete`), ciphertext handed on in parts of `PART` bytes.
struct EncryptedUpload {
    inner: Box<dyn MultipartUpload>,
    cipher: ObjectCipher,
    /// Plaintext not yet sealed: never more than a chunk after `put_part`.
    plain: Vec<u8>,
    /// Ciphertext not yet handed on.
    out: Vec<u8>,
    next: u64,
}

impl fmt::Debug for EncryptedUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedUpload")
            .field("inner", &self.inner)
            .field("next", &self.next)
            .finish()
    }
}

#[async_trait]
impl MultipartUpload for EncryptedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        for piece in data.iter() {
            let mut rest: &[u8] = piece;
            while !rest.is_empty() {
                // Keep up to a whole chunk back: only `complete` knows which is the last.
                if self.plain.len() == sealed::CHUNK {
                    self.cipher.seal(self.next, false, &self.plain, &mut self.out);
                    self.next += 1;
                    self.plain.clear();
                }
                let take = (sealed::CHUNK - self.plain.len()).min(rest.len());
                self.plain.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
            }
        }
        if self.out.len() >= PART {
            let part = std::mem::take(&mut self.out);
            self.inner.put_part(part.into())
        } else {
            Box::pin(futures::future::ready(Ok(())))
        }
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let plain = std::mem::take(&mut self.plain);
        self.cipher.seal(self.next, true, &plain, &mut self.out);
        self.next += 1;
        let part = std::mem::take(&mut self.out);
        self.inner.put_part(part.into()).await?;
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

/// The key id of an object as stored (`None`: not encrypted), from its first bytes.
pub async fn key_id_of(raw: &dyn ObjectStore, path: &Path) -> object_store::Result<Option<String>> {
    let opts = GetOptions {
        range: Some(GetRange::Bounded(0..PREFETCH)),
        ..Default::default()
    };
    let first = raw.get_opts(path, opts).await?.bytes().await?;
    let n = match Header::prefix_len(&first) {
        Err(FormatError::NotEncrypted) => return Ok(None),
        Err(e) => return Err(format_err(path, e)),
        Ok(n) => n,
    };
    let prefix = if first.len() >= n {
        first.slice(..n)
    } else {
        raw.get_range(path, 0..n as u64).await?
    };
    Ok(Some(Header::decode(&prefix).map_err(|e| format_err(path, e))?.key_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::keys::KeyFile;
    use object_store::memory::InMemory;
    use object_store::UpdateVersion;

    fn stores() -> (Arc<dyn ObjectStore>, EncryptedStore) {
        let raw: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let keys = Arc::new(KeyFile::from_key(std::path::Path::new("k"), [5u8; 32]));
        (raw.clone(), EncryptedStore::new(raw, keys))
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 253) as u8).collect()
    }

    #[tokio::test]
    async fn puts_gets_and_ranges_round_trip_and_nothing_is_stored_in_the_clear() {
        let (raw, enc) = stores();
        let body = data(3 * sealed::CHUNK + 100);
        let p = Path::from("epochs/1/snapshots/00000000000000000010.snap");
        enc.put(&p, body.clone().into()).await.unwrap();
        let stored = raw.get(&p).await.unwrap().bytes().await.unwrap();
        assert_eq!(&stored[..8], sealed::MAGIC);
        assert!(!stored.windows(64).any(|w| w == &body[1000..1064]), "the plaintext is not stored");
        let got = enc.get(&p).await.unwrap();
        assert_eq!(got.meta.size, body.len() as u64);
        assert_eq!(got.bytes().await.unwrap(), body);
        for r in [0..10u64, 5..sealed::CHUNK as u64 + 5, 100..body.len() as u64, 0..u64::MAX / 2] {
            let want = &body[r.start as usize..(r.end as usize).min(body.len())];
            assert_eq!(enc.get_range(&p, r.clone()).await.unwrap(), want, "{r:?}");
        }
        let many = enc.get_ranges(&p, &[1..3, 70000..70010]).await.unwrap();
        assert_eq!(many[1], &body[70000..70010]);
        assert_eq!(key_id_of(raw.as_ref(), &p).await.unwrap().unwrap(), enc.check().await.unwrap());
    }

    #[tokio::test]
    async fn multipart_uploads_are_chunked_the_same_way() {
        let (raw, enc) = stores();
        let p = Path::from("big.snap");
        let body = data(PART + 3 * sealed::CHUNK + 17);
        let mut up = enc.put_multipart(&p).await.unwrap();
        for piece in body.chunks(1_000_003) {
            up.put_part(Bytes::copy_from_slice(piece).into()).await.unwrap();
        }
        up.complete().await.unwrap();
        assert_eq!(enc.get(&p).await.unwrap().bytes().await.unwrap(), body);
        let stored = raw.get(&p).await.unwrap().bytes().await.unwrap();
        assert_eq!(&stored[..8], sealed::MAGIC);
        // An exact multiple of the chunk size, and nothing at all.
        for n in [2 * sealed::CHUNK, 0] {
            let mut up = enc.put_multipart(&p).await.unwrap();
            up.put_part(Bytes::from(data(n)).into()).await.unwrap();
            up.complete().await.unwrap();
            assert_eq!(enc.get(&p).await.unwrap().bytes().await.unwrap(), data(n));
        }
    }

    #[tokio::test]
    async fn changed_moved_and_plaintext_objects_are_refused_naming_them() {
        let (raw, enc) = stores();
        let p = Path::from("epochs/1/wal/a.seg");
        enc.put(&p, data(1000).into()).await.unwrap();
        let stored = raw.get(&p).await.unwrap().bytes().await.unwrap();
        let mut bad = stored.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        raw.put(&p, bad.into()).await.unwrap();
        let e = crate::error_chain(&enc.get(&p).await.unwrap().bytes().await.unwrap_err());
        assert!(e.contains("epochs/1/wal/a.seg") && e.contains("fails authentication"), "{e}");
        let moved = Path::from("epochs/1/wal/b.seg");
        raw.put(&moved, stored.clone().into()).await.unwrap();
        assert!(enc.get(&moved).await.unwrap().bytes().await.is_err());
        raw.put(&p, stored.slice(..stored.len() - 1).into()).await.unwrap();
        assert!(enc.get(&p).await.unwrap().bytes().await.is_err());
        raw.put(&p, "plain".into()).await.unwrap();
        let e = crate::error_chain(&enc.get(&p).await.unwrap_err());
        assert!(e.contains("epochs/1/wal/a.seg is not encrypted"), "{e}");
        // Another key cannot read it.
        raw.put(&p, stored.into()).await.unwrap();
        let other = EncryptedStore::new(raw.clone(), Arc::new(KeyFile::from_key(std::path::Path::new("k2"), [6u8; 32])));
        let e = crate::error_chain(&other.get(&p).await.unwrap_err());
        assert!(e.contains("epochs/1/wal/a.seg: cannot unwrap its data key"), "{e}");
    }

    #[tokio::test]
    async fn conditional_puts_pass_through() {
        let (_, enc) = stores();
        let p = Path::from("cluster.json");
        let first = enc.put_opts(&p, "v1".into(), PutMode::Create.into()).await.unwrap();
        let again = enc.put_opts(&p, "x".into(), PutMode::Create.into()).await;
        assert!(matches!(again, Err(object_store::Error::AlreadyExists { .. })), "{again:?}");
        let got = enc.get(&p).await.unwrap();
        assert_eq!(got.meta.e_tag, first.e_tag);
        let v1 = UpdateVersion {
            e_tag: first.e_tag,
            version: first.version,
        };
        enc.put_opts(&p, "v2".into(), PutMode::Update(v1.clone()).into()).await.unwrap();
        let stale = enc.put_opts(&p, "v3".into(), PutMode::Update(v1).into()).await;
        assert!(matches!(stale, Err(object_store::Error::Precondition { .. })), "{stale:?}");
        assert_eq!(enc.get(&p).await.unwrap().bytes().await.unwrap(), "v2");
    }

    #[tokio::test]
    async fn a_data_key_is_reused_and_cached() {
        let (raw, enc) = stores();
        for i in 0..3 {
            enc.put(&Path::from(format!("o{i}")), "x".into()).await.unwrap();
        }
        let wrapped = |i: usize| {
            let raw = raw.clone();
            async move {
                let b = raw.get(&Path::from(format!("o{i}"))).await.unwrap().bytes().await.unwrap();
                Header::decode(&b[..Header::prefix_len(&b).unwrap()]).unwrap()
            }
        };
        let (a, b) = (wrapped(0).await, wrapped(2).await);
        assert_eq!(a.wrapped_key, b.wrapped_key, "one data key for all three");
        assert_ne!(a.salt, b.salt, "each object its own salt");
    }
}
