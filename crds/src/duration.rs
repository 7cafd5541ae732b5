//! Durations as users write them in manifests: `500ms`, `30s`, `5m`, `2h`, `7d`.
//!
//! Kept as strings in the API (readable in `kubectl get -o yaml`, validated by
//! a schema pattern) and parsed here wherever a number is needed.

use std::time::Duration;

/// The schema pattern every duration field carries.
pub const DURATION_PATTERN: &str = r"^[0-9]+(ms|s|m|h|d)$";

/// Why a duration string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid duration {input:?}: expected a whole number followed by ms, s, m, h or d (e.g. 30s, 5m, 7d)"
)]
pub struct DurationError {
    input: String,
}

/// Parse `500ms`, `30s`, `5m`, `2h` or `7d`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = || DurationError { input: input.to_string() };
    let split = input.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (digits, unit) = input.split_at(split);
    let n: u64 = digits.parse().map_err(|_| err())?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs).ok_or_else(err);
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(err()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
    }

    #[test]
    fn refuses_what_the_pattern_refuses() {
        for bad in ["", "s", "10", "1.5s", "-3s", "10 s", "3w"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
