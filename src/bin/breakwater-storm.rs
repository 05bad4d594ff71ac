//! `breakwater-storm`: see `breakwater::storm` for what it does.

use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,breakwater::storm=info")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let opts = breakwater::storm::Options::parse();
    if let Some(path) = &opts.write_credentials {
        opts.write_credentials(path)?;
        eprintln!("{} device(s) written to {}", opts.devices, path.display());
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(breakwater::storm::run(&opts))?;
    let summary = serde_json::json!({
        "target": report.target,
        "device_model": report.device_model,
        "scenario": report.scenario,
        "devices": report.devices,
        "readings_per_second": report.readings_per_second,
        "into_kafka_readings_per_second": report.into_kafka_readings_per_second,
        "initial_connect_seconds": report.initial_connect_seconds,
        "reconnect_seconds": report.reconnect_seconds,
        "drain_seconds": report.drain_seconds,
        "peak_connects_per_second": report.peak_connects_per_second,
        "ack_latency": report.ack_latency,
        "gateway_peak_rss_bytes": report.gateway_peak_rss_bytes,
        "all_acked": report.all_acked,
        "verification": report.verification,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    let lost = report.verification.as_ref().map_or(0, |v| v.lost);
    if lost > 0 || !report.all_acked {
        eprintln!(
            "breakwater-storm: {lost} readings lost, all acked: {}",
            report.all_acked
        );
        std::process::exit(1);
    }
    Ok(())
}
