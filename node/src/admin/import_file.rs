//! `provisioner admin ledger import FILE`: JSON lines (a `ledger export`, or lines made from
//! another provisioner's records) sent to a member in batches, several calls in flight.
//!
//! A line needs `identity` and `credential` (`serial`, `fingerprint`, `not_after`);
//! `config_digest` and `facts` are kept when present, anything else is ignored. A line with a
//! `state` other than `enrolled` (an export holds failed and revoked servers too) is left out.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use proto::grpc::admin as pb;
use serde::Deserialize;

use super::cli::{Client, Exit, Failure, Outcome, Render};

/// Problems printed one by one; the counts cover the rest.
const SHOWN: usize = 20;

#[derive(Debug, Deserialize)]
struct Line {
    identity: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    credential: Option<LineCredential>,
    #[serde(default)]
    config_digest: Option<String>,
    #[serde(default)]
    facts: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct LineCredential {
    serial: String,
    fingerprint: String,
    not_after: i64,
}

/// What one line of the file is.
#[derive(Debug)]
enum Parsed {
    Server(pb::ImportedServer),
    NotEnrolled,
}

/// Why a line of the file cannot be read; the text is serde_json's, which names the place.
#[derive(Debug, thiserror::Error)]
enum Unreadable {
    /// Not JSON, or cut short.
    #[error("{0}")]
    NotJson(serde_json::Error),
    /// JSON, but not a record: a field missing (`identity`) or of the wrong type.
    #[error("{0}")]
    NotARecord(serde_json::Error),
}

impl From<serde_json::Error> for Unreadable {
    fn from(e: serde_json::Error) -> Unreadable {
        match e.classify() {
            serde_json::error::Category::Data => Unreadable::NotARecord(e),
            _ => Unreadable::NotJson(e),
        }
    }
}

fn parse(line: &str) -> Result<Parsed, Unreadable> {
    let l: Line = serde_json::from_str(line)?;
    if l.state.as_deref().is_some_and(|s| s != "enrolled") {
        return Ok(Parsed::NotEnrolled);
    }
    Ok(Parsed::Server(pb::ImportedServer {
        identity: l.identity,
        credential: l.credential.map(|c| pb::Credential {
            serial: c.serial,
            fingerprint: c.fingerprint,
            not_after: c.not_after,
            ..Default::default()
        }),
        config_digest: l.config_digest.unwrap_or_default(),
        facts: l.facts.into_iter().collect(),
    }))
}

#[derive(Debug, Default, serde::Serialize)]
struct Summary {
    imported: u64,
    skipped: u64,
    not_enrolled: u64,
    refused: u64,
    unreadable: u64,
}

impl Render for Summary {
    fn table(&self) -> String {
        format!(
            "imported {}, skipped {} already in the ledger, {} not enrolled, {} refused, {} unreadable lines",
            self.imported, self.skipped, self.not_enrolled, self.refused, self.unreadable
        )
    }

