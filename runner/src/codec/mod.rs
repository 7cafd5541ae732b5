//! Decoding input bytes into records (JSON or CSV, key, event time, size
//! limit) per the pipeline's `RecordEncoding`.

pub mod csv;
pub mod json;
pub mod time;

use vigil_crds::{RecordEncoding, RecordFormat, TimestampFormat};

use crate::record::{FieldId, Interner, Record, TooManyFields, Value};

/// Where a record came from, besides its bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Meta<'a> {
    /// The Kafka record key, if any.
    pub key: Option<&'a [u8]>,
    /// The Kafka record timestamp, or the time of reading for files.
    pub ts_ms: i64,
}

/// Decodes records of one pipeline.
pub struct Decoder {
    format: RecordFormat,
    csv: csv::CsvRow,
    columns: Vec<FieldId>,
    column_names: String,
    key_field: Option<FieldId>,
    ts_field: Option<FieldId>,
    ts_format: TimestampFormat,
    max_bytes: usize,
}

impl Decoder {
    /// A decoder for `enc`; `columns` overrides the encoding's (a file's header).
    pub fn new(
        enc: &RecordEncoding,
        format: RecordFormat,
        columns: Option<&[String]>,
        interner: &mut Interner,
    ) -> Result<Self, TooManyFields> {
        let names: Vec<String> =
            columns.map(<[String]>::to_vec).or_else(|| enc.columns.clone()).unwrap_or_default();
        let columns = names.iter().map(|c| interner.intern(c)).collect::<Result<_, _>>()?;
        Ok(Decoder {
            format,
            csv: csv::CsvRow::new(enc.delimiter_byte()),
            columns,
            column_names: names.join(", "),
            key_field: enc.key_field.as_deref().map(|f| interner.intern(f)).transpose()?,
            ts_field: enc.timestamp_field.as_deref().map(|f| interner.intern(f)).transpose()?,
            ts_format: enc.timestamp_format,
            max_bytes: usize::try_from(enc.max_record_bytes).unwrap_or(usize::MAX),
        })
    }

    /// Decode `bytes` into `rec` (overwritten).
    pub fn decode(
        &mut self,
        bytes: &[u8],
        meta: Meta<'_>,
        interner: &mut Interner,
        rec: &mut Record,
    ) -> Result<(), String> {
        if bytes.len() > self.max_bytes {
            return Err(format!(
                "record is {} bytes, over the limit of {} (maxRecordBytes)",
                bytes.len(),
                self.max_bytes
            ));
        }
        match self.format {
            RecordFormat::Json => {
                json::decode(bytes, interner, &mut rec.fields).map_err(|e| e.to_string())?
            }
            RecordFormat::Csv => {
                if self.columns.is_empty() {
                    return Err("CSV input needs columns (spec.input.columns, or a file header)".into());
                }
                self.csv
                    .decode(bytes, &self.columns, &self.column_names, &mut rec.fields)
                    .map_err(|e| e.to_string())?
            }
        }
        rec.key.clear();
        match self.key_field {
            Some(id) => match rec.fields.iter().find(|(f, _)| *f == id).map(|(_, v)| v) {
                Some(Value::Str(s)) => rec.key.push_str(s),
                Some(v @ (Value::Int(_) | Value::Float(_) | Value::Bool(_))) => {
                    use std::fmt::Write;
                    let _ = write!(rec.key, "{v}");
                }
                Some(other) => {
                    return Err(format!(
                        "key field {:?} must be a string or number, found {}",
                        interner.name(id),
                        other.describe()
                    ));
                }
                None => return Err(format!("key field {:?} is missing", interner.name(id))),
            },
            None => {
                if let Some(k) = meta.key {
                    rec.key.push_str(&String::from_utf8_lossy(k));
                }
            }
        }
        rec.ts_ms = match self.ts_field {
            Some(id) => match rec.get(id) {
                Some(v) => time::parse(v, self.ts_format)
                    .map_err(|e| format!("timestamp field {:?}: {e}", interner.name(id)))?,
                None => return Err(format!("timestamp field {:?} is missing", interner.name(id))),
            },
            None => meta.ts_ms,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoding(yaml: &str) -> RecordEncoding {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn key_and_time_come_from_fields() {
        let enc = encoding("{keyField: host, timestampField: ts}");
        let mut i = Interner::default();
        let mut d = Decoder::new(&enc, RecordFormat::Json, None, &mut i).unwrap();
        let mut r = Record::default();
        d.decode(
            br#"{"host": "db-1", "ts": "2026-01-01T00:00:00Z", "cpu": 3}"#,
            Meta::default(),
            &mut i,
            &mut r,
        )
        .unwrap();
        assert_eq!(&*r.key, "db-1");
        assert_eq!(r.ts_ms, 1_767_225_600_000);
    }

    #[test]
    fn missing_or_bad_key_and_time_are_refused_by_name() {
        let enc = encoding("{keyField: host, timestampField: ts}");
        let mut i = Interner::default();
        let mut d = Decoder::new(&enc, RecordFormat::Json, None, &mut i).unwrap();
        let mut r = Record::default();
        let err = |d: &mut Decoder, i: &mut Interner, r: &mut Record, b: &[u8]| {
            d.decode(b, Meta::default(), i, r).unwrap_err()
        };
        assert_eq!(err(&mut d, &mut i, &mut r, br#"{"ts": 1}"#), "key field \"host\" is missing");
        assert_eq!(
            err(&mut d, &mut i, &mut r, br#"{"host": [1], "ts": 1}"#),
            "key field \"host\" must be a string or number, found list of 1"
        );
        assert_eq!(
            err(&mut d, &mut i, &mut r, br#"{"host": "a", "ts": "soon"}"#),
            "timestamp field \"ts\": unrecognised timestamp \"soon\""
        );
    }

    #[test]
    fn oversize_records_are_refused_before_parsing() {
        let enc = encoding("{maxRecordBytes: 64}");
        let mut i = Interner::default();
        let mut d = Decoder::new(&enc, RecordFormat::Json, None, &mut i).unwrap();
        let big = format!("{{\"a\": \"{}\"}}", "x".repeat(100));
        let e = d.decode(big.as_bytes(), Meta::default(), &mut i, &mut Record::default()).unwrap_err();
        assert_eq!(e, "record is 109 bytes, over the limit of 64 (maxRecordBytes)");
    }

    #[test]
    fn kafka_key_and_time_are_the_fallback() {
        let enc = encoding("{}");
        let mut i = Interner::default();
        let mut d = Decoder::new(&enc, RecordFormat::Json, None, &mut i).unwrap();
        let mut r = Record::default();
        d.decode(b"{}", Meta { key: Some(b"k1"), ts_ms: 42 }, &mut i, &mut r).unwrap();
        assert_eq!((&*r.key, r.ts_ms), ("k1", 42));
    }
}
