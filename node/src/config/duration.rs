//! Durations as upstream's configuration writes them (`10s`, `1h30m`, `365d`, `1W`, `6M`), capped
//! so that arithmetic on them (`heartbeat * 3`, expiry times) cannot overflow.

use std::num::ParseFloatError;
use std::time::Duration;

use thiserror::Error;

/// What is wrong with a duration; each names the text as it was given.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    /// A unit (or anything else) where a number should start.
    #[error("{0:?} is not a duration (e.g. 10s, 5m, 1h, 1d)")]
    NoNumber(String),
    #[error("{text:?}: bad number")]
    BadNumber {
        text: String,
        #[source]
        source: ParseFloatError,
    },
    #[error("{0:?} needs a unit (ms, s, m, h, d, w, M, y)")]
    NoUnit(String),
    #[error("{text:?}: unknown unit {unit:?}")]
    UnknownUnit { text: String, unit: String },
    /// Too long to be a `Duration` at all.
    #[error("{0:?} is too long a duration")]
    Overflow(String),
    /// Longer than [`MAX_DURATION`].
    #[error("{0:?} is longer than 100 years")]
    TooLong(String),
}

/// Parses durations as upstream writes them: a number and a unit, `500ms`, `10s`, `5m`,
/// `1h`, `1d`, `1w`, `1y`; several may be chained (`1h30m`). As go-choria's `ParseDuration`
/// does, `D`, `W`, `Y`, `H` and `S` are taken for their lower-case units and `M` is a month
/// of 30 days (`m` stays minutes).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(DurationError::NoNumber(s.into()));
        }
        let n: f64 = rest[..digits]
            .parse()
            .map_err(|source| DurationError::BadNumber {
                text: s.into(),
                source,
            })?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ms" => n / 1000.0,
            "s" | "S" => n,
            "m" => n * 60.0,
            "h" | "H" => n * 3600.0,
            "d" | "D" => n * 86400.0,
            "w" | "W" => n * 7.0 * 86400.0,
            "M" => n * 30.0 * 86400.0,
            "y" | "Y" => n * 365.0 * 86400.0,
            "" => return Err(DurationError::NoUnit(s.into())),
            u => {
                return Err(DurationError::UnknownUnit {
                    text: s.into(),
                    unit: u.into(),
                })
            }
        };
        // the fuzzer found that an overlong number panicked here
        total = Duration::try_from_secs_f64(secs)
            .ok()
            .and_then(|d| total.checked_add(d))
            .ok_or_else(|| DurationError::Overflow(s.into()))?;
        rest = &rest[unit_len..];
    }
    // everything after this multiplies or adds durations; a century leaves room for that
    if total > MAX_DURATION {
        return Err(DurationError::TooLong(s.into()));
    }
    Ok(total)
}

/// The longest duration a configuration may give.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86400);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("1y").unwrap(),
            Duration::from_secs(365 * 86400)
        );
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        // upstream's upper-case units, as its helm chart and docs write them
        let day = 86400;
        for (s, secs) in [
            ("1D", day),
            ("2W", 14 * day),
            ("6M", 180 * day),
            ("1Y", 365 * day),
            ("2H", 7200),
            ("30S", 30),
            ("1M1m", 30 * day + 60),
        ] {
            assert_eq!(parse_duration(s).unwrap(), Duration::from_secs(secs), "{s}");
        }
        // the overlong ones come from the config fuzz target: they panicked before
        let overlong = format!("{}w", "8".repeat(37));
        let endless = format!("{}s", "9".repeat(400));
        let summed = "18446744073709549568s".repeat(2);
        for bad in [
            "",
            "10",
            "s",
            "1x",
            "1MS",
            "1d ay",
            "-1s",
            "1.2.3s",
            "101y",
            "5000000000000000000s",
            &overlong,
            &endless,
            &summed,
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        // the texts `config check` shows
        for (bad, said) in [
            ("", "empty duration"),
            ("s", "\"s\" is not a duration (e.g. 10s, 5m, 1h, 1d)"),
            ("1.2.3s", "\"1.2.3s\": bad number"),
            ("10", "\"10\" needs a unit (ms, s, m, h, d, w, M, y)"),
            ("1x", "\"1x\": unknown unit \"x\""),
            (
                endless.as_str(),
                &format!("{endless:?} is too long a duration"),
            ),
            ("101y", "\"101y\" is longer than 100 years"),
        ] {
            let err = parse_duration(bad).err().map(|e| e.to_string());
            assert_eq!(err.as_deref(), Some(said), "{bad}");
        }
        let bad_number = parse_duration("1.2.3s").err();
        assert!(bad_number.is_some_and(|e| std::error::Error::source(&e).is_some()));
    }
}
