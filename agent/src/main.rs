//! `breakwater-agent run --config FILE` / `check-config --config FILE` / `status`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use breakwater_agent::buffer::Buffer;
use breakwater_agent::config::AgentConfig;
use breakwater_agent::Agent;
use clap::{Parser, Subcommand};
use sd_notify::NotifyState;

#[derive(Parser, Debug)]
#[command(
    name = "breakwater-agent",
    version = breakwater_agent::VERSION,
    about = "Breakwater device agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent.
    Run {
        #[arg(long, short, env = "BREAKWATER_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file; prints every error with its key, exits 2 if any.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print a running agent's buffer depth, oldest unacked age, connection state, last ack and
    /// credit, from its local endpoint (`[metrics] listen`, `GET /status`).
    Status {
        #[arg(long, short, env = "BREAKWATER_AGENT_CONFIG")]
        config: Option<PathBuf>,
        /// The endpoint's address instead of the configuration's `[metrics] listen`
        /// (`HOST:PORT` or `http://HOST:PORT`).
        #[arg(long)]
        url: Option<String>,
        /// Print the JSON document instead of the summary.
        #[arg(long)]
        json: bool,
    },
}

/// `GET /status` from the agent's local endpoint.
fn fetch_status(addr: &str) -> anyhow::Result<serde_json::Value> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let authority = addr
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("");
    let sock = authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| format!("not an address: {addr}"))?;
    let timeout = Duration::from_secs(5);
    let mut s = std::net::TcpStream::connect_timeout(&sock, timeout)
        .with_context(|| format!("cannot reach the agent at {sock} (is it running?)"))?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "GET /status HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.take(1 << 20).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!(
            "{sock} answered {}: an older agent without GET /status?",
            head.lines().next().unwrap_or("")
        );
    }
    serde_json::from_str(body).with_context(|| format!("{sock}: not a status document"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match AgentConfig::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok (device {}, gateway {}{}, buffer {} max {} bytes {}, ingest {})",
                    config.display(),
                    c.device_id,
                    gateways_text(&c.gateway),
                    if c.gateway.tls.is_some() { " tls" } else { "" },
                    c.buffer.dir.display(),
                    c.buffer.max_bytes,
                    c.buffer.when_full.as_str(),
                    if c.ingest.enabled {
                        c.ingest.listen.to_string()
                    } else {
                        "off".into()
                    },
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", config.display());
                ExitCode::from(2)
            }
        },
        Command::Status { config, url, json } => {
            let res = (|| -> anyhow::Result<String> {
                let addr = match (url, config) {
                    (Some(u), _) => u,
                    (None, Some(path)) => {
                        let c = AgentConfig::load(&path)
                            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                        c.metrics.listen.map(|a| a.to_string()).with_context(|| {
                            format!(
                                "{}: the local endpoint is off; set [metrics] listen to use `status`",
                                path.display()
                            )
                        })?
                    }
                    (None, None) => anyhow::bail!("give --config FILE or --url HOST:PORT"),
                };
                let doc = fetch_status(&addr)?;
                Ok(if json {
                    serde_json::to_string_pretty(&doc)? + "\n"
                } else {
                    breakwater_agent::status::render(&doc)
                })
            })();
            match res {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("breakwater-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config } => {
            let cfg = match AgentConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: {e}", config.display());
                    return ExitCode::from(2);
                }
            };
            init_tracing();
            match run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("breakwater-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BREAKWATER_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,rumqttc=warn"));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if under_journald {
        // journald stamps each line itself; colours would show as escape codes.
        builder.without_time().with_ansi(false).init();
    } else {
        use std::io::IsTerminal;
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// Storage failing longer than this stops the watchdog pings, so systemd restarts the agent
/// (nothing confirmed is lost: it is on disk). Until then the agent heals itself (the buffer
/// reopens its file with backoff) and reports the failure in the unit's status line.
const WATCHDOG_STORAGE_GRACE: Duration = Duration::from_secs(120);

/// Reports the buffer's health to systemd (`STATUS=`, shown by `systemctl status`) and feeds
/// the watchdog (when enabled) unless the storage has been failing for
/// [`WATCHDOG_STORAGE_GRACE`].
async fn health_loop(buffer: std::sync::Arc<dyn Buffer>, watchdog: Option<Duration>) {
    let mut tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(1)));
    let mut was_failing = false;
    let mut starving_logged = false;
    loop {
        tick.tick().await;
        let health = buffer.health();
        match &health {
            Ok(()) if was_failing => {
                was_failing = false;
                starving_logged = false;
                let _ = sd_notify::notify(false, &[NotifyState::Status("running")]);
            }
            Err(f) => {
                was_failing = true;
                let status = format!("storage failing: {f}");
                let _ = sd_notify::notify(false, &[NotifyState::Status(&status)]);
            }
            Ok(()) => {}
        }
        let starving = health
            .as_ref()
            .err()
            .is_some_and(|f| f.since.elapsed() >= WATCHDOG_STORAGE_GRACE);
        if watchdog.is_some() {
            if starving {
                if !starving_logged {
                    starving_logged = true;
                    tracing::error!(
                        grace = ?WATCHDOG_STORAGE_GRACE,
                        "buffer storage failing too long: no more watchdog pings, systemd will restart the agent"
                    );
                }
            } else {
                let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
            }
        }
    }
}

fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .thread_name("bw-agent")
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term =
            signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let mut int =
            signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        tracing::info!(
            version = breakwater_agent::VERSION,
            "breakwater-agent starting"
        );
        let agent = Agent::start(cfg).await.context("agent failed to start")?;
        let _ = sd_notify::notify(false, &[NotifyState::Ready]);
        let mut usec = 0u64;
        let watchdog = sd_notify::watchdog_enabled(false, &mut usec).then(|| {
            let period = Duration::from_micros(usec / 2).max(Duration::from_millis(100));
            tracing::info!(?period, "systemd watchdog enabled");
            period
        });
        let health = tokio::spawn(health_loop(agent.buffer().clone(), watchdog));
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
        // One deadline for the whole shutdown (Agent::shutdown); a second SIGTERM or SIGINT
        // skips what is left of the drain.
        let skip_drain = agent.skip_drain_token();
        let shutdown = agent.shutdown();
        tokio::pin!(shutdown);
        let report = loop {
            tokio::select! {
                report = &mut shutdown => break report,
                _ = term.recv() => {
                    tracing::info!("second SIGTERM: skipping the drain");
                    skip_drain.cancel();
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT during shutdown: skipping the drain");
                    skip_drain.cancel();
                }
            }
        };
        health.abort();
        tracing::info!(
            acked_upto = report.sender.acked_upto,
            left_buffered = report.left_buffered,
            "bye: buffer closed"
        );
        Ok(())
    })
}

/// `host:port`, or `a:1, b:2 (failover after 3 failed connects)` for several gateways.
fn gateways_text(g: &breakwater_agent::config::GatewayConfig) -> String {
    let list = g
        .addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if g.addresses.len() > 1 {
        format!(
            "{list} (failover after {} failed connects)",
            g.failover_after
        )
    } else {
        list
    }
}
