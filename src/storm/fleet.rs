//! The virtual fleet: N devices in one process, each the agent's real [`DeviceSender`] over an
//! in-memory buffer, fed by a generator at a fixed rate, observed through the sender's events.
//!
//! Why in-memory buffers: the simulator measures the gateway and the sending logic (credit,
//! resend, backoff), not a device's flash. 10,000 redb files (one per device, each with its own
//! fsync) would measure this machine's disk and hit the open-files limit long before the
//! gateway. The durable buffer has its own benchmark (`cargo bench -p breakwater-agent`).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use breakwater_agent::buffer::{Buffer, FullPolicy, MemoryBuffer};
use breakwater_agent::config::SenderConfig;
use breakwater_agent::sender::{DeviceSender, LinkOptions, SenderEvent, SenderHandle};
use breakwater_protocol::{DeviceId, Reading, Value};
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

/// Counters shared by every device's event sink. Cheap atomics; the histogram is behind a
/// mutex that is held for one `record` call.
#[derive(Debug)]
pub struct FleetCounters {
    pub connects_total: AtomicU64,
    pub connect_attempts_total: AtomicU64,
    pub disconnects_total: AtomicU64,
    pub resends_total: AtomicU64,
    pub ack_timeouts_total: AtomicU64,
    pub ack_latency_us: Mutex<Histogram<u64>>,
}

impl FleetCounters {
    pub(crate) fn new() -> Self {
        Self {
            connects_total: AtomicU64::new(0),
            connect_attempts_total: AtomicU64::new(0),
            disconnects_total: AtomicU64::new(0),
            resends_total: AtomicU64::new(0),
            ack_timeouts_total: AtomicU64::new(0),
            // 1 us .. 10 min, 3 significant digits.
            ack_latency_us: Mutex::new(
                Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
                    Histogram::new(3).unwrap_or_else(|_| unreachable!("3 sigfigs is valid"))
                }),
            ),
        }
    }

    /// Records one send-to-ack latency.
    pub(crate) fn record_latency(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        if let Ok(mut h) = self.ack_latency_us.lock() {
            h.saturating_record(us);
        }
    }

    /// A rumqttc device model wrote a publish with packet id `pkid`: a new write takes the
    /// next mark of `unsent` (the FIFO its application queued) into `inflight`; a write of an
    /// id already in flight is a resend.
    pub(crate) fn on_written(
        &self,
        pkid: u16,
        unsent: &Mutex<VecDeque<u64>>,
        inflight: &mut HashMap<u16, (u64, Instant)>,
    ) {
        match inflight.entry(pkid) {
            Entry::Occupied(_) => {
                self.resends_total.fetch_add(1, Ordering::Relaxed);
            }
            Entry::Vacant(slot) => {
                let next = unsent.lock().ok().and_then(|mut q| q.pop_front());
                if let Some(mark) = next {
                    slot.insert((mark, Instant::now()));
                }
            }
        }
    }

    fn on_event(&self, ev: &SenderEvent) {
        match ev {
            SenderEvent::Connected => {
                self.connects_total.fetch_add(1, Ordering::Relaxed);
            }
            SenderEvent::Connecting { .. } => {
                self.connect_attempts_total.fetch_add(1, Ordering::Relaxed);
            }
            SenderEvent::Disconnected { .. } => {
                // Also emitted for attempts that never connected; the connected gauge comes
                // from the handles (`Fleet::connected`), not from these events.
                self.disconnects_total.fetch_add(1, Ordering::Relaxed);
            }
            SenderEvent::Sent { resend: true, .. } => {
                self.resends_total.fetch_add(1, Ordering::Relaxed);
            }
            SenderEvent::AckTimeout { .. } => {
                self.ack_timeouts_total.fetch_add(1, Ordering::Relaxed);
            }
            SenderEvent::Acked {
                latency: Some(l), ..
            } => self.record_latency(*l),
            _ => {}
        }
    }
}

/// One virtual device.
#[derive(Debug)]
pub struct Device {
    pub id: DeviceId,
    pub buffer: Arc<MemoryBuffer>,
    pub handle: Option<SenderHandle>,
    /// Readings generated so far (all of them were appended: the buffer blocks, never drops).
    pub produced: u64,
}

/// The fleet: devices plus shared counters.
#[derive(Debug)]
pub struct Fleet {
    pub devices: Vec<Device>,
    pub counters: Arc<FleetCounters>,
    link: Arc<LinkOptions>,
    /// Each device logs in as itself with `{secret}-{device id}` (see [`device_password`]).
    password_secret: Option<String>,
    sender: SenderConfig,
    cancel: CancellationToken,
}

/// The password a simulated device logs in with when the fleet has a secret: `{secret}-{id}`.
/// [`credentials_file`] writes the gateway's side of it.
#[must_use]
pub fn device_password(secret: &str, id: &DeviceId) -> String {
    format!("{secret}-{id}")
}

/// The gateway's credentials file (`[auth] mode = "file"`) for `ids` logging in with
/// [`device_password`]: one `device:hash` line each.
#[must_use]
pub fn credentials_file(secret: &str, ids: &[DeviceId]) -> String {
    ids.iter()
        .map(|id| {
            format!(
                "{id}:{}\n",
                breakwater_gateway::admission::hash_secret(&device_password(secret, id))
            )
        })
        .collect()
}

