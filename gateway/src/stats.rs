//! Metric names, in one place (`breakwater_gateway_<what>_<unit>`), and their descriptions.
//!
//! Every place that drops or refuses data increments [`DROPPED_BATCHES`] with a `reason`, or
//! [`INVALID_PAYLOADS`] for undecodable input.

pub const RECEIVED_BATCHES: &str = "breakwater_gateway_received_batches_total";
pub const RECEIVED_READINGS: &str = "breakwater_gateway_received_readings_total";
pub const ACCEPTED_READINGS: &str = "breakwater_gateway_accepted_readings_total";
/// Labels: `reason` = decode reason (`bad_magic`, `malformed`, ...), `bad_topic`,
/// `device_mismatch`, `wrong_kind`.
pub const INVALID_PAYLOADS: &str = "breakwater_gateway_invalid_payloads_total";
/// Labels: `reason` = `duplicate`, `gap`, `queue_full`, `spool_full`, `spool_error`,
/// `drain_stopped`, `kafka_rejected`.
pub const DROPPED_BATCHES: &str = "breakwater_gateway_dropped_batches_total";
/// Readings a device declared dropped (its `drop-oldest` buffer) that the gateway never got,
/// counted when the acks pass them (see `sequencer`).
pub const DEVICE_DROPPED_READINGS: &str = "breakwater_gateway_device_dropped_readings_total";
/// Floor declarations received from devices (see `breakwater_protocol::Floor`).
pub const RECEIVED_FLOORS: &str = "breakwater_gateway_received_floors_total";
pub const LINK_CURSOR_JUMPS: &str = "breakwater_gateway_link_cursor_jumps_total";
pub const LINK_LOST_MESSAGES: &str = "breakwater_gateway_link_lost_messages_total";
pub const QUEUE_DEPTH: &str = "breakwater_gateway_queue_batches";
pub const SPOOL_BYTES: &str = "breakwater_gateway_spool_bytes";
pub const SPOOL_RECORDS: &str = "breakwater_gateway_spool_records";
/// `[spool] max_bytes`: `SPOOL_BYTES / SPOOL_MAX_BYTES` is how full the spool is.
pub const SPOOL_MAX_BYTES: &str = "breakwater_gateway_spool_max_bytes";
pub const SPOOL_WRITTEN_BATCHES: &str = "breakwater_gateway_spool_written_batches_total";
/// Batches produced to Kafka straight from memory, past the spool (ack mode `kafka`).
pub const DIRECT_BATCHES: &str = "breakwater_gateway_direct_batches_total";
pub const SPOOL_DELETED_BATCHES: &str = "breakwater_gateway_spool_deleted_batches_total";
pub const SPOOL_COMMIT_SECONDS: &str = "breakwater_gateway_spool_commit_seconds";
/// 1 while the spool's disk fails (the last commit failed, none succeeded since), else 0.
pub const SPOOL_FAILING: &str = "breakwater_gateway_spool_failing";
/// Times the spool was closed and opened again after an error.
pub const SPOOL_REOPENS: &str = "breakwater_gateway_spool_reopens_total";
pub const KAFKA_DELIVERED_BATCHES: &str = "breakwater_gateway_kafka_delivered_batches_total";
pub const KAFKA_ERRORS: &str = "breakwater_gateway_kafka_errors_total";
pub const KAFKA_IN_FLIGHT: &str = "breakwater_gateway_kafka_in_flight_records";
pub const ACKS_SENT: &str = "breakwater_gateway_acks_sent_total";
/// Labels: `reason` = `queue_full`, `publish_error`.
pub const ACKS_DROPPED: &str = "breakwater_gateway_acks_dropped_total";
pub const PRESSURE: &str = "breakwater_gateway_pressure_ratio";
/// Labels: `kind` = `birth`, `death`, `lost`, `refused`.
pub const EVENTS: &str = "breakwater_gateway_events_total";
/// Labels: `reason` = `queue_full`, `kafka_error`.
pub const EVENTS_DROPPED: &str = "breakwater_gateway_events_dropped_total";
pub const DEVICES: &str = "breakwater_gateway_devices";
/// Devices whose last status message was a `Birth` (see `status::presence`).
pub const CONNECTED_DEVICES: &str = "breakwater_gateway_connected_devices";
/// Age of the oldest accepted batch some device still waits an ack for (0: none).
pub const OLDEST_UNACKED_AGE: &str = "breakwater_gateway_oldest_unacked_age_seconds";
/// Devices with accepted readings not yet durable (waiting for their ack).
pub const DEVICES_UNACKED: &str = "breakwater_gateway_devices_unacked";
/// Age of the oldest batch in the spool (0: empty).
pub const SPOOL_OLDEST_AGE: &str = "breakwater_gateway_spool_oldest_age_seconds";
/// 1 when the last Kafka metadata request succeeded, 0 when it failed (absent without Kafka).
pub const KAFKA_UP: &str = "breakwater_gateway_kafka_up";
/// Labels: `action` = `publish`, `subscribe`, `will`; `reason` = `foreign_topic`, `wildcard`,
/// `retain`, `qos2` (see `admission::authz`).
pub const AUTHZ_DENIED: &str = "breakwater_gateway_authz_denied_total";
/// Connections refused before CONNECT because their source address holds its cap of open
/// connections (`[admission] per_address_max_connections`).
pub const ADDRESS_CONNECTIONS_REFUSED: &str =
    "breakwater_gateway_address_connections_refused_total";
