//! What a process cost: CPU seconds (user + system) and peak resident memory, read from
//! Linux's `/proc` (the benchmark harness reads members by pid, the simulator itself).

/// CPU and memory used by one process so far.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Usage {
    pub cpu_s: f64,
    /// CPU of children the process has waited for (a member's helper runs).
    pub children_cpu_s: f64,
    pub peak_rss_mb: f64,
}

/// `/proc` reports CPU times in USER_HZ ticks, 100 per second on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// The usage of process `pid`, or `None` when it is gone or `/proc` is not readable.
pub fn of(pid: u32) -> Option<Usage> {
    read(&format!("/proc/{pid}"))
}

/// This process's own usage.
pub fn own() -> Option<Usage> {
    read("/proc/self")
}

/// CPU seconds of process `pid`'s living threads, summed by thread name (`raft`, tokio's
/// workers, RocksDB's, the main thread under the program's name): where a process's CPU went.
/// `None` when it is gone.
pub fn by_thread(pid: u32) -> Option<std::collections::BTreeMap<String, f64>> {
    let mut out = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(task) = task else { continue };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        if let Some((name, (user, system, _, _))) = name(&stat).zip(times(&stat)) {
            *out.entry(name.to_string()).or_insert(0.0) += (user + system) / TICKS_PER_SECOND;
        }
    }
    Some(out)
}

/// The command name of a `/proc/.../stat` line, between its first `(` and last `)`.
fn name(stat: &str) -> Option<&str> {
    stat.get(stat.find('(')? + 1..stat.rfind(')')?)
}

/// utime, stime, cutime and cstime (ticks) of a `/proc/.../stat` line.
fn times(stat: &str) -> Option<(f64, f64, f64, f64)> {
    // fields after the command name, which is in parentheses and may hold spaces
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name
    let field = |i: usize| -> Option<f64> { fields.get(i)?.parse().ok() };
    Some((field(11)?, field(12)?, field(13)?, field(14)?))
}

fn read(dir: &str) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let (utime, stime, cutime, cstime) = times(&stat)?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(Usage {
        cpu_s: (utime + stime) / TICKS_PER_SECOND,
        children_cpu_s: (cutime + cstime) / TICKS_PER_SECOND,
        peak_rss_mb: hwm_kb / 1024.0,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_stat_line_that_is_not_one_gives_nothing() {
        for garbage in [
            "",
            ")",
            ") (",
            "1 (x",
            "1 (x) S",
            "1 (a b) S 1 2 3 4 5 6 7 8 9 x y 0 0",
        ] {
            assert!(super::times(garbage).is_none(), "{garbage:?}");
        }
        assert_eq!(super::name(") ("), None);
        assert_eq!(
            super::name("7 (tokio-rt-worker) S"),
            Some("tokio-rt-worker")
        );
        // a name may hold spaces and parentheses; the fields come after the last `)`
        let line = "7 (a) b) S 1 2 3 4 5 6 7 8 9 10 250 30 4 5";
        assert_eq!(super::name(line), Some("a) b"));
        assert_eq!(super::times(line), Some((250.0, 30.0, 4.0, 5.0)));
    }

    #[test]
    fn own_usage_grows_with_work() {
        let before = super::own().unwrap();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = super::own().unwrap();
        assert!(after.cpu_s > before.cpu_s, "{before:?} {after:?}");
        assert!(after.peak_rss_mb > 1.0);
        assert!(super::of(u32::MAX).is_none());
        // this (busy) thread's CPU is in its name's sum
        let threads = super::by_thread(std::process::id()).unwrap();
        assert!(threads.values().sum::<f64>() > 0.0, "{threads:?}");
        assert!(super::by_thread(u32::MAX).is_none());
        // a child's CPU counts once it is waited for
        let child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(child.success());
        assert!(super::own().unwrap().children_cpu_s > 0.0);
    }
}
