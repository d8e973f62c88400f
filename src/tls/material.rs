//! This node's TLS files: reading them, and the startup self-check that turns a wrong
//! certificate into a clear message instead of refused handshakes later. Also the files
//! an operator's command presents to the members (`ClientFiles`).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use super::identity::{self, CertInfo, Role};
use super::TlsError;
use crate::config::TlsFiles;

/// The CA bundle and this node's two certified keys, parsed.
pub struct Material {
    pub roots: Arc<RootCertStore>,
    /// Presented by the client, peer and health listeners.
    pub server: Arc<CertifiedKey>,
    /// Presented on outbound peer connections.
    pub client: Arc<CertifiedKey>,
    pub server_info: CertInfo,
    pub client_info: CertInfo,
    files: TlsFiles,
}

/// The files an operator's client (`netsy status`) trusts and presents: etcdctl's
/// `--cacert`, `--cert` and `--key`.
#[derive(Debug, Clone, Default)]
pub struct ClientFiles {
    pub ca_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// `ClientFiles`, parsed.
pub struct ClientMaterial {
    /// The CA bundle server certificates must chain to.
    pub roots: Option<Arc<RootCertStore>>,
    /// The client certificate and its key.
    pub identity: Option<Arc<CertifiedKey>>,
}

impl ClientFiles {
    /// Whether any file is named (a bare `host:port` endpoint then means TLS, as in etcdctl).
    pub fn any(&self) -> bool {
        self.ca_cert.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// Reads and parses the files: the CA bundle, and the certificate with the key that
    /// belongs to it.
    pub fn load(&self) -> Result<ClientMaterial, TlsError> {
        let roots = match &self.ca_cert {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for ca in certs("--cacert", path, &read("--cacert", path)?)? {
                    roots
                        .add(ca)
                        .map_err(|e| file_cause("--cacert", path, "holds an unusable CA certificate", e))?;
                }
                Some(Arc::new(roots))
            }
            None => None,
        };
        let identity = match (&self.cert, &self.key) {
            (Some(cert_path), Some(key_path)) => {
                let chain = certs("--cert", cert_path, &read("--cert", cert_path)?)?;
                let key = private_key("--key", key_path, &read("--key", key_path)?)?;
                let certified = CertifiedKey::from_der(chain, key, &super::provider()).map_err(|e| {
                    file_cause(
                        "--key",
                        key_path,
                        format!("does not belong to the certificate in --cert ({})", cert_path.display()),
                        e,
                    )
                })?;
                Some(Arc::new(certified))
            }
            (None, None) => None,
            (Some(_), None) => return Err(TlsError::Config("--cert needs --key (the certificate's private key)".into())),
            (None, Some(_)) => return Err(TlsError::Config("--key needs --cert (the client certificate)".into())),
        };
        Ok(ClientMaterial { roots, identity })
    }
}

struct Contents {
    ca: Vec<u8>,
    server_cert: Vec<u8>,
    server_key: Vec<u8>,
    client_cert: Vec<u8>,
    client_key: Vec<u8>,
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.display().to_string(),
        source,
    })
}

fn file_error(key: &'static str, path: &Path, msg: impl Into<String>) -> TlsError {
    TlsError::File {
        key,
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

/// What is wrong with the file `key` names, found by the library error `source`.
fn file_cause(
    key: &'static str,
    path: &Path,
    msg: impl Into<String>,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> TlsError {
    TlsError::FileCause {
        key,
        path: path.display().to_string(),
        msg: msg.into(),
        source: source.into(),
    }
}

fn certs(key: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_cause(key, path, "is not a PEM certificate file", e))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")"));
    }
    Ok(certs)
}

fn private_key(key: &'static str, path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| file_cause(key, path, "holds no PEM private key", e))
}

fn format_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

impl Contents {
    fn read(files: &TlsFiles) -> Result<Contents, TlsError> {
        Ok(Contents {
            ca: read("NETSY_TLS_CA_CERT", &files.ca_cert)?,
            server_cert: read("NETSY_TLS_SERVER_CERT", &files.server_cert)?,
            server_key: read("NETSY_TLS_SERVER_KEY", &files.server_key)?,
            client_cert: read("NETSY_TLS_CLIENT_CERT", &files.client_cert)?,
            client_key: read("NETSY_TLS_CLIENT_KEY", &files.client_key)?,
        })
    }

    fn fingerprint(&self) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        (&self.ca, &self.server_cert, &self.server_key, &self.client_cert, &self.client_key).hash(&mut h);
        h.finish()
    }
}

impl Material {
    /// Reads and parses every file; returns the material and the fingerprint of exactly
    /// the bytes it was built from.
    pub fn load(files: &TlsFiles) -> Result<(Material, u64), TlsError> {
        Self::parse(files, Contents::read(files)?)
    }

    /// Like `load`, but `None` when the files' contents still have fingerprint `previous`
    /// (each file is read once either way).
    pub fn load_changed(files: &TlsFiles, previous: u64) -> Result<Option<(Material, u64)>, TlsError> {
        let raw = Contents::read(files)?;
        if raw.fingerprint() == previous {
            return Ok(None);
        }
        Self::parse(files, raw).map(Some)
    }

