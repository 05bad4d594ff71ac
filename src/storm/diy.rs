//! The do-it-yourself device model (`--device-model diy-json`): what a device typically looks
//! like when users wire telemetry to Mosquitto themselves. Each reading is its own MQTT message
//! on `devices/{device}/telemetry`, a JSON object carrying the device, a boot epoch and a
//! per-device counter ([`DiyReading`]), published at QoS 1 with rumqttc. A reading is done when
//! Mosquitto's PUBACK arrives; nothing is kept on the device after that.
//!
//! What the client does, as such clients usually do:
//! * the in-flight window is rumqttc's `inflight` setting ([`DIY_INFLIGHT`]); the application
//!   blocks on `publish` when the window and the small request channel are full;
//! * a persistent session (`clean_session = false`, client id = device id), so rumqttc
//!   republishes unacked messages after a reconnect (with a clean session it would drop them);
//! * reconnect after a fixed, doubling backoff (`--backoff-initial-ms` up to
//!   `--backoff-max-ms`), reset on CONNACK; no jitter.
//!
//! A network cut (storm) drops the socket (`EventLoop::clean`, which moves unacked messages to
//! rumqttc's pending queue) and keeps the device offline for the outage.
//!
//! How the simulator knows which reading a PUBACK is for: the application task pushes each seq
//! on a per-device FIFO before `publish`; rumqttc reports `Outgoing::Publish(pkid)` in request
//! order, so a packet id not currently mapped takes the next seq from the FIFO, and a packet id
//! already mapped is a republish after a reconnect. A PUBACK unmaps its packet id.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use breakwater_protocol::DeviceId;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::fleet::FleetCounters;
use crate::baseline::diy_topic;

/// rumqttc's in-flight window for the DIY devices (QoS 1 publishes awaiting PUBACK).
pub const DIY_INFLIGHT: u16 = 100;

/// Capacity of rumqttc's request channel: small, so that `publish` blocks the application
/// rather than queueing readings where a reconnect with a lost session would drop them.
const REQUEST_CAP: usize = 10;

/// One DIY reading as published (the MQTT payload) and as the forwarder writes it to Kafka
/// (the record value, unchanged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiyReading {
    pub device: String,
    /// Chosen at boot (milliseconds since the Unix epoch), so a restarted device's counter
    /// does not collide with its previous life.
    pub epoch: u64,
    /// Per-device counter from 1.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    pub metric: String,
    pub value: f64,
}

/// What the two tasks of one device share.
#[derive(Debug)]
struct DeviceState {
    connected: AtomicBool,
    /// Readings PUBACKed by Mosquitto.
    acked: AtomicU64,
    /// Seqs handed to `publish` but not yet written by the event loop, oldest first.
    unsent: Mutex<VecDeque<u64>>,
}

/// One DIY device.
#[derive(Debug)]
pub struct DiyDevice {
    pub id: DeviceId,
    pub epoch: u64,
    /// Readings generated so far.
    pub produced: u64,
    produced_tx: watch::Sender<u64>,
    cut_tx: Option<mpsc::Sender<Duration>>,
    state: Arc<DeviceState>,
}

impl DiyDevice {
    /// Readings PUBACKed so far.
    #[must_use]
    pub fn acked(&self) -> u64 {
        self.state.acked.load(Ordering::Relaxed)
    }
}

