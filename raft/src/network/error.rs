//! How a call to a peer fails: [`PeerError`] on the calling side, keeping the status or
//! transport error it came from, and [`PeerRefusal`], the refusal a peer sends back, in the
//! form earlier builds sent it.

use std::time::Duration;

use serde::Serialize;
use tonic::Status;

use crate::codec;

/// A peer's refusal as it travels between members: the `Err` of a join, offer or borrow
/// reply. Serialized as the bare string earlier builds sent (their replies were
/// `Result<T, String>`), in JSON and binary alike, so members of two builds side by side (a
/// rolling upgrade) read each other's replies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, thiserror::Error)]
#[serde(transparent)]
#[error("{0}")]
pub struct PeerRefusal(String);

impl PeerRefusal {
    /// The refusal `why` says, for the wire.
    pub fn of(why: &(dyn std::error::Error + '_)) -> PeerRefusal {
        PeerRefusal(why.to_string())
    }

    /// The peer's reason, as it gave it.
    pub fn reason(&self) -> &str {
        &self.0
    }
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The peer refused this member the call (see [`authz`](crate::authz)): trying again does
    /// not help until an operator changes the membership.
    #[error("refused: {}", .status.message())]
    Refused {
        #[source]
        status: Box<Status>,
    },
    /// The peer answered, declining (not the leader, takes no offers yet...): worth another
    /// try, maybe elsewhere.
    #[error("{0}")]
    Declined(#[source] PeerRefusal),
    /// A transport failure or an error status: worth another try.
    #[error("{status}")]
    Unavailable {
        #[source]
        status: Box<Status>,
    },
    /// The peer is not reachable at its address (the channel could not be set up).
    #[error("{0}")]
    Connect(#[source] tonic::transport::Error),
    /// No answer within `limit`: a peer behind a partition never answers, not even with an
    /// error.
    #[error("no answer within {limit:?}")]
    Timeout { limit: Duration },
    /// No answer in time to a status query.
    #[error("no answer")]
    NoAnswer,
    /// The request could not be encoded.
    #[error("encode: {0}")]
    Encode(#[source] codec::CodecError),
    /// The answer does not decode.
    #[error("decode: {0}")]
    Decode(#[source] codec::CodecError),
    /// The member asked for is not in the group's membership.
    #[error("{name} is not a member of the group")]
    NotAMember { name: String },
}

impl From<Status> for PeerError {
    fn from(s: Status) -> Self {
        match s.code() {
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => PeerError::Refused {
                status: Box::new(s),
            },
            _ => PeerError::Unavailable {
                status: Box::new(s),
            },
        }
    }
}

impl From<PeerRefusal> for PeerError {
    fn from(r: PeerRefusal) -> Self {
        PeerError::Declined(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::borrow::BorrowReply;
    use crate::offer::OfferTaken;
    use serde::de::DeserializeOwned;

    /// What earlier builds sent and read: `Result<T, String>`. The replies of this build must
    /// be the same bytes, in both wire formats, and earlier builds' bytes must read as ours.
    fn same_on_the_wire<T>(ok: T)
    where
        T: Serialize + DeserializeOwned + Clone + PartialEq + std::fmt::Debug,
    {
        let why = "not the leader; the leader is Some(2)";
        let olds: [Result<T, String>; 2] = [Ok(ok.clone()), Err(why.to_string())];
        let news: [Result<T, PeerRefusal>; 2] = [Ok(ok), Err(PeerRefusal(why.to_string()))];
        for (old, new) in olds.iter().zip(&news) {
            for binary in [false, true] {
                let old_bytes = codec::encode(old, binary).unwrap();
                let new_bytes = codec::encode(new, binary).unwrap();
                assert_eq!(old_bytes, new_bytes, "binary: {binary}");
                let read: Result<T, PeerRefusal> = codec::decode(&old_bytes).unwrap();
                assert_eq!(&read, new);
                let back: Result<T, String> = codec::decode(&new_bytes).unwrap();
                assert_eq!(&back, old);
            }
        }
    }

    #[test]
    fn refusals_travel_as_the_strings_earlier_builds_sent() {
        same_on_the_wire(());
        same_on_the_wire(OfferTaken {
            queued: 3,
            refused: 1,
        });
        same_on_the_wire(BorrowReply {
            lent: vec![("n1.example.net".into(), 7)],
            queued: 2,
        });
        let refusal = PeerRefusal::of(&crate::borrow::BorrowRefusal::NotLending);
        assert_eq!(refusal.reason(), "this member lends nothing yet");
        let e = PeerError::from(refusal);
        assert_eq!(e.to_string(), "this member lends nothing yet");
    }

    #[test]
    fn peer_errors_keep_their_status_and_say_what_happened() {
        use std::error::Error as _;
        let e = PeerError::from(Status::permission_denied(
            "raft join: prov9 is not a member",
        ));
        assert!(matches!(e, PeerError::Refused { .. }));
        assert_eq!(e.to_string(), "refused: raft join: prov9 is not a member");
        assert!(e.source().is_some());
        let e = PeerError::from(Status::unavailable("connection refused"));
        assert!(matches!(e, PeerError::Unavailable { .. }));
        assert!(e.to_string().contains("connection refused"), "{e}");
        let e = PeerError::Timeout {
            limit: Duration::from_secs(2),
        };
        assert_eq!(e.to_string(), "no answer within 2s");
    }
}
