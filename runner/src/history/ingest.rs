//! From the records the runners wrote (scored outputs and dead letters) to
//! rows of the history store.

use vigil_crds::{Pipeline, TimestampFormat};

use super::store::{Batch, MAX_PAYLOAD, NewAnomaly, NewDeadLetter};
use crate::record::Value;

/// How a Pipeline's output records are read.
#[derive(Debug, Clone)]
pub struct Reader {
    key_field: Option<String>,
    ts_field: Option<String>,
    ts_format: TimestampFormat,
    features: Vec<String>,
}

/// The features a Pipeline's rollups keep: the detector's own features
/// (for a `modelRef`, the Model's, when known).
pub fn features(p: &Pipeline) -> Vec<String> {
    p.spec.detector.features.clone()
}

impl Reader {
    /// For `pipeline`, rolling up `features`.
    pub fn new(pipeline: &Pipeline, features: Vec<String>) -> Reader {
        let input = &pipeline.spec.input.encoding;
        Reader {
            key_field: input.key_field.clone(),
            ts_field: input.timestamp_field.clone(),
            ts_format: input.timestamp_format,
            features,
        }
    }

    /// The features rolled up.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// One scored record from the output topic. `kafka_ts` is the record's
    /// Kafka timestamp, used when the record has no event time. A payload
    /// that is not a JSON object is counted (so the rollup's count stays
    /// true) under the key `""` with no score. Returns the record's
    /// `anomaly.modelVersion`, when it has one.
    pub fn output(
        &self,
        batch: &mut Batch,
        payload: &[u8],
        kafka_key: Option<&[u8]>,
        kafka_ts: i64,
    ) -> Option<i64> {
        // Only the fields history keeps are read; the rest is skipped
        // without being built.
        let mut fields = Fields { reader: self, out: Extracted::default() };
        let mut de = serde_json::Deserializer::from_slice(payload);
        if serde::de::DeserializeSeed::deserialize(&mut fields, &mut de).and_then(|()| de.end()).is_err() {
            batch.roll("", kafka_ts, None, false, &[]);
            return None;
        }
        let x = fields.out;
        let key = match x.key {
            Some(k) => k,
            None => kafka_key.map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default(),
        };
        let ts = x.ts.and_then(|v| crate::codec::time::parse(&v, self.ts_format).ok()).unwrap_or(kafka_ts);
        let (score, flagged) = (x.anomaly.score, x.anomaly.is_anomaly.unwrap_or(false));
        batch.roll(&key, ts, score, flagged, &x.values);
        if flagged {
            batch.anomalies.push(NewAnomaly {
                ts,
                key,
                score: score.unwrap_or(0.0),
                record: String::from_utf8_lossy(payload).into_owned(),
            });
        }
        x.anomaly.model_version
    }

    /// One record of the dead-letter topic, with its headers.
    pub fn dead_letter(&self, batch: &mut Batch, payload: &[u8], headers: &[(&str, &[u8])], kafka_ts: i64) {
        let header = |name: &str| {
            headers.iter().find(|(k, _)| *k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let cut_here = payload.len() > MAX_PAYLOAD;
        let mut end = payload.len().min(MAX_PAYLOAD);
        // Cut on a character boundary when the payload is text.
        if cut_here && std::str::from_utf8(payload).is_ok() {
            while end > 0 && (payload[end] & 0xC0) == 0x80 {
                end -= 1;
            }
        }
        let original_size = header(crate::run::dead_letter::ORIGINAL_SIZE)
            .and_then(|s| s.parse().ok())
            .unwrap_or(payload.len() as u64);
        batch.dead_letters.push(NewDeadLetter {
            ts: kafka_ts,
            stage: header("vigil.stage").unwrap_or_else(|| "unknown".into()),
            reason: header("vigil.reason").unwrap_or_else(|| "(no vigil.reason header)".into()),
            topic: header("vigil.source.topic").unwrap_or_default(),
            partition: header("vigil.source.partition").and_then(|s| s.parse().ok()),
            offset: header("vigil.source.offset").and_then(|s| s.parse().ok()),
            truncated: cut_here || header(crate::run::dead_letter::TRUNCATED).is_some(),
            original_size,
            payload: payload[..end].to_vec(),
        });
    }
}

/// The `anomaly` object of an output record (other members ignored).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnomalyPart {
    #[serde(default)]
    score: Option<f64>,
    #[serde(default)]
    is_anomaly: Option<bool>,
    #[serde(default)]
    model_version: Option<i64>,
}

#[derive(Debug, Default)]
struct Extracted {
    key: Option<String>,
    ts: Option<Value>,
    anomaly: AnomalyPart,
    values: Vec<Option<f64>>,
}

/// A visitor of the record's top-level members.
struct Fields<'r> {
    reader: &'r Reader,
    out: Extracted,
}

impl<'de> serde::de::DeserializeSeed<'de> for &mut Fields<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for &mut Fields<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let r = self.reader;
        self.out.values = vec![None; r.features.len()];
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let name = name.as_ref();
            if name == "anomaly" {
                self.out.anomaly = map.next_value::<Option<AnomalyPart>>()?.unwrap_or_default();
            } else if r.key_field.as_deref() == Some(name) {
                self.out.key = match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::String(s) => Some(s),
                    serde_json::Value::Null => None,
                    other => Some(other.to_string()),
                };
            } else if r.ts_field.as_deref() == Some(name) {
                self.out.ts = match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::Number(n) => n.as_f64().map(Value::Float),
                    serde_json::Value::String(s) => Some(Value::Str(s.into())),
                    _ => None,
                };
            } else if let Some(i) = r.features.iter().position(|f| f == name) {
                self.out.values[i] = map.next_value::<serde_json::Value>()?.as_f64();
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}
