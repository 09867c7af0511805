//! What a member's peers ask of it and it of them, beyond Raft: the hooks the application
//! sets (refused calls, discovery offers, borrow requests) and the offers and borrow requests
//! it sends.

use super::RaftMember;
use crate::network::PeerError;

impl RaftMember {
    /// Sets what is told of calls refused on the Raft port (once): a metric.
    pub fn on_refused(&self, f: crate::admin::RefusedFn) {
        let _ = self.ctx.on_refused.set(f);
    }

    /// Sets what takes the leader's discovery offers (once).
    pub fn on_offer(&self, f: crate::offer::OfferFn) {
        let _ = self.ctx.on_offer.set(f);
    }

    /// Sets what answers other members' borrow requests (once).
    pub fn on_borrow(&self, f: crate::borrow::BorrowFn) {
        let _ = self.ctx.on_borrow.set(f);
    }

    /// Asks the member named `name` to lend this one up to `want` servers.
    pub async fn borrow(
        &self,
        name: &str,
        want: u32,
    ) -> Result<crate::borrow::BorrowReply, PeerError> {
        let peer = self
            .peer_named(name)
            .ok_or_else(|| PeerError::NotAMember { name: name.into() })?;
        let req = crate::borrow::BorrowRequest {
            member: self.ctx.me.name.clone(),
            want,
        };
        self.ctx.network.borrow(&peer, &req).await
    }

    /// The member named `name` in the group's membership.
    fn peer_named(&self, name: &str) -> Option<crate::types::Member> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let found = m
            .membership_config
            .membership()
            .nodes()
            .map(|(_, n)| n)
            .find(|n| n.name == name)
            .cloned();
        found
    }

    /// Sends `batch` to the member named `name` (by the group's membership); its answer says
    /// what it queued.
    pub async fn offer(
        &self,
        name: &str,
        batch: &crate::offer::OfferBatch,
    ) -> Result<crate::offer::OfferTaken, PeerError> {
        let Some(peer) = self.peer_named(name) else {
            return Err(PeerError::NotAMember { name: name.into() });
        };
        self.ctx.network.offer(&peer, batch).await
    }
}
