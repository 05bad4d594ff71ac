//! Acks to devices, and the backpressure they carry.
//!
//! An ack is published on `bw/v1/{device}/ack` only after the readings it covers are durable
//! (spool fsync or Kafka delivery, per ack mode). It is cumulative (`upto_seq`), so a lost ack is
//! healed by the next one or by re-acking a resent duplicate.
//!
//! Backpressure: [`Pressure::level`] is the fuller of the spool-writer queue and the spool
//! (0..1). Credit falls linearly from `max_credit` to `min_credit` with it, and above
//! `retry_after_pressure` acks carry a `retry_after_ms` rising to `max_retry_after_ms`. At the
//! bound (queue or spool full) batches are refused, so nothing more is acked: devices keep their
//! data on their own disks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use breakwater_protocol::{envelope, Ack, DeviceId, Topic};
use rumqttd::local::LinkTx;
use tokio::sync::mpsc;
use tracing::{error, info};

use crate::config::AckConfig;
use crate::spool::Spool;
use crate::stats as m;

/// How full the gateway is.
#[derive(Debug)]
pub struct Pressure {
    pub queue_depth: Arc<AtomicUsize>,
    pub queue_capacity: usize,
    pub spool: Arc<Spool>,
}

impl Pressure {
    /// 0 (idle) ..= 1 (full).
    #[must_use]
    pub fn level(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let q = self.queue_depth.load(Ordering::Relaxed) as f64 / self.queue_capacity as f64;
        #[allow(clippy::cast_precision_loss)]
        let s = self.spool.bytes() as f64 / self.spool.max_bytes() as f64;
        q.max(s).clamp(0.0, 1.0)
    }
}

/// Credit and retry hint for a pressure level.
#[must_use]
pub fn hints(cfg: &AckConfig, level: f64) -> (u32, Option<u32>) {
    let level = level.clamp(0.0, 1.0);
    let span = f64::from(cfg.max_credit - cfg.min_credit);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let credit = cfg.max_credit - (span * level).round() as u32;
    let retry = if level >= cfg.retry_after_pressure && cfg.max_retry_after_ms > 0 {
        let over = if cfg.retry_after_pressure >= 1.0 {
            1.0
        } else {
            (level - cfg.retry_after_pressure) / (1.0 - cfg.retry_after_pressure)
        };
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ms = (f64::from(cfg.max_retry_after_ms) * over).round().max(1.0) as u32;
        Some(ms)
    } else {
        None
    };
    (credit.max(cfg.min_credit), retry)
}

#[derive(Debug)]
pub struct AckRequest {
    pub device: DeviceId,
    pub epoch: u64,
    pub upto: u64,
    /// When it was queued (for `breakwater_gateway_stage_seconds{stage="ack_queue"}`).
    pub queued: Instant,
}

/// Cheap handle to queue acks; never blocks.
#[derive(Debug, Clone)]
pub struct Acker {
    tx: mpsc::Sender<AckRequest>,
}

impl Acker {
    #[must_use]
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<AckRequest>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx }, rx)
    }

    /// Queues an ack; when the queue is full it is dropped and counted (the device resends its
    /// unacked batches and gets re-acked).
    pub fn ack(&self, device: DeviceId, epoch: u64, upto: u64) {
        if self
            .tx
            .try_send(AckRequest {
                device,
                epoch,
                upto,
                queued: Instant::now(),
            })
            .is_err()
        {
            metrics::counter!(m::ACKS_DROPPED, "reason" => "queue_full").increment(1);
        }
    }
}

