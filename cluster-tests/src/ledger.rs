//! Ledger fixtures: import files of servers enrolled elsewhere, and waiting until freshly
//! issued credentials are past the re-enrolment settle time.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// Writes `n` servers enrolled elsewhere, as `provisioner admin ledger import` reads them:
/// `{prefix}-0000000.example.net` and on, each with a serial and fingerprint of its own.
pub fn write_import(path: &Path, prefix: &str, n: usize) -> std::io::Result<()> {
    use std::io::Write;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..n {
        writeln!(
            w,
            r#"{{"identity":"{prefix}-{i:07}.example.net","credential":{{"serial":"{:016x}{i:016x}","fingerprint":"{i:064x}","not_after":2000000000}},"config_digest":"imported","facts":{{"rack":"r{}"}}}}"#,
            0x5eed_u64,
            i % 64
        )?;
    }
    w.flush()
}

/// Waits until the last credential issued to any of `identities` in `records` (`ledger export`
/// lines) is older than `settle_ms` (`raft::state::REENROLL_SETTLE_MS`): until then its member
/// is still configuring and restarting the server, and a reprovision skips it.
pub fn wait_out_settle_time(
    records: &[serde_json::Value],
    identities: &BTreeSet<String>,
    settle_ms: u64,
) {
    let last_issued = records
        .iter()
        .filter(|r| identities.contains(r["identity"].as_str().unwrap_or_default()))
        .filter_map(|r| r["credential"]["issued_at_ms"].as_u64())
        .max()
        .unwrap_or(0);
    let settled = last_issued + settle_ms + 500;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    std::thread::sleep(Duration::from_millis(settled.saturating_sub(now)));
}
