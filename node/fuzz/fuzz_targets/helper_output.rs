//! Any bytes as what a helper printed on stdout.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = node::helper::parse_response(data);
});
