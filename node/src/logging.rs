//! Log output: text or JSON lines, to stderr or the configured `logfile`, at `loglevel`
//! (overridable with `RUST_LOG`). `/dev/stdout` and `/dev/stderr` are the process's own
//! streams, not files to open: under systemd they are a socket to the journal, which cannot be
//! opened by path.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

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

pub fn init(level: &str, format: LogFormat, file: Option<&Path>) -> Result<(), String> {
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
                .map_err(|e| format!("logfile {}: {e}", path.display()))?;
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
    result.map_err(|e| e.to_string())
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
}
