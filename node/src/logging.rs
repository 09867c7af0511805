//! Log output: text or JSON lines, to stderr or the configured `logfile`, at `loglevel`
//! (overridable with `RUST_LOG`). `/dev/stdout` and `/dev/stderr` are the process's own
//! streams, not files to open: under systemd they are a socket to the journal, which cannot be
//! opened by path.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use thiserror::Error;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Where the log goes.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Stderr,
    Stdout,
    File(&'a Path),
}

fn target(file: Option<&Path>) -> Target<'_> {
    match file {
        None => Target::Stderr,
        Some(p) if p == Path::new("/dev/stderr") => Target::Stderr,
        Some(p) if p == Path::new("/dev/stdout") => Target::Stdout,
        Some(p) => Target::File(p),
    }
}

/// Why logging could not be set up.
#[derive(Debug, Error)]
pub enum LoggingError {
    /// The configured `logfile` cannot be opened for appending.
    #[error("logfile {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A global subscriber is set already (or the log bridge is).
    #[error("{0}")]
    Install(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub fn init(level: &str, format: LogFormat, file: Option<&Path>) -> Result<(), LoggingError> {
    let level = if level == "warning" { "warn" } else { level };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let writer: Box<dyn Fn() -> Box<dyn std::io::Write> + Send + Sync> = match target(file) {
        Target::Stderr => Box::new(|| Box::new(std::io::stderr())),
        Target::Stdout => Box::new(|| Box::new(std::io::stdout())),
        Target::File(path) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| LoggingError::Open {
                    path: path.to_path_buf(),
                    source,
                })?;
            let f = Mutex::new(f);
            Box::new(move || {
                let clone = f.lock().ok().and_then(|f| f.try_clone().ok());
                match clone {
                    Some(f) => Box::new(f) as Box<dyn std::io::Write>,
                    None => Box::new(std::io::stderr()),
                }
            })
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(LoggingError::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_streams_are_not_opened_as_files() {
        assert_eq!(target(None), Target::Stderr);
        assert_eq!(target(Some(Path::new("/dev/stderr"))), Target::Stderr);
        assert_eq!(target(Some(Path::new("/dev/stdout"))), Target::Stdout);
        let f = Path::new("/var/log/choria-provisioner.log");
        assert_eq!(target(Some(f)), Target::File(f));
    }

    #[test]
    fn a_logfile_that_cannot_be_opened_is_named() {
        let bad = Path::new("/nonexistent/dir/provisioner.log");
        let err = init("info", LogFormat::Text, Some(bad)).err();
        let said = err.as_ref().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            said.starts_with("logfile /nonexistent/dir/provisioner.log: "),
            "{said}"
        );
        assert!(matches!(err, Some(LoggingError::Open { .. })), "{err:?}");
    }
}
