//! The detector a pipeline scores records with: an online algorithm that
//! learns as records arrive, or a trained `Model`.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Online algorithms, which learn per key as records arrive.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Algorithm {
    /// Robust univariate detector, tuned on the NAB corpus: values beyond the
    /// observed range, improbable transitions between quantised values, and
    /// large deviations from the recent median. One feature.
    RobustZ,
    /// Seasonal detector: compares each value with the same phase of earlier
    /// seasons (`params.period` records per season). One feature.
    Seasonal,
    /// Streaming half-space trees over all features (multivariate). Kept
    /// for existing pipelines; `sensorZ` finds sensor faults far better.
    HalfSpaceTrees,
    /// Multivariate detector for sensor channels, the recommended one for
    /// two or more features: each channel is predicted from the others by a
    /// streaming regression (so a cycle the channels share is normal) and
    /// its residual is scored in robust units; a channel repeating one value
    /// is a flatline. The explanation names the channels at fault. Any
    /// number of features.
    SensorZ,
    /// Picks per feature count: `robustZ` for one feature, `sensorZ` for more.
    Auto,
}

impl Algorithm {
    /// The name used in manifests and in output records.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RobustZ => "robustZ",
            Algorithm::Seasonal => "seasonal",
            Algorithm::HalfSpaceTrees => "halfSpaceTrees",
            Algorithm::SensorZ => "sensorZ",
            Algorithm::Auto => "auto",
        }
    }

    /// The algorithm that runs: `auto` resolved for `features` features.
    pub fn resolve(self, features: usize) -> Algorithm {
        match self {
            Algorithm::Auto if features <= 1 => Algorithm::RobustZ,
            Algorithm::Auto => Algorithm::SensorZ,
            a => a,
        }
    }
}

/// A reference to a `Model` in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelRef {
    /// Name of the Model.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Pin a trained version; absent follows the Model's serving version and
    /// hot-reloads when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub version: Option<i64>,
}

/// Algorithm parameters. Each applies to the algorithms its description names.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DetectorParams {
    /// History length in records per key: the median window (robustZ), the
    /// mass window (halfSpaceTrees).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16, max = 100000))]
    pub window: Option<i32>,
    /// Records per key before scores are emitted above zero (all; sensorZ
    /// default 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub warmup: Option<i32>,
    /// Records per season, e.g. 288 for a daily cycle at 5-minute intervals (seasonal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 100000))]
    pub period: Option<i32>,
    /// Number of trees (halfSpaceTrees).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 500))]
    pub trees: Option<i32>,
    /// Depth of each tree (halfSpaceTrees).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 20))]
    pub depth: Option<i32>,
    /// Random seed, for reproducible scores (halfSpaceTrees).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub seed: Option<i64>,
}

/// How records are scored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new("has(self.algorithm) != has(self.modelRef)").message("spec.detector: set exactly one of algorithm or modelRef"),
    validation = Rule::new("!has(self.algorithm) || self.algorithm != 'seasonal' || (has(self.params) && has(self.params.period))").message("spec.detector.params.period is required for algorithm seasonal"),
    validation = Rule::new("!has(self.params) || !has(self.params.period) || (has(self.algorithm) && self.algorithm == 'seasonal')").message("spec.detector.params.period applies only to algorithm seasonal"),
    validation = Rule::new("!has(self.params) || (!has(self.params.trees) && !has(self.params.depth)) || (has(self.algorithm) && self.algorithm == 'halfSpaceTrees')").message("spec.detector.params.trees and depth apply only to algorithm halfSpaceTrees"),
    validation = Rule::new("!has(self.algorithm) || size(self.features) > 0").message("spec.detector.features must name at least one field for an online algorithm"),
    validation = Rule::new("!has(self.algorithm) || self.algorithm in ['halfSpaceTrees', 'sensorZ', 'auto'] || size(self.features) <= 1").message("spec.detector.features must name exactly one field for a univariate algorithm (robustZ, seasonal)")
)]
pub struct DetectorSpec {
    /// Online algorithm. Set this or `modelRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    /// A trained Model to score with. Set this or `algorithm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_ref: Option<ModelRef>,
    /// Numeric fields scored (after transforms). With `modelRef`, the
    /// Model's features are used and this may be left empty.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub features: Vec<String>,
    /// Score at or above which a record is flagged anomalous, in [0, 1].
    /// Default: the algorithm's (or Model's calibrated) threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub threshold: Option<f64>,
    /// Algorithm parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<DetectorParams>,
    /// Most keys whose state is kept; the least recently seen key is evicted
    /// beyond this. Bounds memory (see the runner's docs for bytes per key).
    #[serde(default = "default_max_keys")]
    #[schemars(range(min = 1, max = 10000000))]
    pub max_keys: i32,
}

fn default_max_keys() -> i32 {
    10_000
}

impl DetectorSpec {
    /// An online detector over the given features with default parameters.
    pub fn online(algorithm: Algorithm, features: &[&str]) -> Self {
        DetectorSpec {
            algorithm: Some(algorithm),
            model_ref: None,
            features: features.iter().map(|f| f.to_string()).collect(),
            threshold: None,
            params: None,
            max_keys: default_max_keys(),
        }
    }
}
