//! `[[json_devices]]` payloads: untrusted JSON into readings.
//!
//! The payload comes from an authenticated client on its own device's topic (the topic policy,
//! `crate::admission::authz`, checked that), but its content is not trusted: every error is a
//! [`JsonError`] with a `reason` label, never a panic. Limits are the protocol's
//! ([`breakwater_protocol::Limits`]): metric name length, string length, readings per message.

use breakwater_protocol::limits::{check_metric, check_value};
use breakwater_protocol::{CompactString, Limits, Reading, Value};
use serde_json::Map;
use thiserror::Error;

use super::config::JsonFormat;

/// Why a payload was not taken.
#[derive(Debug, Error, PartialEq)]
pub enum JsonError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object")]
    NotAnObject,
    #[error("no \"metric\" string")]
    NoMetric,
    #[error("no \"value\"")]
    NoValue,
    #[error("metric {metric:?}: a value must be a number, a boolean or a string")]
    BadValue { metric: String },
    #[error("the timestamp must be an integer of ms since the Unix epoch")]
    BadTimestamp,
    #[error("no metrics in the object")]
    NoReadings,
    #[error("{count} metrics, the limit is {limit}")]
    TooManyReadings { count: usize, limit: usize },
    #[error("{0}")]
    Invalid(breakwater_protocol::ValidationError),
}

impl JsonError {
    /// The `reason` label of `breakwater_gateway_invalid_payloads_total`.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotJson(_) => "json_syntax",
            Self::NotAnObject => "json_not_object",
            Self::NoMetric => "json_no_metric",
            Self::NoValue => "json_no_value",
            Self::BadValue { .. } => "json_bad_value",
            Self::BadTimestamp => "json_bad_timestamp",
            Self::NoReadings => "json_no_readings",
            Self::TooManyReadings { .. } => "json_too_many_readings",
            Self::Invalid(_) => "json_limits",
        }
    }
}

/// Decodes one payload; a reading without a timestamp gets `now_ms`.
///
/// # Errors
/// See [`JsonError`]; nothing is taken from a payload with an error.
pub fn decode(
    format: JsonFormat,
    timestamp_field: &str,
    payload: &[u8],
    now_ms: u64,
    limits: &Limits,
) -> Result<Vec<Reading>, JsonError> {
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| JsonError::NotJson(e.to_string()))?;
    let serde_json::Value::Object(obj) = v else {
        return Err(JsonError::NotAnObject);
    };
    let readings = match format {
        JsonFormat::Reading => vec![one_reading(&obj, now_ms)?],
        JsonFormat::Object => object(&obj, timestamp_field, now_ms, limits)?,
    };
    for (i, r) in readings.iter().enumerate() {
        check_metric(i, &r.metric, limits).map_err(JsonError::Invalid)?;
        check_value(i, &r.value, limits).map_err(JsonError::Invalid)?;
    }
    Ok(readings)
}

fn one_reading(obj: &Map<String, serde_json::Value>, now_ms: u64) -> Result<Reading, JsonError> {
    let metric = obj
        .get("metric")
        .and_then(serde_json::Value::as_str)
        .ok_or(JsonError::NoMetric)?;
    let value = obj.get("value").ok_or(JsonError::NoValue)?;
    let value = scalar(value).ok_or_else(|| JsonError::BadValue {
        metric: metric.to_owned(),
    })?;
    let ts = timestamp(obj.get("ts"), now_ms)?;
    Ok(Reading::new(metric, value, ts))
}

fn object(
    obj: &Map<String, serde_json::Value>,
    timestamp_field: &str,
    now_ms: u64,
    limits: &Limits,
) -> Result<Vec<Reading>, JsonError> {
    let ts = timestamp(obj.get(timestamp_field), now_ms)?;
    let count = obj.len() - usize::from(obj.contains_key(timestamp_field));
    if count == 0 {
        return Err(JsonError::NoReadings);
    }
    if count > limits.max_readings_per_batch {
        return Err(JsonError::TooManyReadings {
            count,
            limit: limits.max_readings_per_batch,
        });
    }
    obj.iter()
        .filter(|(k, _)| k.as_str() != timestamp_field)
        .map(|(k, v)| {
            let value = scalar(v).ok_or_else(|| JsonError::BadValue { metric: k.clone() })?;
            Ok(Reading::new(k.as_str(), value, ts))
        })
        .collect()
}

fn scalar(v: &serde_json::Value) -> Option<Value> {
    match v {
        serde_json::Value::Bool(b) => Some(Value::Bool(*b)),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(Value::I64)
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(Value::F64)),
        serde_json::Value::String(s) => Some(Value::Str(CompactString::from(s.as_str()))),
        _ => None,
    }
}

fn timestamp(v: Option<&serde_json::Value>, now_ms: u64) -> Result<u64, JsonError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(now_ms),
        Some(v) => v.as_u64().ok_or(JsonError::BadTimestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(format: JsonFormat, payload: &str) -> Result<Vec<Reading>, JsonError> {
        decode(format, "ts", payload.as_bytes(), 42, &Limits::default())
    }

    #[test]
    fn readings_and_objects_decode() {
        assert_eq!(
            d(
                JsonFormat::Reading,
                r#"{"metric":"temp","value":21.5,"ts":7}"#
            )
            .unwrap(),
            [Reading::new("temp", 21.5, 7)]
        );
        assert_eq!(
            d(JsonFormat::Reading, r#"{"metric":"n","value":3}"#).unwrap(),
            [Reading::new("n", 3_i64, 42)]
        );
        let mut got = d(JsonFormat::Object, r#"{"a":1,"b":true,"c":"x","ts":9}"#).unwrap();
        got.sort_by(|x, y| x.metric.cmp(&y.metric));
        assert_eq!(
            got,
            [
                Reading::new("a", 1_i64, 9),
                Reading::new("b", Value::Bool(true), 9),
                Reading::new("c", Value::Str("x".into()), 9),
            ]
        );
    }

    #[test]
    fn hostile_payloads_are_errors_with_reasons() {
        let cases = [
            (JsonFormat::Reading, "{not json", "json_syntax"),
            (JsonFormat::Reading, "[1,2]", "json_not_object"),
            (JsonFormat::Reading, r#"{"value":1}"#, "json_no_metric"),
            (JsonFormat::Reading, r#"{"metric":"a"}"#, "json_no_value"),
            (
                JsonFormat::Reading,
                r#"{"metric":"a","value":{"x":1}}"#,
                "json_bad_value",
            ),
            (
                JsonFormat::Reading,
                r#"{"metric":"a","value":1,"ts":-5}"#,
                "json_bad_timestamp",
            ),
            (
                JsonFormat::Reading,
                r#"{"metric":"","value":1}"#,
                "json_limits",
            ),
            (JsonFormat::Object, r#"{"ts":5}"#, "json_no_readings"),
            (JsonFormat::Object, r#"{"a":null}"#, "json_bad_value"),
            (
                JsonFormat::Object,
                r#"{"a":1,"ts":"now"}"#,
                "json_bad_timestamp",
            ),
        ];
        for (format, payload, reason) in cases {
            let got = d(format, payload);
            assert_eq!(
                got.as_ref().map_err(JsonError::reason),
                Err(reason),
                "{payload}"
            );
        }
        let many: String = format!(
            "{{{}}}",
            (0..1001)
                .map(|i| format!("\"m{i}\":1"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(
            d(JsonFormat::Object, &many).map_err(|e| e.reason()),
            Err("json_too_many_readings")
        );
    }
}
