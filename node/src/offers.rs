//! One discovery for the cluster: the leader discovers and offers each member its servers.
//!
//! Every waiting server answers every broadcast discovery, so with each member discovering
//! on its own a server answers once per member and every member takes in (and passes over)
//! the replies of the other members' servers: with five members four fifths of what a
//! member's discovery brings in is somebody else's, and it all comes in one burst at the
//! start of a round. Here only the leader sends broadcast discovery; it queues its own
//! servers and sends every other owner the identities it found for it, batched
//! ([`Outbox`], [`raft::offer`]). The other members take those batches as they would
//! discovery replies ([`Inbox::take`]): each name is checked and queued only if this member
//! owns it by its own view of the ownership epoch.
//!
//! A member leaves its round to the leader only while the leader's offers keep coming
//! (each of its rounds sends every member at least a start and an end, empty or not); a
//! member that has heard nothing from the leader for an interval (a leader of an older
//! version, a leader short of CPU, no leader) discovers on its own as before. Lifecycle
//! events are still every member's own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft::member::RaftMember;
use raft::network::PeerError;
use raft::offer::{OfferBatch, OfferTaken, MAX_OFFER_IDENTITIES};
use tokio::sync::mpsc;

use crate::context::Services;
use crate::metrics::Metrics;
use crate::work::{Source, WorkQueue};

/// How often the leader sends what it has gathered for each member (a batch also goes out
/// as soon as it is full).
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Identities per batch: large enough that a round of thousands of servers is a few calls,
/// small enough that a member starts on its first servers within a flush.
const BATCH: usize = 512;
/// How long past `interval + discovery_timeout` a member waits for the leader's next round
/// before it discovers on its own.
pub const LEADER_GRACE: Duration = Duration::from_secs(5);

/// What the leader's discovery task tells the outbox.
enum Out {
    /// A round begins: `to` are the members to tell (all but the leader).
    Start { round: u64, to: Vec<String> },
    /// `identity` was found for `owner`.
    Found { owner: String, identity: String },
    /// The round's window closed.
    Done { round: u64, to: Vec<String> },
}

/// The leader's side: gathers found identities by owner and sends them in batches.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Out>,
    round: Arc<AtomicU64>,
}

/// Where the outbox's batches go: a member's name and the batch (the Raft port in a member,
/// a recorder in tests).
pub type SendFn = Arc<
    dyn Fn(String, OfferBatch) -> futures::future::BoxFuture<'static, Result<OfferTaken, PeerError>>
        + std::marker::Send
        + Sync,
>;

impl Outbox {
    /// Starts the task that sends batches through `send`.
    pub fn start(send: SendFn, metrics: Arc<Metrics>) -> Outbox {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_outbox(rx, send, metrics));
        Outbox {
            tx,
            round: Arc::default(),
        }
    }

    /// Sends through `member`'s Raft port.
    pub fn through(member: Arc<RaftMember>, metrics: Arc<Metrics>) -> Outbox {
        let send: SendFn = Arc::new(move |to: String, batch: OfferBatch| {
            let member = member.clone();
            Box::pin(async move { member.offer(&to, &batch).await })
        });
        Outbox::start(send, metrics)
    }

    /// A new round, told to `to`; returns its number.
    pub fn start_round(&self, to: Vec<String>) -> u64 {
        let round = self.round.fetch_add(1, Ordering::Relaxed) + 1;
        let _ = self.tx.send(Out::Start { round, to });
        round
    }

    /// `identity` was found for `owner` (another member).
    pub fn found(&self, owner: &str, identity: &str) {
        let _ = self.tx.send(Out::Found {
            owner: owner.to_string(),
            identity: identity.to_string(),
        });
    }

    /// The round's window closed; what it found is sent with the end marker.
    pub fn end_round(&self, round: u64, to: Vec<String>) {
        let _ = self.tx.send(Out::Done { round, to });
    }
}

