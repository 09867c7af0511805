//! How the provisioner works through servers: the discovery `interval`, how often and how
//! far apart a failing server is retried, and how many may wait at once.

use std::time::Duration;

use super::raw::RawConfig;
use super::{duration, invalid, parse_duration, Problems};

/// The discovery interval, at least a minute (a minute when it does not parse).
pub(super) fn check_interval(interval: &str, p: &mut Problems) -> Duration {
    match parse_duration(interval) {
        Ok(d) if d < Duration::from_secs(60) => {
            p.add(invalid(
                "interval",
                "is too small, the minimum is 1 minute (for example 10m or 1h)",
            ));
            d
        }
        Ok(d) => d,
        Err(e) => {
            p.add(invalid("interval", e));
            Duration::from_secs(60)
        }
    }
}

/// `max_attempts` and `max_waiting`, each at least 1.
pub(super) fn check_limits(raw: &RawConfig, p: &mut Problems) {
    if raw.max_attempts == 0 {
        p.add(invalid("max_attempts", "must be at least 1"));
    }
    if raw.max_waiting == 0 {
        p.add(invalid("max_waiting", "must be at least 1"));
    }
}

/// The retry backoff's bounds, smallest first.
pub(super) fn check_backoff(raw: &RawConfig, p: &mut Problems) -> (Duration, Duration) {
    let retry_backoff_min = duration(p, "retry_backoff_min", &raw.retry_backoff_min);
    let retry_backoff_max = duration(p, "retry_backoff_max", &raw.retry_backoff_max);
    if retry_backoff_max < retry_backoff_min {
        p.add(invalid(
            "retry_backoff_max",
            "must not be smaller than retry_backoff_min",
        ));
    }
    (retry_backoff_min, retry_backoff_max)
}
