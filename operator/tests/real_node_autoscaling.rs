//! Autoscaling on the real node: a backlog built up while a Pipeline was
//! paused is drained by as many runner pods as its lag asks for (the chart's
//! operator measures the lag in Kafka), not one record is lost through the
//! scale-up and the scale-down that follows, and the runners go back to
//! `minReplicas` once the backlog is gone and the scale-down window passed.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use vigil_crds::Pipeline;
use vigil_e2e::node::{apply_manifest, diagnostics, ids_out, install_vigil, wait_for};
use vigil_e2e::{TestNamespace, kafka, kube_client, unique_name};

fn pipeline(name: &str, topics: &str, lifecycle: &str) -> String {
    format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  input: {{topic: {{name: {topics}-in, partitions: 4}}, keyField: host}}
  detector: {{algorithm: robustZ, features: [cpu]}}
  output: {{name: {topics}-out, partitions: 2}}
  deadLetter: {{name: {topics}-dlq}}
  lifecycle: {lifecycle}
  topicDeletionPolicy: Delete
  scaling:
    minReplicas: 1
    maxReplicas: 3
    targetLagPerReplica: 5000
    scaleDownStabilization: 30s
  resources: {{requests: {{cpu: 10m, memory: 32Mi}}, limits: {{memory: 256Mi}}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn real_node_a_backlog_is_drained_by_more_runner_pods_which_then_scale_back() {
    install_vigil();
    let client = kube_client().await.unwrap();
    let ns = TestNamespace::create(&client, "node-scale").await.unwrap();
    let topics = unique_name("scale");
    let api: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let runners = ListParams::default().labels("vigil.dev/pipeline=drain,app.kubernetes.io/component=runner");

    // Paused: topics exist, no runner consumes.
    apply_manifest(&ns.name, &pipeline("drain", &topics, "Paused"));
    wait_for("Paused", &ns.name, Duration::from_secs(120), || async {
        let p = api.get("drain").await.ok()?;
        (p.status?.phase == Some(vigil_crds::pipeline::PipelinePhase::Paused)).then_some(())
    })
    .await;

    // A backlog of 20,000 records: 4 runners' worth at 5,000 each, held to
    // maxReplicas 3.
    const N: u64 = 20_000;
    let input = format!("{topics}-in");
    for chunk in 0..10u64 {
        let records: Vec<String> = (chunk * 2000..(chunk + 1) * 2000)
            .map(|i| format!(r#"{{"id": {i}, "host": "h{}", "cpu": {}}}"#, i % 7, 40.0 + (i % 11) as f64))
            .collect();
        let pairs: Vec<(Option<&str>, &[u8])> = records.iter().map(|r| (None, r.as_bytes())).collect();
        kafka::produce(&input, &pairs).await.unwrap();
    }
    // The operator measures the lag of an autoscaled Pipeline every 15 s,
    // paused or not.
    wait_for("the backlog in status.consumerLag", &ns.name, Duration::from_secs(60), || async {
        let p = api.get("drain").await.ok()?;
        (p.status?.consumer_lag == Some(N as i64)).then_some(())
    })
    .await;

    // Resumed: three runners at once, not one.
    let resumed = Instant::now();
    api.patch(
        "drain",
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({"spec": {"lifecycle": "Running"}})),
    )
    .await
    .unwrap();
    wait_for("3 runners wanted", &ns.name, Duration::from_secs(60), || async {
        let d = deployments.get("drain-runner").await.ok()?;
        (d.spec?.replicas == Some(3)).then_some(())
    })
    .await;
    let p = api.get("drain").await.unwrap();
    let autoscaling =
        p.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Autoscaling").cloned();
    println!("{:?} after resuming: {autoscaling:?}", resumed.elapsed());
    assert!(
        autoscaling.as_ref().is_some_and(|c| c.message.contains("consumer lag 20000")),
        "{autoscaling:?}"
    );
    wait_for("3 runner pods", &ns.name, Duration::from_secs(60), || async {
        let n = pods.list(&runners).await.ok()?.items.len();
        (n == 3).then_some(())
    })
    .await;

    // Every record comes out, through the scale-up's rebalances.
    let seen = ids_out(&format!("{topics}-out"), N, Duration::from_secs(180));
    let missing: Vec<u64> = (0..N).filter(|i| !seen.contains(i)).take(20).collect();
    assert!(
        missing.is_empty(),
        "{} of {N} ids missing, e.g. {missing:?}\n{}",
        N - seen.len() as u64,
        diagnostics(&ns.name)
    );

    // Drained: back to one runner after the 30 s window, and nothing lost
    // on the way down either (the leaving runners commit what they did).
    let p = wait_for("back to 1 runner", &ns.name, Duration::from_secs(120), || async {
        let p = api.get("drain").await.ok()?;
        let d = deployments.get("drain-runner").await.ok()?;
        let one = p.status.as_ref()?.replicas == Some(1) && d.spec?.replicas == Some(1);
        one.then_some(p)
    })
    .await;
    println!("back to 1 runner {:?} after resuming", resumed.elapsed());
    assert_eq!(p.status.as_ref().unwrap().consumer_lag, Some(0), "{:?}", p.status);
    wait_for("1 runner pod", &ns.name, Duration::from_secs(90), || async {
        let n = pods.list(&runners).await.ok()?.items.len();
        (n == 1).then_some(())
    })
    .await;
    let group = Pipeline::consumer_group(&ns.name, "drain");
    let committed = kafka::committed_offsets(&group, &input, 4).unwrap();
    let total: i64 = committed.iter().map(|o| o.unwrap_or(0)).sum();
    assert_eq!(total, N as i64, "the group committed every record: {committed:?}");

    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns.name);
    let reasons: Vec<String> =
        events.list(&Default::default()).await.unwrap().items.into_iter().filter_map(|e| e.reason).collect();
    for want in ["ScaledUp", "ScaledDown"] {
        assert!(reasons.iter().any(|r| r == want), "a {want} Event: {reasons:?}");
    }

    api.delete("drain", &Default::default()).await.unwrap();
    ns.cleanup().await.unwrap();
}
