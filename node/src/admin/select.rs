//! Choosing ledger records for admin calls (identities, a regular expression, facts, states,
//! credentials expiring soon) and turning records into their protobuf form.

use std::collections::{BTreeMap, BTreeSet};

use proto::grpc::admin as pb;
use raft::{EnrollState, Record};
use regex::Regex;
use tonic::Status;

/// Longest regular expression accepted, and its compiled size limit.
const MAX_REGEX_LEN: usize = 1024;
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A checked [`pb::Selector`].
#[derive(Debug)]
pub struct Selector {
    identities: BTreeSet<String>,
    regex: Option<Regex>,
    facts: Vec<(String, String)>,
    all: bool,
    states: BTreeSet<EnrollState>,
    /// Only records whose credential's `not_after` (Unix seconds) is at most this.
    expiring_by: Option<i64>,
}

/// Longest `expiring_within_seconds` taken: a century, as for durations in configuration.
const MAX_EXPIRING_WITHIN_S: u64 = 100 * 365 * 86400;

impl Selector {
    /// Checks `s`; `INVALID_ARGUMENT` says what is wrong. With `require`, an empty selector is
    /// refused (an operator must say which servers, or `all`).
    pub fn parse(s: Option<pb::Selector>, require: bool) -> Result<Selector, Status> {
        Self::parse_at(s, require, (crate::clock::now_ms() / 1000) as i64)
    }

    /// [`Selector::parse`] with "now" given (Unix seconds).
    pub fn parse_at(
        s: Option<pb::Selector>,
        require: bool,
        now_secs: i64,
    ) -> Result<Selector, Status> {
        let s = s.unwrap_or_default();
        let expiring_by = match s.expiring_within_seconds {
            0 => None,
            n if n > MAX_EXPIRING_WITHIN_S => {
                return Err(Status::invalid_argument(
                    "expiring_within_seconds is more than 100 years",
                ))
            }
            // at most a century: no overflow
            n => Some(now_secs.saturating_add(n as i64)),
        };
        let regex = if s.identity_regex.is_empty() {
            None
        } else {
            if s.identity_regex.len() > MAX_REGEX_LEN {
                return Err(Status::invalid_argument(format!(
                    "identity_regex is longer than {MAX_REGEX_LEN} characters"
                )));
            }
            Some(
                regex::RegexBuilder::new(&s.identity_regex)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| {
                        Status::invalid_argument(format!(
                            "identity_regex {:?} is not a valid regular expression: {e}",
                            s.identity_regex
                        ))
                    })?,
            )
        };
        let mut facts = Vec::new();
        for f in &s.facts {
            match f.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    facts.push((k.trim().to_string(), v.trim().to_string()))
                }
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "fact filter {f:?} is not of the form name=value"
                    )))
                }
            }
        }
        let mut states = BTreeSet::new();
        for name in &s.states {
            let st = EnrollState::from_name(name).ok_or_else(|| {
                let known: Vec<&str> = EnrollState::ALL.iter().map(|s| s.name()).collect();
                Status::invalid_argument(format!(
                    "unknown state {name:?}; known states: {}",
                    known.join(", ")
                ))
            })?;
            states.insert(st);
        }
        for id in &s.identities {
            if !proto::subject::is_valid_identity(id) {
                return Err(Status::invalid_argument(format!(
                    "{id:?} is not a valid identity"
                )));
            }
        }
        let sel = Selector {
            identities: s.identities.into_iter().collect(),
            regex,
            facts,
            all: s.all,
            states,
            expiring_by,
        };
        if require && sel.is_empty() {
            return Err(Status::invalid_argument(
                "say which servers: identities, an identity regex, facts, states, or all",
            ));
        }
        if sel.all && (!sel.identities.is_empty() || sel.regex.is_some() || !sel.facts.is_empty()) {
            return Err(Status::invalid_argument(
                "all cannot be combined with identities, a regex or facts",
            ));
        }
        Ok(sel)
    }

    fn is_empty(&self) -> bool {
        self.identities.is_empty()
            && self.regex.is_none()
            && self.facts.is_empty()
            && !self.all
            && self.states.is_empty()
            && self.expiring_by.is_none()
    }

    /// The states asked for (any when empty).
    pub fn states(&self) -> &BTreeSet<EnrollState> {
        &self.states
    }

    /// Selects by state alone: every record in [`Selector::states`] matches.
    pub fn by_state_only(&self) -> bool {
        self.identities.is_empty()
            && self.regex.is_none()
            && self.facts.is_empty()
            && self.expiring_by.is_none()
    }

    /// Exact identities asked for.
    pub fn identities(&self) -> &BTreeSet<String> {
        &self.identities
    }

    /// True when `r` is selected. Identities, regex and facts must all match where given.
    pub fn matches(&self, r: &Record) -> bool {
        if !self.identities.is_empty() && !self.identities.contains(&r.identity) {
            return false;
        }
        if let Some(re) = &self.regex {
            if !re.is_match(&r.identity) {
                return false;
            }
        }
        if !self
            .facts
            .iter()
            .all(|(k, v)| r.facts.get(k).is_some_and(|have| have == v))
        {
            return false;
        }
        if let Some(by) = self.expiring_by {
            if r.credential.as_ref().is_none_or(|c| c.not_after > by) {
                return false;
            }
        }
        self.states.is_empty() || self.states.contains(&r.state)
    }

    /// For reprovisioning: without explicit identities or states, only servers that run
    /// with a configuration from us (enrolled or revoked).
    pub fn matches_running(&self, r: &Record) -> bool {
        if self.identities.is_empty() && self.states.is_empty() {
            return matches!(r.state, EnrollState::Enrolled | EnrollState::Revoked)
                && self.matches(r);
        }
        self.matches(r)
    }
}

