//! Event timestamps: RFC 3339, `YYYY-MM-DD HH:MM:SS`, epoch seconds or
//! milliseconds, normalised to milliseconds since the Unix epoch.
//!
//! The date-time forms are parsed by hand (this runs once per record);
//! anything unusual falls back to chrono's RFC 3339 parser.

use vigil_crds::TimestampFormat;

use crate::record::Value;

/// Timestamps outside years 0000-9999 are refused (and window arithmetic
/// on accepted ones cannot overflow).
const MIN_MS: f64 = -62_167_219_200_000.0;
const MAX_MS: f64 = 253_402_300_799_999.0;

/// Epoch numbers below this are seconds, above are milliseconds (`auto`):
/// 10^11 seconds is the year 5138, 10^11 milliseconds is 1973.
const SECONDS_LIMIT: f64 = 1e11;

/// Read a timestamp field. The error says what was found.
pub fn parse(value: &Value, format: TimestampFormat) -> Result<i64, String> {
    let from_number = |x: f64| -> Result<i64, String> {
        let ms = match format {
            TimestampFormat::EpochMillis => x,
            TimestampFormat::EpochSeconds => x * 1000.0,
            TimestampFormat::Auto if x.abs() < SECONDS_LIMIT => x * 1000.0,
            TimestampFormat::Auto => x,
            _ => return Err(format!("expected a {} timestamp, found a number", name(format))),
        };
        if (MIN_MS..=MAX_MS).contains(&ms) {
            Ok(ms.round() as i64)
        } else {
            Err(format!("timestamp {x} is outside the years 0000-9999"))
        }
    };
    match value {
        Value::Int(n) => from_number(*n as f64),
        Value::Float(x) => from_number(*x),
        Value::Str(s) => {
            let s = s.trim();
            match format {
                TimestampFormat::EpochMillis | TimestampFormat::EpochSeconds => s
                    .parse::<f64>()
                    .map_err(|_| format!("expected a {} timestamp, found {s:?}", name(format)))
                    .and_then(from_number),
                TimestampFormat::Auto => parse_datetime(s)
                    .or_else(|| s.parse::<f64>().ok().and_then(|x| from_number(x).ok()))
                    .ok_or_else(|| format!("unrecognised timestamp {s:?}")),
                TimestampFormat::Rfc3339 | TimestampFormat::DateTime => parse_datetime(s)
                    .ok_or_else(|| format!("expected a {} timestamp, found {s:?}", name(format))),
            }
        }
        other => Err(format!("expected a timestamp, found {}", other.describe())),
    }
}

fn name(format: TimestampFormat) -> &'static str {
    match format {
        TimestampFormat::Auto => "",
        TimestampFormat::Rfc3339 => "RFC 3339",
        TimestampFormat::EpochSeconds => "epoch-seconds",
        TimestampFormat::EpochMillis => "epoch-milliseconds",
        TimestampFormat::DateTime => "YYYY-MM-DD HH:MM:SS",
    }
}

/// `YYYY-MM-DD[T| ]HH:MM:SS[.fraction][Z|±HH:MM]`; no zone means UTC.
pub fn parse_datetime(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut n = 0i64;
        for &c in &b[r] {
            if !c.is_ascii_digit() {
                return None;
            }
            n = n * 10 + (c - b'0') as i64;
        }
        Some(n)
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + (b[i] - b'0') as i64;
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..3 {
            millis *= 10;
        }
    }
    let offset_secs = match b.get(i) {
        None => 0,
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
            let h = num(i + 1..i + 3)?;
            let m = num(i + 4..i + 6)?;
            let o = h * 3600 + m * 60;
            if sign == b'+' { o } else { -o }
        }
        _ => return chrono::DateTime::parse_from_rfc3339(s).ok().map(|d| d.timestamp_millis()),
    };
    let days = days_from_civil(year, month, day);
    Some(((days * 86_400 + hour * 3600 + minute * 60 + second) - offset_secs) * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds since the epoch as RFC 3339 (UTC, millisecond precision).
pub fn format_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::Str(x.into())
    }

    #[test]
    fn agrees_with_chrono_on_date_times() {
        for text in [
            "2014-07-01 00:00:00",
            "2026-11-28T10:15:30Z",
            "2026-11-28T10:15:30.25+02:00",
            "2000-02-29T23:59:59.999-05:30",
            "1969-12-31T23:59:59Z",
        ] {
            let ours = parse_datetime(text).unwrap();
            let iso =
                if text.len() == 19 { format!("{}Z", text.replace(' ', "T")) } else { text.to_string() };
            let chrono = chrono::DateTime::parse_from_rfc3339(&iso).unwrap().timestamp_millis();
            assert_eq!(ours, chrono, "{text}");
        }
    }

    #[test]
    fn epoch_numbers_are_seconds_or_millis() {
        assert_eq!(parse(&Value::Int(1_700_000_000), TimestampFormat::Auto), Ok(1_700_000_000_000));
        assert_eq!(parse(&Value::Int(1_700_000_000_123), TimestampFormat::Auto), Ok(1_700_000_000_123));
        assert_eq!(parse(&Value::Float(1.5), TimestampFormat::EpochSeconds), Ok(1500));
        assert_eq!(parse(&s("1700000000123"), TimestampFormat::EpochMillis), Ok(1_700_000_000_123));
    }

    #[test]
    fn refuses_with_what_was_found() {
        assert_eq!(
            parse(&s("yesterday"), TimestampFormat::Auto),
            Err("unrecognised timestamp \"yesterday\"".into())
        );
        assert!(parse(&s("2026-13-01 00:00:00"), TimestampFormat::Auto).is_err());
        assert!(parse(&Value::Int(5), TimestampFormat::Rfc3339).is_err());
        assert!(parse(&Value::Bool(true), TimestampFormat::Auto).unwrap_err().contains("boolean"));
    }
}
