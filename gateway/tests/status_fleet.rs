//! The device table of the status API over a 20,000-device fleet, through the library (no
//! network): every device exactly once across the pages, in id order, and search by id.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use breakwater_gateway::ack::Pressure;
use breakwater_gateway::admission::{Admission, AdmissionConfig, AuthConfig};
use breakwater_gateway::config::{AckConfig, AckMode};
use breakwater_gateway::http::Health;
use breakwater_gateway::sequencer::Sequencer;
use breakwater_gateway::spool::Spool;
use breakwater_gateway::status::api::{devices_json, DevicesQuery, MAX_PAGE};
use breakwater_gateway::status::{Presence, Sources, Status};
use breakwater_protocol::{DeviceId, Status as DeviceStatus, StatusKind};

const FLEET: usize = 20_000;

#[test]
fn pages_through_20000_devices_and_finds_one_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), 1 << 30).unwrap();
    let sequencer = Arc::new(Sequencer::new());
    let presence = Arc::new(Presence::new());
    for i in 0..FLEET {
        let d = DeviceId::parse(format!("plant-{:05}", (i * 7919) % FLEET)).unwrap();
        sequencer.seed(d.clone(), 3, i as u64, &[], false);
        // Every third device connected.
        if i % 3 == 0 {
            presence.apply(
                &DeviceStatus {
                    device: d,
                    epoch: 3,
                    kind: StatusKind::Birth,
                    ts: 1,
                },
                1,
            );
        }
    }
    let status = Status::new(Sources {
        sequencer,
        spool: spool.clone(),
        admission: Admission::new(&AdmissionConfig::default(), &AuthConfig::default(), None)
            .unwrap(),
        presence,
        pressure: Arc::new(Pressure {
            queue_depth: Arc::new(AtomicUsize::new(0)),
            queue_capacity: 100,
            spool,
        }),
        ack: AckConfig::default(),
        ack_mode: AckMode::Spool,
        kafka: None,
        health: Arc::new(Health::default()),
        prom: breakwater_gateway::http::recorder(),
    });

    let started = Instant::now();
    let mut ids = Vec::with_capacity(FLEET);
    let mut offset = 0;
    loop {
        let q = DevicesQuery {
            offset: Some(offset),
            limit: Some(MAX_PAGE),
            ..DevicesQuery::default()
        };
        let page = devices_json(&status, &q).unwrap();
        assert_eq!(page["total"], FLEET);
        let rows = page["devices"].as_array().unwrap();
        if rows.is_empty() {
            break;
        }
        ids.extend(rows.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        offset += rows.len();
    }
    let pages = FLEET.div_ceil(MAX_PAGE);
    eprintln!(
        "{pages} pages of {MAX_PAGE} over {FLEET} devices in {:?} ({:?} per page)",
        started.elapsed(),
        started.elapsed() / u32::try_from(pages).unwrap()
    );
    assert_eq!(ids.len(), FLEET, "every device once");
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, ids, "in id order, no duplicates");

    let q = DevicesQuery {
        q: Some("PLANT-12345".into()),
        ..DevicesQuery::default()
    };
    let found = devices_json(&status, &q).unwrap();
    assert_eq!(found["matched"], 1);
    assert_eq!(found["devices"][0]["id"], "plant-12345");
    assert_eq!(found["devices"][0]["epoch"], "3");

    let q = DevicesQuery {
        state: Some("connected".into()),
        limit: Some(1),
        ..DevicesQuery::default()
    };
    let connected = devices_json(&status, &q).unwrap();
    assert_eq!(connected["matched"], FLEET.div_ceil(3));
}