/// Connections from a trusted balancer (`[admission] proxy_protocol_from`) closed because
/// they did not start with a valid PROXY header, by `reason` = `missing`, `bad_v1`, `bad_v2`,
/// `io`.
pub const PROXY_PROTOCOL_REFUSED: &str = "breakwater_gateway_proxy_protocol_refused_total";
/// TLS handshakes that failed or timed out, by `reason` = `handshake`, `timeout`.
pub const TLS_HANDSHAKE_FAILURES: &str = "breakwater_gateway_tls_handshake_failures_total";
/// Reloads on SIGHUP, by `what` = `tls`, `credentials` and `result` = `ok`, `error`.
pub const RELOADS: &str = "breakwater_gateway_reloads_total";
/// rumqttd's count of connections that ended, by `reason` (vendor/PATCHES.md, patch 17).
pub const BROKER_CONNECTIONS_CLOSED: &str = "rumqttd_connections_closed_total";
/// Standard-client (issue 13) publishes taken from rumqttd, by `source` = `json`, `sparkplug`.
pub const STANDARD_PUBLISHES: &str = "breakwater_gateway_standard_publishes_total";
/// Standard clients' publishes refused (their connection closed, they resend), by `reason` =
/// `queue_full`, `spool_full`, `shutting_down`, `sequencer`, `unknown_topic`.
pub const STANDARD_REFUSED: &str = "breakwater_gateway_standard_refused_total";
/// Standard clients' PUBACKs sent after durability (QoS 0 publishes' tokens released, which
/// sends no PUBACK, count too).
pub const STANDARD_PUBACKS: &str = "breakwater_gateway_standard_pubacks_total";
/// Standard clients' publishes parked because the writer queue was full (their PUBACK is
/// delayed, `crate::standard`).
pub const STANDARD_PARKED: &str = "breakwater_gateway_standard_parked_total";
/// Standard clients' publishes parked now, waiting for room in the writer queue.
pub const STANDARD_PARKED_NOW: &str = "breakwater_gateway_standard_parked_publishes";
/// Time a batch spends in one stage of the ack path, seconds. Labels: `stage` =
/// * `spooled`: received from the broker -> handed to the Kafka producer (writer queue, spool
///   commit, drain read; ms resolution, from the record's receive time), for batches that went
///   through the spool,
/// * `direct`: the same for batches produced from memory (writer queue only),
/// * `kafka_delivery`: handed to the producer -> its delivery report seen by the drain,
/// * `durable`: received -> its ack queued (ack mode `kafka`: includes the two above and the
///   wait for earlier batches of the same device),
/// * `ack_queue`: ack queued -> published to the broker's router.
pub const STAGE_SECONDS: &str = "breakwater_gateway_stage_seconds";
/// Histogram buckets of [`STAGE_SECONDS`]: fine around the 100 ms ack-latency goal.
pub const STAGE_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2,
    0.3, 0.5, 1.0, 2.0, 5.0,
];

