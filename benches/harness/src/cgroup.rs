//! One small machine per member, simulated: each member process runs in a CPU-capped cgroup
//! of its own, while the broker and the simulator run uncapped, so a cluster's scaling is
//! measured as if every member had a machine to itself.
//!
//! cgroup v2 (`cpu.max`) where the unified hierarchy at `/sys/fs/cgroup` has the `cpu`
//! controller; otherwise v1 (`cpu.cfs_quota_us` under `/sys/fs/cgroup/cpu`). Neither writable
//! (not root, a read-only cgroupfs) is an error that says so; nothing is capped silently.

use std::path::{Path, PathBuf};

/// The scheduler period a cap is expressed in unless asked otherwise (the kernel default).
pub const DEFAULT_PERIOD_MS: u64 = 100;
/// The kernel's smallest quota (and period).
const MIN_QUOTA_US: u64 = 1_000;
/// The kernel's largest period.
const MAX_PERIOD_US: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Version {
    V1,
    V2,
}

/// A cgroup with a CPU cap; removed (its processes moved back to the root) when dropped.
pub struct CpuCap {
    dir: PathBuf,
    version: Version,
    root: PathBuf,
}

/// Where to create capped groups, and which interface they have.
fn hierarchy() -> Result<(PathBuf, Version), String> {
    let unified = Path::new("/sys/fs/cgroup");
    let controllers =
        std::fs::read_to_string(unified.join("cgroup.controllers")).unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "cpu") {
        // children of the root get the cpu controller only when the root hands it down
        let _ = std::fs::write(unified.join("cgroup.subtree_control"), "+cpu");
        return Ok((unified.to_path_buf(), Version::V2));
    }
    let v1 = unified.join("cpu");
    if v1.join("cpu.cfs_quota_us").exists() {
        return Ok((v1, Version::V1));
    }
    Err(
        "no cgroup cpu controller: neither cgroup v2 with `cpu` at /sys/fs/cgroup nor v1 at \
         /sys/fs/cgroup/cpu"
            .into(),
    )
}

impl CpuCap {
    /// A new group `name` whose processes together get at most `cores` CPUs, `cores` times
    /// `period_ms` in every period. A long period lets a capped process run at full speed for
    /// its quota and then stops it for the rest (at 0.05 core and 100 ms: 5 ms on, 95 off);
    /// a short one spreads the same CPU more evenly, more like a slow machine.
    pub fn create(name: &str, cores: f64, period_ms: u64) -> Result<CpuCap, String> {
        if !(cores.is_finite() && cores > 0.0) {
            return Err(format!(
                "--member-cpu must be a positive number of cores, not {cores}"
            ));
        }
        let period = period_ms.saturating_mul(1_000);
        if !(MIN_QUOTA_US..=MAX_PERIOD_US).contains(&period) {
            return Err(format!(
                "--member-cpu-period-ms must be 1 to 1000 ms, not {period_ms}"
            ));
        }
        let quota = (cores * period as f64) as u64;
        if quota < MIN_QUOTA_US {
            return Err(format!(
                "{cores} core of a {period_ms} ms period is {quota} µs, below the kernel's \
                 smallest quota of 1 ms: use a period of at least {} ms",
                (MIN_QUOTA_US as f64 / cores / 1_000.0).ceil()
            ));
        }
        let (root, version) = hierarchy()?;
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| {
            format!(
                "cannot create cgroup {} ({e}); capping members needs root and a writable \
                 cgroupfs",
                dir.display()
            )
        })?;
        let cap = CpuCap { dir, version, root };
        match version {
            Version::V2 => cap.write("cpu.max", &format!("{quota} {period}"))?,
            Version::V1 => {
                cap.write("cpu.cfs_period_us", &period.to_string())?;
                cap.write("cpu.cfs_quota_us", &quota.to_string())?;
            }
        }
        Ok(cap)
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        let path = self.dir.join(file);
        std::fs::write(&path, value).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// The group's `cgroup.procs` file: a process that writes its pid there is in the group,
    /// with its threads and the children it starts later. Members join from before they run
    /// (`cluster_tests::in_cgroup`), not moved in once started.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// How long the group's processes were held back by the cap so far, in seconds.
    pub fn throttled_s(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
        let (key, per_s) = match self.version {
            Version::V1 => ("throttled_time", 1e9),
            Version::V2 => ("throttled_usec", 1e6),
        };
        stat.lines().find_map(|l| {
            let v = l.strip_prefix(key)?.trim().parse::<f64>().ok()?;
            Some(v / per_s)
        })
    }

