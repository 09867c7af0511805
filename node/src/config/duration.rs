//! Durations as upstream's configuration writes them (`10s`, `1h30m`, `365d`, `1W`, `6M`), capped
//! so that arithmetic on them (`heartbeat * 3`, expiry times) cannot overflow.

use std::time::Duration;

/// Parses durations as upstream writes them: a number and a unit, `500ms`, `10s`, `5m`,
/// `1h`, `1d`, `1w`, `1y`; several may be chained (`1h30m`). As go-choria's `ParseDuration`
/// does, `D`, `W`, `Y`, `H` and `S` are taken for their lower-case units and `M` is a month
/// of 30 days (`m` stays minutes).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{s:?} is not a duration (e.g. 10s, 5m, 1h, 1d)"));
        }
        let n: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?}: bad number"))?;
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
            "" => return Err(format!("{s:?} needs a unit (ms, s, m, h, d, w, M, y)")),
            u => return Err(format!("{s:?}: unknown unit {u:?}")),
        };
        // the fuzzer found that an overlong number panicked here
        total = Duration::try_from_secs_f64(secs)
            .ok()
            .and_then(|d| total.checked_add(d))
            .ok_or_else(|| format!("{s:?} is too long a duration"))?;
        rest = &rest[unit_len..];
    }
    // everything after this multiplies or adds durations; a century leaves room for that
    if total > MAX_DURATION {
        return Err(format!("{s:?} is longer than 100 years"));
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
    }
}
