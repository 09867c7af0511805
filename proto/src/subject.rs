//! NATS subjects of the Choria protocol, named as upstream's connector names them.

use md5::{Digest, Md5};

/// The collective waiting servers live in.
pub const PROVISIONING_COLLECTIVE: &str = "provisioning";

/// A request sent to one server: `<collective>.node.<identity>`.
pub fn node_directed(collective: &str, identity: &str) -> String {
    format!("{collective}.node.{identity}")
}

/// A request broadcast to every server with an agent: `<collective>.broadcast.agent.<agent>`.
pub fn agent_broadcast(collective: &str, agent: &str) -> String {
    format!("{collective}.broadcast.agent.{agent}")
}

/// Where replies for one request go: `<collective>.reply.<md5 hex of caller id>.<request id>`.
pub fn reply_target(collective: &str, caller_id: &str, request_id: &str) -> String {
    format!("{collective}.reply.{}.{request_id}", caller_hash(caller_id))
}

/// Prefix under which all replies for a caller arrive, for one wildcard subscription.
pub fn reply_prefix(collective: &str, caller_id: &str) -> String {
    format!("{collective}.reply.{}", caller_hash(caller_id))
}

fn caller_hash(caller_id: &str) -> String {
    hex::encode(Md5::digest(caller_id.as_bytes()))
}

/// Lifecycle event subject: `choria.lifecycle.event.<type>.<component>`.
pub fn lifecycle_event(event_type: &str, component: &str) -> String {
    format!("choria.lifecycle.event.{event_type}.{component}")
}

/// True when `s` is usable as one token of a NATS subject.
pub fn is_valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && !s
            .chars()
            .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control())
}

/// True when `s` is a valid server identity: a host name, as Choria identities are. Labels of
/// letters, digits, `-` and `_` joined by single dots, 253 bytes at most. Besides making a
/// valid subject, this keeps every name that reaches a certificate subject, a log line, a
/// helper's input or the ledger free of separators (`/`, `,`, `=`), wildcards, spaces,
/// control characters and look-alikes.
pub fn is_valid_identity(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_upstream_shapes() {
        assert_eq!(
            node_directed("provisioning", "n1.example.net"),
            "provisioning.node.n1.example.net"
        );
        assert_eq!(
            agent_broadcast("provisioning", "discovery"),
            "provisioning.broadcast.agent.discovery"
        );
        // md5("choria=provisioner")
        let t = reply_target("provisioning", "choria=provisioner", "abc");
        assert!(t.starts_with("provisioning.reply."));
        assert!(t.ends_with(".abc"));
        assert_eq!(t.split('.').nth(2).unwrap().len(), 32);
    }

    #[test]
    fn identities_with_wildcards_are_refused() {
        assert!(is_valid_identity("n1.example.net"));
        assert!(!is_valid_identity("n1.*"));
        assert!(!is_valid_identity("n1.>"));
        assert!(!is_valid_identity("a b"));
        assert!(!is_valid_identity("a..b"));
        assert!(!is_valid_identity(""));
        for ok in ["n1", "web-01.dc_2.example.net", &"a".repeat(253)] {
            assert!(is_valid_identity(ok), "{ok}");
        }
        for bad in [
            &"a".repeat(254),
            "n1.example.net/O=admins",
            "admin,O=x",
            "n1=x",
            "n1+x",
            ".n1",
            "n1.",
            "n1\n",
            "n1\u{0}",
            "n1.exämple.net",
            "*.example.net",
        ] {
            assert!(!is_valid_identity(bad), "{bad:?}");
        }
    }
}
