//! `drain` and `undrain`, `rebalance`, `pause` and `resume`: which members provision, and
//! whether any does.

use std::time::Duration;

use proto::grpc::admin as pb;

use super::render::{pretty, print_now, Outcome, Render};
use super::{Client, Exit, Failure};

/// A member's drain changed.
pub(super) struct Drain {
    pub(super) member: String,
    pub(super) drain: bool,
    pub(super) reply: pb::DrainReply,
}

/// Drains `member` (or lets it take servers again); with `wait`, returns once it is drained,
/// failing after `wait`.
pub(super) async fn drain(
    client: &mut Client,
    member: String,
    drain: bool,
    wait: Option<Duration>,
    json: bool,
) -> Result<Outcome, Failure> {
    let reply = client
        .drain(pb::DrainRequest {
            member: member.clone(),
            drain,
        })
        .await?
        .into_inner();
    let changed = Drain {
        member,
        drain,
        reply,
    };
    let Some(limit) = wait else {
        return Ok(Outcome::reply(changed));
    };
    // said now: the wait may be long
    let member = changed.member.clone();
    print_now(changed, json)?;
    wait_drained(client, &member, limit).await
}

impl Render for Drain {
    fn table(&self) -> String {
        format!(
            "{} {}; draining now: {}",
            self.member,
            if self.drain {
                "drains"
            } else {
                "takes servers again"
            },
            if self.reply.draining.is_empty() {
                "none".to_string()
            } else {
                self.reply.draining.join(", ")
            }
        )
    }

    fn json(&self) -> serde_json::Result<String> {
        pretty(&self.reply)
    }
}

/// Polls `status` until `member` is drained (its flows ended, it starts none), for at most
/// `limit`: what an operator waits for before stopping it.
async fn wait_drained(
    client: &mut Client,
    member: &str,
    limit: Duration,
) -> Result<Outcome, Failure> {
    let until = tokio::time::Instant::now() + limit;
    loop {
        let s = client.status(pb::StatusRequest {}).await?.into_inner();
        let Some(m) = s.members.iter().find(|m| m.name == member) else {
            return Err(Failure::new(
                Exit::Failed,
                format!("{member} is not in the status reply"),
            ));
        };
        if m.drained {
            return Ok(Outcome::note(format!(
                "{member} drained: it holds no server"
            )));
        }
        if tokio::time::Instant::now() >= until {
            return Err(Failure::new(
                Exit::Failed,
                format!(
                    "{member} not drained after {limit:?}: it holds {} servers ({} in flight)",
                    m.owned, m.in_flight
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub(super) async fn rebalance(client: &mut Client) -> Result<Outcome, Failure> {
    let r = client
        .rebalance(pb::RebalanceRequest {})
        .await?
        .into_inner();
    Ok(Outcome::reply(r))
}

impl Render for pb::RebalanceReply {
    fn table(&self) -> String {
        format!(
            "released {} claims; live members: {}",
            self.released,
            self.live_members.join(", ")
        )
    }

    fn json(&self) -> serde_json::Result<String> {
        pretty(self)
    }
}

pub(super) async fn pause(client: &mut Client, paused: bool) -> Result<Outcome, Failure> {
    let r = client
        .set_paused(pb::PauseRequest { paused })
        .await?
        .into_inner();
    Ok(Outcome::reply(r))
}

impl Render for pb::PauseReply {
    fn table(&self) -> String {
        format!(
            "provisioning {}",
            if self.paused { "paused" } else { "running" }
        )
    }

    fn json(&self) -> serde_json::Result<String> {
        pretty(self)
    }
}
