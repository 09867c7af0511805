//! The `admin` section: where the operator API listens, its mutual TLS, and where reprovision
//! requests go.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{invalid, Cluster, Problems};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Address the admin gRPC server binds, `host:port`; default: this member's
    /// `cluster.members` `admin_addr`.
    #[serde(default)]
    pub listen: String,
    pub tls: AdminTlsSection,
    #[serde(default)]
    pub reprovision: ReprovisionSection,
}

/// Where reprovision requests go: provisioned servers live on the production broker (or
/// account), not the provisioning one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReprovisionSection {
    /// Collective provisioned servers answer in.
    #[serde(default = "default_collective")]
    pub collective: String,
    /// Broker URLs; default: the provisioning connection is used.
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub password: String,
    /// TLS to those brokers.
    #[serde(default)]
    pub tls: Option<super::NatsTls>,
    /// Reprovision enrolled servers whose credential ends within this long (`30d`), before
    /// it does; empty: only when an operator asks.
    #[serde(default)]
    pub renew_before: String,
    /// Renewal requests per second at most, per member.
    #[serde(default = "default_renew_rate")]
    pub renew_rate: u32,
}

impl Default for ReprovisionSection {
    fn default() -> Self {
        ReprovisionSection {
            collective: default_collective(),
            servers: Vec::new(),
            user: String::new(),
            password: String::new(),
            tls: None,
            renew_before: String::new(),
            renew_rate: default_renew_rate(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTlsSection {
    /// CA that signs operators' client certificates (`provisioner ca issue-admin`).
    pub client_ca: PathBuf,
    /// This member's server certificate and key; default: the `cluster.tls` ones.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

fn default_collective() -> String {
    "mcollective".into()
}

fn default_renew_rate() -> u32 {
    5
}

/// Most renewal requests a second a member may be set to send.
const MAX_RENEW_RATE: u32 = 10_000;

/// The checked `admin` section.
#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: SocketAddr,
    pub client_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub reprovision: ReprovisionSection,
    /// Renewal before credentials end, when `renew_before` is set.
    pub renew: Option<crate::renew::RenewPolicy>,
}

/// The checked section, or `None` when a problem leaves nothing to run with; every problem
/// goes to `p`.
pub(super) fn check_admin(
    a: AdminSection,
    cluster: Option<&Cluster>,
    p: &mut Problems,
) -> Option<Admin> {
    let member_addr = cluster.and_then(|c| {
        c.members
            .iter()
            .find(|m| m.id == c.id)
            .map(|m| m.admin_addr.clone())
    });
    let listen = match (a.listen.as_str(), member_addr) {
        ("", Some(addr)) if !addr.is_empty() => addr,
        ("", _) => {
            p.add(invalid(
                "admin.listen",
                "is required (or an admin_addr for this member in cluster.members)",
            ));
            String::new()
        }
        (l, _) => l.to_string(),
    };
    let listen = if listen.is_empty() {
        None
    } else {
        p.ok(listen
            .parse()
            .map_err(|e| invalid("admin.listen", format!("{listen:?}: {e}"))))
    };
    let cluster_tls = cluster.and_then(|c| c.tls.as_ref());
    let pair = match (a.tls.cert, a.tls.key, cluster_tls) {
        (Some(c), Some(k), _) => Some((c, k)),
        (None, None, Some(t)) => Some((t.cert.clone(), t.key.clone())),
        (None, None, None) => {
            p.add(invalid(
                "admin.tls",
                "needs cert and key (or a cluster.tls section to take them from)",
            ));
            None
        }
        _ => {
            p.add(invalid("admin.tls", "set both cert and key, or neither"));
            None
        }
    };
    if !proto::subject::is_valid_token(&a.reprovision.collective) {
        p.add(invalid(
            "admin.reprovision.collective",
            format!("{:?} is not a valid collective", a.reprovision.collective),
        ));
    }
    if !a.reprovision.user.is_empty() && a.reprovision.servers.is_empty() {
        p.add(invalid(
            "admin.reprovision.servers",
            "is required when admin.reprovision.user is set",
        ));
    }
    if let Some(tls) = &a.reprovision.tls {
        if a.reprovision.servers.is_empty() {
            p.add(invalid(
                "admin.reprovision.tls",
                "needs admin.reprovision.servers (the provisioning connection has nats.tls)",
            ));
        }
        p.ok(tls.check("admin.reprovision.tls"));
    }
    let renew = match a.reprovision.renew_before.as_str() {
        "" => None,
        text => {
            let before = p.ok(super::parse_duration(text)
                .map_err(|e| invalid("admin.reprovision.renew_before", e)));
            let rate = a.reprovision.renew_rate;
            if !(1..=MAX_RENEW_RATE).contains(&rate) {
                p.add(invalid(
                    "admin.reprovision.renew_rate",
                    format!("{rate} is not 1 to {MAX_RENEW_RATE} requests a second"),
                ));
            }
            before.map(|before| crate::renew::RenewPolicy { before, rate })
        }
    };
    let (cert, key) = pair?;
    Some(Admin {
        listen: listen?,
        client_ca: a.tls.client_ca,
        cert,
        key,
        reprovision: a.reprovision,
        renew,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, MINIMAL};

    #[test]
    fn admin_section_takes_the_cluster_certificate_by_default() {
        let text = format!(
            "{MINIMAL}\ndata_dir: /tmp/x\ncluster:\n  id: 1\n  tls: {{ca: /c/ca.pem, cert: /c/m.pem, key: /c/m.key}}\n  members:\n    - {{id: 1, name: m1, raft_addr: \"127.0.0.1:7001\"}}\nadmin:\n  listen: \"127.0.0.1:7101\"\n  tls: {{client_ca: /c/admin-ca.pem}}\n"
        );
        let c = parse(&text).unwrap();
        let a = c.admin.unwrap();
        assert_eq!(a.cert, std::path::PathBuf::from("/c/m.pem"));
        assert_eq!(a.reprovision.collective, "mcollective");
        assert!(a.reprovision.servers.is_empty());
    }

    #[test]
    fn renewal_needs_a_duration_and_a_sane_rate() {
        let with = |extra: &str| {
            format!(
                "{MINIMAL}\nadmin:\n  listen: \"127.0.0.1:7101\"\n  tls: {{client_ca: /c/a.pem, cert: /a, key: /b}}\n  reprovision: {{{extra}}}\n"
            )
        };
        let c = parse(&with("renew_before: 30d")).unwrap();
        let r = c.admin.unwrap().renew.unwrap();
        assert_eq!(r.before, std::time::Duration::from_secs(30 * 86400));
        assert_eq!(r.rate, 5);
        assert!(parse(&with("")).unwrap().admin.unwrap().renew.is_none());
        let bad = parse(&with("renew_before: soon")).unwrap_err().to_string();
        assert!(bad.contains("admin.reprovision.renew_before"), "{bad}");
        let bad = parse(&with("renew_before: 1d, renew_rate: 0"))
            .unwrap_err()
            .to_string();
        assert!(bad.contains("admin.reprovision.renew_rate"), "{bad}");
    }

    #[test]
    fn admin_section_errors_name_the_key() {
        let no_cert = format!(
            "{MINIMAL}\nadmin:\n  listen: \"127.0.0.1:7101\"\n  tls: {{client_ca: /c/a.pem}}\n"
        );
        assert!(parse(&no_cert)
            .unwrap_err()
            .to_string()
            .contains("admin.tls"));
        let bad_listen = format!(
            "{MINIMAL}\nadmin:\n  listen: nowhere\n  tls: {{client_ca: /c/a.pem, cert: /a, key: /b}}\n"
        );
        assert!(parse(&bad_listen)
            .unwrap_err()
            .to_string()
            .contains("admin.listen"));
        let half = format!(
            "{MINIMAL}\nadmin:\n  listen: \"127.0.0.1:1\"\n  tls: {{client_ca: /c/a.pem, cert: /a}}\n"
        );
        assert!(parse(&half).unwrap_err().to_string().contains("both"));
    }
}
