//! Rules of the workspace itself, checked from what cargo and the checkout say:
//!
//! - **Crate rules.** `proto` depends on no crate of ours; `raft` only on `proto`; the fleet
//!   simulator (`fleet-sim`) only on `proto`, in every kind of dependency, so it stays an
//!   independent peer; the provisioner (`node`) never links the simulator or a test harness;
//!   the benchmark harness links neither `node` nor `raft` (its criterion benches may, as
//!   dev-dependencies). Read from `cargo metadata`'s resolved graph.
//! - **Minimum Rust.** Every crate inherits the workspace's `rust-version`, and it is exactly
//!   the highest `rust-version` of the locked dependencies: lower and the lock file does not
//!   build, higher and it is not the minimum. Our own code stays within it (clippy's
//!   `incompatible_msrv`); `scripts/test` builds the workspace with that toolchain.
//! - **The checkout stands alone.** No file refers to a path outside the repository (a user
//!   clones only it): every relative path written in a file either names something in the
//!   checkout or at least does not climb out of it.
//!
//! Each checker is also run on a doctored input, to show that it fails when a rule is broken.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

const PROTO: &str = "choria-proto";
const RAFT: &str = "provisioner-raft";
const NODE: &str = "provisioner-node";
const FLEET_SIM: &str = "fleet-sim";
const BENCH: &str = "provisioner-bench";
const CLUSTER_TESTS: &str = "cluster-tests";

