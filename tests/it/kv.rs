//! Black-box etcd KV semantics over gRPC with the `etcd-client` crate.

use crate::common::Netsy;
use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse};

fn grpc_err(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

#[tokio::test]
async fn revisions_start_at_one_and_count_writes() {
    let n = Netsy::start();
    let mut c = n.client().await;
    let r = c.get("nothing", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 1, "an empty store is at revision 1");
    let p = c.put("a", "1", None).await.unwrap();
    assert_eq!(p.header().unwrap().revision(), 2);
    // Reads, failed compares and deletes of missing keys do not bump the revision.
    c.get("a", None).await.unwrap();
    c.delete("missing", None).await.unwrap();
    let t = c
        .txn(
            Txn::new()
                .when([Compare::value("a", CompareOp::Equal, "x")])
                .and_then([TxnOp::put("b", "2", None)]),
        )
        .await
        .unwrap();
    assert!(!t.succeeded());
    assert_eq!(t.header().unwrap().revision(), 2);
    let r = c.get("a", None).await.unwrap();
    let kv = &r.kvs()[0];
    assert_eq!((kv.create_revision(), kv.mod_revision(), kv.version()), (2, 2, 1));
    c.put("a", "2", None).await.unwrap();
    let kv = c.get("a", None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version(), kv.value()),
        (2, 3, 2, &b"2"[..])
    );
}

#[tokio::test]
async fn range_shapes_count_more_limit_and_sort() {
    let n = Netsy::start();
    let mut c = n.client().await;
    for i in 0..10 {
        c.put(format!("/registry/pods/p{i}"), format!("v{}", 9 - i), None).await.unwrap();
    }
    c.put("/registry/podsx", "other", None).await.unwrap();
    c.put("/registry/z", "z", None).await.unwrap();

    let r = c
        .get("/registry/pods/", Some(GetOptions::new().with_prefix().with_limit(3)))
        .await
        .unwrap();
    assert_eq!(r.kvs().len(), 3);
    assert_eq!(r.count(), 10, "count ignores limit");
    assert!(r.more());
    assert_eq!(r.kvs()[0].key(), b"/registry/pods/p0");

    let r = c
        .get("/registry/pods/", Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap();
    assert_eq!((r.count(), r.kvs().len()), (10, 0));

    let r = c
        .get("/registry/pods/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap();
    assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));
    assert_eq!(r.kvs().len(), 10);

    // [key, range_end)
    let r = c
        .get("/registry/pods/p2", Some(GetOptions::new().with_range("/registry/pods/p5")))
        .await
        .unwrap();
    let keys: Vec<_> = r.kvs().iter().map(|kv| kv.key_str().unwrap().to_string()).collect();
    assert_eq!(keys, ["/registry/pods/p2", "/registry/pods/p3", "/registry/pods/p4"]);

    // from-key ("\0" range end)
    let r = c.get("/registry/podsx", Some(GetOptions::new().with_from_key())).await.unwrap();
    assert_eq!(r.count(), 2);

    // all keys
    let r = c.get("", Some(GetOptions::new().with_all_keys())).await.unwrap();
    assert_eq!(r.count(), 12);

    // sort by value descending, limit 2
    let r = c
        .get(
            "/registry/pods/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Value, SortOrder::Descend)
                    .with_limit(2),
            ),
        )
        .await
        .unwrap();
    let vals: Vec<_> = r.kvs().iter().map(|kv| kv.value_str().unwrap().to_string()).collect();
    assert_eq!(vals, ["v9", "v8"]);
    assert!(r.more());

    // min/max mod revision filters (count is before filtering, as etcd)
    let r = c
        .get(
            "/registry/pods/",
            Some(GetOptions::new().with_prefix().with_min_mod_revision(5).with_max_mod_revision(6)),
        )
        .await
        .unwrap();
    assert_eq!(r.kvs().len(), 2);
    assert_eq!(r.count(), 10);
    let r = c
        .get("/registry/pods/", Some(GetOptions::new().with_prefix().with_max_create_revision(3)))
        .await
        .unwrap();
    assert_eq!(r.kvs().len(), 2);

    // serializable reads work too
    let r = c.get("/registry/z", Some(GetOptions::new().with_serializable())).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"z");
}

