//! Bounds enforced on every decoded message.

use thiserror::Error;

use crate::types::{Ack, Batch, DeviceId, Floor, Status, Value};

/// Limits applied when decoding untrusted bytes. [`Limits::default`] is what the gateway uses
/// unless configured otherwise; agents should stay well inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted encoded message, in bytes.
    pub max_payload_bytes: usize,
    /// Most readings in one batch.
    pub max_readings_per_batch: usize,
    /// Longest metric name, in bytes.
    pub max_metric_len: usize,
    /// Longest string value, in bytes.
    pub max_string_len: usize,
}

impl Limits {
    pub const DEFAULT: Self = Self {
        max_payload_bytes: 512 * 1024,
        max_readings_per_batch: 1_000,
        max_metric_len: 128,
        max_string_len: 256,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A message that decoded but breaks a rule of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValidationError {
    #[error("device id is empty")]
    DeviceIdEmpty,
    #[error("device id is {len} bytes long, the limit is {limit}")]
    DeviceIdTooLong { len: usize, limit: usize },
    #[error("device id contains {ch:?} at byte {at}; allowed are A-Z a-z 0-9 . _ -")]
    DeviceIdInvalidChar { ch: char, at: usize },
    #[error("batch has no readings")]
    EmptyBatch,
    #[error("batch has {count} readings, the limit is {limit}")]
    TooManyReadings { count: usize, limit: usize },
    #[error("sequence numbers start at 1, found seq 0")]
    ZeroSeq,
    #[error("sequence number overflows u64")]
    SeqOverflow,
    #[error("readings are not consecutive: expected seq {expected}, found {found}")]
    NonConsecutiveSeq { expected: u64, found: u64 },
    #[error("reading {index}: metric name is empty")]
    MetricEmpty { index: usize },
    #[error("reading {index}: metric name is {len} bytes long, the limit is {limit}")]
    MetricTooLong {
        index: usize,
        len: usize,
        limit: usize,
    },
    #[error("reading {index}: metric name contains a control character")]
    MetricControlChar { index: usize },
    #[error("reading {index}: metric index {metric} is past the {names} names of the batch")]
    MetricIndexOutOfRange {
        index: usize,
        metric: u32,
        names: usize,
    },
    #[error("reading {index}: string value is {len} bytes long, the limit is {limit}")]
    StringTooLong {
        index: usize,
        len: usize,
        limit: usize,
    },
    #[error("reading {index}: float value is not finite")]
    NonFiniteValue { index: usize },
}

impl ValidationError {
    /// A short stable label for metrics (`reason="..."`).
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::DeviceIdEmpty
            | Self::DeviceIdTooLong { .. }
            | Self::DeviceIdInvalidChar { .. } => "invalid_device_id",
            Self::EmptyBatch => "empty_batch",
            Self::TooManyReadings { .. } => "too_many_readings",
            Self::ZeroSeq | Self::SeqOverflow | Self::NonConsecutiveSeq { .. } => "bad_seq",
            Self::MetricEmpty { .. }
            | Self::MetricTooLong { .. }
            | Self::MetricControlChar { .. }
            | Self::MetricIndexOutOfRange { .. } => "bad_metric",
            Self::StringTooLong { .. } => "string_too_long",
            Self::NonFiniteValue { .. } => "non_finite_value",
        }
    }
}

pub(crate) fn check_device_id(s: &str) -> Result<(), ValidationError> {
    if s.is_empty() {
        return Err(ValidationError::DeviceIdEmpty);
    }
    if s.len() > DeviceId::MAX_LEN {
        return Err(ValidationError::DeviceIdTooLong {
            len: s.len(),
            limit: DeviceId::MAX_LEN,
        });
    }
    if let Some((at, ch)) = s
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(ValidationError::DeviceIdInvalidChar { ch, at });
    }
    Ok(())
}

/// Checks one reading's metric name and value.
///
/// # Errors
/// The first rule the reading breaks; `index` is reported back in the error.
pub fn check_reading(
    index: usize,
    metric: &str,
    value: &Value,
    limits: &Limits,
) -> Result<(), ValidationError> {
    check_metric(index, metric, limits)?;
    check_value(index, value, limits)
}

/// Checks a metric name: not empty, not too long, no control characters.
///
/// # Errors
/// The first rule the name breaks; `index` is reported back in the error.
pub fn check_metric(index: usize, metric: &str, limits: &Limits) -> Result<(), ValidationError> {
    if metric.is_empty() {
        return Err(ValidationError::MetricEmpty { index });
    }
    if metric.len() > limits.max_metric_len {
        return Err(ValidationError::MetricTooLong {
            index,
            len: metric.len(),
            limit: limits.max_metric_len,
        });
    }
    let has_control = if metric.is_ascii() {
        // Fast path for the usual ASCII names: C0 controls and DEL.
        metric.bytes().any(|b| b < 0x20 || b == 0x7f)
    } else {
        metric.chars().any(char::is_control)
    };
    if has_control {
        return Err(ValidationError::MetricControlChar { index });
    }
    Ok(())
}

/// Checks a value: floats finite, strings within the limit.
///
/// # Errors
/// The rule the value breaks; `index` is reported back in the error.
pub fn check_value(index: usize, value: &Value, limits: &Limits) -> Result<(), ValidationError> {
    match value {
        Value::F64(v) if !v.is_finite() => Err(ValidationError::NonFiniteValue { index }),
        Value::Str(s) if s.len() > limits.max_string_len => Err(ValidationError::StringTooLong {
            index,
            len: s.len(),
            limit: limits.max_string_len,
        }),
        _ => Ok(()),
    }
}

impl Batch {
    /// Checks the batch against the protocol's rules and `limits`.
    ///
    /// # Errors
    /// The first rule the batch breaks.
    pub fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        self.validate_shape(limits)?;
        for (index, r) in self.readings.iter().enumerate() {
            check_reading(index, &r.metric, &r.value, limits)?;
        }
        Ok(())
    }

    /// Everything but the per-reading metric and value checks.
    pub(crate) fn validate_shape(&self, limits: &Limits) -> Result<(), ValidationError> {
        check_device_id(self.device.as_str())?;
        if self.readings.is_empty() {
            return Err(ValidationError::EmptyBatch);
        }
        if self.readings.len() > limits.max_readings_per_batch {
            return Err(ValidationError::TooManyReadings {
                count: self.readings.len(),
                limit: limits.max_readings_per_batch,
            });
        }
        if self.first_seq == 0 {
            return Err(ValidationError::ZeroSeq);
        }
        if self
            .first_seq
            .checked_add(self.readings.len() as u64 - 1)
            .is_none()
        {
            return Err(ValidationError::SeqOverflow);
        }
        Ok(())
    }
}

impl Ack {
    /// # Errors
    /// An invalid device id.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_device_id(self.device.as_str())
    }
}

impl Floor {
    /// # Errors
    /// An invalid device id, or `first_seq` 0 (sequence numbers start at 1).
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_device_id(self.device.as_str())?;
        if self.first_seq == 0 {
            return Err(ValidationError::ZeroSeq);
        }
        Ok(())
    }
}

impl Status {
    /// # Errors
    /// An invalid device id.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_device_id(self.device.as_str())
    }
}
