//! Types shared by `Pipeline` and `Model`: Kafka connection, topics, record
//! format, storage, lifecycle and status conditions.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The pattern Kafka itself enforces on topic names.
pub const TOPIC_NAME_PATTERN: &str = r"^[a-zA-Z0-9._-]{1,249}$";

/// Where the Kafka cluster is and how to authenticate to it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaConnection {
    /// Comma-separated `host:port` list of brokers. When empty, the operator's
    /// default (its `--kafka-bootstrap` flag) is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub bootstrap_servers: Option<String>,

    /// A Secret in the Pipeline's namespace holding client settings for
    /// SASL/TLS. Recognised keys: `security.protocol`, `sasl.mechanism`,
    /// `sasl.username`, `sasl.password`, `ca.crt`, `tls.crt`, `tls.key`; any
    /// other key is passed to the Kafka client as a librdkafka property. A
    /// change to the Secret is applied without a restart: the operator
    /// watches it, uses it from its next reconcile, and rolls the runners
    /// onto it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
}

/// A reference to a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A Kafka topic Vigil creates (or adopts when it already exists and matches).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopicSpec {
    /// Topic name. Letters, digits, `.`, `_` and `-`, at most 249 characters.
    #[schemars(regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$"))]
    pub name: String,

    /// Number of partitions. Can grow; Kafka cannot shrink a topic, so a
    /// decrease is reported as a condition and not applied.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 10000))]
    pub partitions: i32,

    /// Replication factor. Fixed after creation.
    #[serde(default = "default_replication")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: i32,

    /// Topic-level configuration (`retention.ms`, `cleanup.policy`, ...).
    /// Drift made outside Vigil is corrected for the keys listed here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

fn default_partitions() -> i32 {
    1
}
fn default_replication() -> i32 {
    1
}

impl TopicSpec {
    /// A topic with one partition, replication 1 and no config.
    pub fn named(name: impl Into<String>) -> Self {
        TopicSpec {
            name: name.into(),
            partitions: default_partitions(),
            replication_factor: default_replication(),
            config: BTreeMap::new(),
        }
    }
}

/// How the bytes of a Kafka record (or a line of a file) encode a record.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RecordFormat {
    /// One JSON object per record.
    #[default]
    Json,
    /// One CSV row per record; `columns` names the fields.
    Csv,
}

/// How timestamps are written in the timestamp field.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TimestampFormat {
    /// Recognise RFC 3339, `YYYY-MM-DD HH:MM:SS`, or epoch numbers (seconds
    /// below 10^11, milliseconds above).
    #[default]
    Auto,
    /// RFC 3339, e.g. `2026-11-28T10:00:00Z`.
    Rfc3339,
    /// Seconds since the Unix epoch (integer or fractional).
    EpochSeconds,
    /// Milliseconds since the Unix epoch.
    EpochMillis,
    /// `YYYY-MM-DD HH:MM:SS`, read as UTC.
    DateTime,
}

/// The delivery guarantee between the input and output topics.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Delivery {
    /// Offsets are committed only after every output and dead-letter record
    /// derived from them is acknowledged by the broker. A crash can repeat
    /// records, never lose them.
    #[default]
    AtLeastOnce,
    /// Kafka transactions: outputs and offsets commit atomically. Consumers
    /// of the output topic must read with `isolation.level=read_committed`.
    ExactlyOnce,
}

/// Whether the pipeline's runners are running.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Lifecycle {
    /// Runners consume and score.
    #[default]
    Running,
    /// Runners are scaled to zero; topics and committed offsets are kept so
    /// resuming continues where it stopped.
    Paused,
}

/// What happens to the topics when the Pipeline is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TopicDeletionPolicy {
    /// Topics and their data stay in Kafka.
    #[default]
    Retain,
    /// The input, output and dead-letter topics are deleted with the Pipeline.
    Delete,
}

/// A persistent volume for history or model artifacts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageSpec {
    /// Volume size, e.g. `1Gi`.
    #[serde(default = "default_storage_size")]
    pub size: Quantity,

    /// Storage class of the PersistentVolumeClaim; the cluster default when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,

    /// How long history is kept, e.g. `7d`: a Pipeline's flagged records,
    /// dead letters and per-key minutes older than this are removed every
    /// minute (not used for Models).
    #[serde(default = "default_retention")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h|d)$"))]
    pub retention: String,
}

fn default_storage_size() -> Quantity {
    Quantity("1Gi".to_string())
}
fn default_retention() -> String {
    "7d".to_string()
}

/// Standard condition status values.
pub mod condition {
    /// The condition holds.
    pub const TRUE: &str = "True";
    /// The condition does not hold.
    pub const FALSE: &str = "False";
    /// Not known yet.
    pub const UNKNOWN: &str = "Unknown";
}

/// How records are encoded and which fields carry the key and the event time.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.format != 'csv' || (has(self.columns) && size(self.columns) > 0)").message("columns is required when format is csv: CSV records on Kafka carry no header"))]
pub struct RecordEncoding {
    /// Encoding of each record.
    #[serde(default)]
    pub format: RecordFormat,
    /// Column names, in order, for `format: csv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// CSV field delimiter: one printable ASCII character, or a tab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[\t -~]$"))]
    pub delimiter: Option<String>,
    /// Field holding the record's key: per-key state (windows, detectors) is
    /// kept for each distinct value. Absent: the Kafka record key, or one
    /// global key for files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub key_field: Option<String>,
    /// Field holding the event time. Absent: the Kafka record timestamp, or
    /// the time of reading for files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub timestamp_field: Option<String>,
    /// How the timestamp field is written.
    #[serde(default)]
    pub timestamp_format: TimestampFormat,
    /// Records larger than this many bytes go to the dead-letter topic.
    #[serde(default = "default_max_record_bytes")]
    #[schemars(range(min = 64, max = 16777216))]
    pub max_record_bytes: i32,
}

fn default_max_record_bytes() -> i32 {
    1_048_576
}

impl RecordEncoding {
    /// The CSV delimiter as a byte (`,` by default).
    pub fn delimiter_byte(&self) -> u8 {
        self.delimiter.as_deref().and_then(|d| d.bytes().next()).filter(u8::is_ascii).unwrap_or(b',')
    }
}
