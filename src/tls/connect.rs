//! Outbound peer connections: a tonic channel whose connections present this node's
//! peer certificate and accept only the server certificate of the node meant.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint, Uri};

use super::Tls;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid peer address {addr:?}: {msg}")]
    Address { addr: String, msg: String },
    #[error("cannot connect to {addr}: {source}")]
    Transport { addr: String, source: tonic::transport::Error },
}

/// `http://host:port` for tonic (TLS, when used, comes from our connector).
fn endpoint_uri(addr: &str) -> String {
    let authority = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    format!("http://{}", authority.trim_end_matches('/'))
}

/// A channel to the peer at `addr` (a URL or `host:port`) that must be node `expected`.
/// Without `tls` the channel is plaintext (loopback development clusters).
pub async fn peer_channel(tls: Option<Arc<Tls>>, addr: &str, expected: &str, timeout: Duration) -> Result<Channel, ConnectError> {
    match tls {
        // Fetched per connection, so a reconnect after a reload uses the new files.
        Some(tls) => {
            let expected = expected.to_string();
            tls_channel(addr, timeout, move || {
                tls.peer_client_config(&expected).map_err(std::io::Error::other)
            })
            .await
        }
        None => endpoint(addr, timeout)?.connect().await.map_err(|source| ConnectError::Transport {
            addr: addr.to_string(),
            source,
        }),
    }
}

/// Like `peer_channel`, but connects on first use (and reconnects after failures).
pub fn peer_channel_lazy(tls: Option<Arc<Tls>>, addr: &str, expected: &str, timeout: Duration) -> Result<Channel, ConnectError> {
    let endpoint = endpoint(addr, timeout)?;
    Ok(match tls {
        Some(tls) => {
            let expected = expected.to_string();
            endpoint.connect_with_connector_lazy(connector(move || tls.peer_client_config(&expected).map_err(std::io::Error::other)))
        }
        None => endpoint.connect_lazy(),
    })
}

fn endpoint(addr: &str, timeout: Duration) -> Result<Endpoint, ConnectError> {
    Ok(Endpoint::from_shared(endpoint_uri(addr))
        .map_err(|e| ConnectError::Address {
            addr: addr.to_string(),
            msg: e.to_string(),
        })?
        .connect_timeout(timeout)
        .tcp_nodelay(true))
}

/// A gRPC channel over TLS to `addr`; every (re)connection asks `config` for the client
/// configuration to use. The server name checked is the address's host.
pub async fn tls_channel<F>(addr: &str, timeout: Duration, config: F) -> Result<Channel, ConnectError>
where
    F: Fn() -> std::io::Result<Arc<rustls::ClientConfig>> + Send + Sync + 'static,
{
    endpoint(addr, timeout)?
        .connect_with_connector(connector(config))
        .await
        .map_err(|source| ConnectError::Transport {
            addr: addr.to_string(),
            source,
        })
}

type BoxedIo = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Dials TCP, then TLS with the configuration `config` returns at that moment.
fn connector<F>(
    config: F,
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
        async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other(format!("{uri} has no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone()).map_err(|e| std::io::Error::other(format!("{host}: {e}")))?;
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(config()?).connect(name, tcp).await?;
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