#[tokio::test]
async fn historical_reads_are_exact_and_header_is_current() {
    let n = Netsy::start();
    let mut c = n.client().await;
    c.put("k", "v1", None).await.unwrap(); // rev 2
    c.put("k", "v2", None).await.unwrap(); // rev 3
    c.delete("k", None).await.unwrap(); // rev 4
    c.put("k", "v3", None).await.unwrap(); // rev 5
    c.put("other", "x", None).await.unwrap(); // rev 6
    let at = |rev| GetOptions::new().with_revision(rev);
    let v = |r: &etcd_client::GetResponse| r.kvs().first().map(|kv| kv.value_str().unwrap().to_string());
    let r = c.get("k", Some(at(2))).await.unwrap();
    assert_eq!(v(&r).as_deref(), Some("v1"));
    assert_eq!(
        r.header().unwrap().revision(),
        6,
        "header is the current revision even for historical reads"
    );
    assert_eq!(v(&c.get("k", Some(at(3))).await.unwrap()).as_deref(), Some("v2"));
    assert_eq!(v(&c.get("k", Some(at(4))).await.unwrap()), None);
    let r = c.get("k", Some(at(5))).await.unwrap();
    assert_eq!(
        (r.kvs()[0].create_revision(), r.kvs()[0].version()),
        (5, 1),
        "a delete resets create revision and version"
    );
    let r = c.get("", Some(at(3).with_all_keys())).await.unwrap();
    assert_eq!(r.count(), 1);

    let (code, msg) = grpc_err(c.get("k", Some(at(7))).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (tonic::Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision")
    );
}

#[tokio::test]
async fn put_options_and_delete_range() {
    let n = Netsy::start();
    let mut c = n.client().await;
    let r = c.put("a", "1", Some(PutOptions::new().with_prev_key())).await.unwrap();
    assert!(r.prev_key().is_none());
    let r = c.put("a", "2", Some(PutOptions::new().with_prev_key())).await.unwrap();
    assert_eq!(r.prev_key().unwrap().value(), b"1");

    // ignore_value keeps the value; ignore_lease keeps the lease
    let lease = c.lease_grant(60, None).await.unwrap().id();
    c.put("a", "3", Some(PutOptions::new().with_lease(lease))).await.unwrap();
    c.put("a", "", Some(PutOptions::new().with_ignore_lease())).await.unwrap();
    let kv = c.get("a", None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.value(), kv.lease()), (&b""[..], lease));
    c.put("a", "", Some(PutOptions::new().with_ignore_value())).await.unwrap();
    assert_eq!(c.get("a", None).await.unwrap().kvs()[0].value(), b"");
    let (code, msg) = grpc_err(c.put("nokey", "", Some(PutOptions::new().with_ignore_value())).await.unwrap_err());
    assert_eq!((code, msg.as_str()), (tonic::Code::InvalidArgument, "etcdserver: key not found"));

    // unknown lease
    let before = c.get("b", None).await.unwrap().header().unwrap().revision();
    let (code, msg) = grpc_err(c.put("b", "x", Some(PutOptions::new().with_lease(12345))).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (tonic::Code::NotFound, "etcdserver: requested lease not found")
    );
    let r = c.get("b", None).await.unwrap();
    assert_eq!(
        (r.kvs().len(), r.header().unwrap().revision()),
        (0, before),
        "a failed put changes nothing"
    );

    for k in ["p/1", "p/2", "p/3", "q"] {
        c.put(k, "v", None).await.unwrap();
    }
    let r = c
        .delete("p/", Some(DeleteOptions::new().with_prefix().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(r.deleted(), 3);
    assert_eq!(r.prev_kvs().len(), 3);
    let rev = r.header().unwrap().revision();
    let r = c
        .get("p/", Some(GetOptions::new().with_prefix().with_revision(rev - 1)))
        .await
        .unwrap();
    assert_eq!(r.count(), 3, "a multi-key delete is one revision");
    assert_eq!(
        c.delete("q", Some(DeleteOptions::new().with_range("r"))).await.unwrap().deleted(),
        1
    );
}

#[tokio::test]
async fn txn_compares_ops_and_nesting() {
    let n = Netsy::start();
    let mut c = n.client().await;
    c.put("k", "v", None).await.unwrap(); // rev 2
                                          // kube-apiserver's create: mod_revision == 0
    let t = c
        .txn(
            Txn::new()
                .when([Compare::mod_revision("new", CompareOp::Equal, 0)])
                .and_then([TxnOp::put("new", "1", None)]),
        )
        .await
        .unwrap();
    assert!(t.succeeded());
    assert_eq!(t.header().unwrap().revision(), 3);
    // GuaranteedUpdate with a stale revision returns the current value in the failure branch
    let t = c
        .txn(
            Txn::new()
                .when([Compare::mod_revision("k", CompareOp::Equal, 1)])
                .and_then([TxnOp::put("k", "x", None)])
                .or_else([TxnOp::get("k", None)]),
        )
        .await
        .unwrap();
    assert!(!t.succeeded());
    match &t.op_responses()[0] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"v"),
        other => panic!("unexpected {other:?}"),
    }
    // compact_rev_key bookkeeping: VERSION compare
    let t = c
        .txn(
            Txn::new()
                .when([Compare::version("compact_rev_key", CompareOp::Equal, 0)])
                .and_then([TxnOp::put("compact_rev_key", "3", None)]),
        )
        .await
        .unwrap();
    assert!(t.succeeded());
    // every operator and target, several compares, a range compare
    let cmps = [
        Compare::version("k", CompareOp::Greater, 0),
        Compare::create_revision("k", CompareOp::Less, 3),
        Compare::mod_revision("k", CompareOp::NotEqual, 7),
        Compare::value("k", CompareOp::Equal, "v"),
        Compare::lease("k", CompareOp::Equal, 0),
        Compare::version("a", CompareOp::Greater, 0).with_range("z"),
    ];
    let nested = Txn::new()
        .when([Compare::value("new", CompareOp::Equal, "1")])
        .and_then([TxnOp::put("n1", "a", None), TxnOp::delete("new", None)]);
    let t = c
        .txn(
            Txn::new()
                .when(cmps)
                .and_then([TxnOp::put("k", "w", None), TxnOp::txn(nested), TxnOp::get("n1", None)]),
        )
        .await
        .unwrap();
    assert!(t.succeeded());
    let rev = t.header().unwrap().revision();
    assert_eq!(rev, 5, "one revision per write txn, however many ops");
    match &t.op_responses()[2] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"a", "reads in a txn see its earlier writes"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(c.get("new", None).await.unwrap().kvs().len(), 0);
    assert_eq!(c.get("n1", None).await.unwrap().kvs()[0].mod_revision(), 5);
    // VALUE compare on a missing key always fails
    let t = c
        .txn(Txn::new().when([Compare::value("missing", CompareOp::NotEqual, "x")]))
        .await
        .unwrap();
    assert!(!t.succeeded());
}

