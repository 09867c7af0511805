//! What a record's history says happened to a server: one [`Event`] per line, typed, and
//! rendered to a sentence only for people (the CLI, the admin API). Replay detection
//! compares events, not sentences, and from ledger rules 8 ([`TYPED_HISTORY_RULES`]) the
//! record stores the event itself, so the digest (which hashes the record) covers the typed
//! form and rewording a sentence changes nothing replicated.
//!
//! Lines written under earlier rules hold the sentence ([`Logged::Text`]); they stay as
//! they are and compare with an event by its sentence, which is what earlier builds wrote for
//! it. Members of two builds side by side apply every command under the rules the cluster
//! agreed on, so they write the same lines.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// The ledger rules from which history lines are stored typed.
pub const TYPED_HISTORY_RULES: u32 = 8;

/// One thing that happened to a server.
///
/// In JSON an object of one key, the event's name (`{"failed":{"reason":"…"}}`): every
/// variant has fields, even none, so no event is a bare string like a sentence, and it reads
/// back without buffering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A member claimed it; `fell_back`: it was enrolled and came back to provisioning mode.
    Claimed {
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        fell_back: bool,
    },
    CredentialIssued {
        serial: String,
    },
    Enrolled {},
    CredentialRevoked {
        serial: String,
        reason: String,
    },
    ReprovisionRequested {},
    /// An operator's or a member's note (`Command::Note`), as written.
    Note {
        text: String,
    },
    /// An operator moved its claim from `from`.
    TakenFrom {
        from: String,
        reason: String,
    },
    Deferred {
        reason: String,
    },
    Failed {
        reason: String,
    },
    ShutDown {
        reason: String,
    },
    Upgrading {
        from: String,
        to: String,
    },
    Abandoned {},
    /// It restarted with credential `serial`; the one it replaced (`revoked`) is revoked.
    Restarted {
        serial: String,
        revoked: String,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Claimed { fell_back: false } => f.write_str("claimed"),
            Event::Claimed { fell_back: true } => {
                f.write_str("claimed: back in provisioning mode after enrollment")
            }
            Event::CredentialIssued { serial } => write!(f, "credential issued, serial {serial}"),
            Event::Enrolled {} => f.write_str("enrolled"),
            Event::CredentialRevoked { serial, reason } => {
                write!(f, "credential {serial} revoked: {reason}")
            }
            Event::ReprovisionRequested {} => f.write_str("reprovision requested"),
            Event::Note { text } => f.write_str(text),
            Event::TakenFrom { from, reason } => write!(f, "taken from {from}: {reason}"),
            Event::Deferred { reason } => write!(f, "deferred: {reason}"),
            Event::Failed { reason } => write!(f, "failed: {reason}"),
            Event::ShutDown { reason } => write!(f, "shut down: {reason}"),
            Event::Upgrading { from, to } => write!(f, "upgrading from {from} to {to}"),
            Event::Abandoned {} => f.write_str("abandoned"),
            Event::Restarted { serial, revoked } => {
                write!(f, "restarted with {serial}; {revoked} revoked")
            }
        }
    }
}

/// A history line as stored: the event (rules 8), or the sentence earlier rules wrote. In
/// JSON an object or a string, so records written before read as they were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Logged {
    Event(Event),
    Text(String),
}

impl Logged {
    /// The line `event` makes under ledger `rules`.
    pub fn under(rules: u32, event: Event) -> Logged {
        if rules >= TYPED_HISTORY_RULES {
            Logged::Event(event)
        } else {
            Logged::Text(event.to_string())
        }
    }

    /// Whether this line records `event`.
    pub fn is(&self, event: &Event) -> bool {
        match self {
            Logged::Event(e) => e == event,
            Logged::Text(t) => *t == event.to_string(),
        }
    }
}

impl fmt::Display for Logged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Logged::Event(e) => e.fmt(f),
            Logged::Text(t) => f.write_str(t),
        }
    }
}

