//! Building the object store from the config, and the wrapper layers around it.
//!
//! - `s3` / `gcs`: object_store's clients, credentials from the standard chains (AWS env
//!   keys, IRSA web-identity token file, instance metadata; `GOOGLE_APPLICATION_CREDENTIALS`
//!   or the metadata server for Workload Identity). Transient HTTP failures are retried
//!   with exponential backoff by the client (`RetryConfig`).
//! - `file`: a local directory, fsynced; `memory`: in-process, for tests.
//! - `key_prefix` applies to every backend (`PrefixStore`).
//! - `MeteredStore` counts requests, bytes, errors and latency per operation.
//! - `EncryptedStore` (src/archive/encrypt.rs), when `encryption` is set, encrypts every
//!   object on its way out and authenticates it on its way back, above the key prefix
//!   (an object is bound to its path within the archive) and the metering (which counts
//!   the requests and bytes really sent).
//! - `ReadOnlyStore` refuses every write and delete: a clone or a standby reads another
//!   cluster's archive through it, so nothing it does can change that archive.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    Attribute, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RetryConfig,
};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

use crate::config::StorageConfig;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object storage ({provider}): {source}")]
    Build {
        provider: String,
        #[source]
        source: object_store::Error,
    },
    #[error("object storage ({provider}): cannot create {path}: {source}")]
    Dir {
        provider: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("object storage ({provider}): unknown provider {provider:?}")]
    UnknownProvider { provider: String },
    #[error("archive encryption: {source}")]
    Encryption {
        #[source]
        source: super::keys::KeyError,
    },
}

/// `build`, then, with encryption configured, one `Status` call to the key service: an
/// unreachable or unhealthy KMS plugin fails here, naming its socket.
pub async fn open(cfg: &StorageConfig) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let (store, encrypted) = build_parts(cfg)?;
    if let Some(e) = encrypted {
        let key_id = e.check().await.map_err(|source| StoreError::Encryption { source })?;
        tracing::info!(%key_id, "archive encryption on");
    }
    Ok(store)
}

/// The store without its encryption layer: the objects as stored (to read their
/// encryption headers).
pub fn build_stored(cfg: &StorageConfig) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let mut plain = cfg.clone();
    plain.encryption = None;
    build(&plain)
}

/// Builds the configured object store, metered, under `key_prefix`, encrypted when
/// `encryption` is set. Needs a Tokio runtime when a KMS plugin is configured (its
/// connection is made on first use); `open` also checks the plugin.
pub fn build(cfg: &StorageConfig) -> Result<Arc<dyn ObjectStore>, StoreError> {
    Ok(build_parts(cfg)?.0)
}

type Built = (Arc<dyn ObjectStore>, Option<Arc<super::encrypt::EncryptedStore>>);

