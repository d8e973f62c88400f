//! Outbound connections. To peers: a tonic channel whose connections present this
//! node's peer certificate and accept only the server certificate of the node meant. To
//! a member's client port, for operator commands (`netsy status`): plaintext or TLS as
//! etcdctl dials, keeping the certificate the member presented.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tonic::transport::{Channel, Endpoint, Uri};

use super::Tls;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid address {addr:?}: {msg}")]
    Address { addr: String, msg: String },
    #[error("invalid address {addr:?}: {source}")]
    Invalid { addr: String, source: tonic::transport::Error },
    #[error("cannot connect to {addr}: {source}")]
    Transport { addr: String, source: tonic::transport::Error },
}

/// A peer URL whose host is not a valid TLS server name.
#[derive(Debug, thiserror::Error)]
#[error("{host}: {source}")]
struct BadHost {
    host: String,
    source: rustls::pki_types::InvalidDnsNameError,
}

/// `http://host:port` for tonic (TLS, when used, comes from our connector).
fn endpoint_uri(addr: &str) -> String {
    let authority = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    format!("http://{}", authority.trim_end_matches('/'))
}

/// How this node dials its peers: with its TLS material (or plaintext, for loopback
/// development clusters) and, when the peer port is bound to one address, from that
/// address (so peer traffic leaves through the peer interface).
#[derive(Clone, Default)]
pub struct Dialer {
    pub tls: Option<Arc<Tls>>,
    pub source: Option<IpAddr>,
}

impl Dialer {
    /// The source address for a node whose peer listener is bound to `bind`: none for a
    /// wildcard bind.
    pub fn new(tls: Option<Arc<Tls>>, bind: std::net::SocketAddr) -> Dialer {
        let source = Some(bind.ip()).filter(|ip| !ip.is_unspecified());
        Dialer { tls, source }
    }

    /// A channel to the peer at `addr` (a URL or `host:port`) that must be node
    /// `expected`, connected now.
    pub async fn channel(&self, addr: &str, expected: &str, timeout: Duration) -> Result<Channel, ConnectError> {
        let endpoint = self.endpoint(addr, timeout)?;
        let connected = match &self.tls {
            Some(tls) => {
                endpoint
                    .connect_with_connector(connector(self.source, peer_config(tls.clone(), expected), None))
                    .await
            }
            None => endpoint.connect().await,
        };
        connected.map_err(|source| ConnectError::Transport {
            addr: addr.to_string(),
            source,
        })
    }

    /// Like `channel`, but connects on first use (and reconnects after failures).
    pub fn lazy(&self, addr: &str, expected: &str, timeout: Duration) -> Result<Channel, ConnectError> {
        let endpoint = self.endpoint(addr, timeout)?;
        Ok(match &self.tls {
            Some(tls) => endpoint.connect_with_connector_lazy(connector(self.source, peer_config(tls.clone(), expected), None)),
            None => endpoint.connect_lazy(),
        })
    }

    fn endpoint(&self, addr: &str, timeout: Duration) -> Result<Endpoint, ConnectError> {
        Ok(endpoint(addr, timeout)?.local_address(self.source))
    }
}

/// The leaf certificate the server of a client connection presented (of its newest
/// connection), once the handshake is done.
#[derive(Clone, Default)]
pub struct PresentedCert(Arc<Mutex<Option<CertificateDer<'static>>>>);

impl PresentedCert {
    pub fn get(&self) -> Option<CertificateDer<'static>> {
        match self.0.lock() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, cert: CertificateDer<'static>) {
        match self.0.lock() {
            Ok(mut c) => *c = Some(cert),
            Err(poisoned) => *poisoned.into_inner() = Some(cert),
        }
    }
}

