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
    /// true) under the key `""` with no score.
    pub fn output(&self, batch: &mut Batch, payload: &[u8], kafka_key: Option<&[u8]>, kafka_ts: i64) {
        let parsed: Option<serde_json::Map<String, serde_json::Value>> = serde_json::from_slice(payload).ok();
        let Some(rec) = parsed else {
            batch.roll("", kafka_ts, None, false, &[]);
            return;
        };
        let key = match self.key_field.as_deref().and_then(|f| rec.get(f)) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) | None => {
                kafka_key.map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default()
            }
            Some(other) => other.to_string(),
        };
        let ts = self
            .ts_field
            .as_deref()
            .and_then(|f| rec.get(f))
            .and_then(|v| {
                let v = match v {
                    serde_json::Value::Number(n) => Value::Float(n.as_f64()?),
                    serde_json::Value::String(s) => Value::Str(s.as_str().into()),
                    _ => return None,
                };
                crate::codec::time::parse(&v, self.ts_format).ok()
            })
            .unwrap_or(kafka_ts);
        let anomaly = rec.get("anomaly");
        let score = anomaly.and_then(|a| a.get("score")).and_then(serde_json::Value::as_f64);
        let flagged =
            anomaly.and_then(|a| a.get("isAnomaly")).and_then(serde_json::Value::as_bool).unwrap_or(false);
        let values: Vec<Option<f64>> =
            self.features.iter().map(|f| rec.get(f).and_then(serde_json::Value::as_f64)).collect();
        batch.roll(&key, ts, score, flagged, &values);
        if flagged {
            batch.anomalies.push(NewAnomaly {
                ts,
                key,
                score: score.unwrap_or(0.0),
                record: String::from_utf8_lossy(payload).into_owned(),
            });
        }
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
