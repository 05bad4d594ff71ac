//! `breakwater-storm`: a fleet simulator and reconnection-storm benchmark.
//!
//! N virtual devices run against a gateway (or, for the baseline, against Mosquitto with the
//! forwarder in `crate::baseline`). Device models (`--device-model`, [`devices`]):
//!
//! * `breakwater`: the agent's real sending logic ([`fleet`]): batches, credit, resend.
//! * `diy-json`: DIY as usually built ([`diy`]): one JSON reading per MQTT message at QoS 1,
//!   rumqttc's in-flight window, PUBACK = done.
//! * `json-mqtt`: the same clients against the Breakwater gateway's standard-client ingest
//!   (`[[json_devices]] topic = "devices/{device}/telemetry"`, `format = "object"`), where the
//!   PUBACK comes only once the message is durable.
//! * `sparkplug`: Sparkplug B edge nodes ([`sparkplug`]) against the gateway's host application:
//!   NBIRTH/DBIRTH with aliases, then DDATA of `--metrics-per-message` metrics, QoS 1, PUBACK =
//!   done (once durable).
//!
//! Scenarios:
//!
//! * `steady`: every device connects and sends `--readings-per-device` readings at `--rate`.
//! * `storm`: as steady, then every connection is cut at once (a network cut on the device
//!   side) for `--outage` seconds while readings keep accumulating in the device buffers; then
//!   all devices reconnect under the agent's own jittered backoff.
//! * `ramp`: devices join linearly over `--ramp` seconds.
//!
//! At the end it reads the Kafka topic back and checks every `(device, epoch, seq)` ([`verify`]),
//! writes a JSON report ([`report`]) and a PNG chart ([`chart`]).

pub mod chart;
pub mod devices;
pub mod diy;
pub mod fleet;
pub mod report;
pub mod sparkplug;
pub mod verify;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use breakwater_agent::config::{BackoffConfig, SenderConfig};
use breakwater_agent::sender::LinkOptions;
use tokio_util::sync::CancellationToken;

pub use self::devices::DeviceModel;
use self::devices::Devices;
use self::diy::{DiyFleet, DiyLink};
use self::fleet::{device_ids_from, Fleet, FleetCounters};
use self::report::{peak_rate, rss_bytes, Latency, Report, Sample};
use self::sparkplug::SparkplugFleet;

/// Which load shape to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Steady,
    Storm,
    Ramp,
}

