//! Development certificates (`netsy certs dev`): a CA, and per node a server and a peer
//! certificate, plus client certificates, laid out as the Helm chart mounts them:
//! `ca.crt`, `<node>/server.crt|server.key|peer.crt|peer.key`,
//! `clients/<name>.crt|<name>.key`. The CA key (`ca.key`) is kept so that a later run
//! adds nodes or clients under the same CA.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use time::{Duration, OffsetDateTime};

use super::identity::{self, Role};
use super::TlsError;

fn gen_err(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e)
}

/// A certificate authority that can issue leaves.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A PEM certificate and its PEM private key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a leaf certificate says.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub common_name: String,
    /// The `netsy://` URI SAN (or any URI, for tests of malformed identities).
    pub uri: Option<String>,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub server_auth: bool,
    pub client_auth: bool,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// A certificate for `netsy://{cluster}/{role}/{name}`, valid from an hour ago for
    /// `days` days. Peer server certificates cover `localhost`, the name, 127.0.0.1 and ::1.
    pub fn identity(cluster_id: &str, role: Role, name: &str, server: bool, days: i64) -> LeafSpec {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            common_name: name.to_string(),
            uri: Some(format!("netsy://{cluster_id}/{}/{name}", role.as_str())),
            dns: if server {
                vec!["localhost".to_string(), name.to_string()]
            } else {
                vec![]
            },
            ips: if server {
                vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])]
            } else {
                vec![]
            },
            server_auth: server,
            client_auth: !server,
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }
}

impl Ca {
    /// A new CA (ECDSA P-256), valid for ten years.
    pub fn new(common_name: &str) -> Result<Ca, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// An existing CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(gen_err)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(gen_err)?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn issue(&self, spec: &LeafSpec) -> Result<Leaf, TlsError> {
        let mut params = CertificateParams::new(spec.dns.clone()).map_err(gen_err)?;
        params.distinguished_name.push(DnType::CommonName, spec.common_name.as_str());
        for ip in &spec.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        if let Some(uri) = &spec.uri {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into().map_err(gen_err)?));
        }
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        if spec.server_auth {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.client_auth {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// `netsy certs dev` options.
#[derive(Debug, Clone)]
pub struct DevCerts {
    pub cluster_id: String,
    pub nodes: Vec<String>,
    pub clients: Vec<String>,
    /// Extra DNS names or IPs for every node's server certificate.
    pub hosts: Vec<String>,
    pub days: i64,
    pub out: PathBuf,
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), TlsError> {
    let io = |source| TlsError::GenerateFile {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if secret { 0o600 } else { 0o644 });
        }
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(contents.as_bytes()).map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// Writes the certificates; returns the files written.
pub fn write_dev_certs(opts: &DevCerts) -> Result<Vec<PathBuf>, TlsError> {
    if !identity::is_identifier(&opts.cluster_id) {
        return Err(TlsError::Config(format!(
            "--cluster-id {:?} must be 1-32 lowercase letters, digits and single hyphens",
            opts.cluster_id
        )));
    }
    for node in &opts.nodes {
        if !identity::is_identifier(node) {
            return Err(TlsError::Config(format!(
                "--nodes: {node:?} must be a node id (1-32 lowercase letters, digits and single hyphens)"
            )));
        }
    }
    for client in &opts.clients {
        identity::parse_uri(&format!("netsy://{}/client/{client}", opts.cluster_id)).map_err(|e| TlsError::ConfigCause {
            what: "--clients",
            source: Box::new(e),
        })?;
    }
    if opts.days < 1 {
        return Err(TlsError::Config("--days must be at least 1".into()));
    }
    let mut extra_dns = Vec::new();
    let mut extra_ips = Vec::new();
    for h in &opts.hosts {
        match h.parse::<IpAddr>() {
            Ok(ip) => extra_ips.push(ip),
            Err(_) => extra_dns.push(h.clone()),
        }
    }
    let ca_crt = opts.out.join("ca.crt");
    let ca_key = opts.out.join("ca.key");
    let mut written = Vec::new();
    let ca = if ca_crt.exists() && ca_key.exists() {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| TlsError::GenerateFile {
                path: p.display().to_string(),
                source,
            })
        };
        Ca::from_pem(&read(&ca_crt)?, &read(&ca_key)?)?
    } else {
        let ca = Ca::new(&format!("{}-ca", opts.cluster_id))?;
        write(&ca_crt, ca.cert_pem(), false)?;
        write(&ca_key, &ca.key_pem(), true)?;
        written.extend([ca_crt.clone(), ca_key.clone()]);
        ca
    };
    let mut emit = |dir: &Path, stem: &str, leaf: Leaf| -> Result<(), TlsError> {
        let crt = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        write(&crt, &leaf.cert_pem, false)?;
        write(&key, &leaf.key_pem, true)?;
        written.extend([crt, key]);
        Ok(())
    };
    for node in &opts.nodes {
        let dir = opts.out.join(node);
        let mut server = LeafSpec::identity(&opts.cluster_id, Role::Peer, node, true, opts.days);
        server.dns.extend(extra_dns.iter().cloned());
        server.ips.extend(extra_ips.iter().cloned());
        emit(&dir, "server", ca.issue(&server)?)?;
        emit(
            &dir,
            "peer",
            ca.issue(&LeafSpec::identity(&opts.cluster_id, Role::Peer, node, false, opts.days))?,
        )?;
    }
    let clients = opts.out.join("clients");
    for client in &opts.clients {
        emit(
            &clients,
            client,
            ca.issue(&LeafSpec::identity(&opts.cluster_id, Role::Client, client, false, opts.days))?,
        )?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_leaves_carry_the_identity_and_cn() {
        let ca = Ca::new("c-ca").unwrap();
        let leaf = ca.issue(&LeafSpec::identity("c", Role::Peer, "netsy-0", true, 1)).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        let info = identity::from_der(&der).unwrap();
        assert_eq!(info.identity.to_string(), "netsy://c/peer/netsy-0");
        assert_eq!(info.common_name.as_deref(), Some("netsy-0"));
        assert!(info.not_after > info.not_before);
    }

    #[test]
    fn reuses_an_existing_ca() {
        let dir = tempfile::tempdir().unwrap();
        let opts = DevCerts {
            cluster_id: "c".into(),
            nodes: vec!["n-0".into()],
            clients: vec!["etcdctl".into()],
            hosts: vec!["10.0.0.1".into(), "netsy.example".into()],
            days: 30,
            out: dir.path().to_path_buf(),
        };
        let first = write_dev_certs(&opts).unwrap();
        assert_eq!(first.len(), 8);
        let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
        let again = write_dev_certs(&DevCerts {
            clients: vec!["other".into()],
            nodes: vec![],
            ..opts.clone()
        })
        .unwrap();
        assert_eq!(again.len(), 2, "{again:?}");
        assert_eq!(std::fs::read(dir.path().join("ca.crt")).unwrap(), ca);
        let bad = DevCerts {
            nodes: vec!["Bad_Node".into()],
            ..opts
        };
        assert!(write_dev_certs(&bad).is_err());
    }

    use rustls::pki_types::pem::PemObject;
}
