//! Free space under `data_dir`, watched so that a filling disk stops the provisioner with a
//! clear error before the ledger's writes fail. A failed RocksDB write is fatal either way
//! (Raft stops; with Debian's librocksdb, built with assertions, RocksDB aborts the process
//! on the next write), so stopping while there is still room is the clean way out; the same
//! check refuses to start on a disk that is still too full, which makes systemd's restarts say
//! why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

/// How often the free space is looked at.
const EVERY: Duration = Duration::from_secs(1);

/// Bytes available to this (unprivileged) process on the file system holding `dir`.
pub fn available(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is a NUL-terminated string and `st` points to writable memory the size
    // of a statvfs, which the call fills in when it returns 0.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

const MIB: u64 = 1024 * 1024;

/// `dir` has `free` bytes free, less than the `min` the configuration asks for.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "{} has {} MiB free, less than data_dir_min_free_mb ({} MiB)",
    dir.display(),
    free / MIB,
    min / MIB
)]
pub struct LowSpace {
    pub dir: PathBuf,
    pub free: u64,
    pub min: u64,
}

/// `Err` when `dir` has less than `min` bytes free. A directory that cannot be looked at
/// passes: opening the store says why.
pub fn check(dir: &Path, min: u64) -> Result<(), LowSpace> {
    match available(dir) {
        Ok(free) if free < min => Err(LowSpace {
            dir: dir.to_path_buf(),
            free,
            min,
        }),
        _ => Ok(()),
    }
}

/// Resolves once `dir` has less than `min` bytes free.
pub async fn watch(dir: PathBuf, min: u64) -> LowSpace {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        if let Err(reason) = check(&dir, min) {
            return reason;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_and_compared() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let free = available(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(free > 0);
        assert!(check(dir.path(), 0).is_ok());
        let err = check(dir.path(), u64::MAX)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("less than data_dir_min_free_mb"), "{err}");
        // a missing directory is left to the store to report
        assert!(check(&dir.path().join("missing"), u64::MAX).is_ok());
    }
}
