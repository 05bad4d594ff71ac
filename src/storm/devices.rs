//! The device models the simulator can run, behind one interface for the scenario loop.

use std::sync::Arc;
use std::time::Duration;

use breakwater_agent::buffer::Buffer as _;
use breakwater_protocol::DeviceId;

use super::diy::DiyFleet;
use super::fleet::{Fleet, FleetCounters};
use super::sparkplug::SparkplugFleet;
use super::verify::{Expected, RecordFormat};

/// How the virtual devices send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceModel {
    /// Breakwater's agent sending logic: batches, credit, resend, application acks.
    Breakwater,
    /// DIY as usually built: one JSON reading per MQTT message, QoS 1, PUBACK = done
    /// (against Mosquitto plus `breakwater-baseline-forwarder`).
    DiyJson,
    /// The same standard clients as `diy-json` (rumqttc, QoS 1, persistent session, PUBACK =
    /// done) against the Breakwater gateway, whose PUBACK means durable: the gateway needs
    /// `[[json_devices]] topic = "devices/{device}/telemetry"`, `format = "object"` (each
    /// message's fields become readings, so the verifier finds its device, epoch and seq).
    JsonMqtt,
    /// Sparkplug B edge nodes (rumqttc, QoS 1, persistent session, PUBACK = done) against the
    /// gateway's host application (`[sparkplug] enabled = true`): NBIRTH/DBIRTH, then DDATA of
    /// `--metrics-per-message` metrics by alias ([`super::sparkplug`]).
    Sparkplug,
}

impl DeviceModel {
    /// How the readings of this model look in Kafka.
    #[must_use]
    pub fn record_format(self) -> RecordFormat {
        match self {
            Self::Breakwater => RecordFormat::Batch,
            Self::DiyJson => RecordFormat::DiyJson,
            Self::JsonMqtt => RecordFormat::JsonMqtt,
            Self::Sparkplug => RecordFormat::Sparkplug,
        }
    }
}

/// A fleet of one model.
#[derive(Debug)]
pub enum Devices {
    Breakwater(Fleet),
    DiyJson(DiyFleet),
    Sparkplug(SparkplugFleet),
}

impl Devices {
    #[must_use]
    pub fn counters(&self) -> &Arc<FleetCounters> {
        match self {
            Self::Breakwater(f) => &f.counters,
            Self::DiyJson(f) => &f.counters,
            Self::Sparkplug(f) => &f.counters,
        }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        match self {
            Self::Breakwater(f) => f.devices.len(),
            Self::DiyJson(f) => f.devices.len(),
            Self::Sparkplug(f) => f.nodes.len(),
        }
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn start(&mut self, range: std::ops::Range<usize>, seed: u64) {
        match self {
            Self::Breakwater(f) => f.start(range, seed),
            Self::DiyJson(f) => f.start(range),
            Self::Sparkplug(f) => f.start(range),
        }
    }

    /// Readings generated so far on device `i`.
    #[must_use]
    pub fn produced(&self, i: usize) -> u64 {
        match self {
            Self::Breakwater(f) => f.devices.get(i).map_or(0, |d| d.produced),
            Self::DiyJson(f) => f.devices.get(i).map_or(0, |d| d.produced),
            Self::Sparkplug(f) => f.nodes.get(i).map_or(0, |d| d.produced),
        }
    }

    /// Readings generated so far, per device.
    #[must_use]
    pub fn produced_each(&self) -> Vec<u64> {
        (0..self.len()).map(|i| self.produced(i)).collect()
    }

    /// Generates `n` more readings on device `i`.
    ///
    /// # Errors
    /// The Breakwater device's buffer refused the append.
    pub async fn produce(&mut self, i: usize, n: u64, now_ms: u64) -> anyhow::Result<()> {
        match self {
            Self::Breakwater(f) => f.produce(i, n, now_ms).await,
            Self::DiyJson(f) => {
                f.produce(i, n);
                Ok(())
            }
            Self::Sparkplug(f) => {
                f.produce(i, n);
                Ok(())
            }
        }
    }

    pub fn cut_all(&self, outage: Duration) -> usize {
        match self {
            Self::Breakwater(f) => f.cut_all(outage),
            Self::DiyJson(f) => f.cut_all(outage),
            Self::Sparkplug(f) => f.cut_all(outage),
        }
    }

    #[must_use]
    pub fn connected(&self) -> usize {
        match self {
            Self::Breakwater(f) => f.connected(),
            Self::DiyJson(f) => f.connected(),
            Self::Sparkplug(f) => f.connected(),
        }
    }

    #[must_use]
    pub fn acked(&self) -> u64 {
        match self {
            Self::Breakwater(f) => f.acked(),
            Self::DiyJson(f) => f.acked(),
            Self::Sparkplug(f) => f.acked(),
        }
    }

    #[must_use]
    pub fn all_acked_up_to(&self, upto: &[u64]) -> bool {
        match self {
            Self::Breakwater(f) => f.all_acked_up_to(upto),
            Self::DiyJson(f) => f.all_acked_up_to(upto),
            Self::Sparkplug(f) => f.all_acked_up_to(upto),
        }
    }

    /// Asks Breakwater senders to send what they hold now (DIY devices publish at once).
    pub fn flush_all(&self) {
        if let Self::Breakwater(f) = self {
            f.flush_all();
        }
    }

    #[must_use]
    pub fn total_produced(&self) -> u64 {
        match self {
            Self::Breakwater(f) => f.total_produced(),
            Self::DiyJson(f) => f.total_produced(),
            Self::Sparkplug(f) => f.total_produced(),
        }
    }

    /// What each device must have delivered.
    #[must_use]
    pub fn expected(&self) -> Vec<Expected> {
        let one = |device: &DeviceId, epoch, produced| Expected {
            device: device.clone(),
            epoch,
            produced,
        };
        match self {
            Self::Breakwater(f) => f
                .devices
                .iter()
                .map(|d| one(&d.id, d.buffer.epoch(), d.produced))
                .collect(),
            Self::DiyJson(f) => f
                .devices
                .iter()
                .map(|d| one(&d.id, d.epoch, d.produced))
                .collect(),
            Self::Sparkplug(f) => f
                .nodes
                .iter()
                .map(|d| one(&d.kafka_id, d.epoch, d.produced))
                .collect(),
        }
    }

    pub async fn shutdown(&mut self, wait: Duration) {
        match self {
            Self::Breakwater(f) => f.shutdown(wait).await,
            Self::DiyJson(f) => f.shutdown(wait).await,
            Self::Sparkplug(f) => f.shutdown(wait).await,
        }
    }
}
