//! The `Model` resource: a detector or classifier trained offline (linfa) on
//! data from a topic or a file, versioned, and served by the pipelines that
//! reference it.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::*;
use crate::transform::Transform;

/// Algorithms a Model trains.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ModelAlgorithm {
    /// Distance to the nearest k-means centroid (params.clusters).
    KMeans,
    /// Negative log-likelihood under a Gaussian mixture (params.components).
    GaussianMixture,
    /// PCA reconstruction error (params.components).
    Pca,
    /// One-class SVM decision value (params.nu, params.gamma).
    OneClassSvm,
    /// Isolation forest path length (params.trees, params.sampleSize).
    IsolationForest,
    /// Supervised: logistic regression on `label`; the score is the
    /// probability of the positive class.
    LogisticRegression,
    /// Supervised: decision tree on `label` (params.maxDepth).
    DecisionTree,
}

impl ModelAlgorithm {
    /// Whether the algorithm learns from a label field.
    pub fn is_supervised(self) -> bool {
        matches!(self, ModelAlgorithm::LogisticRegression | ModelAlgorithm::DecisionTree)
    }
}

/// Training parameters. Each applies to the algorithms its description names.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelParams {
    /// Clusters (kMeans).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub clusters: Option<i32>,
    /// Mixture components (gaussianMixture) or principal components (pca).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub components: Option<i32>,
    /// Upper bound on the fraction of training outliers (oneClassSvm), in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub nu: Option<f64>,
    /// RBF kernel width (oneClassSvm); default 1 / features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub gamma: Option<f64>,
    /// Trees (isolationForest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub trees: Option<i32>,
    /// Records sampled per tree (isolationForest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 65536))]
    pub sample_size: Option<i32>,
    /// Maximum tree depth (decisionTree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub max_depth: Option<i32>,
    /// Iteration cap for iterative solvers (kMeans, gaussianMixture, logisticRegression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_iterations: Option<i32>,
    /// Random seed, for reproducible training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub seed: Option<i64>,
}

/// A topic to train from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrainingTopic {
    /// Topic name.
    #[schemars(regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$"))]
    pub name: String,
    /// Start at this RFC 3339 time; absent: the earliest offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// Stop at this RFC 3339 time; absent: the high watermark when training starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<Time>,
}

/// Where training data comes from, and how it is encoded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.topic) != has(self.file)").message("spec.training: set exactly one of topic or file"))]
pub struct TrainingSpec {
    /// Kafka connection for `topic`; defaults come from the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaConnection>,
    /// Train from a Kafka topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<TrainingTopic>,
    /// Train from a file (CSV with header, or JSON lines) at this path in the
    /// training image or a mounted volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub file: Option<String>,
    /// Most records read for training.
    #[serde(default = "default_max_records")]
    #[schemars(range(min = 10, max = 100000000))]
    pub max_records: i64,
    /// How records are encoded.
    #[serde(flatten)]
    pub encoding: RecordEncoding,
}

fn default_max_records() -> i64 {
    100_000
}

/// How the anomaly threshold is set from training scores.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!(has(self.contamination) && has(self.quantile))").message("spec.calibration: set at most one of contamination or quantile"))]
pub struct Calibration {
    /// Expected fraction of anomalies in the training data, in (0, 0.5]:
    /// the threshold flags that fraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub contamination: Option<f64>,
    /// The training-score quantile used as threshold, in (0, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub quantile: Option<f64>,
}

/// A model trained offline and served by pipelines.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "vigil.dev",
    version = "v1alpha1",
    kind = "Model",
    namespaced,
    status = "ModelStatus",
    shortname = "vmo",
    category = "vigil",
    doc = "A model trained with linfa from a topic or a file, versioned and served by Pipelines.",
    printcolumn(name = "Algorithm", type_ = "string", json_path = ".spec.algorithm"),
    printcolumn(
        name = "Version",
        type_ = "integer",
        json_path = ".status.servingVersion",
        description = "Version served to pipelines"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(self.algorithm in ['logisticRegression', 'decisionTree']) || has(self.label)").message("spec.label is required for a supervised algorithm"),
    validation = Rule::new("self.algorithm in ['logisticRegression', 'decisionTree'] || !has(self.label)").message("spec.label applies only to supervised algorithms (logisticRegression, decisionTree)"),
    validation = Rule::new("!has(self.label) || !(self.label in self.features)").message("spec.label must not also be a feature")
)]
pub struct ModelSpec {
    /// What to train.
    pub algorithm: ModelAlgorithm,
    /// Training parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<ModelParams>,
    /// Numeric fields (after transforms) the model reads.
    #[schemars(length(min = 1, max = 1024))]
    pub features: Vec<String>,
    /// The label field, for supervised algorithms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub label: Option<String>,
    /// Transforms applied before training and before scoring, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub transforms: Vec<Transform>,
    /// Training data.
    pub training: TrainingSpec,
    /// Threshold calibration; default contamination 0.01.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// Retrain on this cron schedule (five fields, UTC), e.g. `0 3 * * *`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(\S+\s+){4}\S+$"))]
    pub schedule: Option<String>,
    /// Serve this trained version instead of the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub version: Option<i64>,
    /// Where versioned artifacts are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// Compute resources of the training Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Training image; the operator's default runner image when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Where a Model is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ModelPhase {
    /// No version trained yet.
    Pending,
    /// A training Job is running.
    Training,
    /// A version is served.
    Ready,
    /// The last training failed (an earlier version may still be served).
    Failed,
}

/// Figures from one training run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingMetrics {
    /// Records trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<i64>,
    /// Wall-clock training time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Calibrated score threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Training accuracy (supervised algorithms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
}

/// The observed state of a Model, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Summary of the conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ModelPhase>,
    /// `Trained`, `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Newest successfully trained version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_version: Option<i64>,
    /// Version pipelines are served (the pin, or the latest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_version: Option<i64>,
    /// When the latest version finished training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_trained_time: Option<Time>,
    /// Figures from the latest training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<TrainingMetrics>,
    /// Versions kept in the model registry, oldest first: a pin
    /// (`spec.version`, `modelRef.version`) may name any of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<i64>,
    /// The version a training Job is producing now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_version: Option<i64>,
    /// When `schedule` trains the next version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_training_time: Option<Time>,
    /// Hash of the training inputs of the spec (algorithm, params, features,
    /// label, transforms, training, calibration) the latest version was
    /// trained from; a change trains a new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_spec_hash: Option<String>,
    /// Hash of training inputs whose training failed: not retried until the
    /// spec changes or the schedule comes round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_spec_hash: Option<String>,
}
