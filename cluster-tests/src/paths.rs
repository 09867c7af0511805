//! Where the harness finds what it runs: the workspace's built binaries, the repository's root
//! and the Python interpreter for helpers.

use std::path::{Path, PathBuf};

/// Directory holding the workspace's built binaries (`provisioner`, `fleet-sim`): the
/// `PROVISIONER_BIN_DIR` environment variable, or the profile directory this program runs from.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("PROVISIONER_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary; panics with the command to build it when missing.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built; run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The Python interpreter for helpers: Debian's when present. Version-manager shims
/// (pyenv) cost ~150 ms per start, which would dominate a helper run per server.
pub fn python() -> String {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3 -I".into()
    } else {
        "python3 -I".into()
    }
}
