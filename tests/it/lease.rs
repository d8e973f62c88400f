//! Black-box etcd Lease semantics over gRPC with the `etcd-client` crate.

use std::time::Duration;

use crate::common::Netsy;
use etcd_client::{Client, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, WatchOptions, WatchStream};

fn grpc_err(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

async fn next_events(w: &mut WatchStream) -> etcd_client::WatchResponse {
    loop {
        let r = tokio::time::timeout(Duration::from_secs(15), w.message())
            .await
            .expect("timed out waiting for watch events")
            .unwrap()
            .unwrap();
        if !r.events().is_empty() {
            return r;
        }
        assert!(r.created(), "unexpected watch response {r:?}");
    }
}

async fn wait_for_key_gone(c: &mut Client, key: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !c.get(key, None).await.unwrap().kvs().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "{key} was not deleted by lease expiry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn grant_ids_ttls_and_errors() {
    let n = Netsy::start();
    let mut c = n.client().await;
    let g = c.lease_grant(60, None).await.unwrap();
    assert!(g.id() > 0, "server-chosen ids are positive");
    assert_eq!(g.ttl(), 60);
    let g2 = c.lease_grant(60, None).await.unwrap();
    assert_ne!(g.id(), g2.id());

    let mine = c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(777))).await.unwrap();
    assert_eq!((mine.id(), mine.ttl()), (777, 30));
    let (code, msg) = grpc_err(c.lease_grant(5, Some(LeaseGrantOptions::new().with_id(777))).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (tonic::Code::FailedPrecondition, "etcdserver: lease already exists")
    );

    let (code, msg) = grpc_err(c.lease_grant(9_000_000_001, None).await.unwrap_err());
    assert_eq!((code, msg.as_str()), (tonic::Code::OutOfRange, "etcdserver: too large lease TTL"));
    assert_eq!(c.lease_grant(1, None).await.unwrap().ttl(), 2, "TTLs are raised to etcd's minimum");
    assert_eq!(c.lease_grant(0, None).await.unwrap().ttl(), 2);

    let (code, msg) = grpc_err(c.put("k", "v", Some(PutOptions::new().with_lease(4242))).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (tonic::Code::NotFound, "etcdserver: requested lease not found")
    );
    assert!(c.get("k", None).await.unwrap().kvs().is_empty(), "a failed put changes nothing");

    let listed: Vec<i64> = c.leases().await.unwrap().leases().iter().map(|l| l.id()).collect();
    assert!(listed.contains(&g.id()) && listed.contains(&777) && listed.len() == 5, "{listed:?}");
}

