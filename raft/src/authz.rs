//! Who may call what on the Raft port.
//!
//! Mutual TLS proves a caller holds a certificate from the cluster CA; that alone would let any
//! such certificate (a member removed long ago, one issued for a test) vote, lead, write under
//! another member's name or join. So every call is also authorized against the group:
//!
//! - the caller is the one member whose name its certificate carries (common name or DNS
//!   name), looked up in the membership, or, for a member that has not heard of the group yet,
//!   in the configured member list;
//! - a member removed from the group is refused everything until an operator adds it again
//!   (the state machine keeps the names of departed members);
//! - `append_entries` and `install_snapshot` only from the leader they name, `vote` only from
//!   the candidate it names: nobody can lead or campaign as someone else;
//! - `forward` only from a current member, and every command in it must name that member as
//!   its actor (commands with no actor, operators' cluster settings, come from any member);
//! - `membership` (a change an operator asked another member for) and `peek` only from
//!   current members (`peek` also from configured ones, which ask before they join);
//! - `join` only for a name the configured list holds under the id it asks for, and only by
//!   that member itself.
//!
//! Without TLS (`insecure_plaintext`, allowed on loopback addresses only) there is no name to
//! check: calls must come from a loopback address, and the names in them are taken as given.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use thiserror::Error;
use tonic::Status;
use x509_parser::prelude::*;

use crate::command::Command;
use crate::types::NodeId;

/// Why a call was refused; `reason()` is its metric label.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error("no client certificate")]
    NoCertificate,
    #[error("the client certificate cannot be read: {0}")]
    BadCertificate(String),
    #[error("the certificate names no member ({0})")]
    Unknown(String),
    #[error("the certificate names more than one member ({0})")]
    Ambiguous(String),
    #[error("{0} was removed from the group; an operator must add it again")]
    Departed(String),
    #[error("{0} is not a member of the group")]
    NotAMember(String),
    #[error("{name} may not act as {claimed}")]
    Impersonation { name: String, claimed: String },
    #[error("{name} is not in the configured member list under id {id}")]
    NotConfigured { name: String, id: NodeId },
    #[error("{0} is a learner and may not campaign")]
    Learner(String),
    #[error("plaintext calls are accepted from loopback addresses only, not {0}")]
    NotLoopback(String),
    #[error("{name}'s clock is {off_ms} ms off the leader's, more than the {max_ms} ms allowed")]
    ClockSkew {
        name: String,
        off_ms: u64,
        max_ms: u64,
    },
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoCertificate | Refusal::BadCertificate(_) => "certificate",
            Refusal::Unknown(_) | Refusal::Ambiguous(_) => "unknown",
            Refusal::Departed(_) => "departed",
            Refusal::NotAMember(_) => "not_member",
            Refusal::Impersonation { .. } => "impersonation",
            Refusal::NotConfigured { .. } => "not_configured",
            Refusal::Learner(_) => "learner",
            Refusal::NotLoopback(_) => "not_loopback",
            Refusal::ClockSkew { .. } => "clock_skew",
        }
    }

    pub fn status(&self, rpc: &str) -> Status {
        let msg = format!("raft {rpc}: {self}");
        match self {
            Refusal::NoCertificate | Refusal::BadCertificate(_) | Refusal::NotLoopback(_) => {
                Status::unauthenticated(msg)
            }
            _ => Status::permission_denied(msg),
        }
    }
}

/// Every name a certificate carries: its common names and DNS alternative names.
pub fn certificate_names(der: &[u8]) -> Result<Vec<String>, Refusal> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| Refusal::BadCertificate(e.to_string()))?;
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(d) = name {
                names.push(d.to_string());
            }
        }
    }
    Ok(names)
}

/// The names of the few certificates members call with, so a call does not parse its
/// caller's certificate again (every append and forward is a call). Only certificates the TLS
/// handshake accepted reach it, and it holds at most [`Names::MAX`], the oldest going first,
/// so a stream of distinct certificates cannot grow it.
#[derive(Debug, Default)]
pub struct Names {
    known: std::sync::Mutex<std::collections::VecDeque<(Vec<u8>, Vec<String>)>>,
}

