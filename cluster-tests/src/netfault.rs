//! Network partitions between member processes: a TCP proxy in front of every member's Raft
//! port, through which all member-to-member traffic goes.
//!
//! Each member advertises its proxy's address as its `raft_addr` and listens on a port only the
//! proxy knows (`raft_listen`). Each member also sends from its own loopback address
//! (`source_ip` 127.0.0.(10+id)), so the proxy in front of member B knows that a connection
//! comes from member A. Cutting the link A–B makes both proxies drop what crosses it: bytes read
//! from either side are thrown away, as a network that loses every packet would, and the
//! senders find out by their own timeouts. Healing closes the connections that lost data, so
//! the members reconnect over a clean link.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::ports::free_port;

/// The source address member `id` sends from.
pub fn source_ip(id: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + id as u8))
}

/// One proxied connection: both sockets, to close them on heal.
struct Conn {
    sockets: [TcpStream; 2],
    lost_data: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    cut: BTreeSet<(u64, u64)>,
    conns: Vec<Conn>,
}

/// Proxies in front of members; cut and heal links between them.
pub struct Partitioner {
    state: Arc<Mutex<State>>,
    /// member id -> (proxy port it advertises, port it really listens on)
    ports: BTreeMap<u64, (u16, u16)>,
}

fn link(a: u64, b: u64) -> (u64, u64) {
    (a.min(b), a.max(b))
}

impl Partitioner {
    /// Starts a proxy for each member id; see [`Partitioner::ports`].
    pub fn start(ids: &[u64]) -> Partitioner {
        let state = Arc::new(Mutex::new(State::default()));
        let sources: BTreeMap<IpAddr, u64> = ids.iter().map(|id| (source_ip(*id), *id)).collect();
        let mut ports = BTreeMap::new();
        for id in ids {
            let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind a proxy port");
            let proxy_port = listener.local_addr().expect("proxy address").port();
            let real_port = free_port();
            ports.insert(*id, (proxy_port, real_port));
            let (state, sources, to) = (state.clone(), sources.clone(), *id);
            thread::spawn(move || {
                for client in listener.incoming().flatten() {
                    let from = client
                        .peer_addr()
                        .ok()
                        .and_then(|a| sources.get(&a.ip()).copied())
                        .unwrap_or(0);
                    let target = SocketAddr::from(([127, 0, 0, 1], real_port));
                    if let Ok(server) = TcpStream::connect(target) {
                        relay(&state, link(from, to), client, server);
                    }
                }
            });
        }
        Partitioner { state, ports }
    }

    /// For member `id`: the port to advertise as its `raft_addr` and the port to listen on.
    pub fn ports(&self, id: u64) -> (u16, u16) {
        self.ports.get(&id).copied().unwrap_or((0, 0))
    }

    /// Cuts every link between member `id` and the others.
    pub fn isolate(&self, id: u64) {
        let others: Vec<u64> = self.ports.keys().copied().filter(|o| *o != id).collect();
        if let Ok(mut s) = self.state.lock() {
            for o in others {
                s.cut.insert(link(id, o));
            }
        }
    }

    /// Restores every link, and closes connections that lost data while cut.
    pub fn heal(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.cut.clear();
            s.conns.retain(|c| {
                if c.lost_data.load(Ordering::SeqCst) {
                    for sock in &c.sockets {
                        let _ = sock.shutdown(Shutdown::Both);
                    }
                    false
                } else {
                    true
                }
            });
        }
    }

    /// Links cut now.
    pub fn cut_links(&self) -> BTreeSet<(u64, u64)> {
        self.state.lock().map(|s| s.cut.clone()).unwrap_or_default()
    }
}

/// Pumps bytes both ways between `a` and `b` while their link is up; drops them while it is cut.
fn relay(state: &Arc<Mutex<State>>, link: (u64, u64), a: TcpStream, b: TcpStream) {
    let lost_data = Arc::new(AtomicBool::new(false));
    let clones = (a.try_clone(), b.try_clone(), a.try_clone(), b.try_clone());
    let (Ok(a2), Ok(b2), Ok(a_keep), Ok(b_keep)) = clones else {
        return;
    };
    if let Ok(mut s) = state.lock() {
        s.conns.retain(|c| c.sockets[0].peer_addr().is_ok());
        s.conns.push(Conn {
            sockets: [a_keep, b_keep],
            lost_data: lost_data.clone(),
        });
    }
    for (mut from, mut to) in [(a, b2), (b, a2)] {
        let (state, lost_data) = (state.clone(), lost_data.clone());
        thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let cut = state.lock().map(|s| s.cut.contains(&link)).unwrap_or(true);
                if cut {
                    lost_data.store(true, Ordering::SeqCst);
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
    }
}

impl Drop for Partitioner {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            for c in s.conns.drain(..) {
                for sock in &c.sockets {
                    let _ = sock.shutdown(Shutdown::Both);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An echo server behind a proxy: reachable from member 1's address, silent while the link
    /// is cut, and reachable again (on a new connection) after healing.
    #[test]
    fn a_cut_link_drops_bytes_and_a_healed_one_carries_them() {
        let p = Partitioner::start(&[1, 2]);
        let (proxy, real) = p.ports(2);
        let echo = TcpListener::bind(("127.0.0.1", real)).unwrap();
        thread::spawn(move || {
            for s in echo.incoming().flatten() {
                thread::spawn(move || {
                    let mut s = s;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let connect = || {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.bind(&SocketAddr::new(source_ip(1), 0).into()).unwrap();
            sock.connect(&SocketAddr::from(([127, 0, 0, 1], proxy)).into())
                .unwrap();
            let s: TcpStream = sock.into();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            s
        };
        let ask = |s: &mut TcpStream| -> Option<Vec<u8>> {
            s.write_all(b"ping").ok()?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).ok().map(|_| buf.to_vec())
        };
        let mut s = connect();
        assert_eq!(ask(&mut s).as_deref(), Some(&b"ping"[..]));
        p.isolate(1);
        assert_eq!(p.cut_links(), BTreeSet::from([(1, 2)]));
        assert_eq!(ask(&mut s), None, "bytes crossed a cut link");
        p.heal();
        let mut s = connect();
        assert_eq!(ask(&mut s).as_deref(), Some(&b"ping"[..]));
    }
}
