//! `breakwater-gateway`: run the gateway, check or print its configuration, print a running
//! gateway's status, export or drain the spool.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use breakwater_gateway::config::{Config, ConfigError};
use breakwater_gateway::Gateway;
use clap::{Parser, Subcommand};
use tracing::{error, info, warn};

/// jemalloc instead of glibc's malloc. The gateway allocates and frees per-connection buffers for
/// thousands of connections from several threads (rumqttd's router and listener, the tokio
/// workers); glibc keeps freed memory in per-thread arenas and rarely gives it back, so the RSS
/// stayed near its storm peak. jemalloc returns unused pages to the kernel after a few seconds.
/// Measured figures: `vendor/PATCHES.md`, "Memory".
///
/// The `system-allocator` feature leaves the system allocator in place, for heap profilers that
/// hook `malloc` (`heaptrack`); see `vendor/PATCHES.md`, "Measurements of patches 11-13".
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(name = "breakwater-gateway", version = breakwater_gateway::VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (TOML). Without it, the built-in defaults.
    #[arg(long, short, global = true, env = "BREAKWATER_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the configuration; prints every problem with its key, exits non-zero on any.
    CheckConfig,
    /// Print the default configuration as TOML.
    PrintDefaultConfig,
    /// Hash a device secret for the credentials file (`[auth] mode = "file"`). Reads the
    /// secret from the first line of stdin (never from the command line, where other users
    /// and the shell history would see it); prints the hash.
    HashSecret,
    /// Print a running gateway's status (devices, bursts, admission, spool, Kafka, acks,
    /// backpressure) from its `/api/v1/status`.
    Status {
        /// Base URL of the gateway's HTTP listener; default `http://` + `[metrics] listen` of
        /// the configuration.
        #[arg(long)]
        url: Option<String>,
        /// Print the API's JSON document instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Inspect the spool.
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
}

#[derive(Debug, Subcommand)]
enum SpoolCommand {
    /// Print every spooled batch as a JSON line. The spool is locked while a gateway runs: stop
    /// it first (a running gateway's spool depth and oldest record: `status`).
    Export {
        /// Spool directory; default `[spool] dir` of the configuration.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Produce every spooled batch to Kafka and delete it once delivered, until the spool is
    /// empty: for the spool of a gateway that died and stays down (ack mode `spool`: its
    /// devices were acked, the batches exist only there), run on any host that can read the
    /// directory. Refuses while a gateway runs on the spool. Safe to interrupt and run again
    /// (records delivered but not yet deleted are produced again: duplicates with the same
    /// device/epoch/seq headers, never a loss). Topic, encoding and producer settings come from
    /// `[kafka]` of the configuration.
    Drain {
        /// Spool directory; default `[spool] dir` of the configuration.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Kafka bootstrap servers (`host:port,...`); default `[kafka] brokers` (or
        /// `BREAKWATER_KAFKA_BROKERS`).
        #[arg(long)]
        kafka: Option<String>,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BREAKWATER_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| {
            // rumqttd logs every accept at info.
            tracing_subscriber::EnvFilter::new("info,rumqttd=warn,librdkafka=warn")
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn load(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| match e {
        ConfigError::Invalid(_) => anyhow::anyhow!("{e}"),
        other => anyhow::Error::new(other),
    })
}

/// `spool drain`: see [`SpoolCommand::Drain`].
fn spool_drain(
    config: Option<&std::path::Path>,
    dir: Option<PathBuf>,
    kafka: Option<String>,
) -> anyhow::Result<()> {
    let cfg = load(config)?;
    let dir = dir.unwrap_or(cfg.spool.dir.clone());
    let Some(brokers) = kafka.or(cfg.kafka.brokers.clone()) else {
        anyhow::bail!("no Kafka to drain to: give --kafka BROKERS or set [kafka] brokers");
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let res = rt.block_on(breakwater_gateway::kafka::offline::drain_dir(
        &dir, &cfg.kafka, &brokers,
    ));
    match res {
        Ok(r) => {
            eprintln!(
                "{} batch(es), {} reading(s) delivered to {} (topic {}) and deleted; the spool in {} is empty",
                r.records,
                r.readings,
                brokers,
                cfg.kafka.topic,
                dir.display()
            );
            Ok(())
        }
        Err(breakwater_gateway::kafka::offline::OfflineDrainError::Spool(
            breakwater_gateway::spool::SpoolError::Db(e),
        )) if matches!(*e, redb::Error::DatabaseAlreadyOpen) => anyhow::bail!(
            "the spool in {} is in use by a running gateway: its own drain empties it into Kafka; \
             `spool drain` is for the spool of a gateway that is down",
            dir.display()
        ),
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "draining the spool in {} to {brokers}",
            dir.display()
        ))),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::PrintDefaultConfig => {
            print!("{}", Config::default_toml());
            ExitCode::SUCCESS
        }
        Command::HashSecret => {
            let mut line = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut line) {
                eprintln!("error: reading the secret from stdin: {e}");
                return ExitCode::FAILURE;
            }
            let secret = line.trim_end_matches(['\r', '\n']);
            if secret.is_empty() {
                eprintln!("error: empty secret");
                return ExitCode::FAILURE;
            }
            println!("{}", breakwater_gateway::admission::hash_secret(secret));
            ExitCode::SUCCESS
        }
        Command::CheckConfig => {
            match Config::load(cli.config.as_deref()) {
                Ok(cfg) => {
                    if cfg.mqtt.persist_sessions {
                        println!(
                            "persistent MQTT sessions: {}",
                            breakwater_gateway::sessions::path(&cfg.spool.dir).display()
                        );
                    } else {
                        println!("persistent MQTT sessions: in memory only (mqtt.persist_sessions = false)");
                    }
                    println!("configuration OK");
                    ExitCode::SUCCESS
                }
                Err(ConfigError::Invalid(problems)) => {
                    for p in &problems {
                        eprintln!("error: {p}");
                    }
                    eprintln!("{} problem(s) found", problems.len());
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Spool {
            command: SpoolCommand::Export { dir },
        } => {
            let res = (|| -> anyhow::Result<u64> {
                let dir = match dir {
                    Some(d) => d,
                    None => load(cli.config.as_deref())?.spool.dir,
                };
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                match breakwater_gateway::spool::export(&dir, &mut out) {
                    Err(breakwater_gateway::spool::SpoolError::Db(e))
                        if matches!(*e, redb::Error::DatabaseAlreadyOpen) =>
                    {
                        anyhow::bail!(
                            "the spool in {} is in use by a running gateway (only one process can \
                             open it). For its depth and oldest record run `breakwater-gateway \
                             status` (or GET /api/v1/status); to export its batches, stop the \
                             gateway first",
                            dir.display()
                        )
                    }
                    other => {
                        other.with_context(|| format!("exporting the spool in {}", dir.display()))
                    }
                }
            })();
            match res {
                Ok(n) => {
                    eprintln!("{n} batch(es) exported");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Spool {
            command: SpoolCommand::Drain { dir, kafka },
        } => match spool_drain(cli.config.as_deref(), dir, kafka) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Status { url, json } => {
            let res = (|| -> anyhow::Result<String> {
                let url = match url {
                    Some(u) => u,
                    None => format!("http://{}", load(cli.config.as_deref())?.metrics.listen),
                };
                let doc = breakwater_gateway::status::cli::fetch(
                    url.trim_end_matches('/'),
                    "/api/v1/status",
                    Duration::from_secs(5),
                )?;
                Ok(if json {
                    serde_json::to_string_pretty(&doc)? + "\n"
                } else {
                    breakwater_gateway::status::cli::render(&doc)
                })
            })();
            match res {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run => {
            init_tracing();
            match run(cli.config.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run(config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let cfg = load(config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bw-gateway")
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(async move {
        info!(
            version = breakwater_gateway::VERSION,
            "breakwater-gateway starting"
        );
        let gateway = Gateway::start(cfg).await.context("starting the gateway")?;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        let watchdog = spawn_watchdog(gateway.health.clone());
        let failed = loop {
            tokio::select! {
                signal = wait_for_signal() => match signal {
                    Signal::Reload => gateway.reload(),
                    Signal::Stop => break None,
                },
                () = gateway.health.fatal.cancelled() => break gateway.health.failure(),
            }
        };
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        if let Some(w) = watchdog {
            w.abort();
        }
        // A second SIGTERM or Ctrl-C while stopping: stop waiting for Kafka (what it did not
        // confirm stays in the spool). systemd sends only one SIGTERM; an operator at a
        // terminal, or `systemctl kill`, may send more.
        let hurry = gateway.hurry_handle();
        let second = tokio::spawn(async move {
            loop {
                match wait_for_signal().await {
                    Signal::Stop => {
                        warn!("second stop signal: no longer waiting for Kafka; undelivered records stay in the spool");
                        hurry.cancel();
                        break;
                    }
                    Signal::Reload => info!("SIGHUP ignored while stopping"),
                }
            }
        });
        gateway.shutdown().await;
        second.abort();
        match failed {
            None => Ok(()),
            Some(reason) => Err(anyhow::anyhow!("{reason}")),
        }
    })
}

/// Pings systemd's watchdog at half its interval while the pipeline is alive.
fn spawn_watchdog(
    health: std::sync::Arc<breakwater_gateway::http::Health>,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    let every = Duration::from_micros(usec / 2);
    info!(?every, "systemd watchdog enabled");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if health.alive.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
        }
    }))
}

#[derive(Debug)]
enum Signal {
    /// SIGINT or SIGTERM.
    Stop,
    /// SIGHUP: reload certificates and credentials.
    Reload,
}

/// Cancel safe: a signal that arrived while this was not polled is still delivered (tokio keeps
/// it pending).
async fn wait_for_signal() -> Signal {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut hup) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(t), Ok(h)) => (t, h),
            (Err(e), _) | (_, Err(e)) => {
                error!(error = %e, "cannot listen for SIGTERM/SIGHUP; only Ctrl-C stops the gateway");
                let _ = ctrl_c.await;
                return Signal::Stop;
            }
        };
        tokio::select! {
            _ = ctrl_c => { info!("SIGINT"); Signal::Stop }
            _ = term.recv() => { info!("SIGTERM"); Signal::Stop }
            _ = hup.recv() => { info!("SIGHUP: reloading certificates and credentials"); Signal::Reload }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
        Signal::Stop
    }
}