/// Command-line options of `breakwater-storm`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "breakwater-storm",
    about = "Fleet simulator and reconnection-storm benchmark"
)]
pub struct Options {
    /// MQTT address of the gateway (or of Mosquitto, for the baseline). Several, comma
    /// separated (`breakwater` model): each device starts at the one its id hashes to and fails
    /// over after `--failover-after` failed connects, as the agent with `[gateway] addresses`.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub gateway: String,
    /// Failed connects in a row before a device moves to the next gateway (the agent's
    /// `[gateway] failover_after`).
    #[arg(long, default_value_t = 3)]
    pub failover_after: u32,
    /// Number of the first simulated device (`{prefix}-{i:05}` from `i = device_start`), so
    /// that several simulator processes share one fleet (the open-files limit caps one
    /// process at ~19,000 connections).
    #[arg(long, default_value_t = 0)]
    pub device_start: usize,
    /// Gateways' HTTP listeners (`HOST:PORT`, comma separated), whose
    /// `breakwater_gateway_connected_devices` is sampled into the timeline and the chart.
    #[arg(long, value_delimiter = ',')]
    pub gateway_metrics: Vec<String>,
    /// SIGKILL this process (a gateway) `--kill-after-cut` seconds after the network cut
    /// (storm), and do not restart it.
    #[arg(long)]
    pub kill_pid: Option<u32>,
    #[arg(long, default_value_t = 5.0)]
    pub kill_after_cut: f64,
    /// Kafka bootstrap address to verify delivery against; without it, no verification.
    #[arg(long)]
    pub kafka: Option<String>,
    /// Telemetry topic to verify.
    #[arg(long, default_value = breakwater_protocol::kafka::DEFAULT_TOPIC)]
    pub topic: String,
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// How the devices send: Breakwater's agent, DIY (one JSON reading per MQTT message, QoS 1,
    /// PUBACK = done; against Mosquitto + `breakwater-baseline-forwarder`), or the same DIY
    /// clients against the gateway's `[[json_devices]]` (`json-mqtt`).
    #[arg(long, value_enum, default_value_t = DeviceModel::Breakwater)]
    pub device_model: DeviceModel,
    #[arg(long, default_value_t = 100)]
    pub readings_per_device: u64,
    /// Metrics per Sparkplug DDATA (`--device-model sparkplug`; two of them, `epoch` and `seq`,
    /// identify the message). `--readings-per-device` must be a multiple of it.
    #[arg(long, default_value_t = 50)]
    pub metrics_per_message: u64,
    /// Readings per batch (the agent's `batch_max_readings`; Breakwater model only).
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
    /// Readings per second per device.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    #[arg(long, value_enum, default_value_t = Scenario::Steady)]
    pub scenario: Scenario,
    /// Length of the network cut (storm), seconds.
    #[arg(long, default_value_t = 5.0)]
    pub outage: f64,
    /// When to cut (storm), seconds after the start; default: a third of the generation time,
    /// and never before every device connected once.
    #[arg(long)]
    pub cut_at: Option<f64>,
    /// Ramp duration (ramp), seconds.
    #[arg(long, default_value_t = 10.0)]
    pub ramp: f64,
    /// Reconnect backoff: first retry window and cap, milliseconds (the agent's jittered
    /// backoff; for DIY devices a plain doubling from the first window to the cap).
    #[arg(long, default_value_t = 2_000)]
    pub backoff_initial_ms: u64,
    #[arg(long, default_value_t = 30_000)]
    pub backoff_max_ms: u64,
    /// Resend from the oldest unacked reading when no ack came within this, milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub ack_timeout_ms: u64,
    /// Sample this process's RSS as the gateway's (from /proc).
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// Label for the report ("breakwater", "baseline").
    #[arg(long, default_value = "breakwater")]
    pub target: String,
    #[arg(long, default_value = "sim")]
    pub device_prefix: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Bound on the whole run (connect, send, drain), seconds.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// Bound on reading the topic back, seconds.
    #[arg(long, default_value_t = 120.0)]
    pub verify_timeout: f64,
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// TLS to the gateway (`breakwater` model), trusting this CA (PEM); the gateway's
    /// certificate must name the `--gateway` host.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Each device logs in as itself (user name = device id) with the password
    /// `{secret}-{device id}`, for a gateway in `[auth] mode = "file"` (`breakwater` model).
    #[arg(long)]
    pub password_secret: Option<String>,
    /// Write the gateway's credentials file for these `--devices` and `--password-secret`,
    /// then exit without running.
    #[arg(long)]
    pub write_credentials: Option<PathBuf>,
}

impl Options {
    fn sender_config(&self) -> SenderConfig {
        SenderConfig {
            batch_max_readings: self.batch.clamp(1, 1_000),
            ack_timeout: Duration::from_millis(self.ack_timeout_ms),
            backoff: BackoffConfig {
                initial: Duration::from_millis(self.backoff_initial_ms),
                max: Duration::from_millis(self.backoff_max_ms.max(self.backoff_initial_ms)),
                ..BackoffConfig::default()
            },
            ..SenderConfig::default()
        }
    }

    fn link_options(&self) -> anyhow::Result<LinkOptions> {
        let mut link = LinkOptions::plain_many(
            self.gateways()?
                .into_iter()
                .map(|(h, p)| breakwater_agent::config::GatewayAddress::new(h, p))
                .collect(),
        );
        link.failover_after = std::num::NonZeroU32::new(self.failover_after)
            .context("--failover-after must be > 0")?;
        if let Some(ca) = &self.tls_ca {
            let tls = breakwater_agent::config::TlsConfig {
                ca_file: ca.clone(),
                client_cert_file: None,
                client_key_file: None,
            };
            link.tls = Some(
                breakwater_agent::sender::tls::client_config(&tls)
                    .with_context(|| format!("--tls-ca {}", ca.display()))?,
            );
        }
        Ok(link)
    }

