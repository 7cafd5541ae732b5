//! The Model lifecycle through the real API server, Job controller and
//! broker; the test plays the kubelet, running each training Job's container
//! command (`vigil train --publish`, with the Job's args and env and the
//! ConfigMap's manifest) and the runner Deployment's (`vigil run`), and
//! reporting the pods' outcome as a kubelet would.
//!
//! Trained from a topic the test fills -> Ready with metrics -> a Pipeline
//! with modelRef scores with v1 -> retrained on a spec change while records
//! flow, and the running runner switches to v2 with no record lost or
//! scored twice (checked by id) -> a training that fails keeps v2 serving,
//! with the reason -> a pin on v1 rolls back.

mod support;

use std::process::{Child, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use support::*;
use vigil_crds::Model;
use vigil_crds::model::ModelPhase;
use vigil_e2e::{TestNamespace, install_crds, kafka, kube_client, unique_name};

fn model_yaml(name: &str, topic: &str, clusters: u32, extra: &str) -> String {
    format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: Model
metadata: {{name: {name}}}
spec:
  algorithm: kMeans
  params: {{clusters: {clusters}, seed: 5}}
  features: [cpu, mem]
  training: {{topic: {{name: {topic}}}, format: json, keyField: host}}
{extra}"#
    )
}

async fn apply_model(api: &Api<Model>, yaml: &str) {
    let value: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
    let name = value["metadata"]["name"].as_str().unwrap().to_string();
    api.patch(&name, &PatchParams::apply("test").force(), &Patch::Apply(&value)).await.unwrap();
}

async fn model_status(api: &Api<Model>, name: &str) -> vigil_crds::ModelStatus {
    api.get(name).await.unwrap().status.unwrap_or_default()
}

