//! Codec benchmark: encode + decode of a 100-reading batch, postcard envelope vs JSON.
//!
//! `cargo bench --bench codec` prints criterion's timings (throughput in readings/s) and, first,
//! the encoded size of the same batch in both formats as bytes per reading.

use breakwater_protocol::{envelope, json, Batch, DeviceId, Limits, Reading, Value};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

const READINGS: usize = 100;

/// A realistic batch: a handful of metrics, mostly floats, some integers, flags and states.
fn sample_batch() -> Batch {
    let metrics = [
        "temp",
        "pressure",
        "vibration_rms",
        "motor_rpm",
        "door_open",
        "state",
    ];
    let readings = (0..READINGS)
        .map(|i| {
            let metric = metrics[i % metrics.len()];
            let value = match metric {
                "motor_rpm" => Value::I64(1_450 + i as i64),
                "door_open" => Value::Bool(i % 2 == 0),
                "state" => Value::Str("running".into()),
                _ => Value::F64(20.0 + (i as f64) * 0.173),
            };
            Reading::new(metric, value, 1_764_115_200_000 + i as u64 * 100)
        })
        .collect();
    Batch {
        device: DeviceId::parse("press-01").expect("valid id"),
        epoch: 0x1d2c_3b4a_5968_7786,
        first_seq: 1_000_001,
        readings,
    }
}

fn codec(c: &mut Criterion) {
    let batch = sample_batch();
    let limits = Limits::DEFAULT;
    let pc = envelope::encode_batch(&batch);
    let js = json::encode_batch(&batch);
    println!(
        "codec sizes: postcard {} B ({:.1} B/reading), json {} B ({:.1} B/reading), ratio {:.1}%",
        pc.len(),
        pc.len() as f64 / READINGS as f64,
        js.len(),
        js.len() as f64 / READINGS as f64,
        100.0 * pc.len() as f64 / js.len() as f64
    );

    let mut g = c.benchmark_group("codec_100_readings");
    g.throughput(Throughput::Elements(READINGS as u64));
    g.bench_function("postcard_encode_decode", |b| {
        b.iter(|| {
            let bytes = envelope::encode_batch(black_box(&batch));
            envelope::decode_batch(black_box(&bytes), &limits).expect("decodes")
        });
    });
    g.bench_function("json_encode_decode", |b| {
        b.iter(|| {
            let text = json::encode_batch(black_box(&batch));
            json::decode_batch(black_box(text.as_bytes()), &limits).expect("decodes")
        });
    });
    g.finish();

    let mut g = c.benchmark_group("codec_100_readings_parts");
    g.throughput(Throughput::Elements(READINGS as u64));
    g.bench_function("postcard_encode", |b| {
        b.iter(|| envelope::encode_batch(black_box(&batch)));
    });
    g.bench_function("postcard_decode", |b| {
        b.iter(|| envelope::decode_batch(black_box(&pc), &limits).expect("decodes"));
    });
    g.bench_function("json_encode", |b| {
        b.iter(|| json::encode_batch(black_box(&batch)));
    });
    g.bench_function("json_decode", |b| {
        b.iter(|| json::decode_batch(black_box(js.as_bytes()), &limits).expect("decodes"));
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
