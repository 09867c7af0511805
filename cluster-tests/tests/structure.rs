//! The code's shape, checked from the sources, so a newcomer's map stays true:
//!
//! - **Steps stand on their own.** A step of `node/src/pipeline/` imports its sibling steps
//!   and the member's context, never the pipeline module that calls them (`super::X` names a
//!   sibling module, and nothing names `crate::pipeline`).
//! - **Errors keep their type.** No `Result<_, String>` in `node/src` or `raft/src` outside
//!   tests: an error says what went wrong in a type, with its source.
//! - **Raft stays inside `raft`.** `node` never names openraft; it reads Raft through
//!   `RaftMember`'s accessors.
//! - **Files hold one idea.** No source file (under a `src/` directory) has more than 700
//!   lines before its tests.
//!
//! A file its parent module declares only for tests (`#[cfg(test)]` then `mod tests;`) is test
//! code as a whole, as the part of a file after `#[cfg(test)]` is.
//!
//! Each checker is also run on a doctored input, to show that it fails when a rule is broken.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Every `.rs` file under `dir` that is not test code as a whole.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    all_rust_files(dir)
        .into_iter()
        .filter(|p| !test_only(p))
        .collect()
}

/// Whether the module that declares the file at `path` (`mod.rs`, `lib.rs` or `main.rs`
/// beside it, or `<dir>.rs` for a file in `<dir>/`) declares it only for tests.
fn test_only(path: &Path) -> bool {
    let (Some(dir), Some(stem)) = (path.parent(), path.file_stem().and_then(|s| s.to_str())) else {
        return false;
    };
    if matches!(stem, "mod" | "lib" | "main") {
        return false;
    }
    let parents = [
        dir.join("mod.rs"),
        dir.join("lib.rs"),
        dir.join("main.rs"),
        dir.with_extension("rs"),
    ];
    parents
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .any(|text| declares_for_tests(&text, stem))
}

/// Whether `text` declares module `name` under `#[cfg(test)]`.
fn declares_for_tests(text: &str, name: &str) -> bool {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines
        .windows(2)
        .any(|w| w[0] == "#[cfg(test)]" && w[1] == format!("mod {name};"))
}

