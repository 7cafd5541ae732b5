//! The model registry's record layout, shared by the trainer and runner
//! (`vigil_runner::models::registry`) and the operator, which writes the
//! serving pointer: a compacted, single-partition Kafka topic whose records
//! are keyed `<namespace>/<model>/...`.

use serde::{Deserialize, Serialize};

/// The registry topic when none is configured.
pub const DEFAULT_TOPIC: &str = "vigil-models";

/// Key prefix of one Model's records.
pub fn prefix(namespace: &str, model: &str) -> String {
    format!("{namespace}/{model}/")
}

/// Key of the serving pointer.
pub fn serving_key(namespace: &str, model: &str) -> String {
    format!("{}serving", prefix(namespace, model))
}

/// Key of a version's manifest; its chunks are `<this>/chunk/<i>`.
pub fn version_key(namespace: &str, model: &str, version: i64) -> String {
    format!("{}v{version}", prefix(namespace, model))
}

/// The serving pointer's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Serving {
    /// The version Pipelines following the Model serve.
    pub version: i64,
}

/// What a training Job reports as its termination message (`vigil train`'s
/// summary), read by the operator into the Model's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainingSummary {
    /// The version written.
    pub version: i64,
    /// Records trained on.
    pub records: u64,
    /// Seconds in all.
    pub seconds: f64,
    /// The calibrated threshold.
    pub threshold: f64,
    /// Training accuracy (supervised algorithms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// When it finished (RFC 3339).
    pub trained_at: String,
}
