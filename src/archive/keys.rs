//! Where the archive's data keys are wrapped and unwrapped: a Kubernetes KMS v2 plugin
//! (`k8s.io/kms/apis/v2`, gRPC on a unix socket), or a local key file for development.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use async_trait::async_trait;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::config::{EncryptionConfig, KmsConfig};
use crate::proto::kms::v2 as kms;
use kms::key_management_service_client::KeyManagementServiceClient;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the key file {path}: {source}")]
    ReadKeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the key file {path} must hold 32 bytes, raw or base64 (e.g. `head -c 32 /dev/urandom > {path}`); it holds {len}")]
    KeyFileLength { path: PathBuf, len: usize },
    #[error("the data key was wrapped with key {found:?}, but this key file is {ours:?}: configure the key it was written with")]
    WrongKeyFile { found: String, ours: String },
    #[error("the data key does not unwrap with key file {path} (the key or the wrapped data key is wrong)")]
    KeyFileUnwrap { path: PathBuf },
    #[error("KMS plugin socket {socket} does not exist: is the plugin running, and its socket directory mounted into this container?")]
    NoSocket { socket: PathBuf },
    #[error("KMS plugin {socket}: {op} failed: {source}")]
    Call {
        socket: PathBuf,
        op: &'static str,
        #[source]
        source: tonic::Status,
    },
    #[error("KMS plugin {socket} is not healthy: Status says healthz {healthz:?} (want \"ok\")")]
    Unhealthy { socket: PathBuf, healthz: String },
    #[error("KMS plugin {socket} speaks API version {version:?}; netsy needs a KMS v2 plugin (\"v2\")")]
    Version { socket: PathBuf, version: String },
    #[error("KMS plugin {socket} returned {what}")]
    Invalid { socket: PathBuf, what: &'static str },
    #[error("invalid storage.encryption: {0}")]
    Config(String),
}

/// A data key wrapped by the key service, with what unwrapping it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapped {
    pub key_id: String,
    pub ciphertext: Vec<u8>,
    pub annotations: Vec<(String, Vec<u8>)>,
}

/// What wraps and unwraps data keys.
#[async_trait]
pub trait KeyService: Send + Sync + fmt::Debug {
    /// The key id new data keys are wrapped with; fails when the service is unhealthy.
    async fn current_key_id(&self) -> Result<String, KeyError>;
    async fn wrap(&self, data_key: &[u8; 32]) -> Result<Wrapped, KeyError>;
    async fn unwrap(&self, wrapped: &Wrapped) -> Result<[u8; 32], KeyError>;
    /// How often `current_key_id` is asked (a new id wraps the next data key).
    fn status_interval(&self) -> Duration;
}

/// Builds the configured key service. The KMS connection is made on first use.
pub fn from_config(cfg: &EncryptionConfig) -> Result<Box<dyn KeyService>, KeyError> {
    match (&cfg.kms, &cfg.key_file) {
        (Some(k), None) => Ok(Box::new(KmsPlugin::new(k)?)),
        (None, Some(path)) => Ok(Box::new(KeyFile::load(path)?)),
        _ => Err(KeyError::Config("set exactly one of `kms` and `key_file`".into())),
    }
}

/// A 32-byte key read from a file (raw, or base64 text). Its id is `file:` and the first
/// 16 hex digits of the SHA-256 of the key.
pub struct KeyFile {
    path: PathBuf,
    key: [u8; 32],
    id: String,
}

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFile").field("path", &self.path).field("id", &self.id).finish()
    }
}

const KEY_FILE_AAD: &[u8] = b"netsy data key v1";

impl KeyFile {
    pub fn load(path: &Path) -> Result<KeyFile, KeyError> {
        let raw = std::fs::read(path).map_err(|source| KeyError::ReadKeyFile {
            path: path.to_path_buf(),
            source,
        })?;
        let key: Vec<u8> = if raw.len() == 32 {
            raw
        } else {
            let text = String::from_utf8_lossy(&raw);
            base64::engine::general_purpose::STANDARD.decode(text.trim()).unwrap_or(raw)
        };
        let key: [u8; 32] = key.as_slice().try_into().map_err(|_| KeyError::KeyFileLength {
            path: path.to_path_buf(),
            len: key.len(),
        })?;
        Ok(Self::from_key(path, key))
    }

