//! Observability children of a Pipeline: a Grafana dashboard (ConfigMap
//! labelled `grafana_dashboard: "1"`, the convention of the Grafana chart's
//! sidecar) and Loki alerting rules (ConfigMap labelled `loki_rule: "1"`,
//! the Loki chart's ruler sidecar). Every metric a panel queries is one the
//! runner exports; a test checks this against the runner's registry.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use serde_json::{Value, json};
use vigil_crds::Pipeline;

use super::children::{BuildError, child_meta, runner_name};

/// Name of the dashboard ConfigMap.
pub fn dashboard_name(p: &str) -> String {
    format!("{p}-dashboard")
}
/// Name of the Loki rules ConfigMap.
pub fn loki_rules_name(p: &str) -> String {
    format!("{p}-loki-rules")
}

/// The message the runner logs for each anomaly (rate-limited); the Loki
/// anomaly-rate rule counts it.
pub const ANOMALY_LOG_MESSAGE: &str = "Anomaly detected";

fn panel(id: u32, title: &str, kind: &str, x: u32, y: u32, w: u32, targets: Vec<Value>, unit: &str) -> Value {
    json!({
        "id": id, "title": title, "type": kind,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": w, "h": 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": targets,
    })
}

fn target(expr: String, legend: &str, ref_id: &str) -> Value {
    json!({"expr": expr, "legendFormat": legend, "refId": ref_id})
}

/// The Grafana dashboard model for one pipeline.
pub fn dashboard_json(namespace: &str, name: &str) -> Value {
    let sel = format!(r#"namespace="{namespace}",pipeline="{name}""#);
    let pods = format!(r#"{{namespace="{namespace}", pod=~"{}-.*"}}"#, runner_name(name));
    let panels = vec![
        panel(
            1,
            "Throughput",
            "timeseries",
            0,
            0,
            12,
            vec![
                target(format!("sum(rate(vigil_records_in_total{{{sel}}}[1m]))"), "in", "A"),
                target(format!("sum(rate(vigil_records_out_total{{{sel}}}[1m]))"), "out", "B"),
                target(format!("sum(rate(vigil_records_filtered_total{{{sel}}}[1m]))"), "filtered", "C"),
            ],
            "reqps",
        ),
        panel(
            2,
            "Dead-letter rate by stage",
            "timeseries",
            12,
            0,
            12,
            vec![target(
                format!("sum by (stage) (rate(vigil_records_dead_lettered_total{{{sel}}}[5m]))"),
                "{{stage}}",
                "A",
            )],
            "reqps",
        ),
        panel(
            3,
            "Anomaly rate",
            "timeseries",
            0,
            8,
            12,
            vec![target(
                format!(
                    "sum(rate(vigil_anomalies_total{{{sel}}}[5m])) / clamp_min(sum(rate(vigil_records_out_total{{{sel}}}[5m])), 1e-9)"
                ),
                "anomalies / scored",
                "A",
            )],
            "percentunit",
        ),
        panel(
            4,
            "Score distribution",
            "heatmap",
            12,
            8,
            12,
            vec![
                json!({"expr": format!("sum by (le) (rate(vigil_score_bucket{{{sel}}}[5m]))"), "format": "heatmap", "legendFormat": "{{le}}", "refId": "A"}),
            ],
            "short",
        ),
        panel(
            5,
            "Consumer lag",
            "timeseries",
            0,
            16,
            12,
            vec![target(
                format!("sum by (partition) (vigil_consumer_lag{{{sel}}})"),
                "partition {{partition}}",
                "A",
            )],
            "short",
        ),
        panel(
            6,
            "Processing latency",
            "timeseries",
            12,
            16,
            12,
            vec![
                target(
                    format!(
                        "histogram_quantile(0.5, sum by (le) (rate(vigil_processing_latency_seconds_bucket{{{sel}}}[5m])))"
                    ),
                    "p50",
                    "A",
                ),
                target(
                    format!(
                        "histogram_quantile(0.99, sum by (le) (rate(vigil_processing_latency_seconds_bucket{{{sel}}}[5m])))"
                    ),
                    "p99",
                    "B",
                ),
            ],
            "s",
        ),
        panel(
            7,
            "In flight, keys, rebalances and stalls",
            "timeseries",
            0,
            24,
            12,
            vec![
                target(format!("sum(vigil_in_flight{{{sel}}})"), "in flight", "A"),
                target(format!("sum(vigil_detector_keys{{{sel}}})"), "keys", "B"),
                target(format!("sum(increase(vigil_rebalances_total{{{sel}}}[5m]))"), "rebalances (5m)", "C"),
                target(format!("sum(vigil_runner_stalled{{{sel}}})"), "stalled runners", "D"),
                target(
                    format!("sum(increase(vigil_dead_letters_truncated_total{{{sel}}}[5m]))"),
                    "dead letters truncated (5m)",
                    "E",
                ),
            ],
            "short",
        ),
        panel(
            9,
            "History: records stored and writes failed",
            "timeseries",
            0,
            32,
            8,
            vec![
                target(
                    format!("sum(rate(vigil_history_records_total{{{sel}}}[5m]))"),
                    "records/s stored",
                    "A",
                ),
                target(
                    format!("sum(increase(vigil_history_write_failures_total{{{sel}}}[5m]))"),
                    "failed writes (5m)",
                    "B",
                ),
            ],
            "short",
        ),
        panel(
            10,
            "History lag",
            "timeseries",
            8,
            32,
            8,
            vec![target(format!("sum(vigil_history_lag_records{{{sel}}})"), "records not yet stored", "A")],
            "short",
        ),
        panel(
            11,
            "History disk used",
            "timeseries",
            16,
            32,
            8,
            vec![target(format!("sum(vigil_history_store_bytes{{{sel}}})"), "store", "A")],
            "bytes",
        ),
        json!({
            "id": 8, "title": "Runner logs", "type": "logs",
            "datasource": {"type": "loki", "uid": "${loki}"},
            "gridPos": {"x": 12, "y": 24, "w": 12, "h": 8},
            "targets": [{"expr": pods, "refId": "A"}],
            "options": {
                "showTime": true, "wrapLogMessage": true, "sortOrder": "Descending",
                "showLabels": false, "showCommonLabels": false, "showLogContextToggle": true,
                "prettifyLogMessage": false, "enableLogDetails": true, "dedupStrategy": "none",
            },
        }),
    ];
    json!({
        "title": format!("Vigil pipeline {namespace}/{name}"),
        "uid": format!("vigil-{}", short_uid(namespace, name)),
        "tags": ["vigil"],
        "annotations": {"list": []},
        "timezone": "browser",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "loki", "type": "datasource", "query": "loki", "label": "Loki"},
        ]},
        "panels": panels,
    })
}

