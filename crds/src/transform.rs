//! The transforms a pipeline (or a model's training) applies to each record,
//! in declared order. Each is a verb; its configuration here is what the
//! runner's component of the same name executes (`runner/src/transforms/`).
//!
//! Expressions (`filter`, `derive`) are CEL, the language Kubernetes users
//! already write in admission rules: fields of the record are variables
//! (`cpu > 0.9 && host.startsWith("db")`). No code runs other than the
//! expression.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One step of a pipeline. Exactly one key per list item, e.g.
/// `- filter: {expr: "cpu >= 0"}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Transform {
    /// Keep only records for which the CEL expression is true.
    Filter(FilterSpec),
    /// Add (or overwrite) a field with the value of a CEL expression.
    Derive(DeriveSpec),
    /// Keep only the listed fields.
    Select(FieldList),
    /// Remove the listed fields.
    Drop(FieldList),
    /// Rename fields: `{old: new}`.
    Rename(RenameSpec),
    /// Convert fields to a type; a value that cannot be converted sends the
    /// record to the dead-letter topic.
    Cast(CastSpec),
    /// Replace missing or null values.
    Fill(FillSpec),
    /// Turn nested objects into top-level fields (`a: {b: 1}` becomes `a_b: 1`).
    Flatten(FlattenSpec),
    /// Aggregate a numeric field over time windows per key.
    Window(WindowSpec),
    /// The difference between a field and its value `periods` records earlier
    /// for the same key.
    Diff(LagSpec),
    /// The value of a field `periods` records earlier for the same key.
    Lag(LagSpec),
    /// Running z-score of numeric fields per key.
    Standardize(StandardizeSpec),
    /// Encode a categorical field as numbers.
    Encode(EncodeSpec),
}

/// `filter` configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterSpec {
    /// CEL expression over the record's fields; records where it is false
    /// are dropped (counted, not dead-lettered).
    #[schemars(length(min = 1, max = 4096))]
    pub expr: String,
}

/// `derive` configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeriveSpec {
    /// Name of the field to write.
    #[schemars(length(min = 1, max = 256))]
    pub field: String,
    /// CEL expression computing the value.
    #[schemars(length(min = 1, max = 4096))]
    pub expr: String,
}

/// `select` and `drop` configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldList {
    /// Field names.
    #[schemars(length(min = 1))]
    pub fields: Vec<String>,
}

/// `rename` configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RenameSpec {
    /// Map of old name to new name.
    #[schemars(length(min = 1))]
    pub fields: BTreeMap<String, String>,
}

/// The types `cast` converts to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CastType {
    /// 64-bit floating point.
    Float,
    /// 64-bit signed integer (a float must have no fractional part).
    Integer,
    /// Text.
    String,
    /// `true`/`false` (also accepts `1`/`0`, `yes`/`no`).
    Boolean,
    /// A timestamp, normalised to milliseconds since the epoch.
    Timestamp,
}

/// `cast` configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CastSpec {
    /// Map of field name to target type.
    #[schemars(length(min = 1))]
    pub fields: BTreeMap<String, CastType>,
}

/// How `fill` replaces a missing value.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FillStrategy {
    /// A constant (`value`).
    #[default]
    Value,
    /// The last value seen for the same key (the record is dead-lettered if
    /// there is none yet).
    Previous,
    /// The running mean for the same key.
    Mean,
}

/// `fill` configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.strategy != 'value' || has(self.value)").message("spec.transforms[].fill.value is required when strategy is value"))]
pub struct FillSpec {
    /// Fields to fill.
    #[schemars(length(min = 1))]
    pub fields: Vec<String>,
    /// How to fill.
    #[serde(default)]
    pub strategy: FillStrategy,
    /// The constant for `strategy: value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

/// `flatten` configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlattenSpec {
    /// Joins the names of nested fields.
    #[serde(default = "default_separator")]
    #[schemars(length(min = 1, max = 4))]
    pub separator: String,
}

fn default_separator() -> String {
    "_".to_string()
}

