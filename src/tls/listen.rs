//! The accept loop shared by every listener: accepts TCP connections, runs the TLS
//! handshake (when TLS is configured) off the accept path with a timeout, logs and counts
//! refused handshakes, and hands the servers connections that carry the authenticated
//! identity (`ConnInfo`, a request extension in gRPC handlers).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::identity::Identity;
use super::{Listener, Tls};

/// A slow or silent client gets this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// The certificate identity; `None` on a plaintext listener.
    pub identity: Option<Identity>,
}

impl ConnInfo {
    /// The connection info of a gRPC request served by `serve`.
    pub fn of<T>(req: &tonic::Request<T>) -> Option<&ConnInfo> {
        req.extensions().get::<ConnInfo>()
    }

    /// The caller, for logs: its identity, else its address.
    pub fn describe<T>(req: &tonic::Request<T>) -> String {
        match Self::of(req) {
            Some(ConnInfo { identity: Some(id), .. }) => id.to_string(),
            Some(ConnInfo { remote: Some(a), .. }) => a.to_string(),
            _ => "unknown".to_string(),
        }
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted (and, with TLS, authenticated) connection.
pub struct Conn {
    io: Io,
    info: ConnInfo,
}

impl Conn {
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections of one listener, as a stream for tonic's `serve_with_incoming` and
/// as an `axum::serve` listener. It owns the TCP listener, so dropping it (when its
/// server stops) closes the port at once. With TLS, each handshake runs in its own task
/// (a slow client never holds up the next accept), with the listener's configuration
/// of that moment (so a certificate reload applies to the next connection).
pub struct Incoming {
    listener: TcpListener,
    local: SocketAddr,
    tls: Option<Arc<Tls>>,
    which: Listener,
    done_tx: mpsc::Sender<Conn>,
    done_rx: mpsc::Receiver<Conn>,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Incoming {
    pub fn new(listener: TcpListener, tls: Option<Arc<Tls>>, which: Listener) -> io::Result<Incoming> {
        let (done_tx, done_rx) = mpsc::channel(64);
        Ok(Incoming {
            local: listener.local_addr()?,
            listener,
            tls,
            which,
            done_tx,
            done_rx,
            backoff: None,
        })
    }

    fn poll_conn(&mut self, cx: &mut Context<'_>) -> Poll<Conn> {
        loop {
            if let Poll::Ready(Some(conn)) = self.done_rx.poll_recv(cx) {
                return Poll::Ready(conn);
            }
            if let Some(backoff) = &mut self.backoff {
                if backoff.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.backoff = None;
            }
            let (tcp, remote) = match self.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(accepted)) => accepted,
                Poll::Ready(Err(e)) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = self.which.as_str(), error = %e, "accept failed");
                    self.backoff = Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))));
                    continue;
                }
            };
            // Without TCP_NODELAY a small response can wait for the client's delayed ACK.
            let _ = tcp.set_nodelay(true);
            let Some(tls) = &self.tls else {
                let conn = Conn {
                    io: Io::Plain(tcp),
                    info: ConnInfo {
                        remote: Some(remote),
                        identity: None,
                    },
                };
                if self.which == Listener::Client {
                    tokio::spawn(sniff(conn, self.done_tx.clone()));
                    continue;
                }
                return Poll::Ready(conn);
            };
            tokio::spawn(handshake(
                tcp,
                remote,
                tokio_rustls::TlsAcceptor::from(tls.server_config(self.which)),
                self.which,
                self.done_tx.clone(),
            ));
        }
    }
}

async fn handshake(tcp: TcpStream, remote: SocketAddr, acceptor: tokio_rustls::TlsAcceptor, which: Listener, done: mpsc::Sender<Conn>) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return refused(which, remote, &e),
        Err(_) => return refused(which, remote, &io::Error::new(io::ErrorKind::TimedOut, "handshake timed out")),
    };
    let identity = match which {
        Listener::Health => None,
        // The verifier has already checked this certificate's identity.
        _ => stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|der| super::identity::from_der(der).ok())
            .map(|info| info.identity),
    };
    let _ = done
        .send(Conn {
            io: Io::Tls(Box::new(stream)),
            info: ConnInfo {
                remote: Some(remote),
                identity,
            },
        })
        .await;
}

