//! When rumqttd skips the gateway's link ahead (its in-memory log rolled past the link's
//! cursor), the `CursorJump` alert becomes `breakwater_gateway_link_cursor_jumps_total`. Forced
//! with the smallest telemetry log (one 64 KiB segment) and bursts of large publishes that the
//! router appends before it serves the link. The flood is garbage (counted invalid), and a
//! well-behaved device still completes afterwards.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_jumps_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProc::start_full(
        dir.path(),
        "segment_bytes = 65536\nsegment_count = 1",
        "",
        "",
    );
    let mut o = MqttOptions::new("flood-1", "127.0.0.1", gw.mqtt_port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(1000);
    let (client, mut el) = AsyncClient::new(o, 1000);
    let pump = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Disconnect)) | Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(_) => {}
            }
        }
    });
    let payload = vec![0xAB_u8; 400_000];
    let jumped = {
        let mut jumped = false;
        for _round in 0..20 {
            for _ in 0..40 {
                client
                    .publish(
                        "bw/v1/flood-1/telemetry",
                        QoS::AtMostOnce,
                        false,
                        payload.clone(),
                    )
                    .await
                    .unwrap();
            }
            if wait_until(Duration::from_secs(2), || {
                gw.metric("breakwater_gateway_link_cursor_jumps_total", "") >= 1.0
            }) {
                jumped = true;
                break;
            }
        }
        jumped
    };
    pump.abort();
    assert!(jumped, "no cursor jump counted:\n{}", gw.metrics());
    assert!(
        gw.metric(
            "breakwater_gateway_invalid_payloads_total",
            "reason=\"bad_magic\""
        ) >= 1.0
    );
    let r = run_device(spec(gw.mqtt_port, "after-flood", 200)).await;
    assert_eq!(r.acked_upto, 200);
}
