//! A cluster member's heartbeat: proposed to the ledger every [`HEARTBEAT_EVERY`], so its
//! peers count it live; once committed, it may go on driving servers for a while (the fence,
//! see [`crate::flows`]).

use std::time::Duration;

use raft::{Applied, Command, LedgerError};

use crate::clock::now_ms;
use crate::context::Services;

/// How often a member says it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// When the last heartbeat went out.
#[derive(Default)]
pub(super) struct Heartbeat {
    last_beat: Option<tokio::time::Instant>,
}

impl Heartbeat {
    /// Proposes a heartbeat when one is due, in the background: a heartbeat must not hold up
    /// the live-set refresh.
    pub fn beat_when_due(&mut self, svc: &Services) {
        if self
            .last_beat
            .is_some_and(|t| t.elapsed() < HEARTBEAT_EVERY)
        {
            return;
        }
        let ledger = svc.ledger.clone();
        let beat_at = now_ms();
        let cmd = Command::Heartbeat {
            member: svc.member.clone(),
            at_ms: beat_at,
        };
        let flows = svc.flows.clone();
        tokio::spawn(async move {
            match ledger.propose(cmd).await {
                // committed: this member still drives servers for a while (the fence)
                Ok(Applied::Ok) => flows.heartbeat_committed(beat_at),
                Ok(Applied::Rejected(r)) => {
                    // removed from the group: its peers stop counting it live and
                    // take its servers; it keeps running for an operator to stop
                    tracing::warn!(reason = %r, "heartbeat refused; taking no servers");
                }
                // the leader refuses a removed member's commands outright
                Err(LedgerError::Refused(r)) => {
                    let reason = r.message();
                    tracing::warn!(reason, "heartbeat refused; taking no servers");
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat not committed"),
            }
        });
        self.last_beat = Some(tokio::time::Instant::now());
    }
}
