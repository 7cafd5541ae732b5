//! Autoscaling on consumer lag (`spec.scaling`) against the real API server
//! and the real broker: the lag is what the operator measures in Kafka (a
//! backlog produced into the input topic, worked off by committing the
//! runners' consumer group to the end); the test plays the kubelet.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use support::*;
use vigil_crds::Pipeline;
use vigil_e2e::{TestNamespace, install_crds, kafka, kube_client, unique_name};

async fn setup(prefix: &str) -> (Client, TestNamespace, Api<Pipeline>, Operator, String) {
    let client = kube_client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::create(&client, prefix).await.unwrap();
    let api: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let op = Operator::start(client.clone(), &ns.name);
    let topics = unique_name(prefix);
    (client, ns, api, op, topics)
}

/// A Pipeline with 4 input partitions, scaling on 100 records of lag per
/// runner between 1 and `max`.
fn scaled_yaml(name: &str, t: &str, max: i32, lifecycle: &str) -> String {
    format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  input:
    topic: {{name: {t}-in, partitions: 4}}
  detector: {{algorithm: robustZ, features: [cpu]}}
  output: {{name: {t}-out}}
  deadLetter: {{name: {t}-dlq}}
  lifecycle: {lifecycle}
  scaling:
    minReplicas: 1
    maxReplicas: {max}
    targetLagPerReplica: 100
    scaleUpStabilization: 0s
    scaleDownStabilization: 8s
"#
    )
}

async fn backlog(topic: &str, n: usize) {
    let value = br#"{"cpu": 0.5}"#;
    let records: Vec<(Option<&str>, &[u8])> = (0..n).map(|_| (None, &value[..])).collect();
    kafka::produce(topic, &records).await.unwrap();
}

/// Wait until the status and the Deployment both want `replicas`.
async fn wait_replicas(
    api: &Api<Pipeline>,
    deployments: &Api<Deployment>,
    replicas: i32,
    within: Duration,
) -> Pipeline {
    eventually(within, &format!("{replicas} replicas in the status and the Deployment"), || async {
        let p = api.get("scaled").await.ok()?;
        let d = deployments.get("scaled-runner").await.ok()?;
        let want = d.spec.as_ref()?.replicas?;
        (p.status.as_ref()?.replicas == Some(replicas) && want == replicas).then_some(p)
    })
    .await
}

