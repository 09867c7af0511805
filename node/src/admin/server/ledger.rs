//! The ledger read (a page, a record, an export) and written (imports, revocations).

use proto::grpc::admin as pb;
use raft::{Applied, Command, Rejection};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{AdminApi, Stream};
use crate::admin::import;
use crate::admin::select::{self, Selector};
use crate::clock::now_ms;

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1_000;
/// Records an export reads from the ledger at a time.
const EXPORT_PAGE: usize = 1_000;

impl AdminApi {
    pub(super) async fn list(
        &self,
        req: pb::ListLedgerRequest,
    ) -> Result<pb::ListLedgerReply, Status> {
        let sel = Selector::parse(req.selector, false)?;
        let size = match req.page_size {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(Status::invalid_argument(format!(
                    "page_size is at most {MAX_PAGE}"
                )))
            }
            n => n,
        } as usize;
        let owner = req.owner.as_str();
        let keep = |r: &raft::Record| {
            sel.matches(r) && (owner.is_empty() || r.owner.as_deref() == Some(owner))
        };
        // one page copied out of the replica, however large the ledger
        let filter = raft::state::Filter {
            states: sel.states(),
            by_state_only: sel.by_state_only() && owner.is_empty(),
            keep: &keep,
        };
        let page = self
            .svc()
            .ledger
            .page(&req.page_token, size, true, filter)
            .await;
        let next = match page.more {
            true => page
                .records
                .last()
                .map(|r| r.identity.clone())
                .unwrap_or_default(),
            false => String::new(),
        };
        Ok(pb::ListLedgerReply {
            records: page.records.iter().map(select::record).collect(),
            next_page_token: next,
            matched: page.matched as u64,
        })
    }

    pub(super) async fn record(&self, identity: String) -> Result<pb::Record, Status> {
        if !proto::subject::is_valid_identity(&identity) {
            return Err(Status::invalid_argument(format!(
                "{identity:?} is not a valid identity"
            )));
        }
        self.svc()
            .ledger
            .record(&identity)
            .await
            .map(|r| select::record(&r))
            .ok_or_else(|| Status::not_found(format!("{identity} is not in the ledger")))
    }

    /// Every record `selector` matches, a page at a time as the client reads: memory stays
    /// bounded however large the ledger.
    pub(super) fn export(
        &self,
        selector: Option<pb::Selector>,
    ) -> Result<Stream<pb::ExportLine>, Status> {
        let sel = Selector::parse(selector, false)?;
        let ledger = self.svc().ledger.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(EXPORT_PAGE);
        tokio::spawn(async move {
            let mut after = String::new();
            loop {
                let keep = |r: &raft::Record| sel.matches(r);
                let filter = raft::state::Filter {
                    states: sel.states(),
                    by_state_only: false,
                    keep: &keep,
                };
                let page = ledger.page(&after, EXPORT_PAGE, false, filter).await;
                for r in &page.records {
                    let line = export_line(r)
                        .map(|json| pb::ExportLine { json })
                        .map_err(|e| Status::internal(e.to_string()));
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
                match page.records.last() {
                    Some(last) if page.more => after = last.identity.clone(),
                    _ => return,
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    pub(super) async fn import(
        &self,
        servers: Vec<pb::ImportedServer>,
        who: &str,
    ) -> Result<pb::ImportLedgerReply, Status> {
        if servers.len() > import::MAX_SERVERS {
            return Err(Status::invalid_argument(format!(
                "{} servers in one call; at most {}",
                servers.len(),
                import::MAX_SERVERS
            )));
        }
        let actor = self.actor(who);
        let reply = import::import(self.svc(), &actor, servers).await;
        tracing::info!(
            operator = who,
            imported = reply.imported,
            skipped = reply.skipped,
            refused = reply.refused,
            "ledger import"
        );
        Ok(reply)
    }

    pub(super) async fn revoke(
        &self,
        req: pb::RevokeRequest,
        operator: &str,
    ) -> Result<String, Status> {
        if !proto::subject::is_valid_identity(&req.identity) {
            return Err(Status::invalid_argument(format!(
                "{:?} is not a valid identity",
                req.identity
            )));
        }
        let rec = self
            .svc()
            .ledger
            .record(&req.identity)
            .await
            .ok_or_else(|| Status::not_found(format!("{} is not in the ledger", req.identity)))?;
        let serial = rec
            .credential
            .map(|c| c.serial)
            .ok_or_else(|| Status::failed_precondition("the server has no credential"))?;
        let reason = if req.reason.is_empty() {
            format!("revoked by {operator}")
        } else {
            req.reason
        };
        match self
            .propose(Command::Revoke {
                identity: req.identity.clone(),
                member: self.actor(operator),
                reason,
                at_ms: now_ms(),
            })
            .await?
        {
            Applied::Ok => {
                tracing::warn!(identity = %req.identity, %serial, operator, "credential revoked");
                Ok(serial)
            }
            Applied::Rejected(Rejection::NoCredential) => {
                Err(Status::failed_precondition("the server has no credential"))
            }
            Applied::Rejected(r) => Err(Status::failed_precondition(r.to_string())),
        }
    }
}

/// A record as `ledger export` writes it: its stored JSON, but each history line as the
/// sentence people read (the ledger stores typed events from rules 8; an export is for people
/// and their tools, and keeps the form it always had).
fn export_line(r: &raft::Record) -> serde_json::Result<String> {
    let mut v = serde_json::to_value(r)?;
    if let Some(lines) = v.get_mut("history").and_then(|h| h.as_array_mut()) {
        for (line, h) in lines.iter_mut().zip(&r.history) {
            line["event"] = serde_json::Value::String(h.event.to_string());
        }
    }
    serde_json::to_string(&v)
}

#[cfg(test)]
mod tests {
    use raft::state::{Event, HistoryEntry, Logged};

    #[test]
    fn an_export_shows_history_lines_as_sentences_whatever_their_stored_form() {
        let mut r: raft::Record = serde_json::from_value(serde_json::json!({
            "identity": "n1", "state": "Enrolled", "owner": null, "lease_until_ms": 0,
            "attempts": 1, "credential": null, "config_digest": null, "last_error": null,
            "first_seen_ms": 0, "updated_ms": 0, "history": []
        }))
        .unwrap();
        r.history = vec![
            HistoryEntry {
                at_ms: 1,
                member: "a".into(),
                event: Logged::Text("claimed".into()),
            },
            HistoryEntry {
                at_ms: 2,
                member: "a".into(),
                event: Logged::Event(Event::Failed {
                    reason: "no".into(),
                }),
            },
        ];
        let line: serde_json::Value =
            serde_json::from_str(&super::export_line(&r).unwrap()).unwrap();
        assert_eq!(line["history"][0]["event"], "claimed");
        assert_eq!(line["history"][1]["event"], "failed: no");
        assert_eq!(line["history"][1]["member"], "a");
        assert_eq!(line["identity"], "n1");
    }
}
