//! The pure builders, from the shipped example manifests: every child a
//! Pipeline owns, the runner config, and the dashboard's queries against the
//! runner's real metric registry.

use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use vigil_crds::Pipeline;
use vigil_operator::pipeline::children::{self, Settings};
use vigil_operator::pipeline::dashboard;

fn example(file: &str) -> Pipeline {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pipelines").join(file);
    let mut p = vigil_crds::manifest::single_pipeline(&std::fs::read_to_string(path).unwrap()).unwrap();
    // As read from the API server.
    p.metadata.namespace = Some("prod".into());
    p.metadata.uid = Some("0b1c-uid".into());
    p.metadata.generation = Some(1);
    p
}

fn settings() -> Settings {
    Settings {
        runner_image: "ghcr.io/vigil-dev/vigil-runner:test".into(),
        kafka_bootstrap: Some("kafka.kafka:9092".into()),
        model_registry: "vigil-models".into(),
    }
}

fn deployment(p: &Pipeline, replicas: i32) -> Deployment {
    let config = children::runner_config(p, &settings()).unwrap();
    children::deployment(p, &settings(), &children::config_hash(&config), replicas).unwrap()
}

#[test]
fn the_config_map_holds_a_pipeline_the_runner_accepts_with_kafka_resolved() {
    let p = example("cpu-univariate.yaml");
    let config = children::runner_config(&p, &settings()).unwrap();
    let cm = children::config_map(&p, &config).unwrap();
    assert_eq!(cm.name_any(), "cpu-anomalies-pipeline");
    let text = &cm.data.as_ref().unwrap()["pipeline.yaml"];
    let parsed = vigil_crds::manifest::single_pipeline(text).expect("the runner accepts it");
    assert_eq!(parsed.spec.kafka.bootstrap_servers.as_deref(), Some("kafka.kafka:9092"));
    assert_eq!(parsed.metadata.namespace.as_deref(), Some("prod"));
    assert_eq!(parsed.spec.detector, p.spec.detector);
    let owner = &cm.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("Pipeline", "cpu-anomalies", Some(true))
    );
}

#[test]
fn the_config_hash_follows_the_spec_and_ignores_status() {
    let p = example("cpu-univariate.yaml");
    let hash = |p: &Pipeline| children::config_hash(&children::runner_config(p, &settings()).unwrap());
    let mut with_status = p.clone();
    with_status.status = Some(Default::default());
    with_status.metadata.resource_version = Some("999".into());
    assert_eq!(hash(&p), hash(&with_status));
    let mut changed = p.clone();
    changed.spec.detector.threshold = Some(0.95);
    assert_ne!(hash(&p), hash(&changed));
}

#[test]
fn the_deployment_runs_hardened_probed_and_scraped_runners() {
    let p = example("sensor-multivariate.yaml");
    let d = deployment(&p, 2);
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let template = &spec.template;
    let ann = template.metadata.as_ref().unwrap().annotations.as_ref().unwrap();
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "8080");
    assert_eq!(ann[children::CONFIG_HASH].len(), 16);
    let labels = template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    assert_eq!(labels["vigil.dev/pipeline"], "sensor-anomalies");
    assert_eq!(labels["app.kubernetes.io/instance"], "sensor-anomalies");
    let selector = spec.selector.match_labels.as_ref().unwrap();
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)), "the selector matches the pods");

    let pod = template.spec.as_ref().unwrap();
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("ghcr.io/vigil-dev/vigil-runner:test"));
    assert_eq!(c.args.as_deref(), Some(&["run".to_string()][..]));
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(
        c.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(),
        Some("/readyz")
    );
    let env: Vec<(&str, Option<&str>)> =
        c.env.as_ref().unwrap().iter().map(|e| (e.name.as_str(), e.value.as_deref())).collect();
    assert!(env.contains(&("VIGIL_CONSUMER_GROUP", Some("vigil.prod.sensor-anomalies"))), "{env:?}");
    assert!(env.contains(&("VIGIL_PIPELINE_FILE", Some("/etc/vigil/pipeline.yaml"))), "{env:?}");
    // The example sets resources: they are used as written.
    let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(limits["memory"].0, "512Mi");
    // /tmp is writable despite the read-only root.
    assert!(c.volume_mounts.as_ref().unwrap().iter().any(|m| m.mount_path == "/tmp"));
}

