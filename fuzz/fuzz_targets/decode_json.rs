//! Fuzzes the JSON decoders: never panic; an accepted batch or floor round-trips through both
//! encodings.
#![no_main]

use breakwater_protocol::{envelope, json, kafka::FleetEvent, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = json::decode_batch(data, &Limits::DEFAULT) {
        let text = json::encode_batch(&batch);
        let back = json::decode_batch(text.as_bytes(), &Limits::DEFAULT).expect("re-decodes");
        assert_eq!(back, batch);
        let bytes = envelope::encode_batch(&batch);
        assert_eq!(envelope::decode_batch(&bytes, &Limits::DEFAULT).expect("postcard"), batch);
    }
    let _ = json::decode_ack(data);
    let _ = json::decode_status(data);
    if let Ok(floor) = json::decode_floor(data) {
        let back = json::decode_floor(json::encode_floor(&floor).as_bytes()).expect("re-decodes");
        assert_eq!(back, floor);
        assert_eq!(envelope::decode_floor(&envelope::encode_floor(&floor)).expect("postcard"), floor);
    }
    let _ = FleetEvent::decode(data);
});
