//! The exactly-once checker: after a scenario, it holds every member's ledger against the others
//! and against what the simulated servers saw, and lists every violation it finds.
//!
//! What it asserts:
//! - every member's ledger is the same (records and digest);
//! - no serial was issued twice, to the same server or to two;
//! - every credential a server received is in the ledger, issued to that server, and recorded
//!   before the server received it;
//! - every server left provisioning mode exactly once per time it entered it (its first start,
//!   plus each reprovision, fall-back or upgrade), and the credential it runs with is the one the
//!   ledger holds as current, with the server enrolled.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

/// One member's ledger as `provisioner admin ledger export` printed it, and its digest.
#[derive(Debug, Clone)]
pub struct MemberLedger {
    pub member: String,
    pub records: Vec<Value>,
    pub digest: Option<String>,
}

impl MemberLedger {
    /// Member `name` (id `id`) from the output of its `provisioner admin ledger export` and its
    /// `status --json` reply; `None` when the export failed or did not parse.
    pub fn from_admin(
        name: &str,
        id: u64,
        export: &std::process::Output,
        status: &Value,
    ) -> Option<MemberLedger> {
        if !export.status.success() {
            return None;
        }
        let records = String::from_utf8_lossy(&export.stdout)
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<Vec<Value>, _>>()
            .ok()?;
        let digest = status["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"].as_u64() == Some(id))
            .and_then(|m| m["ledger_digest"].as_str().map(String::from));
        Some(MemberLedger {
            member: name.to_string(),
            records,
            digest,
        })
    }
}

/// One line of the simulator's `--events` file.
#[derive(Debug, Clone)]
pub struct FleetEvent {
    pub identity: String,
    pub event: String,
    pub serial: Option<String>,
    pub at_ms: u64,
}

impl FleetEvent {
    /// A request the server saw (its first, or one it was asked before), not a change of
    /// the server's state.
    pub fn diagnostic(&self) -> bool {
        matches!(self.event.as_str(), "first_request" | "repeated")
    }
}

/// Reads a fleet's `--events` file; unreadable lines are skipped.
pub fn read_events(path: &Path) -> Vec<FleetEvent> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| FleetEvent {
            identity: v["identity"].as_str().unwrap_or_default().to_string(),
            event: v["event"].as_str().unwrap_or_default().to_string(),
            serial: v["serial"].as_str().map(String::from),
            at_ms: v["at_ms"].as_u64().unwrap_or(0),
        })
        .collect()
}

/// What a clean run looked like, for the test's log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckSummary {
    pub members: usize,
    pub servers: usize,
    pub serials_issued: usize,
    pub deliveries: usize,
    /// Servers that received more than one credential before leaving provisioning mode (a
    /// flow redone after a fault).
    pub redelivered: usize,
}

/// Serials the ledger history says were issued, with the server and time.
fn issued(records: &[Value]) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for r in records {
        let identity = r["identity"].as_str().unwrap_or_default();
        for h in r["history"].as_array().into_iter().flatten() {
            if let Some(serial) = h["event"]
                .as_str()
                .and_then(|e| e.strip_prefix("credential issued, serial "))
            {
                out.push((
                    serial.trim().to_string(),
                    identity.to_string(),
                    h["at_ms"].as_u64().unwrap_or(0),
                ));
            }
        }
    }
    out
}

