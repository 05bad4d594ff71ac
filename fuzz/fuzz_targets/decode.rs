//! Fuzzes the envelope decoder with untrusted bytes: it must never panic, and whatever it
//! accepts must survive a re-encode unchanged (the canonical encoding of a decoded message
//! decodes to the same message and re-encodes to the same bytes).
#![no_main]

use breakwater_protocol::{envelope, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = envelope::decode_with(data, &Limits::DEFAULT) {
        let canonical = envelope::encode(&msg);
        let again = envelope::decode_with(&canonical, &Limits::DEFAULT).expect("re-decodes");
        assert_eq!(again, msg);
        assert_eq!(envelope::encode(&again), canonical);
    }
});
