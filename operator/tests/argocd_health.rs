//! Argo CD health checks for Pipelines and Models (`argocd/`), run by Argo
//! CD's own Lua evaluator (argo-cd v3.2.12 `util/lua`, built by
//! `e2e/lib/tools.sh build argo-health`), in the layout of Argo CD's
//! `resource_customizations/<group>/<kind>/health_test.yaml`.
//!
//! The Pipeline test objects carry statuses computed by the operator's own
//! status code from the situations the integration tests reach (Ready,
//! provisioning, rolling out, a crash loop, Kafka down, paused, an invalid
//! spec), so the scripts are tested against what the operator really
//! writes; `VIGIL_UPDATE_TESTDATA=1` rewrites them after a status change.
//! The `argocd-cm` snippet in `examples/argocd/` must embed the same scripts.

use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use vigil_crds::pipeline::{TopicRole, TopicStatus};
use vigil_operator::pipeline::runners::Problem;
use vigil_operator::pipeline::status::{Observation, compute};

fn dir(kind: &str) -> PathBuf {
    vigil_e2e::repo_dir().join("argocd/resource_customizations/vigil.dev").join(kind)
}

fn topics() -> Vec<TopicStatus> {
    [
        (TopicRole::Input, "cpu-metrics", 3),
        (TopicRole::Output, "cpu-scores", 3),
        (TopicRole::DeadLetter, "cpu-dead-letter", 1),
    ]
    .into_iter()
    .map(|(role, name, partitions)| TopicStatus {
        role,
        name: name.into(),
        partitions: Some(partitions),
        state: "Ready".into(),
        message: None,
    })
    .collect()
}

fn running() -> Observation {
    Observation {
        generation: Some(2),
        topics: topics(),
        replicas: 2,
        ready_replicas: Some(2),
        rollout_current: true,
        lag: Some(0),
        config_hash: Some("3f9a0c".into()),
        ..Observation::default()
    }
}

/// (file, metadata.generation, lifecycle, observation); `None`: no status yet.
fn situations() -> Vec<(&'static str, i64, &'static str, Option<Observation>)> {
    let mut provisioning = running();
    provisioning.topics.clear();
    provisioning.ready_replicas = None;
    let mut rolling = running();
    rolling.rollout_current = false;
    rolling.ready_replicas = Some(1);
    let mut crash = running();
    crash.replicas = 1;
    crash.ready_replicas = Some(0);
    crash.runner_problem = Some(Problem {
        reason: "CrashLoopBackOff".into(),
        message: "pod cpu-anomalies-runner-7d9f-x1: CrashLoopBackOff: back-off 5m0s restarting failed container=runner; restarted 6 times; last exit code 2: the Kafka producer failed for good".into(),
    });
    let mut kafka_down = running();
    kafka_down.topics.clear();
    kafka_down.topics_problem = Some((
        "KafkaUnavailable".into(),
        "Meta data fetch error: BrokerTransportFailure (Local: Broker transport failure)".into(),
    ));
    let mut paused = running();
    paused.paused = true;
    paused.replicas = 0;
    paused.ready_replicas = Some(0);
    let mut invalid = running();
    invalid.invalid = Some((
        "InvalidSpec".into(),
        "spec.transforms[0].filter.expr: unknown function \"avg\" at column 1".into(),
    ));
    vec![
        ("running.yaml", 2, "Running", Some(running())),
        ("provisioning.yaml", 2, "Running", Some(provisioning)),
        ("rolling-out.yaml", 2, "Running", Some(rolling)),
        ("crash-loop.yaml", 2, "Running", Some(crash)),
        ("kafka-unavailable.yaml", 2, "Running", Some(kafka_down)),
        ("paused.yaml", 2, "Paused", Some(paused)),
        ("invalid.yaml", 2, "Running", Some(invalid)),
        ("generation-behind.yaml", 3, "Running", Some(running())),
        ("no-status.yaml", 1, "Running", None),
    ]
}

fn pipeline_yaml(generation: i64, lifecycle: &str, obs: Option<&Observation>) -> String {
    let mut p = serde_json::json!({
        "apiVersion": "vigil.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "cpu-anomalies", "namespace": "monitoring", "generation": generation},
        "spec": {
            "input": {"topic": {"name": "cpu-metrics", "partitions": 3}, "keyField": "host"},
            "detector": {"algorithm": "robustZ", "features": ["cpu"]},
            "output": {"name": "cpu-scores"},
            "deadLetter": {"name": "cpu-dead-letter"},
            "lifecycle": lifecycle,
        },
    });
    if let Some(obs) = obs {
        let status = compute(obs, None, Time("2026-12-01T10:00:00Z".parse().unwrap()));
        p["status"] = serde_json::to_value(status).unwrap();
    }
    format!(
        "# Status computed by the operator's status code (operator/tests/argocd_health.rs).\n{}",
        serde_yaml::to_string(&p).unwrap()
    )
}

fn argo_health() -> PathBuf {
    let script = vigil_e2e::repo_dir().join("e2e/lib/tools.sh");
    let built = Command::new(&script).args(["build", "argo-health"]).output().unwrap();
    assert!(built.status.success(), "building argo-health: {}", String::from_utf8_lossy(&built.stderr));
    let path = Command::new(&script).args(["path", "argo-health"]).output().unwrap();
    PathBuf::from(String::from_utf8_lossy(&path.stdout).trim())
}

#[test]
fn pipeline_test_objects_carry_the_status_the_operator_computes() {
    let update = std::env::var("VIGIL_UPDATE_TESTDATA").is_ok_and(|v| v == "1");
    for (file, generation, lifecycle, obs) in situations() {
        let path = dir("Pipeline").join("testdata").join(file);
        let want = pipeline_yaml(generation, lifecycle, obs.as_ref());
        if update {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(have, want, "{} is stale: rerun with VIGIL_UPDATE_TESTDATA=1", path.display());
    }
}

#[test]
fn argo_cds_own_evaluator_gives_the_expected_health() {
    let out = Command::new(argo_health()).arg(dir("Pipeline")).arg(dir("Model")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(" 0 failed"), "{text}");
    // Every health status Argo CD knows for these kinds is exercised.
    for status in ["Healthy", "Progressing", "Degraded", "Suspended"] {
        assert!(text.contains(&format!(": {status} ")), "no case ends {status}:\n{text}");
    }
}

fn indented_block<'a>(text: &'a str, key: &str) -> String {
    let start = text.find(&format!("{key}: |")).unwrap_or_else(|| panic!("{key} in the snippet"));
    text[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_argocd_cm_snippet_embeds_the_tested_scripts() {
    let snippet =
        std::fs::read_to_string(vigil_e2e::repo_dir().join("examples/argocd/argocd-cm.yaml")).unwrap();
    for kind in ["Pipeline", "Model"] {
        let script = std::fs::read_to_string(dir(kind).join("health.lua")).unwrap();
        let embedded = indented_block(&snippet, &format!("resource.customizations.health.vigil.dev_{kind}"));
        assert_eq!(
            embedded.trim_end(),
            script.trim_end(),
            "the argocd-cm snippet's {kind} script differs from argocd/"
        );
    }
}
