//! What the harness reports: the table of runs on stdout, and the results file of
//! `{"runs": [...]}`, one run a line.

use serde_json::Value;

/// Writes `{"runs": [...]}` to `out`, after the runs already there when `append`, one run per
/// line: a results file that collects hundreds of runs with their timelines stays a third of
/// its pretty-printed size, and a new run is one added line in a diff.
pub(crate) fn write_runs(
    out: &std::path::Path,
    append: bool,
    runs: Vec<Value>,
) -> std::io::Result<()> {
    let earlier: Vec<Value> = match append {
        true => std::fs::read_to_string(out)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["runs"].as_array().cloned())
            .unwrap_or_default(),
        false => Vec::new(),
    };
    let lines: Vec<String> = earlier
        .iter()
        .chain(&runs)
        .map(|r| serde_json::to_string(r).unwrap_or_default())
        .collect();
    std::fs::write(out, format!("{{\"runs\": [\n{}\n]}}\n", lines.join(",\n")))
}

pub(crate) fn print_table(runs: &[Value]) {
    println!(
        "{:<11} {:>7} {:>7} {:>11} {:>5} {:>5} {:>9} {:>7} {:>7} {:>7} {:>8} {:>7} {:>9} {:>7} {:>7} {:>7}",
        "scenario",
        "members",
        "servers",
        "provisioned",
        "lost",
        "dupes",
        "per min",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "stall ms",
        "cpu s",
        "helper s",
        "sim s",
        "nats s",
        "rss MB"
    );
    for r in runs {
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        let u = |k: &str| r[k].as_u64().unwrap_or(0);
        println!(
            "{:<11} {:>7} {:>7} {:>11} {:>5} {:>5} {:>9.0} {:>7} {:>7} {:>7} {:>8} {:>7.1} {:>9.1} {:>7.1} {:>7.1} {:>7.0}",
            r["scenario"].as_str().unwrap_or("?"),
            u("members"),
            u("servers"),
            u("provisioned"),
            u("lost"),
            u("duplicates"),
            f("servers_per_minute"),
            u("p50_ms"),
            u("p90_ms"),
            u("p99_ms"),
            r["stall_ms"]
                .as_u64()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            f("member_cpu_s"),
            f("helper_cpu_s"),
            f("sim_cpu_s"),
            f("nats_cpu_s"),
            f("peak_rss_mb"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Runs appended to a results file read back in order, each on its own line.
    #[test]
    fn runs_are_appended_one_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("runs.json");
        write_runs(&out, true, vec![json!({"a": 1, "t": [1, 2]})]).unwrap();
        write_runs(&out, true, vec![json!({"a": 2}), json!({"a": 3})]).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        let a: Vec<i64> = doc["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["a"].as_i64().unwrap())
            .collect();
        assert_eq!(a, [1, 2, 3]);
        assert_eq!(text.lines().count(), 5, "{text}");
        write_runs(&out, false, vec![]).unwrap();
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(doc["runs"].as_array().map(Vec::len), Some(0));
    }
}