/// Checks the run; `Err` lists every violation.
pub fn check(
    ledgers: &[MemberLedger],
    events: &[FleetEvent],
    servers: usize,
) -> Result<CheckSummary, Vec<String>> {
    let mut bad = Vec::new();
    let Some(first) = ledgers.first() else {
        return Err(vec!["no member ledgers to check".into()]);
    };

    // every member holds the same ledger
    for l in &ledgers[1..] {
        if l.records != first.records {
            let mine: BTreeSet<String> = l.records.iter().map(Value::to_string).collect();
            let theirs: BTreeSet<String> = first.records.iter().map(Value::to_string).collect();
            bad.push(format!(
                "{} and {} differ in {} records",
                first.member,
                l.member,
                mine.symmetric_difference(&theirs).count()
            ));
        }
        if l.digest != first.digest {
            bad.push(format!(
                "digest of {} is {:?}, of {} {:?}",
                first.member, first.digest, l.member, l.digest
            ));
        }
    }

    // no serial issued twice
    let issued = issued(&first.records);
    let mut by_serial: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    for (serial, identity, at) in &issued {
        if let Some((other, _)) = by_serial.insert(serial, (identity, *at)) {
            bad.push(format!(
                "serial {serial} issued twice (to {other} and to {identity})"
            ));
        }
    }
    let records: BTreeMap<&str, &Value> = first
        .records
        .iter()
        .filter_map(|r| r["identity"].as_str().map(|i| (i, r)))
        .collect();

    // every delivered credential is in the ledger, for that server, before it arrived
    let mut deliveries: BTreeMap<&str, usize> = BTreeMap::new();
    let mut delivered_count = 0;
    for e in events.iter().filter(|e| e.event == "delivered") {
        delivered_count += 1;
        *deliveries.entry(&e.identity).or_default() += 1;
        let Some(serial) = &e.serial else {
            bad.push(format!(
                "{} received a credential without a serial",
                e.identity
            ));
            continue;
        };
        match by_serial.get(serial.as_str()) {
            None => bad.push(format!(
                "{} received serial {serial}, which is not in the ledger",
                e.identity
            )),
            Some((owner, _)) if *owner != e.identity => bad.push(format!(
                "{} received serial {serial}, which the ledger issued to {owner}",
                e.identity
            )),
            Some((_, at)) if e.at_ms > 0 && *at > e.at_ms => bad.push(format!(
                "{} received serial {serial} at {} before the ledger recorded it at {at}",
                e.identity, e.at_ms
            )),
            Some(_) => {}
        }
    }

    // each server left provisioning mode once per time it entered it, with the current credential
    let mut per_server: BTreeMap<&str, Vec<&FleetEvent>> = BTreeMap::new();
    // what a server went through; its requests (first, repeated) are for reading a run only
    for e in events.iter().filter(|e| !e.diagnostic()) {
        per_server.entry(&e.identity).or_default().push(e);
    }
    let mut provisioned_servers = 0;
    for (identity, evs) in &per_server {
        let count = |name: &str| evs.iter().filter(|e| e.event == name).count();
        let entered = 1 + count("reprovisioning") + count("fell_back") + count("upgraded");
        let left = count("provisioned");
        if left == 0 {
            continue;
        }
        provisioned_servers += 1;
        if left != entered {
            bad.push(format!(
                "{identity} left provisioning mode {left} times but entered it {entered} times"
            ));
        }
        let last = evs
            .iter()
            .rev()
            .find(|e| e.event == "provisioned")
            .and_then(|e| e.serial.clone());
        let Some(rec) = records.get(identity) else {
            bad.push(format!(
                "{identity} was provisioned but has no ledger record"
            ));
            continue;
        };
        // the server's last word is its provisioning; then the ledger must agree with it
        if evs.last().is_some_and(|e| e.event == "provisioned") {
            if rec["state"] != "Enrolled" {
                bad.push(format!(
                    "{identity} runs provisioned but the ledger says {}",
                    rec["state"]
                ));
            }
            let current = rec["credential"]["serial"].as_str().map(String::from);
            if last.is_some() && last != current {
                bad.push(format!(
                    "{identity} runs with serial {last:?}, the ledger's current one is {current:?}"
                ));
            }
        }
    }
    if provisioned_servers != servers {
        bad.push(format!(
            "{provisioned_servers} of {servers} servers were provisioned"
        ));
    }

    if bad.is_empty() {
        Ok(CheckSummary {
            members: ledgers.len(),
            servers: provisioned_servers,
            serials_issued: issued.len(),
            deliveries: delivered_count,
            redelivered: deliveries.values().filter(|n| **n > 1).count(),
        })
    } else {
        Err(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(identity: &str, serials: &[(&str, u64)], state: &str) -> Value {
        let history: Vec<Value> = serials
            .iter()
            .map(|(s, at)| json!({"at_ms": at, "member": "prov1", "event": format!("credential issued, serial {s}")}))
            .collect();
        json!({
            "identity": identity,
            "state": state,
            "credential": serials.last().map(|(s, _)| json!({"serial": s})),
            "history": history,
        })
    }

    fn ev(identity: &str, event: &str, serial: Option<&str>, at_ms: u64) -> FleetEvent {
        FleetEvent {
            identity: identity.into(),
            event: event.into(),
            serial: serial.map(String::from),
            at_ms,
        }
    }

    fn ledgers(records: Vec<Value>) -> Vec<MemberLedger> {
        ["prov1", "prov2"]
            .iter()
            .map(|m| MemberLedger {
                member: m.to_string(),
                records: records.clone(),
                digest: Some("d".into()),
            })
            .collect()
    }

    fn good() -> (Vec<Value>, Vec<FleetEvent>) {
        (
            vec![
                record("a", &[("01", 10)], "Enrolled"),
                record("b", &[("02", 10), ("03", 20)], "Enrolled"),
            ],
            vec![
                ev("a", "delivered", Some("01"), 11),
                ev("a", "provisioned", Some("01"), 30),
                ev("b", "delivered", Some("02"), 11),
                ev("b", "delivered", Some("03"), 21),
                ev("b", "provisioned", Some("03"), 30),
            ],
        )
    }

    #[test]
    fn a_clean_run_passes() {
        let (records, events) = good();
        let s = check(&ledgers(records), &events, 2).unwrap();
        assert_eq!(s.servers, 2);
        assert_eq!(s.serials_issued, 3);
        assert_eq!(s.deliveries, 3);
        assert_eq!(s.redelivered, 1);
    }

    #[test]
    fn each_violation_is_found() {
        let (records, events) = good();
        // a serial issued twice
        let mut r = records.clone();
        r[1] = record("b", &[("01", 10)], "Enrolled");
        let e: Vec<FleetEvent> = events
            .iter()
            .filter(|e| e.identity == "a")
            .cloned()
            .collect();
        let err = check(&ledgers(r), &e, 1).unwrap_err();
        assert!(err.iter().any(|m| m.contains("issued twice")), "{err:?}");
        // a credential delivered that the ledger does not know, or before it was recorded
        let mut e = events.clone();
        e.push(ev("a", "delivered", Some("ff"), 12));
        e.push(ev("b", "delivered", Some("03"), 15));
        let err = check(&ledgers(records.clone()), &e, 2).unwrap_err();
        assert!(
            err.iter().any(|m| m.contains("not in the ledger")),
            "{err:?}"
        );
        assert!(
            err.iter().any(|m| m.contains("before the ledger")),
            "{err:?}"
        );
        // provisioned twice without going back
        let mut e = events.clone();
        e.push(ev("a", "provisioned", Some("01"), 40));
        let err = check(&ledgers(records.clone()), &e, 2).unwrap_err();
        assert!(
            err.iter().any(|m| m.contains("left provisioning mode 2")),
            "{err:?}"
        );
        // but a reprovisioned server may be provisioned again
        let mut r = records.clone();
        r[0] = record("a", &[("01", 10), ("04", 50)], "Enrolled");
        let mut e = events.clone();
        e.push(ev("a", "reprovisioning", None, 40));
        e.push(ev("a", "delivered", Some("04"), 51));
        e.push(ev("a", "provisioned", Some("04"), 60));
        assert!(check(&ledgers(r), &e, 2).is_ok());
        // runs with a credential the ledger does not hold as current, or is not enrolled
        let mut r = records.clone();
        r[1] = record("b", &[("02", 10), ("03", 20), ("05", 25)], "Claimed");
        let err = check(&ledgers(r.clone()), &events, 2).unwrap_err();
        assert!(err.iter().any(|m| m.contains("current one")), "{err:?}");
        assert!(err.iter().any(|m| m.contains("ledger says")), "{err:?}");
        // a request seen after it is not a state of the server's, and hides nothing
        let mut e = events.clone();
        e.push(ev("b", "repeated", None, 31));
        let err = check(&ledgers(r), &e, 2).unwrap_err();
        assert!(err.iter().any(|m| m.contains("ledger says")), "{err:?}");
        // members that disagree
        let mut l = ledgers(records.clone());
        l[1].records.pop();
        l[1].digest = Some("other".into());
        let err = check(&l, &events, 2).unwrap_err();
        assert!(
            err.iter().any(|m| m.contains("differ in 1 records")),
            "{err:?}"
        );
        assert!(err.iter().any(|m| m.contains("digest of")), "{err:?}");
        // a server never provisioned
        let err = check(&ledgers(records), &events, 3).unwrap_err();
        assert!(err.iter().any(|m| m.contains("2 of 3 servers")), "{err:?}");
    }
}