    fn parse(files: &TlsFiles, raw: Contents) -> Result<(Material, u64), TlsError> {
        let provider = super::provider();
        let mut roots = RootCertStore::empty();
        for ca in certs("NETSY_TLS_CA_CERT", &files.ca_cert, &raw.ca)? {
            roots
                .add(ca)
                .map_err(|e| file_cause("NETSY_TLS_CA_CERT", &files.ca_cert, "holds an unusable CA certificate", e))?;
        }
        let pair = |cert_key: &'static str, cert_path: &Path, cert_pem: &[u8], key_key: &'static str, key_path: &Path, key_pem: &[u8]| {
            let chain = certs(cert_key, cert_path, cert_pem)?;
            let info = identity::from_der(&chain[0]).map_err(|source| TlsError::Identity {
                key: cert_key,
                path: cert_path.display().to_string(),
                source,
            })?;
            let key = private_key(key_key, key_path, key_pem)?;
            let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
                file_cause(
                    key_key,
                    key_path,
                    format!("does not belong to the certificate in {cert_key} ({})", cert_path.display()),
                    e,
                )
            })?;
            Ok::<_, TlsError>((Arc::new(certified), info))
        };
        let (server, server_info) = pair(
            "NETSY_TLS_SERVER_CERT",
            &files.server_cert,
            &raw.server_cert,
            "NETSY_TLS_SERVER_KEY",
            &files.server_key,
            &raw.server_key,
        )?;
        let (client, client_info) = pair(
            "NETSY_TLS_CLIENT_CERT",
            &files.client_cert,
            &raw.client_cert,
            "NETSY_TLS_CLIENT_KEY",
            &files.client_key,
            &raw.client_key,
        )?;
        Ok((
            Material {
                roots: Arc::new(roots),
                server,
                client,
                server_info,
                client_info,
                files: files.clone(),
            },
            raw.fingerprint(),
        ))
    }

    /// The startup self-check (see `Tls::load`).
    pub fn check(&self, cluster_id: &str, node_id: &str, hosts: &[String]) -> Result<(), TlsError> {
        let now = UnixTime::now();
        let now_secs = now.as_secs() as i64;
        let expected = format!("netsy://{cluster_id}/peer/{node_id}");
        for (key, path, info) in [
            ("NETSY_TLS_SERVER_CERT", &self.files.server_cert, &self.server_info),
            ("NETSY_TLS_CLIENT_CERT", &self.files.client_cert, &self.client_info),
        ] {
            let id = &info.identity;
            if id.role != Role::Peer || id.cluster_id != cluster_id || id.name != node_id {
                return Err(file_error(
                    key,
                    path,
                    format!("has identity {id}, but this node needs {expected} (cluster_id {cluster_id:?}, NETSY_NODE_ID {node_id:?}); issue the certificate with that URI SAN"),
                ));
            }
            if info.common_name.as_deref() != Some(node_id) {
                return Err(file_error(
                    key,
                    path,
                    format!(
                        "has common name {:?}, but a peer certificate's CN must equal the node id {node_id:?}",
                        info.common_name.as_deref().unwrap_or("")
                    ),
                ));
            }
            if now_secs < info.not_before {
                return Err(file_error(
                    key,
                    path,
                    format!("is not valid before {}", format_time(info.not_before)),
                ));
            }
            if now_secs > info.not_after {
                return Err(file_error(
                    key,
                    path,
                    format!("expired at {}; renew it", format_time(info.not_after)),
                ));
            }
        }
        let provider = super::provider();
        // The server certificate chains to the CA, is for server authentication, and
        // covers every host peers and clients are told to dial.
        let server_verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider.clone())
            .build()
            .map_err(|e| file_cause("NETSY_TLS_CA_CERT", &self.files.ca_cert, "cannot verify certificates against it", e))?;
        let chain = &self.server.cert;
        for host in hosts {
            let name = ServerName::try_from(host.as_str())
                .map_err(|_| TlsError::Config(format!("advertised host {host:?} is not a valid DNS name or IP address")))?;
            rustls::client::danger::ServerCertVerifier::verify_server_cert(
                server_verifier.as_ref(),
                &chain[0],
                &chain[1..],
                &name,
                &[],
                now,
            )
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                | rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. }) => file_error(
                    "NETSY_TLS_SERVER_CERT",
                    &self.files.server_cert,
                    format!(
                        "does not cover the advertised host {host:?} (NETSY_ADVERTISE_CLIENT / NETSY_ADVERTISE_PEER); add it as a DNS or IP SAN"
                    ),
                ),
                other => file_cause(
                    "NETSY_TLS_SERVER_CERT",
                    &self.files.server_cert,
                    format!("fails verification against NETSY_TLS_CA_CERT for host {host:?}"),
                    other,
                ),
            })?;
        }
        // The client certificate chains to the CA and is for client authentication.
        let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider)
            .build()
            .map_err(|e| file_cause("NETSY_TLS_CA_CERT", &self.files.ca_cert, "cannot verify certificates against it", e))?;
        let chain = &self.client.cert;
        client_verifier.verify_client_cert(&chain[0], &chain[1..], now).map_err(|e| {
            file_cause(
                "NETSY_TLS_CLIENT_CERT",
                &self.files.client_cert,
                "fails verification against NETSY_TLS_CA_CERT as a client certificate",
                e,
            )
        })?;
        Ok(())
    }
}

/// The hosts of advertised URLs (`https://host:port`, `host:port`, `[::1]:port`).
pub fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6).to_string();
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h).to_string()
}

#[cfg(test)]
mod tests {
    use super::url_host;

    #[test]
    fn url_hosts() {
        assert_eq!(
            url_host("https://netsy-0.netsy.ns.svc.cluster.local:2378"),
            "netsy-0.netsy.ns.svc.cluster.local"
        );
        assert_eq!(url_host("127.0.0.1:2381"), "127.0.0.1");
        assert_eq!(url_host("https://[::1]:2378"), "::1");
        assert_eq!(url_host("http://localhost"), "localhost");
    }
}
