//! Buffer throughput: durable appends with group commit, and ack-deletes.
//!
//! `cargo bench -p breakwater-agent --bench buffer -- --warm-up-time 1 --measurement-time 3`
//! Goal: at least 500,000 readings/s appended durably (fsync'd transactions).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use breakwater_agent::buffer::{Buffer, FullPolicy, RedbBuffer, RedbOptions};
use breakwater_protocol::Reading;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn reading(i: u64) -> Reading {
    Reading::new("temperature", 21.5 + (i % 10) as f64, 1_764_115_200_000 + i)
}

fn open(dir: &std::path::Path) -> Arc<RedbBuffer> {
    Arc::new(
        RedbBuffer::open(
            dir,
            RedbOptions {
                max_bytes: 1 << 40,
                policy: FullPolicy::Block,
                commit_max_readings: 10_000,
            },
        )
        .unwrap(),
    )
}

fn appends(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("append_durable");
    // (concurrent writers, readings per append call, calls per writer per iteration)
    for (writers, per_call, calls) in [(64usize, 100usize, 4usize), (256, 1, 20), (1, 1_000, 10)] {
        let total = writers * per_call * calls;
        g.throughput(Throughput::Elements(total as u64));
        g.bench_function(format!("{writers}_writers_x_{per_call}_readings"), |b| {
            let dir = tempfile::tempdir().unwrap();
            let buf = open(dir.path());
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let mut set = tokio::task::JoinSet::new();
                        for w in 0..writers {
                            let buf = buf.clone();
                            set.spawn(async move {
                                for k in 0..calls {
                                    let base = ((w * calls + k) * per_call) as u64;
                                    let rs = (base..base + per_call as u64).map(reading).collect();
                                    buf.append(rs).await.unwrap();
                                }
                            });
                        }
                        while set.join_next().await.is_some() {}
                    }
                    let elapsed = start.elapsed();
                    // Keep the file from growing without bound across samples (not timed).
                    let last = buf.stats().next_seq - 1;
                    buf.ack(buf.epoch(), last).await.unwrap();
                    elapsed
                })
            });
        });
    }
    g.finish();
}

fn ack_deletes(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("ack_delete");
    const N: u64 = 20_000;
    const STEP: u64 = 500; // one ack per 500-reading batch, as the sender does
    g.throughput(Throughput::Elements(N));
    g.bench_function("acks_of_500", |b| {
        let dir = tempfile::tempdir().unwrap();
        let buf = open(dir.path());
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let first = buf.stats().next_seq;
                    for k in 0..N / 1_000 {
                        buf.append((k * 1_000..(k + 1) * 1_000).map(reading).collect())
                            .await
                            .unwrap();
                    }
                    let start = Instant::now();
                    let mut upto = first - 1;
                    while upto < first - 1 + N {
                        upto += STEP;
                        buf.ack(buf.epoch(), upto).await.unwrap();
                    }
                    total += start.elapsed();
                    assert_eq!(buf.stats().readings, 0);
                }
                total
            })
        });
    });
    g.finish();
}

criterion_group!(benches, appends, ack_deletes);
criterion_main!(benches);