pub fn record(r: &Record) -> pb::Record {
    pb::Record {
        identity: r.identity.clone(),
        state: r.state.name().into(),
        owner: r.owner.clone().unwrap_or_default(),
        lease_until_ms: r.lease_until_ms,
        attempts: r.attempts,
        credential: r.credential.as_ref().map(|c| pb::Credential {
            serial: c.serial.clone(),
            fingerprint: c.fingerprint.clone(),
            not_after: c.not_after,
            issued_by: c.issued_by.clone(),
            issued_at_ms: c.issued_at_ms,
        }),
        config_digest: r.config_digest.clone().unwrap_or_default(),
        last_error: r.last_error.clone().unwrap_or_default(),
        first_seen_ms: r.first_seen_ms,
        updated_ms: r.updated_ms,
        history: r
            .history
            .iter()
            .map(|h| pb::HistoryEntry {
                at_ms: h.at_ms,
                member: h.member.clone(),
                event: h.event.to_string(),
            })
            .collect(),
        revoked: r
            .revoked
            .iter()
            .map(|v| pb::Revocation {
                serial: v.serial.clone(),
                fingerprint: v.fingerprint.clone(),
                not_after: v.not_after,
                revoked_at_ms: v.revoked_at_ms,
                revoked_by: v.revoked_by.clone(),
                reason: v.reason.clone(),
            })
            .collect(),
        facts: r
            .facts
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// Facts kept in the ledger for a server: the names in `keep` when given, else every
/// top-level scalar fact, stopping at `budget` bytes.
pub fn ledger_facts(
    facts: &serde_json::Value,
    keep: Option<&[String]>,
    budget: usize,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(map) = facts.as_object() else {
        return out;
    };
    let mut used = 0;
    for (k, v) in map {
        if keep.is_some_and(|names| !names.iter().any(|n| n == k)) {
            continue;
        }
        let value = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => continue,
        };
        used += k.len() + value.len();
        if used > budget {
            break;
        }
        out.insert(k.clone(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn rec(id: &str, state: EnrollState, facts: &[(&str, &str)]) -> Record {
        let mut r: Record = serde_json::from_value(serde_json::json!({
            "identity": id, "state": "Enrolled", "owner": null, "lease_until_ms": 0,
            "attempts": 1, "credential": null, "config_digest": null, "last_error": null,
            "first_seen_ms": 0, "updated_ms": 0, "history": []
        }))
        .unwrap();
        r.state = state;
        r.facts = facts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        r
    }

    fn sel(s: pb::Selector) -> Result<Selector, Status> {
        Selector::parse(Some(s), true)
    }

    #[test]
    fn selectors_match_and_refuse_nonsense() {
        let a = rec("web1.example", EnrollState::Enrolled, &[("dc", "ams")]);
        let b = rec("db1.example", EnrollState::Failed, &[("dc", "lon")]);
        let s = sel(pb::Selector {
            identity_regex: "^web".into(),
            ..Default::default()
        })
        .unwrap();
        assert!(s.matches(&a) && !s.matches(&b));
        let s = sel(pb::Selector {
            facts: vec!["dc=lon".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(!s.matches(&a) && s.matches(&b));
        // reprovisioning by fact skips servers that are not running a configuration
        assert!(!s.matches_running(&b));
        let all = sel(pb::Selector {
            all: true,
            ..Default::default()
        })
        .unwrap();
        assert!(all.matches_running(&a) && !all.matches_running(&b));

        let code = |s: pb::Selector| sel(s).unwrap_err().code();
        assert_eq!(code(Default::default()), tonic::Code::InvalidArgument);
        assert_eq!(
            code(pb::Selector {
                identity_regex: "(".into(),
                ..Default::default()
            }),
            tonic::Code::InvalidArgument
        );
        let msg = sel(pb::Selector {
            states: vec!["nope".into()],
            ..Default::default()
        })
        .unwrap_err()
        .message()
        .to_string();
        assert!(msg.contains("known states"), "{msg}");
        assert_eq!(
            code(pb::Selector {
                facts: vec!["novalue".into()],
                ..Default::default()
            }),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(pb::Selector {
                all: true,
                identity_regex: "x".into(),
                ..Default::default()
            }),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn expiring_within_selects_by_the_current_credentials_end() {
        let now = 1_800_000_000;
        let day = 86_400;
        let with_cert = |id: &str, not_after: i64| {
            let mut r = rec(id, EnrollState::Enrolled, &[]);
            r.credential = Some(raft::Credential {
                serial: "01".into(),
                fingerprint: "00".into(),
                not_after,
                issued_by: "prov1".into(),
                issued_at_ms: 0,
            });
            r
        };
        let soon = with_cert("soon.example", now + 10 * day);
        let later = with_cert("later.example", now + 60 * day);
        let expired = with_cert("gone.example", now - day);
        let none = rec("nocert.example", EnrollState::Enrolled, &[]);
        let within = |days: u64| {
            Selector::parse_at(
                Some(pb::Selector {
                    expiring_within_seconds: days * day as u64,
                    ..Default::default()
                }),
                true,
                now,
            )
            .unwrap()
        };
        let s = within(30);
        assert!(s.matches(&soon) && s.matches(&expired));
        assert!(!s.matches(&later) && !s.matches(&none));
        assert!(!s.by_state_only());
        // alone it says which servers; reprovisioning takes the running ones
        assert!(s.matches_running(&soon));
        let s = within(5);
        assert!(!s.matches(&soon) && s.matches(&expired));
        let too_long = Selector::parse_at(
            Some(pb::Selector {
                expiring_within_seconds: u64::MAX,
                ..Default::default()
            }),
            true,
            now,
        );
        assert_eq!(too_long.unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn facts_kept_are_scalars_within_budget() {
        let facts = serde_json::json!({"a": "x", "b": 2, "c": {"nested": 1}, "d": true});
        let all = ledger_facts(&facts, None, 1024);
        assert_eq!(all.len(), 3);
        assert_eq!(all["b"], "2");
        let some = ledger_facts(&facts, Some(&["a".to_string()]), 1024);
        assert_eq!(some.len(), 1);
        let tiny = ledger_facts(&facts, None, 2);
        assert_eq!(tiny.len(), 1);
        // facts that are not an object keep nothing
        for garbage in [
            serde_json::json!("text"),
            serde_json::json!([1, 2]),
            Value::Null,
        ] {
            assert!(ledger_facts(&garbage, None, 1024).is_empty());
        }
    }
}
