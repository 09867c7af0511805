//! The NATS broker under test: `nats-server` laid out like a Choria provisioning broker, with
//! random passwords on a free loopback port, optionally TLS only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use crate::pki::BrokerTls;
use crate::ports::{free_port, wait_for_port};
use crate::process::{log_file, Proc};

/// Passwords of one broker; random per run.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub provisioner: String,
    pub server: String,
    pub choria: String,
}

impl Credentials {
    pub fn random() -> Self {
        let r = || format!("{:016x}{:016x}", rand_u64(), rand_u64());
        Credentials {
            provisioner: r(),
            server: r(),
            choria: r(),
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// A `nats-server` laid out like a Choria provisioning broker.
pub struct Nats {
    pub port: u16,
    pub url: String,
    pub creds: Credentials,
    proc: Proc,
    dir: PathBuf,
}

impl Nats {
    pub fn start(dir: &Path) -> Nats {
        Nats::start_with(dir, None)
    }

    /// A broker that accepts TLS connections only, with `tls`'s certificate.
    pub fn start_tls(dir: &Path, tls: &BrokerTls) -> Nats {
        Nats::start_with(dir, Some(tls))
    }

    fn start_with(dir: &Path, tls: Option<&BrokerTls>) -> Nats {
        let port = free_port();
        let creds = Credentials::random();
        let conf = dir.join("nats.conf");
        let mut text = nats_config(port, &creds);
        if let Some(t) = tls {
            text += &format!(
                "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 5\n}}\n",
                t.cert.display(),
                t.key.display()
            );
        }
        std::fs::write(&conf, text).expect("write nats.conf");
        let child = spawn_nats(dir);
        let proc = Proc {
            child,
            name: "nats-server".into(),
        };
        assert!(
            wait_for_port(port, Duration::from_secs(10)),
            "nats-server did not start on port {port}"
        );
        Nats {
            port,
            url: format!("nats://127.0.0.1:{port}"),
            creds,
            proc,
            dir: dir.to_path_buf(),
        }
    }

    /// The broker's process id (to read its CPU use).
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// Kills the broker with SIGKILL; every connection drops at once.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts the (killed) broker again on the same port with the same configuration.
    pub fn restart(&mut self) {
        self.proc.child = spawn_nats(&self.dir);
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)),
            "nats-server did not start again on port {}",
            self.port
        );
    }
}

fn spawn_nats(dir: &Path) -> Child {
    Command::new("nats-server")
        .arg("-c")
        .arg(dir.join("nats.conf"))
        .stdout(log_file(dir, "nats.log"))
        .stderr(log_file(dir, "nats.err"))
        .spawn()
        .expect("nats-server is not installed (apt-get install nats-server)")
}

/// The broker configuration: the provisioner and the waiting servers share the
/// `provisioning` account, each user limited to the subjects its role needs; the `choria`
/// account cannot see provisioning traffic; there is no anonymous access.
pub fn nats_config(port: u16, creds: &Credentials) -> String {
    format!(
        r#"listen: 127.0.0.1:{port}
max_connections: 1000000
accounts {{
  provisioning {{
    users: [
      {{
        user: provisioner, password: "{p}",
        permissions: {{
          publish: ["provisioning.>", "choria.lifecycle.event.>"],
          subscribe: ["provisioning.reply.>", "choria.lifecycle.event.>", "_INBOX.>"]
        }}
      }},
      {{
        user: server, password: "{s}",
        permissions: {{
          publish: ["provisioning.reply.>", "choria.lifecycle.event.>"],
          subscribe: ["provisioning.node.>", "provisioning.broadcast.>", "_INBOX.>"]
        }}
      }}
    ]
  }}
  choria {{
    users: [ {{ user: choria, password: "{c}" }} ]
  }}
}}
"#,
        p = creds.provisioner,
        s = creds.server,
        c = creds.choria
    )
}
