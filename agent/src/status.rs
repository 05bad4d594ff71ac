//! What `breakwater-agent status` shows: the link as the sender last reported it.
//!
//! [`LinkStatus::sink`] is an [`EventSink`] fed every [`SenderEvent`] of the device (on the
//! sender's task: it only takes a small mutex for a few field writes). The metrics endpoint
//! serves it with the buffer's counters as `GET /status` JSON ([`document`]).

use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::buffer::{BufferStats, StorageFailing};
use crate::sender::{DisconnectReason, EventSink, SenderEvent};

/// The link's last reported state. Times are wall clock, ms since the Unix epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LinkState {
    /// `starting`, `connecting`, `connected`, `disconnected` or `backoff`.
    pub state: &'static str,
    pub since_ms: u64,
    /// Failed attempts since the last stable link (while connecting).
    pub attempt: u32,
    pub last_disconnect: Option<String>,
    pub last_ack_ms: Option<u64>,
    pub last_ack_upto: Option<u64>,
    /// Credit (batches in flight) the last ack granted.
    pub credit: Option<u32>,
    pub last_ack_latency_ms: Option<u64>,
    /// Delay before the next connection attempt (state `backoff`).
    pub backoff_ms: Option<u64>,
    pub last_sent_seq: Option<u64>,
    pub ack_timeouts: u64,
    /// Gateway failovers since start, and the gateway the last one moved to.
    pub failovers: u64,
    pub failed_over_to: Option<String>,
}

/// Shared link state, updated by the sender's events.
#[derive(Debug, Default)]
pub struct LinkStatus {
    inner: Mutex<LinkState>,
}

impl LinkStatus {
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(LinkState {
                state: "starting",
                since_ms: crate::now_ms(),
                ..LinkState::default()
            }),
        })
    }

    /// A copy of the state now.
    #[must_use]
    pub fn get(&self) -> LinkState {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Applies one sender event.
    pub fn apply(&self, ev: &SenderEvent) {
        let now = crate::now_ms();
        let mut s = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let enter = |s: &mut LinkState, state: &'static str| {
            if s.state != state {
                s.state = state;
                s.since_ms = now;
            }
        };
        match ev {
            SenderEvent::Connecting { attempt } => {
                enter(&mut s, "connecting");
                s.attempt = *attempt;
            }
            SenderEvent::Connected => {
                enter(&mut s, "connected");
                s.attempt = 0;
                s.backoff_ms = None;
            }
            SenderEvent::Disconnected { reason } => {
                enter(&mut s, "disconnected");
                s.last_disconnect = Some(match reason {
                    DisconnectReason::Error(e) => e.clone(),
                    DisconnectReason::Cut => "cut".into(),
                    DisconnectReason::Shutdown => "shutdown".into(),
                });
            }
            SenderEvent::Backoff { delay } => {
                enter(&mut s, "backoff");
                s.backoff_ms = Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
            }
            SenderEvent::Sent { last_seq, .. } => s.last_sent_seq = Some(*last_seq),
            SenderEvent::Acked {
                upto_seq,
                latency,
                credit,
            } => {
                s.last_ack_ms = Some(now);
                s.last_ack_upto = Some(*upto_seq);
                s.credit = Some(*credit);
                if let Some(l) = latency {
                    s.last_ack_latency_ms = Some(u64::try_from(l.as_millis()).unwrap_or(u64::MAX));
                }
            }
            SenderEvent::AckTimeout { .. } => s.ack_timeouts += 1,
            SenderEvent::FloorSent { .. } => {}
            SenderEvent::FailedOver { to, .. } => {
                s.failovers += 1;
                s.failed_over_to = Some(to.clone());
            }
        }
    }

    /// An event sink that applies every event here, then hands it to `next` (if any).
    #[must_use]
    pub fn sink(self: &Arc<Self>, next: Option<EventSink>) -> EventSink {
        let this = Arc::clone(self);
        Arc::new(move |device, ev| {
            this.apply(ev);
            if let Some(n) = &next {
                n(device, ev);
            }
        })
    }
}

