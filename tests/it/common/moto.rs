//! moto's S3 server on a free port, stopped by PID (`make test` installs it into .venv).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
        let child = Command::new(super::etcd_bin_dir().join("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (make test installs it into .venv)");
        super::wait_until(Duration::from_secs(30), "moto to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Moto { child, port }
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
        })
        .unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