/// Counters (and label values) alert rules and dashboards use, registered at 0 at start-up: a
/// series that appears only with its first increment makes `rate()` and `increase()` miss that
/// first event, and a rule over a missing series cannot be told from a rule with a typo
/// (`deploy/prometheus`, checked against a live scrape by `scripts/ops-check`).
pub fn zero() {
    use metrics::counter;
    for name in [
        RECEIVED_BATCHES,
        RECEIVED_READINGS,
        ACCEPTED_READINGS,
        DEVICE_DROPPED_READINGS,
        LINK_CURSOR_JUMPS,
        LINK_LOST_MESSAGES,
        SPOOL_WRITTEN_BATCHES,
        SPOOL_DELETED_BATCHES,
        KAFKA_DELIVERED_BATCHES,
        KAFKA_ERRORS,
        ACKS_SENT,
        STANDARD_PARKED,
        "breakwater_gateway_connects_admitted_total",
        "breakwater_gateway_connects_abandoned_total",
        "breakwater_gateway_reconnect_bursts_total",
    ] {
        counter!(name).increment(0);
    }
    for reason in [
        "duplicate",
        "gap",
        "queue_full",
        "spool_full",
        "spool_error",
        "after_refused",
    ] {
        counter!(DROPPED_BATCHES, "reason" => reason).increment(0);
    }
    for reason in ["queue_full", "publish_error"] {
        counter!(ACKS_DROPPED, "reason" => reason).increment(0);
    }
    for reason in ["bad_topic", "device_mismatch", "wrong_kind"] {
        counter!(INVALID_PAYLOADS, "reason" => reason).increment(0);
    }
    for reason in ["invalid_client_id", "username_mismatch", "bad_credentials"] {
        counter!("breakwater_gateway_auth_failures_total", "reason" => reason).increment(0);
        counter!("breakwater_gateway_connects_refused_total", "reason" => reason).increment(0);
    }
    for reason in ["queue_full", "wait_exceeded"] {
        counter!("breakwater_gateway_connects_refused_total", "reason" => reason).increment(0);
    }
    for action in ["publish", "subscribe", "will"] {
        counter!(AUTHZ_DENIED, "action" => action, "reason" => "foreign_topic").increment(0);
    }
    counter!(ADDRESS_CONNECTIONS_REFUSED).increment(0);
    counter!(PROXY_PROTOCOL_REFUSED, "reason" => "missing").increment(0);
    metrics::gauge!("breakwater_gateway_connects_waiting").increment(0.0);
    metrics::gauge!(PRESSURE).set(0.0);
    metrics::gauge!(KAFKA_IN_FLIGHT).increment(0.0);
    metrics::gauge!(STANDARD_PARKED_NOW).set(0.0);
}

