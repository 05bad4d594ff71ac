//! Encodes and decodes the codec benchmark's 100-reading batch in a loop, in one format.
//!
//! For instruction counts that do not depend on machine load (the criterion benchmark's
//! wall-clock figures do):
//! `valgrind --tool=callgrind target/release/examples/codec_loop postcard 2000` (and `json`).
use breakwater_protocol::{envelope, json, Batch, DeviceId, Limits, Reading, Value};

fn sample_batch() -> Batch {
    let metrics = [
        "temp",
        "pressure",
        "vibration_rms",
        "motor_rpm",
        "door_open",
        "state",
    ];
    let readings = (0..100u32)
        .map(|i| {
            let metric = metrics[i as usize % metrics.len()];
            let value = match metric {
                "motor_rpm" => Value::I64(1_450 + i64::from(i)),
                "door_open" => Value::Bool(i % 2 == 0),
                "state" => Value::Str("running".into()),
                _ => Value::F64(20.0 + f64::from(i) * 0.173),
            };
            Reading::new(metric, value, 1_764_115_200_000 + u64::from(i) * 100)
        })
        .collect();
    Batch {
        device: DeviceId::parse("press-01").expect("valid"),
        epoch: 0x1d2c_3b4a_5968_7786,
        first_seq: 1_000_001,
        readings,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let format = args.next().unwrap_or_else(|| "postcard".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2_000);
    let batch = sample_batch();
    let limits = Limits::DEFAULT;
    let mut total = 0usize;
    for _ in 0..n {
        let b = match format.as_str() {
            "json" => json::decode_batch(json::encode_batch(&batch).as_bytes(), &limits),
            _ => envelope::decode_batch(&envelope::encode_batch(&batch), &limits),
        };
        total += b.map_or(0, |b| b.readings.len());
    }
    println!("{format}: {total} readings");
}
