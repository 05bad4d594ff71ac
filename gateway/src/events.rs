//! Fleet events: device status messages (birth, death, last-will lost) and connections refused by
//! admission control become [`FleetEvent`] JSON records on `[kafka] events_topic`, keyed by
//! device id, and are counted by kind. Events are best effort: when the queue or Kafka cannot
//! take them they are dropped and counted (telemetry never waits for them).

use std::time::Duration;

use breakwater_protocol::kafka::{FleetEvent, FleetEventKind};
use breakwater_protocol::{DeviceId, Status, StatusKind};
use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::admission::Refused;
use crate::stats as m;

/// What the link consumer and admission control report.
#[derive(Debug)]
pub enum FleetInput {
    /// A status message and the gateway clock when it arrived.
    Status(Status, u64),
    Refused(Refused),
    /// An event made elsewhere (Sparkplug BIRTH/DEATH, `crate::sparkplug`).
    Event(FleetEvent),
}

fn kind_of(s: StatusKind) -> FleetEventKind {
    match s {
        StatusKind::Birth => FleetEventKind::Birth,
        StatusKind::Death => FleetEventKind::Death,
        StatusKind::Lost => FleetEventKind::Lost,
    }
}

fn kind_str(k: FleetEventKind) -> &'static str {
    match k {
        FleetEventKind::Birth => "birth",
        FleetEventKind::Death => "death",
        FleetEventKind::Lost => "lost",
        FleetEventKind::Refused => "refused",
    }
}

/// The fleet event for an input, or `None` when a refused client id is not a device id.
#[must_use]
pub fn to_event(input: FleetInput) -> Option<FleetEvent> {
    match input {
        FleetInput::Status(s, gateway_ts) => Some(FleetEvent {
            device: s.device,
            epoch: s.epoch,
            kind: kind_of(s.kind),
            ts: s.ts,
            gateway_ts,
            reason: None,
        }),
        FleetInput::Event(ev) => Some(ev),
        FleetInput::Refused(r) => Some(FleetEvent {
            device: DeviceId::parse(r.client_id).ok()?,
            epoch: 0,
            kind: FleetEventKind::Refused,
            ts: r.at_ms,
            gateway_ts: r.at_ms,
            reason: Some(r.reason.to_owned()),
        }),
    }
}

/// Sparkplug BIRTH/DEATH on the status page: as a status of epoch 0 at the gateway's clock.
/// Their `epoch` is a bdSeq, which wraps at 256, and an NDEATH will carries the time its
/// connection was made, before the NBIRTH: neither orders them. The session already took only
/// a death that matches the birth (`crate::sparkplug::session`), in arrival order.
fn presence_of_event(p: &crate::status::Presence, ev: &FleetEvent) {
    let kind = match ev.kind {
        FleetEventKind::Birth => StatusKind::Birth,
        FleetEventKind::Death => StatusKind::Death,
        FleetEventKind::Lost | FleetEventKind::Refused => return,
    };
    let status = Status {
        device: ev.device.clone(),
        epoch: 0,
        kind,
        ts: ev.gateway_ts,
    };
    p.apply(&status, ev.gateway_ts);
}

/// Forwards refusals from admission control into the events queue.
pub async fn forward_refused(mut rx: mpsc::Receiver<Refused>, events: mpsc::Sender<FleetInput>) {
    while let Some(r) = rx.recv().await {
        if events.try_send(FleetInput::Refused(r)).is_err() {
            metrics::counter!(m::EVENTS_DROPPED, "reason" => "queue_full").increment(1);
        }
    }
}

/// Runs until every sender is dropped, then waits up to `flush` for outstanding deliveries.
///
/// Status messages also update `presence` (connected devices for operators), whether or not
/// there is a Kafka producer.
pub async fn run(
    mut rx: mpsc::Receiver<FleetInput>,
    producer: Option<FutureProducer>,
    topic: String,
    flush: Duration,
    presence: Option<std::sync::Arc<crate::status::Presence>>,
) {
    let mut inflight = FuturesUnordered::new();
    loop {
        tokio::select! {
            input = rx.recv() => {
                let Some(input) = input else { break };
                if let (FleetInput::Status(status, at), Some(p)) = (&input, &presence) {
                    p.apply(status, *at);
                }
                if let (FleetInput::Event(ev), Some(p)) = (&input, &presence) {
                    presence_of_event(p, ev);
                }
                let Some(ev) = to_event(input) else {
                    metrics::counter!(m::EVENTS_DROPPED, "reason" => "invalid_client_id").increment(1);
                    continue;
                };
                let kind = kind_str(ev.kind);
                metrics::counter!(m::EVENTS, "kind" => kind).increment(1);
                debug!(device = %ev.device, kind, "fleet event");
                let Some(p) = &producer else { continue };
                if inflight.len() >= 10_000 {
                    metrics::counter!(m::EVENTS_DROPPED, "reason" => "kafka_backlog").increment(1);
                    continue;
                }
                let value = ev.encode();
                let rec = FutureRecord::to(&topic).key(ev.device.as_str()).payload(&value);
                match p.send_result(rec) {
                    Ok(fut) => inflight.push(fut),
                    Err((e, _)) => {
                        metrics::counter!(m::EVENTS_DROPPED, "reason" => "kafka_error").increment(1);
                        warn!(error = %e, "fleet event not produced");
                    }
                }
            }
            Some(res) = inflight.next(), if !inflight.is_empty() => {
                if !matches!(res, Ok(Ok(_))) {
                    metrics::counter!(m::EVENTS_DROPPED, "reason" => "kafka_error").increment(1);
                }
            }
        }
    }
    let _ = tokio::time::timeout(flush, async {
        while let Some(res) = inflight.next().await {
            if !matches!(res, Ok(Ok(_))) {
                metrics::counter!(m::EVENTS_DROPPED, "reason" => "kafka_error").increment(1);
            }
        }
    })
    .await;
    info!("events stopped");
}
