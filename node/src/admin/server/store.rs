//! This member's store: a snapshot built now, an online backup.

use proto::grpc::admin as pb;
use tonic::Status;

use super::AdminApi;
use crate::admin::backup;

impl AdminApi {
    pub(super) async fn backup_member(
        &self,
        req: pb::BackupRequest,
        operator: &str,
    ) -> Result<pb::BackupReply, Status> {
        let member = self.member()?.clone();
        let data_dir = self
            .svc()
            .config
            .data_dir
            .clone()
            .ok_or_else(|| Status::failed_precondition("this member has no data_dir"))?;
        let (path, m) = backup::make(member, data_dir, req.name).await?;
        tracing::info!(path = %path.display(), last_applied = m.last_applied, records = m.records, operator, "backup made");
        Ok(pb::BackupReply {
            path: path.display().to_string(),
            member: m.member,
            last_applied: m.last_applied,
            records: m.records,
            bytes: m.bytes,
        })
    }

    pub(super) async fn snapshot_now(&self, who: &str) -> Result<pb::SnapshotReply, Status> {
        let member = self.member()?;
        let s = member
            .snapshot_now(std::time::Duration::from_secs(600))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        tracing::info!(
            operator = who,
            index = s.index,
            took_ms = s.took_ms,
            "snapshot built on request"
        );
        Ok(pb::SnapshotReply {
            member: member.me.name.clone(),
            index: s.index,
            took_ms: s.took_ms,
            bytes: s.bytes,
            records: s.records,
        })
    }
}
