//! Any string as a provisioning JWT, checked against upstream's RS256 signer and an ed25519 key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node::jwt::JwtVerifier;
use std::sync::OnceLock;

static VERIFIERS: OnceLock<Vec<JwtVerifier>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let verifiers = VERIFIERS.get_or_init(|| {
        let rsa = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../proto/testdata/fixtures/provisioning-signer.pem"
        ));
        let mut v: Vec<JwtVerifier> = JwtVerifier::from_pem(rsa).into_iter().collect();
        v.extend(JwtVerifier::from_config(&"ab".repeat(32)));
        v
    });
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    for v in verifiers {
        let _ = v.verify(token);
    }
});
