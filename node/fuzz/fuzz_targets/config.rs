//! Any string as the provisioner's configuration file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = node::config::Config::parse(text, std::path::Path::new("fuzz.yaml"));
        let _ = node::config::parse_duration(text);
    }
});
