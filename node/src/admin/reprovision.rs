//! Reprovisioning selected servers: for each, record the request in the ledger (which makes
//! the server claimable again), send `choria_provision#reprovision` with the token in the
//! collective provisioned servers answer in, and record how it went. Servers are asked
//! `batch_size` at a time and no faster than `rate_per_second`; each result is streamed to
//! the caller as it comes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use proto::action::Reprovision;
use proto::agents::{MessageReply, TokenRequest};
use proto::grpc::admin as pb;
use raft::{Applied, Command, Rejection};
use tokio::sync::mpsc;
use tonic::Status;

use super::select::Selector;
use super::server::AdminContext;
use crate::call::Agents;
use crate::clock::now_ms;
use crate::rpc::RpcError;

/// Checks the request, picks the servers and starts the run; progress arrives on the
/// returned channel, which closes when every server has an answer.
pub async fn start(
    ctx: Arc<AdminContext>,
    req: pb::ReprovisionRequest,
    actor: String,
) -> Result<mpsc::Receiver<pb::ReprovisionProgress>, Status> {
    let sel = Selector::parse(req.selector.clone(), true)?;
    let (batch, rate, timeout) = reprovision_limits(&req)?;
    // the selected identities only, not a copy of the ledger
    let mut targets: Vec<(String, Option<String>)> = Vec::new();
    let mut known = std::collections::BTreeSet::new();
    ctx.svc
        .ledger
        .scan(&mut |r| {
            if sel.identities().contains(&r.identity) {
                known.insert(r.identity.clone());
            }
            if sel.matches_running(r) {
                targets.push((r.identity.clone(), None));
            }
        })
        .await;
    // identities asked for by name that the ledger does not know are reported, not skipped
    for id in sel.identities() {
        if !known.contains(id) {
            targets.push((id.clone(), Some(format!("{id} is not in the ledger"))));
        }
    }
    let total = targets.len() as u64;
    tracing::warn!(
        total,
        batch,
        rate,
        dry_run = req.dry_run,
        by = %actor,
        "reprovision run starting"
    );
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let period = Duration::from_secs_f64(1.0 / rate as f64);
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ticks = Arc::new(tokio::sync::Mutex::new(ticks));
        let dry_run = req.dry_run;
        let mut results = futures::stream::iter(targets.into_iter().map(|(identity, problem)| {
            let (ctx, actor, ticks) = (ctx.clone(), actor.clone(), ticks.clone());
            async move {
                if let Some(p) = problem {
                    return (identity, "error", p);
                }
                if dry_run {
                    return (identity, "planned", String::new());
                }
                ticks.lock().await.tick().await;
                let (result, message) = one(&ctx, &identity, &actor, timeout).await;
                (identity, result, message)
            }
        }))
        .buffer_unordered(batch);
        let mut done = 0u64;
        let mut tally = Tally::new();
        while let Some((identity, result, message)) = results.next().await {
            done += 1;
            *tally.entry(result).or_default() += 1;
            let m = &ctx.svc.metrics;
            if result != "planned" {
                m.reprovision_requests
                    .with_label_values(&[m.site(), result])
                    .inc();
            }
            let progress = pb::ReprovisionProgress {
                identity,
                result: result.into(),
                message,
                done,
                total,
            };
            // the caller may have gone away; the run continues so the ledger stays complete
            let _ = tx.send(progress).await;
        }
        tracing::warn!(?tally, "reprovision run finished");
    });
    Ok(rx)
}

/// Reprovisions one server; returns the result name and a message. Also what renewals
/// ([`crate::renew`]) send.
pub(crate) async fn one(
    ctx: &AdminContext,
    identity: &str,
    actor: &str,
    timeout: Duration,
) -> (&'static str, String) {
    let ledger = &ctx.svc.ledger;
    let cmd = Command::RequestReprovision {
        identity: identity.to_string(),
        member: actor.to_string(),
        at_ms: now_ms(),
    };
    match ledger.propose(cmd).await {
        Ok(Applied::Ok) => {}
        Ok(Applied::Rejected(Rejection::ClaimedBy { member, .. })) => {
            return ("skipped", format!("being provisioned by {member}"))
        }
        Ok(Applied::Rejected(r)) => return ("error", r.to_string()),
        Err(e) => return ("error", e.to_string()),
    }
    // the collective provisioned servers answer in, each try given the run's timeout
    let agents = Agents::new(
        Arc::new(ctx.reprovision.clone()),
        ctx.svc.metrics.clone(),
        timeout,
        ctx.svc.config.token.clone(),
    );
    let req = TokenRequest {
        token: agents.token(),
    };
    let reply = agents.call::<Reprovision>(identity, &req).await;
    let (result, message) = classify(&reply);
    let note = Command::Note {
        identity: identity.to_string(),
        member: actor.to_string(),
        event: format!("reprovision request: {result} {message}")
            .trim_end()
            .to_string(),
        at_ms: now_ms(),
    };
    if let Err(e) = ledger.propose(note).await {
        tracing::warn!(identity, error = %e, "could not record the reprovision result");
    }
    (result, message)
}

/// How a reprovision request to one server ended.
fn classify(r: &Result<MessageReply, RpcError>) -> (&'static str, String) {
    match r {
        Ok(reply) => ("ok", reply.message.clone()),
        Err(e @ RpcError::Timeout { .. }) => ("no_answer", e.to_string()),
        Err(e) => ("error", e.to_string()),
    }
}

/// Counts of results, for logs.
type Tally = BTreeMap<&'static str, u64>;

/// Defaults for a reprovision run.
fn reprovision_limits(req: &pb::ReprovisionRequest) -> Result<(usize, u32, Duration), Status> {
    let batch = match req.batch_size {
        0 => 50,
        n if n > 1000 => return Err(Status::invalid_argument("batch_size is at most 1000")),
        n => n as usize,
    };
    let rate = match req.rate_per_second {
        0 => 100,
        n if n > 10_000 => {
            return Err(Status::invalid_argument("rate_per_second is at most 10000"))
        }
        n => n,
    };
    let timeout = match req.timeout_seconds {
        0 => 10,
        n if n > 300 => return Err(Status::invalid_argument("timeout_seconds is at most 300")),
        n => n,
    };
    Ok((batch, rate, Duration::from_secs(timeout as u64)))
}
