//! `breakwater-gateway status [--url URL] [--json]`: the `/api/v1/status` summary on a
//! terminal. Plain HTTP/1.1 over a std `TcpStream` (the status listener is local or on a
//! management network; no TLS), bounded by a timeout.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

/// Why the status could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("URL must look like http://HOST:PORT[/...]: {0}")]
    BadUrl(String),
    #[error("cannot reach {addr}: {source} (is the gateway running? `[metrics] listen` is its status address)")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("talking to {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url} did not answer with JSON: {source}")]
    Json {
        url: String,
        source: serde_json::Error,
    },
}

/// GETs `base` + `path` and parses the JSON body.
///
/// # Errors
/// See [`FetchError`].
pub fn fetch(base: &str, path: &str, timeout: Duration) -> Result<Value, FetchError> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| FetchError::BadUrl(base.to_owned()))?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Err(FetchError::BadUrl(base.to_owned()));
    }
    let addr = authority.to_owned();
    let sock = authority
        .to_socket_addrs()
        .map_err(|_| FetchError::BadUrl(base.to_owned()))?
        .next()
        .ok_or_else(|| FetchError::BadUrl(base.to_owned()))?;
    let mut s =
        TcpStream::connect_timeout(&sock, timeout).map_err(|source| FetchError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let io = |source| FetchError::Io {
        addr: addr.clone(),
        source,
    };
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut buf = Vec::new();
    // A status document is a few tens of KiB; stop reading at 16 MiB whatever the peer sends.
    s.take(16 << 20).read_to_end(&mut buf).map_err(io)?;
    let text = String::from_utf8_lossy(&buf);
    let url = format!("http://{authority}{path}");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    if status != 200 {
        return Err(FetchError::Status {
            url,
            status,
            body: body.chars().take(300).collect(),
        });
    }
    serde_json::from_str(&body).map_err(|source| FetchError::Json { url, source })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn num(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn reasons(v: &Value) -> String {
    let Some(map) = v.as_object() else {
        return "none".into();
    };
    let parts: Vec<String> = map
        .iter()
        .filter(|(_, n)| n.as_f64().unwrap_or(0.0) > 0.0)
        .map(|(k, n)| format!("{k} {}", num(n)))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn age(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".into(), |s| format!("{s:.1} s"))
}

/// The summary `breakwater-gateway status` prints, from a `/api/v1/status` document.
#[must_use]
pub fn render(s: &Value) -> String {
    let g = &s["gateway"];
    let d = &s["devices"];
    let c = &s["connects"];
    let b = &s["burst"];
    let sp = &s["spool"];
    let k = &s["kafka"];
    let a = &s["acks"];
    let r = &s["readings"];
    let bp = &s["backpressure"];
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    line(format!(
        "gateway     {} up {} s, ready {}, ack mode {}",
        num(&g["version"]),
        num(&g["uptime_s"]),
        num(&g["ready"]),
        num(&g["ack_mode"])
    ));
    line(format!(
        "devices     {} connected, {} known, {} waiting for an ack (oldest {})",
        num(&d["connected"]),
        num(&d["known"]),
        num(&d["unacked"]),
        age(&d["oldest_unacked_age_s"])
    ));
    line(format!(
        "connects    {}/s admitted, {}/s refused, {} waiting in admission",
        num(&c["admitted_per_s"]),
        num(&c["refused_per_s"]),
        num(&c["waiting"])
    ));
    line(format!("refusals    {}", reasons(&c["refused"])));
    if let Some(den) = c["denials"].as_object() {
        for (name, by) in den {
            line(format!("denials     {name}: {}", reasons(by)));
        }
    }
    let burst = if b["active"].as_bool() == Some(true) {
        let cur = &b["current"];
        format!(
            "ON for {:.0} s: peak {}/s, {} connects (baseline {}/s)",
            cur["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0,
            num(&cur["peak_rate"]),
            num(&cur["connects"]),
            num(&b["baseline"])
        )
    } else if b["last"].is_object() {
        let last = &b["last"];
        format!(
            "none now ({}/s); last: peak {}/s, {} connects over {:.0} s; {} since start",
            num(&b["rate"]),
            num(&last["peak_rate"]),
            num(&last["connects"]),
            last["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0,
            num(&b["total"])
        )
    } else {
        format!(
            "none ({}/s, baseline {}/s)",
            num(&b["rate"]),
            num(&b["baseline"])
        )
    };
    line(format!("burst       {burst}"));
    line(format!(
        "spool       {} records, {} of {} bytes ({:.1}%), oldest {}",
        num(&sp["records"]),
        num(&sp["bytes"]),
        num(&sp["max_bytes"]),
        sp["fill_ratio"].as_f64().unwrap_or(0.0) * 100.0,
        age(&sp["oldest_age_s"])
    ));
    if k["configured"].as_bool() == Some(true) {
        let reach = match k["reachable"].as_bool() {
            Some(true) => "reachable".to_owned(),
            Some(false) => format!("UNREACHABLE ({})", num(&k["error"])),
            None => "not probed yet".to_owned(),
        };
        line(format!(
            "kafka       {reach}, delivery p50 {} ms p99 {} ms, {} records in flight, {} errors",
            num(&k["delivery_p50_ms"]),
            num(&k["delivery_p99_ms"]),
            num(&k["in_flight_records"]),
            num(&k["errors_total"])
        ));
    } else {
        line("kafka       not configured (spool only)".into());
    }
    line(format!(
        "acks        {}/s, dropped: {}",
        num(&a["per_s"]),
        reasons(&a["dropped"])
    ));
    line(format!(
        "readings    {}/s accepted; dropped batches: {}; invalid: {}",
        num(&r["accepted_per_s"]),
        reasons(&r["dropped_batches"]),
        reasons(&r["invalid_payloads"])
    ));
    line(format!(
        "backpressure pressure {}, credit {}, retry_after {} ms, queue {}/{}",
        num(&bp["pressure"]),
        num(&bp["credit"]),
        num(&bp["retry_after_ms"]),
        num(&bp["queue_depth"]),
        num(&bp["queue_capacity"])
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_burst_and_unreachable_kafka() {
        let v = serde_json::json!({
            "gateway": {"version": "0.1.0", "uptime_s": 5, "ready": true, "ack_mode": "kafka"},
            "devices": {"connected": 3, "known": 4, "unacked": 1, "oldest_unacked_age_s": 2.5},
            "connects": {"admitted_per_s": 10.0, "refused_per_s": 0.0, "waiting": 2,
                         "refused": {"queue_full": 4.0, "wait_exceeded": 0.0}, "denials": {}},
            "burst": {"active": true, "rate": 300.0, "baseline": 1.0, "total": 1,
                      "current": {"duration_ms": 3000, "peak_rate": 450.0, "connects": 900}},
            "spool": {"records": 1, "bytes": 10, "max_bytes": 1000, "fill_ratio": 0.01, "oldest_age_s": null},
            "kafka": {"configured": true, "reachable": false, "error": "timed out"},
            "acks": {"per_s": 1.0, "dropped": {}},
            "readings": {"accepted_per_s": 1.0, "dropped_batches": {}, "invalid_payloads": {}},
            "backpressure": {"pressure": 0.0, "credit": 16, "retry_after_ms": null,
                             "queue_depth": 0, "queue_capacity": 100},
        });
        let out = render(&v);
        assert!(out.contains("3 connected"), "{out}");
        assert!(out.contains("queue_full 4"), "{out}");
        assert!(!out.contains("wait_exceeded"), "{out}");
        assert!(out.contains("ON for 3 s: peak 450"), "{out}");
        assert!(out.contains("UNREACHABLE (timed out)"), "{out}");
        assert!(out.contains("oldest 2.5 s"), "{out}");
    }

    #[test]
    fn bad_urls_and_closed_ports_are_clear_errors() {
        assert!(matches!(
            fetch("https://x:1", "/", Duration::from_millis(100)),
            Err(FetchError::BadUrl(_))
        ));
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = fetch(
            &format!("http://127.0.0.1:{port}"),
            "/api/v1/status",
            Duration::from_millis(500),
        )
        .unwrap_err();
        assert!(matches!(e, FetchError::Connect { .. }), "{e}");
        assert!(e.to_string().contains("is the gateway running"), "{e}");
    }
}
