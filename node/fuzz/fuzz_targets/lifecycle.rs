//! Any bytes as a lifecycle event.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = proto::lifecycle::Event::from_json(data) {
        let _ = e.kind();
    }
});
