use std::{borrow::Cow, fmt, time::Duration};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The default `spec.scanInterval`.
pub const DEFAULT_SCAN_INTERVAL: &str = "15s";
/// Same grammar as the schema enforces, so a value written before validation existed fails the
/// same way in the operator.
const PATTERN: &str = "^([0-9]+h)?([0-9]+m)?([0-9]+s)?$";

/// `spec.scanInterval` as written by the user (`15s`, `1m30s`, `2h`). Kept as text so that an
/// object the apiserver accepted never fails to deserialize; [`ScanInterval::duration`] parses it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ScanInterval(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScanIntervalError {
    #[error("scanInterval {0:?} is not a duration such as 15s, 1m30s or 2h")]
    Malformed(String),
    #[error("scanInterval {0:?} is shorter than 1s")]
    TooShort(String),
}

impl ScanInterval {
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The interval as a duration, parsed with humantime.
    pub fn duration(&self) -> Result<Duration, ScanIntervalError> {
        let text = self.0.as_str();
        if text.is_empty() || !matches_pattern(text) {
            return Err(ScanIntervalError::Malformed(text.to_owned()));
        }
        let duration = humantime::parse_duration(text)
            .map_err(|_| ScanIntervalError::Malformed(text.to_owned()))?;
        if duration < Duration::from_secs(1) {
            return Err(ScanIntervalError::TooShort(text.to_owned()));
        }
        Ok(duration)
    }
}

/// `^([0-9]+h)?([0-9]+m)?([0-9]+s)?$` without pulling in a regex engine.
fn matches_pattern(text: &str) -> bool {
    let mut rest = text;
    for unit in ['h', 'm', 's'] {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && rest[digits..].starts_with(unit) {
            rest = &rest[digits + 1..];
        }
    }
    rest.is_empty()
}

impl Default for ScanInterval {
    fn default() -> Self {
        Self(DEFAULT_SCAN_INTERVAL.to_owned())
    }
}

impl fmt::Debug for ScanInterval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for ScanInterval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for ScanInterval {
    fn schema_name() -> Cow<'static, str> {
        "ScanInterval".into()
    }

    fn schema_id() -> Cow<'static, str> {
        concat!(module_path!(), "::ScanInterval").into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "How often the tag is checked: a duration such as 15s, 1m30s or 2h, at least 1s.",
            "minLength": 2,
            "pattern": PATTERN,
            "x-kubernetes-validations": [{
                "rule": "duration(self) >= duration('1s')",
                "message": "scanInterval must be at least 1s"
            }]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        for (text, secs) in [("15s", 15), ("1m30s", 90), ("2h", 7200), ("1h1m1s", 3661)] {
            assert_eq!(
                ScanInterval::new(text).duration(),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_what_the_schema_refuses() {
        for text in ["", "15 seconds", "15", "1s2m", "-1s", "1d"] {
            assert!(
                matches!(
                    ScanInterval::new(text).duration(),
                    Err(ScanIntervalError::Malformed(_))
                ),
                "{text}"
            );
        }
        assert_eq!(
            ScanInterval::new("0s").duration(),
            Err(ScanIntervalError::TooShort("0s".into()))
        );
    }

    #[test]
    fn defaults_to_fifteen_seconds() {
        assert_eq!(
            ScanInterval::default().duration(),
            Ok(Duration::from_secs(15))
        );
    }
}
