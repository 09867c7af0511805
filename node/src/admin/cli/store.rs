//! `snapshot` and `backup`: the answering member's store, compacted or copied.

use proto::grpc::admin as pb;

use super::render::{pretty, Outcome, Render};
use super::{Client, Failure};

pub(super) async fn snapshot(client: &mut Client) -> Result<Outcome, Failure> {
    let r = client.snapshot(pb::SnapshotRequest {}).await?.into_inner();
    Ok(Outcome::reply(r))
}

impl Render for pb::SnapshotReply {
    fn table(&self) -> String {
        format!(
            "{} built a snapshot at log index {}: {} records, {} bytes, {} ms",
            self.member, self.index, self.records, self.bytes, self.took_ms
        )
    }

    fn json(&self) -> serde_json::Result<String> {
        pretty(self)
    }
}

pub(super) async fn backup(client: &mut Client, name: String) -> Result<Outcome, Failure> {
    let r = client
        .backup(pb::BackupRequest { name })
        .await?
        .into_inner();
    Ok(Outcome::reply(r))
}

impl Render for pb::BackupReply {
    fn table(&self) -> String {
        format!(
            "backup of {} in {} on its host: ledger at log index {}, {} records, {} bytes",
            self.member, self.path, self.last_applied, self.records, self.bytes
        )
    }

    fn json(&self) -> serde_json::Result<String> {
        pretty(self)
    }
}
