//! `reprovision`: servers sent back to provisioning mode, with a progress bar while the
//! cluster asks them.

use std::collections::BTreeMap;

use proto::grpc::admin as pb;
use serde::Serialize;

use super::render::{pretty, table, Outcome, Render};
use super::{Client, Exit, Failure};

/// Every server's result, in the order they came, and how many had each.
#[derive(Serialize)]
pub(super) struct Results {
    results: Vec<pb::ReprovisionProgress>,
    counts: BTreeMap<String, usize>,
}

impl Results {
    pub(super) fn new(results: Vec<pb::ReprovisionProgress>) -> Results {
        let mut counts = BTreeMap::<String, usize>::new();
        for r in &results {
            *counts.entry(r.result.clone()).or_default() += 1;
        }
        Results { results, counts }
    }

    /// Whether some server was not reprovisioned (an error, or no answer).
    pub(super) fn failed(&self) -> bool {
        self.results.iter().any(|r| !succeeded(&r.result))
    }
}

fn succeeded(result: &str) -> bool {
    result == "ok" || result == "planned"
}

/// Runs `req`, showing progress on standard error unless `--json`; exit `Partial` when some
/// server was not reprovisioned.
pub(super) async fn run(
    client: &mut Client,
    req: pb::ReprovisionRequest,
    json: bool,
) -> Result<Outcome, Failure> {
    let mut stream = client.reprovision(req).await?.into_inner();
    let bar = indicatif::ProgressBar::new(0);
    if json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} reprovision [{bar:40}] {pos}/{len} {per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    }
    let mut results = Vec::new();
    while let Some(p) = stream.message().await? {
        bar.set_length(p.total);
        bar.set_position(p.done);
        if !succeeded(&p.result) {
            bar.set_message(format!("{} {}", p.identity, p.result));
        }
        results.push(p);
    }
    bar.finish_and_clear();
    let results = Results::new(results);
    let exit = if results.failed() {
        Exit::Partial
    } else {
        Exit::Ok
    };
    Ok(Outcome::reply(results).exit(exit))
}

impl Render for Results {
    /// Sorted by identity, then the counts.
    fn table(&self) -> String {
        let mut t = table(&["IDENTITY", "RESULT", "MESSAGE"]);
        let mut sorted: Vec<_> = self.results.iter().collect();
        sorted.sort_by(|a, b| a.identity.cmp(&b.identity));
        for r in sorted {
            t.add_row(vec![
                r.identity.clone(),
                r.result.clone(),
                r.message.clone(),
            ]);
        }
        let line: Vec<String> = self
            .counts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        format!("{t}\n{} servers: {}", self.results.len(), line.join(", "))
    }

    fn json(&self) -> serde_json::Result<String> {
        pretty(self)
    }
}
