//! Test PKI: the broker's TLS material (made with openssl), the provisioner's built-in CA, the
//! cluster CA with a certificate per member, and the admin CA with operator certificates (made
//! with `provisioner ca`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cli::Operator;
use crate::config::ClusterMemberSpec;
use crate::paths::bin;
use crate::process::require_success;

/// The broker's TLS material: a CA and a certificate for 127.0.0.1 and localhost.
pub struct BrokerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a broker CA and server certificate with openssl in `dir/broker-tls`.
pub fn broker_pki(dir: &Path) -> BrokerTls {
    let d = dir.join("broker-tls");
    std::fs::create_dir_all(&d).expect("mkdir broker-tls");
    let f = |n: &str| d.join(n).display().to_string();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl is not installed");
        require_success(&out, format_args!("openssl {args:?}"));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &f("ca.key"),
        "-out",
        &f("ca.pem"),
        "-days",
        "2",
        "-subj",
        "/CN=Broker CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &f("broker.key"),
        "-out",
        &f("broker.csr"),
        "-subj",
        "/CN=broker",
    ]);
    std::fs::write(
        d.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write san.ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        &f("broker.csr"),
        "-CA",
        &f("ca.pem"),
        "-CAkey",
        &f("ca.key"),
        "-CAcreateserial",
        "-out",
        &f("broker.pem"),
        "-days",
        "2",
        "-extfile",
        &f("san.ext"),
    ]);
    BrokerTls {
        ca: d.join("ca.pem"),
        cert: d.join("broker.pem"),
        key: d.join("broker.key"),
    }
}

/// Creates the built-in CA in `dir/ca` with `provisioner ca init`.
pub fn init_ca(dir: &Path) -> (PathBuf, PathBuf) {
    let ca_dir = dir.join("ca");
    let out = Command::new(bin("provisioner"))
        .args(["ca", "init", "--dir"])
        .arg(&ca_dir)
        .output()
        .expect("run provisioner ca init");
    require_success(&out, format_args!("ca init failed"));
    (ca_dir.join("ca.pem"), ca_dir.join("ca.key"))
}

/// Runs `provisioner ARGS` (a `ca` command) and requires it to succeed.
fn run(args: &[&str]) {
    let out = Command::new(bin("provisioner"))
        .args(args)
        .output()
        .expect("run provisioner ca");
    require_success(&out, format_args!("provisioner {args:?}"));
}

/// A cluster CA (`provisioner ca init`) and a certificate for every member
/// (`provisioner ca issue-member`), in `dir/cluster-pki`; what exists already is kept.
pub fn cluster_pki(dir: &Path, members: &[ClusterMemberSpec]) -> PathBuf {
    let pki = dir.join("cluster-pki");
    let pki_s = pki.display().to_string();
    if !pki.join("ca.pem").exists() {
        run(&["ca", "init", "--dir", &pki_s, "--cn", "Cluster CA"]);
    }
    for m in members {
        if pki.join(format!("{}.pem", m.name)).exists() {
            continue;
        }
        run(&[
            "ca",
            "issue-member",
            "--dir",
            &pki_s,
            "--name",
            &m.name,
            "--out",
            &pki_s,
        ]);
    }
    pki
}

/// Makes the admin CA in `dir/admin-ca` (kept when it exists) and an operator `name`.
pub fn admin_pki(dir: &Path, cluster_pki: &Path, name: &str) -> Operator {
    let ca_dir = dir.join("admin-ca");
    let ca_s = ca_dir.display().to_string();
    if !ca_dir.join("ca.pem").exists() {
        run(&["ca", "init", "--dir", &ca_s, "--cn", "Admin CA"]);
    }
    let out = dir.join("operators");
    run(&[
        "ca",
        "issue-admin",
        "--dir",
        &ca_s,
        "--name",
        name,
        "--out",
        &out.display().to_string(),
    ]);
    Operator {
        admin_ca: ca_dir.join("ca.pem"),
        cert: out.join(format!("{name}.pem")),
        key: out.join(format!("{name}.key")),
        cluster_ca: cluster_pki.join("ca.pem"),
    }
}