/// Registers descriptions with the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(RECEIVED_BATCHES, "Telemetry payloads read from the broker");
    describe_counter!(RECEIVED_READINGS, "Readings in decoded batches");
    describe_counter!(
        ACCEPTED_READINGS,
        "Readings accepted into the pipeline (new, not duplicates)"
    );
    describe_counter!(INVALID_PAYLOADS, "Payloads that failed decoding, by reason");
    describe_counter!(DROPPED_BATCHES, "Batches dropped or refused, by reason");
    describe_counter!(
        DEVICE_DROPPED_READINGS,
        "Readings devices declared dropped (drop-oldest) before the gateway got them"
    );
    describe_counter!(RECEIVED_FLOORS, "Floor declarations received from devices");
    describe_counter!(
        LINK_CURSOR_JUMPS,
        "rumqttd skipped the gateway's link ahead (it fell behind)"
    );
    describe_counter!(
        LINK_LOST_MESSAGES,
        "Messages lost in rumqttd cursor jumps as reported by rumqttd"
    );
    describe_gauge!(QUEUE_DEPTH, "Accepted batches waiting for the spool writer");
    describe_gauge!(SPOOL_BYTES, Unit::Bytes, "Bytes of batches in the spool");
    describe_gauge!(SPOOL_RECORDS, "Batches in the spool");
    describe_gauge!(
        SPOOL_MAX_BYTES,
        Unit::Bytes,
        "Spool size limit ([spool] max_bytes)"
    );
    describe_counter!(SPOOL_WRITTEN_BATCHES, "Batches committed to the spool");
    describe_counter!(
        DIRECT_BATCHES,
        "Batches produced to Kafka from memory, past the spool (ack mode kafka, Kafka keeping up)"
    );
    describe_counter!(
        SPOOL_DELETED_BATCHES,
        "Batches deleted after Kafka delivery"
    );
    describe_histogram!(SPOOL_COMMIT_SECONDS, Unit::Seconds, "Spool commit time");
    describe_gauge!(
        SPOOL_FAILING,
        "1 while spool commits fail (disk full or failing), else 0"
    );
    describe_counter!(
        SPOOL_REOPENS,
        "Times the spool database was reopened after an error"
    );
    describe_counter!(KAFKA_DELIVERED_BATCHES, "Batches Kafka confirmed");
    describe_counter!(KAFKA_ERRORS, "Kafka produce or delivery errors");
    describe_gauge!(
        KAFKA_IN_FLIGHT,
        "Records handed to the producer, not yet confirmed"
    );
    describe_counter!(ACKS_SENT, "Acks published to devices");
    describe_counter!(ACKS_DROPPED, "Acks not published, by reason");
    describe_gauge!(
        PRESSURE,
        "Backpressure level 0..1 used for credit and retry hints"
    );
    describe_counter!(EVENTS, "Fleet events seen, by kind");
    describe_counter!(EVENTS_DROPPED, "Fleet events not published, by reason");
    describe_gauge!(DEVICES, "Devices known to the sequencer");
    describe_gauge!(
        CONNECTED_DEVICES,
        "Devices connected (last status message a birth)"
    );
    describe_gauge!(
        OLDEST_UNACKED_AGE,
        Unit::Seconds,
        "Age of the oldest accepted batch not yet durable (a device waits for its ack)"
    );
    describe_gauge!(
        DEVICES_UNACKED,
        "Devices with accepted readings not yet durable"
    );
    describe_gauge!(
        SPOOL_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest batch in the spool"
    );
    describe_gauge!(
        KAFKA_UP,
        "1 when the last Kafka metadata request succeeded, else 0"
    );
    describe_counter!(
        AUTHZ_DENIED,
        "Publishes, subscriptions and wills refused by topic authorization, by action and reason"
    );
    describe_counter!(
        ADDRESS_CONNECTIONS_REFUSED,
        "Connections closed before CONNECT: their source address holds its connection cap"
    );
    describe_counter!(
        PROXY_PROTOCOL_REFUSED,
        "Connections from a PROXY protocol balancer closed without a valid PROXY header, by reason"
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes that failed, by reason"
    );
    describe_counter!(RELOADS, "SIGHUP reloads, by what and result");
    describe_counter!(
        BROKER_CONNECTIONS_CLOSED,
        "MQTT connections that ended, by reason (rumqttd)"
    );
    describe_counter!(
        STANDARD_PUBLISHES,
        "Publishes of standard MQTT clients taken from the broker, by source"
    );
    describe_counter!(
        STANDARD_REFUSED,
        "Publishes of standard MQTT clients refused by closing the connection, by reason"
    );
    describe_counter!(
        STANDARD_PUBACKS,
        "PUBACKs sent to standard MQTT clients once their publish was durable"
    );
    describe_counter!(
        STANDARD_PARKED,
        "Publishes of standard MQTT clients parked because the writer queue was full (PUBACK delayed)"
    );
    describe_gauge!(
        STANDARD_PARKED_NOW,
        "Publishes of standard MQTT clients parked now, waiting for room in the writer queue"
    );
    describe_histogram!(
        STAGE_SECONDS,
        Unit::Seconds,
        "Time a batch spends in one stage of the ack path, by stage"
    );
    describe_sparkplug();
}

