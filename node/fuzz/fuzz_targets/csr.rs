//! Any string as a CSR in PEM from a server, checked for an identity with upstream's deny list.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static DENY: OnceLock<Vec<regex::Regex>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let deny = DENY.get_or_init(|| {
        [r"\.privileged.mcollective$", r"\.privileged.choria$", r"\.mcollective$", r"\.choria$"]
            .iter()
            .filter_map(|r| regex::Regex::new(r).ok())
            .collect()
    });
    let pem = String::from_utf8_lossy(data);
    let _ = node::csr::validate(&pem, "n1.example.net", deny);
    let _ = node::ca::describe(&pem);
});
