//! The verifiers. Chains are checked by webpki against the one CA; on top of that a
//! listener admits only certificates of this cluster with its role, and an outbound
//! peer connection accepts only the node it meant to reach.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::SingleCertAndKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, SignatureScheme};

use super::identity::{self, Identity, IdentityError, Role};
use super::material::{ClientMaterial, Material};
use super::{Listener, TlsError};

/// Why a chain-valid certificate is still refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    NoIdentity(IdentityError),
    #[error("certificate {identity} is for cluster {:?}, this is cluster {expected:?}", identity.cluster_id)]
    WrongCluster { identity: Identity, expected: String },
    #[error("certificate {identity} has role {:?}; the {listener} port accepts only {:?} certificates", identity.role.as_str(), expected.as_str())]
    WrongRole {
        identity: Identity,
        listener: &'static str,
        expected: Role,
    },
    #[error("peer certificate {identity} has common name {common_name:?}; it must equal the node id")]
    CommonName { identity: Identity, common_name: String },
    #[error("reached {identity}, expected netsy://{cluster_id}/peer/{expected}")]
    UnexpectedPeer {
        identity: Identity,
        cluster_id: String,
        expected: String,
    },
}

impl Refusal {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoIdentity(_) => "no_identity",
            Refusal::WrongCluster { .. } => "wrong_cluster",
            Refusal::WrongRole { .. } => "wrong_role",
            Refusal::CommonName { .. } => "bad_common_name",
            Refusal::UnexpectedPeer { .. } => "unexpected_peer",
        }
    }
}

fn refuse(r: Refusal) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(r))))
}

/// Checks a verified certificate's identity: this cluster, this role, and for peers a
/// CN equal to the node id.
pub fn check_identity(der: &CertificateDer<'_>, cluster_id: &str, role: Role, listener: &'static str) -> Result<Identity, Refusal> {
    let info = identity::from_der(der).map_err(Refusal::NoIdentity)?;
    let id = info.identity;
    if id.cluster_id != cluster_id {
        return Err(Refusal::WrongCluster {
            identity: id,
            expected: cluster_id.to_string(),
        });
    }
    if id.role != role {
        return Err(Refusal::WrongRole {
            identity: id,
            listener,
            expected: role,
        });
    }
    if role == Role::Peer && info.common_name.as_deref() != Some(id.name.as_str()) {
        return Err(Refusal::CommonName {
            common_name: info.common_name.unwrap_or_default(),
            identity: id,
        });
    }
    Ok(id)
}

/// Handshake signatures are webpki's business: both verifiers pass them to `inner`.
macro_rules! delegate_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

/// Server side: webpki's chain check, then `check_identity` for the listener's role.
#[derive(Debug)]
struct ClientIdentityVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    cluster_id: String,
    role: Role,
    listener: &'static str,
}

impl ClientCertVerifier for ClientIdentityVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        check_identity(end_entity, &self.cluster_id, self.role, self.listener).map_err(refuse)?;
        Ok(verified)
    }

    delegate_signatures!();
}

/// Client side (outbound peer connections): webpki's chain and host name check, then
/// the server's URI SAN must name the expected node of this cluster.
#[derive(Debug)]
struct PeerServerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    cluster_id: String,
    expected: String,
}

impl ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let verified = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        let id = identity::from_der(end_entity).map_err(|e| refuse(Refusal::NoIdentity(e)))?.identity;
        if id.cluster_id != self.cluster_id || id.role != Role::Peer || id.name != self.expected {
            return Err(refuse(Refusal::UnexpectedPeer {
                identity: id,
                cluster_id: self.cluster_id.clone(),
                expected: self.expected.clone(),
            }));
        }
        Ok(verified)
    }

    delegate_signatures!();
}

static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
static TLS13_AND_12: [&rustls::SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];

fn versions(allow_tls12: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    if allow_tls12 {
        &TLS13_AND_12
    } else {
        &TLS13_ONLY
    }
}

fn protocol_error(e: rustls::Error) -> TlsError {
    TlsError::ConfigCause {
        what: "TLS protocol versions",
        source: Box::new(e),
    }
}

fn ca_error(e: rustls::client::VerifierBuilderError) -> TlsError {
    TlsError::ConfigCause {
        what: "NETSY_TLS_CA_CERT",
        source: Box::new(e),
    }
}

