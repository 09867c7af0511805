//! Wall-clock time as the ledger records it: Unix milliseconds.

/// Now, in Unix ms (0 on a clock before 1970, which nothing here relies on).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
