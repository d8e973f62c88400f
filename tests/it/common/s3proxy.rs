//! A TCP proxy between the members and moto's S3 server (the members' S3 endpoint is the
//! proxy), whose mode can change at any time to inject object-store faults:
//! - `Outage`: every open connection is reset and new ones are closed at once;
//! - `Slow(d)`: each chunk of data, either way, is held for `d`;
//! - `LoseResponses`: requests reach moto and are carried out, but the connection is
//!   closed as soon as the response starts, so the member never learns the outcome.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Outage,
    Slow(Duration),
    LoseResponses,
}

#[derive(Default)]
pub struct Counters {
    /// Connections forwarded to moto.
    pub forwarded: AtomicU64,
    /// Connections closed on arrival (outage).
    pub refused: AtomicU64,
    /// Responses dropped after moto carried out the request.
    pub lost_responses: AtomicU64,
}

struct State {
    mode: Mode,
    /// Both ends of every open forwarded connection, to reset them on an outage.
    live: HashMap<u64, [TcpStream; 2]>,
    next_id: u64,
}

pub struct S3Proxy {
    pub port: u16,
    state: Arc<Mutex<State>>,
    pub counters: Arc<Counters>,
}

impl S3Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to moto on `upstream`.
    pub fn start(upstream: u16) -> S3Proxy {
        let port = super::free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the S3 proxy");
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Pass,
            live: HashMap::new(),
            next_id: 0,
        }));
        let counters = Arc::new(Counters::default());
        let (s, c) = (state.clone(), counters.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                admit(&s, &c, conn, upstream);
            }
        });
        S3Proxy { port, state, counters }
    }

    pub fn mode(&self) -> Mode {
        self.state.lock().unwrap().mode
    }

    /// Switches the mode; an outage also resets every open connection.
    pub fn set_mode(&self, mode: Mode) {
        let mut state = self.state.lock().unwrap();
        state.mode = mode;
        if mode == Mode::Outage {
            for (_, ends) in state.live.drain() {
                for end in ends {
                    let _ = end.shutdown(Shutdown::Both);
                }
            }
        }
    }
}

fn admit(state: &Arc<Mutex<State>>, counters: &Arc<Counters>, conn: TcpStream, upstream: u16) {
    if state.lock().unwrap().mode == Mode::Outage {
        counters.refused.fetch_add(1, Ordering::Relaxed);
        let _ = conn.shutdown(Shutdown::Both);
        return;
    }
    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        counters.refused.fetch_add(1, Ordering::Relaxed);
        return; // moto is down: the member sees the connection close
    };
    let _ = up.set_nodelay(true);
    let _ = conn.set_nodelay(true);
    let clones = (conn.try_clone(), up.try_clone(), conn.try_clone(), up.try_clone());
    let (Ok(a), Ok(b), Ok(conn2), Ok(up2)) = clones else {
        return;
    };
    let id = {
        let mut s = state.lock().unwrap();
        if s.mode == Mode::Outage {
            return;
        }
        s.next_id += 1;
        let id = s.next_id;
        s.live.insert(id, [a, b]);
        id
    };
    counters.forwarded.fetch_add(1, Ordering::Relaxed);
    let (s1, s2) = (state.clone(), state.clone());
    let c2 = counters.clone();
    std::thread::spawn(move || {
        pump(conn, up, &s1, None);
        s1.lock().unwrap().live.remove(&id);
    });
    std::thread::spawn(move || pump(up2, conn2, &s2, Some(&c2)));
}

/// Copies `from` to `to` chunk by chunk under the current mode, then closes both.
/// `responses` is set for the direction from moto to the member.
fn pump(mut from: TcpStream, mut to: TcpStream, state: &Mutex<State>, responses: Option<&Counters>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mode = state.lock().unwrap().mode;
        match (mode, responses) {
            (Mode::Outage, _) => break,
            (Mode::LoseResponses, Some(counters)) => {
                counters.lost_responses.fetch_add(1, Ordering::Relaxed);
                break;
            }
            (Mode::Slow(d), _) => std::thread::sleep(d),
            _ => {}
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