/// A channel to a member's client port at `addr`, connected now: plaintext for
/// `http://`, TLS with `tls` for `https://`, and for a bare `host:port` TLS when `tls` is
/// given (as etcdctl, which dials TLS when any TLS flag is set). The server's certificate
/// lands in `presented`.
pub async fn client_channel(
    addr: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    presented: &PresentedCert,
) -> Result<Channel, ConnectError> {
    let secure = match addr.split_once("://") {
        Some(("http", _)) => false,
        Some(("https", _)) => true,
        Some((scheme, _)) => {
            return Err(ConnectError::Address {
                addr: addr.to_string(),
                msg: format!("scheme {scheme:?}: use http://, https:// or host:port"),
            })
        }
        None => tls.is_some(),
    };
    let endpoint = endpoint(addr, timeout)?;
    let connected = match (secure, tls) {
        (false, _) => endpoint.connect().await,
        (true, Some(tls)) => {
            let config = move || Ok(tls.clone());
            endpoint
                .connect_with_connector(connector(None, config, Some(presented.clone())))
                .await
        }
        (true, None) => {
            return Err(ConnectError::Address {
                addr: addr.to_string(),
                msg: "an https:// endpoint needs --cacert (or --insecure-skip-tls-verify)".into(),
            })
        }
    };
    connected.map_err(|source| ConnectError::Transport {
        addr: addr.to_string(),
        source,
    })
}

fn endpoint(addr: &str, timeout: Duration) -> Result<Endpoint, ConnectError> {
    Ok(Endpoint::from_shared(endpoint_uri(addr))
        .map_err(|source| ConnectError::Invalid {
            addr: addr.to_string(),
            source,
        })?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        // A connection that died without a reset (a partition, a vanished node) is found
        // within seconds and redialled, rather than holding a long-lived stream (forwarded
        // writes) until every request on it times out.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true))
}

type BoxedIo = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// The client configuration for reaching peer `expected`, fetched per connection so a
/// reconnect after a reload uses the new files.
fn peer_config(tls: Arc<Tls>, expected: &str) -> impl Fn() -> std::io::Result<Arc<rustls::ClientConfig>> + Send + Sync + 'static {
    let expected = expected.to_string();
    move || tls.peer_client_config(&expected).map_err(std::io::Error::other)
}

/// A TCP connection to `host:port`, from `source` when given.
async fn connect_tcp(source: Option<IpAddr>, host: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let Some(source) = source else {
        return tokio::net::TcpStream::connect((host, port)).await;
    };
    let mut last = std::io::Error::other(format!("{host}:{port} resolves to no address"));
    for addr in tokio::net::lookup_host((host, port)).await? {
        if addr.is_ipv4() != source.is_ipv4() {
            continue;
        }
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        match socket.connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Dials TCP, then TLS with the configuration `config` returns at that moment; the
/// server's certificate goes into `presented`, when given.
fn connector<F>(
    source: Option<IpAddr>,
    config: F,
    presented: Option<PresentedCert>,
) -> impl tower::Service<
    Uri,
    Response = BoxedIo,
    Error = std::io::Error,
    Future = impl std::future::Future<Output = std::io::Result<BoxedIo>> + Send,
> + Clone
       + Send
       + 'static
where
    F: Fn() -> std::io::Result<Arc<rustls::ClientConfig>> + Send + Sync + 'static,
{
    let config = Arc::new(config);
    tower::service_fn(move |uri: Uri| {
        let config = config.clone();
        let presented = presented.clone();
        async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other(format!("{uri} has no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone()).map_err(|source| {
                std::io::Error::other(BadHost {
                    host: host.clone(),
                    source,
                })
            })?;
            let tcp = connect_tcp(source, &host, port).await?;
            tcp.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(config()?).connect(name, tcp).await?;
            if let (Some(presented), Some(leaf)) = (&presented, stream.get_ref().1.peer_certificates().and_then(|c| c.first())) {
                presented.set(leaf.clone().into_owned());
            }
            Ok(TokioIo::new(stream))
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoint_uris() {
        assert_eq!(super::endpoint_uri("https://netsy-1.netsy:2381"), "http://netsy-1.netsy:2381");
        assert_eq!(super::endpoint_uri("127.0.0.1:2381"), "http://127.0.0.1:2381");
        assert_eq!(super::endpoint_uri("https://[::1]:2381/"), "http://[::1]:2381");
    }
}