#[tokio::test]
async fn bad_input_gets_etcd_errors_and_changes_nothing() {
    let n = Netsy::start_with("\"limits\": { \"max_request_bytes\": 4096, \"max_txn_ops\": 4 },");
    let mut c = n.client().await;
    c.put("k", "v", None).await.unwrap();
    let rev = || async { n.client().await.get("k", None).await.unwrap().header().unwrap().revision() };
    let before = rev().await;

    let (code, msg) = grpc_err(c.put("big", vec![b'x'; 5000], None).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (tonic::Code::InvalidArgument, "etcdserver: request is too large")
    );

    let ops: Vec<TxnOp> = (0..5).map(|i| TxnOp::put(format!("t{i}"), "v", None)).collect();
    let (code, msg) = grpc_err(c.txn(Txn::new().and_then(ops)).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (tonic::Code::InvalidArgument, "etcdserver: too many operations in txn request")
    );

    let (code, msg) = grpc_err(c.put("", "v", None).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (tonic::Code::InvalidArgument, "etcdserver: key is not provided")
    );
    let (_, msg) = grpc_err(c.get("", None).await.unwrap_err());
    assert_eq!(msg, "etcdserver: key is not provided");

    let (code, msg) = grpc_err(
        c.txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, msg.as_str()),
        (tonic::Code::InvalidArgument, "etcdserver: duplicate key given in txn request")
    );

    // As etcd answers (tests/it/edge.rs compares): an empty range, not an error.
    let r = c.get("b", Some(GetOptions::new().with_range("a"))).await.unwrap();
    assert_eq!((r.kvs().len(), r.count()), (0, 0), "range_end < key is an empty range");
    let r = c.get("k", Some(GetOptions::new().with_limit(-1))).await.unwrap();
    assert_eq!((r.kvs().len(), r.more()), (1, false), "a negative limit is no limit");
    let r = c.get("k", Some(GetOptions::new().with_revision(-1))).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"v", "a negative revision reads the current one");

    assert_eq!(rev().await, before, "no bad request changed the store");
    assert_eq!(c.get("d", None).await.unwrap().kvs().len(), 0);
}