fn build_parts(cfg: &StorageConfig) -> Result<Built, StoreError> {
    let err = |source: object_store::Error| StoreError::Build {
        provider: cfg.provider.clone(),
        source,
    };
    let retry = RetryConfig {
        max_retries: 10,
        retry_timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let mut cas_lock = None;
    let inner: Arc<dyn ObjectStore> = match cfg.provider.as_str() {
        "s3" => {
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(&cfg.bucket_name)
                .with_retry(retry);
            if let Some(region) = &cfg.region {
                b = b.with_region(region);
            }
            if let Some(endpoint) = &cfg.endpoint {
                b = b.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
            }
            if cfg.force_path_style {
                b = b.with_virtual_hosted_style_request(false);
            }
            match cfg.sse.as_deref() {
                Some("aws:kms") => b = b.with_sse_kms_encryption(cfg.sse_kms_key_id.clone().unwrap_or_default()),
                Some(other) => {
                    let key = "aws_server_side_encryption".parse().map_err(err)?;
                    b = b.with_config(key, other)
                }
                None => {}
            }
            Arc::new(b.build().map_err(err)?)
        }
        "gcs" => {
            let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(&cfg.bucket_name)
                .with_retry(retry);
            if let Some(endpoint) = &cfg.endpoint {
                // The XML API's base URL: requests go to `{endpoint}/{bucket}/{object}`.
                b = b.with_base_url(endpoint.trim_end_matches('/'));
                if endpoint.starts_with("http://") {
                    // Only this: client options from the GOOGLE_* environment stay.
                    let allow_http = object_store::gcp::GoogleConfigKey::Client(object_store::ClientConfigKey::AllowHttp);
                    b = b.with_config(allow_http, "true");
                }
            }
            Arc::new(b.build().map_err(err)?)
        }
        "file" => {
            let dir = cfg.path.clone().unwrap_or_default();
            std::fs::create_dir_all(&dir).map_err(|source| StoreError::Dir {
                provider: cfg.provider.clone(),
                path: dir.display().to_string(),
                source,
            })?;
            let local = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(err)?
                .with_fsync(true);
            cas_lock = Some(dir.join(".netsy-cas.lock"));
            Arc::new(local)
        }
        "memory" => Arc::new(object_store::memory::InMemory::new()),
        _ => {
            return Err(StoreError::UnknownProvider {
                provider: cfg.provider.clone(),
            })
        }
    };
    let inner: Arc<dyn ObjectStore> = if cfg.storage_class.is_some() || cas_lock.is_some() {
        Arc::new(WritePolicyStore {
            inner,
            storage_class: cfg.storage_class.clone(),
            cas_lock,
        })
    } else {
        inner
    };
    let prefixed: Arc<dyn ObjectStore> = if cfg.key_prefix.is_empty() {
        inner
    } else {
        Arc::new(PrefixStore::new(inner, cfg.key_prefix.as_str()))
    };
    let metered: Arc<dyn ObjectStore> = Arc::new(MeteredStore::new(prefixed));
    match &cfg.encryption {
        None => Ok((metered, None)),
        Some(e) => {
            let keys = super::keys::from_config(e).map_err(|source| StoreError::Encryption { source })?;
            let enc = Arc::new(super::encrypt::EncryptedStore::new(metered, keys.into()));
            Ok((enc.clone(), Some(enc)))
        }
    }
}

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "netsy_object_store_requests_total",
            "Object storage requests by operation and outcome (ok, not_found, conflict, error).",
        ),
        &["op", "outcome"],
    )
    .expect("valid metric");
    let _ = crate::metrics::REGISTRY.register(Box::new(c.clone()));
    c
});
static BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new("netsy_object_store_bytes_total", "Bytes written to or read from object storage."),
        &["direction"],
    )
    .expect("valid metric");
    let _ = crate::metrics::REGISTRY.register(Box::new(c.clone()));
    c
});
static LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    let h = HistogramVec::new(
        HistogramOpts::new("netsy_object_store_request_duration_seconds", "Object storage request latency.")
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 15).expect("valid buckets")),
        &["op"],
    )
    .expect("valid metric");
    let _ = crate::metrics::REGISTRY.register(Box::new(h.clone()));
    h
});

/// The `outcome` label of a request: `ok`; the answers the archive asks for and expects
/// (`not_found` for a missing object, `conflict` when a conditional write or read finds
/// the object changed or already there); `error` for every real failure (network,
/// credentials, throttling, the service's errors).
fn outcome<T>(result: &object_store::Result<T>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(object_store::Error::NotFound { .. }) => "not_found",
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } | object_store::Error::NotModified { .. },
        ) => "conflict",
        Err(_) => "error",
    }
}

fn observe<T>(op: &str, started: Instant, result: &object_store::Result<T>) {
    REQUESTS.with_label_values(&[op, outcome(result)]).inc();
    LATENCY.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
}

/// Counts requests, bytes, errors and latency per operation.
#[derive(Debug)]
pub struct MeteredStore {
    inner: Arc<dyn ObjectStore>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        MeteredStore { inner }
    }
}