    pub fn from_key(path: &Path, key: [u8; 32]) -> KeyFile {
        let digest = Sha256::digest(key);
        let id = format!("file:{}", digest[..8].iter().map(|b| format!("{b:02x}")).collect::<String>());
        KeyFile {
            path: path.to_path_buf(),
            key,
            id,
        }
    }
}

#[async_trait]
impl KeyService for KeyFile {
    async fn current_key_id(&self) -> Result<String, KeyError> {
        Ok(self.id.clone())
    }

    async fn wrap(&self, data_key: &[u8; 32]) -> Result<Wrapped, KeyError> {
        let aead = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.key));
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ct = aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: data_key,
                    aad: KEY_FILE_AAD,
                },
            )
            .expect("AES-GCM encrypts 32 bytes");
        let mut ciphertext = nonce.to_vec();
        ciphertext.extend_from_slice(&ct);
        Ok(Wrapped {
            key_id: self.id.clone(),
            ciphertext,
            annotations: Vec::new(),
        })
    }

    async fn unwrap(&self, w: &Wrapped) -> Result<[u8; 32], KeyError> {
        if w.key_id != self.id {
            return Err(KeyError::WrongKeyFile {
                found: w.key_id.clone(),
                ours: self.id.clone(),
            });
        }
        let bad = || KeyError::KeyFileUnwrap { path: self.path.clone() };
        if w.ciphertext.len() < 12 {
            return Err(bad());
        }
        let (nonce, ct) = w.ciphertext.split_at(12);
        let aead = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.key));
        let pt = aead
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: KEY_FILE_AAD,
                },
            )
            .map_err(|_| bad())?;
        pt.as_slice().try_into().map_err(|_| bad())
    }

    fn status_interval(&self) -> Duration {
        Duration::MAX
    }
}

/// A Kubernetes KMS v2 plugin on a unix socket.
#[derive(Debug)]
pub struct KmsPlugin {
    socket: PathBuf,
    client: KeyManagementServiceClient<Channel>,
    status_interval: Duration,
}

impl KmsPlugin {
    pub fn new(cfg: &KmsConfig) -> Result<KmsPlugin, KeyError> {
        let socket = PathBuf::from(cfg.endpoint.strip_prefix("unix://").unwrap_or(&cfg.endpoint));
        let timeout = crate::config::parse_duration(&cfg.timeout)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| KeyError::Config(format!("kms.timeout {:?} is not a positive duration", cfg.timeout)))?;
        let status_interval = crate::config::parse_duration(&cfg.status_interval)
            .ok_or_else(|| KeyError::Config(format!("kms.status_interval {:?} is not a duration", cfg.status_interval)))?;
        let path = socket.clone();
        // The URI is not used: every connection is made to the socket.
        let channel = Endpoint::from_static("http://kms.invalid")
            .timeout(timeout)
            .connect_timeout(timeout)
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }));
        Ok(KmsPlugin {
            socket,
            client: KeyManagementServiceClient::new(channel),
            status_interval,
        })
    }

    fn call_err(&self, op: &'static str) -> impl Fn(tonic::Status) -> KeyError + '_ {
        move |source| {
            if !self.socket.exists() {
                KeyError::NoSocket {
                    socket: self.socket.clone(),
                }
            } else {
                KeyError::Call {
                    socket: self.socket.clone(),
                    op,
                    source,
                }
            }
        }
    }
}

