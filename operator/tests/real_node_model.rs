//! A Model trained as users get it, on the harness's real node: the chart's
//! operator makes the training Job, the kubelet runs `vigil train` in the
//! runner image (non-root, read-only root filesystem) against the broker,
//! the artifact is published to the registry topic, the Model reports Ready
//! with metrics, and a runner pod of a Pipeline with `modelRef` scores with
//! that version.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use vigil_crds::model::ModelPhase;
use vigil_crds::{Model, Pipeline};
use vigil_e2e::node::{diagnostics, install_vigil};
use vigil_e2e::{TestNamespace, kafka, kube_client, repo_dir, unique_name};

async fn apply<K>(api: &Api<K>, yaml: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let value: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
    let name = value["metadata"]["name"].as_str().unwrap().to_string();
    api.patch(&name, &PatchParams::apply("test").force(), &Patch::Apply(&value)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn real_node_model_trains_in_a_job_and_a_runner_pod_scores_with_it() {
    install_vigil();
    let client = kube_client().await.unwrap();
    let ns = TestNamespace::create(&client, "node-model").await.unwrap();
    let (train_topic, in_topic) = (unique_name("train"), unique_name("in"));

    // Known-good history on a topic, as a plant would have it.
    kafka::create_topic(&train_topic, 1, &[]).await.unwrap();
    let history = std::fs::read_to_string(repo_dir().join("examples/data/sensors-known-good.jsonl")).unwrap();
    let lines: Vec<&str> = history.lines().collect();
    let pairs: Vec<(Option<&str>, &[u8])> = lines.iter().map(|l| (None, l.as_bytes())).collect();
    kafka::produce(&train_topic, &pairs).await.unwrap();

    let models: Api<Model> = Api::namespaced(client.clone(), &ns.name);
    apply(
        &models,
        &format!(
            r#"apiVersion: vigil.dev/v1alpha1
kind: Model
metadata: {{name: sensors}}
spec:
  algorithm: kMeans
  params: {{clusters: 4, seed: 7}}
  features: [temperature, vibration, pressure]
  transforms:
    - flatten: {{separator: "_"}}
    - rename: {{fields: {{readings_temp_c: temperature, readings_vibration_mm_s: vibration, readings_pressure_kpa: pressure}}}}
  training: {{topic: {{name: {train_topic}}}, format: json, keyField: machine, timestampField: ts}}
  calibration: {{contamination: 0.01}}
"#
        ),
    )
    .await;

    // The Job's pod runs on the node and succeeds; the Model is Ready with
    // what the training measured.
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        let s = models.get("sensors").await.unwrap().status.unwrap_or_default();
        if s.phase == Some(ModelPhase::Ready) && s.serving_version == Some(1) {
            break s;
        }
        assert!(s.phase != Some(ModelPhase::Failed), "training failed: {s:?}\n{}", diagnostics(&ns.name));
        assert!(Instant::now() < deadline, "Model not Ready: {s:?}\n{}", diagnostics(&ns.name));
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // Trained on every record with the three readings (the file has some
    // with one missing, which training skips as `vigil train` does locally).
    let complete = lines
        .iter()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            ["temp_c", "vibration_mm_s", "pressure_kpa"].iter().all(|k| v["readings"][k].is_number())
        })
        .count();
    assert!(complete < lines.len());
    let metrics = status.metrics.clone().unwrap_or_default();
    assert_eq!(metrics.records, Some(complete as i64), "{status:?}");
    assert!(metrics.threshold.is_some_and(|t| t > 0.0), "{status:?}");
    assert!(status.conditions.iter().any(|c| c.type_ == "Trained" && c.status == "True"), "{status:?}");

    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let job = jobs.get(&vigil_operator::model::job_name("sensors", 1)).await.unwrap();
    assert_eq!(job.status.and_then(|s| s.succeeded), Some(1));
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let list = pods.list(&ListParams::default().labels("vigil.dev/model=sensors")).await.unwrap();
    let pod = list.items.first().expect("the training pod");
    assert_eq!(pod.spec.as_ref().unwrap().node_name.as_deref(), Some("vigil-node"));
    let terminated = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c[0].state.as_ref().and_then(|s| s.terminated.clone()));
    let terminated = terminated.expect("the training container terminated");
    assert_eq!(terminated.exit_code, 0);
    // The summary `vigil train` writes to the termination log (what the
    // operator reads, and `kubectl describe pod` shows).
    let message = terminated.message.unwrap_or_default();
    let summary: serde_json::Value = serde_json::from_str(&message).unwrap_or_default();
    assert_eq!(summary["version"], 1, "termination message: {message}");
    assert_eq!(summary["records"], complete, "termination message: {message}");

    // A Pipeline scoring with it, in a runner pod.
    kafka::create_topic(&in_topic, 1, &[]).await.unwrap();
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let out_topic = format!("{in_topic}-scores");
    apply(
        &pipelines,
        &format!(
            r#"apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {{name: sensor-scores}}
spec:
  input: {{topic: {{name: {in_topic}}}, format: json, keyField: machine, timestampField: ts}}
  detector: {{modelRef: {{name: sensors}}}}
  output: {{name: {out_topic}}}
  deadLetter: {{name: {in_topic}-dlq}}
"#
        ),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let p = pipelines.get("sensor-scores").await.unwrap();
        let s = p.status.clone().unwrap_or_default();
        if s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
            && s.observed_generation == p.metadata.generation
        {
            break;
        }
        assert!(Instant::now() < deadline, "Pipeline not Ready: {s:?}\n{}", diagnostics(&ns.name));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let run = unique_name("r");
    let records: Vec<String> = std::fs::read_to_string(repo_dir().join("examples/data/sensors.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| ["temp_c", "vibration_mm_s", "pressure_kpa"].iter().all(|k| v["readings"][k].is_number()))
        .take(200)
        .enumerate()
        .map(|(i, mut v)| {
            v["run"] = run.clone().into();
            v["id"] = i.into();
            v.to_string()
        })
        .collect();
    let pairs: Vec<(Option<&str>, &[u8])> = records.iter().map(|r| (None, r.as_bytes())).collect();
    kafka::produce(&in_topic, &pairs).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = HashSet::new();
    while seen.len() < records.len() && Instant::now() < deadline {
        for r in kafka::drain(&out_topic, usize::MAX, Duration::from_secs(5), false).unwrap() {
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap_or_default();
            if v["run"] == run.as_str() {
                assert_eq!(v["anomaly"]["modelVersion"], 1, "scored by v1: {v}");
                assert_eq!(v["anomaly"]["detector"], "kMeans", "{v}");
                assert!(v["anomaly"]["score"].is_number(), "{v}");
                seen.insert(v["id"].as_u64().unwrap());
            }
        }
    }
    assert_eq!(seen.len(), records.len(), "every record scored by the model\n{}", diagnostics(&ns.name));
    let p = pipelines.get("sensor-scores").await.unwrap();
    assert_eq!(p.status.and_then(|s| s.model_version), Some(1));

    ns.cleanup().await.unwrap();
    kafka::delete_topics(&[&train_topic, &in_topic, &out_topic]).await.ok();
}