#[test]
fn replicas_are_capped_at_the_input_partitions_and_zero_when_paused() {
    let mut p = example("cpu-univariate.yaml");
    p.spec.replicas = 5;
    assert_eq!(children::desired_replicas(&p, Some(3)), (3, true));
    assert_eq!(children::desired_replicas(&p, Some(8)), (5, false));
    assert_eq!(
        children::desired_replicas(&p, None),
        (3, true),
        "the spec's partitions when Kafka has not been asked"
    );
    p.spec.lifecycle = vigil_crds::Lifecycle::Paused;
    assert_eq!(children::desired_replicas(&p, Some(3)), (0, false));
}

#[test]
fn a_kafka_secret_is_mounted_for_the_runner() {
    let mut p = example("cpu-univariate.yaml");
    p.spec.kafka.secret_ref = Some(vigil_crds::SecretRef { name: "kafka-creds".into() });
    let d = deployment(&p, 1);
    let pod = d.spec.unwrap().template.spec.unwrap();
    let vol = pod.volumes.unwrap().into_iter().find(|v| v.name == "kafka").expect("a kafka volume");
    assert_eq!(vol.secret.unwrap().secret_name.as_deref(), Some("kafka-creds"));
    let c = &pod.containers[0];
    assert!(c.env.as_ref().unwrap().iter().any(|e| e.name == "VIGIL_KAFKA_SECRET_DIR"));
}

#[test]
fn the_history_component_exists_only_with_storage_and_runners_keep_no_volume() {
    let p = example("cpu-univariate.yaml");
    let sts =
        children::history_statefulset(&p, &settings(), "abc").unwrap().expect("the example has storage");
    assert_eq!(sts.name_any(), "cpu-anomalies-history");
    let spec = sts.spec.unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.service_name.as_deref(), Some("cpu-anomalies-history"));
    // Its own volume, ReadWriteOnce: runners on any nodes need none.
    let claim = &spec.volume_claim_templates.unwrap()[0];
    let cs = claim.spec.clone().unwrap();
    assert_eq!(cs.access_modes.as_deref(), Some(&["ReadWriteOnce".to_string()][..]));
    assert_eq!(cs.resources.unwrap().requests.unwrap()["storage"].0, "1Gi");
    assert_eq!(
        spec.persistent_volume_claim_retention_policy.unwrap().when_deleted.as_deref(),
        Some("Delete")
    );
    let pod = spec.template.spec.unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.args.as_deref(), Some(&["history-server".to_string()][..]));
    assert_eq!(c.image.as_deref(), Some("ghcr.io/vigil-dev/vigil-runner:test"));
    let sec = c.security_context.clone().unwrap();
    assert_eq!(sec.read_only_root_filesystem, Some(true));
    assert!(
        c.volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.name == "history" && m.mount_path == "/var/lib/vigil")
    );
    assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
    // No token: no token file.
    assert!(!c.env.as_ref().unwrap().iter().any(|e| e.name == "VIGIL_API_TOKEN_FILE"));
    let svcs = children::history_services(&p).unwrap();
    let names: Vec<String> = svcs.iter().map(|s| s.name_any()).collect();
    assert_eq!(names, ["cpu-anomalies-history", "cpu-anomalies-api"]);
    assert_eq!(svcs[0].spec.as_ref().unwrap().cluster_ip.as_deref(), Some("None"), "headless");
    assert_eq!(svcs[1].spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port, 8081);
    assert_eq!(
        svcs[1].spec.as_ref().unwrap().selector.clone().unwrap(),
        children::history_selector("cpu-anomalies")
    );

    // Several runners, and none mounts a volume.
    let mut many = p.clone();
    many.spec.replicas = 3;
    let d = deployment(&many, 3);
    let vols = d.spec.unwrap().template.spec.unwrap().volumes.unwrap();
    assert!(vols.iter().all(|v| v.persistent_volume_claim.is_none()), "{vols:?}");

    let none = example("sensor-multivariate.yaml");
    assert!(children::history_statefulset(&none, &settings(), "abc").unwrap().is_none());
    assert!(children::history_services(&none).unwrap().is_empty());
}

