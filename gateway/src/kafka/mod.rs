//! The Kafka sink: producer settings ([`config`]), topic creation at start-up ([`admin`]) and
//! the drain that moves spooled batches into Kafka in order ([`sink`]), and the offline drain of
//! a stopped gateway's spool directory (`spool drain`, [`offline`]).
//!
//! Record format (see `breakwater_protocol::kafka`): one record per device batch, key = device
//! id, headers `bw-device`, `bw-epoch`, `bw-first-seq`, `bw-last-seq`, `content-type`; value
//! the postcard envelope or the protocol JSON per `[kafka] encoding`.

pub mod admin;
pub mod config;
pub mod offline;
pub mod sink;
