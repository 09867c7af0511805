//! Reading a process's monitoring endpoint: plain HTTP GET on loopback and picking series out
//! of Prometheus text.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Finds `series` (name with labels as printed) in Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// Sum of all series of a metric whose labels contain `label_part`.
pub fn metric_sum(text: &str, name: &str, label_part: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label_part))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The body of `GET path` on a loopback port, or `None`.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}