fn describe_sparkplug() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(SPARKPLUG_MESSAGES, "Sparkplug B messages received, by type");
    describe_counter!(
        SPARKPLUG_INVALID_PAYLOADS,
        "Sparkplug publishes dropped undecoded, by reason"
    );
    describe_counter!(
        SPARKPLUG_IGNORED,
        "Sparkplug messages the host application did not take, by reason"
    );
    describe_counter!(
        SPARKPLUG_UNSUPPORTED_METRICS,
        "Sparkplug metrics of a type that maps to no reading, by type"
    );
    describe_counter!(
        SPARKPLUG_INVALID_METRICS,
        "Malformed Sparkplug metrics, by reason"
    );
    describe_counter!(SPARKPLUG_REBIRTHS, "NCMD Rebirth requests sent, by reason");
    describe_counter!(
        SPARKPLUG_REBIRTHS_SUPPRESSED,
        "Rebirth requests held back by the per-edge-node rate limit, by reason"
    );
    describe_counter!(
        SPARKPLUG_READINGS,
        "Readings decoded from Sparkplug metrics"
    );
    describe_gauge!(
        SPARKPLUG_EDGE_NODES_ONLINE,
        "Sparkplug edge nodes with a live session"
    );
    describe_counter!(
        SPARKPLUG_BEFORE_BIRTH,
        "Sparkplug DATA of an edge node not online, taken with the table it has, by table"
    );
    describe_counter!(
        SPARKPLUG_UNRESOLVED_METRICS,
        "Sparkplug metrics by an unknown alias, stored as alias:{n} with their raw value"
    );
    describe_counter!(
        SPARKPLUG_STORE_ERRORS,
        "Sparkplug session store problems, by reason"
    );
    describe_gauge!(
        SPARKPLUG_RESTORED,
        "Sparkplug edge nodes restored from the session store at start"
    );
    describe_gauge!(
        SESSIONS_STORED,
        "Persistent MQTT sessions in the session file"
    );
    describe_counter!(
        SESSIONS_LOAD_ERRORS,
        "Parts of the session file not restored at start, by reason"
    );
    describe_counter!(SESSIONS_WRITE_ERRORS, "Failed writes of the session file");
    describe_counter!(
        SESSIONS_DROPPED_CHANGES,
        "Session changes not stored because the session writer was behind"
    );
    describe_counter!(
        SESSIONS_NOT_STORED,
        "Persistent sessions not stored, by reason"
    );
    metrics::describe_histogram!(
        SESSIONS_WRITE_SECONDS,
        metrics::Unit::Seconds,
        "Time to rewrite and fsync the session file"
    );
}

// Persistent MQTT sessions on disk (`crate::sessions`, vendor/PATCHES.md patch 23).
/// Sessions in the file after its last write.
pub const SESSIONS_STORED: &str = "breakwater_gateway_sessions_stored";
/// Labels: `reason` = `unreadable`, `bad_header`, `bad_record`, `line_too_long`, `truncated`,
/// `too_many`, `too_many_filters`, `denied`.
pub const SESSIONS_LOAD_ERRORS: &str = "breakwater_gateway_sessions_load_errors_total";
pub const SESSIONS_WRITE_ERRORS: &str = "breakwater_gateway_sessions_write_errors_total";
/// Changes dropped because `max_records` client ids were already pending.
pub const SESSIONS_DROPPED_CHANGES: &str = "breakwater_gateway_sessions_dropped_changes_total";
/// Labels: `reason` = `too_many_filters`.
pub const SESSIONS_NOT_STORED: &str = "breakwater_gateway_sessions_not_stored_total";
pub const SESSIONS_WRITE_SECONDS: &str = "breakwater_gateway_sessions_write_seconds";

