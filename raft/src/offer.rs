//! Discovery offers: the leader tells a member which waiting servers its discovery found for
//! it.
//!
//! Every waiting server answers every broadcast discovery, so when each of N members discovers
//! on its own every server answers N times and every member receives (and passes over) the
//! replies of the N-1 others' servers. In a cluster the leader discovers and sends each owner
//! the identities it found for it, in batches over the members' own mutually authenticated
//! port; a batch carries nothing a discovery reply would not (a name to ask for inventory),
//! so the receiver trusts it no further: it checks each name and its own ownership before it
//! queues anything. This module is only the message and its bounds; what a member does with
//! one is the provisioning pipeline's business (the hook set with
//! [`RaftMember::on_offer`](crate::member::RaftMember::on_offer)).

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// Most identities in one batch: a whole batch of the longest host names stays near 500 KiB.
pub const MAX_OFFER_IDENTITIES: usize = 2048;

/// How long the leader waits for a member to take a batch.
pub const OFFER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Servers one discovery round of the leader found for the receiving member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferBatch {
    /// The sender's discovery round (counts up from 1 on each leader; tells a round apart
    /// from the next in logs).
    pub round: u64,
    /// Host names, as the servers' discovery replies gave them.
    pub identities: Vec<String>,
    /// The round's window closed; nothing more of it follows but late replies.
    pub done: bool,
}

/// What the receiver did with a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferTaken {
    /// Identities queued (new to the receiver's work queue).
    pub queued: u32,
    /// Identities refused (not a host name, or not the receiver's to work).
    pub refused: u32,
}

/// Told of each batch a member sends: who sent it (its member id; `None` from a plaintext
/// caller, which names nobody) and the batch.
pub type OfferFn = std::sync::Arc<dyn Fn(Option<NodeId>, OfferBatch) -> OfferTaken + Send + Sync>;

/// Why a member does not take a batch (sent back as a [`PeerRefusal`](crate::network::PeerRefusal)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferRefusal {
    #[error("an offer of {count} identities is more than {MAX_OFFER_IDENTITIES}")]
    TooLarge { count: usize },
    /// Its pipeline has not set what takes offers yet.
    #[error("this member takes no offers yet")]
    NotTaking,
}

/// Why a batch is refused before anything of it is looked at.
pub fn check(batch: &OfferBatch) -> Result<(), OfferRefusal> {
    if batch.identities.len() > MAX_OFFER_IDENTITIES {
        return Err(OfferRefusal::TooLarge {
            count: batch.identities.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_over_the_bound_is_refused_whole() {
        let mut b = OfferBatch {
            round: 1,
            identities: vec!["n.example".into(); MAX_OFFER_IDENTITIES],
            done: false,
        };
        assert!(check(&b).is_ok());
        b.identities.push("one.more".into());
        let e = check(&b).unwrap_err().to_string();
        assert!(e.contains("2049"), "{e}");
    }
}
