//! Child processes: the kill-on-drop handle every started process lives in, where their output
//! goes, and the small waiting and checking steps the other modules share.

use std::fmt;
use std::path::Path;
use std::process::{Child, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll(timeout, Duration::from_millis(100), || {
            self.child.try_wait().ok().flatten()
        })
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Calls `probe` every `every` until it gives a value, for as long as `timeout` has not passed
/// since the first call; `None` when it never did.
pub(crate) fn poll<T>(
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(v) = probe() {
            return Some(v);
        }
        std::thread::sleep(every);
    }
    None
}

/// A new file `name` in `dir` to send a process's output to (nowhere when it cannot be made).
pub(crate) fn log_file(dir: &Path, name: &str) -> Stdio {
    match std::fs::File::create(dir.join(name)) {
        Ok(f) => Stdio::from(f),
        Err(_) => Stdio::null(),
    }
}

/// The file at `path`, made if missing, to append a process's output to (nowhere when it
/// cannot be opened).
pub(crate) fn append_log(path: &Path) -> Stdio {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// Requires a finished command to have succeeded; panics with `what` and its stderr otherwise.
pub(crate) fn require_success(out: &Output, what: fmt::Arguments<'_>) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
