//! Certificate identities: the first URI SAN with scheme `netsy`, in the form
//! `netsy://{cluster_id}/{role}/{name}`; role `peer` (name = node id) or `client`.

use std::fmt;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate, X509Error};

pub use crate::config::is_identifier;

/// What a certificate may do: talk Raft on the peer port, or use the client API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Peer,
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Peer => "peer",
            Role::Client => "client",
        }
    }
}

/// An authenticated identity, as a request handler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub cluster_id: String,
    pub role: Role,
    pub name: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "netsy://{}/{}/{}", self.cluster_id, self.role.as_str(), self.name)
    }
}

/// Why a certificate carries no usable identity.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate cannot be parsed: {0}")]
    Unparsable(#[source] X509Error),
    #[error("the certificate has no URI SAN of the form netsy://{{cluster_id}}/{{peer|client}}/{{name}}")]
    Missing,
    #[error("URI SAN {uri:?} is malformed: {reason}")]
    Malformed { uri: String, reason: &'static str },
}

/// A client name: printable ASCII without `/`, `?`, `#`, `%` or spaces, at most 128 bytes
/// (so it is safe in log lines and audit records).
fn is_client_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic() && !b"/?#%".contains(&b))
}

/// Parses `netsy://{cluster_id}/{role}/{name}`. Strict: no port, user info, query,
/// fragment, percent-encoding or trailing segments.
pub fn parse_uri(uri: &str) -> Result<Identity, IdentityError> {
    let bad = |reason| IdentityError::Malformed {
        uri: uri.chars().take(200).collect(),
        reason,
    };
    let rest = uri.strip_prefix("netsy://").ok_or_else(|| bad("the scheme is not netsy://"))?;
    let mut parts = rest.split('/');
    let (Some(cluster), Some(role), Some(name), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad("it must have exactly three parts: cluster id, role, name"));
    };
    if !is_identifier(cluster) {
        return Err(bad("the cluster id must be 1-32 lowercase letters, digits and single hyphens"));
    }
    let role = match role {
        "peer" => Role::Peer,
        "client" => Role::Client,
        _ => return Err(bad("the role must be \"peer\" or \"client\"")),
    };
    let name_ok = match role {
        Role::Peer => is_identifier(name),
        Role::Client => is_client_name(name),
    };
    if !name_ok {
        return Err(bad(match role {
            Role::Peer => "a peer name must be a node id (1-32 lowercase letters, digits and single hyphens)",
            Role::Client => "a client name must be 1-128 printable characters without '/', '?', '#', '%' or spaces",
        }));
    }
    Ok(Identity {
        cluster_id: cluster.to_string(),
        role,
        name: name.to_string(),
    })
}

/// What netsy reads from a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub identity: Identity,
    /// The subject's first common name, if any.
    pub common_name: Option<String>,
    /// Validity, in seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| {
        IdentityError::Unparsable(match e {
            x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e,
            x509_parser::nom::Err::Incomplete(_) => X509Error::InvalidCertificate,
        })
    })?;
    Ok(cert)
}

/// The end of a DER certificate's validity, in seconds since the Unix epoch (of any
/// certificate, with or without a netsy identity).
pub fn not_after(der: &[u8]) -> Result<i64, IdentityError> {
    Ok(parse(der)?.validity().not_after.timestamp())
}

