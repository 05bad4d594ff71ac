//! The storm chart: connected devices (this process's, and each sampled gateway's), connects/s
//! and readings/s over time, outage shaded.

use std::path::Path;

use anyhow::Context as _;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::report::{Report, Sample};

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn load_font() -> anyhow::Result<()> {
    let path = FONT_PATHS
        .iter()
        .find(|p| Path::new(p).exists())
        .context("no DejaVuSans.ttf found (apt-get install fonts-dejavu-core)")?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{path} is not a usable font"))?;
    Ok(())
}

/// A panel: its name, its points and its colour.
type Series<'a> = (&'a str, &'a Vec<(f64, f64)>, RGBColor);

/// Per-second rates from cumulative samples.
fn rates(samples: &[Sample], value: impl Fn(&Sample) -> u64) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut last: Option<&Sample> = None;
    for s in samples {
        match last {
            Some(l) if s.t - l.t >= 1.0 => {
                #[allow(clippy::cast_precision_loss)]
                let r = (value(s) - value(l)) as f64 / (s.t - l.t);
                out.push((s.t, r));
                last = Some(s);
            }
            None => last = Some(s),
            _ => {}
        }
    }
    out
}

/// Draws the chart as a PNG.
///
/// # Errors
/// No font, or the file cannot be written.
pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    load_font()?;
    let root = BitMapBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut title = format!(
        "{} / {}: {} devices, outage {:.0} s",
        report.target, report.scenario, report.devices, report.outage_seconds
    );
    if report.gateways.len() > 1 {
        title.push_str(&format!(", {} gateways", report.gateways.len()));
        if let Some(k) = report.gateway_killed_at {
            title.push_str(&format!(" (one killed at {k:.0} s)"));
        }
    }
    let root = root.titled(&title, ("sans-serif", 24))?;
    let panels = root.split_evenly((3, 1));
    let t_max = report.timeline.last().map_or(1.0, |s| s.t).max(1.0);

    #[allow(clippy::cast_precision_loss)]
    let connected: Vec<(f64, f64)> = report
        .timeline
        .iter()
        .map(|s| (s.t, s.connected as f64))
        .collect();
    let connects = rates(&report.timeline, |s| s.connects_total);
    let readings = rates(&report.timeline, |s| s.acked_total);
    let series: [Series<'_>; 3] = [
        ("connected devices", &connected, BLUE),
        ("connects / s", &connects, RED),
        ("readings acked / s", &readings, RGBColor(0, 128, 0)),
    ];
    for (panel, (name, data, color)) in panels.iter().zip(series) {
        let mut y_max = data.iter().map(|p| p.1).fold(1.0f64, f64::max);
        if name == "connected devices" {
            #[allow(clippy::cast_precision_loss)]
            let gw = report
                .timeline
                .iter()
                .flat_map(|s| s.gateways_connected.iter().flatten())
                .map(|&v| v as f64)
                .fold(0.0f64, f64::max);
            y_max = y_max.max(gw);
        }
        let y_max = y_max * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(name, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .light_line_style(WHITE)
            .draw()?;
        if let (Some(a), Some(b)) = (report.cut_at, report.cut_end) {
            chart.draw_series(std::iter::once(Rectangle::new(
                [(a, 0.0), (b, y_max)],
                RGBColor(255, 200, 200).mix(0.5).filled(),
            )))?;
        }
        chart.draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2)))?;
        if name == "connected devices" {
            draw_gateways(&mut chart, report)?;
        }
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Colours of the per-gateway lines.
const GATEWAY_COLORS: [RGBColor; 4] = [
    RGBColor(230, 120, 0),
    RGBColor(140, 0, 170),
    RGBColor(0, 150, 150),
    RGBColor(120, 120, 120),
];

/// Each sampled gateway's connected devices (`--gateway-metrics`), with a legend; the fleet
/// total of this process is the blue line.
fn draw_gateways<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    report: &Report,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let n = report
        .timeline
        .iter()
        .map(|s| s.gateways_connected.len())
        .max()
        .unwrap_or(0);
    if n == 0 {
        return Ok(());
    }
    for g in 0..n {
        #[allow(clippy::cast_precision_loss)]
        let points: Vec<(f64, f64)> = report
            .timeline
            .iter()
            .map(|s| {
                (
                    s.t,
                    s.gateways_connected.get(g).copied().flatten().unwrap_or(0) as f64,
                )
            })
            .collect();
        let color = GATEWAY_COLORS[g % GATEWAY_COLORS.len()];
        let label = report
            .gateways
            .get(g)
            .map_or_else(|| format!("gateway {g}"), |a| format!("gateway {a}"));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