/// Connection settings of the DIY fleet.
#[derive(Debug, Clone)]
pub struct DiyLink {
    pub host: String,
    pub port: u16,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

/// The DIY fleet.
#[derive(Debug)]
pub struct DiyFleet {
    pub devices: Vec<DiyDevice>,
    pub counters: Arc<FleetCounters>,
    link: DiyLink,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl DiyFleet {
    /// Builds (does not start) the devices; `epoch` is their boot epoch.
    #[must_use]
    pub fn new(
        ids: &[DeviceId],
        epoch: u64,
        link: DiyLink,
        counters: Arc<FleetCounters>,
        cancel: CancellationToken,
    ) -> Self {
        let devices = ids
            .iter()
            .map(|id| DiyDevice {
                id: id.clone(),
                epoch,
                produced: 0,
                produced_tx: watch::channel(0).0,
                cut_tx: None,
                state: Arc::new(DeviceState {
                    connected: AtomicBool::new(false),
                    acked: AtomicU64::new(0),
                    unsent: Mutex::new(VecDeque::new()),
                }),
            })
            .collect();
        Self {
            devices,
            counters,
            link,
            cancel,
            tasks: JoinSet::new(),
        }
    }

    /// Starts devices `range`: each connects at once and publishes what is generated for it.
    pub fn start(&mut self, range: std::ops::Range<usize>) {
        for i in range {
            let Some(d) = self.devices.get_mut(i) else {
                continue;
            };
            if d.cut_tx.is_some() {
                continue;
            }
            let mut opts = MqttOptions::new(d.id.as_str(), self.link.host.clone(), self.link.port);
            opts.set_clean_session(false);
            opts.set_keep_alive(Duration::from_secs(30));
            opts.set_inflight(DIY_INFLIGHT);
            let (client, eventloop) = AsyncClient::new(opts, REQUEST_CAP);
            let (cut_tx, cut_rx) = mpsc::channel(1);
            d.cut_tx = Some(cut_tx);
            let cancel = self.cancel.child_token();
            self.tasks.spawn(publish_loop(
                client,
                d.id.clone(),
                d.epoch,
                d.produced_tx.subscribe(),
                Arc::clone(&d.state),
                cancel.clone(),
            ));
            self.tasks.spawn(
                Connection {
                    eventloop,
                    state: Arc::clone(&d.state),
                    counters: Arc::clone(&self.counters),
                    link: self.link.clone(),
                    cut_rx,
                    cancel,
                }
                .run(),
            );
        }
    }

    /// Generates `n` more readings on device `i` (published by its application task).
    pub fn produce(&mut self, i: usize, n: u64) {
        if let Some(d) = self.devices.get_mut(i) {
            d.produced += n;
            d.produced_tx.send_replace(d.produced);
        }
    }

    /// Cuts every started device's connection for `outage`.
    pub fn cut_all(&self, outage: Duration) -> usize {
        self.devices
            .iter()
            .filter_map(|d| d.cut_tx.as_ref())
            .filter(|tx| tx.try_send(outage).is_ok())
            .count()
    }

    #[must_use]
    pub fn connected(&self) -> usize {
        self.devices
            .iter()
            .filter(|d| d.state.connected.load(Ordering::Relaxed))
            .count()
    }

    #[must_use]
    pub fn acked(&self) -> u64 {
        self.devices.iter().map(DiyDevice::acked).sum()
    }

    /// True when every device has at least `upto[i]` readings PUBACKed.
    #[must_use]
    pub fn all_acked_up_to(&self, upto: &[u64]) -> bool {
        self.devices.iter().zip(upto).all(|(d, &u)| d.acked() >= u)
    }

    #[must_use]
    pub fn total_produced(&self) -> u64 {
        self.devices.iter().map(|d| d.produced).sum()
    }

    /// Stops every device (the connection is dropped, as at power-off), waiting at most `wait`.
    pub async fn shutdown(&mut self, wait: Duration) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(wait, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }
}

/// The device's application: publishes reading `seq` once it has been generated, in order,
/// blocking while rumqttc's window and request channel are full.
async fn publish_loop(
    client: AsyncClient,
    device: DeviceId,
    epoch: u64,
    mut produced: watch::Receiver<u64>,
    state: Arc<DeviceState>,
    cancel: CancellationToken,
) {
    let topic = diy_topic(&device);
    let mut seq = 1u64;
    loop {
        let due = tokio::select! {
            () = cancel.cancelled() => return,
            r = produced.wait_for(|&p| p >= seq) => r.is_ok(),
        };
        if !due {
            return;
        }
        #[allow(clippy::cast_precision_loss)]
        let reading = DiyReading {
            device: device.as_str().to_owned(),
            epoch,
            seq,
            ts: breakwater_agent::now_ms(),
            metric: if seq.is_multiple_of(2) {
                "temp"
            } else {
                "pressure"
            }
            .to_owned(),
            value: 20.0 + (seq % 100) as f64 * 0.1,
        };
        let Ok(payload) = serde_json::to_vec(&reading) else {
            return;
        };
        if let Ok(mut q) = state.unsent.lock() {
            q.push_back(seq);
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            r = client.publish(topic.as_str(), QoS::AtLeastOnce, false, payload) => {
                if r.is_err() {
                    return;
                }
            }
        }
        seq += 1;
    }
}

/// The device's MQTT connection: rumqttc's event loop plus the reconnect policy.
struct Connection {
    eventloop: EventLoop,
    state: Arc<DeviceState>,
    counters: Arc<FleetCounters>,
    link: DiyLink,
    cut_rx: mpsc::Receiver<Duration>,
    cancel: CancellationToken,
}

impl Connection {
    async fn run(mut self) {
        // Packet id -> (seq, first written).
        let mut inflight: HashMap<u16, (u64, Instant)> = HashMap::new();
        let mut backoff = self.link.backoff_initial;
        let mut was_connected = false;
        let mut attempting = true;
        loop {
            if attempting {
                self.counters
                    .connect_attempts_total
                    .fetch_add(1, Ordering::Relaxed);
                attempting = false;
            }
            // Cancelling `poll` is acceptable here: it only happens at shutdown or for a
            // network cut, after which the connection is dropped and `clean` moves every
            // unacked publish to the pending queue.
            let ev = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return,
                Some(outage) = self.cut_rx.recv() => {
                    self.eventloop.clean();
                    self.down();
                    if !sleep_unless_cancelled(&self.cancel, outage).await {
                        return;
                    }
                    attempting = true;
                    continue;
                }
                ev = self.eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if was_connected && !ack.session_present {
                        // rumqttc dropped its pending publishes: those readings are gone.
                        tracing::warn!("session lost on reconnect; unacked readings dropped");
                        inflight.clear();
                    }
                    was_connected = true;
                    backoff = self.link.backoff_initial;
                    self.state.connected.store(true, Ordering::Relaxed);
                    self.counters.connects_total.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    self.counters
                        .on_written(pkid, &self.state.unsent, &mut inflight);
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some((_, sent)) = inflight.remove(&ack.pkid) {
                        self.state.acked.fetch_add(1, Ordering::Relaxed);
                        self.counters.record_latency(sent.elapsed());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "connection failed");
                    self.down();
                    if !sleep_unless_cancelled(&self.cancel, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(self.link.backoff_max);
                    attempting = true;
                }
            }
        }
    }

    fn down(&self) {
        if self.state.connected.swap(false, Ordering::Relaxed) {
            self.counters
                .disconnects_total
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sleeps for `d`; false if cancelled meanwhile.
async fn sleep_unless_cancelled(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reading_json_round_trips() {
        let r = DiyReading {
            device: "press-01".into(),
            epoch: 7,
            seq: 3,
            ts: 1_764_115_200_000,
            metric: "temp".into(),
            value: 21.5,
        };
        let bytes = serde_json::to_vec(&r).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"device":"press-01","epoch":7,"seq":3,"ts":1764115200000,"metric":"temp","value":21.5}"#
        );
        assert_eq!(serde_json::from_slice::<DiyReading>(&bytes).unwrap(), r);
    }
}
