//! The S3 backend against moto's S3 server (real S3 protocol: SigV4, If-None-Match,
//! If-Match), started on a free port and stopped by PID.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use netsy::config::StorageConfig;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, UpdateVersion};

struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Moto {
        let port = common::free_port();
        let child = Command::new(common::etcd_bin_dir().join("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (make test installs it into .venv)");
        common::wait_until(Duration::from_secs(30), "moto to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Moto { child, port }
    }

    /// Creates a bucket with a plain path-style request (moto accepts it unsigned).
    fn create_bucket(&self, name: &str) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(s, "PUT /{name} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"), "{out}");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn s3_conditional_puts_fence_writers() {
    let moto = Moto::start();
    moto.create_bucket("netsy-test");
    // Static test credentials through the standard AWS environment chain.
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let store = netsy::archive::build(&StorageConfig {
        provider: "s3".into(),
        bucket_name: "netsy-test".into(),
        key_prefix: "clusters/prod".into(),
        path: None,
        region: Some("us-east-1".into()),
        endpoint: Some(format!("http://127.0.0.1:{}", moto.port)),
        force_path_style: true,
    })
    .unwrap();

    let seg = Path::from("epochs/1/wal/00000000000000000001-00000000000000000010.seg");
    store.put_opts(&seg, "frames".into(), PutMode::Create.into()).await.unwrap();
    let again = store.put_opts(&seg, "stale leader".into(), PutMode::Create.into()).await;
    assert!(matches!(again, Err(object_store::Error::AlreadyExists { .. })), "{again:?}");
    assert_eq!(store.get(&seg).await.unwrap().bytes().await.unwrap(), "frames");

    let cluster = Path::from("cluster.json");
    let v1 = store
        .put_opts(&cluster, "{\"epoch\":1}".into(), PutMode::Create.into())
        .await
        .unwrap();
    let v1 = UpdateVersion {
        e_tag: v1.e_tag,
        version: v1.version,
    };
    store
        .put_opts(&cluster, "{\"epoch\":2}".into(), PutMode::Update(v1.clone()).into())
        .await
        .unwrap();
    // A writer still holding the old etag loses.
    let stale = store.put_opts(&cluster, "{\"epoch\":2}".into(), PutMode::Update(v1).into()).await;
    assert!(matches!(stale, Err(object_store::Error::Precondition { .. })), "{stale:?}");
    assert_eq!(store.get(&cluster).await.unwrap().bytes().await.unwrap(), "{\"epoch\":2}");

    // Everything lives under the key prefix.
    let listed: Vec<_> = futures::StreamExt::collect::<Vec<_>>(store.list(None)).await;
    assert_eq!(listed.len(), 2);
}