/// An aggregate a window computes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Aggregate {
    /// Number of records.
    Count,
    /// Sum of values.
    Sum,
    /// Arithmetic mean.
    Mean,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Population standard deviation.
    Std,
    /// Records per second over the window.
    Rate,
}

impl Aggregate {
    /// The suffix of the output field (`cpu_mean`).
    pub fn suffix(self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::Sum => "sum",
            Aggregate::Mean => "mean",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Std => "std",
            Aggregate::Rate => "rate",
        }
    }
}

/// When a window produces output.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum WindowEmit {
    /// One record per key per window when it closes (a later record for the
    /// key passes its end, or the input ends): key, `window_start`,
    /// `window_end` and the aggregates. Tumbling when `slide` is absent,
    /// sliding (hopping) when `slide` is smaller than `size`.
    #[default]
    OnClose,
    /// Every record passes through with the aggregates of the `size` before
    /// it (inclusive) added: rolling features for a detector.
    EachRecord,
}

/// Most windows one record may belong to (size / slide): bounds the work
/// per record. Checked by admission and by the runner.
pub const MAX_WINDOWS_PER_RECORD: u128 = 1_000;

/// `window` configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!has(self.slide) || self.emit != 'eachRecord'").message("spec.transforms[].window.slide does not apply when emit is eachRecord"))]
pub struct WindowSpec {
    /// Numeric field to aggregate (for `count` and `rate` alone, any field).
    #[schemars(length(min = 1))]
    pub field: String,
    /// Window length, e.g. `1m`.
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h|d)$"))]
    pub size: String,
    /// Hop between window starts for sliding windows; must not exceed `size`
    /// and must divide it. Absent: tumbling windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h|d)$"))]
    pub slide: Option<String>,
    /// Aggregates to compute; each adds a field `<field>_<aggregate>`.
    #[schemars(length(min = 1))]
    pub aggregates: Vec<Aggregate>,
    /// When output is produced.
    #[serde(default)]
    pub emit: WindowEmit,
}

/// `diff` and `lag` configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LagSpec {
    /// Numeric field.
    #[schemars(length(min = 1))]
    pub field: String,
    /// How many records back, per key.
    #[serde(default = "default_periods")]
    #[schemars(range(min = 1, max = 10000))]
    pub periods: i32,
    /// Output field; default `<field>_diff` or `<field>_lag<periods>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

fn default_periods() -> i32 {
    1
}

/// `standardize` configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StandardizeSpec {
    /// Numeric fields.
    #[schemars(length(min = 1))]
    pub fields: Vec<String>,
    /// Appended to each field name for the output (`cpu_z`); empty replaces
    /// the value in place.
    #[serde(default = "default_z_suffix")]
    pub suffix: String,
}

fn default_z_suffix() -> String {
    "_z".to_string()
}

/// How `encode` turns categories into numbers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum EncodeMethod {
    /// One 0/1 field per listed category (`<field>_<category>`), plus
    /// `<field>_other` for anything unlisted.
    #[default]
    OneHot,
    /// `buckets` fields `<field>_h<i>`; the category's stable hash picks the
    /// one set to 1. Needs no list of categories.
    Hashing,
}

/// `encode` configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new("self.method != 'oneHot' || (has(self.categories) && size(self.categories) > 0)").message("spec.transforms[].encode.categories is required for method oneHot"),
    validation = Rule::new("self.method != 'hashing' || !has(self.categories)").message("spec.transforms[].encode.categories does not apply to method hashing")
)]
pub struct EncodeSpec {
    /// Categorical field.
    #[schemars(length(min = 1))]
    pub field: String,
    /// Encoding method.
    #[serde(default)]
    pub method: EncodeMethod,
    /// Known categories (`oneHot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<String>>,
    /// Number of hash buckets (`hashing`).
    #[serde(default = "default_buckets")]
    #[schemars(range(min = 2, max = 1024))]
    pub buckets: i32,
    /// Remove the original field after encoding.
    #[serde(default = "default_true")]
    pub drop_original: bool,
}

fn default_buckets() -> i32 {
    16
}
fn default_true() -> bool {
    true
}
