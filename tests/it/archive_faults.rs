//! Object storage misbehaving under a running node (in process, through `FaultyStore`):
//! outages, slow puts and puts whose success response is lost.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common;
use netsy::config::Config;
use netsy_testkit::{Faults, FaultyStore};
use object_store::ObjectStore;

/// A node serving in this process over `store`; stopped when dropped.
struct InProcess {
    endpoint: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    async fn start(store: Arc<dyn ObjectStore>, extra: &str) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(r#"{{ "cluster_id": "faults", "storage": {{ "provider": "memory" }}, {extra} }}"#);
        let client = common::free_port();
        let data = dir.path().join("data");
        let env = |name: &str| -> Option<String> {
            match name {
                "NETSY_DATA_DIR" => Some(data.display().to_string()),
                "NETSY_BIND_CLIENT" => Some(format!("127.0.0.1:{client}")),
                "NETSY_BIND_PEER" => Some(format!("127.0.0.1:{}", common::free_port())),
                "NETSY_BIND_HEALTH" => Some(format!("127.0.0.1:{}", common::free_port())),
                _ => None,
            }
        };
        let config = Config::from_str(&text, std::path::Path::new("test.jsonc"), &env).unwrap();
        let node = netsy::server::Node::start_with_store(config, store).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            netsy::server::serve(node, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let endpoint = format!("http://127.0.0.1:{client}");
        let deadline = Instant::now() + Duration::from_secs(20);
        // etcd-client connects lazily, so wait for the port itself to accept.
        while tokio::net::TcpStream::connect(("127.0.0.1", client)).await.is_err() {
            assert!(Instant::now() < deadline, "node did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        InProcess {
            endpoint,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint.clone()], None).await.unwrap()
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

fn faulty() -> (Arc<dyn ObjectStore>, Arc<dyn ObjectStore>, Arc<Faults>) {
    let inner: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let faulty = FaultyStore::new(inner.clone());
    let faults = faulty.faults.clone();
    (Arc::new(faulty), inner, faults)
}

async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, timeout: Duration, mut cond: impl FnMut() -> F) {
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// quorum durability: an outage does not stop writes until the local backlog is full;
/// then writes fail with etcd's no-space error; after the outage the backlog uploads and
/// writes resume. Nothing acknowledged is lost: a fresh node restores all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_outage_buffers_locally_up_to_the_backlog_limit() {
    let (store, inner, faults) = faulty();
    let node = InProcess::start(store, r#""archive": { "max_backlog_bytes": 1048576 },"#).await;
    let mut c = node.client().await;
    c.put("before", "outage", None).await.unwrap();
    faults.outage.store(true, Ordering::Release);
    let value = vec![b'x'; 64 << 10];
    let mut acked = Vec::new();
    let mut refusal = None;
    for i in 0..400 {
        match c.put(format!("k{i:03}"), value.clone(), None).await {
            Ok(_) => acked.push(i),
            Err(e) => {
                refusal = Some(e.to_string());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refusal = refusal.expect("writes must stop once the backlog exceeds 1 MiB");
    assert!(refusal.contains("database space exceeded"), "{refusal}");
    assert!(acked.len() >= 16, "writes continued during the outage: {}", acked.len());

    faults.outage.store(false, Ordering::Release);
    wait_for("writes to resume", Duration::from_secs(30), || {
        let mut c = c.clone();
        async move { c.put("after", "outage", None).await.is_ok() }
    })
    .await;
    node.stop().await;

    let restored = InProcess::start(inner, "").await;
    let mut c = restored.client().await;
    for i in &acked {
        let r = c.get(format!("k{i:03}"), None).await.unwrap();
        assert_eq!(r.kvs().len(), 1, "acknowledged k{i:03} lost");
    }
    assert_eq!(c.get("after", None).await.unwrap().kvs().len(), 1);
    restored.stop().await;
}

/// object-storage durability: during an outage writes fail (etcd's timeout, code
/// Unavailable) instead of being acknowledged; slow puts and lost put responses only
/// slow writes down. A fresh node restores every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn object_storage_durability_never_acks_what_is_not_uploaded() {
    let (store, inner, faults) = faulty();
    let node = InProcess::start(store, r#""durability": "object-storage","#).await;
    let mut c = node.client().await;
    let mut acked = Vec::new();
    for i in 0..20 {
        c.put(format!("a{i}"), "v", None).await.unwrap();
        acked.push(format!("a{i}"));
    }

    faults.put_delay_ms.store(150, Ordering::Release);
    let started = Instant::now();
    c.put("slow", "v", None).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "the ack waited for the slow upload"
    );
    acked.push("slow".into());
    faults.put_delay_ms.store(0, Ordering::Release);

    faults.lose_put_responses.store(3, Ordering::Release);
    for i in 0..5 {
        c.put(format!("lost{i}"), "v", None).await.unwrap();
        acked.push(format!("lost{i}"));
    }
    assert_eq!(faults.lose_put_responses.load(Ordering::Acquire), 0, "the lost responses happened");

    faults.outage.store(true, Ordering::Release);
    let err = c
        .put("during", "outage", None)
        .await
        .expect_err("nothing is acknowledged during an outage");
    match &err {
        etcd_client::Error::GRpcStatus(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "{err}"),
        other => panic!("unexpected error {other}"),
    }
    faults.outage.store(false, Ordering::Release);
    wait_for("writes to resume", Duration::from_secs(30), || {
        let mut c = c.clone();
        async move { c.put("after", "outage", None).await.is_ok() }
    })
    .await;
    acked.push("after".into());
    node.stop().await;

    let restored = InProcess::start(inner, "").await;
    let mut c = restored.client().await;
    for k in &acked {
        assert_eq!(c.get(k.as_str(), None).await.unwrap().kvs().len(), 1, "acknowledged {k} lost");
    }
    restored.stop().await;
}

/// object-storage durability: a write is not visible (to gets, serializable or not, and
/// to watches) before it is in object storage. Every member may lose its disk, and the
/// cluster then comes back from object storage alone: what was seen before must be
/// there. It used to be applied (and watched and read) as soon as it was committed, and
/// a restore after every disk was lost handed its revision to another write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn object_storage_durability_shows_nothing_before_it_is_uploaded() {
    use etcd_client::{GetOptions, WatchOptions};
    let (store, _inner, faults) = faulty();
    let node = InProcess::start(store, r#""durability": "object-storage","#).await;
    let mut c = node.client().await;
    let rev = c.put("before", "v", None).await.unwrap().header().unwrap().revision();
    let mut events = c
        .watch("held", Some(WatchOptions::new().with_start_revision(rev + 1)))
        .await
        .unwrap();
    assert!(events.message().await.unwrap().unwrap().created());

    faults.outage.store(true, Ordering::Release);
    let pending = tokio::spawn({
        let mut c = c.clone();
        async move { c.put("held", "v", None).await }
    });
    // Long enough for the entry to commit; it must stay invisible.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let serializable = c.get("held", Some(GetOptions::new().with_serializable())).await.unwrap();
    assert!(
        serializable.kvs().is_empty(),
        "a serializable get saw a write not in object storage"
    );
    assert!(
        serializable.header().unwrap().revision() <= rev,
        "the revision moved past what is uploaded"
    );
    let linearizable = tokio::time::timeout(Duration::from_millis(500), c.get("held", None)).await;
    assert!(
        !linearizable.as_ref().is_ok_and(|r| r.as_ref().is_ok_and(|r| !r.kvs().is_empty())),
        "a get saw a write not in object storage: {linearizable:?}"
    );
    let watched = tokio::time::timeout(Duration::from_millis(300), events.message()).await;
    assert!(watched.is_err(), "a watch saw a write not in object storage: {watched:?}");

    faults.outage.store(false, Ordering::Release);
    let got = tokio::time::timeout(Duration::from_secs(30), events.message())
        .await
        .expect("the write is watched once uploaded")
        .unwrap()
        .expect("an event");
    assert_eq!(got.events()[0].kv().unwrap().key(), b"held");
    assert_eq!(c.get("held", None).await.unwrap().kvs().len(), 1);
    // The put itself either timed out during the outage or was acknowledged after it.
    let _ = pending.await.unwrap();
    node.stop().await;
}