async fn event_notes(client: &Client, ns: &str, reason: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.note)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn real_k8s_a_backlog_scales_the_runners_up_and_a_drained_one_back_down() {
    let (client, ns, api, _op, t) = setup("op-scale").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    create(&api, &scaled_yaml("scaled", &t, 10, "Running")).await;
    let _kubelet = keep_ready(client.clone(), ns.name.clone(), "scaled-runner".into());
    let p = wait_condition(&api, "scaled", "Ready", "True", Duration::from_secs(60)).await;
    assert_eq!(p.status.as_ref().unwrap().replicas, Some(1), "minReplicas with no lag");
    let sel = p.status.as_ref().unwrap().selector.clone().expect("a selector for the scale subresource");
    assert!(sel.contains("vigil.dev/pipeline=scaled"), "{sel}");

    // 250 records of lag at 100 per runner: 3 runners, within the operator's
    // lag interval (2 s in tests) plus a reconcile.
    let input = format!("{t}-in");
    backlog(&input, 250).await;
    let started = Instant::now();
    let p = wait_replicas(&api, &deployments, 3, Duration::from_secs(30)).await;
    println!("scaled up to 3 in {:?}", started.elapsed());
    assert_eq!(p.status.as_ref().unwrap().consumer_lag, Some(250));
    assert!(p.status.as_ref().unwrap().last_scale_time.is_some());
    let notes = eventually(Duration::from_secs(10), "a ScaledUp Event", || async {
        let n = event_notes(&client, &ns.name, "ScaledUp").await;
        (!n.is_empty()).then_some(n)
    })
    .await;
    assert!(
        notes.iter().any(|n| n.contains("from 1 to 3") && n.contains("consumer lag 250")),
        "the Event says why: {notes:?}"
    );

    // 1,250 records of lag ask for 13 runners; 4 partitions hold it to 4.
    backlog(&input, 1000).await;
    wait_replicas(&api, &deployments, 4, Duration::from_secs(30)).await;
    let p = eventually(Duration::from_secs(15), "LimitedByPartitions", || async {
        let p = api.get("scaled").await.ok()?;
        (condition(&p, "Autoscaling")?.1 == "LimitedByPartitions").then_some(p)
    })
    .await;
    let (_, _, message) = condition(&p, "Autoscaling").unwrap();
    assert!(
        message.contains("asks for 13 runners") && message.contains("one per input partition"),
        "{message}"
    );
    assert_eq!(condition(&p, "Ready").unwrap().0, "True", "{:?}", p.status);

    // Worked off: the lag reads zero, and the runners go back to one only
    // after the 8 s scale-down window.
    kafka::commit_to_end(&Pipeline::consumer_group(&ns.name, "scaled"), &input, 4).unwrap();
    eventually(Duration::from_secs(30), "consumer lag 0 in the status", || async {
        let p = api.get("scaled").await.ok()?;
        (p.status?.consumer_lag == Some(0)).then_some(())
    })
    .await;
    let drained = Instant::now();
    let p = api.get("scaled").await.unwrap();
    assert_eq!(p.status.as_ref().unwrap().replicas, Some(4), "no scale-down before the window");
    wait_replicas(&api, &deployments, 1, Duration::from_secs(30)).await;
    let waited = drained.elapsed();
    println!("scaled down 8 s window: {waited:?} after the lag read 0");
    assert!(waited >= Duration::from_secs(5), "scaled down {waited:?} after the lag read 0");
    let notes = event_notes(&client, &ns.name, "ScaledDown").await;
    assert!(notes.iter().any(|n| n.contains("from 4 to 1")), "{notes:?}");

    // maxReplicas binds below the partitions.
    update_spec(&api, &scaled_yaml("scaled", &t, 2, "Running")).await;
    backlog(&input, 1000).await;
    wait_replicas(&api, &deployments, 2, Duration::from_secs(30)).await;
    eventually(Duration::from_secs(15), "LimitedByMaxReplicas", || async {
        let p = api.get("scaled").await.ok()?;
        (condition(&p, "Autoscaling")?.1 == "LimitedByMaxReplicas").then_some(())
    })
    .await;

    // Pausing wins over a backlog.
    update_spec(&api, &scaled_yaml("scaled", &t, 2, "Paused")).await;
    let p = wait_replicas(&api, &deployments, 0, Duration::from_secs(30)).await;
    backlog(&input, 500).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let p2 = api.get("scaled").await.unwrap();
    assert_eq!(p2.status.as_ref().unwrap().replicas, Some(0), "paused stays at zero: {:?}", p2.status);
    assert_eq!(deployments.get("scaled-runner").await.unwrap().spec.unwrap().replicas, Some(0));
    let (status, reason, _) = condition(&p2, "Autoscaling").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Paused"));
    assert_eq!(condition(&p, "Ready").unwrap().1, "Paused");

    // Resumed, it scales to what the lag asks for.
    update_spec(&api, &scaled_yaml("scaled", &t, 2, "Running")).await;
    wait_replicas(&api, &deployments, 2, Duration::from_secs(30)).await;

    // Nothing left behind for a node's operator to run later in the suite.
    ns.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn real_k8s_the_scale_subresource_sets_the_replicas_and_bad_bounds_are_refused() {
    let (client, ns, api, _op, t) = setup("op-scale-sub").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    create(&api, &pipeline_yaml("cpu", &t, "")).await;
    let _kubelet = keep_ready(client.clone(), ns.name.clone(), "cpu-runner".into());
    wait_condition(&api, "cpu", "Ready", "True", Duration::from_secs(60)).await;

    // What `kubectl scale pipeline cpu --replicas=2` (or an HPA) does.
    let scale = serde_json::json!({"spec": {"replicas": 2}});
    api.patch_scale("cpu", &PatchParams::default(), &Patch::Merge(&scale)).await.unwrap();
    eventually(Duration::from_secs(30), "the Deployment at 2 replicas", || async {
        let d = deployments.get("cpu-runner").await.ok()?;
        (d.spec?.replicas == Some(2)).then_some(())
    })
    .await;
    let s = api.get_scale("cpu").await.unwrap();
    assert_eq!(s.spec.and_then(|s| s.replicas), Some(2));
    assert!(s.status.and_then(|s| s.selector).is_some_and(|sel| sel.contains("vigil.dev/pipeline=cpu")));

    // minReplicas above maxReplicas is refused with the field named.
    let bad = scaled_yaml("bad", &t, 2, "Running").replace("minReplicas: 1", "minReplicas: 3");
    let value: serde_json::Value = serde_yaml::from_str(&bad).unwrap();
    let p: Pipeline = serde_json::from_value(value).unwrap();
    let err = api.create(&Default::default(), &p).await.expect_err("refused");
    assert!(err.to_string().contains("spec.scaling.minReplicas must be at most maxReplicas"), "{err}");
    ns.cleanup().await.unwrap();
}