    /// The share of the scheduler periods in which the group ran (`nr_periods`) that it
    /// used its whole quota in (`nr_throttled`): near 1, the member was short of CPU all
    /// along; lower, it waited on something else (another member, the broker) part of the
    /// time.
    pub fn saturated_share(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
        let value = |key: &str| {
            stat.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse::<u64>().ok()).flatten()
            })
        };
        let (periods, throttled) = (value("nr_periods")?, value("nr_throttled")?);
        (periods > 0).then(|| throttled as f64 / periods as f64)
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        // a group with processes in it cannot be removed; whatever is left goes to the root
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("bench: cannot remove cgroup {}: {e}", self.dir.display());
        }
    }
}

/// Each group's throttled seconds and saturated share (to three places), as a run reports
/// them (`members_throttled_s`, `members_saturated`).
pub fn held_back(caps: &[CpuCap]) -> (Vec<Option<f64>>, Vec<Option<f64>>) {
    let throttled = caps.iter().map(CpuCap::throttled_s).collect();
    let saturated = caps
        .iter()
        .map(|c| c.saturated_share().map(|s| (s * 1000.0).round() / 1000.0))
        .collect();
    (throttled, saturated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_must_be_a_positive_number_of_cores() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let Err(e) = CpuCap::create("provisioner-bench-test-bad", bad, DEFAULT_PERIOD_MS)
            else {
                panic!("{bad} accepted");
            };
            assert!(e.contains("positive"), "{e}");
        }
    }

    #[test]
    fn a_quota_below_the_kernels_smallest_is_refused_not_raised() {
        let name = "provisioner-bench-test-period";
        let Err(e) = CpuCap::create(name, 0.05, 10) else {
            panic!("0.5 ms quota accepted");
        };
        assert!(e.contains("at least 20 ms"), "{e}");
        for period in [0, 2_000] {
            let Err(e) = CpuCap::create(name, 0.05, period) else {
                panic!("period {period} accepted");
            };
            assert!(e.contains("1 to 1000 ms"), "{e}");
        }
    }

    /// Where this machine lets us (root, a cgroup cpu controller), a capped busy process is
    /// throttled; elsewhere creating the group fails with a message, which is what we check.
    #[test]
    fn a_capped_process_is_throttled_or_the_cap_says_why_it_cannot_be() {
        let name = format!("provisioner-bench-test-{}", std::process::id());
        let cap = match CpuCap::create(&name, 0.05, 20) {
            Ok(c) => c,
            Err(e) => {
                assert!(e.contains("cgroup"), "{e}");
                return;
            }
        };
        let mut busy = std::process::Command::new("sh");
        busy.args(["-c", "while :; do :; done"]);
        let mut child = cluster_tests::in_cgroup(&busy, &cap.procs_file())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        std::thread::sleep(std::time::Duration::from_millis(700));
        let throttled = cap.throttled_s().unwrap_or(0.0);
        let saturated = cap.saturated_share();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            throttled > 0.0,
            "a busy loop at 0.05 core was never throttled"
        );
        // a busy loop wants more than its quota in (nearly) every period it runs in
        assert!(
            saturated.is_some_and(|s| s > 0.8),
            "a busy loop saturated {saturated:?} of its periods"
        );
        let dir = cap.dir.clone();
        drop(cap);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    /// A process started in a group is in it before the program runs: what it reads of its
    /// own cgroup at its first instruction (as a runtime counting its CPUs does) is the group.
    #[test]
    fn a_process_started_in_a_group_is_in_it_from_its_first_instruction() {
        let name = format!("provisioner-bench-test-first-{}", std::process::id());
        let cap = match CpuCap::create(&name, 0.05, DEFAULT_PERIOD_MS) {
            Ok(c) => c,
            Err(e) => {
                assert!(e.contains("cgroup"), "{e}");
                return;
            }
        };
        for _ in 0..5 {
            let mut cat = std::process::Command::new("cat");
            cat.arg("/proc/self/cgroup");
            let out = cluster_tests::in_cgroup(&cat, &cap.procs_file())
                .output()
                .unwrap_or_else(|e| panic!("{e}"));
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{out:?}");
            assert!(
                text.lines().any(|l| l.ends_with(&format!("/{name}"))),
                "started outside the group:\n{text}"
            );
        }
    }
}
