//! Who the provisioner is: its `identity` (the host name by default; a cluster member's is its
//! member name), the `cluster` and `admin` sections that depend on it, and the
//! `lifecycle_component` it listens for in subjects.

use super::admin::check_admin;
use super::cluster::check_cluster;
use super::{invalid, Admin, AdminSection, Cluster, ClusterSection, Problems};

/// The lifecycle component, upstream's when none is given; it goes into a subject.
pub(super) fn check_lifecycle_component(given: &str, p: &mut Problems) -> String {
    let lifecycle_component = if given.is_empty() {
        proto::lifecycle::PROVISION_MODE_COMPONENT.to_string()
    } else {
        given.to_string()
    };
    if !proto::subject::is_valid_token(&lifecycle_component) {
        p.add(invalid(
            "lifecycle_component",
            format!("{lifecycle_component:?} may not contain '.', '*', '>' or spaces"),
        ));
    }
    lifecycle_component
}

/// This provisioner's identity and, when it is a cluster member, its cluster and admin API.
pub(super) struct Membership {
    pub identity: String,
    pub cluster: Option<Cluster>,
    pub admin: Option<Admin>,
}

/// Checks the sections; `has_data_dir` says whether `data_dir` is set (a cluster needs it).
pub(super) fn check_membership(
    given_identity: String,
    cluster: Option<ClusterSection>,
    admin: Option<AdminSection>,
    has_data_dir: bool,
    p: &mut Problems,
) -> Membership {
    // a member without cluster.id finds itself by identity (the host name by default)
    let host_identity = if given_identity.is_empty() {
        hostname()
    } else {
        given_identity.clone()
    };
    let had_cluster = cluster.is_some();
    let cluster = cluster.and_then(|c| check_cluster(c, has_data_dir, &host_identity, p));
    // an admin section leans on its cluster section: checked once that one is right
    let cluster_broken = cluster.is_none() && had_cluster;
    let admin = admin
        .filter(|_| !cluster_broken)
        .and_then(|a| check_admin(a, cluster.as_ref(), p));

    // a cluster member is known by its member name everywhere
    let identity = match &cluster {
        Some(c) => {
            let name = c
                .members
                .iter()
                .find(|m| m.id == c.id)
                .map(|m| m.name.clone())
                .unwrap_or_default();
            if !given_identity.is_empty() && given_identity != name {
                p.add(invalid(
                    "identity",
                    format!(
                        "is {given_identity:?} but cluster member {} is named {name:?}",
                        c.id
                    ),
                ));
            }
            name
        }
        None => host_identity,
    };
    if !proto::subject::is_valid_identity(&identity) {
        p.add(invalid(
            "identity",
            format!("{identity:?} is not a valid identity"),
        ));
    }
    Membership {
        identity,
        cluster,
        admin,
    }
}

/// The host name from the kernel (uname), not from /proc: the systemd unit hides /proc/sys.
pub(super) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer it is given.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    if rc != 0 || name.is_empty() {
        return "provisioner".into();
    }
    name
}
