//! `ledger list`, `ledger show`, `ledger export` and `revoke`: the enrollment ledger read and
//! a credential revoked. (`ledger import` is [`super::super::import_file`].)

use std::io::Write;
use std::path::PathBuf;

use proto::grpc::admin as pb;

use super::render::{ms_to_time, pretty, rfc3339, table, Outcome, Render};
use super::{Client, Exit, Failure, SelectArgs};

pub(super) async fn list(
    client: &mut Client,
    select: SelectArgs,
    owner: String,
    page_size: u32,
    page_token: String,
) -> Result<Outcome, Failure> {
    let r = client
        .list_ledger(pb::ListLedgerRequest {
            selector: Some(select.selector(vec![], false)),
            page_size,
            page_token,
            owner,
        })
        .await?
        .into_inner();
    Ok(Outcome::reply(r))
}

impl Render for pb::ListLedgerReply {
    fn table(&self) -> String {
        let mut t = table(&[
            "IDENTITY",
            "STATE",
            "OWNER",
            "ATTEMPTS",
            "SERIAL",
            "ISSUED BY",
            "UPDATED",
            "LAST ERROR",
        ]);
        for rec in &self.records {
            t.add_row(vec![
                rec.identity.clone(),
                rec.state.clone(),
                rec.owner.clone(),
                rec.attempts.to_string(),
                rec.credential
                    .as_ref()
                    .map(|c| c.serial.clone())
                    .unwrap_or_default(),
                rec.credential
                    .as_ref()
                    .map(|c| c.issued_by.clone())
                    .unwrap_or_default(),
                ms_to_time(rec.updated_ms),
                rec.last_error.clone(),
            ]);
        }
        format!(
            "{t}\n{} of {} matching records{}",
            self.records.len(),
            self.matched,
            if self.next_page_token.is_empty() {
                String::new()
            } else {
                format!("; next page: --page-token {}", self.next_page_token)
            }
        )
    }

    fn json(&self) -> serde_json::Result<String> {
        pretty(self)
    }
}

pub(super) async fn show(client: &mut Client, identity: String) -> Result<Outcome, Failure> {
    let r = client
        .get_record(pb::GetRecordRequest { identity })
        .await?
        .into_inner();
    Ok(Outcome::reply(r))
}

/// One record with its history and earlier credentials.
impl Render for pb::Record {
    fn table(&self) -> String {
        let r = self;
        let mut out = vec![
            format!("identity:      {}", r.identity),
            format!("state:         {}", r.state),
        ];
        if !r.owner.is_empty() {
            out.push(format!(
                "owner:         {} (lease until {})",
                r.owner,
                ms_to_time(r.lease_until_ms)
            ));
        }
        out.push(format!("attempts:      {}", r.attempts));
        if let Some(c) = &r.credential {
            let exp = rfc3339(time::OffsetDateTime::from_unix_timestamp(c.not_after).ok())
                .unwrap_or_default();
            out.extend([
                format!("serial:        {}", c.serial),
                format!("fingerprint:   {}", c.fingerprint),
                format!("expires:       {exp}"),
                format!(
                    "issued by:     {} at {}",
                    c.issued_by,
                    ms_to_time(c.issued_at_ms)
                ),
            ]);
        }
        if !r.last_error.is_empty() {
            out.push(format!("last error:    {}", r.last_error));
        }
        out.push(format!("first seen:    {}", ms_to_time(r.first_seen_ms)));
        if !r.facts.is_empty() {
            let mut facts: Vec<_> = r.facts.iter().collect();
            facts.sort();
            let f: Vec<String> = facts.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push(format!("facts:         {}", f.join(" ")));
        }
        if !r.revoked.is_empty() {
            let mut t = table(&["REVOKED SERIAL", "AT", "BY", "REASON"]);
            for v in &r.revoked {
                t.add_row(vec![
                    v.serial.clone(),
                    ms_to_time(v.revoked_at_ms),
                    v.revoked_by.clone(),
                    v.reason.clone(),
                ]);
            }
            out.push(t.to_string());
        }
        let mut t = table(&["AT", "MEMBER", "EVENT"]);
        for h in &r.history {
            t.add_row(vec![ms_to_time(h.at_ms), h.member.clone(), h.event.clone()]);
        }
        out.push(t.to_string());
        out.join("\n")
    }

    fn json(&self) -> serde_json::Result<String> {
        pretty(self)
    }
}

/// Streams every matching record as a JSON line to `out` or standard output, with or without
/// `--json`.
pub(super) async fn export(
    client: &mut Client,
    select: SelectArgs,
    out: Option<PathBuf>,
) -> Result<Outcome, Failure> {
    let mut stream = client
        .export_ledger(pb::ExportLedgerRequest {
            selector: Some(select.selector(vec![], false)),
        })
        .await?
        .into_inner();
    let mut sink: Box<dyn Write> = match &out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p)
                .map_err(|e| Failure::new(Exit::Usage, format!("{}: {e}", p.display())))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut n = 0u64;
    while let Some(line) = stream.message().await? {
        writeln!(sink, "{}", line.json)
            .map_err(|e| Failure::new(Exit::Failed, format!("write: {e}")))?;
        n += 1;
    }
    sink.flush()
        .map_err(|e| Failure::new(Exit::Failed, format!("write: {e}")))?;
    if let Some(p) = out {
        eprintln!("exported {n} records to {}", p.display());
    }
    Ok(Outcome::nothing())
}

/// A credential revoked.
pub(super) struct Revoked {
    pub(super) identity: String,
    pub(super) reply: pb::RevokeReply,
}

pub(super) async fn revoke(
    client: &mut Client,
    identity: String,
    reason: String,
) -> Result<Outcome, Failure> {
    let reply = client
        .revoke(pb::RevokeRequest {
            identity: identity.clone(),
            reason,
        })
        .await?
        .into_inner();
    Ok(Outcome::reply(Revoked { identity, reply }))
}

impl Render for Revoked {
    fn table(&self) -> String {
        format!(
            "revoked {}'s credential, serial {}",
            self.identity, self.reply.serial
        )
    }

    fn json(&self) -> serde_json::Result<String> {
        pretty(&self.reply)
    }
}
