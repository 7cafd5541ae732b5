//! Dashboards and rules checked by the real tools, not by eye: every
//! generated Grafana dashboard (each Pipeline's, the operator's) passes
//! strict validation with grafana-foundation-sdk; every LogQL expression of
//! the generated Loki rules parses with Grafana's LogQL grammar; the
//! Prometheus alerting rules pass `promtool check rules` and their unit
//! tests (`promtool test rules`). Whether the dashboards' PromQL returns
//! data from real runners is `real_node_observability.rs`.

use std::path::PathBuf;
use std::process::Command;

use vigil_operator::pipeline::dashboard;

fn tool(name: &str) -> PathBuf {
    let script = vigil_e2e::repo_dir().join("e2e/lib/tools.sh");
    let what = if name == "promtool" { "prometheus" } else { name };
    let built = Command::new(&script).args(["build", what]).output().unwrap();
    assert!(built.status.success(), "building {name}: {}", String::from_utf8_lossy(&built.stderr));
    let path = Command::new(&script).args(["path", name]).output().unwrap();
    PathBuf::from(String::from_utf8_lossy(&path.stdout).trim())
}

fn chart_file(path: &str) -> PathBuf {
    vigil_e2e::repo_dir().join("helm/vigil/files").join(path)
}

#[test]
fn dashboards_pass_strict_validation_with_grafana_foundation_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("pipeline.json");
    let long = dir.path().join("long-name.json");
    std::fs::write(&pipeline, dashboard::dashboard_json("monitoring", "cpu-anomalies").to_string()).unwrap();
    std::fs::write(
        &long,
        dashboard::dashboard_json("a-rather-long-namespace-name", "and-a-long-pipeline-name").to_string(),
    )
    .unwrap();
    let out = Command::new(tool("dashlint"))
        .arg(&pipeline)
        .arg(&long)
        .arg(chart_file("dashboards/vigil-operator.json"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dashlint:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 3, "{text}");

    // The check is strict: a panel with a field Grafana does not know fails.
    let mut bad = dashboard::dashboard_json("monitoring", "cpu-anomalies");
    bad["panels"][0]["colour"] = "red".into();
    let bad_file = dir.path().join("bad.json");
    std::fs::write(&bad_file, bad.to_string()).unwrap();
    let out = Command::new(tool("dashlint")).arg(&bad_file).output().unwrap();
    assert!(!out.status.success(), "an unknown field must fail: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn every_logql_expression_of_the_loki_rules_parses() {
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&dashboard::loki_rules_yaml("monitoring", "cpu-anomalies")).unwrap();
    let exprs: Vec<String> = rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 2);
    let dash = dashboard::dashboard_json("monitoring", "cpu-anomalies");
    let log_panels: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["datasource"]["type"] == "loki")
        .flat_map(|p| {
            p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string())
        })
        .collect();
    assert!(!log_panels.is_empty(), "the dashboard has a logs panel");
    let check = tool("logql");
    let out = Command::new("node").arg(&check).args(&exprs).args(&log_panels).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "LogQL:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    // And the grammar does catch a broken one.
    let out = Command::new("node")
        .arg(&check)
        .arg(r#"sum(count_over_time({pod=~"x-.*"} |= "a" [5m]) >"#)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn prometheus_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = tool("promtool");
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(chart_file("prometheus-rules.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "promtool check rules: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("SUCCESS: 5 rules found"), "{text}");
    let out = Command::new(&promtool)
        .args(["test", "rules", "prometheus-rules_test.yaml"])
        .current_dir(chart_file(""))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every metric the rules use is one Vigil exports.
    let rules = std::fs::read_to_string(chart_file("prometheus-rules.yaml")).unwrap();
    for name in [
        "vigil_runner_stalled",
        "vigil_records_dead_lettered_total",
        "vigil_records_in_total",
        "vigil_consumer_lag",
    ] {
        assert!(rules.contains(name));
        assert!(vigil_runner::metrics::NAMES.contains(&name), "{name} is not a runner metric");
    }
}
