//! Fuzzes the gateway's Sparkplug B payload decoder (`gateway/src/sparkplug/proto.rs`, included
//! as it is: the gateway crate itself pulls librdkafka and rumqttd, which a fuzz build does not
//! need) with untrusted bytes: it must never panic, and whatever it accepts must re-encode to
//! bytes that decode and re-encode to the same bytes (compared as bytes: a NaN metric value is
//! not equal to itself).
#![no_main]

#[path = "../../gateway/src/sparkplug/proto.rs"]
#[allow(dead_code)]
mod proto;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = proto::decode(data) {
        let canonical = proto::encode(&p);
        let again = proto::decode(&canonical).expect("re-decodes");
        assert_eq!(proto::encode(&again), canonical);
        for m in &p.metrics {
            let _ = m.datatype.map(proto::datatype::label);
        }
    }
});