    /// `--write-credentials`: the gateway's credentials file for this fleet.
    ///
    /// # Errors
    /// No `--password-secret`, or the file cannot be written.
    pub fn write_credentials(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let secret = self
            .password_secret
            .as_deref()
            .context("--write-credentials needs --password-secret")?;
        let ids = device_ids_from(&self.device_prefix, self.device_start, self.devices);
        std::fs::write(path, fleet::credentials_file(secret, &ids))
            .with_context(|| format!("writing {}", path.display()))
    }

    /// `--gateway`, each `HOST:PORT`.
    fn gateways(&self) -> anyhow::Result<Vec<(&str, u16)>> {
        self.gateway
            .split(',')
            .map(|g| {
                let (host, port) = g
                    .trim()
                    .rsplit_once(':')
                    .context("--gateway must be HOST:PORT[,HOST:PORT...]")?;
                Ok((host, port.parse().context("--gateway port")?))
            })
            .collect()
    }

    fn build_devices(&self, cancel: &CancellationToken) -> anyhow::Result<Devices> {
        let ids = device_ids_from(&self.device_prefix, self.device_start, self.devices);
        let counters = Arc::new(FleetCounters::new());
        let gateways = self.gateways()?;
        let (host, port) = gateways[0];
        anyhow::ensure!(
            gateways.len() == 1 || self.device_model == DeviceModel::Breakwater,
            "several --gateway addresses need --device-model breakwater"
        );
        let link = DiyLink {
            host: host.to_owned(),
            port,
            backoff_initial: Duration::from_millis(self.backoff_initial_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms.max(self.backoff_initial_ms)),
        };
        Ok(match self.device_model {
            DeviceModel::Breakwater => Devices::Breakwater(Fleet::new(
                &ids,
                self.link_options()?,
                self.password_secret.clone(),
                self.sender_config(),
                counters,
                cancel.clone(),
            )),
            DeviceModel::DiyJson | DeviceModel::JsonMqtt => Devices::DiyJson(DiyFleet::new(
                &ids,
                breakwater_agent::now_ms(),
                link,
                counters,
                cancel.child_token(),
            )),
            DeviceModel::Sparkplug => {
                anyhow::ensure!(
                    self.metrics_per_message > 0
                        && self
                            .readings_per_device
                            .is_multiple_of(self.metrics_per_message),
                    "--readings-per-device must be a multiple of --metrics-per-message"
                );
                Devices::Sparkplug(SparkplugFleet::new(
                    &ids,
                    breakwater_agent::now_ms(),
                    self.metrics_per_message,
                    link,
                    counters,
                    cancel.child_token(),
                )?)
            }
        })
    }
}

