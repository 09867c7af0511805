//! How a member encodes what it logs and what it sends its peers: postcard (compact binary,
//! serde) behind a one-byte tag, or JSON as every earlier build wrote and sent.
//!
//! Decoding takes both, by the tag: a log written by an earlier build is read as it is. Log
//! entries are written binary. On the wire, a member sends binary only once the cluster
//! applies ledger rules 3 ([`crate::state::LEDGER_RULES`]), which the leader raises only when
//! every member's build decodes it, so the members of a rolling upgrade keep understanding
//! each other; a reply takes the form of its request. Only the calls that carry the ledger
//! (appends, votes, snapshots, forwarded commands) go binary: control calls (join, peek,
//! membership) carry free-form JSON values, which postcard cannot hold. Binary entries are
//! about a third of JSON's size, and each one is fsynced by every member and sent to every
//! follower.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// First byte of a binary payload; JSON never starts with it.
pub(crate) const BINARY: u8 = 0xB3;

/// The ledger rules from which members send binary to each other.
pub const BINARY_WIRE_RULES: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("binary: {0}")]
    Binary(#[from] postcard::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// `v` in binary (`true`) or JSON.
pub fn encode<T: Serialize + ?Sized>(v: &T, binary: bool) -> Result<Vec<u8>, CodecError> {
    if binary {
        let mut out = vec![BINARY];
        postcard::to_io(v, &mut out)?;
        Ok(out)
    } else {
        Ok(serde_json::to_vec(v)?)
    }
}

/// Adds `v` in binary, without the tag, to `out`: postcard writes a struct as its fields one
/// after another and a sequence as its length (a varint) and then its items, so a message can
/// be put together from parts encoded at different times (see [`crate::append_cache`]).
pub(crate) fn extend_binary<T: Serialize + ?Sized>(
    v: &T,
    out: Vec<u8>,
) -> Result<Vec<u8>, CodecError> {
    Ok(postcard::to_extend(v, out)?)
}

/// True when `bytes` is a binary payload.
pub fn is_binary(bytes: &[u8]) -> bool {
    bytes.first() == Some(&BINARY)
}

/// Whichever of the two forms `bytes` is in.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        Some((&BINARY, rest)) => Ok(postcard::from_bytes(rest)?),
        _ => Ok(serde_json::from_slice(bytes)?),
    }
}

/// Whether this member sends binary to its peers: shared by the store, which sets it as the
/// applied ledger rules reach [`BINARY_WIRE_RULES`], and the network, which reads it.
#[derive(Debug, Clone, Default)]
pub struct WireFormat(Arc<AtomicBool>);

impl WireFormat {
    pub fn binary(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Follows the ledger rules the cluster applies.
    pub fn follow_rules(&self, rules: u32) {
        self.0.store(rules >= BINARY_WIRE_RULES, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, ReleaseOutcome};
    use crate::types::{Batch, TypeConfig};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership};
    use std::collections::BTreeSet;

    fn entries() -> Vec<Entry<TypeConfig>> {
        let id = |i| LogId::new(CommittedLeaderId::new(3, 1), i);
        vec![
            Entry {
                log_id: id(1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: id(2),
                payload: EntryPayload::Membership(Membership::new(
                    vec![BTreeSet::from([1, 2, 3])],
                    None,
                )),
            },
            Entry {
                log_id: id(3),
                payload: EntryPayload::Normal(Batch::new(vec![
                    Command::Claim {
                        identity: "n1.example.net".into(),
                        member: "prov1".into(),
                        lease_until_ms: 99,
                        seen_ms: 7,
                        at_ms: 8,
                    },
                    Command::Release {
                        identity: "n1.example.net".into(),
                        member: "prov1".into(),
                        outcome: ReleaseOutcome::Deferred {
                            reason: "später".into(),
                        },
                        at_ms: 9,
                    },
                ])),
            },
        ]
    }

    #[test]
    fn both_forms_round_trip_and_binary_is_smaller() {
        let e = entries();
        let json = encode(&e, false).unwrap();
        let bin = encode(&e, true).unwrap();
        assert!(!is_binary(&json) && is_binary(&bin));
        let from_json: Vec<Entry<TypeConfig>> = decode(&json).unwrap();
        let from_bin: Vec<Entry<TypeConfig>> = decode(&bin).unwrap();
        assert_eq!(from_json, e);
        assert_eq!(from_bin, e);
        assert!(
            bin.len() * 2 < json.len(),
            "{} vs {}",
            bin.len(),
            json.len()
        );
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        let bin = encode(&entries(), true).unwrap();
        for cut in 1..bin.len() {
            assert!(
                decode::<Vec<Entry<TypeConfig>>>(&bin[..cut]).is_err(),
                "cut {cut}"
            );
        }
        assert!(decode::<Vec<Entry<TypeConfig>>>(&[BINARY, 0xff, 0xff, 0xff]).is_err());
        assert!(decode::<Vec<Entry<TypeConfig>>>(b"{not json").is_err());
        assert!(decode::<Vec<Entry<TypeConfig>>>(&[]).is_err());
    }

    /// What the hot calls carry: an append and a forwarded batch's answers, errors included.
    #[test]
    fn appends_and_forward_results_round_trip_in_binary() {
        use crate::network::ForwardResult;
        use crate::types::{BatchResult, Member};
        use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
        let append = openraft::raft::AppendEntriesRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(3, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 0)),
            entries: entries(),
            leader_commit: None,
        };
        let back: openraft::raft::AppendEntriesRequest<TypeConfig> =
            decode(&encode(&append, true).unwrap()).unwrap();
        assert_eq!(back.entries, append.entries);
        assert_eq!(back.vote, append.vote);
        let results: Vec<ForwardResult> = vec![
            Ok(BatchResult {
                results: vec![
                    crate::Applied::Ok,
                    crate::Applied::Rejected(crate::Rejection::ClaimedBy {
                        member: "prov2".into(),
                        until_ms: 5,
                    }),
                ],
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(
                ForwardToLeader::new(2, Member::default()),
            ))),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(
                ForwardToLeader::empty(),
            ))),
        ];
        for r in results {
            let back: ForwardResult = decode(&encode(&r, true).unwrap()).unwrap();
            assert_eq!(format!("{back:?}"), format!("{r:?}"));
        }
    }

    #[test]
    fn the_wire_turns_binary_with_rules_3() {
        let w = WireFormat::default();
        assert!(!w.binary());
        w.follow_rules(2);
        assert!(!w.binary());
        w.clone().follow_rules(3);
        assert!(w.binary(), "clones share the setting");
    }
}
