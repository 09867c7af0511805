//! The `nats` section, the broker the provisioner works through, and the provisioning
//! account's password it logs in with.

use std::path::PathBuf;

use serde::Deserialize;

use super::{invalid, ConfigError, Problems};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSection {
    /// Broker URLs, e.g. `nats://broker:4222`.
    pub servers: Vec<String>,
    /// Upstream logs in as `provisioner`.
    #[serde(default = "default_nats_user")]
    pub user: String,
    /// TLS to the broker, as production brokers run it; required then.
    #[serde(default)]
    pub tls: Option<NatsTls>,
}

/// TLS to a NATS broker: the CA its certificate is checked against, and optionally a client
/// certificate when the broker asks for one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTls {
    pub ca: PathBuf,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl NatsTls {
    /// Refuses a half-given client certificate, and files that cannot be read.
    pub(crate) fn check(&self, key: &'static str) -> Result<(), ConfigError> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(invalid(key, "cert and key go together"));
        }
        for f in [Some(&self.ca), self.cert.as_ref(), self.key.as_ref()]
            .into_iter()
            .flatten()
        {
            std::fs::metadata(f).map_err(|e| invalid(key, format!("{}: {e}", f.display())))?;
        }
        Ok(())
    }

    /// `opts` with TLS required and these certificates.
    pub fn apply(&self, opts: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
        let opts = opts
            .require_tls(true)
            .add_root_certificates(self.ca.clone());
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => opts.add_client_certificate(c.clone(), k.clone()),
            _ => opts,
        }
    }
}

fn default_nats_user() -> String {
    "provisioner".into()
}

/// The section, or a stand-in with its problem kept; `password` is
/// `broker_provisioning_password`.
pub(super) fn check_nats(
    nats: Option<NatsSection>,
    password: &str,
    p: &mut Problems,
) -> NatsSection {
    let nats = match nats {
        Some(n) => n,
        None => {
            p.add(invalid(
                "nats",
                "section is required (servers: [nats://...])",
            ));
            NatsSection {
                servers: vec![String::new()],
                user: default_nats_user(),
                tls: None,
            }
        }
    };
    if nats.servers.is_empty() {
        p.add(invalid("nats.servers", "needs at least one broker URL"));
    }
    if let Some(tls) = &nats.tls {
        p.ok(tls.check("nats.tls"));
    }
    if password.is_empty() {
        p.add(invalid(
            "broker_provisioning_password",
            "is required: the provisioner logs in to the provisioning account with it",
        ));
    }
    nats
}