/// The server configuration of one listener.
pub fn server_config(
    material: &Material,
    listener: Listener,
    cluster_id: &str,
    allow_tls12: bool,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = super::provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(allow_tls12))
        .map_err(protocol_error)?;
    let role = match listener {
        Listener::Client => Some(Role::Client),
        Listener::Peer => Some(Role::Peer),
        Listener::Health => None,
    };
    let builder = match role {
        Some(role) => {
            let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(material.roots.clone(), provider)
                .build()
                .map_err(ca_error)?;
            builder.with_client_cert_verifier(Arc::new(ClientIdentityVerifier {
                inner,
                cluster_id: cluster_id.to_string(),
                role,
                listener: listener.as_str(),
            }))
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(material.server.clone())));
    if role.is_some() {
        config.alpn_protocols = vec![b"h2".to_vec()];
    }
    Ok(config)
}

/// The client configuration of an outbound peer connection to node `expected`.
pub fn peer_client_config(
    material: &Material,
    cluster_id: &str,
    expected: &str,
    allow_tls12: bool,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = super::provider();
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(material.roots.clone(), provider.clone())
        .build()
        .map_err(ca_error)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(allow_tls12))
        .map_err(protocol_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerServerVerifier {
            inner,
            cluster_id: cluster_id.to_string(),
            expected: expected.to_string(),
        }))
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(material.client.clone())));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// An operator's client (`netsy status`, as etcdctl): webpki's chain and host name
/// check against the CA bundle, or with `insecure` no check of the server's certificate
/// at all (its handshake signature still is); presents the client certificate if any.
pub fn tool_client_config(material: &ClientMaterial, insecure: bool) -> Result<rustls::ClientConfig, TlsError> {
    let provider = super::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(true))
        .map_err(protocol_error)?;
    let builder = match (&material.roots, insecure) {
        (_, true) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert { provider })),
        (Some(roots), false) => {
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider)
                .build()
                .map_err(|e| TlsError::ConfigCause {
                    what: "--cacert",
                    source: Box::new(e),
                })?;
            builder.with_webpki_verifier(verifier)
        }
        (None, false) => {
            return Err(TlsError::Config(
                "a TLS endpoint needs --cacert (the CA that issued the members' server certificates), or --insecure-skip-tls-verify".into(),
            ))
        }
    };
    let mut config = match &material.identity {
        Some(identity) => builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity.clone()))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// `--insecure-skip-tls-verify`: any server certificate is accepted; the handshake
/// signature must still be made with its key.
#[derive(Debug)]
struct AnyServerCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a handshake failed: the metric label and a message for the log.
pub fn failure(err: &std::io::Error) -> (&'static str, String) {
    let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        let reason = match err.kind() {
            std::io::ErrorKind::TimedOut => "timeout",
            std::io::ErrorKind::UnexpectedEof => "eof",
            _ => "io",
        };
        return (reason, err.to_string());
    };
    let reason = match tls {
        Error::NoCertificatesPresented => "no_certificate",
        Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => "not_yet_valid",
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::Revoked => "revoked",
            CertificateError::BadSignature => "bad_signature",
            CertificateError::Other(OtherError(e)) => {
                if let Some(refusal) = e.downcast_ref::<Refusal>() {
                    return (refusal.reason(), refusal.to_string());
                }
                "invalid_certificate"
            }
            _ => "invalid_certificate",
        },
        Error::InvalidMessage(_) => "not_tls",
        Error::NoApplicationProtocol => "no_alpn",
        Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered
            | rustls::PeerIncompatible::Tls12NotOfferedOrEnabled
            | rustls::PeerIncompatible::SupportedVersionsExtensionRequired,
        ) => {
            return (
                "protocol_version",
                format!("{tls}: the client does not offer TLS 1.3 (etcd's Go client before 3.5.8, e.g. etcdctl 3.5.1, offers only TLS 1.2); set tls.min_version to \"1.2\" to admit it"),
            )
        }
        Error::PeerIncompatible(_) => "incompatible",
        Error::AlertReceived(_) => "alert_received",
        _ => "other",
    };
    (reason, tls.to_string())
}