/// Gathers by owner; a batch goes when full, [`FLUSH_EVERY`] after the first identity gathered
/// since the last flush, or with a round's markers.
async fn run_outbox(mut rx: mpsc::UnboundedReceiver<Out>, send: SendFn, metrics: Arc<Metrics>) {
    let mut pending: HashMap<String, Vec<String>> = HashMap::new();
    let mut round = 0;
    // armed by the first identity gathered after a flush: an idle outbox (every member but
    // the leader, and the leader between rounds) sleeps instead of waking 50 times a second
    let mut flush_at: Option<tokio::time::Instant> = None;
    // a member that cannot take offers (an older build, or one that is down) fails every
    // batch of a round: logged once a round per member, every batch counted
    let logged: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let post = |to: String, batch: OfferBatch| {
        let (send, metrics, logged) = (send.clone(), metrics.clone(), logged.clone());
        let (n, round) = (batch.identities.len() as u64, batch.round);
        // each call on its own: a member that is slow to answer holds up nobody else's
        tokio::spawn(async move {
            let result = match send(to.clone(), batch).await {
                Ok(_) => "sent",
                Err(e) => {
                    let first = logged
                        .lock()
                        .map(|mut l| l.insert(to.clone(), round) != Some(round))
                        .unwrap_or(true);
                    if first {
                        tracing::warn!(member = %to, round, error = %e, "could not offer servers");
                    }
                    "failed"
                }
            };
            metrics.offers(result, n);
        });
    };
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                None => return,
                Some(Out::Start { round: r, to }) => {
                    round = r;
                    for member in to {
                        let identities = pending.remove(&member).unwrap_or_default();
                        post(member, OfferBatch { round, identities, done: false });
                    }
                }
                Some(Out::Found { owner, identity }) => {
                    flush_at.get_or_insert_with(|| tokio::time::Instant::now() + FLUSH_EVERY);
                    let batch = pending.entry(owner.clone()).or_default();
                    batch.push(identity);
                    if batch.len() >= BATCH.min(MAX_OFFER_IDENTITIES) {
                        let identities = std::mem::take(batch);
                        post(owner, OfferBatch { round, identities, done: false });
                    }
                }
                Some(Out::Done { round: r, to }) => {
                    for member in to {
                        let identities = pending.remove(&member).unwrap_or_default();
                        post(member, OfferBatch { round: r, identities, done: true });
                    }
                }
            },
            _ = sleep_until(flush_at), if flush_at.is_some() => {
                flush_at = None;
                for (member, identities) in pending.drain() {
                    if !identities.is_empty() {
                        post(member, OfferBatch { round, identities, done: false });
                    }
                }
            }
        }
    }
}

/// Resolves at `at`; never when there is nothing to wait for (the `select!` arm is disabled
/// then anyway).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A member's side: takes the leader's batches and remembers when it last heard from it.
pub struct Inbox {
    last_from_leader: Mutex<Option<Instant>>,
    /// A round this member must run itself (after a restart, for the servers it enrolled).
    forced: AtomicBool,
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox {
            last_from_leader: Mutex::new(None),
            forced: AtomicBool::new(false),
        }
    }
}

impl Inbox {
    /// Queues what `batch` offers that this member owns. `from_leader`: the sender is the
    /// leader this member knows (only then does the batch say the leader is discovering).
    pub fn take(
        &self,
        svc: &Services,
        queue: &WorkQueue,
        from_leader: bool,
        batch: &OfferBatch,
    ) -> OfferTaken {
        self.take_with(
            &svc.metrics,
            from_leader,
            batch,
            |identity| queue.offer(identity, Source::Discovery),
            |identity| svc.owns(identity),
        )
    }

    /// [`Inbox::take`] with the queue's `offer` and the shard's `owns` given.
    fn take_with(
        &self,
        metrics: &Metrics,
        from_leader: bool,
        batch: &OfferBatch,
        mut offer: impl FnMut(&str) -> bool,
        owns: impl Fn(&str) -> bool,
    ) -> OfferTaken {
        if from_leader {
            if let Ok(mut last) = self.last_from_leader.lock() {
                *last = Some(Instant::now());
            }
        }
        let mut taken = OfferTaken::default();
        for identity in &batch.identities {
            if !proto::subject::is_valid_identity(identity) {
                metrics.bad_message("offer");
                taken.refused += 1;
                continue;
            }
            if offer(identity) {
                metrics.inc(&metrics.discovered);
                taken.queued += 1;
            } else if !owns(identity) {
                taken.refused += 1;
            }
        }
        if taken.refused > 0 {
            tracing::debug!(
                round = batch.round,
                refused = taken.refused,
                "offered servers this member does not own"
            );
        }
        metrics.offers("queued", taken.queued.into());
        metrics.offers("refused", taken.refused.into());
        taken
    }

    /// True when the leader's offers came within `within`: its discovery covers this member.
    pub fn leader_discovers(&self, within: Duration) -> bool {
        self.last_from_leader
            .lock()
            .ok()
            .and_then(|l| *l)
            .is_some_and(|t| t.elapsed() <= within)
    }

    /// Makes the next round this member's own, whatever the leader does.
    pub fn force_own_round(&self) {
        self.forced.store(true, Ordering::SeqCst);
    }

