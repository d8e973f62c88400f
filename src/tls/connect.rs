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
    let endpoint = Endpoint::from_shared(endpoint_uri(addr))
        .map_err(|e| ConnectError::Address {
            addr: addr.to_string(),
            msg: e.to_string(),
        })?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    let transport = |source| ConnectError::Transport {
        addr: addr.to_string(),
        source,
    };
    let Some(tls) = tls else {
        return endpoint.connect().await.map_err(transport);
    };
    let expected = expected.to_string();
    let connector = tower::service_fn(move |uri: Uri| {
        let tls = tls.clone();
        let expected = expected.clone();
        async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other(format!("{uri} has no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(2381);
            let name = ServerName::try_from(host.clone()).map_err(|e| std::io::Error::other(format!("{host}: {e}")))?;
            // Fetched per connection, so a reconnect after a reload uses the new files.
            let config = tls.peer_client_config(&expected).map_err(std::io::Error::other)?;
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    endpoint.connect_with_connector(connector).await.map_err(transport)
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