#[tokio::test]
async fn compaction_deletes_history_and_guards_reads() {
    let n = Netsy::start();
    let mut c = n.client().await;
    for i in 0..5 {
        c.put("k", format!("v{i}"), None).await.unwrap(); // revs 2..=6
    }
    c.put("gone", "x", None).await.unwrap(); // 7
    c.delete("gone", None).await.unwrap(); // 8
    c.compact(6, None).await.unwrap();
    let (code, msg) = grpc_err(c.get("k", Some(GetOptions::new().with_revision(5))).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (tonic::Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted")
    );
    let r = c.get("k", Some(GetOptions::new().with_revision(6))).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"v4", "the compact revision itself stays readable");
    let (code, msg) = grpc_err(c.compact(6, None).await.unwrap_err());
    assert_eq!(
        (code, msg.as_str()),
        (tonic::Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted")
    );
    let (_, msg) = grpc_err(c.compact(100, None).await.unwrap_err());
    assert_eq!(msg, "etcdserver: mvcc: required revision is a future revision");
    c.compact(8, Some(etcd_client::CompactionOptions::new().with_physical()))
        .await
        .unwrap();

    // Rows below the compact revision are deleted from SQLite, not just hidden.
    drop(c);
    let db = n.data_dir().join("state.db");
    let conn = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let rows: i64 = conn.query_row("SELECT COUNT(*) FROM kv", [], |r| r.get(0)).unwrap();
    assert_eq!(
        rows, 3,
        "only k@6, the tombstone at the compact revision and the value it deleted (its prev_kv) remain"
    );
}

#[tokio::test]
async fn keys_and_values_are_arbitrary_bytes() {
    let n = Netsy::start();
    let mut c = n.client().await;
    let key = vec![0xff, 0x00, b'%', b'_', 0x80];
    let value = vec![0u8, 1, 2, 255];
    c.put(key.clone(), value.clone(), None).await.unwrap();
    c.put(vec![0xff, 0x01], "after", None).await.unwrap();
    c.put("%_like", "x", None).await.unwrap();
    let r = c.get(vec![0xff], Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(r.kvs().len(), 2);
    assert_eq!(r.kvs()[0].key(), key.as_slice());
    assert_eq!(r.kvs()[0].value(), value.as_slice());
    let r = c.get("%", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(r.count(), 1, "prefixes are byte ranges, never LIKE patterns");
}

/// etcd's `--auto-compaction-mode=periodic`: the leader compacts to the revision it
/// observed one retention period earlier.
#[tokio::test]
async fn periodic_auto_compaction_compacts_old_revisions() {
    let n = Netsy::start_with(r#""auto_compaction": { "mode": "periodic", "retention": "2s" },"#);
    let mut c = n.client().await;
    for i in 0..5 {
        c.put("k", format!("v{i}"), None).await.unwrap(); // revisions 2..=6
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match c.get("k", Some(GetOptions::new().with_revision(2))).await {
            Err(e) => {
                let (code, msg) = grpc_err(e);
                assert_eq!(
                    (code, msg.as_str()),
                    (tonic::Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted")
                );
                break;
            }
            Ok(_) => assert!(tokio::time::Instant::now() < deadline, "no auto-compaction within 20s"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The newest revision stays readable, and the history above the target is intact.
    let r = c.get("k", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"v4");
    assert_eq!(r.kvs()[0].version(), 5);
}