/// Runs the scenario and returns the report (also written to `--report`/`--chart` if given).
///
/// # Errors
/// Bad options, or the Kafka verification could not run.
#[allow(clippy::too_many_lines)]
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(opts.devices > 0, "--devices must be at least 1");
    anyhow::ensure!(opts.rate > 0.0, "--rate must be positive");
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let cancel = CancellationToken::new();
    let mut fleet = opts.build_devices(&cancel)?;
    let n = fleet.len();

    let start = Instant::now();
    let secs = |i: Instant| i.duration_since(start).as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let gen_duration = opts.readings_per_device as f64 / opts.rate;
    let cut_at = opts.cut_at.unwrap_or(gen_duration / 3.0);
    let outage = Duration::from_secs_f64(opts.outage.max(0.0));
    let timeout = Duration::from_secs_f64(opts.timeout);

    if opts.scenario != Scenario::Ramp {
        fleet.start(0..n, opts.seed);
    }
    let mut timeline = Vec::new();
    let mut initial_connect: Option<f64> = None;
    let mut cut: Option<(Instant, Instant)> = None;
    // Per device: readings produced when the network came back; drained when each is acked.
    let mut produced_at_cut_end: Option<Vec<u64>> = None;
    let mut reconnect_seconds = None;
    let mut drain_seconds = None;
    let mut first_produce: Option<(Instant, u64)> = None;
    let mut all_acked_at: Option<Instant> = None;
    let mut gateway_peak: Option<u64> = None;
    let mut sim_peak: Option<u64> = None;
    let mut killed_at: Option<f64> = None;
    let sampler = GatewaySampler::spawn(&opts.gateway_metrics, cancel.child_token());
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_sample = start - Duration::from_secs(1);

    loop {
        tick.tick().await;
        let now = Instant::now();
        let elapsed = now - start;
        if elapsed > timeout {
            tracing::warn!("timeout: stopping the run");
            break;
        }
        let started = if opts.scenario == Scenario::Ramp {
            #[allow(
                clippy::cast_precision_loss,
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss
            )]
            let k = ((elapsed.as_secs_f64() / opts.ramp.max(0.001)) * n as f64).ceil() as usize;
            let k = k.min(n);
            fleet.start(0..k, opts.seed);
            k
        } else {
            n
        };

        // Generate: each started device catches up to rate * time since the run started.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let due = ((elapsed.as_secs_f64() * opts.rate) as u64).min(opts.readings_per_device);
        let now_ms = breakwater_agent::now_ms();
        for i in 0..started {
            let have = fleet.produced(i);
            if due > have {
                first_produce.get_or_insert((now, now_ms));
                fleet.produce(i, due - have, now_ms).await?;
            }
        }

        let connected = fleet.connected();
        if initial_connect.is_none() && connected == n {
            initial_connect = Some(secs(now));
        }
        let produced = fleet.total_produced();
        let acked = fleet.acked();

        // Storm: cut everyone once, when everyone has connected and the cut time came.
        if opts.scenario == Scenario::Storm
            && cut.is_none()
            && initial_connect.is_some()
            && elapsed.as_secs_f64() >= cut_at
        {
            let k = fleet.cut_all(outage);
            tracing::info!(devices = k, ?outage, "network cut");
            cut = Some((now, now + outage));
        }
        if let (Some((cut_start, _)), Some(pid), None) = (cut, opts.kill_pid, killed_at) {
            if now >= cut_start + Duration::from_secs_f64(opts.kill_after_cut.max(0.0)) {
                let st = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                tracing::info!(pid, ?st, "gateway killed during the outage (not restarted)");
                killed_at = Some(secs(now));
            }
        }
        if let Some((_, end)) = cut {
            if now >= end {
                let base = produced_at_cut_end.get_or_insert_with(|| fleet.produced_each());
                if reconnect_seconds.is_none() && connected == n {
                    reconnect_seconds = Some((now - end).as_secs_f64());
                }
                if drain_seconds.is_none() && fleet.all_acked_up_to(base) {
                    drain_seconds = Some((now - end).as_secs_f64());
                }
            }
        }

        if now - last_sample >= Duration::from_millis(250) {
            last_sample = now;
            let gw = opts.gateway_pid.and_then(rss_bytes);
            gateway_peak = gateway_peak.max(gw);
            sim_peak = sim_peak.max(rss_bytes(std::process::id()));
            timeline.push(Sample {
                t: secs(now),
                connected: connected as u64,
                connects_total: fleet.counters().connects_total.load(Ordering::Relaxed),
                produced_total: produced,
                acked_total: acked,
                gateway_rss: gw,
                gateways_connected: sampler.latest(),
            });
        }

        let all_produced = produced >= opts.readings_per_device * n as u64;
        let storm_done = opts.scenario != Scenario::Storm
            || (reconnect_seconds.is_some() && drain_seconds.is_some());
        if all_produced && acked >= produced && storm_done {
            all_acked_at = Some(now);
            break;
        }
        if all_produced {
            fleet.flush_all();
        }
    }

    let total_produced = fleet.total_produced();
    let total_acked = fleet.acked();
    let expected = fleet.expected();
    fleet.shutdown(Duration::from_secs(2)).await;
    cancel.cancel();

    let verification = match &opts.kafka {
        Some(bootstrap) => {
            let bootstrap = bootstrap.clone();
            let topic = opts.topic.clone();
            let t = Duration::from_secs_f64(opts.verify_timeout);
            let format = opts.device_model.record_format();
            Some(
                tokio::task::spawn_blocking(move || {
                    verify::verify(&bootstrap, &topic, format, &expected, t)
                })
                .await??,
            )
        }
        None => None,
    };

    let end = all_acked_at.unwrap_or_else(Instant::now);
    let send_secs = first_produce.map_or(0.0, |(f, _)| (end - f).as_secs_f64());
    #[allow(clippy::cast_precision_loss)]
    let readings_per_second = if send_secs > 0.0 {
        total_acked as f64 / send_secs
    } else {
        0.0
    };
    let into_kafka_readings_per_second =
        verification
            .as_ref()
            .zip(first_produce)
            .and_then(|(v, (_, first_ms))| {
                let last = u64::try_from(v.last_record_ms?).ok()?;
                #[allow(clippy::cast_precision_loss)]
                let secs = last.checked_sub(first_ms)? as f64 / 1_000.0;
                #[allow(clippy::cast_precision_loss)]
                let delivered = v.delivered_readings as f64;
                (secs > 0.0).then(|| delivered / secs)
            });
    let counters = Arc::clone(fleet.counters());
    let latency = counters
        .ack_latency_us
        .lock()
        .map(|h| Latency::from_histogram(&h))
        .unwrap_or_default();
    let report = Report {
        target: opts.target.clone(),
        device_model: opts.device_model,
        scenario: format!("{:?}", opts.scenario).to_lowercase(),
        devices: n,
        readings_per_device: opts.readings_per_device,
        batch: opts.batch,
        rate_per_device: opts.rate,
        outage_seconds: if opts.scenario == Scenario::Storm {
            opts.outage
        } else {
            0.0
        },
        initial_connect_seconds: initial_connect,
        readings_per_second,
        into_kafka_readings_per_second,
        total_seconds: start.elapsed().as_secs_f64(),
        cut_at: cut.map(|(a, _)| secs(a)),
        cut_end: cut.map(|(_, b)| secs(b)),
        gateways: opts.gateway.split(',').map(str::to_owned).collect(),
        gateway_killed_at: killed_at,
        reconnect_seconds,
        drain_seconds,
        peak_connects_per_second: peak_rate(&timeline, |s| s.connects_total),
        connects_total: counters.connects_total.load(Ordering::Relaxed),
        connect_attempts_total: counters.connect_attempts_total.load(Ordering::Relaxed),
        resends_total: counters.resends_total.load(Ordering::Relaxed),
        ack_timeouts_total: counters.ack_timeouts_total.load(Ordering::Relaxed),
        ack_latency: latency,
        gateway_peak_rss_bytes: gateway_peak,
        simulator_peak_rss_bytes: sim_peak,
        all_acked: all_acked_at.is_some() && total_acked >= total_produced,
        verification,
        timeline,
    };
    if let Some(path) = &opts.report {
        report.write(path)?;
    }
    if let Some(path) = &opts.chart {
        chart::draw(&report, path)?;
    }
    Ok(report)
}

/// Polls each gateway's `/metrics` for `breakwater_gateway_connected_devices` every 250 ms on
/// a blocking thread, so the run loop never waits on HTTP.
#[derive(Debug, Clone)]
struct GatewaySampler {
    latest: Arc<std::sync::Mutex<Vec<Option<u64>>>>,
}

impl GatewaySampler {
    fn spawn(addrs: &[String], cancel: CancellationToken) -> Self {
        let latest = Arc::new(std::sync::Mutex::new(vec![None; addrs.len()]));
        if !addrs.is_empty() {
            let addrs = addrs.to_vec();
            let out = Arc::clone(&latest);
            std::thread::spawn(move || {
                while !cancel.is_cancelled() {
                    let v: Vec<Option<u64>> = addrs.iter().map(|a| connected_devices(a)).collect();
                    if let Ok(mut l) = out.lock() {
                        *l = v;
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            });
        }
        Self { latest }
    }

    fn latest(&self) -> Vec<Option<u64>> {
        self.latest.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// `breakwater_gateway_connected_devices` from `http://{addr}/metrics`; `None` if it does not
/// answer within 200 ms.
fn connected_devices(addr: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let sa: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&sa, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("breakwater_gateway_connected_devices "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let n = v as u64;
            n
        })
}
