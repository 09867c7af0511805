//! The order queued servers start in: servers lent to this member, then servers whose flow
//! this member's fence interrupted, then its own in the order found.
//!
//! A lent server must be started by its loan's start-by time (10 s after the loan) or not at
//! all by this member; its own servers have no such limit. Both used to share one first-in,
//! first-out channel, so a member that borrowed while its own discovery was still filling its
//! queue put the loan behind a thousand of its own servers: in a capped 5-member run 67 lent
//! servers passed their start-by time in the queue and waited for their lender to take them
//! back a minute later, at the end of a fleet that had otherwise finished. An interrupted
//! flow's server went to the back the same way and waited 40 s to two minutes (the slowest
//! percent of capped runs); it had been next once already.

use tokio::sync::mpsc;

/// Which of the queue's lanes a server waits in, first to last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// Lent by another member: must start by the loan's start-by time.
    Lent,
    /// Its flow was interrupted by this member's fence: it was next once already.
    Resumed,
    /// This member's own, in the order found.
    Own,
}

/// Where the queue puts servers to start.
pub(super) struct JobSender {
    own: mpsc::UnboundedSender<String>,
    resumed: mpsc::UnboundedSender<String>,
    lent: mpsc::UnboundedSender<String>,
}

/// Where the dispatcher takes them from.
pub(super) struct JobReceiver {
    own: mpsc::UnboundedReceiver<String>,
    resumed: mpsc::UnboundedReceiver<String>,
    lent: mpsc::UnboundedReceiver<String>,
}

pub(super) fn channel() -> (JobSender, JobReceiver) {
    let (own_tx, own_rx) = mpsc::unbounded_channel();
    let (resumed_tx, resumed_rx) = mpsc::unbounded_channel();
    let (lent_tx, lent_rx) = mpsc::unbounded_channel();
    (
        JobSender {
            own: own_tx,
            resumed: resumed_tx,
            lent: lent_tx,
        },
        JobReceiver {
            own: own_rx,
            resumed: resumed_rx,
            lent: lent_rx,
        },
    )
}

impl JobSender {
    /// Queues `identity` to start in `lane`. False once the dispatcher is gone.
    pub fn send(&self, identity: String, lane: Lane) -> bool {
        let tx = match lane {
            Lane::Lent => &self.lent,
            Lane::Resumed => &self.resumed,
            Lane::Own => &self.own,
        };
        tx.send(identity).is_ok()
    }
}

impl JobReceiver {
    /// The next server to start: a lent one while any is queued, else a resumed one, else
    /// the oldest of this member's own. `None` once the queue is gone.
    pub async fn recv(&mut self) -> Option<String> {
        tokio::select! {
            biased;
            Some(identity) = self.lent.recv() => Some(identity),
            Some(identity) = self.resumed.recv() => Some(identity),
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
            assert!(tx.send(id.into(), Lane::Own));
        }
        assert!(tx.send("resumed1".into(), Lane::Resumed));
        for id in ["lent1", "lent2"] {
            assert!(tx.send(id.into(), Lane::Lent));
        }
        assert!(tx.send("own3".into(), Lane::Own));
        assert!(tx.send("resumed2".into(), Lane::Resumed));
        let mut order = Vec::new();
        for _ in 0..7 {
            order.push(rx.recv().await.unwrap_or_default());
        }
        assert_eq!(
            order,
            ["lent1", "lent2", "resumed1", "resumed2", "own1", "own2", "own3"]
        );
        drop(tx);
        assert_eq!(rx.recv().await, None);
    }
}
