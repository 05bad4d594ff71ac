//! The local ingest endpoint: newline-delimited JSON over TCP on loopback.
//!
//! One reading per line: `{"metric":"temp","value":21.5,"ts":1764115200000}` (`ts` in ms since
//! the Unix epoch, optional, defaults to now; `value` a number, boolean or string). Each line
//! gets exactly one reply line, in order, sent only once the reading is durable:
//! `{"ok":true,"seq":42}`, or `{"ok":false,"error":"..."}` naming what was wrong. Blank lines
//! are skipped without a reply.
//!
//! Isolation: every client has its own task; a malformed line only earns that line an error, a
//! line longer than `max_line_bytes` is discarded up to its newline (and answered with an
//! error), a client that does not read its replies only stalls itself, and at most
//! `max_clients` are served at once (the next ones get an error line and are closed). All the
//! lines a client has sent that are already in the socket buffer are appended together, so a
//! pipelining client shares one fsync across many lines.
//!
//! Backpressure: with the `block` buffer policy a full buffer makes the append wait, so the
//! client's task stops reading and TCP pushes back on the client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use breakwater_protocol::limits::check_reading;
use breakwater_protocol::{Limits, Reading, Value};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::buffer::Buffer;

/// Settings of the endpoint (see `[ingest]`).
#[derive(Debug, Clone, Copy)]
pub struct IngestSettings {
    pub max_line_bytes: usize,
    pub max_clients: usize,
}