/// HTTP/2's connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The most of a first request line looked at (as etcd's listener does).
const MAX_SNIFF: usize = 4096;

/// A plaintext client connection is served when it opens with HTTP/2's preface (gRPC) or
/// an HTTP/1 request line, and closed without an answer otherwise, as etcd's client port
/// does (it matches connections the same way before any server sees them).
async fn sniff(conn: Conn, done: mpsc::Sender<Conn>) {
    let Io::Plain(tcp) = &conn.io else { return };
    let mut buf = vec![0; MAX_SNIFF];
    let verdict = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        loop {
            let n = tcp.peek(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, io::Error>(false);
            }
            if let Some(serve) = protocol_known(&buf[..n]) {
                return Ok(serve);
            }
            // Only part of the first line is here: look again shortly.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    match verdict {
        Ok(Ok(true)) => {
            let _ = done.send(conn).await;
        }
        Ok(Ok(false)) => tracing::debug!(remote = ?conn.info.remote, "closed a client connection that spoke neither HTTP/2 nor HTTP/1"),
        Ok(Err(e)) => tracing::debug!(remote = ?conn.info.remote, error = %e, "client connection failed before its first request"),
        Err(_) => tracing::debug!(remote = ?conn.info.remote, "client connection sent no request in time"),
    }
}

/// Whether a connection that began with `head` is served (`None`: not known yet).
fn protocol_known(head: &[u8]) -> Option<bool> {
    if head.len() >= PREFACE.len() && head.starts_with(PREFACE) {
        return Some(true);
    }
    if PREFACE.starts_with(head) {
        return None;
    }
    match head.iter().position(|&b| b == b'\n') {
        Some(end) => {
            let line = head[..end].strip_suffix(b"\r").unwrap_or(&head[..end]);
            Some(is_http1_request_line(line))
        }
        None if head.len() >= MAX_SNIFF => Some(false),
        None => None,
    }
}

/// `METHOD TARGET HTTP/1.x`: three parts split at the first two spaces, the last an
/// HTTP version of major 1.
fn is_http1_request_line(line: &[u8]) -> bool {
    let Ok(line) = std::str::from_utf8(line) else { return false };
    let Some((_, rest)) = line.split_once(' ') else { return false };
    let Some((_, proto)) = rest.split_once(' ') else { return false };
    let Some((major, minor)) = proto.strip_prefix("HTTP/").and_then(|v| v.split_once('.')) else {
        return false;
    };
    let number = |s: &str| !s.is_empty() && s.len() <= 7 && s.bytes().all(|b| b.is_ascii_digit());
    number(major) && number(minor) && major.parse::<u32>() == Ok(1)
}

fn refused(which: Listener, remote: SocketAddr, err: &io::Error) {
    let (reason, error) = super::verify::failure(err);
    crate::metrics::TLS_HANDSHAKE_FAILURES
        .with_label_values(&[which.as_str(), reason])
        .inc();
    tracing::warn!(listener = which.as_str(), %remote, reason, %error, "TLS handshake refused");
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Conn>>> {
        self.get_mut().poll_conn(cx).map(|c| Some(Ok(c)))
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        let conn = std::future::poll_fn(|cx| self.poll_conn(cx)).await;
        let addr = conn.info.remote.unwrap_or(self.local);
        (conn, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::protocol_known;

    #[test]
    fn plaintext_connections_are_told_apart_as_etcd_does() {
        let served: [&[u8]; 4] = [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00",
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /v3/kv/range HTTP/1.0\r\n",
            b"GARBAGE /x HTTP/1.1\n",
        ];
        for head in served {
            assert_eq!(protocol_known(head), Some(true), "{head:?}");
        }
        let closed: [&[u8]; 5] = [
            b"\x00\x01\x02garbage garbage garbage\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
            b"GET /health\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET / HTTP/x.1\r\n",
        ];
        for head in closed {
            assert_eq!(protocol_known(head), Some(false), "{head:?}");
        }
        for head in [&b"PRI * HTTP"[..], b"GET /health HTTP/1.1", b""] {
            assert_eq!(protocol_known(head), None, "{head:?}: wait for more");
        }
        assert_eq!(protocol_known(&[b'a'; 4096]), Some(false), "no line within 4 KiB");
    }
}
