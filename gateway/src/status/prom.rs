//! Reads back the gateway's own `/metrics` text, so the status API reports exactly the numbers
//! Prometheus scrapes (the `metrics` facade has no way to read a counter back).
//!
//! Only what the exporter writes is understood: `# ` comment lines, then
//! `name{label="value",...} number` or `name number`. Label values are the gateway's own
//! (reasons, stages, bucket bounds) and carry no escaped quotes; a line that does not parse is
//! skipped.

use std::collections::BTreeMap;

/// One series: its labels, sorted by name, and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Every series of a scrape, by metric name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub metrics: BTreeMap<String, Vec<Series>>,
}

impl Scrape {
    /// Parses Prometheus text format (see the module doc for what is understood).
    #[must_use]
    pub fn parse(text: &str) -> Self {
        let mut metrics: BTreeMap<String, Vec<Series>> = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => match parse_labels(rest.strip_suffix('}').unwrap_or(rest)) {
                    Some(labels) => (name, labels),
                    None => continue,
                },
                None => (series, Vec::new()),
            };
            metrics
                .entry(name.to_owned())
                .or_default()
                .push(Series { labels, value });
        }
        Self { metrics }
    }

    /// Sum over every series of `name` (0 when absent).
    #[must_use]
    pub fn sum(&self, name: &str) -> f64 {
        self.metrics
            .get(name)
            .map_or(0.0, |v| v.iter().map(|s| s.value).sum())
    }

    /// True when the scrape has a series of `name`.
    #[must_use]
    pub fn has(&self, name: &str) -> bool {
        self.metrics.contains_key(name)
    }

    /// Sum over the series of `name` whose label `key` equals `value`.
    #[must_use]
    pub fn sum_where(&self, name: &str, key: &str, value: &str) -> f64 {
        self.metrics.get(name).map_or(0.0, |v| {
            v.iter()
                .filter(|s| s.label(key) == Some(value))
                .map(|s| s.value)
                .sum()
        })
    }

    /// `name` summed by the value of label `key` (series without it are left out).
    #[must_use]
    pub fn by_label(&self, name: &str, key: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.metrics.get(name).into_iter().flatten() {
            if let Some(v) = s.label(key) {
                *out.entry(v.to_owned()).or_insert(0.0) += s.value;
            }
        }
        out
    }

    /// Cumulative histogram buckets `(le, count)` of `name` (the base name, without
    /// `_bucket`) whose label `key` is `value`, sorted by bound, `+Inf` last.
    #[must_use]
    pub fn buckets(&self, name: &str, key: &str, value: &str) -> Vec<(f64, f64)> {
        let mut out: Vec<(f64, f64)> = self
            .metrics
            .get(&format!("{name}_bucket"))
            .into_iter()
            .flatten()
            .filter(|s| s.label(key) == Some(value))
            .filter_map(|s| {
                let le = match s.label("le")? {
                    "+Inf" => f64::INFINITY,
                    x => x.parse().ok()?,
                };
                Some((le, s.value))
            })
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

impl Series {
    #[must_use]
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_labels(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let (value, after) = after.split_once('"')?;
        out.push((key.trim().to_owned(), value.to_owned()));
        rest = after.trim_start_matches(',').trim();
    }
    out.sort();
    Some(out)
}

/// The `q` quantile (0..1) of the observations between two cumulative bucket lists of one
/// histogram (`now` minus `before`; `before` empty = since start), interpolated linearly inside
/// the bucket as Prometheus' `histogram_quantile` does. `None` without observations.
#[must_use]
pub fn quantile(q: f64, now: &[(f64, f64)], before: &[(f64, f64)]) -> Option<f64> {
    let counts: Vec<(f64, f64)> = now
        .iter()
        .map(|&(le, n)| {
            let b = before
                .iter()
                .find(|(l, _)| l.total_cmp(&le).is_eq())
                .map_or(0.0, |x| x.1);
            (le, (n - b).max(0.0))
        })
        .collect();
    let total = counts.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower_le = 0.0;
    let mut lower_n = 0.0;
    for &(le, n) in &counts {
        if n >= rank {
            if le.is_infinite() {
                // Beyond the last finite bound: report that bound, as Prometheus does.
                return Some(lower_le);
            }
            let in_bucket = n - lower_n;
            let frac = if in_bucket > 0.0 {
                (rank - lower_n) / in_bucket
            } else {
                1.0
            };
            return Some(lower_le + (le - lower_le) * frac);
        }
        lower_le = le;
        lower_n = n;
    }
    Some(lower_le)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE breakwater_gateway_connects_refused_total counter
breakwater_gateway_connects_refused_total{reason=\"queue_full\"} 7
breakwater_gateway_connects_refused_total{reason=\"bad_credentials\"} 2
breakwater_gateway_acks_sent_total 41
breakwater_gateway_stage_seconds_bucket{stage=\"kafka_delivery\",le=\"0.01\"} 50
breakwater_gateway_stage_seconds_bucket{stage=\"kafka_delivery\",le=\"0.02\"} 90
breakwater_gateway_stage_seconds_bucket{stage=\"kafka_delivery\",le=\"+Inf\"} 100
breakwater_gateway_stage_seconds_bucket{stage=\"durable\",le=\"+Inf\"} 3
garbage line
";

    #[test]
    fn sums_labels_and_buckets() {
        let s = Scrape::parse(TEXT);
        assert!((s.sum("breakwater_gateway_connects_refused_total") - 9.0).abs() < 1e-9);
        assert!((s.sum("breakwater_gateway_acks_sent_total") - 41.0).abs() < 1e-9);
        assert!(s.sum("nope").abs() < 1e-9);
        let by = s.by_label("breakwater_gateway_connects_refused_total", "reason");
        assert_eq!(by.get("queue_full"), Some(&7.0));
        let b = s.buckets(
            "breakwater_gateway_stage_seconds",
            "stage",
            "kafka_delivery",
        );
        assert_eq!(b.len(), 3);
        assert!(b[2].0.is_infinite());
    }

    #[test]
    fn quantiles_interpolate_within_buckets_and_diff_windows() {
        let s = Scrape::parse(TEXT);
        let b = s.buckets(
            "breakwater_gateway_stage_seconds",
            "stage",
            "kafka_delivery",
        );
        let p50 = quantile(0.5, &b, &[]).unwrap();
        assert!((p50 - 0.01).abs() < 1e-9, "{p50}");
        let p70 = quantile(0.7, &b, &[]).unwrap();
        assert!((p70 - 0.015).abs() < 1e-9, "{p70}");
        // Beyond the last finite bound.
        assert!((quantile(0.99, &b, &[]).unwrap() - 0.02).abs() < 1e-9);
        // Nothing new since `before`: no quantile.
        assert_eq!(quantile(0.5, &b, &b), None);
        // Only the window's observations count: 40 new ones, all in (0.01, 0.02].
        let before = vec![(0.01, 50.0), (0.02, 50.0), (f64::INFINITY, 60.0)];
        let p = quantile(0.5, &b, &before).unwrap();
        assert!(p > 0.01 && p <= 0.02, "{p}");
    }
}