#[test]
fn an_api_token_secret_is_mounted_as_the_token_file() {
    let mut p = example("cpu-univariate.yaml");
    p.spec.api = Some(vigil_crds::pipeline::ApiSpec {
        token_secret_ref: Some(vigil_crds::SecretRef { name: "cpu-api-token".into() }),
    });
    let sts = children::history_statefulset(&p, &settings(), "abc").unwrap().unwrap();
    let pod = sts.spec.unwrap().template.spec.unwrap();
    let env = pod.containers[0].env.clone().unwrap();
    let file = env.iter().find(|e| e.name == "VIGIL_API_TOKEN_FILE").expect("the token file");
    assert_eq!(file.value.as_deref(), Some("/etc/vigil/api/token"));
    let vol = pod.volumes.unwrap().into_iter().find(|v| v.name == "api-token").unwrap();
    let secret = vol.secret.unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("cpu-api-token"));
    assert_eq!(secret.items.unwrap()[0].key, "token");
}

#[test]
fn the_service_selects_the_runners_http_port() {
    let p = example("cpu-univariate.yaml");
    let s = children::service(&p).unwrap();
    let spec = s.spec.unwrap();
    assert_eq!(spec.selector.unwrap(), children::selector("cpu-anomalies"));
    assert_eq!(spec.ports.unwrap()[0].port, 8080);
}

#[test]
fn a_pipeline_without_kafka_anywhere_cannot_be_built() {
    let p = example("cpu-univariate.yaml");
    let none = Settings { kafka_bootstrap: None, ..settings() };
    assert_eq!(children::runner_config(&p, &none), Err(children::BuildError::NoBootstrap));
}

/// The metric names a PromQL expression uses (identifiers followed by `{`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_alphabetic() || bytes[i] == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            if bytes.get(i) == Some(&b'{') {
                out.push(expr[start..i].to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn every_dashboard_query_uses_metrics_the_runner_exports() {
    let d = dashboard::dashboard_json("prod", "cpu-anomalies");
    let queries = dashboard::dashboard_queries(&d);
    assert!(queries.len() >= 8, "{queries:?}");
    let exported: Vec<&str> =
        vigil_runner::metrics::NAMES.iter().chain(vigil_runner::history::api::NAMES).copied().collect();
    let mut used = 0;
    for q in &queries {
        for name in metric_names(q) {
            let base = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
            assert!(
                exported.contains(&name.as_str()) || exported.contains(&base),
                "{name} (in {q}) is not exported by the runner or the history component"
            );
            used += 1;
        }
        assert!(q.contains(r#"namespace="prod",pipeline="cpu-anomalies""#), "{q}");
    }
    assert!(used >= 10);
    let titles: Vec<&str> =
        d["panels"].as_array().unwrap().iter().map(|p| p["title"].as_str().unwrap()).collect();
    for want in [
        "Throughput",
        "Dead-letter rate by stage",
        "Anomaly rate",
        "Score distribution",
        "Consumer lag",
        "Processing latency",
        "Runner logs",
    ] {
        assert!(titles.contains(&want), "{want} missing from {titles:?}");
    }
}

#[test]
fn the_dashboard_and_loki_rules_carry_their_sidecar_labels() {
    let p = example("cpu-univariate.yaml");
    let cm = dashboard::dashboard(&p).unwrap();
    assert_eq!(cm.metadata.labels.as_ref().unwrap()["grafana_dashboard"], "1");
    let body = cm.data.as_ref().unwrap().values().next().unwrap();
    let parsed: serde_json::Value = serde_json::from_str(body).expect("dashboard is JSON");
    assert!(parsed["uid"].as_str().unwrap().len() <= 40);

    let rules = dashboard::loki_rules(&p).unwrap();
    assert_eq!(rules.metadata.labels.as_ref().unwrap()["loki_rule"], "1");
    let text = rules.data.as_ref().unwrap().values().next().unwrap();
    let parsed: serde_json::Value = serde_yaml::from_str(text).unwrap();
    let alerts: Vec<&str> = parsed["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    assert_eq!(alerts, ["VigilRunnerErrorBurst", "VigilAnomalyRateSpike"]);
    // The anomaly rule counts the line the runner really logs.
    assert_eq!(dashboard::ANOMALY_LOG_MESSAGE, vigil_runner::run::ANOMALY_LOG_MESSAGE);
    assert!(text.contains(vigil_runner::run::ANOMALY_LOG_MESSAGE));
    assert!(
        text.contains(r#"pod=~\"cpu-anomalies-runner-.*\""#) || text.contains("cpu-anomalies-runner-.*"),
        "{text}"
    );
}
