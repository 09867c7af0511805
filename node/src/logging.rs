//! Log output: text or JSON lines, to stderr or the configured `logfile`, at `loglevel`
//! (overridable with `RUST_LOG`).

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(level: &str, format: LogFormat, file: Option<&Path>) -> Result<(), String> {
    let level = if level == "warning" { "warn" } else { level };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let writer: Box<dyn Fn() -> Box<dyn std::io::Write> + Send + Sync> = match file {
        Some(path) if path != Path::new("/dev/stderr") => {
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
        _ => Box::new(|| Box::new(std::io::stderr())),
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
