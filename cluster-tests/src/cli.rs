//! The admin CLI runner: an operator of a cluster under test, running `provisioner admin`
//! against a member's admin API with its certificate.

use std::path::PathBuf;
use std::process::Command;

use crate::config::ClusterMemberSpec;
use crate::paths::bin;

/// An operator of a cluster under test: the admin CA, an operator certificate from it
/// (`provisioner ca issue-admin`) and the cluster CA the members' certificates come from.
pub struct Operator {
    pub admin_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cluster_ca: PathBuf,
}

impl Operator {
    /// Runs `provisioner admin ARGS` against `member`'s admin API.
    pub fn cli(&self, member: &ClusterMemberSpec, args: &[&str]) -> std::process::Output {
        Command::new(bin("provisioner"))
            .arg("admin")
            .arg("--endpoint")
            .arg(format!("127.0.0.1:{}", member.admin_port))
            .arg("--server-name")
            .arg(&member.name)
            .arg("--ca")
            .arg(&self.cluster_ca)
            .arg("--cert")
            .arg(&self.cert)
            .arg("--key")
            .arg(&self.key)
            .args(args)
            .env_remove("PROVISIONER_ADMIN_CONFIG")
            .output()
            .expect("run provisioner admin")
    }

    /// Runs `provisioner admin --json ARGS`, requires success and returns the reply.
    pub fn json(&self, member: &ClusterMemberSpec, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(member, &all);
        assert!(
            out.status.success(),
            "provisioner admin {args:?} exited {:?}: {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "admin {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}