/// Starts accepting on `listener`; every client task is tracked by `tracker` and stops reading
/// when `cancel` fires (a reply for lines already appended is still written).
pub fn spawn(
    listener: TcpListener,
    buffer: Arc<dyn Buffer>,
    settings: IngestSettings,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) {
    let t = tracker.clone();
    tracker.spawn(async move {
        let slots = Arc::new(Semaphore::new(settings.max_clients));
        loop {
            let (stream, peer) = tokio::select! {
                () = cancel.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // E.g. EMFILE: log, wait a little, keep serving.
                        tracing::warn!(error = %e, "ingest accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                metrics::counter!("breakwater_agent_ingest_rejected_clients_total").increment(1);
                t.spawn(async move {
                    let mut s = stream;
                    let _ = s.write_all(&error_line("too many clients connected")).await;
                });
                continue;
            };
            let buffer = buffer.clone();
            let cancel = cancel.clone();
            t.spawn(async move {
                let _permit = permit;
                if let Err(e) = serve_client(stream, buffer, settings.max_line_bytes, cancel).await
                {
                    tracing::debug!(%peer, error = %e, "ingest client ended with an error");
                }
            });
        }
        tracing::debug!("ingest listener stopped");
    });
}

fn reject(reason: &'static str) {
    metrics::counter!("breakwater_agent_ingest_rejected_lines_total", "reason" => reason)
        .increment(1);
}

/// `Some(failed appends not logged since the last line)` at most once per 10 s, process-wide.
fn append_failure_log_allowed() -> Option<u64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let now = crate::now_ms();
    let last = LAST_MS.load(Ordering::Relaxed);
    if last != 0 && now.saturating_sub(last) < 10_000 {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    if LAST_MS
        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    Some(SUPPRESSED.swap(0, Ordering::Relaxed))
}

fn error_line(msg: &str) -> Vec<u8> {
    let mut v = serde_json::json!({"ok": false, "error": msg})
        .to_string()
        .into_bytes();
    v.push(b'\n');
    v
}

fn ok_line(seq: u64) -> Vec<u8> {
    format!("{{\"ok\":true,\"seq\":{seq}}}\n").into_bytes()
}

/// One input line after framing.
enum Frame {
    Line(Vec<u8>),
    TooLong(usize),
}

/// Splits complete lines off `buf`. `discarding` is the length seen so far of an overlong line
/// whose newline has not arrived yet.
fn split_lines(
    buf: &mut Vec<u8>,
    discarding: &mut Option<usize>,
    max: usize,
    out: &mut Vec<Frame>,
) {
    let mut start = 0;
    while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
        let end = start + pos;
        if let Some(seen) = discarding.take() {
            out.push(Frame::TooLong(seen + (end - start)));
        } else if end - start > max {
            out.push(Frame::TooLong(end - start));
        } else {
            out.push(Frame::Line(buf[start..end].to_vec()));
        }
        start = end + 1;
    }
    buf.drain(..start);
    if buf.len() > max {
        *discarding = Some(discarding.unwrap_or(0) + buf.len());
        buf.clear();
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineIn {
    metric: String,
    value: serde_json::Value,
    ts: Option<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Parses and validates one line into a reading.
///
/// # Errors
/// A message for the client and a metrics reason.
pub fn parse_line(line: &[u8], now_ms: u64) -> Result<Reading, (String, &'static str)> {
    let l: LineIn = serde_json::from_slice(line)
        .map_err(|e| (format!("invalid JSON reading: {e}"), "invalid_json"))?;
    let value = match l.value {
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::String(s) => Value::from(s),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::I64(i),
            (None, Some(f)) => Value::F64(f),
            (None, None) => {
                return Err((format!("value {n} is not representable"), "invalid_reading"))
            }
        },
        other => {
            let kind = match other {
                serde_json::Value::Null => "null",
                serde_json::Value::Array(_) => "an array",
                _ => "an object",
            };
            return Err((
                format!("value must be a number, boolean or string, found {kind}"),
                "invalid_reading",
            ));
        }
    };
    check_reading(0, &l.metric, &value, &Limits::DEFAULT).map_err(|e| {
        let msg = e.to_string();
        (
            msg.strip_prefix("reading 0: ").unwrap_or(&msg).to_owned(),
            "invalid_reading",
        )
    })?;
    Ok(Reading {
        ts: l.ts.unwrap_or(now_ms),
        metric: l.metric.into(),
        value,
    })
}

async fn serve_client(
    stream: TcpStream,
    buffer: Arc<dyn Buffer>,
    max_line: usize,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let (mut rd, wr) = stream.into_split();
    let mut wr = BufWriter::new(wr);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut discarding = None;
    let mut frames = Vec::new();
    let mut eof = false;
    while !eof {
        buf.reserve(16 * 1024);
        let n = tokio::select! {
            () = cancel.cancelled() => break,
            r = rd.read_buf(&mut buf) => r?,
        };
        if n == 0 {
            eof = true;
            if !buf.is_empty() {
                buf.push(b'\n'); // a last line without its newline still counts
            } else if let Some(seen) = discarding.take() {
                frames.push(Frame::TooLong(seen));
            }
        }
        split_lines(&mut buf, &mut discarding, max_line, &mut frames);
        if frames.is_empty() {
            continue;
        }
        handle_frames(std::mem::take(&mut frames), &buffer, max_line, &mut wr).await?;
        wr.flush().await?;
    }
    Ok(())
}

async fn handle_frames(
    frames: Vec<Frame>,
    buffer: &Arc<dyn Buffer>,
    max_line: usize,
    wr: &mut (impl AsyncWriteExt + Unpin),
) -> std::io::Result<()> {
    let now = now_ms();
    // Per line: Ok(index into readings) or Err(message); blank lines are skipped.
    let mut outcomes: Vec<Result<usize, String>> = Vec::with_capacity(frames.len());
    let mut readings = Vec::new();
    for f in frames {
        match f {
            Frame::TooLong(len) => {
                reject("too_long");
                outcomes.push(Err(format!(
                    "line is {len} bytes long, the limit is {max_line}"
                )));
            }
            Frame::Line(mut line) => {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match parse_line(&line, now) {
                    Ok(r) => {
                        outcomes.push(Ok(readings.len()));
                        readings.push(r);
                    }
                    Err((msg, reason)) => {
                        reject(reason);
                        outcomes.push(Err(msg));
                    }
                }
            }
        }
    }
    let stored = if readings.is_empty() {
        None
    } else {
        let n = readings.len() as u64;
        match buffer.append(readings).await {
            Ok(a) => {
                metrics::counter!("breakwater_agent_ingest_accepted_lines_total").increment(n);
                Some(Ok(a.first_seq))
            }
            Err(e) => {
                // Every client's every line fails while the storage is failing: one line per
                // 10 s (with the count) instead of one per append.
                if let Some(suppressed) = append_failure_log_allowed() {
                    tracing::warn!(error = %e, lines = n, suppressed, "ingest append failed");
                }
                for _ in 0..n {
                    reject("not_stored");
                }
                Some(Err(format!("not stored: {e}")))
            }
        }
    };
    for o in outcomes {
        let line = match (o, &stored) {
            (Ok(i), Some(Ok(first))) => ok_line(first + i as u64),
            (Ok(_), Some(Err(msg))) => error_line(msg),
            (Ok(_), None) => error_line("internal: no append result"),
            (Err(msg), _) => error_line(&msg),
        };
        wr.write_all(&line).await?;
    }
    Ok(())
}

/// Binds the endpoint's listener.
///
/// # Errors
/// The address cannot be bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shape() {
        let r = parse_line(br#"{"metric":"temp","value":21.5,"ts":1764115200000}"#, 5).unwrap();
        assert_eq!(r, Reading::new("temp", 21.5, 1_764_115_200_000));
        let r = parse_line(br#"{"metric":"n","value":3}"#, 5).unwrap();
        assert_eq!(r, Reading::new("n", Value::I64(3), 5));
        let r = parse_line(br#"{"metric":"on","value":true}"#, 5).unwrap();
        assert_eq!(r.value, Value::Bool(true));
        let r = parse_line(br#"{"metric":"s","value":"hi"}"#, 5).unwrap();
        assert_eq!(r.value, Value::from("hi"));
    }

    #[test]
    fn rejects_with_a_reason() {
        for (line, needle) in [
            (&br#"{"metric":"t""#[..], "invalid JSON"),
            (br#"{"metric":"t","value":null}"#, "found null"),
            (br#"{"metric":"t","value":[1]}"#, "found an array"),
            (br#"{"metric":"","value":1}"#, "metric name is empty"),
            (
                br#"{"metric":"t","value":1,"colour":"red"}"#,
                "unknown field",
            ),
            (br#"{"value":1}"#, "missing field `metric`"),
            (br#"{"metric":"t","value":1,"ts":-5}"#, "invalid JSON"),
            (b"\xff\xfe", "invalid JSON"),
        ] {
            let (msg, _) = parse_line(line, 0).unwrap_err();
            assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        }
    }

    #[test]
    fn framing_discards_overlong_lines_up_to_their_newline() {
        let mut buf = b"ab\ncdefghij".to_vec();
        let mut d = None;
        let mut out = Vec::new();
        split_lines(&mut buf, &mut d, 4, &mut out);
        assert!(matches!(&out[..], [Frame::Line(l)] if l == b"ab"));
        assert!(buf.is_empty() && d == Some(8));
        buf.extend_from_slice(b"klm\nxy\n");
        out.clear();
        split_lines(&mut buf, &mut d, 4, &mut out);
        assert!(matches!(&out[..], [Frame::TooLong(11), Frame::Line(l)] if l == b"xy"));
        assert!(d.is_none());
    }
}