/// Every `.rs` file under `dir`.
fn all_rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("read sources").flatten() {
            let p = entry.path();
            if p.is_dir() {
                if !matches!(entry.file_name().to_str(), Some("target" | ".git")) {
                    dirs.push(p);
                }
            } else if p.extension().is_some_and(|e| e == "rs") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// The code of a file before its tests (`#[cfg(test)]` at the start of a line), without
/// comment lines.
fn code(text: &str) -> Vec<(usize, &str)> {
    text.lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .collect()
}

/// Lines of a file before its tests, comments included.
fn non_test_lines(text: &str) -> usize {
    text.lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .count()
}

/// The places a step module's code reaches into the pipeline module; `siblings` are the
/// modules beside it.
fn pipeline_imports(text: &str, siblings: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (n, line) in code(text) {
        if line.contains("crate::pipeline") {
            found.push(format!("{n}: {}", line.trim()));
        }
        for (i, _) in line.match_indices("super::") {
            let rest = &line[i + "super::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let is_module = rest[name.len()..].starts_with("::");
            if !(is_module && siblings.contains(&name)) {
                found.push(format!("{n}: {}", line.trim()));
            }
        }
    }
    found
}

/// `Result<…, String>` types in a file's code.
fn string_errors(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (n, line) in code(text) {
        let mut from = 0;
        while let Some(i) = line[from..].find("Result<") {
            let start = from + i + "Result<".len();
            // the error type is the last top-level argument of this Result<…>
            let (mut depth, mut last_comma, mut end) = (0i32, None, None);
            for (j, c) in line[start..].char_indices() {
                match c {
                    '<' | '(' => depth += 1,
                    ')' => depth -= 1,
                    '>' if depth == 0 => {
                        end = Some(start + j);
                        break;
                    }
                    '>' => depth -= 1,
                    ',' if depth == 0 => last_comma = Some(start + j),
                    _ => {}
                }
            }
            if let (Some(c), Some(e)) = (last_comma, end) {
                if line[c + 1..e].trim() == "String" {
                    found.push(format!("{n}: {}", line.trim()));
                }
            }
            from = start;
        }
    }
    found
}

fn openraft_mentions(text: &str) -> Vec<String> {
    code(text)
        .into_iter()
        .filter(|(_, l)| l.contains("openraft"))
        .map(|(n, l)| format!("{n}: {}", l.trim()))
        .collect()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

#[test]
fn no_step_module_imports_from_the_pipeline_module() {
    let dir = root().join("node/src/pipeline");
    let files = rust_files(&dir);
    let siblings: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_stem()?.to_str().map(String::from))
        .filter(|s| s != "mod")
        .collect();
    assert!(siblings.len() >= 9, "the steps moved: {siblings:?}");
    let mut bad = Vec::new();
    for f in files.iter().filter(|p| !p.ends_with("mod.rs")) {
        for b in pipeline_imports(&read(f), &siblings) {
            bad.push(format!("{} {b}", rel(f)));
        }
    }
    assert!(
        bad.is_empty(),
        "step modules reaching into the pipeline module:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_string_errors_in_the_provisioner_or_raft() {
    let mut bad = Vec::new();
    for dir in ["node/src", "raft/src"] {
        for f in rust_files(&root().join(dir)) {
            for b in string_errors(&read(&f)) {
                bad.push(format!("{} {b}", rel(&f)));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "Result<_, String> outside tests:\n{}",
        bad.join("\n")
    );
}

#[test]
fn node_never_names_openraft() {
    let mut bad = Vec::new();
    for f in rust_files(&root().join("node/src")) {
        for b in openraft_mentions(&read(&f)) {
            bad.push(format!("{} {b}", rel(&f)));
        }
    }
    assert!(
        bad.is_empty(),
        "node reaching into openraft:\n{}",
        bad.join("\n")
    );
    let manifest = read(&root().join("node/Cargo.toml"));
    assert!(!manifest.contains("openraft"), "node depends on openraft");
}

#[test]
fn no_source_file_is_over_700_lines_before_its_tests() {
    let mut bad = Vec::new();
    let files = rust_files(&root());
    // the split-out test files are skipped, and only those
    assert!(files.iter().any(|f| f.ends_with("raft/src/state/mod.rs")));
    assert!(!files.iter().any(|f| f.ends_with("raft/src/state/tests.rs")));
    for f in files {
        let path = rel(&f);
        if !path.contains("/src/") {
            continue;
        }
        let n = non_test_lines(&read(&f));
        if n > 700 {
            bad.push(format!("{path}: {n}"));
        }
    }
    assert!(
        bad.is_empty(),
        "files over 700 lines before their tests:\n{}",
        bad.join("\n")
    );
}

#[test]
fn each_checker_fails_on_a_broken_rule() {
    let siblings = vec!["lease".to_string(), "error".to_string()];
    // siblings and tests are fine, the pipeline module is not
    let ok = "use super::lease::Lease;\nuse crate::context::Services;\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n";
    assert!(pipeline_imports(ok, &siblings).is_empty());
    assert_eq!(
        pipeline_imports("use super::Outcome;\n", &siblings).len(),
        1
    );
    assert_eq!(
        pipeline_imports("use super::{lease, Outcome};\n", &siblings).len(),
        1
    );
    assert_eq!(
        pipeline_imports("use crate::pipeline::Services;\n", &siblings).len(),
        1
    );
    assert!(pipeline_imports("// see crate::pipeline\n", &siblings).is_empty());

    assert_eq!(string_errors("fn f() -> Result<(), String> {\n").len(), 1);
    assert_eq!(
        string_errors("type T = Result<Vec<Option<u8>>, String>;\n").len(),
        1
    );
    assert!(string_errors("fn f() -> Result<String, E> {\n").is_empty());
    assert!(string_errors("fn f() -> Result<Vec<String>, E> {\n").is_empty());
    assert!(string_errors("/// earlier: Result<T, String>\n").is_empty());
    assert!(string_errors("#[cfg(test)]\nfn f() -> Result<(), String> {}\n").is_empty());

    assert_eq!(openraft_mentions("use openraft::Raft;\n").len(), 1);
    assert!(openraft_mentions("// openraft's core\n").is_empty());

    assert!(declares_for_tests("#[cfg(test)]\nmod tests;\n", "tests"));
    assert!(!declares_for_tests("mod tests;\n", "tests"));
    assert!(!declares_for_tests("#[cfg(test)]\nmod tests;\n", "state"));
    assert!(!declares_for_tests(
        "#[cfg(test)]\nmod tests {\n}\n",
        "tests"
    ));

    let long = "x\n".repeat(701);
    assert_eq!(non_test_lines(&long), 701);
    assert_eq!(non_test_lines(&format!("a\n#[cfg(test)]\n{long}")), 1);
}