    /// On one line, unlike the other replies.
    fn json(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }
}

/// Sends `file` in batches of `batch` with up to `parallel` calls in flight, showing progress
/// on standard error unless `json`; exit `Failed` when anything was refused or unreadable.
pub(super) async fn run(
    client: &mut Client,
    file: &Path,
    batch: usize,
    parallel: usize,
    json: bool,
) -> Result<Outcome, Failure> {
    let batch = batch.clamp(1, super::import::MAX_SERVERS);
    let parallel = parallel.max(1);
    let f = std::fs::File::open(file)
        .map_err(|e| Failure::new(Exit::Usage, format!("{}: {e}", file.display())))?;
    let mut lines = std::io::BufReader::new(f).lines().enumerate();
    let mut sum = Summary::default();
    let mut shown = 0usize;
    let mut show = |msg: String| {
        if shown < SHOWN {
            eprintln!("{msg}");
        }
        shown += 1;
    };
    let mut in_flight = FuturesUnordered::new();
    let mut done = false;
    while !done || !in_flight.is_empty() {
        while !done && in_flight.len() < parallel {
            let mut servers = Vec::with_capacity(batch);
            while servers.len() < batch {
                let Some((n, line)) = lines.next() else {
                    done = true;
                    break;
                };
                let line = line
                    .map_err(|e| Failure::new(Exit::Failed, format!("{}: {e}", file.display())))?;
                if line.trim().is_empty() {
                    continue;
                }
                match parse(&line) {
                    Ok(Parsed::Server(s)) => servers.push(s),
                    Ok(Parsed::NotEnrolled) => sum.not_enrolled += 1,
                    Err(e) => {
                        sum.unreadable += 1;
                        show(format!("line {}: {e}", n + 1));
                    }
                }
            }
            if servers.is_empty() {
                continue;
            }
            let mut c = client.clone();
            in_flight.push(async move {
                c.import_ledger(pb::ImportLedgerRequest { servers })
                    .await
                    .map(|r| r.into_inner())
            });
        }
        if let Some(r) = in_flight.next().await {
            let r = r?;
            sum.imported += r.imported;
            sum.skipped += r.skipped;
            sum.refused += r.refused;
            r.errors.into_iter().for_each(&mut show);
            if !json {
                eprint!(
                    "\rimported {}, skipped {}, refused {}",
                    sum.imported, sum.skipped, sum.refused
                );
            }
        }
    }
    if !json {
        // ends the progress line
        eprintln!();
    }
    let exit = if sum.refused + sum.unreadable > 0 {
        Exit::Failed
    } else {
        Exit::Ok
    };
    Ok(Outcome::reply(sum).exit(exit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exported_record_reads_as_a_server_and_other_states_are_left_out() {
        let line = r#"{"identity":"n1","state":"enrolled","owner":null,"credential":{"serial":"0a","fingerprint":"ff","not_after":5,"issued_by":"p1","issued_at_ms":1},"config_digest":"d","facts":{"role":"web"},"history":[]}"#;
        let Parsed::Server(s) = parse(line).unwrap() else {
            panic!("should be a server")
        };
        assert_eq!(s.identity, "n1");
        assert_eq!(s.credential.unwrap().serial, "0a");
        assert_eq!(s.config_digest, "d");
        assert_eq!(s.facts.get("role").map(String::as_str), Some("web"));
        let failed = r#"{"identity":"n2","state":"failed","credential":null}"#;
        assert!(matches!(parse(failed), Ok(Parsed::NotEnrolled)));
        let bare =
            r#"{"identity":"n3","credential":{"serial":"1","fingerprint":"f","not_after":9}}"#;
        assert!(matches!(parse(bare), Ok(Parsed::Server(_))));
        let Err(e) = parse("{not json") else {
            panic!("read garbage")
        };
        assert!(matches!(e, Unreadable::NotJson(_)), "{e:?}");
        let serde = |l: &str| serde_json::from_str::<Line>(l).unwrap_err().to_string();
        assert_eq!(e.to_string(), serde("{not json"));
        let Err(e) = parse(r#"{"credential":null}"#) else {
            panic!("read a line without an identity")
        };
        assert!(matches!(e, Unreadable::NotARecord(_)), "{e:?}");
        assert_eq!(e.to_string(), serde(r#"{"credential":null}"#));
        assert!(e.to_string().contains("identity"), "{e}");
    }

    #[test]
    fn the_summary_prints_as_before() {
        let sum = Summary {
            imported: 5,
            skipped: 1,
            not_enrolled: 2,
            refused: 3,
            unreadable: 4,
        };
        assert_eq!(
            sum.table(),
            "imported 5, skipped 1 already in the ledger, 2 not enrolled, 3 refused, 4 unreadable lines"
        );
        assert_eq!(
            sum.json().unwrap(),
            r#"{"imported":5,"skipped":1,"not_enrolled":2,"refused":3,"unreadable":4}"#
        );
    }
}
