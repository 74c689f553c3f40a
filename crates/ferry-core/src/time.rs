//! Conversions between ferry's internal millisecond timestamps and RFC 3339 text.

use crate::error::{Error, Result};

/// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision.
pub fn format_ms(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(ts) => format!("{ts:.3}"),
        Err(_) => ms.to_string(),
    }
}

/// Parses RFC 3339 text into epoch milliseconds; `field` names the input for the error.
pub fn parse_rfc3339_ms(text: &str, field: &str) -> Result<i64> {
    text.parse::<jiff::Timestamp>()
        .map(|ts| ts.as_millisecond())
        .map_err(|e| Error::invalid(field, format!("not an RFC 3339 timestamp: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let ms = 1_700_000_000_123;
        let text = format_ms(ms);
        assert_eq!(text, "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_rfc3339_ms(&text, "run_at").unwrap(), ms);
        assert!(parse_rfc3339_ms("yesterday", "run_at").is_err());
    }
}