/// Grafana uids are at most 40 characters.
fn short_uid(namespace: &str, name: &str) -> String {
    let full = format!("{namespace}-{name}");
    if full.len() <= 34 {
        return full;
    }
    let hash = super::children::config_hash(&full);
    format!("{}-{}", &full[..25], &hash[..8])
}

/// Every PromQL expression of the dashboard.
pub fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["datasource"]["type"] == "prometheus")
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect()
}

/// The dashboard ConfigMap.
pub fn dashboard(p: &Pipeline) -> Result<ConfigMap, BuildError> {
    let name = p.name_any();
    let namespace = p.namespace().ok_or(BuildError::MissingMetadata("namespace"))?;
    let mut meta = child_meta(p, dashboard_name(&name), "dashboard")?;
    meta.labels.get_or_insert_default().insert("grafana_dashboard".into(), "1".into());
    let body = serde_json::to_string_pretty(&dashboard_json(&namespace, &name))
        .map_err(|e| BuildError::Serialise(e.to_string()))?;
    Ok(ConfigMap {
        metadata: meta,
        data: Some([(format!("vigil-{namespace}-{name}.json"), body)].into()),
        ..ConfigMap::default()
    })
}

/// Loki ruler rules: a burst of runner errors, and anomalies logged at more
/// than three times the last hour's rate.
pub fn loki_rules_yaml(namespace: &str, name: &str) -> String {
    let pods = format!(r#"{{namespace="{namespace}", pod=~"{}-.*"}}"#, runner_name(name));
    let doc = json!({
        "groups": [{
            "name": format!("vigil-{namespace}-{name}"),
            "rules": [
                {
                    "alert": "VigilRunnerErrorBurst",
                    "expr": format!(r#"sum(count_over_time({pods} | json | level="ERROR" [5m])) > 10"#),
                    "for": "1m",
                    "labels": {"severity": "warning", "namespace": namespace, "pipeline": name},
                    "annotations": {"summary": format!("Pipeline {namespace}/{name}: more than 10 runner errors in 5 minutes")},
                },
                {
                    "alert": "VigilAnomalyRateSpike",
                    "expr": format!(
                        r#"sum(count_over_time({pods} |= "{ANOMALY_LOG_MESSAGE}" [5m])) > 3 * (sum(count_over_time({pods} |= "{ANOMALY_LOG_MESSAGE}" [1h])) / 12) + 10"#
                    ),
                    "for": "5m",
                    "labels": {"severity": "info", "namespace": namespace, "pipeline": name},
                    "annotations": {"summary": format!("Pipeline {namespace}/{name}: anomalies at more than three times the last hour's rate")},
                },
            ],
        }]
    });
    serde_yaml::to_string(&doc).unwrap_or_default()
}

/// The Loki rules ConfigMap.
pub fn loki_rules(p: &Pipeline) -> Result<ConfigMap, BuildError> {
    let name = p.name_any();
    let namespace = p.namespace().ok_or(BuildError::MissingMetadata("namespace"))?;
    let mut meta = child_meta(p, loki_rules_name(&name), "alerts")?;
    meta.labels.get_or_insert_default().insert("loki_rule".into(), "1".into());
    Ok(ConfigMap {
        metadata: meta,
        data: Some([(format!("vigil-{namespace}-{name}.yaml"), loki_rules_yaml(&namespace, &name))].into()),
        ..ConfigMap::default()
    })
}
