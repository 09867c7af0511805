//! Borrowing at the end of a fleet: a member that ran out of servers asks another for some it
//! owns and has not started (ledger rules 7).
//!
//! Shares of a fleet are fixed by the ownership epoch, so the members finish at different
//! times: the one with the most servers, or the least CPU, keeps the fleet waiting while the
//! others idle. A member whose queue ran dry asks its peers over the members' own mutually
//! authenticated port; a peer with servers to spare picks some it has not started, commits a
//! `Lend` naming the asker (see [`crate::ownership::Loan`]) and answers with what it lent. The
//! asker works them only once its own replica shows the loan. This module is only the message
//! and its bounds; what a member lends is the provisioning pipeline's business (the hook set
//! with [`RaftMember::on_borrow`](crate::member::RaftMember::on_borrow)).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ownership::MAX_LEND;

/// How long the asker waits for an answer (the lender commits a `Lend` first).
pub const BORROW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A member with room for `want` more servers asks for some.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BorrowRequest {
    /// The asker's member name (checked against its certificate where callers have one).
    pub member: String,
    pub want: u32,
}

/// What the asked member lent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BorrowReply {
    /// Lent to the asker by a committed `Lend`: each server and when the lender last saw it
    /// waiting (Unix ms).
    pub lent: Vec<(String, u64)>,
    /// Servers the lender still has queued, besides what it lent: whether asking again
    /// could get more.
    pub queued: u32,
}

/// Answers a borrow request: the asker (by its certificate, else as it names itself) and
/// what it asked.
pub type BorrowFn = Arc<
    dyn Fn(String, BorrowRequest) -> Pin<Box<dyn Future<Output = BorrowReply> + Send>>
        + Send
        + Sync,
>;

/// Why a member lends nothing to an asker (sent back as a
/// [`PeerRefusal`](crate::network::PeerRefusal)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BorrowRefusal {
    #[error("asks for {want} servers (1 to {MAX_LEND})")]
    Want { want: u32 },
    #[error("names no member")]
    NoMember,
    /// Its pipeline has not set what answers borrow requests yet.
    #[error("this member lends nothing yet")]
    NotLending,
}

/// Why a request is refused before anything of it is looked at.
pub fn check(req: &BorrowRequest) -> Result<(), BorrowRefusal> {
    if req.want == 0 || req.want as usize > MAX_LEND {
        return Err(BorrowRefusal::Want { want: req.want });
    }
    if req.member.is_empty() || req.member.len() > 256 {
        return Err(BorrowRefusal::NoMember);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_out_of_bounds_is_refused() {
        let ok = BorrowRequest {
            member: "prov2".into(),
            want: 64,
        };
        assert!(check(&ok).is_ok());
        for bad in [
            BorrowRequest {
                want: 0,
                ..ok.clone()
            },
            BorrowRequest {
                want: MAX_LEND as u32 + 1,
                ..ok.clone()
            },
            BorrowRequest {
                member: String::new(),
                ..ok.clone()
            },
        ] {
            assert!(check(&bad).is_err(), "{bad:?}");
        }
    }
}
