//! How the provisioner logs: `log_format` (text or JSON lines) and `loglevel`.

use super::{invalid, Problems};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The format (text when it is not one), with both keys checked.
pub(super) fn check_logs(format: &str, level: &str, p: &mut Problems) -> LogFormat {
    let log_format = match format {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            p.add(invalid(
                "log_format",
                format!("{other:?} is not text or json"),
            ));
            LogFormat::Text
        }
    };
    match level {
        "trace" | "debug" | "info" | "warn" | "warning" | "error" => {}
        other => p.add(invalid("loglevel", format!("{other:?} is not a log level"))),
    }
    log_format
}
