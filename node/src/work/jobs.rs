//! The order queued servers start in: servers lent to this member before its own.
//!
//! A lent server must be started by its loan's start-by time (10 s after the loan) or not at
//! all by this member; its own servers have no such limit. Both used to share one first-in,
//! first-out channel, so a member that borrowed while its own discovery was still filling its
//! queue put the loan behind a thousand of its own servers: in a capped 5-member run 67 lent
//! servers passed their start-by time in the queue and waited for their lender to take them
//! back a minute later, at the end of a fleet that had otherwise finished.

use tokio::sync::mpsc;

/// Where the queue puts servers to start.
pub(super) struct JobSender {
    own: mpsc::UnboundedSender<String>,
    lent: mpsc::UnboundedSender<String>,
}

/// Where the dispatcher takes them from.
pub(super) struct JobReceiver {
    own: mpsc::UnboundedReceiver<String>,
    lent: mpsc::UnboundedReceiver<String>,
}

pub(super) fn channel() -> (JobSender, JobReceiver) {
    let (own_tx, own_rx) = mpsc::unbounded_channel();
    let (lent_tx, lent_rx) = mpsc::unbounded_channel();
    (
        JobSender {
            own: own_tx,
            lent: lent_tx,
        },
        JobReceiver {
            own: own_rx,
            lent: lent_rx,
        },
    )
}

impl JobSender {
    /// Queues `identity` to start; `lent` when another member lent it to this one. False once
    /// the dispatcher is gone.
    pub fn send(&self, identity: String, lent: bool) -> bool {
        let tx = if lent { &self.lent } else { &self.own };
        tx.send(identity).is_ok()
    }
}

impl JobReceiver {
    /// The next server to start: a lent one while any is queued, else the oldest of this
    /// member's own. `None` once the queue is gone.
    pub async fn recv(&mut self) -> Option<String> {
        tokio::select! {
            biased;
            Some(identity) = self.lent.recv() => Some(identity),
            identity = self.own.recv() => identity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lent_servers_start_before_own_ones_queued_earlier() {
        let (tx, mut rx) = channel();
        for id in ["own1", "own2"] {
            assert!(tx.send(id.into(), false));
        }
        for id in ["lent1", "lent2"] {
            assert!(tx.send(id.into(), true));
        }
        assert!(tx.send("own3".into(), false));
        let mut order = Vec::new();
        for _ in 0..5 {
            order.push(rx.recv().await.unwrap_or_default());
        }
        assert_eq!(order, ["lent1", "lent2", "own1", "own2", "own3"]);
        drop(tx);
        assert_eq!(rx.recv().await, None);
    }
}