fn uid() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[async_trait]
impl KeyService for KmsPlugin {
    async fn current_key_id(&self) -> Result<String, KeyError> {
        if !self.socket.exists() {
            return Err(KeyError::NoSocket {
                socket: self.socket.clone(),
            });
        }
        let s = self
            .client
            .clone()
            .status(kms::StatusRequest {})
            .await
            .map_err(self.call_err("Status"))?
            .into_inner();
        if s.version != "v2" && s.version != "v2beta1" {
            return Err(KeyError::Version {
                socket: self.socket.clone(),
                version: s.version,
            });
        }
        if s.healthz != "ok" {
            return Err(KeyError::Unhealthy {
                socket: self.socket.clone(),
                healthz: s.healthz,
            });
        }
        if s.key_id.is_empty() {
            return Err(KeyError::Invalid {
                socket: self.socket.clone(),
                what: "an empty key id from Status",
            });
        }
        Ok(s.key_id)
    }

    async fn wrap(&self, data_key: &[u8; 32]) -> Result<Wrapped, KeyError> {
        let r = self
            .client
            .clone()
            .encrypt(kms::EncryptRequest {
                plaintext: data_key.to_vec(),
                uid: uid(),
            })
            .await
            .map_err(self.call_err("Encrypt"))?
            .into_inner();
        if r.key_id.is_empty() || r.ciphertext.is_empty() {
            return Err(KeyError::Invalid {
                socket: self.socket.clone(),
                what: "an empty key id or ciphertext from Encrypt",
            });
        }
        let mut annotations: Vec<_> = r.annotations.into_iter().collect();
        annotations.sort();
        Ok(Wrapped {
            key_id: r.key_id,
            ciphertext: r.ciphertext,
            annotations,
        })
    }

    async fn unwrap(&self, w: &Wrapped) -> Result<[u8; 32], KeyError> {
        let r = self
            .client
            .clone()
            .decrypt(kms::DecryptRequest {
                ciphertext: w.ciphertext.clone(),
                uid: uid(),
                key_id: w.key_id.clone(),
                annotations: w.annotations.iter().cloned().collect::<HashMap<_, _>>(),
            })
            .await
            .map_err(self.call_err("Decrypt"))?
            .into_inner();
        r.plaintext.as_slice().try_into().map_err(|_| KeyError::Invalid {
            socket: self.socket.clone(),
            what: "a data key that is not 32 bytes from Decrypt",
        })
    }

    fn status_interval(&self) -> Duration {
        self.status_interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_file_wraps_and_refuses_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [7u8; 32]).unwrap();
        let b64 = dir.path().join("b64");
        std::fs::write(&b64, format!("{}\n", base64::engine::general_purpose::STANDARD.encode([7u8; 32]))).unwrap();
        let a = KeyFile::load(&raw).unwrap();
        let b = KeyFile::load(&b64).unwrap();
        assert_eq!(a.current_key_id().await.unwrap(), b.current_key_id().await.unwrap());
        let w = a.wrap(&[1u8; 32]).await.unwrap();
        assert_eq!(b.unwrap(&w).await.unwrap(), [1u8; 32]);
        let other = KeyFile::from_key(&raw, [8u8; 32]);
        let e = other.unwrap(&w).await.unwrap_err().to_string();
        assert!(e.contains("was wrapped with key") && e.contains(&w.key_id), "{e}");
        let mut bad = w.clone();
        bad.ciphertext[20] ^= 1;
        assert!(matches!(a.unwrap(&bad).await, Err(KeyError::KeyFileUnwrap { .. })));
        let short = dir.path().join("short");
        std::fs::write(&short, "abc").unwrap();
        let e = KeyFile::load(&short).unwrap_err().to_string();
        assert!(e.contains("must hold 32 bytes"), "{e}");
    }

    #[tokio::test]
    async fn a_missing_plugin_socket_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = KmsPlugin::new(&KmsConfig {
            endpoint: format!("unix://{}", dir.path().join("none.sock").display()),
            timeout: "1s".into(),
            status_interval: "60s".into(),
        })
        .unwrap();
        let e = p.current_key_id().await.unwrap_err().to_string();
        assert!(e.contains("none.sock does not exist"), "{e}");
    }
}
