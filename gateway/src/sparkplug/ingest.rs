//! Sparkplug readings into the gateway's pipeline (sequencer -> spool writer -> Kafka), as
//! batches in the agent's telemetry record format.
//!
//! A Sparkplug source has no epoch or seq of its own that could serve as the protocol's: the
//! gateway gives each device id a random epoch (per gateway process, renewed when the table of
//! epochs is full, see [`MAX_TRACKED`]) and seqs from 1, consecutive over the readings it
//! accepted, so downstream dedupe by `(device, epoch, seq)` and per-device order work as for
//! agents. One message's readings become one batch (several if it has more than the protocol's
//! `max_readings_per_batch`).
//!
//! Hand-off never blocks (the host thread reads the broker): a full writer queue or spool drops
//! the batch, counted in `breakwater_gateway_dropped_batches_total{reason}` with a log line,
//! and the seq is not used, so nothing later is held back as a gap. Sparkplug DATA is QoS 0 in
//! practice: a dropped batch is lost (the edge node has no resend), which is why it is counted.
//! The acks the sequencer produces for these device ids go to `bw/v1/{id}/ack`, which no one
//! subscribes to (harmless: the acks link's filter matches it; see `crate::broker`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use breakwater_protocol::{envelope, Batch, DeviceId, Limits, Reading};
use tokio::sync::mpsc;

use crate::link::now_ms;
use crate::sequencer::{Admit, Sequencer};
use crate::spool::writer::Accepted;
use crate::spool::{Spool, SpoolRecord};
use crate::stats as m;

/// Device ids with an epoch kept at once; when full the table starts over (every device gets
/// a new epoch, which downstream sees as a new epoch: nothing is lost or merged).
pub const MAX_TRACKED: usize = 100_000;

/// Why a batch did not make it into the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    QueueFull,
    SpoolFull,
    ShuttingDown,
    /// The sequencer refused it (cannot happen with the gateway's own seqs; counted anyway).
    Sequencer,
}

impl Dropped {
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::SpoolFull => "spool_full",
            Self::ShuttingDown => "shutting_down",
            Self::Sequencer => "sequencer",
        }
    }
}

/// Where accepted Sparkplug batches go.
pub struct Ingest {
    pub sequencer: Arc<Sequencer>,
    pub spool: Arc<Spool>,
    pub queue: mpsc::Sender<Accepted>,
    pub depth: Arc<AtomicUsize>,
    pub limits: Limits,
    /// device -> (epoch, next seq)
    seqs: HashMap<DeviceId, (u64, u64)>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("tracked", &self.seqs.len())
            .finish_non_exhaustive()
    }
}

impl Ingest {
    #[must_use]
    pub fn new(
        sequencer: Arc<Sequencer>,
        spool: Arc<Spool>,
        queue: mpsc::Sender<Accepted>,
        depth: Arc<AtomicUsize>,
        limits: Limits,
    ) -> Self {
        Self {
            sequencer,
            spool,
            queue,
            depth,
            limits,
            seqs: HashMap::new(),
        }
    }

    /// Hands `readings` of `device` on, in batches of at most `max_readings_per_batch`.
    /// Returns how many readings were accepted; every batch not accepted is counted.
    pub fn submit(&mut self, device: &DeviceId, mut readings: Vec<Reading>) -> usize {
        let mut accepted = 0;
        let max = self.limits.max_readings_per_batch.max(1);
        while !readings.is_empty() {
            let rest = if readings.len() > max {
                readings.split_off(max)
            } else {
                Vec::new()
            };
            let n = readings.len();
            match self.submit_batch(device, readings) {
                Ok(()) => accepted += n,
                Err(why) => {
                    metrics::counter!(m::DROPPED_BATCHES, "reason" => why.reason()).increment(1);
                    metrics::counter!(m::SPARKPLUG_DROPPED_READINGS, "reason" => why.reason())
                        .increment(n as u64);
                }
            }
            readings = rest;
        }
        accepted
    }

    fn submit_batch(&mut self, device: &DeviceId, readings: Vec<Reading>) -> Result<(), Dropped> {
        if !self.seqs.contains_key(device) && self.seqs.len() >= MAX_TRACKED {
            self.seqs.clear();
        }
        let (epoch, first_seq) = *self
            .seqs
            .entry(device.clone())
            .or_insert_with(|| (rand::random::<u64>(), 1));
        let batch = Batch {
            device: device.clone(),
            epoch,
            first_seq,
            readings,
        };
        let last = batch.last_seq();
        let Admit::Accept(b) = self.sequencer.admit(batch) else {
            return Err(Dropped::Sequencer);
        };
        let record = SpoolRecord::from_batch(&b, envelope::encode_batch(&b), now_ms());
        let size = record.size();
        let readings = b.readings.len() as u64;
        if !self.spool.reserve(size) {
            self.sequencer.reject(device, epoch, first_seq);
            return Err(Dropped::SpoolFull);
        }
        self.depth.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.queue.try_send(Accepted {
            device: device.clone(),
            record,
            size,
        }) {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            self.spool.release(size);
            self.sequencer.reject(device, epoch, first_seq);
            return Err(match e {
                mpsc::error::TrySendError::Full(_) => Dropped::QueueFull,
                mpsc::error::TrySendError::Closed(_) => Dropped::ShuttingDown,
            });
        }
        metrics::counter!(m::ACCEPTED_READINGS).increment(readings);
        if let Some(s) = self.seqs.get_mut(device) {
            s.1 = last + 1;
        }
        Ok(())
    }
}