#[tokio::test]
async fn revoke_deletes_attached_keys_in_one_revision_with_prev_kv() {
    let n = Netsy::start();
    let mut c = n.client().await;
    let g = c.lease_grant(60, None).await.unwrap();
    c.put("l/1", "a", Some(PutOptions::new().with_lease(g.id()))).await.unwrap();
    c.put("l/2", "b", Some(PutOptions::new().with_lease(g.id()))).await.unwrap();
    c.put("l/3", "c", None).await.unwrap();
    let ttl = c
        .lease_time_to_live(g.id(), Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 60);
    assert!(ttl.ttl() > 55 && ttl.ttl() <= 60);
    assert_eq!(ttl.keys(), [b"l/1".to_vec(), b"l/2".to_vec()]);

    let mut w = c
        .watch("l/", Some(WatchOptions::new().with_prefix().with_prev_key()))
        .await
        .unwrap();
    let rev = c.lease_revoke(g.id()).await.unwrap().header().unwrap().revision();
    let r = next_events(&mut w).await;
    assert_eq!(r.events().len(), 2, "both deletes arrive together");
    for (ev, value) in r.events().iter().zip([b"a", b"b"]) {
        assert_eq!(ev.event_type(), EventType::Delete);
        assert_eq!(ev.kv().unwrap().mod_revision(), rev);
        assert_eq!(ev.prev_kv().unwrap().value(), value);
    }
    let left = c.get("l/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(left.kvs().len(), 1, "keys without the lease stay");

    let (code, msg) = grpc_err(c.lease_revoke(g.id()).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (tonic::Code::NotFound, "etcdserver: requested lease not found")
    );
    // etcd answers TimeToLive of an unknown lease with TTL -1, not an error.
    let gone = c.lease_time_to_live(g.id(), None).await.unwrap();
    assert_eq!((gone.id(), gone.ttl()), (g.id(), -1));
}

#[tokio::test]
async fn keep_alive_extends_and_expiry_deletes_with_events() {
    let n = Netsy::start();
    let mut c = n.client().await;
    let short = c.lease_grant(2, None).await.unwrap();
    c.put("short", "x", Some(PutOptions::new().with_lease(short.id()))).await.unwrap();
    let mut w = c.watch("short", Some(WatchOptions::new().with_prev_key())).await.unwrap();
    let (mut keeper, mut responses) = c.lease_keep_alive(short.id()).await.unwrap();
    // Keep it alive for well over its TTL.
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        keeper.keep_alive().await.unwrap();
        let ka = responses.message().await.unwrap().unwrap();
        assert_eq!((ka.id(), ka.ttl()), (short.id(), 2));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(c.get("short", None).await.unwrap().kvs().len(), 1, "kept alive past its TTL");
    drop(keeper);
    wait_for_key_gone(&mut c, "short").await;
    let r = next_events(&mut w).await;
    let ev = &r.events()[0];
    assert_eq!(ev.event_type(), EventType::Delete);
    assert_eq!(ev.prev_kv().unwrap().value(), b"x", "expiry deletes carry prev_kv");
    assert!(c.leases().await.unwrap().leases().is_empty());

    // Keep-alive of an unknown lease answers TTL 0 (raw protocol: etcd-client turns that
    // into an error before we could see it).
    use netsy::proto::etcdserverpb::{lease_client::LeaseClient, LeaseKeepAliveRequest};
    let mut raw = LeaseClient::connect(n.endpoint()).await.unwrap();
    let mut out = raw
        .lease_keep_alive(tokio_stream::iter([LeaseKeepAliveRequest { id: 999 }]))
        .await
        .unwrap()
        .into_inner();
    let ka = out.message().await.unwrap().unwrap();
    assert_eq!((ka.id, ka.ttl), (999, 0));
}

#[tokio::test]
async fn many_leases_expire_in_batches_while_writes_continue() {
    let n = Netsy::start();
    let mut c = n.client().await;
    const LEASES: usize = 300;
    for i in 0..LEASES {
        let g = c.lease_grant(2, None).await.unwrap();
        c.put(format!("m/{i:03}"), "v", Some(PutOptions::new().with_lease(g.id())))
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut writes = 0;
    loop {
        c.put("writer", writes.to_string(), None).await.unwrap();
        writes += 1;
        let left = c.get("m/", Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap();
        if left.count() == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} leased keys left", left.count());
    }
    assert!(writes > 1);
    assert!(c.leases().await.unwrap().leases().is_empty());
}

#[tokio::test]
async fn leases_survive_restart_and_still_expire() {
    let mut n = Netsy::start();
    let (long, short) = {
        let mut c = n.client().await;
        let long = c.lease_grant(60, None).await.unwrap().id();
        let short = c.lease_grant(3, None).await.unwrap().id();
        c.put("long", "l", Some(PutOptions::new().with_lease(long))).await.unwrap();
        c.put("short", "s", Some(PutOptions::new().with_lease(short))).await.unwrap();
        (long, short)
    };
    n.terminate();
    n.spawn();
    let mut c = n.client().await;
    let ids: Vec<i64> = c.leases().await.unwrap().leases().iter().map(|l| l.id()).collect();
    assert!(ids.contains(&long), "{ids:?}");
    let ttl = c.lease_time_to_live(long, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 60);
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 60, "remaining TTL {}", ttl.ttl());
    assert_eq!(c.get("long", None).await.unwrap().kvs().len(), 1);
    // The short lease was not expired early by the restart, and still expires after it.
    wait_for_key_gone(&mut c, "short").await;
    assert_eq!(c.lease_time_to_live(short, None).await.unwrap().ttl(), -1);
    assert_eq!(c.get("long", None).await.unwrap().kvs().len(), 1);
}
