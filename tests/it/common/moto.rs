//! moto's S3 server on a free port, stopped by PID (`make test` installs it into .venv).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use object_store::{ObjectStore, ObjectStoreExt};

use netsy::config::StorageConfig;

pub struct Moto {
    child: Child,
    pub port: u16,
}

/// Static credentials moto accepts, for netsy processes.
pub const ENV: [(&str, &str); 2] = [("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")];

impl Moto {
    pub fn start() -> Moto {
        let port = super::free_port();
        Moto {
            child: Self::spawn(port),
            port,
        }
    }

    fn spawn(port: u16) -> Child {
        let child = Command::new(super::etcd_bin_dir().join("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (make test installs it into .venv)");
        super::wait_until(Duration::from_secs(30), "moto to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        child
    }

    /// Stops moto (SIGKILL) and, after `down`, starts it again on the same port with
    /// `bucket` as it was. moto 5 keeps its state only in memory, so the objects are copied
    /// out before the stop and put back after the start, as a real object store that
    /// restarts keeps them. The caller must keep requests away meanwhile (e.g. an
    /// `S3Proxy` in `Outage`), or what they change may be lost. Returns the objects kept.
    pub fn restart_keeping(&mut self, bucket: &str, down: Duration) -> usize {
        let store = self.direct(bucket);
        let objects = block_on(async {
            use futures::{StreamExt, TryStreamExt};
            let metas: Vec<_> = store.list(None).try_collect().await.expect("list the bucket");
            futures::stream::iter(metas)
                .map(|meta| {
                    let store = &store;
                    async move {
                        let got = store.get(&meta.location).await.expect("get an object");
                        (meta.location, got.bytes().await.expect("read an object"))
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = Self::spawn(self.port);
        self.create_bucket(bucket);
        let kept = objects.len();
        block_on(async {
            use futures::StreamExt;
            futures::stream::iter(objects)
                .for_each_concurrent(16, |(location, bytes)| {
                    let store = &store;
                    async move {
                        store.put(&location, bytes.into()).await.expect("put an object back");
                    }
                })
                .await
        });
        kept
    }

    /// An S3 client straight to moto (no proxy), with the static test credentials.
    fn direct(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_endpoint(format!("http://127.0.0.1:{}", self.port))
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_access_key_id(ENV[0].1)
            .with_secret_access_key(ENV[1].1)
            .build()
            .expect("an S3 client for moto")
    }

    /// Creates a bucket with a plain path-style request (moto accepts it unsigned).
    pub fn create_bucket(&self, name: &str) {
        let reply = std::net::TcpStream::connect(("127.0.0.1", self.port))
            .map_err(|e| format!("connect: {e}"))
            .and_then(|s| {
                let request = format!("PUT /{name} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n");
                super::http_exchange(s, request.as_bytes())
            });
        assert!(matches!(reply, Ok((200, _))), "creating bucket {name} on moto: {reply:?}");
    }

    /// The cluster file's `storage` object for `bucket` (credentials: `ENV`).
    pub fn storage_json(&self, bucket: &str, key_prefix: &str) -> String {
        format!(
            r#"{{ "provider": "s3", "bucket_name": "{bucket}", "key_prefix": "{key_prefix}", "region": "us-east-1",
                 "endpoint": "http://127.0.0.1:{}", "force_path_style": true }}"#,
            self.port
        )
    }

    /// A fresh bucket and an object store on it, with static test credentials through
    /// the standard AWS environment chain.
    pub fn store(&self, bucket: &str, key_prefix: &str) -> std::sync::Arc<dyn object_store::ObjectStore> {
        self.create_bucket(bucket);
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        netsy::archive::build(&StorageConfig {
            provider: "s3".into(),
            bucket_name: bucket.into(),
            key_prefix: key_prefix.into(),
            path: None,
            region: Some("us-east-1".into()),
            endpoint: Some(format!("http://127.0.0.1:{}", self.port)),
            force_path_style: true,
            storage_class: None,
            sse: None,
            sse_kms_key_id: None,
            encryption: None,
        })
        .unwrap()
    }
}

/// Runs `f` to completion from synchronous test code (a `spawn_blocking` thread or a
/// thread outside any runtime).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.block_on(f),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(f),
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