    /// Takes the forced round, if one was asked for.
    pub fn take_forced(&self) -> bool {
        self.forced.swap(false, Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Sent = Arc<Mutex<Vec<(String, OfferBatch)>>>;

    fn recorder() -> (SendFn, Sent) {
        let sent: Sent = Arc::default();
        let s = sent.clone();
        let send: SendFn = Arc::new(move |to: String, batch: OfferBatch| {
            s.lock().unwrap().push((to, batch));
            Box::pin(async { Ok(OfferTaken::default()) })
        });
        (send, sent)
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// A round tells every member it starts and ends, with what was found for each, in
    /// batches no larger than [`BATCH`].
    #[tokio::test(start_paused = true)]
    async fn a_round_reaches_every_member_in_batches() {
        let (send, sent) = recorder();
        let out = Outbox::start(send, Arc::new(Metrics::new("t")));
        let to = vec!["b".to_string(), "c".to_string()];
        let round = out.start_round(to.clone());
        for i in 0..(BATCH + 3) {
            out.found("b", &format!("n{i}.example"));
        }
        out.found("c", "m.example");
        settle().await;
        // the full batch went at once; the rest waits for the tick or the end
        {
            let s = sent.lock().unwrap();
            let starts: Vec<_> = s.iter().filter(|(_, b)| b.identities.is_empty()).collect();
            assert_eq!(starts.len(), 2, "a start for each member: {s:?}");
            let full: Vec<_> = s.iter().filter(|(_, b)| !b.identities.is_empty()).collect();
            assert_eq!(full.len(), 1);
            assert_eq!(full[0].0, "b");
            assert_eq!(full[0].1.identities.len(), BATCH);
        }
        out.end_round(round, to);
        settle().await;
        let s = sent.lock().unwrap();
        let ends: Vec<_> = s.iter().filter(|(_, b)| b.done).collect();
        assert_eq!(ends.len(), 2, "an end for each member");
        let of = |m: &str| -> Vec<String> {
            s.iter()
                .filter(|(t, _)| t == m)
                .flat_map(|(_, b)| b.identities.clone())
                .collect()
        };
        assert_eq!(of("b").len(), BATCH + 3);
        assert_eq!(of("c"), vec!["m.example".to_string()]);
        assert!(s.iter().all(|(_, b)| b.round == round));
    }

    /// Finds after the window closed (a late reply) go out on the next tick.
    #[tokio::test(start_paused = true)]
    async fn a_late_find_goes_out_on_the_tick() {
        let (send, sent) = recorder();
        let out = Outbox::start(send, Arc::new(Metrics::new("t")));
        let round = out.start_round(vec!["b".into()]);
        out.end_round(round, vec!["b".into()]);
        out.found("b", "late.example");
        settle().await;
        tokio::time::sleep(FLUSH_EVERY * 2).await;
        settle().await;
        let s = sent.lock().unwrap();
        assert!(
            s.iter()
                .any(|(t, b)| t == "b" && b.identities == vec!["late.example".to_string()]),
            "{s:?}"
        );
    }

    /// A member that takes no offers fails each batch: every one is counted.
    #[tokio::test(start_paused = true)]
    async fn failed_offers_are_counted() {
        let send: SendFn =
            Arc::new(|_: String, _: OfferBatch| Box::pin(async { Err(PeerError::NoAnswer) }));
        let metrics = Arc::new(Metrics::new("t"));
        let out = Outbox::start(send, metrics.clone());
        let round = out.start_round(vec!["old".into()]);
        for i in 0..(BATCH + 1) {
            out.found("old", &format!("n{i}.example"));
        }
        out.end_round(round, vec!["old".into()]);
        settle().await;
        let text = metrics.render();
        let line = format!(
            "choria_provisioner_discovery_offers{{result=\"failed\",site=\"t\"}} {}",
            BATCH + 1
        );
        assert!(text.contains(&line), "{text}");
    }

    /// Names that are not host names are refused and counted, as are servers this member
    /// does not own; only the rest reach the queue. Only the leader's batch says it discovers.
    #[test]
    fn an_offer_of_garbage_queues_nothing_of_it() {
        let inbox = Inbox::default();
        let metrics = Metrics::new("t");
        let batch = OfferBatch {
            round: 1,
            identities: vec![
                "".into(),
                "bad id".into(),
                "a/b.example".into(),
                "x".repeat(300),
                "n\u{0}.example".into(),
                "other.example".into(),
                "mine.example".into(),
            ],
            done: false,
        };
        let mut queued = Vec::new();
        let taken = inbox.take_with(
            &metrics,
            false,
            &batch,
            |id| {
                let mine = id.starts_with("mine");
                if mine {
                    queued.push(id.to_string());
                }
                mine
            },
            |id| id.starts_with("mine"),
        );
        assert_eq!(queued, ["mine.example"]);
        assert_eq!(
            taken,
            OfferTaken {
                queued: 1,
                refused: 6
            }
        );
        let text = metrics.render();
        assert!(
            text.contains("choria_provisioner_bad_messages{kind=\"offer\",site=\"t\"} 5"),
            "{text}"
        );
        assert!(
            !inbox.leader_discovers(Duration::from_secs(60)),
            "not from the leader"
        );
    }

    #[test]
    fn the_leader_discovers_while_its_offers_keep_coming() {
        let inbox = Inbox::default();
        assert!(!inbox.leader_discovers(Duration::from_secs(60)));
        *inbox.last_from_leader.lock().unwrap() = Some(Instant::now());
        assert!(inbox.leader_discovers(Duration::from_secs(60)));
        *inbox.last_from_leader.lock().unwrap() =
            Instant::now().checked_sub(Duration::from_secs(61));
        assert!(!inbox.leader_discovers(Duration::from_secs(60)));
        assert!(!inbox.take_forced());
        inbox.force_own_round();
        assert!(inbox.take_forced());
        assert!(!inbox.take_forced(), "once");
    }
}
