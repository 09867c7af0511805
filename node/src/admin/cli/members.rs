//! `add-member`, `promote` and `remove-member`: changes to the cluster's membership.

use proto::grpc::admin as pb;

use super::render::{pretty, Outcome, Render};
use super::{Client, Failure};

pub(super) async fn add(
    client: &mut Client,
    id: u64,
    name: String,
    raft_addr: String,
    admin_addr: String,
) -> Result<Outcome, Failure> {
    let r = client
        .add_member(pb::AddMemberRequest {
            id,
            name,
            raft_addr,
            admin_addr,
        })
        .await?
        .into_inner();
    Ok(Outcome::reply(r))
}

pub(super) async fn promote(client: &mut Client, id: u64) -> Result<Outcome, Failure> {
    let r = client
        .promote(pb::PromoteRequest { id })
        .await?
        .into_inner();
    Ok(Outcome::reply(r))
}

pub(super) async fn remove(client: &mut Client, id: u64, force: bool) -> Result<Outcome, Failure> {
    let r = client
        .remove_member(pb::RemoveMemberRequest { id, force })
        .await?
        .into_inner();
    Ok(Outcome::reply(r))
}

impl Render for pb::MembershipReply {
    fn table(&self) -> String {
        format!(
            "{}\nvoters: {:?}  learners: {:?}",
            self.message, self.voters, self.learners
        )
    }

    fn json(&self) -> serde_json::Result<String> {
        pretty(self)
    }
}