/// Publishes queued acks through the broker link, on its own thread (publishing may block
/// briefly on the router's channel). Returns when every [`Acker`] is dropped.
///
/// If the broker link is gone (a publish fails), acks can never be sent again: the gateway is
/// failed through `health` ([`crate::http::Health::fail`]) and the thread ends.
///
/// A durable notification of a standard client's device ([`crate::standard::Tracks`]) sends the
/// PUBACKs it covers instead of an agent ack.
pub fn spawn_publisher(
    mut link: LinkTx,
    mut rx: mpsc::Receiver<AckRequest>,
    pressure: Arc<Pressure>,
    cfg: AckConfig,
    health: Arc<crate::http::Health>,
    standard: Arc<crate::standard::Tracks>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("bw-ack".into())
        .spawn(move || {
            let mut buf = Vec::with_capacity(1024);
            while rx.blocking_recv_many(&mut buf, 1024) > 0 {
                let level = pressure.level();
                metrics::gauge!(m::PRESSURE).set(level);
                let (credit, retry_after_ms) = hints(&cfg, level);
                coalesce(&mut buf);
                for req in buf.drain(..) {
                    if let Some(tokens) = standard.durable(&req.device, req.epoch, req.upto) {
                        for token in tokens {
                            if let Err(e) = link.puback(token) {
                                error!(error = %e, "PUBACK failed: broker link gone");
                                health.fail("the acks link to the embedded broker is gone");
                                return;
                            }
                            metrics::counter!(m::STANDARD_PUBACKS).increment(1);
                        }
                        continue;
                    }
                    let ack = Ack {
                        device: req.device,
                        epoch: req.epoch,
                        upto_seq: req.upto,
                        credit,
                        retry_after_ms,
                    };
                    let topic = Topic::ack(&ack.device);
                    if let Err(e) = link.publish(topic, envelope::encode_ack(&ack)) {
                        error!(error = %e, "ack publish failed: broker link gone");
                        metrics::counter!(m::ACKS_DROPPED, "reason" => "publish_error")
                            .increment(1);
                        health.fail("the acks link to the embedded broker is gone");
                        return;
                    }
                    metrics::counter!(m::ACKS_SENT).increment(1);
                    metrics::histogram!(m::STAGE_SECONDS, "stage" => "ack_queue")
                        .record(req.queued.elapsed().as_secs_f64());
                }
            }
            info!("ack publisher stopped");
        })
}

/// Keeps one ack per (device, epoch): the highest. Acks are cumulative, so the others say
/// nothing more; this saves the router one publish per dropped ack under load.
fn coalesce(buf: &mut Vec<AckRequest>) {
    if buf.len() < 2 {
        return;
    }
    let mut best: std::collections::HashMap<(DeviceId, u64), u64> =
        std::collections::HashMap::with_capacity(buf.len());
    for r in buf.iter() {
        let e = best.entry((r.device.clone(), r.epoch)).or_insert(r.upto);
        *e = (*e).max(r.upto);
    }
    buf.retain(|r| {
        let key = (r.device.clone(), r.epoch);
        if best.get(&key) == Some(&r.upto) {
            best.remove(&key);
            true
        } else {
            false
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesce_keeps_the_highest_per_device_epoch() {
        let d = |s: &str| DeviceId::parse(s).unwrap();
        let r = |dev: &str, epoch, upto| AckRequest {
            device: d(dev),
            epoch,
            upto,
            queued: Instant::now(),
        };
        let mut v = vec![
            r("a", 1, 5),
            r("b", 1, 3),
            r("a", 1, 9),
            r("a", 2, 1),
            r("a", 1, 9),
        ];
        coalesce(&mut v);
        let got: Vec<_> = v
            .iter()
            .map(|x| (x.device.as_str().to_owned(), x.epoch, x.upto))
            .collect();
        assert_eq!(
            got,
            vec![("b".into(), 1, 3), ("a".into(), 1, 9), ("a".into(), 2, 1)]
        );
    }

    #[test]
    fn credit_falls_and_retry_rises_with_pressure() {
        let cfg = AckConfig::default();
        assert_eq!(hints(&cfg, 0.0), (cfg.max_credit, None));
        let (c_half, r_half) = hints(&cfg, 0.6);
        assert!(c_half < cfg.max_credit && c_half > cfg.min_credit);
        assert!(r_half.is_some());
        let (c_full, r_full) = hints(&cfg, 1.0);
        assert_eq!(c_full, cfg.min_credit);
        assert_eq!(r_full, Some(cfg.max_retry_after_ms));
        assert!(r_half < r_full);
    }
}
