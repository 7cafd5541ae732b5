//! The timestamp parser, in every format, on arbitrary text and numbers:
//! no panic, and what it accepts is in range and formats back.
#![no_main]
use vigil_crds::TimestampFormat;
use vigil_runner::codec::time;
use vigil_runner::record::Value;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut values = vec![Value::Str(text.as_ref().into())];
    if data.len() >= 8 {
        let bits = u64::from_le_bytes(data[..8].try_into().unwrap());
        let x = f64::from_bits(bits);
        if x.is_finite() {
            values.push(Value::Float(x));
        }
        values.push(Value::Int(bits as i64));
    }
    let _ = time::parse_datetime(&text);
    for v in &values {
        for f in [
            TimestampFormat::Auto,
            TimestampFormat::Rfc3339,
            TimestampFormat::EpochSeconds,
            TimestampFormat::EpochMillis,
            TimestampFormat::DateTime,
        ] {
            if let Ok(ms) = time::parse(v, f) {
                let _ = time::format_rfc3339(ms);
            }
        }
    }
});