/// Device ids `{prefix}-00000 ...`.
#[must_use]
pub fn device_ids(prefix: &str, n: usize) -> Vec<DeviceId> {
    device_ids_from(prefix, 0, n)
}

/// `n` device ids `{prefix}-{i:05}` from `i = start` (a slice of a fleet split over several
/// simulator processes).
#[must_use]
pub fn device_ids_from(prefix: &str, start: usize, n: usize) -> Vec<DeviceId> {
    (start..start + n)
        .filter_map(|i| DeviceId::parse(format!("{prefix}-{i:05}")).ok())
        .collect()
}

impl Fleet {
    /// Builds (does not start) `ids.len()` devices.
    #[must_use]
    pub fn new(
        ids: &[DeviceId],
        link: LinkOptions,
        password_secret: Option<String>,
        sender: SenderConfig,
        counters: Arc<FleetCounters>,
        cancel: CancellationToken,
    ) -> Self {
        let devices = ids
            .iter()
            .map(|id| Device {
                id: id.clone(),
                // Generous budget with `block`: the simulator must never drop at the device.
                buffer: Arc::new(MemoryBuffer::new(1 << 30, FullPolicy::Block)),
                handle: None,
                produced: 0,
            })
            .collect();
        Self {
            devices,
            counters,
            link: Arc::new(link),
            password_secret,
            sender,
            cancel,
        }
    }

    /// Starts the senders of devices `range` (they connect at once, then follow their backoff).
    pub fn start(&mut self, range: std::ops::Range<usize>, seed: u64) {
        for i in range {
            let Some(d) = self.devices.get_mut(i) else {
                continue;
            };
            if d.handle.is_some() {
                continue;
            }
            let counters = Arc::clone(&self.counters);
            let buffer: Arc<dyn Buffer> = d.buffer.clone();
            let link = match &self.password_secret {
                None => Arc::clone(&self.link),
                Some(secret) => Arc::new(LinkOptions {
                    credentials: Some((d.id.to_string(), device_password(secret, &d.id))),
                    ..(*self.link).clone()
                }),
            };
            let handle = DeviceSender::new(d.id.clone(), buffer, link, self.sender.clone())
                .with_seed(seed.wrapping_add(i as u64))
                .with_events(Arc::new(move |_, ev| counters.on_event(ev)))
                .spawn(self.cancel.child_token());
            d.handle = Some(handle);
        }
    }

    /// Appends `n` readings to device `i` (timestamps from the wall clock).
    ///
    /// # Errors
    /// The buffer refused the append (it should not: the budget is huge).
    pub async fn produce(&mut self, i: usize, n: u64, now_ms: u64) -> anyhow::Result<()> {
        let Some(d) = self.devices.get_mut(i) else {
            return Ok(());
        };
        let readings = (0..n)
            .map(|k| {
                let seq = d.produced + k + 1;
                #[allow(clippy::cast_precision_loss)]
                let v = 20.0 + (seq % 100) as f64 * 0.1;
                Reading::new(
                    if seq % 2 == 0 { "temp" } else { "pressure" },
                    Value::F64(v),
                    now_ms,
                )
            })
            .collect();
        d.buffer.append(readings).await?;
        d.produced += n;
        Ok(())
    }

    /// Cuts every started device's connection for `outage` (a network cut on the device side).
    pub fn cut_all(&self, outage: Duration) -> usize {
        self.devices
            .iter()
            .filter_map(|d| d.handle.as_ref())
            .filter(|h| h.cut(outage))
            .count()
    }

    /// Devices whose link is up now.
    #[must_use]
    pub fn connected(&self) -> usize {
        self.devices
            .iter()
            .filter_map(|d| d.handle.as_ref())
            .filter(|h| h.is_connected())
            .count()
    }

    /// Readings acked so far, summed from the handles (exact, unlike event counting if a sink
    /// call were skipped).
    #[must_use]
    pub fn acked(&self) -> u64 {
        self.devices
            .iter()
            .filter_map(|d| d.handle.as_ref())
            .map(SenderHandle::acked_upto)
            .sum()
    }

    /// True when every device has acked at least `upto[i]` readings.
    #[must_use]
    pub fn all_acked_up_to(&self, upto: &[u64]) -> bool {
        self.devices
            .iter()
            .zip(upto)
            .all(|(d, &u)| u == 0 || d.handle.as_ref().is_some_and(|h| h.acked_upto() >= u))
    }

    /// Asks every sender to send what it has now.
    pub fn flush_all(&self) {
        for h in self.devices.iter().filter_map(|d| d.handle.as_ref()) {
            h.flush_now();
        }
    }

    #[must_use]
    pub fn total_produced(&self) -> u64 {
        self.devices.iter().map(|d| d.produced).sum()
    }

    /// Stops every sender gracefully (death message, disconnect), draining for at most `drain`.
    pub async fn shutdown(&mut self, drain: Duration) {
        let mut set = tokio::task::JoinSet::new();
        for d in &mut self.devices {
            if let Some(h) = d.handle.take() {
                set.spawn(async move { h.shutdown(drain).await });
            }
        }
        while set.join_next().await.is_some() {}
    }
}

/// Waits until `cond` holds or `timeout` passes, checking every `every`. Returns the elapsed time
/// when it held.
pub async fn wait_until(
    timeout: Duration,
    every: Duration,
    mut cond: impl FnMut() -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}
