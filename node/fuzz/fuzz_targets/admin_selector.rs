//! Any lines as the fields of an admin selector (identities, regex, facts, states, expiry),
//! and the resulting selector run over a ledger record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::grpc::admin::Selector;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let mut field = || lines.next().unwrap_or_default().to_string();
    let list = |s: String| -> Vec<String> {
        s.split(',').filter(|x| !x.is_empty()).map(String::from).collect()
    };
    let selector = Selector {
        identities: list(field()),
        identity_regex: field(),
        facts: list(field()),
        all: field() == "all",
        states: list(field()),
        expiring_within_seconds: field().parse().unwrap_or(0),
    };
    if let Ok(s) = node::admin::select::Selector::parse(Some(selector), true) {
        let record: Result<raft::Record, _> = serde_json::from_value(serde_json::json!({
            "identity": "n1.example.net", "state": "Enrolled", "owner": null,
            "lease_until_ms": 0, "attempts": 1, "credential": null, "config_digest": null,
            "last_error": null, "first_seen_ms": 1, "updated_ms": 1, "history": [],
            "revoked": [], "facts": {"os": field()},
        }));
        if let Ok(r) = record {
            let _ = s.matches(&r);
        }
    }
});