impl fmt::Display for MeteredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Metered({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for MeteredStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> object_store::Result<PutResult> {
        let started = Instant::now();
        let len = payload.content_length() as u64;
        let r = self.inner.put_opts(location, payload, opts).await;
        if r.is_ok() {
            BYTES.with_label_values(&["out"]).inc_by(len);
        }
        observe("put", started, &r);
        r
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> object_store::Result<Box<dyn MultipartUpload>> {
        let started = Instant::now();
        let r = self.inner.put_multipart_opts(location, opts).await;
        observe("put_multipart", started, &r);
        r
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let started = Instant::now();
        let r = self.inner.get_opts(location, options).await;
        if let Ok(g) = &r {
            BYTES.with_label_values(&["in"]).inc_by(g.range.end - g.range.start);
        }
        observe("get", started, &r);
        r
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        let started = Instant::now();
        let r = self.inner.get_ranges(location, ranges).await;
        observe("get_ranges", started, &r);
        r
    }

    fn delete_stream(&self, locations: BoxStream<'static, object_store::Result<Path>>) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner
            .delete_stream(locations)
            .map(|r| {
                REQUESTS.with_label_values(&["delete", outcome(&r)]).inc();
                r
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        REQUESTS.with_label_values(&["list", "ok"]).inc();
        self.inner.list(prefix)
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        REQUESTS.with_label_values(&["list", "ok"]).inc();
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let started = Instant::now();
        let r = self.inner.list_with_delimiter(prefix).await;
        observe("list", started, &r);
        r
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        let started = Instant::now();
        let r = self.inner.copy_opts(from, to, options).await;
        observe("copy", started, &r);
        r
    }
}

/// How writes are adjusted on the way to the backend: the configured storage class on
/// every object, and, for the local directory backend, `PutMode::Update`, which
/// `LocalFileSystem` lacks: compare-and-swap of the e-tag (inode, mtime and size, which
/// every replacing write changes) under an exclusive `flock` on `.netsy-cas.lock` in the
/// directory, so processes sharing the directory on one host cannot both win.
#[derive(Debug)]
struct WritePolicyStore {
    inner: Arc<dyn ObjectStore>,
    storage_class: Option<String>,
    /// `Some(lock file)`: emulate `PutMode::Update` (local directory backend).
    cas_lock: Option<std::path::PathBuf>,
}

impl WritePolicyStore {
    async fn lock(path: std::path::PathBuf) -> object_store::Result<std::fs::File> {
        let generic = |e: std::io::Error| object_store::Error::Generic {
            store: "LocalCas",
            source: Box::new(e),
        };
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::options().create(true).truncate(false).write(true).open(&path)?;
            f.lock()?;
            Ok(f)
        })
        .await
        .map_err(|e| generic(std::io::Error::other(e)))?
        .map_err(generic)
    }

    /// `PutMode::Update` as compare-and-swap under the lock file.
    async fn compare_and_swap(
        &self,
        lock: std::path::PathBuf,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let PutMode::Update(expected) = &opts.mode else {
            return self.inner.put_opts(location, payload, opts).await;
        };
        let _guard = Self::lock(lock).await?;
        let current = match self.inner.head(location).await {
            Ok(meta) => meta,
            Err(object_store::Error::NotFound { path, source }) => {
                return Err(object_store::Error::Precondition { path, source });
            }
            Err(e) => return Err(e),
        };
        if current.e_tag != expected.e_tag {
            return Err(object_store::Error::Precondition {
                path: location.to_string(),
                source: format!("e-tag {:?} is not the expected {:?}", current.e_tag, expected.e_tag).into(),
            });
        }
        opts.mode = PutMode::Overwrite;
        self.inner.put_opts(location, payload, opts).await
    }
}

impl fmt::Display for WritePolicyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WritePolicy({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for WritePolicyStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, mut opts: PutOptions) -> object_store::Result<PutResult> {
        if let Some(class) = &self.storage_class {
            opts.attributes.insert(Attribute::StorageClass, class.clone().into());
        }
        match &self.cas_lock {
            Some(lock) => self.compare_and_swap(lock.clone(), location, payload, opts).await,
            None => self.inner.put_opts(location, payload, opts).await,
        }
    }

    async fn put_multipart_opts(&self, location: &Path, mut opts: PutMultipartOptions) -> object_store::Result<Box<dyn MultipartUpload>> {
        if let Some(class) = &self.storage_class {
            opts.attributes.insert(Attribute::StorageClass, class.clone().into());
        }
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
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

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// A write or delete refused by a `ReadOnlyStore`.
#[derive(Debug, thiserror::Error)]
#[error("{op} refused: this archive is only read here")]
pub struct ReadOnlyWrite {
    pub op: &'static str,
}

/// Reads go through; every write and delete is refused with `PermissionDenied`, so a
/// command that must only read an archive (clone, standby) cannot change it.
#[derive(Debug)]
pub struct ReadOnlyStore {
    inner: Arc<dyn ObjectStore>,
}

impl ReadOnlyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        ReadOnlyStore { inner }
    }
}

fn refused(op: &'static str, path: &Path) -> object_store::Error {
    object_store::Error::PermissionDenied {
        path: path.to_string(),
        source: Box::new(ReadOnlyWrite { op }),
    }
}

impl fmt::Display for ReadOnlyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReadOnly({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for ReadOnlyStore {
    async fn put_opts(&self, location: &Path, _: PutPayload, _: PutOptions) -> object_store::Result<PutResult> {
        Err(refused("put", location))
    }

    async fn put_multipart_opts(&self, location: &Path, _: PutMultipartOptions) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(refused("put", location))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, object_store::Result<Path>>) -> BoxStream<'static, object_store::Result<Path>> {
        locations.map(|p| Err(p.map_or_else(|e| e, |p| refused("delete", &p)))).boxed()
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

    async fn copy_opts(&self, _: &Path, to: &Path, _: CopyOptions) -> object_store::Result<()> {
        Err(refused("copy", to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::UpdateVersion;

    #[test]
    fn expected_answers_are_not_counted_as_errors() {
        let err = |e: object_store::Error| outcome::<()>(&Err(e));
        let source = || -> Box<dyn std::error::Error + Send + Sync> { "x".into() };
        assert_eq!(outcome(&Ok(())), "ok");
        assert_eq!(
            err(object_store::Error::NotFound {
                path: "a".into(),
                source: source()
            }),
            "not_found"
        );
        assert_eq!(
            err(object_store::Error::AlreadyExists {
                path: "a".into(),
                source: source()
            }),
            "conflict"
        );
        assert_eq!(
            err(object_store::Error::Precondition {
                path: "a".into(),
                source: source()
            }),
            "conflict"
        );
        assert_eq!(
            err(object_store::Error::Generic {
                store: "S3",
                source: source()
            }),
            "error"
        );
    }

    fn cfg(provider: &str, path: Option<std::path::PathBuf>, prefix: &str) -> StorageConfig {
        StorageConfig {
            provider: provider.into(),
            bucket_name: String::new(),
            key_prefix: prefix.into(),
            path,
            region: None,
            endpoint: None,
            force_path_style: false,
            storage_class: None,
            sse: None,
            sse_kms_key_id: None,
            encryption: None,
        }
    }

    /// Create-only puts fence a second writer; updates need the current version.
    #[tokio::test]
    async fn conditional_puts_on_memory() {
        let store = build(&cfg("memory", None, "")).unwrap();
        let p = Path::from("cluster.json");
        let first = store.put_opts(&p, "v1".into(), PutMode::Create.into()).await.unwrap();
        let again = store.put_opts(&p, "other".into(), PutMode::Create.into()).await;
        assert!(matches!(again, Err(object_store::Error::AlreadyExists { .. })), "{again:?}");
        let v1 = UpdateVersion {
            e_tag: first.e_tag.clone(),
            version: first.version.clone(),
        };
        store.put_opts(&p, "v2".into(), PutMode::Update(v1.clone()).into()).await.unwrap();
        let stale = store.put_opts(&p, "v3".into(), PutMode::Update(v1).into()).await;
        assert!(matches!(stale, Err(object_store::Error::Precondition { .. })), "{stale:?}");
        assert_eq!(store.get(&p).await.unwrap().bytes().await.unwrap(), "v2");
    }

    #[tokio::test]
    async fn file_provider_applies_the_key_prefix_and_fences_creates() {
        let dir = tempfile::tempdir().unwrap();
        let store = build(&cfg("file", Some(dir.path().join("objects")), "clusters/prod")).unwrap();
        let p = Path::from("epochs/1/wal/a.seg");
        store.put_opts(&p, "data".into(), PutMode::Create.into()).await.unwrap();
        assert!(dir.path().join("objects/clusters/prod/epochs/1/wal/a.seg").exists());
        let again = store.put_opts(&p, "x".into(), PutMode::Create.into()).await;
        assert!(matches!(again, Err(object_store::Error::AlreadyExists { .. })), "{again:?}");
        let listed: Vec<_> = store.list(Some(&Path::from("epochs"))).collect().await;
        assert_eq!(listed.len(), 1);
    }

    /// The local directory backend supports compare-and-swap updates.
    #[tokio::test]
    async fn file_provider_supports_conditional_updates() {
        let dir = tempfile::tempdir().unwrap();
        let store = build(&cfg("file", Some(dir.path().to_path_buf()), "")).unwrap();
        let p = Path::from("cluster.json");
        let first = store.put_opts(&p, "v1".into(), PutMode::Create.into()).await.unwrap();
        let v1 = UpdateVersion {
            e_tag: first.e_tag.clone(),
            version: first.version.clone(),
        };
        store
            .put_opts(&p, "v2 longer".into(), PutMode::Update(v1.clone()).into())
            .await
            .unwrap();
        let stale = store.put_opts(&p, "v3".into(), PutMode::Update(v1).into()).await;
        assert!(matches!(stale, Err(object_store::Error::Precondition { .. })), "{stale:?}");
        assert_eq!(store.get(&p).await.unwrap().bytes().await.unwrap(), "v2 longer");
        let missing = UpdateVersion {
            e_tag: Some("x".into()),
            version: None,
        };
        let absent = store
            .put_opts(&Path::from("nope.json"), "v".into(), PutMode::Update(missing).into())
            .await;
        assert!(matches!(absent, Err(object_store::Error::Precondition { .. })), "{absent:?}");
    }

    /// GCS wiring. No request is made here (tests/it/object_store_gcs.rs runs the data
    /// path against an emulator, with metadata-server credentials). What is checked:
    /// the credentials file named by GOOGLE_APPLICATION_CREDENTIALS (the
    /// non-Workload-Identity path) is read when the store is built, a broken one is a
    /// clear error, and without it the client falls back to the metadata server
    /// (Workload Identity) without failing at startup.
    #[tokio::test]
    async fn gcs_reads_application_credentials_at_build() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg("gcs", None, "clusters/a");
        c.bucket_name = "bucket".into();
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{ not json").unwrap();
        std::env::set_var("GOOGLE_APPLICATION_CREDENTIALS", &bad);
        let e = build(&c).unwrap_err().to_string();
        assert!(e.starts_with("object storage (gcs):"), "{e}");
        let user = dir.path().join("user.json");
        std::fs::write(
            &user,
            r#"{"type": "authorized_user", "client_id": "id", "client_secret": "secret", "refresh_token": "token"}"#,
        )
        .unwrap();
        std::env::set_var("GOOGLE_APPLICATION_CREDENTIALS", &user);
        build(&c).expect("a valid credentials file");
        std::env::remove_var("GOOGLE_APPLICATION_CREDENTIALS");
        build(&c).expect("the metadata server is used lazily");
    }

    #[tokio::test]
    async fn bad_settings_are_clear_errors() {
        let e = build(&cfg("nope", None, "")).unwrap_err().to_string();
        assert_eq!(e, "object storage (nope): unknown provider \"nope\"");
    }

    #[tokio::test]
    async fn a_read_only_store_reads_and_refuses_every_change() {
        let inner: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let path = Path::from("cluster.json");
        inner.put(&path, "x".into()).await.unwrap();
        let ro = ReadOnlyStore::new(inner.clone());
        assert_eq!(ro.get(&path).await.unwrap().bytes().await.unwrap().as_ref(), b"x");
        assert_eq!(ro.list(None).collect::<Vec<_>>().await.len(), 1);
        let denied = |r: object_store::Result<()>| matches!(r, Err(object_store::Error::PermissionDenied { .. }));
        assert!(denied(ro.put(&path, "y".into()).await.map(|_| ())));
        assert!(denied(
            ro.put_opts(&Path::from("new"), "y".into(), PutMode::Create.into())
                .await
                .map(|_| ())
        ));
        assert!(denied(ro.put_multipart(&path).await.map(|_| ())));
        assert!(denied(ro.delete(&path).await));
        assert!(denied(ro.copy(&path, &Path::from("other")).await));
        let err = ro.delete(&path).await.unwrap_err();
        assert!(
            crate::error_chain(&err).contains("delete refused: this archive is only read here"),
            "{}",
            crate::error_chain(&err)
        );
        // Nothing changed underneath.
        assert_eq!(inner.get(&path).await.unwrap().bytes().await.unwrap().as_ref(), b"x");
        assert_eq!(inner.list(None).collect::<Vec<_>>().await.len(), 1);
    }
}
