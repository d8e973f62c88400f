//! A cuttable network for multi-process clusters: every member's peer port sits behind a
//! TCP proxy, and each member dials its peers from its own loopback address
//! (127.0.0.{i+2}, netsy's outbound peer source is its peer bind address), so the proxy
//! knows which link a connection belongs to. A cut link black-holes: established
//! connections are reset and new ones are accepted but never answered, as when packets
//! are dropped.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// The loopback address member `i` binds its peer port to and dials from.
pub fn member_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + i as u8)
}

fn member_of(ip: IpAddr) -> Option<usize> {
    match ip {
        IpAddr::V4(v4) if v4.octets()[..3] == [127, 0, 0] && v4.octets()[3] >= 2 => Some(v4.octets()[3] as usize - 2),
        _ => None,
    }
}

struct Conn {
    from: usize,
    to: usize,
    ends: [TcpStream; 2],
}

#[derive(Default)]
struct State {
    /// Directed links that drop traffic (from, to).
    cut: HashSet<(usize, usize)>,
    live: Vec<Conn>,
    /// Connections accepted on a cut link, held unanswered until it heals.
    held: Vec<(usize, usize, TcpStream)>,
}

#[derive(Default)]
pub struct Net {
    state: Mutex<State>,
}

impl Net {
    pub fn new() -> Arc<Net> {
        Arc::new(Net::default())
    }

    /// Starts a proxy on a free port of 127.0.0.1 in front of member `to`'s peer port
    /// `target`; returns the proxy's port (the member's advertised peer port).
    pub fn front(self: &Arc<Self>, to: usize, target: SocketAddr) -> u16 {
        let port = super::free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind proxy");
        let net = self.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let from = conn.peer_addr().ok().and_then(|a| member_of(a.ip())).unwrap_or(usize::MAX);
                net.admit(from, to, conn, target);
            }
        });
        port
    }

    fn admit(self: &Arc<Self>, from: usize, to: usize, conn: TcpStream, target: SocketAddr) {
        let mut state = self.state.lock().unwrap();
        if state.cut.contains(&(from, to)) {
            state.held.push((from, to, conn));
            return;
        }
        drop(state);
        let Ok(upstream) = TcpStream::connect(target) else {
            return; // the member is down: the caller sees the connection close
        };
        let _ = upstream.set_nodelay(true);
        let _ = conn.set_nodelay(true);
        let (Ok(a), Ok(b)) = (conn.try_clone(), upstream.try_clone()) else {
            return;
        };
        let mut state = self.state.lock().unwrap();
        if state.cut.contains(&(from, to)) {
            return; // cut while connecting
        }
        state.live.push(Conn { from, to, ends: [a, b] });
        drop(state);
        pipe(conn.try_clone(), upstream.try_clone());
        pipe(upstream.try_clone(), conn.try_clone());
    }

    /// Cuts the links between `a` and `b`, both ways.
    pub fn cut(&self, a: usize, b: usize) {
        self.cut_one_way(a, b);
        self.cut_one_way(b, a);
    }

    /// Cuts one direction: connections `from` dials to `to` black-hole (established ones
    /// are reset, new ones never answered), while connections `to` dials to `from` still
    /// work, their replies included (a firewall that drops one direction's SYNs).
    pub fn cut_one_way(&self, from: usize, to: usize) {
        let mut state = self.state.lock().unwrap();
        state.cut.insert((from, to));
        state.live.retain(|c| {
            let cut = (c.from, c.to) == (from, to);
            if cut {
                for end in &c.ends {
                    let _ = end.shutdown(Shutdown::Both);
                }
            }
            !cut
        });
    }

    /// Cuts member `i` off from every other of the `n` members.
    pub fn isolate(&self, i: usize, n: usize) {
        for j in (0..n).filter(|&j| j != i) {
            self.cut(i, j);
        }
    }

    /// Splits the `n` members in two: `side` and the rest, cut off from each other.
    pub fn partition(&self, side: &[usize], n: usize) {
        for &i in side {
            for j in (0..n).filter(|j| !side.contains(j)) {
                self.cut(i, j);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        let mut state = self.state.lock().unwrap();
        state.cut.clear();
        for (_, _, conn) in state.held.drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

/// Copies one direction until either side closes, then closes both.
fn pipe(from: std::io::Result<TcpStream>, to: std::io::Result<TcpStream>) {
    let (Ok(mut from), Ok(mut to)) = (from, to) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}
