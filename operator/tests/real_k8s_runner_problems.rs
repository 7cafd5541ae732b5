//! Crash loops and stalled runners are visible on the Pipeline: the
//! operator reads the runner pods (the test plays the kubelet, writing the
//! pod status a kubelet would) and the runners' own `/status`, and reports
//! `RunnersReady=False` with the reason and the runner's last error, an
//! Event, and phase Degraded, instead of Provisioning forever.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use support::*;
use vigil_crds::Pipeline;
use vigil_crds::pipeline::PipelinePhase;
use vigil_e2e::{TestNamespace, install_crds, kafka, kube_client, unique_name};

/// Deployment status as its controller would write it for 1 replica, 0 ready.
async fn deployment_not_ready(client: &Client, ns: &str, name: &str) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d = api.get(name).await.unwrap();
    let status = serde_json::json!({"status": {
        "observedGeneration": d.metadata.generation, "replicas": 1, "updatedReplicas": 1,
        "readyReplicas": 0, "unavailableReplicas": 1,
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn real_k8s_a_crash_looping_runner_is_reported_with_its_last_error() {
    let client = kube_client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "op-crash").await.unwrap();
    let api: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let _op = Operator::start(client.clone(), &ns.name);
    let t = unique_name("op-crash");
    create(&api, &pipeline_yaml("c", &t, "")).await;
    wait_condition(&api, "c", "TopicsReady", "True", Duration::from_secs(60)).await;
    deployment_not_ready(&client, &ns.name, "c-runner").await;
    create_pod(&client, &ns.name, "c-runner", "c-runner-7d9f-x1", None).await;
    let error =
        "the Kafka producer failed for good (Fatal: boom) after: producing to out failed (at record in/1@42)";
    set_pod_status(&client, &ns.name, "c-runner-7d9f-x1", serde_json::json!({
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
        "containerStatuses": [{
            "name": "runner", "ready": false, "restartCount": 6, "image": "vigil-runner", "imageID": "",
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting failed container=runner"}},
            "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": error}},
        }],
    }))
    .await;

    let p = eventually(Duration::from_secs(30), "RunnersReady=False CrashLoopBackOff", || async {
        let p = api.get("c").await.ok()?;
        condition(&p, "RunnersReady").is_some_and(|c| c.1 == "CrashLoopBackOff").then_some(p)
    })
    .await;
    let (status, _, message) = condition(&p, "RunnersReady").unwrap();
    assert_eq!(status, "False");
    assert!(message.starts_with("0/1 runners ready; pod c-runner-7d9f-x1: CrashLoopBackOff"), "{message}");
    assert!(message.contains("restarted 6 times"), "{message}");
    assert!(message.contains(error), "the runner's own last error is quoted: {message}");
    assert_eq!(p.status.as_ref().unwrap().phase, Some(PipelinePhase::Degraded), "not Provisioning");
    let (_, ready_reason, ready_message) = condition(&p, "Ready").unwrap();
    assert_eq!(ready_reason, "CrashLoopBackOff");
    assert!(ready_message.contains("in/1@42"), "{ready_message}");

    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let ev = eventually(Duration::from_secs(20), "a CrashLoopBackOff Event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some("CrashLoopBackOff"))
    })
    .await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(ev.note.unwrap_or_default().contains("CrashLoopBackOff"));

    // The kubelet restarts it and it becomes ready: the condition clears.
    set_pod_status(
        &client,
        &ns.name,
        "c-runner-7d9f-x1",
        serde_json::json!({
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{
                "name": "runner", "ready": true, "restartCount": 7, "image": "vigil-runner", "imageID": "",
                "state": {"running": {"startedAt": "2026-12-01T12:00:00Z"}},
                "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": error}},
            }],
        }),
    )
    .await;
    mark_ready(&client, &ns.name, "c-runner").await;
    wait_condition(&api, "c", "Ready", "True", Duration::from_secs(30)).await;

    let _ = kafka::delete_topics(&[&format!("{t}-in"), &format!("{t}-out"), &format!("{t}-dlq")]).await;
    ns.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn real_k8s_a_stalled_runner_is_reported_from_its_own_status() {
    let client = kube_client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "op-stall").await.unwrap();
    let api: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let _op = Operator::start(client.clone(), &ns.name);
    let t = unique_name("op-stall");
    create(&api, &pipeline_yaml("s", &t, "")).await;
    wait_condition(&api, "s", "TopicsReady", "True", Duration::from_secs(60)).await;

    // The runner, started as the kubelet would, with a dead-letter topic
    // that does not exist (the operator's is renamed in its copy of the
    // config), so the first bad record stalls it.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let config = cms.get("s-pipeline").await.unwrap().data.unwrap()["pipeline.yaml"].clone();
    let config = config.replace(&format!("{t}-dlq"), &format!("{t}-missing"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pipeline.yaml"), &config).unwrap();
    let secret = dir.path().join("kafka");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("topic.metadata.propagation.max.ms"), "1000").unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("runner.log")).unwrap();
    let mut child = Command::new(vigil_binary())
        .args(["run", "--pipeline", dir.path().join("pipeline.yaml").to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--stall-backoff", "30"])
        .args(["--kafka-secret-dir", secret.to_str().unwrap()])
        .env("VIGIL_NAMESPACE", &ns.name)
        .env("VIGIL_KAFKA_BOOTSTRAP", vigil_e2e::kafka())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    kafka::produce(&format!("{t}-in"), &[(Some("h"), b"{broken")]).await.unwrap();

    deployment_not_ready(&client, &ns.name, "s-runner").await;
    create_pod(&client, &ns.name, "s-runner", "s-runner-5c8-q2", Some(i32::from(port))).await;
    // Wait for the runner to stall, then report what the kubelet's
    // readiness probe would see: running, not ready.
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    eventually(Duration::from_secs(60), "the runner to stall", || async {
        let out = Command::new("curl").args(["-s", &readyz]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).contains("cannot take records").then_some(())
    })
    .await;
    set_pod_status(
        &client,
        &ns.name,
        "s-runner-5c8-q2",
        serde_json::json!({
            "phase": "Running", "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
            "containerStatuses": [{
                "name": "runner", "ready": false, "restartCount": 0, "image": "vigil-runner", "imageID": "",
                "state": {"running": {"startedAt": "2026-12-01T12:00:00Z"}},
            }],
        }),
    )
    .await;

    let p = eventually(Duration::from_secs(30), "RunnersReady=False RunnerStalled", || async {
        let p = api.get("s").await.ok()?;
        condition(&p, "RunnersReady").is_some_and(|c| c.1 == "RunnerStalled").then_some(p)
    })
    .await;
    let message = condition(&p, "RunnersReady").unwrap().2;
    let _ = child.kill();
    let _ = child.wait();
    let runner_log = std::fs::read_to_string(dir.path().join("runner.log")).unwrap_or_default();
    assert!(
        message.contains(&format!("the dead-letter topic {t}-missing cannot take records")),
        "{message}\n{runner_log}"
    );
    assert!(message.contains(&format!("at record {t}-in/")), "names the record: {message}");
    assert_eq!(p.status.as_ref().unwrap().phase, Some(PipelinePhase::Degraded));

    let _ = kafka::delete_topics(&[&format!("{t}-in"), &format!("{t}-out"), &format!("{t}-dlq")]).await;
    ns.cleanup().await.unwrap();
}