fn cargo_metadata() -> Value {
    let root = cluster_tests::repo_root();
    let host = host_triple();
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--locked"])
        .args(["--filter-platform", &host])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

fn host_triple() -> String {
    let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

// ---- crate rules ----

/// The dependency kinds cargo distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Normal,
    Build,
    Dev,
}

/// The resolved graph between workspace crates: package name -> (dependency name, kind).
fn workspace_edges(meta: &Value) -> BTreeMap<String, BTreeSet<(String, Kind)>> {
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let name_of: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<(String, Kind)>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().expect("resolve nodes") {
        let id = node["id"].as_str().unwrap();
        if !members.contains(id) {
            continue;
        }
        let set = edges.entry(name_of[id].to_string()).or_default();
        for dep in node["deps"].as_array().unwrap() {
            let dep_id = dep["pkg"].as_str().unwrap();
            if !members.contains(dep_id) {
                continue;
            }
            for k in dep["dep_kinds"].as_array().unwrap() {
                let kind = match k["kind"].as_str() {
                    None => Kind::Normal,
                    Some("build") => Kind::Build,
                    Some(_) => Kind::Dev,
                };
                set.insert((name_of[dep_id].to_string(), kind));
            }
        }
    }
    edges
}

/// Every crate of ours `from` reaches through normal and build dependencies.
fn linked(edges: &BTreeMap<String, BTreeSet<(String, Kind)>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(p) = todo.pop() {
        for (dep, kind) in edges.get(&p).into_iter().flatten() {
            if *kind != Kind::Dev && seen.insert(dep.clone()) {
                todo.push(dep.clone());
            }
        }
    }
    seen
}

/// Every broken crate rule, as a sentence.
fn crate_rule_violations(edges: &BTreeMap<String, BTreeSet<(String, Kind)>>) -> Vec<String> {
    let mut out = Vec::new();
    // (crate, crates of ours it may depend on in any kind, why)
    let only: [(&str, &[&str], &str); 4] = [
        (PROTO, &[], "the wire formats depend on no crate of ours"),
        (RAFT, &[PROTO], "raft never depends on node"),
        (
            FLEET_SIM,
            &[PROTO],
            "the simulator is an independent peer: only proto",
        ),
        (
            NODE,
            &[PROTO, RAFT],
            "the provisioner never links the simulator or a test harness",
        ),
    ];
    for (krate, allowed, why) in only {
        let Some(deps) = edges.get(krate) else {
            out.push(format!("{krate} is not a workspace member"));
            continue;
        };
        for (dep, kind) in deps {
            if !allowed.contains(&dep.as_str()) {
                out.push(format!("{krate} depends on {dep} ({kind:?}): {why}"));
            }
        }
    }
    // The harness measures the provisioner as processes; only criterion benches link it.
    for forbidden in [NODE, RAFT] {
        for from in [BENCH, CLUSTER_TESTS] {
            if linked(edges, from).contains(forbidden) {
                out.push(format!(
                    "{from} links {forbidden} outside its dev-dependencies: the harness runs the provisioner as a process"
                ));
            }
        }
    }
    out
}

#[test]
fn crates_depend_only_as_the_design_allows() {
    let edges = workspace_edges(&cargo_metadata());
    for krate in [PROTO, RAFT, NODE, FLEET_SIM, BENCH, CLUSTER_TESTS] {
        assert!(edges.contains_key(krate), "{krate} is not in the workspace");
    }
    let violations = crate_rule_violations(&edges);
    assert!(
        violations.is_empty(),
        "crate rules broken:\n{violations:#?}"
    );
}

#[test]
fn the_crate_rule_check_fails_on_each_forbidden_edge() {
    let edges = workspace_edges(&cargo_metadata());
    let doctored = [
        (
            PROTO,
            RAFT,
            Kind::Dev,
            "choria-proto depends on provisioner-raft",
        ),
        (
            RAFT,
            NODE,
            Kind::Normal,
            "provisioner-raft depends on provisioner-node",
        ),
        (
            FLEET_SIM,
            NODE,
            Kind::Dev,
            "fleet-sim depends on provisioner-node",
        ),
        (
            FLEET_SIM,
            CLUSTER_TESTS,
            Kind::Normal,
            "fleet-sim depends on cluster-tests",
        ),
        (
            NODE,
            FLEET_SIM,
            Kind::Normal,
            "provisioner-node depends on fleet-sim",
        ),
        (
            BENCH,
            RAFT,
            Kind::Normal,
            "provisioner-bench links provisioner-raft",
        ),
        (
            CLUSTER_TESTS,
            NODE,
            Kind::Normal,
            "cluster-tests links provisioner-node",
        ),
    ];
    for (from, to, kind, expected) in doctored {
        let mut e = edges.clone();
        e.get_mut(from).unwrap().insert((to.to_string(), kind));
        let v = crate_rule_violations(&e);
        assert!(
            v.iter().any(|s| s.starts_with(expected)),
            "adding {from} -> {to} ({kind:?}) went unnoticed: {v:?}"
        );
    }
    // The benches' criterion dev-dependency on node is allowed.
    let mut e = edges.clone();
    e.get_mut(BENCH).unwrap().insert((NODE.into(), Kind::Dev));
    assert!(crate_rule_violations(&e).is_empty());
}

// ---- minimum Rust ----

fn version(v: &str) -> (u64, u64, u64) {
    let mut parts = v
        .split('.')
        .map(|p| p.parse::<u64>().expect("numeric version"));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// Problems with the workspace's `rust-version` against the locked dependencies.
fn rust_version_problems(meta: &Value) -> Vec<String> {
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let resolved: BTreeSet<&str> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    let mut ours = BTreeMap::new();
    let mut needed: Option<((u64, u64, u64), String)> = None;
    for p in meta["packages"].as_array().unwrap() {
        let id = p["id"].as_str().unwrap();
        let name = p["name"].as_str().unwrap().to_string();
        let rv = p["rust_version"].as_str();
        if members.contains(id) {
            ours.insert(name, rv.map(str::to_string));
        } else if let (true, Some(rv)) = (resolved.contains(id), rv) {
            let v = version(rv);
            if needed.as_ref().is_none_or(|(max, _)| v > *max) {
                needed = Some((v, format!("{name} {}", p["version"].as_str().unwrap_or(""))));
            }
        }
    }
    let Some((needed, by)) = needed else {
        return vec!["no dependency declares a rust-version".into()];
    };
    let mut out = Vec::new();
    for (name, rv) in ours {
        match rv {
            None => out.push(format!(
                "{name} has no rust-version: add `rust-version.workspace = true`"
            )),
            Some(rv) if version(&rv) != needed => out.push(format!(
                "{name} says rust-version {rv}, but the lock file needs exactly {}.{} (set by {by})",
                needed.0, needed.1
            )),
            Some(_) => {}
        }
    }
    out
}

#[test]
fn rust_version_is_the_minimum_the_lock_file_needs() {
    let problems = rust_version_problems(&cargo_metadata());
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_rust_version_check_fails_when_it_is_wrong() {
    let meta = cargo_metadata();
    let doctor = |f: &dyn Fn(&mut Value)| {
        let mut m = meta.clone();
        for p in m["packages"].as_array_mut().unwrap() {
            if p["name"] == NODE {
                f(p);
            }
        }
        rust_version_problems(&m)
    };
    let low = doctor(&|p| p["rust_version"] = json!("1.80"));
    assert!(
        low.iter().any(|s| s.contains("says rust-version 1.80")),
        "{low:?}"
    );
    let high = doctor(&|p| p["rust_version"] = json!("1.99"));
    assert!(
        high.iter().any(|s| s.contains("says rust-version 1.99")),
        "{high:?}"
    );
    let none = doctor(&|p| p["rust_version"] = Value::Null);
    assert!(
        none.iter().any(|s| s.contains("has no rust-version")),
        "{none:?}"
    );
}

// ---- the checkout stands alone ----

/// Files of the checkout to read: what git tracks or would track, or every file under the root
/// but build output when this is not a git checkout (a copied tree).
fn checkout_files(root: &Path) -> Vec<PathBuf> {
    let git = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(root)
        .output();
    if let Ok(out) = git {
        if out.status.success() {
            return out
                .stdout
                .split(|b| *b == 0)
                .filter(|p| !p.is_empty())
                .map(|p| root.join(String::from_utf8_lossy(p).as_ref()))
                .filter(|p| p.is_file())
                .collect();
        }
    }
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("read checkout").flatten() {
            let p = entry.path();
            let name = entry.file_name();
            if matches!(name.to_str(), Some(".git" | "target" | "demo-run")) {
                continue;
            }
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files
}

/// The nearest directory at or above `file` holding a package manifest (not the virtual
/// workspace root): where `CARGO_MANIFEST_DIR` and a test's working directory point.
fn manifest_dir(root: &Path, file: &Path) -> Option<PathBuf> {
    let mut dir = file.parent()?;
    while dir.starts_with(root) {
        let manifest = dir.join("Cargo.toml");
        if std::fs::read_to_string(&manifest).is_ok_and(|s| s.contains("[package]")) {
            return Some(dir.to_path_buf());
        }
        dir = dir.parent()?;
    }
    None
}

/// Where a relative path written in `file` may be read from: its own directory; the package
/// directory for Rust code and manifests (`CARGO_MANIFEST_DIR`, `include_bytes!` through
/// `concat!`); and the repository root for scripts and configuration (they `cd` there).
fn bases(root: &Path, file: &Path) -> Vec<PathBuf> {
    let mut out = vec![file.parent().unwrap_or(root).to_path_buf()];
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext != "md" {
        out.extend(manifest_dir(root, file));
    }
    if !matches!(ext, "md" | "rs" | "toml") {
        out.push(root.to_path_buf());
    }
    out
}

/// `rel` read from `base`: `Ok` with the lexical result when it stays in `root`, `Err` when
/// it climbs out.
fn resolve(root: &Path, base: &Path, rel: &str) -> Result<PathBuf, ()> {
    let mut parts: Vec<&str> = base
        .strip_prefix(root)
        .map_err(|_| ())?
        .iter()
        .filter_map(|c| c.to_str())
        .collect();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop().ok_or(())?;
            }
            p => parts.push(p),
        }
    }
    Ok(parts.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

/// Relative paths that start with `../` in `text`, each cut where path characters end (a
/// format placeholder, a glob, a quote).
fn parent_paths(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let path_char = |b: u8| b.is_ascii_alphanumeric() || b"_-./".contains(&b);
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = text[i..].find("../").map(|a| a + i) {
        // `.../` (an ellipsis) and `a../` are not paths
        let starts_path = at == 0 || !(path_char(bytes[at - 1]) && bytes[at - 1] != b'/');
        let mut end = at;
        while end < bytes.len() && path_char(bytes[end]) {
            end += 1;
        }
        if starts_path {
            out.push(&text[at..end]);
        }
        i = end.max(at + 3);
    }
    out
}

/// Every place a file refers to something outside the checkout: a relative path that names
/// nothing in the checkout from any place it may be read from, and climbs out from one.
fn paths_leaving(root: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    for file in files {
        let rel_file = file.strip_prefix(root).unwrap_or(file);
        // Fuzz corpora are hostile inputs for parsers, not paths the project reads.
        if rel_file.starts_with("node/fuzz/corpus") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(file) else {
            continue; // not text
        };
        for (n, line) in text.lines().enumerate() {
            for rel in parent_paths(line) {
                let targets: Vec<Result<PathBuf, ()>> = bases(root, file)
                    .iter()
                    .map(|b| resolve(root, b, rel))
                    .collect();
                let names_ours = targets.iter().any(|t| t.as_ref().is_ok_and(|p| p.exists()));
                let climbs_out = targets.iter().any(Result::is_err);
                if climbs_out && !names_ours {
                    out.push(format!("{}:{}: {rel}", rel_file.display(), n + 1));
                }
            }
        }
    }
    out
}

#[test]
fn no_file_refers_to_a_path_outside_the_checkout() {
    let root = cluster_tests::repo_root();
    let files = checkout_files(&root);
    assert!(
        files.iter().any(|f| f.ends_with("proto/tests/schemas.rs")),
        "the checkout listing missed files"
    );
    let leaving = paths_leaving(&root, &files);
    assert!(
        leaving.is_empty(),
        "these read outside the repository (a clone has nothing beside it; keep what is read inside, as proto/testdata does):\n{}",
        leaving.join("\n")
    );
}

#[test]
fn the_checkout_check_finds_paths_that_climb_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let write = |rel: &str, text: &str| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    };
    // Built at run time, so this file does not hold the paths it tests for.
    let up = |n: usize| "../".repeat(n);
    write("a/Cargo.toml", "[package]\nname = \"a\"\n");
    write("data/x.json", "{}");
    let files = vec![
        // what the schema tests did: out of the package, then out of the checkout
        write(
            "a/tests/t.rs",
            &format!(
                r#"format!("{{}}/{}shared/choria/x.json", env!("CARGO_MANIFEST_DIR"))"#,
                up(2)
            ),
        ),
        write(
            "a/src/f.rs",
            &format!(r#"include_bytes!("{}shared/x.pem")"#, up(3)),
        ),
        write(
            "scripts/s",
            &format!("cat {}shared/choria/README.md\n", up(1)),
        ),
        // these stay inside
        write(
            "a/src/ok.rs",
            r#"format!("{}/../data/x.json", d); "../etc"; "/.../""#,
        ),
        write("docs/p.md", "see [the data](../data/x.json)\n"),
        write(
            "scripts/ok",
            "cd \"$(dirname \"$0\")/..\" && cat data/x.json\n",
        ),
    ];
    let found = paths_leaving(root, &files);
    assert_eq!(
        found,
        vec![
            format!("a/tests/t.rs:1: {}shared/choria/x.json", up(2)),
            format!("a/src/f.rs:1: {}shared/x.pem", up(3)),
            format!("scripts/s:1: {}shared/choria/README.md", up(1)),
        ]
    );
}
