//! A Kubernetes KMS v2 plugin for tests: our own implementation of `v2.KeyManagementService`
//! (proto/kms/v2.proto) on a unix socket in a temp dir. It wraps data keys with its own
//! AES-256-GCM keys, one per key id; its current key id can be switched (rotation) and a
//! key forgotten (a key the plugin can no longer use); it counts its calls.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use netsy::proto::kms::v2 as kms;
use netsy::proto::kms::v2::key_management_service_server::{KeyManagementService, KeyManagementServiceServer};
use rand::RngCore;
use tonic::{Request, Response, Status};

const ANNOTATION: &str = "version.kms.netsy.test";

#[derive(Default)]
struct State {
    keys: Mutex<BTreeMap<String, [u8; 32]>>,
    current: Mutex<String>,
    healthz: Mutex<String>,
    status: AtomicU64,
    encrypt: AtomicU64,
    decrypt: AtomicU64,
}

#[derive(Clone)]
struct Service(Arc<State>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[tonic::async_trait]
impl KeyManagementService for Service {
    async fn status(&self, _: Request<kms::StatusRequest>) -> Result<Response<kms::StatusResponse>, Status> {
        self.0.status.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(kms::StatusResponse {
            version: "v2".into(),
            healthz: lock(&self.0.healthz).clone(),
            key_id: lock(&self.0.current).clone(),
        }))
    }

    async fn encrypt(&self, r: Request<kms::EncryptRequest>) -> Result<Response<kms::EncryptResponse>, Status> {
        self.0.encrypt.fetch_add(1, Ordering::SeqCst);
        let r = r.into_inner();
        if r.uid.is_empty() {
            return Err(Status::invalid_argument("no uid"));
        }
        let key_id = lock(&self.0.current).clone();
        let Some(key) = lock(&self.0.keys).get(&key_id).copied() else {
            return Err(Status::failed_precondition(format!("the current key {key_id:?} is gone")));
        };
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ct = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key))
            .encrypt(Nonce::from_slice(&nonce), r.plaintext.as_slice())
            .map_err(|_| Status::internal("encrypt"))?;
        let mut ciphertext = nonce.to_vec();
        ciphertext.extend_from_slice(&ct);
        Ok(Response::new(kms::EncryptResponse {
            ciphertext,
            key_id,
            annotations: HashMap::from([(ANNOTATION.to_string(), b"1".to_vec())]),
        }))
    }

    async fn decrypt(&self, r: Request<kms::DecryptRequest>) -> Result<Response<kms::DecryptResponse>, Status> {
        self.0.decrypt.fetch_add(1, Ordering::SeqCst);
        let r = r.into_inner();
        if r.annotations.get(ANNOTATION).map(Vec::as_slice) != Some(b"1".as_slice()) {
            return Err(Status::invalid_argument("the annotations of Encrypt were not passed back"));
        }
        let Some(key) = lock(&self.0.keys).get(&r.key_id).copied() else {
            return Err(Status::not_found(format!("key id {:?} is unknown to this plugin", r.key_id)));
        };
        if r.ciphertext.len() < 12 {
            return Err(Status::invalid_argument("ciphertext too short"));
        }
        let (nonce, ct) = r.ciphertext.split_at(12);
        let plaintext = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key))
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| Status::invalid_argument("the ciphertext does not decrypt with this key"))?;
        Ok(Response::new(kms::DecryptResponse { plaintext }))
    }
}

/// The running plugin; stopped when dropped.
pub struct KmsPlugin {
    pub socket: PathBuf,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl KmsPlugin {
    /// Starts serving, with current key id `key_id`.
    pub fn start(key_id: &str) -> KmsPlugin {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("kms.sock");
        let state = Arc::new(State::default());
        *lock(&state.healthz) = "ok".into();
        let mut plugin = KmsPlugin {
            socket: socket.clone(),
            state: state.clone(),
            stop: None,
            thread: None,
            _dir: dir,
        };
        plugin.rotate(key_id);
        let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind the plugin socket");
        listener.set_nonblocking(true).expect("nonblocking");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // Its own thread and runtime: tests block their own threads while waiting.
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(listener).expect("listener");
                tonic::transport::Server::builder()
                    .add_service(KeyManagementServiceServer::new(Service(state)))
                    .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), async {
                        let _ = rx.await;
                    })
                    .await
                    .expect("serve the plugin");
            });
        });
        plugin.stop = Some(tx);
        plugin.thread = Some(thread);
        plugin
    }

    /// Makes `key_id` the current key (a new random key unless it is known already).
    pub fn rotate(&self, key_id: &str) {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        lock(&self.state.keys).entry(key_id.to_string()).or_insert(key);
        *lock(&self.state.current) = key_id.to_string();
    }

    /// The plugin no longer has `key_id`: what it wrapped cannot be unwrapped.
    pub fn forget(&self, key_id: &str) {
        lock(&self.state.keys).remove(key_id);
    }

    pub fn set_healthz(&self, healthz: &str) {
        *lock(&self.state.healthz) = healthz.to_string();
    }

    /// Calls served: (Status, Encrypt, Decrypt).
    pub fn calls(&self) -> (u64, u64, u64) {
        (
            self.state.status.load(Ordering::SeqCst),
            self.state.encrypt.load(Ordering::SeqCst),
            self.state.decrypt.load(Ordering::SeqCst),
        )
    }

    /// A `storage` object: the `file` provider at `objects`, encrypted through this
    /// plugin, which is asked for its key id before every object written.
    pub fn storage(&self, objects: &Path) -> String {
        format!(
            r#"{{ "provider": "file", "path": "{}", "encryption": {{ "kms": {{ "endpoint": "unix://{}", "timeout": "5s", "status_interval": "0s" }} }} }}"#,
            objects.display(),
            self.socket.display()
        )
    }
}

impl Drop for KmsPlugin {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