// Sparkplug B host application (`crate::sparkplug`).
/// Sparkplug messages received, by `type` (`NBIRTH`, `NDATA`, ...).
pub const SPARKPLUG_MESSAGES: &str = "breakwater_gateway_sparkplug_messages_total";
/// Sparkplug publishes dropped before the session: `reason` = `bad_topic`, `malformed`.
pub const SPARKPLUG_INVALID_PAYLOADS: &str = "breakwater_gateway_sparkplug_invalid_payloads_total";
/// Messages the session did not take, by `reason` (`before_birth`: a DDEATH only, `stale_death`,
/// `death_without_birth`, `command`, `too_many_edge_nodes`, `too_many_devices`,
/// `device_id_too_long`; see `sparkplug::session::Ignored`).
pub const SPARKPLUG_IGNORED: &str = "breakwater_gateway_sparkplug_ignored_messages_total";
/// Metrics of a type that does not map to a reading, by `type` (`dataset`, `template`,
/// `bytes`, `file`, `array`, `null`, ...).
pub const SPARKPLUG_UNSUPPORTED_METRICS: &str =
    "breakwater_gateway_sparkplug_unsupported_metrics_total";
/// Malformed metrics, by `reason` (`type_mismatch`, `bad_metric`, `no_name`, ...).
pub const SPARKPLUG_INVALID_METRICS: &str = "breakwater_gateway_sparkplug_invalid_metrics_total";
/// NCMD `Node Control/Rebirth` sent, by `reason` (`seq_gap`, `missing_seq`, `unknown_alias`,
/// `before_birth`).
pub const SPARKPLUG_REBIRTHS: &str = "breakwater_gateway_sparkplug_rebirths_total";
/// Rebirths due but held back by `[sparkplug] rebirth_interval`, by `reason`.
pub const SPARKPLUG_REBIRTHS_SUPPRESSED: &str =
    "breakwater_gateway_sparkplug_rebirths_suppressed_total";
/// Readings decoded from Sparkplug metrics (before the pipeline).
pub const SPARKPLUG_READINGS: &str = "breakwater_gateway_sparkplug_readings_total";
/// Edge nodes with a live session (NBIRTH seen, no NDEATH since).
pub const SPARKPLUG_EDGE_NODES_ONLINE: &str = "breakwater_gateway_sparkplug_edge_nodes_online";
/// DATA (or a DBIRTH) of an edge node that is not online, taken with the table it has, by
/// `table` (`restored`: from the session store after a restart; `last_birth`: a dead device's
/// last DBIRTH; `none`).
pub const SPARKPLUG_BEFORE_BIRTH: &str = "breakwater_gateway_sparkplug_before_birth_total";
/// Metrics by an alias no table resolves, stored as `alias:{n}` with their raw value.
pub const SPARKPLUG_UNRESOLVED_METRICS: &str =
    "breakwater_gateway_sparkplug_unresolved_metrics_total";
/// Session store problems, by `reason` (`bad_magic`, `bad_length`, `bad_checksum`,
/// `bad_record`, `too_large`, `read`, `write`, `queue_full`, `writer_gone`,
/// `over_bounds`: restored nodes or devices beyond the session bounds).
pub const SPARKPLUG_STORE_ERRORS: &str = "breakwater_gateway_sparkplug_store_errors_total";
/// Edge nodes restored from the session store at start.
pub const SPARKPLUG_RESTORED: &str = "breakwater_gateway_sparkplug_restored_edge_nodes";
