//! Decodes one 100-reading batch in a loop; for profiling the decoder under callgrind.
use breakwater_protocol::{envelope, Batch, DeviceId, Limits, Reading, Value};

fn main() {
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
    let batch = Batch {
        device: DeviceId::parse("press-01").expect("valid"),
        epoch: 0x1d2c_3b4a_5968_7786,
        first_seq: 1_000_001,
        readings,
    };
    let bytes = envelope::encode_batch(&batch);
    let mut n = 0usize;
    for _ in 0..2_000 {
        let b = envelope::decode_batch(&bytes, &Limits::DEFAULT).expect("decodes");
        n += b.readings.len();
    }
    println!("{n}");
}