impl Names {
    pub const MAX: usize = 16;

    /// [`certificate_names`] of `der`, parsed once while it stays among the last few.
    pub fn of(&self, der: &[u8]) -> Result<Vec<String>, Refusal> {
        if let Ok(known) = self.known.lock() {
            if let Some((_, names)) = known.iter().find(|(d, _)| d.as_slice() == der) {
                return Ok(names.clone());
            }
        }
        let names = certificate_names(der)?;
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= Self::MAX {
                known.pop_front();
            }
            known.push_back((der.to_vec(), names.clone()));
        }
        Ok(names)
    }
}

/// What a member knows of the group when a call arrives.
#[derive(Debug, Clone, Default)]
pub struct Roster {
    /// The effective membership: id to name.
    pub members: BTreeMap<NodeId, String>,
    pub voters: BTreeSet<NodeId>,
    /// The configured member list (empty when the application gave none).
    pub configured: BTreeMap<NodeId, String>,
    /// Members removed from the group and not added back since.
    pub departed: BTreeSet<String>,
}

/// Who called: a member name (from its certificate) and its id, or nobody in particular on
/// a plaintext loopback connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Member { name: String, id: NodeId },
    Plaintext,
}

impl Roster {
    fn id_in_members(&self, name: &str) -> Option<NodeId> {
        self.members
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(id, _)| *id)
    }

    fn id_in_configured(&self, name: &str) -> Option<NodeId> {
        self.configured
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(id, _)| *id)
    }

    /// The member the certificate's `names` belong to; a departed member is refused.
    pub fn identify(&self, names: &[String]) -> Result<Caller, Refusal> {
        let mut found: Vec<(String, NodeId)> = Vec::new();
        for name in names {
            let id = self
                .id_in_members(name)
                .or_else(|| self.id_in_configured(name))
                .or_else(|| self.departed.contains(name).then_some(NodeId::MAX));
            if let Some(id) = id {
                if !found.iter().any(|(n, _)| n == name) {
                    found.push((name.clone(), id));
                }
            }
        }
        match found.as_slice() {
            [] if self.members.is_empty() && self.configured.is_empty() => {
                // a group with no list of its own yet (storage and network tests): the name
                // is whatever the certificate says first
                let name = names
                    .first()
                    .cloned()
                    .ok_or(Refusal::Unknown(String::new()))?;
                Ok(Caller::Member {
                    name,
                    id: NodeId::MAX,
                })
            }
            [] => Err(Refusal::Unknown(names.join(", "))),
            [(name, id)] => {
                if self.departed.contains(name) && self.id_in_members(name).is_none() {
                    return Err(Refusal::Departed(name.clone()));
                }
                Ok(Caller::Member {
                    name: name.clone(),
                    id: *id,
                })
            }
            several => Err(Refusal::Ambiguous(
                several
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    /// The caller must be a current member.
    pub fn member(&self, caller: &Caller) -> Result<(), Refusal> {
        match caller {
            Caller::Plaintext => Ok(()),
            Caller::Member { name, .. } => {
                if self.members.is_empty() || self.id_in_members(name).is_some() {
                    Ok(())
                } else {
                    Err(Refusal::NotAMember(name.clone()))
                }
            }
        }
    }

    /// The caller must be node `claimed` (the leader an append names, the candidate of a vote).
    pub fn acts_as(&self, caller: &Caller, claimed: Option<NodeId>) -> Result<(), Refusal> {
        let Caller::Member { name, id } = caller else {
            return Ok(());
        };
        if *id == NodeId::MAX && self.members.is_empty() && self.configured.is_empty() {
            return Ok(());
        }
        if claimed == Some(*id) {
            return Ok(());
        }
        Err(Refusal::Impersonation {
            name: name.clone(),
            claimed: claimed.map_or("nobody".into(), |c| c.to_string()),
        })
    }

    /// A vote request: from the candidate it names, which must not be a learner.
    pub fn may_campaign(&self, caller: &Caller, candidate: Option<NodeId>) -> Result<(), Refusal> {
        self.acts_as(caller, candidate)?;
        if let Caller::Member { name, id } = caller {
            if self.members.contains_key(id) && !self.voters.contains(id) {
                return Err(Refusal::Learner(name.clone()));
            }
        }
        Ok(())
    }

    /// A forwarded batch: from a current member, every command in its own name.
    pub fn may_forward(&self, caller: &Caller, commands: &[Command]) -> Result<(), Refusal> {
        self.member(caller)?;
        let Caller::Member { name, .. } = caller else {
            return Ok(());
        };
        match commands
            .iter()
            .filter_map(Command::actor)
            .find(|actor| actor != name)
        {
            Some(actor) => Err(Refusal::Impersonation {
                name: name.clone(),
                claimed: actor.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// A join: by the member itself, for the id the configured list gives it.
    pub fn may_join(&self, caller: &Caller, id: NodeId, name: &str) -> Result<(), Refusal> {
        if let Caller::Member { name: who, .. } = caller {
            if who != name {
                return Err(Refusal::Impersonation {
                    name: who.clone(),
                    claimed: name.to_string(),
                });
            }
        }
        if self.departed.contains(name) && self.id_in_members(name).is_none() {
            return Err(Refusal::Departed(name.to_string()));
        }
        if !self.configured.is_empty() && self.configured.get(&id).map(String::as_str) != Some(name)
        {
            return Err(Refusal::NotConfigured {
                name: name.to_string(),
                id,
            });
        }
        match self.members.get(&id) {
            Some(known) if known != name => Err(Refusal::Impersonation {
                name: name.to_string(),
                claimed: format!("id {id} ({known})"),
            }),
            _ => Ok(()),
        }
    }
}

/// A plaintext call must come from a loopback address.
pub fn loopback(remote: Option<SocketAddr>) -> Result<Caller, Refusal> {
    match remote {
        Some(a) if a.ip().is_loopback() => Ok(Caller::Plaintext),
        Some(a) => Err(Refusal::NotLoopback(a.to_string())),
        None => Err(Refusal::NotLoopback("an unknown address".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roster() -> Roster {
        let names = |v: &[(NodeId, &str)]| v.iter().map(|(i, n)| (*i, n.to_string())).collect();
        Roster {
            members: names(&[(1, "prov1"), (2, "prov2"), (3, "prov3")]),
            voters: [1, 2].into(),
            configured: names(&[(1, "prov1"), (2, "prov2"), (3, "prov3"), (4, "prov4")]),
            departed: ["prov5".to_string()].into(),
        }
    }

    fn caller(r: &Roster, names: &[&str]) -> Result<Caller, Refusal> {
        r.identify(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn reason<T: std::fmt::Debug>(r: Result<T, Refusal>) -> &'static str {
        r.map(|_| "ok").unwrap_or_else(|e| e.reason())
    }

    #[test]
    fn callers_are_the_member_their_certificate_names() {
        let r = roster();
        assert_eq!(
            caller(&r, &["prov2", "prov2.example.net"]).unwrap(),
            Caller::Member {
                name: "prov2".into(),
                id: 2
            }
        );
        // configured but not yet a member: known, for joining and peeking
        assert!(caller(&r, &["prov4"]).is_ok());
        assert_eq!(reason(caller(&r, &["prov9"])), "unknown");
        assert_eq!(reason(caller(&r, &["prov5"])), "departed");
        assert_eq!(reason(caller(&r, &["prov1", "prov2"])), "unknown");
        assert_eq!(reason(caller(&r, &[])), "unknown");
    }

    #[test]
    fn members_act_only_as_themselves() {
        let r = roster();
        let p2 = caller(&r, &["prov2"]).unwrap();
        assert!(r.acts_as(&p2, Some(2)).is_ok());
        assert_eq!(reason(r.acts_as(&p2, Some(1))), "impersonation");
        assert_eq!(reason(r.acts_as(&p2, None)), "impersonation");
        assert!(r.may_campaign(&p2, Some(2)).is_ok());
        // prov3 is a learner
        let p3 = caller(&r, &["prov3"]).unwrap();
        assert_eq!(reason(r.may_campaign(&p3, Some(3))), "learner");
    }

    #[test]
    fn forwards_carry_only_the_callers_own_commands() {
        let r = roster();
        let p2 = caller(&r, &["prov2"]).unwrap();
        let hb = |m: &str| Command::Heartbeat {
            member: m.into(),
            at_ms: 1,
        };
        let settings = Command::SetPaused {
            paused: true,
            at_ms: 1,
        };
        assert!(r.may_forward(&p2, &[hb("prov2"), settings.clone()]).is_ok());
        assert!(r.may_forward(&p2, &[]).is_ok());
        let op = Command::Revoke {
            identity: "n1".into(),
            member: "prov2/alice".into(),
            reason: "r".into(),
            at_ms: 1,
        };
        assert!(r.may_forward(&p2, &[op]).is_ok());
        assert_eq!(reason(r.may_forward(&p2, &[hb("prov1")])), "impersonation");
        let p4 = caller(&r, &["prov4"]).unwrap();
        assert_eq!(reason(r.may_forward(&p4, &[hb("prov4")])), "not_member");
    }

    #[test]
    fn joins_only_for_the_configured_id_and_by_the_member_itself() {
        let r = roster();
        let p4 = caller(&r, &["prov4"]).unwrap();
        assert!(r.may_join(&p4, 4, "prov4").is_ok());
        assert_eq!(reason(r.may_join(&p4, 5, "prov4")), "not_configured");
        assert_eq!(reason(r.may_join(&p4, 2, "prov2")), "impersonation");
        let p2 = caller(&r, &["prov2"]).unwrap();
        assert!(r.may_join(&p2, 2, "prov2").is_ok());
        // a departed member cannot come back by itself
        assert_eq!(
            reason(r.may_join(&Caller::Plaintext, 5, "prov5")),
            "departed"
        );
    }

    #[test]
    fn names_are_kept_for_the_last_few_certificates_only() {
        let names = Names::default();
        let cert = rcgen::generate_simple_self_signed(vec!["prov1.example".to_string()])
            .map(|c| c.cert.der().to_vec());
        let Ok(der) = cert else {
            panic!("test certificate");
        };
        assert_eq!(
            names.of(&der),
            Ok(vec![
                "rcgen self signed cert".to_string(),
                "prov1.example".to_string()
            ])
        );
        assert_eq!(names.of(&der), certificate_names(&der));
        assert!(matches!(names.of(b"junk"), Err(Refusal::BadCertificate(_))));
        for i in 0..Names::MAX + 4 {
            let der = rcgen::generate_simple_self_signed(vec![format!("m{i}.example")])
                .map(|c| c.cert.der().to_vec())
                .unwrap_or_default();
            assert!(names.of(&der).is_ok());
        }
        let held = names.known.lock().map(|k| k.len()).unwrap_or(0);
        assert_eq!(held, Names::MAX);
        // the first certificate went first, and is parsed (and correct) again
        assert!(names
            .known
            .lock()
            .map(|k| k.iter().all(|(d, _)| d != &der))
            .unwrap_or(false));
        assert_eq!(names.of(&der), certificate_names(&der));
    }

    #[test]
    fn plaintext_only_on_loopback() {
        assert!(loopback(Some("127.0.0.1:1".parse().unwrap())).is_ok());
        assert!(loopback(Some("[::1]:1".parse().unwrap())).is_ok());
        assert_eq!(
            reason(loopback(Some("10.0.0.1:1".parse().unwrap()))),
            "not_loopback"
        );
        assert_eq!(reason(loopback(None)), "not_loopback");
    }
}