/// Reads the identity (the first `netsy://` URI SAN) and the CN from a DER certificate.
pub fn from_der(der: &[u8]) -> Result<CertInfo, IdentityError> {
    let cert = parse(der)?;
    let san = cert.subject_alternative_name().map_err(IdentityError::Unparsable)?;
    let uri = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .find_map(|n| match n {
            GeneralName::URI(u) if u.starts_with("netsy:") => Some(*u),
            _ => None,
        })
        .ok_or(IdentityError::Missing)?;
    let identity = parse_uri(uri)?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    Ok(CertInfo {
        identity,
        common_name,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_identities() {
        let id = parse_uri("netsy://prod-1/peer/netsy-0").unwrap();
        assert_eq!(
            id,
            Identity {
                cluster_id: "prod-1".into(),
                role: Role::Peer,
                name: "netsy-0".into()
            }
        );
        assert_eq!(id.to_string(), "netsy://prod-1/peer/netsy-0");
        let c = parse_uri("netsy://prod-1/client/kube-apiserver").unwrap();
        assert_eq!(c.role, Role::Client);
        assert_eq!(c.name, "kube-apiserver");
        assert_eq!(
            parse_uri("netsy://a/client/system:kube-apiserver.x_y").unwrap().name,
            "system:kube-apiserver.x_y"
        );
    }

    #[test]
    fn rejects_malformed_identities() {
        let long = format!("netsy://{}/peer/n", "a".repeat(33));
        let long_client = format!("netsy://c/client/{}", "a".repeat(129));
        for uri in [
            "",
            "netsy:",
            "netsy://",
            "netsy:///peer/n",
            "netsy://c//n",
            "netsy://c/peer/",
            "netsy://c/peer",
            "netsy://c",
            "netsy://c/admin/n",
            "netsy://c/Peer/n",
            "netsy://c/peer/n/extra",
            "netsy://c/peer/n/",
            "netsy://C/peer/n",
            "netsy://c:443/peer/n",
            "netsy://user@c/peer/n",
            "netsy://c/peer/n?x=1",
            "netsy://c/peer/n#f",
            "netsy://c/peer/Node",
            "netsy://c/peer/-n",
            "netsy://c/peer/n-",
            "netsy://c/peer/a--b",
            "netsy://-c/peer/n",
            "netsy://c/client/a b",
            "netsy://c/client/a%2fb",
            "netsy://c/client/a\u{e9}",
            "netsy://c/client/a\nb",
            "spiffe://c/peer/n",
            "NETSY://c/peer/n",
            "https://c/peer/n",
            long.as_str(),
            long_client.as_str(),
        ] {
            assert!(parse_uri(uri).is_err(), "{uri:?} should be rejected");
        }
    }

    /// Fuzz-ish: mutations of a valid SAN never panic, and whatever parses round-trips
    /// and satisfies the identifier rules.
    #[test]
    fn mutated_sans_never_panic_and_accepted_ones_round_trip() {
        use rand::{Rng, SeedableRng};
        let alphabet: Vec<char> = "netsy:/-_.%?#@ abcxyzABC019\u{0}\u{7f}\u{e9}\u{1F600}".chars().collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let seeds = ["netsy://prod/peer/netsy-0", "netsy://c/client/kube-apiserver"];
        for i in 0..20_000 {
            let mut s: Vec<char> = seeds[i % 2].chars().collect();
            for _ in 0..rng.random_range(1..4) {
                let pos = rng.random_range(0..=s.len());
                match rng.random_range(0..3) {
                    0 if pos < s.len() => {
                        s.remove(pos);
                    }
                    1 if pos < s.len() => s[pos] = alphabet[rng.random_range(0..alphabet.len())],
                    _ => s.insert(pos, alphabet[rng.random_range(0..alphabet.len())]),
                }
            }
            let uri: String = s.into_iter().collect();
            if let Ok(id) = parse_uri(&uri) {
                assert_eq!(id.to_string(), uri);
                assert!(is_identifier(&id.cluster_id), "{uri:?}");
                if id.role == Role::Peer {
                    assert!(is_identifier(&id.name), "{uri:?}");
                }
                assert!(id.name.is_ascii() && !id.name.contains('/'), "{uri:?}");
            }
        }
    }

    /// Corrupted certificates never panic the parser (it runs on every handshake).
    #[test]
    fn mutated_certificates_never_panic() {
        use rand::{Rng, SeedableRng};
        let ca = crate::tls::dev::Ca::new("c-ca").unwrap();
        let leaf = ca
            .issue(&crate::tls::dev::LeafSpec::identity("c", Role::Client, "x", false, 1))
            .unwrap();
        let der =
            <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        assert_eq!(from_der(&der).unwrap().identity.to_string(), "netsy://c/client/x");
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..5_000 {
            let mut bytes = der.to_vec();
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random();
            }
            if rng.random_bool(0.1) {
                bytes.truncate(rng.random_range(0..bytes.len()));
            }
            let _ = from_der(&bytes);
        }
    }

    #[test]
    fn garbage_der_is_an_error() {
        assert!(matches!(from_der(b"not a certificate"), Err(IdentityError::Unparsable(_))));
        assert!(matches!(from_der(&[]), Err(IdentityError::Unparsable(_))));
        let err = from_der(b"not a certificate").unwrap_err();
        assert!(
            std::error::Error::source(&err).is_some_and(|s| s.is::<X509Error>()),
            "the parser's error is the source: {err:?}"
        );
    }
}
