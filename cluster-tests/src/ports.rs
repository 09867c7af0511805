//! Loopback ports: free ones for the processes under test, and waiting for one to listen.

use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use crate::process::poll;

/// A free TCP port on loopback, never one this process was handed before: the system may
/// hand out a port again once its probe closed, and two members given one port would collide
/// (seen in a benchmark: a member's metrics port was another's Raft port).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1_000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        if port != 0 && handed.insert(port) {
            return port;
        }
    }
    0
}

/// A base port for `deploy/local-cluster` with every port it derives free: the broker on
/// `base`, member `id` on `base + id*10 + 1..3`. Below the ephemeral range, so ports the system
/// hands out meanwhile do not collide.
pub fn free_port_block(members: u16) -> u16 {
    let start = (std::process::id() % 100) as u16 * 100;
    (0..100u16)
        .map(|i| 20_000 + (start + i * 100) % 10_000)
        .find(|base| {
            let mut ports = vec![*base];
            for id in 1..=members {
                ports.extend((1..=3).map(|k| base + id * 10 + k));
            }
            let held: Vec<_> = ports
                .iter()
                .filter_map(|p| TcpListener::bind(("127.0.0.1", *p)).ok())
                .collect();
            held.len() == ports.len()
        })
        .unwrap_or(20_000)
}

/// Whether something accepts connections on loopback `port` within `timeout`.
pub(crate) fn wait_for_port(port: u16, timeout: Duration) -> bool {
    poll(timeout, Duration::from_millis(50), || {
        TcpStream::connect(("127.0.0.1", port))
            .is_ok()
            .then_some(())
    })
    .is_some()
}
