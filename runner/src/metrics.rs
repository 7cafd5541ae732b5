//! The runner's Prometheus metrics. Names are listed in `NAMES` so the
//! operator's generated Grafana dashboard can be checked against what the
//! runner really exports.

use std::borrow::Cow;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets, linear_buckets};
use prometheus_client::registry::Registry;

/// Every metric name the runner exports (as they appear in the exposition,
/// histograms by their base name).
pub const NAMES: &[&str] = &[
    "vigil_records_in_total",
    "vigil_records_out_total",
    "vigil_records_dead_lettered_total",
    "vigil_records_filtered_total",
    "vigil_anomalies_total",
    "vigil_score",
    "vigil_processing_latency_seconds",
    "vigil_consumer_lag",
    "vigil_rebalances_total",
    "vigil_detector_keys",
    "vigil_in_flight",
    "vigil_runner_stalled",
    "vigil_runner_stalls_total",
    "vigil_dead_letters_truncated_total",
    "vigil_model_version",
];

/// Label of the dead-letter counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// `decode`, `transforms[2].cast`, `detector`, `produce`.
    pub stage: String,
}

/// Label of the lag gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    /// Input partition.
    pub partition: String,
}

/// Label of the rebalance counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `assign` or `revoke`.
    pub kind: String,
}

/// The runner's metrics.
pub struct Metrics {
    /// For `/metrics`.
    pub registry: Registry,
    /// Records consumed.
    pub records_in: Counter,
    /// Scored records produced.
    pub records_out: Counter,
    /// Records sent to the dead-letter topic, by stage.
    pub dead_lettered: Family<StageLabel, Counter>,
    /// Records a filter dropped.
    pub filtered: Counter,
    /// Records flagged anomalous.
    pub anomalies: Counter,
    /// Distribution of scores.
    pub score: Histogram,
    /// From consuming a record to the broker acknowledging its outputs.
    pub latency: Histogram,
    /// Records behind the high watermark, per partition.
    pub lag: Family<PartitionLabel, Gauge>,
    /// Partitions assigned and revoked.
    pub rebalances: Family<KindLabel, Counter>,
    /// Keys with detector state.
    pub detector_keys: Gauge,
    /// Records consumed whose outputs are not yet acknowledged.
    pub in_flight: Gauge,
    /// 1 while a failure keeps the runner from consuming.
    pub stalled: Gauge,
    /// Times a failure stopped consumption.
    pub stalls: Counter,
    /// Dead letters cut to fit the dead-letter topic.
    pub dead_letters_truncated: Counter,
    /// The trained model version served (0 for an online detector).
    pub model_version: Gauge,
}

impl Metrics {
    /// Metrics labelled with the pipeline's namespace and name.
    pub fn new(namespace: &str, pipeline: &str) -> Self {
        let mut registry = pipeline_registry(namespace, pipeline);
        let m = Metrics {
            records_in: Counter::default(),
            records_out: Counter::default(),
            dead_lettered: Family::default(),
            filtered: Counter::default(),
            anomalies: Counter::default(),
            score: Histogram::new(linear_buckets(0.1, 0.1, 10)),
            latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            lag: Family::default(),
            rebalances: Family::default(),
            detector_keys: Gauge::default(),
            in_flight: Gauge::default(),
            stalled: Gauge::default(),
            stalls: Counter::default(),
            dead_letters_truncated: Counter::default(),
            model_version: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("vigil_records_in", "Records consumed from the input", m.records_in.clone());
        registry.register(
            "vigil_records_out",
            "Scored records produced to the output",
            m.records_out.clone(),
        );
        registry.register(
            "vigil_records_dead_lettered",
            "Records sent to the dead-letter topic, by the stage that refused them",
            m.dead_lettered.clone(),
        );
        registry.register("vigil_records_filtered", "Records dropped by a filter", m.filtered.clone());
        registry.register("vigil_anomalies", "Records flagged anomalous", m.anomalies.clone());
        registry.register(
            "vigil_model_version",
            "The trained Model version scoring records (0: an online detector)",
            m.model_version.clone(),
        );
        registry.register("vigil_score", "Anomaly scores", m.score.clone());
        registry.register(
            "vigil_processing_latency_seconds",
            "From consuming a record to the broker acknowledging its outputs",
            m.latency.clone(),
        );
        registry.register(
            "vigil_consumer_lag",
            "Records behind the high watermark, per partition",
            m.lag.clone(),
        );
        registry.register("vigil_rebalances", "Partition assignments and revocations", m.rebalances.clone());
        registry.register("vigil_detector_keys", "Keys with detector state", m.detector_keys.clone());
        registry.register(
            "vigil_in_flight",
            "Records whose outputs are not yet acknowledged",
            m.in_flight.clone(),
        );
        registry.register(
            "vigil_runner_stalled",
            "1 while a failure (an unwritable output or dead-letter topic) keeps the runner from consuming",
            m.stalled.clone(),
        );
        registry.register(
            "vigil_runner_stalls",
            "Times a failure stopped consumption (consumed again from the committed offsets after a wait)",
            m.stalls.clone(),
        );
        registry.register(
            "vigil_dead_letters_truncated",
            "Dead letters cut to fit the dead-letter topic's record limit",
            m.dead_letters_truncated.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        encode(&self.registry)
    }
}

/// A registry whose metrics carry the pipeline's namespace and name (so a
/// Pipeline's dashboard selects its runners and its history component).
pub fn pipeline_registry(namespace: &str, pipeline: &str) -> Registry {
    let labels = [
        (Cow::Borrowed("namespace"), Cow::Owned(namespace.to_string())),
        (Cow::Borrowed("pipeline"), Cow::Owned(pipeline.to_string())),
    ];
    Registry::with_labels(labels.into_iter())
}

/// The text exposition of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Encoding into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_is_exported_and_nothing_else() {
        let m = Metrics::new("ns", "p");
        m.dead_lettered.get_or_create(&StageLabel { stage: "decode".into() }).inc();
        m.lag.get_or_create(&PartitionLabel { partition: "0".into() }).set(3);
        m.rebalances.get_or_create(&KindLabel { kind: "assign".into() }).inc();
        let text = m.encode();
        let mut exported: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        exported.sort();
        let mut listed: Vec<&str> = NAMES.iter().map(|n| n.trim_end_matches("_total")).collect();
        listed.sort();
        assert_eq!(exported, listed);
        assert!(
            text.contains(
                r#"vigil_records_dead_lettered_total{namespace="ns",pipeline="p",stage="decode"} 1"#
            ),
            "{text}"
        );
    }
}
