//! `breakwater-processor run --config FILE` and `check-config --config FILE`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use breakwater_processor::config::Config;
use breakwater_processor::{metrics, run};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "breakwater-processor",
    version,
    about = "Sessions, windows and anomalies from Breakwater's Kafka topics"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the processor until SIGTERM/SIGINT, then flush outputs and write a final checkpoint.
    Run {
        #[arg(long, env = "BREAKWATER_PROCESSOR_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file (with the environment overrides) and print every problem.
    CheckConfig {
        #[arg(long, env = "BREAKWATER_PROCESSOR_CONFIG")]
        config: PathBuf,
    },
}

fn load(path: &Path) -> anyhow::Result<Result<Config, breakwater_processor::config::ConfigErrors>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Config::parse(&text, &|k| std::env::var(k).ok()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { config } => match load(&config) {
            Ok(Ok(_)) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Ok(Err(errs)) => {
                for e in &errs.0 {
                    eprintln!("{}: {}: {}", config.display(), e.key, e.message);
                }
                eprintln!("{} error(s)", errs.0.len());
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("{e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Run { config } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .init();
            match start(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn start(path: &Path) -> anyhow::Result<()> {
    let cfg = match load(path)? {
        Ok(c) => c,
        Err(errs) => anyhow::bail!("invalid configuration:\n{errs}"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let cancel = CancellationToken::new();
        let progress = Arc::new(run::Progress::default());
        if let Some(addr) = cfg.metrics_listen {
            let handle = metrics::install()?;
            let c = cancel.child_token();
            let p = progress.clone();
            tokio::spawn(async move {
                if let Err(e) = metrics::serve(addr, handle, p, c).await {
                    tracing::error!(%addr, error = %e, "metrics endpoint failed");
                }
            });
        }
        let signals = cancel.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: flushing outputs and writing a final checkpoint");
            signals.cancel();
        });
        let summary = run::run_observed(cfg, cancel.child_token(), progress).await?;
        tracing::info!(
            telemetry_records = summary.telemetry_records,
            event_records = summary.event_records,
            outputs = summary.outputs,
            "processor stopped"
        );
        cancel.cancel();
        // Let the metrics task notice.
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(())
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