/// The `GET /status` document. `storage` is the buffer's health ([`crate::buffer::Buffer::health`]):
/// `buffer.storage` is `"ok"` or `"failing"` (then `storage_error` and `storage_failing_s`).
#[must_use]
pub fn document(
    device: &str,
    buffer: &BufferStats,
    storage: Result<(), StorageFailing>,
    link: &LinkState,
    now_ms: u64,
) -> serde_json::Value {
    let (storage, storage_error, storage_failing_s) = match storage {
        Ok(()) => ("ok", None, None),
        Err(f) => (
            "failing",
            Some(format!(
                "{} ({} reopen attempts)",
                f.error, f.reopen_attempts
            )),
            Some(f.since.elapsed().as_secs_f64()),
        ),
    };
    serde_json::json!({
        "device": device,
        "now_ms": now_ms,
        "buffer": {
            "readings": buffer.readings,
            "bytes": buffer.bytes,
            "epoch": buffer.epoch,
            "next_seq": buffer.next_seq,
            "oldest_unacked_age_s": buffer.oldest_ts.map(|ts| now_ms.saturating_sub(ts) as f64 / 1000.0),
            "storage": storage,
            "storage_error": storage_error,
            "storage_failing_s": storage_failing_s,
        },
        "link": link,
    })
}

/// The summary `breakwater-agent status` prints.
#[must_use]
pub fn render(doc: &serde_json::Value) -> String {
    let b = &doc["buffer"];
    let l = &doc["link"];
    let now = doc["now_ms"].as_u64().unwrap_or(0);
    let ago = |v: &serde_json::Value| {
        v.as_u64().map_or_else(
            || "never".to_owned(),
            |t| format!("{:.1} s ago", now.saturating_sub(t) as f64 / 1000.0),
        )
    };
    let opt = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = String::new();
    out.push_str(&format!("device      {}\n", opt(&doc["device"])));
    out.push_str(&format!(
        "connection  {} since {}{}\n",
        opt(&l["state"]),
        ago(&l["since_ms"]),
        l["last_disconnect"]
            .as_str()
            .map_or_else(String::new, |r| format!(" (last disconnect: {r})"))
    ));
    out.push_str(&format!(
        "buffer      {} readings, {} bytes, oldest unacked {}\n",
        opt(&b["readings"]),
        opt(&b["bytes"]),
        b["oldest_unacked_age_s"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |s| format!("{s:.1} s"))
    ));
    if b["storage"].as_str() == Some("failing") {
        out.push_str(&format!(
            "storage     FAILING for {:.0} s, writes refused while it reopens: {}\n",
            b["storage_failing_s"].as_f64().unwrap_or(0.0),
            opt(&b["storage_error"])
        ));
    } else {
        out.push_str("storage     ok\n");
    }
    out.push_str(&format!(
        "last ack    {} up to seq {} (latency {} ms), last sent seq {}, {} ack timeouts\n",
        ago(&l["last_ack_ms"]),
        opt(&l["last_ack_upto"]),
        opt(&l["last_ack_latency_ms"]),
        opt(&l["last_sent_seq"]),
        opt(&l["ack_timeouts"]),
    ));
    out.push_str(&format!("credit      {}\n", opt(&l["credit"])));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn events_move_the_state() {
        let s = LinkStatus::new();
        assert_eq!(s.get().state, "starting");
        s.apply(&SenderEvent::Connecting { attempt: 2 });
        assert_eq!(s.get().attempt, 2);
        s.apply(&SenderEvent::Connected);
        s.apply(&SenderEvent::Acked {
            upto_seq: 40,
            latency: Some(Duration::from_millis(12)),
            credit: 8,
        });
        let g = s.get();
        assert_eq!(
            (g.state, g.credit, g.last_ack_upto, g.last_ack_latency_ms),
            ("connected", Some(8), Some(40), Some(12))
        );
        s.apply(&SenderEvent::Disconnected {
            reason: DisconnectReason::Error("reset".into()),
        });
        s.apply(&SenderEvent::Backoff {
            delay: Duration::from_millis(1500),
        });
        let g = s.get();
        assert_eq!(g.state, "backoff");
        assert_eq!(g.backoff_ms, Some(1500));
        assert_eq!(g.last_disconnect.as_deref(), Some("reset"));
        let doc = document(
            "dev-1",
            &BufferStats::default(),
            Ok(()),
            &g,
            crate::now_ms(),
        );
        let text = render(&doc);
        assert!(text.contains("storage     ok"), "{text}");
        assert!(text.contains("backoff since"), "{text}");
        let failing = StorageFailing {
            error: "No space left on device (os error 28)".into(),
            since: std::time::Instant::now(),
            reopen_attempts: 3,
        };
        let doc = document(
            "dev-1",
            &BufferStats::default(),
            Err(failing),
            &g,
            crate::now_ms(),
        );
        assert_eq!(doc["buffer"]["storage"], "failing");
        let text = render(&doc);
        assert!(
            text.contains("storage     FAILING") && text.contains("No space left"),
            "{text}"
        );
        assert!(text.contains("up to seq 40"), "{text}");
        assert!(text.contains("credit      8"), "{text}");
    }
}