/// Wait for the training Job of `version` and its pod (made by the real Job
/// controller), run the container command as the kubelet would, and report
/// the pod's outcome with the termination message the command wrote.
async fn play_training(client: &Client, ns: &str, model: &str, version: i64) -> (bool, String) {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let job_name = vigil_operator::model::job_name(model, version);
    let job = eventually(Duration::from_secs(60), &format!("Job {job_name}"), || async {
        jobs.get_opt(&job_name).await.ok().flatten()
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = eventually(Duration::from_secs(60), &format!("the pod of {job_name}"), || async {
        pods.list(&ListParams::default().labels(&format!("job-name={job_name}")))
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await;
    let template = job.spec.unwrap().template.spec.unwrap();
    let container = &template.containers[0];
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let manifest = cms.get(&format!("{model}-model")).await.unwrap().data.unwrap()["model.yaml"].clone();
    let dir = tempfile::tempdir().unwrap();
    let (model_dir, artifacts) = (dir.path().join("model"), dir.path().join("artifacts"));
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::write(model_dir.join("model.yaml"), manifest).unwrap();
    let termination = dir.path().join("termination-log");
    std::fs::write(&termination, "").unwrap();
    let out = container_command(
        container,
        ns,
        &[("/etc/vigil/model", model_dir.as_path()), ("/var/lib/vigil/models", artifacts.as_path())],
        free_port(),
    )
    .env("VIGIL_TERMINATION_LOG", &termination)
    .output()
    .unwrap();
    let message = std::fs::read_to_string(&termination).unwrap();
    let ok = out.status.success();
    let state = if ok {
        serde_json::json!({"terminated": {"exitCode": 0, "reason": "Completed", "message": message}})
    } else {
        serde_json::json!({"terminated": {"exitCode": 1, "reason": "Error", "message": message}})
    };
    let status = serde_json::json!({"status": {
        "phase": if ok { "Succeeded" } else { "Failed" },
        "containerStatuses": [{
            "name": container.name, "image": container.image, "imageID": "", "ready": false,
            "restartCount": 0, "state": state,
        }],
    }});
    pods.patch_status(&pod.metadata.name.unwrap(), &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    (ok, format!("{message}\n{}", String::from_utf8_lossy(&out.stderr)))
}

/// Start the runner as the Deployment says (the test plays the kubelet).
async fn start_runner(client: &Client, ns: &str, pipeline: &str, dir: &std::path::Path) -> (Child, u16) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d = eventually(Duration::from_secs(60), "the runner Deployment", || async {
        deployments.get_opt(&format!("{pipeline}-runner")).await.ok().flatten()
    })
    .await;
    let pod = d.spec.unwrap().template.spec.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let config =
        cms.get(&format!("{pipeline}-pipeline")).await.unwrap().data.unwrap()["pipeline.yaml"].clone();
    let mount = dir.join("etc-vigil");
    std::fs::create_dir_all(&mount).unwrap();
    std::fs::write(mount.join("pipeline.yaml"), config).unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("runner.log")).unwrap();
    let child = container_command(&pod.containers[0], ns, &[("/etc/vigil", mount.as_path())], port)
        .env("HOSTNAME", format!("{pipeline}-runner-0"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    (child, port)
}

async fn produce(topic: &str, ids: std::ops::Range<u64>) {
    let records: Vec<String> = ids
        .map(|i| {
            format!(r#"{{"id": {i}, "host": "h{}", "cpu": {}, "mem": {}}}"#, i % 3, 40 + i % 7, 60 + i % 5)
        })
        .collect();
    let pairs: Vec<(Option<&str>, &[u8])> = records.iter().map(|r| (Some("k"), r.as_bytes())).collect();
    kafka::produce(topic, &pairs).await.unwrap();
}

fn outputs(topic: &str) -> Vec<(u64, i64)> {
    kafka::drain(topic, usize::MAX, Duration::from_secs(3), true)
        .unwrap()
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            (v["id"].as_u64().unwrap(), v["anomaly"]["modelVersion"].as_i64().unwrap_or(0))
        })
        .collect()
}

async fn wait_outputs(topic: &str, want: usize, log: &std::path::Path) -> Vec<(u64, i64)> {
    eventually(Duration::from_secs(90), &format!("{want} outputs"), || async {
        let got = outputs(topic);
        if got.len() < want {
            eprintln!("{} of {want} outputs; runner log tail: {}", got.len(), tail(log));
        }
        (got.len() >= want).then_some(got)
    })
    .await
}

fn tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().rev().take(3).collect::<Vec<_>>().join("\n")
}

async fn served(port: u16) -> Option<i64> {
    let text = reqwest_get(port, "/status").await?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["modelVersion"].as_i64()
}

async fn reqwest_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    Some(String::from_utf8_lossy(&buf).split_once("\r\n\r\n")?.1.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn real_k8s_models_train_serve_retrain_fail_and_roll_back() {
    let client = kube_client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "models").await.unwrap();
    // The Job controller's pods need the namespace's default ServiceAccount.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    let _ = sas
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}})).unwrap(),
        )
        .await;
    let _op = Operator::start(client.clone(), &ns.name);
    let t = unique_name("mdl");
    let train_topic = format!("{t}-train");
    kafka::create_topic(&train_topic, 2, &[]).await.unwrap();
    produce(&train_topic, 0..600).await;

    // v1: trained from the topic, then Ready with its metrics.
    let models: Api<Model> = Api::namespaced(client.clone(), &ns.name);
    apply_model(&models, &model_yaml("usage", &train_topic, 2, "  schedule: \"0 3 * * *\"\n")).await;
    let (ok, out) = play_training(&client, &ns.name, "usage", 1).await;
    assert!(ok, "training v1: {out}");
    let st = eventually(Duration::from_secs(60), "usage Ready v1", || async {
        let st = model_status(&models, "usage").await;
        (st.phase == Some(ModelPhase::Ready) && st.serving_version == Some(1)).then_some(st)
    })
    .await;
    assert_eq!(st.latest_version, Some(1));
    let metrics = st.metrics.clone().unwrap();
    assert_eq!(metrics.records, Some(600), "{st:?}");
    assert!(metrics.threshold.is_some_and(|t| t > 0.9) && metrics.seconds.is_some());
    assert!(st.last_trained_time.is_some());
    // The operator owns the schedule, so the status says when it trains next.
    let next = st.next_training_time.clone().expect("next training time").0;
    let in_hours = (next.as_second() - k8s_openapi::jiff::Timestamp::now().as_second()) as f64 / 3600.0;
    assert!(in_hours > 0.0 && in_hours <= 24.0, "next training in {in_hours} h: {next}");
    assert_eq!(next.to_string().get(11..19), Some("03:00:00"), "{next}");
    let trained = st.conditions.iter().find(|c| c.type_ == "Trained").unwrap();
    assert_eq!((trained.status.as_str(), trained.reason.as_str()), ("True", "Trained"), "{trained:?}");

    // A Pipeline following the Model scores with v1.
    let pipelines: Api<vigil_crds::Pipeline> = Api::namespaced(client.clone(), &ns.name);
    create(
        &pipelines,
        &pipeline_yaml("scored", &t, "").replace(
            "detector: {algorithm: robustZ, features: [cpu]}",
            "detector: {modelRef: {name: usage}}",
        ),
    )
    .await;
    wait_condition(&pipelines, "scored", "ModelReady", "True", Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runner.log");
    let (mut runner, port) = start_runner(&client, &ns.name, "scored", dir.path()).await;
    // The pod the kubelet would report: running, ready, reachable on the
    // runner's port (the operator reads what it serves from its /status).
    let _ready = keep_ready(client.clone(), ns.name.clone(), "scored-runner".into());
    create_pod(&client, &ns.name, "scored-runner", "scored-runner-0", Some(i32::from(port))).await;
    set_pod_status(
        &client,
        &ns.name,
        "scored-runner-0",
        serde_json::json!({
            "phase": "Running",
            "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{
                "name": "runner", "image": "vigil-runner", "imageID": "", "ready": true, "restartCount": 0,
                "state": {"running": {"startedAt": "2026-12-01T00:00:00Z"}},
            }],
        }),
    )
    .await;
    let input = format!("{t}-in");
    let output = format!("{t}-out");
    produce(&input, 0..200).await;
    let first = wait_outputs(&output, 200, &log).await;
    assert!(first.iter().all(|(_, v)| *v == 1), "scored by v1");

    // Retrain on a spec change while records flow: v2 is served by the
    // running runner, without a restart.
    apply_model(&models, &model_yaml("usage", &train_topic, 3, "")).await;
    let feeding = tokio::spawn({
        let input = input.clone();
        async move {
            for c in 0..16u64 {
                produce(&input, 200 + c * 50..250 + c * 50).await;
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        }
    });
    let (ok, out) = play_training(&client, &ns.name, "usage", 2).await;
    assert!(ok, "training v2: {out}");
    eventually(Duration::from_secs(60), "the runner serves v2", || async {
        (served(port).await == Some(2)).then_some(())
    })
    .await;
    feeding.await.unwrap();
    let all = wait_outputs(&output, 1000, &log).await;
    let ids: Vec<u64> = all.iter().map(|(i, _)| *i).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        (ids.len(), sorted),
        (1000, (0..1000).collect::<Vec<_>>()),
        "every record scored exactly once"
    );
    assert!(all.iter().any(|(_, v)| *v == 2), "records scored by v2");
    let st = eventually(Duration::from_secs(30), "status servingVersion 2", || async {
        let st = model_status(&models, "usage").await;
        (st.serving_version == Some(2)).then_some(st)
    })
    .await;
    assert_eq!((st.latest_version, st.versions.clone()), (Some(2), vec![1, 2]));
    eventually(Duration::from_secs(60), "status.modelVersion 2 from the runners", || async {
        let p = pipelines.get("scored").await.ok()?;
        (p.status?.model_version == Some(2)).then_some(())
    })
    .await;

    // A training that fails (a topic that does not exist) keeps v2 serving
    // and says why.
    apply_model(&models, &model_yaml("usage", &format!("{t}-missing"), 3, "")).await;
    let (ok, out) = play_training(&client, &ns.name, "usage", 3).await;
    assert!(!ok, "training from a missing topic fails: {out}");
    let st = eventually(Duration::from_secs(60), "usage Failed", || async {
        let st = model_status(&models, "usage").await;
        (st.phase == Some(ModelPhase::Failed)).then_some(st)
    })
    .await;
    let trained = st.conditions.iter().find(|c| c.type_ == "Trained").unwrap();
    assert_eq!(trained.reason, "TrainingFailed", "{trained:?}");
    assert!(
        trained.message.contains("does not exist") && trained.message.contains("version 2 keeps serving"),
        "{trained:?}"
    );
    assert_eq!(st.serving_version, Some(2));
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "True", "{ready:?}");
    assert_eq!(served(port).await, Some(2));

    // Rollback: pin v1 (the training inputs are back to v2's, so nothing is
    // retrained); the runner follows.
    apply_model(&models, &model_yaml("usage", &train_topic, 3, "  version: 1\n")).await;
    eventually(Duration::from_secs(60), "the runner serves v1 again", || async {
        (served(port).await == Some(1)).then_some(())
    })
    .await;
    // The pointer is written before the status: wait for the status.
    let st = eventually(Duration::from_secs(30), "status servingVersion 1", || async {
        let st = model_status(&models, "usage").await;
        (st.serving_version == Some(1)).then_some(st)
    })
    .await;
    assert_eq!(st.latest_version, Some(2), "{st:?}");
    assert_eq!(st.phase, Some(ModelPhase::Ready), "{st:?}");
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        jobs.get_opt(&vigil_operator::model::job_name("usage", 4)).await.unwrap().is_none(),
        "no retraining"
    );
    produce(&input, 1000..1100).await;
    let all = wait_outputs(&output, 1100, &log).await;
    assert!(all.iter().filter(|(i, _)| *i >= 1000).all(|(_, v)| *v == 1), "scored by v1 after the rollback");

    let _ = runner.kill();
    let _ = runner.wait();
    // Gone before the operator stops, so no finalizer is left behind.
    pipelines.delete("scored", &Default::default()).await.unwrap();
    eventually(Duration::from_secs(60), "the Pipeline deleted", || async {
        pipelines.get_opt("scored").await.ok()?.is_none().then_some(())
    })
    .await;
    ns.cleanup().await.unwrap();
}
