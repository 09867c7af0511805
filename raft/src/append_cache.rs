//! Log entries encoded once for every follower.
//!
//! openraft replicates to each follower on its own stream and hands each its own
//! `AppendEntriesRequest`; the leader used to encode the same entries once per follower (1.4 %
//! of a capped 5-member leader's CPU, see `benches/BENCHMARKS.md`). Followers seldom get the
//! same range at the same moment (a capped follower acknowledges later than another), so the
//! cache keeps entries, not requests: each entry is encoded once, by log id, and every append
//! is put together from its entries' bytes (postcard writes a struct as its fields in order
//! and a sequence as a varint length and its items). Within one vote a log id names one entry
//! (Raft's log matching); a new vote empties the cache. JSON (before ledger rules 3) is
//! encoded whole as before.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use openraft::raft::AppendEntriesRequest;
use openraft::{LogId, Vote};

use crate::codec::{self, CodecError, BINARY};
use crate::types::{NodeId, TypeConfig};

/// Entries kept: well beyond one append (`MAX_ENTRIES_PER_APPEND`) times a follower's lag.
const KEPT: usize = 1024;

#[derive(Debug, Default)]
struct Entries {
    vote: Option<Vote<NodeId>>,
    /// By log index: the entry's log id and its encoding.
    by_index: BTreeMap<u64, (LogId<NodeId>, Vec<u8>)>,
}

/// The entries a member encoded last; cloned into every peer client.
#[derive(Debug, Clone, Default)]
pub struct AppendCache {
    entries: Arc<Mutex<Entries>>,
    #[cfg(test)]
    encoded: Arc<std::sync::atomic::AtomicUsize>,
}

impl AppendCache {
    /// `rpc` encoded as [`codec::encode`] would, its entries from the cache where another
    /// follower's append already carried them.
    pub fn encode(
        &self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        binary: bool,
    ) -> Result<Vec<u8>, CodecError> {
        if !binary {
            return codec::encode(rpc, false);
        }
        let mut out = codec::extend_binary(&rpc.vote, vec![BINARY])?;
        out = codec::extend_binary(&rpc.prev_log_id, out)?;
        out = codec::extend_binary(&rpc.entries.len(), out)?;
        {
            // a panic while holding it left at worst entries keyed by their log ids
            let mut cache = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if cache.vote != Some(rpc.vote) {
                cache.vote = Some(rpc.vote);
                cache.by_index.clear();
            }
            for e in &rpc.entries {
                match cache.by_index.get(&e.log_id.index) {
                    Some((id, bytes)) if *id == e.log_id => out.extend_from_slice(bytes),
                    _ => {
                        let bytes = codec::extend_binary(e, Vec::new())?;
                        #[cfg(test)]
                        self.encoded
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        out.extend_from_slice(&bytes);
                        cache.by_index.insert(e.log_id.index, (e.log_id, bytes));
                    }
                }
            }
            while cache.by_index.len() > KEPT {
                cache.by_index.pop_first();
            }
        }
        codec::extend_binary(&rpc.leader_commit, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Batch, Member};
    use crate::Command;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, Membership};

    fn id(term: u64, i: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), i)
    }

    fn entry(term: u64, i: u64) -> Entry<TypeConfig> {
        let payload = match i % 3 {
            0 => EntryPayload::Blank,
            1 => EntryPayload::Normal(Batch::new(vec![Command::Heartbeat {
                member: format!("prov{i}"),
                at_ms: i * 1000,
            }])),
            _ => EntryPayload::Membership(Membership::new(
                vec![[1u64, 2, 3].into_iter().collect()],
                [(1u64, Member::default())]
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )),
        };
        Entry {
            log_id: id(term, i),
            payload,
        }
    }

    fn append(term: u64, from: u64, to: u64, commit: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(term, 1),
            prev_log_id: (from > 1).then(|| id(term, from - 1)),
            entries: (from..=to).map(|i| entry(term, i)).collect(),
            leader_commit: (commit > 0).then(|| id(term, commit)),
        }
    }

    #[test]
    fn every_entry_is_encoded_once_and_every_append_as_a_whole_would_be() {
        let cache = AppendCache::default();
        let count = || cache.encoded.load(std::sync::atomic::Ordering::Relaxed);
        // followers at different points: overlapping ranges, a heartbeat, a new term
        let appends = [
            (append(2, 1, 4, 0), 4),
            (append(2, 1, 4, 0), 4),
            (append(2, 3, 6, 4), 6),
            (append(2, 5, 6, 6), 6),
            (append(2, 7, 6, 6), 6),
            (append(3, 6, 7, 6), 8),
        ];
        for (rpc, encoded_so_far) in appends {
            let bytes = cache.encode(&rpc, true).unwrap_or_default();
            assert_eq!(
                bytes,
                codec::encode(&rpc, true).unwrap_or_default(),
                "{rpc:?}"
            );
            let back: AppendEntriesRequest<TypeConfig> =
                codec::decode(&bytes).unwrap_or_else(|e| panic!("decode: {e}"));
            assert_eq!(back.entries.len(), rpc.entries.len());
            assert_eq!(count(), encoded_so_far, "{rpc:?}");
        }
        // JSON goes whole
        let rpc = append(3, 6, 7, 6);
        assert_eq!(
            cache.encode(&rpc, false).unwrap_or_default(),
            codec::encode(&rpc, false).unwrap_or_default()
        );
    }
}
