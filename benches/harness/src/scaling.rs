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
/// minute, and the ratio to one member's median (when one member ran). Each run gets
/// `median_per_minute` and `ratio_to_one_member` of its size.
pub fn summarize(runs: &mut [Value]) -> Vec<Value> {
    let mut sizes: Vec<u64> = runs.iter().filter_map(|r| r["members"].as_u64()).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let median_of = |runs: &[Value], m: u64| {
        let mut rates: Vec<f64> = runs
            .iter()
            .filter(|r| r["members"].as_u64() == Some(m))
            .filter_map(|r| r["servers_per_minute"].as_f64())
            .collect();
        (rates.len(), median(&mut rates))
    };
    let (_, one) = median_of(runs, 1);
    let mut lines = Vec::new();
    for m in sizes {
        let (n, med) = median_of(runs, m);
        let ratio = match (med, one) {
            (Some(x), Some(o)) if o > 0.0 => Some(x / o),
            _ => None,
        };
        for r in runs.iter_mut().filter(|r| r["members"].as_u64() == Some(m)) {
            r["median_per_minute"] = json!(med);
            r["ratio_to_one_member"] = json!(ratio);
        }
        lines.push(json!({
            "members": m,
            "runs": n,
            "median_per_minute": med,
            "ratio_to_one_member": ratio,
        }));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(members: u64, rate: f64) -> Value {
        json!({"members": members, "servers_per_minute": rate})
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
        assert!(summarize(&mut []).is_empty());
    }
}
