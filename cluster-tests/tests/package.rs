//! The Debian package: `cargo deb` builds it from `node/Cargo.toml`'s `[package.metadata.deb]`,
//! and what it holds is checked as an operator would meet it: the control fields, every file
//! in its place, the packaged binary checking the packaged configurations, the maintainer
//! scripts' syntax and the systemd unit as `systemd-analyze` sees it.
//!
//! The package is made from this test build's binary (`--profile dev --no-build`), so the test
//! costs no release build; a release package is `cargo deb -p provisioner-node`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use std::path::Path;
use std::process::{Command, Output};

use cluster_tests::{bin_dir, repo_root};

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} exited {:?}:\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn the_debian_package_builds_and_holds_a_working_installation() {
    let dir = tempfile::tempdir().expect("tempdir");
    // the binaries under test: `debug` is cargo's dev profile
    let bins = bin_dir();
    let target = bins
        .parent()
        .map(Path::to_path_buf)
        .expect("a target directory");
    let profile = match bins.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(other) => other.to_string(),
    };
    let built = run(Command::new("cargo")
        .current_dir(repo_root())
        .env("CARGO_TARGET_DIR", &target)
        .args([
            "deb",
            "-p",
            "provisioner-node",
            "--profile",
            &profile,
            "--no-build",
        ])
        .arg("-o")
        .arg(dir.path()));
    let deb = text(&built)
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(deb.ends_with(".deb") && Path::new(&deb).exists(), "{deb}");

    let info = text(&run(Command::new("dpkg-deb").args(["--info", &deb])));
    for want in [
        "Package: choria-provisioner-rs",
        "Conflicts: choria-provisioner",
        "adduser",
        // the RocksDB the package links is Debian 12's, and dpkg knows it (docs/install.md)
        "librocksdb7.8",
        "python3",
        "conffiles",
        "postinst",
    ] {
        assert!(info.contains(want), "no {want:?} in:\n{info}");
    }

    let contents = text(&run(Command::new("dpkg-deb").args(["--contents", &deb])));
    for want in [
        "./usr/bin/provisioner",
        "./usr/bin/choria-provisioner -> provisioner",
        "./usr/share/man/man1/provisioner.1.gz",
        "./usr/share/man/man1/provisioner-run.1.gz",
        "./usr/share/man/man1/choria-provisioner.1.gz -> provisioner.1.gz",
        "./usr/lib/systemd/system/choria-provisioner.service",
        "./etc/choria-provisioner/provisioner.yaml",
        "deploy/config/cluster-3-x509.yaml",
        "deploy/config/cluster-5-ed25519.yaml",
        "deploy/nats/provisioning-broker.conf",
        "deploy/choria-broker/provisioning.conf",
        "deploy/examples/helper.py",
        "deploy/local-cluster",
        "deploy/monitoring/grafana-dashboard.json",
        "deploy/monitoring/prometheus.yml",
        "docs/operations.md",
        "copyright",
    ] {
        assert!(contents.contains(want), "no {want:?} in:\n{contents}");
    }

    // the packaged binary runs and accepts the packaged configurations
    let root = dir.path().join("root");
    run(Command::new("dpkg-deb").args(["-x", &deb]).arg(&root));
    let provisioner = root.join("usr/bin/provisioner");
    let version = text(&run(Command::new(&provisioner).arg("--version")));
    assert!(version.starts_with("provisioner "), "{version}");
    // upstream's name for it runs it too
    let upstream_name = root.join("usr/bin/choria-provisioner");
    let version = text(&run(Command::new(&upstream_name).arg("--version")));
    assert!(version.starts_with("provisioner "), "{version}");
    let deploy = root.join("usr/share/doc/choria-provisioner-rs/deploy");
    let doc = deploy.join("config");
    let check = |file: &Path, identity: Option<&str>| {
        let mut c = Command::new(&provisioner);
        c.args(["config", "check", "--no-files"]);
        if let Some(i) = identity {
            c.args(["--identity", i]);
        }
        text(&run(c.arg(file)))
    };
    assert!(check(&root.join("etc/choria-provisioner/provisioner.yaml"), None).contains(": ok"));
    for example in ["cluster-3-x509.yaml", "cluster-5-ed25519.yaml"] {
        assert!(check(&doc.join(example), Some("prov2")).contains("ok (member prov2 "));
    }

    // the packaged local-cluster script brings a cluster up from the packaged files alone
    let lc = dir.path().join("lc");
    let base = cluster_tests::free_port_block(3).to_string();
    let up = Command::new(deploy.join("local-cluster"))
        .args(["up", "--dir"])
        .arg(&lc)
        .arg("--bin-dir")
        .arg(root.join("usr/bin"))
        .args(["--base-port", &base])
        .output();
    let down = Command::new(deploy.join("local-cluster"))
        .args(["down", "--dir"])
        .arg(&lc)
        .output();
    let up = up.expect("run the packaged local-cluster");
    let said = String::from_utf8_lossy(&up.stdout).to_string();
    assert!(
        up.status.success() && said.contains("== ready: 3 members"),
        "{said}{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(down.is_ok_and(|d| d.status.success()));

    // maintainer scripts parse, and cargo-deb added the unit handling to postinst
    let control = dir.path().join("control");
    run(Command::new("dpkg-deb").args(["-e", &deb]).arg(&control));
    for script in ["postinst", "postrm", "prerm"] {
        run(Command::new("sh").arg("-n").arg(control.join(script)));
    }
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap_or_default();
    assert!(postinst.contains("adduser --system"), "{postinst}");
    assert!(postinst.contains("deb-systemd-helper"), "{postinst}");

    // the unit: valid, and sandboxed: an exposure of at most 2.0 of 10 (the threshold is in
    // tenths; systemd calls under 2.0 "OK");
    // its binary paths point into the unpacked tree so verify finds them
    let unit =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/choria-provisioner.service"))
            .expect("the unit");
    let local = dir.path().join("choria-provisioner.service");
    std::fs::write(
        &local,
        unit.replace("/usr/bin/provisioner", &provisioner.display().to_string()),
    )
    .expect("write the unit");
    run(Command::new("systemd-analyze").arg("verify").arg(&local));
    let security = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&local));
    let overall = String::from_utf8_lossy(&security.stdout).to_string();
    assert!(overall.contains("Overall exposure level"), "{overall}");
    eprintln!("{}", overall.lines().last().unwrap_or_default());
}
