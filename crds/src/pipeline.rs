//! The `Pipeline` resource: a stream from an input topic through transforms
//! and a detector to an output topic, with a dead-letter topic for records
//! that cannot be processed.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::*;
use crate::detector::DetectorSpec;
use crate::transform::Transform;

/// A streaming anomaly-detection pipeline.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "vigil.dev",
    version = "v1alpha1",
    kind = "Pipeline",
    namespaced,
    status = "PipelineStatus",
    shortname = "vpl",
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.replicas","labelSelectorPath":".status.selector"}"#,
    category = "vigil",
    doc = "A streaming anomaly-detection pipeline: Kafka input topic, transforms, a detector, output and dead-letter topics.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Runner pods ready"
    ),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.consumerLag",
        description = "Records not yet consumed"
    ),
    printcolumn(name = "Input", type_ = "string", json_path = ".spec.input.topic.name", priority = 1),
    printcolumn(name = "Detector", type_ = "string", json_path = ".spec.detector.algorithm", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.output.name != self.input.topic.name").message("spec.output.name must differ from spec.input.topic.name"),
    validation = Rule::new("self.deadLetter.name != self.input.topic.name && self.deadLetter.name != self.output.name").message("spec.deadLetter.name must differ from the input and output topics")
)]
pub struct PipelineSpec {
    /// Kafka cluster connection. Defaults come from the operator.
    #[serde(default)]
    pub kafka: KafkaConnection,

    /// The topic records are read from, and how they are encoded.
    pub input: InputSpec,

    /// Transforms applied to each record, in order, before scoring.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub transforms: Vec<Transform>,

    /// How records are scored.
    pub detector: DetectorSpec,

    /// The topic scored records are written to (JSON).
    pub output: TopicSpec,

    /// The topic records that cannot be processed are written to, unchanged,
    /// with the reason in headers.
    pub dead_letter: TopicSpec,

    /// Delivery guarantee.
    #[serde(default)]
    pub delivery: Delivery,

    /// History. With it, the operator runs the Pipeline's history component
    /// (StatefulSet `<name>-history`, on a volume of its own of this size):
    /// every flagged record, every dead letter with its reason, and per-key
    /// minute rollups, served by the Data API (Service `<name>-api`, port
    /// 8081). Absent: no history and no Data API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,

    /// Runner pods. Capped at the input topic's partitions (more would idle).
    /// Ignored when `scaling` is set. The Pipeline has a `scale`
    /// subresource, so `kubectl scale` and a HorizontalPodAutoscaler can set it.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// Processing threads per runner pod; partitions are spread over them,
    /// each with its own detector state. Default: the cores the container
    /// may use (its CPU limit, or the node's cores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub threads: Option<i32>,

    /// Compute resources of each runner container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Runner image; the operator's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// Running or Paused. Paused scales runners to zero and keeps topics
    /// and committed offsets.
    #[serde(default)]
    pub lifecycle: Lifecycle,

    /// What happens to the topics when this Pipeline is deleted.
    #[serde(default)]
    pub topic_deletion_policy: TopicDeletionPolicy,

    /// The Data API of the history component (needs `storage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiSpec>,

    /// Autoscaling on consumer lag: the operator sets the runner replicas
    /// from the lag it measures. Absent: `replicas` runners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingSpec>,
}

/// Autoscaling on consumer lag, reconciled by the operator: the runners
/// wanted are `ceil(lag / targetLagPerReplica)`, between `minReplicas` and
/// `maxReplicas` and never more than the input topic has partitions.
/// As a HorizontalPodAutoscaler does, a scale-up takes the lowest and a
/// scale-down the highest recommendation of its stabilisation window, so
/// a short burst or a short lull does not move the replicas. Pausing wins.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("spec.scaling.minReplicas must be at most maxReplicas"))]
pub struct ScalingSpec {
    /// Fewest runners, even with no lag.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most runners (also capped at the input topic's partitions).
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Records of consumer lag each runner is expected to work off.
    #[serde(default = "default_target_lag")]
    #[schemars(range(min = 1))]
    pub target_lag_per_replica: i64,
    /// How long a higher recommendation must hold before scaling up.
    #[serde(default = "default_scale_up_window")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h|d)$"))]
    pub scale_up_stabilization: String,
    /// How long a lower recommendation must hold before scaling down.
    #[serde(default = "default_scale_down_window")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h|d)$"))]
    pub scale_down_stabilization: String,
}

fn default_min_replicas() -> i32 {
    1
}

fn default_target_lag() -> i64 {
    10_000
}

fn default_scale_up_window() -> String {
    "0s".into()
}

fn default_scale_down_window() -> String {
    "5m".into()
}

fn default_replicas() -> i32 {
    1
}

/// The input topic and the encoding of its records.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InputSpec {
    /// The topic to consume.
    pub topic: TopicSpec,
    /// How records are encoded.
    #[serde(flatten)]
    pub encoding: RecordEncoding,
}

/// The Data API (publish, flagged records, history, dead letters, live
/// results), served by the history component.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiSpec {
    /// A Secret whose `token` key holds the bearer token clients must send.
    /// Absent: the API is served without authentication (cluster-internal only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretRef>,
}

/// Where a Pipeline is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PipelinePhase {
    /// Accepted; nothing provisioned yet.
    Pending,
    /// Topics or runners are being created.
    Provisioning,
    /// Topics exist and every desired runner is ready.
    Running,
    /// Scaled to zero on request.
    Paused,
    /// Running with fewer ready runners than desired, or a topic problem.
    Degraded,
    /// The spec cannot be realised until it changes (see conditions).
    Failed,
    /// Being deleted.
    Terminating,
}

/// Which of the pipeline's topics a status entry describes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TopicRole {
    /// The input topic.
    Input,
    /// The output topic.
    Output,
    /// The dead-letter topic.
    DeadLetter,
}

/// The observed state of one topic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    /// Which topic.
    pub role: TopicRole,
    /// Topic name.
    pub name: String,
    /// Partitions in Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// `Ready`, `Pending` or `Error`.
    pub state: String,
    /// Why, when not Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The observed state of a Pipeline, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Summary of the conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PipelinePhase>,
    /// `TopicsReady`, `RunnersReady`, `ModelReady`, `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Each topic's state in Kafka.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<TopicStatus>,
    /// Runner pods desired (after the partition cap and pausing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Runner pods ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Records in the input topic not yet committed by the runners' group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_lag: Option<i64>,
    /// Version of the Model being served, with `detector.modelRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<i64>,
    /// Hash of the runner configuration the runners were rolled with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// The runner pods' label selector (the `scale` subresource's, for a
    /// HorizontalPodAutoscaler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// When `spec.scaling` last changed the replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

impl PipelineSpec {
    /// The largest record the runners produce (a scored record is its input
    /// plus the `anomaly` object): the producer's `message.max.bytes`, and
    /// the output and dead-letter topics' `max.message.bytes` unless the
    /// spec sets them.
    pub fn max_output_bytes(&self) -> i64 {
        (2 * i64::from(self.input.encoding.max_record_bytes) + 65_536).max(1_000_000)
    }
}

impl Pipeline {
    /// What every Pipeline's consumer group name starts with.
    pub const CONSUMER_GROUP_PREFIX: &'static str = "vigil.";

    /// The Kafka consumer group of this pipeline's runners.
    pub fn consumer_group(namespace: &str, name: &str) -> String {
        format!("{}{namespace}.{name}", Self::CONSUMER_GROUP_PREFIX)
    }
}