// By hand: a string is a sentence and a map an event, decided by the JSON's own type
// without buffering the value (records are read by the million).
impl<'de> Deserialize<'de> for Logged {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LoggedVisitor;
        impl<'de> Visitor<'de> for LoggedVisitor {
            type Value = Logged;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a history event or its sentence")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Logged, E> {
                Ok(Logged::Text(s.to_string()))
            }

            fn visit_string<E: de::Error>(self, s: String) -> Result<Logged, E> {
                Ok(Logged::Text(s))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Logged, A::Error> {
                Event::deserialize(de::value::MapAccessDeserializer::new(map)).map(Logged::Event)
            }
        }
        d.deserialize_any(LoggedVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_event() -> Vec<(Event, &'static str)> {
        let s = |v: &str| v.to_string();
        vec![
            (Event::Claimed { fell_back: false }, "claimed"),
            (
                Event::Claimed { fell_back: true },
                "claimed: back in provisioning mode after enrollment",
            ),
            (
                Event::CredentialIssued { serial: s("01") },
                "credential issued, serial 01",
            ),
            (Event::Enrolled {}, "enrolled"),
            (
                Event::CredentialRevoked {
                    serial: s("01"),
                    reason: s("key lost"),
                },
                "credential 01 revoked: key lost",
            ),
            (Event::ReprovisionRequested {}, "reprovision requested"),
            (
                Event::Note {
                    text: s("reprovision request: ok"),
                },
                "reprovision request: ok",
            ),
            (
                Event::TakenFrom {
                    from: s("a"),
                    reason: s("drained"),
                },
                "taken from a: drained",
            ),
            (Event::Deferred { reason: s("later") }, "deferred: later"),
            (Event::Failed { reason: s("no") }, "failed: no"),
            (Event::ShutDown { reason: s("bye") }, "shut down: bye"),
            (
                Event::Upgrading {
                    from: s("0.29.4"),
                    to: s("0.30.0"),
                },
                "upgrading from 0.29.4 to 0.30.0",
            ),
            (Event::Abandoned {}, "abandoned"),
            (
                Event::Restarted {
                    serial: s("02"),
                    revoked: s("01"),
                },
                "restarted with 02; 01 revoked",
            ),
        ]
    }

    #[test]
    fn events_read_as_the_sentences_earlier_rules_wrote() {
        for (e, text) in every_event() {
            assert_eq!(e.to_string(), text);
            assert!(Logged::Text(text.into()).is(&e), "{text}");
            assert_eq!(
                Logged::under(TYPED_HISTORY_RULES - 1, e.clone()),
                Logged::Text(text.into())
            );
        }
    }

    #[test]
    fn typed_lines_round_trip_and_old_lines_read_as_they_were() {
        for (e, text) in every_event() {
            let typed = Logged::under(TYPED_HISTORY_RULES, e.clone());
            let json = serde_json::to_string(&typed).unwrap();
            assert!(json.starts_with('{'), "{json}");
            let back: Logged = serde_json::from_str(&json).unwrap();
            assert_eq!(back, typed);
            assert!(back.is(&e));
            assert_eq!(back.to_string(), text);
            let old: Logged = serde_json::from_str(&serde_json::to_string(text).unwrap()).unwrap();
            assert_eq!(old, Logged::Text(text.into()));
        }
    }

    #[test]
    fn a_typed_line_is_compared_by_its_event_not_its_sentence() {
        // a note whose text reads like another event is still a note
        let note = Logged::Event(Event::Note {
            text: "enrolled".into(),
        });
        assert!(!note.is(&Event::Enrolled {}));
        assert!(Logged::Event(Event::Enrolled {}).is(&Event::Enrolled {}));
        assert!(!Logged::Event(Event::Failed { reason: "a".into() })
            .is(&Event::Failed { reason: "b".into() }));
        for garbage in [
            r#"{"exploded":{}}"#,
            r#"{"failed":{}}"#,
            r#"{"failed":{"reason":"a"},"enrolled":{}}"#,
            r#"{}"#,
            "17",
            "null",
        ] {
            let read: Result<Logged, _> = serde_json::from_str(garbage);
            assert!(read.is_err(), "{garbage}: {read:?}");
        }
    }
}
