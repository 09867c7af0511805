//! The scaling scenario's summary: each cluster size's median rate over the rounds run, and
//! its ratio to one member's median. A single run of one member varies by up to a quarter on
//! this machine (`benches/BENCHMARKS.md`), and every ratio divides by it, so rounds of
//! interleaved runs and medians are what a target is checked against.

use serde_json::{json, Value};

/// Median of `values` (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// One line per cluster size in `runs` (in order of size): members, runs, median servers per
/// minute, and the ratio to one member's median (when one member ran); the same for the
/// steady part of each run (`steady_servers_per_minute`, see `crate::steady`). Each run gets
/// its size's medians and ratios.
pub fn summarize(runs: &mut [Value]) -> Vec<Value> {
    let mut sizes: Vec<u64> = runs.iter().filter_map(|r| r["members"].as_u64()).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let median_of = |runs: &[Value], m: u64, key: &str| {
        let mut rates: Vec<f64> = runs
            .iter()
            .filter(|r| r["members"].as_u64() == Some(m))
            .filter_map(|r| r[key].as_f64())
            .collect();
        (rates.len(), median(&mut rates))
    };
    let ratio = |x: Option<f64>, one: Option<f64>| match (x, one) {
        (Some(x), Some(o)) if o > 0.0 => Some(x / o),
        _ => None,
    };
    let (_, one) = median_of(runs, 1, "servers_per_minute");
    let (_, one_steady) = median_of(runs, 1, "steady_servers_per_minute");
    let mut lines = Vec::new();
    for m in sizes {
        let (n, med) = median_of(runs, m, "servers_per_minute");
        let (_, steady) = median_of(runs, m, "steady_servers_per_minute");
        let line = json!({
            "members": m,
            "runs": n,
            "median_per_minute": med,
            "ratio_to_one_member": ratio(med, one),
            "steady_median_per_minute": steady,
            "steady_ratio_to_one_member": ratio(steady, one_steady),
        });
        for r in runs.iter_mut().filter(|r| r["members"].as_u64() == Some(m)) {
            for k in [
                "median_per_minute",
                "ratio_to_one_member",
                "steady_median_per_minute",
                "steady_ratio_to_one_member",
            ] {
                r[k] = line[k].clone();
            }
        }
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(members: u64, rate: f64) -> Value {
        json!({"members": members, "servers_per_minute": rate, "steady_servers_per_minute": rate * 1.1})
    }

    #[test]
    fn ratios_divide_medians() {
        let mut runs = vec![
            run(1, 6000.0),
            run(3, 9000.0),
            run(5, 15000.0),
            run(1, 5000.0),
            run(3, 10000.0),
            run(5, 14000.0),
            run(1, 9000.0),
            run(3, 11000.0),
            run(5, 13000.0),
        ];
        let lines = summarize(&mut runs);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["median_per_minute"], 6000.0);
        assert_eq!(lines[1]["runs"], 3);
        assert_eq!(lines[1]["ratio_to_one_member"], 10000.0 / 6000.0);
        assert_eq!(lines[2]["ratio_to_one_member"], 14000.0 / 6000.0);
        assert_eq!(lines[2]["steady_median_per_minute"], 14000.0 * 1.1);
        assert_eq!(
            lines[2]["steady_ratio_to_one_member"],
            (14000.0 * 1.1) / (6000.0 * 1.1)
        );
        // every run of a size carries its size's numbers
        assert!(runs
            .iter()
            .filter(|r| r["members"] == 5)
            .all(|r| r["median_per_minute"] == 14000.0));
    }

    #[test]
    fn an_even_count_takes_the_middle_two_and_no_baseline_gives_no_ratio() {
        let mut runs = vec![run(3, 8000.0), run(3, 9000.0)];
        let lines = summarize(&mut runs);
        assert_eq!(lines[0]["median_per_minute"], 8500.0);
        assert!(lines[0]["ratio_to_one_member"].is_null());
        assert!(lines[0]["steady_ratio_to_one_member"].is_null());
        assert!(summarize(&mut []).is_empty());
    }
}
