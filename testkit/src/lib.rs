//! Test tools for netsy that are not part of the shipped library. `FaultyStore` wraps
//! any object store and fails on command (`Faults`): failed puts, puts whose success
//! response is lost after the write, slow puts and full outages. Tests pass it to
//! `netsy::server::Node::start_with_store` or to the archive functions directly.
//! `never_sent` tells a client's request that never left it (for the tests and the
//! bench that count what etcd's client would retry).

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
    PutResult,
};

/// Switches for `FaultyStore`, shared with the test that drives it.
#[derive(Debug, Default)]
pub struct Faults {
    /// The next N puts fail without writing.
    pub fail_puts: AtomicUsize,
    /// The next N puts are written but report a failure (a lost response).
    pub lose_put_responses: AtomicUsize,
    /// Every put waits this long first (milliseconds).
    pub put_delay_ms: AtomicU64,
    /// Every operation fails while set.
    pub outage: AtomicBool,
    /// Successful puts so far.
    pub puts: AtomicUsize,
}

impl Faults {
    fn take(counter: &AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: format!("injected fault: {what}").into(),
    }
}

/// An object store that fails on command (see `Faults`).
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    pub faults: Arc<Faults>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        FaultyStore {
            inner,
            faults: Arc::new(Faults::default()),
        }
    }

    fn check_outage(&self) -> object_store::Result<()> {
        if self.faults.outage.load(Ordering::Acquire) {
            return Err(injected("outage"));
        }
        Ok(())
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> object_store::Result<PutResult> {
        let delay = self.faults.put_delay_ms.load(Ordering::Acquire);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        self.check_outage()?;
        if Faults::take(&self.faults.fail_puts) {
            return Err(injected("put failed"));
        }
        let r = self.inner.put_opts(location, payload, opts).await?;
        self.faults.puts.fetch_add(1, Ordering::AcqRel);
        if Faults::take(&self.faults.lose_put_responses) {
            return Err(injected("put response lost after the write"));
        }
        Ok(r)
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check_outage()?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.check_outage()?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.check_outage()?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, object_store::Result<Path>>) -> BoxStream<'static, object_store::Result<Path>> {
        if self.faults.outage.load(Ordering::Acquire) {
            return locations.map(|_| Err(injected("outage"))).boxed();
        }
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if self.faults.outage.load(Ordering::Acquire) {
            return futures::stream::once(async { Err(injected("outage")) }).boxed();
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.check_outage()?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.check_outage()?;
        self.inner.copy_opts(from, to, options).await
    }
}

/// A loopback port nothing listens on, that no other test process of this run was handed.
/// Tests run as parallel processes (nextest), of several packages: each port is claimed
/// with a create-only marker file in one shared directory, so two tests never race for a
/// port between picking and binding it. Ports come from below Linux's ephemeral range
/// (32768+), so a client connection's source port cannot take one in that window either.
pub fn free_port() -> u16 {
    use std::time::Duration;
    let claims = std::env::temp_dir().join("netsy-test-ports");
    let _ = std::fs::create_dir_all(&claims);
    loop {
        let port = 12000 + rand::random::<u16>() % 20000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let marker = claims.join(port.to_string());
        let stale = std::fs::metadata(&marker)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(1800));
        if stale {
            let _ = std::fs::remove_file(&marker);
        }
        if std::fs::OpenOptions::new().write(true).create_new(true).open(&marker).is_ok() {
            return port;
        }
    }
}

/// Whether a failed gRPC request (its error, e.g. a `tonic::Status`) never left the
/// client: no connection could be made, or the connection closed before it was sent
/// (hyper's "canceled", which tonic reports as `Cancelled`, "connection closed"). gRPC's
/// own clients, etcd's among them, send such a request again transparently, whatever it
/// was; one cut off in flight (a broken pipe, a reset) is not this.
pub fn never_sent(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            return h.is_canceled();
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    /// An error that wraps another, as tonic's transport error wraps hyper's or io's.
    #[derive(Debug)]
    struct Wrapping(std::io::Error);

    impl fmt::Display for Wrapping {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "transport error")
        }
    }

    impl std::error::Error for Wrapping {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_refused_connection_is_never_sent_and_a_reset_is_not() {
        let refused = Wrapping(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(never_sent(&refused));
        let reset = Wrapping(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!never_sent(&reset), "cut off in flight: it may have been applied");
        assert!(!never_sent(&fmt::Error), "no cause known");
    }

    #[tokio::test]
    async fn faulty_store_injects_failures_lost_responses_and_outages() {
        let faulty = FaultyStore::new(Arc::new(object_store::memory::InMemory::new()));
        let faults = faulty.faults.clone();
        let p = Path::from("seg");
        faults.fail_puts.store(1, Ordering::Release);
        assert!(faulty.put(&p, "a".into()).await.is_err());
        assert!(faulty.get(&p).await.is_err(), "a failed put writes nothing");
        faults.lose_put_responses.store(1, Ordering::Release);
        assert!(faulty.put(&p, "b".into()).await.is_err());
        assert_eq!(faulty.get(&p).await.unwrap().bytes().await.unwrap(), "b", "the write happened");
        faults.outage.store(true, Ordering::Release);
        assert!(faulty.get(&p).await.is_err());
        assert!(faulty.list(None).next().await.unwrap().is_err());
        faults.outage.store(false, Ordering::Release);
        faulty.put(&p, "c".into()).await.unwrap();
        assert_eq!(faults.puts.load(Ordering::Acquire), 2);
    }
}
