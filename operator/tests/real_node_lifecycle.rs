//! Operating a Pipeline on the real node while records flow: a spec change
//! rolls the runner pods (config hash), a runner pod is deleted, the
//! Pipeline is paused (pods go to zero) and resumed; not one record is lost,
//! checked by id. And the operator: its leader pod killed mid-reconcile, the
//! other replica takes the Lease and finishes, with no duplicate or orphaned
//! children.

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use vigil_crds::Pipeline;
use vigil_e2e::node::{VIGIL_NAMESPACE, apply_manifest, diagnostics, ids_out, install_vigil, wait_for};
use vigil_e2e::{TestNamespace, kafka, kube_client, unique_name};

fn pipeline(name: &str, topics: &str, replicas: i32, threshold: f64) -> String {
    format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  input: {{topic: {{name: {topics}-in, partitions: 2}}, keyField: host}}
  detector: {{algorithm: robustZ, features: [cpu], threshold: {threshold}}}
  output: {{name: {topics}-out, partitions: 2}}
  deadLetter: {{name: {topics}-dlq}}
  replicas: {replicas}
  topicDeletionPolicy: Delete
  # Small requests: many runners share the node's two cores in these tests.
  resources: {{requests: {{cpu: 10m, memory: 32Mi}}, limits: {{memory: 256Mi}}}}
"#
    )
}

async fn ready(api: &Api<Pipeline>, name: &str) -> Option<Pipeline> {
    let p = api.get(name).await.ok()?;
    let s = p.status.as_ref()?;
    let ok = s.observed_generation == p.metadata.generation
        && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    ok.then_some(p)
}

async fn runner_pods(client: &Client, ns: &str, name: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("vigil.dev/pipeline={name},app.kubernetes.io/component=runner");
    pods.list(&ListParams::default().labels(&selector)).await.map(|l| l.items).unwrap_or_default()
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test(flavor = "multi_thread")]
async fn real_node_rollout_pod_deletion_pause_and_resume_lose_no_record() {
    install_vigil();
    let client = kube_client().await.unwrap();
    let ns = TestNamespace::create(&client, "node-life").await.unwrap();
    let topics = unique_name("life");
    let api: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    apply_manifest(&ns.name, &pipeline("life", &topics, 2, 0.9));
    wait_for("Ready", &ns.name, Duration::from_secs(120), || ready(&api, "life")).await;

    // Records flow for the whole test: 12,000 ids over about 20 s.
    const N: u64 = 12_000;
    let input = format!("{topics}-in");
    let producer = tokio::spawn(async move {
        for chunk in 0..40u64 {
            let records: Vec<String> = (chunk * 300..(chunk + 1) * 300)
                .map(|i| format!(r#"{{"id": {i}, "host": "h{}", "cpu": {}}}"#, i % 5, 40.0 + (i % 11) as f64))
                .collect();
            let pairs: Vec<(Option<&str>, &[u8])> = records.iter().map(|r| (None, r.as_bytes())).collect();
            kafka::produce(&input, &pairs).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    // 1. A spec change rolls the runner pods (a new config hash).
    let before: HashSet<String> =
        runner_pods(&client, &ns.name, "life").await.iter().filter_map(|p| p.metadata.name.clone()).collect();
    apply_manifest(&ns.name, &pipeline("life", &topics, 2, 0.95));
    wait_for("the rollout", &ns.name, Duration::from_secs(120), || async {
        let pods = runner_pods(&client, &ns.name, "life").await;
        let fresh =
            pods.iter().filter(|p| !before.contains(p.metadata.name.as_deref().unwrap_or(""))).count();
        let all_new_ready =
            pods.iter().all(|p| !before.contains(p.metadata.name.as_deref().unwrap_or("")) && pod_ready(p));
        (fresh == 2 && all_new_ready && pods.len() == 2).then_some(())
    })
    .await;
    wait_for("Ready after the rollout", &ns.name, Duration::from_secs(60), || ready(&api, "life")).await;

    // 2. A runner pod deleted mid-stream.
    let victim = runner_pods(&client, &ns.name, "life").await[0].metadata.name.clone().unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.delete(&victim, &DeleteParams::default()).await.unwrap();
    wait_for("a replacement pod", &ns.name, Duration::from_secs(90), || async {
        let pods = runner_pods(&client, &ns.name, "life").await;
        let ok = pods.len() == 2
            && pods.iter().all(|p| p.metadata.name.as_deref() != Some(&victim) && pod_ready(p));
        ok.then_some(())
    })
    .await;

    // 3. Pause: the runners go to zero, topics and offsets stay.
    api.patch(
        "life",
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({"spec": {"lifecycle": "Paused"}})),
    )
    .await
    .unwrap();
    wait_for("no runner pods while paused", &ns.name, Duration::from_secs(90), || async {
        let p = api.get("life").await.ok()?;
        let paused = p.status.as_ref()?.phase == Some(vigil_crds::pipeline::PipelinePhase::Paused);
        (paused && runner_pods(&client, &ns.name, "life").await.is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Resume.
    api.patch(
        "life",
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({"spec": {"lifecycle": "Running"}})),
    )
    .await
    .unwrap();
    wait_for("runners back after resume", &ns.name, Duration::from_secs(120), || async {
        let p = ready(&api, "life").await?;
        (p.status?.ready_replicas == Some(2)).then_some(())
    })
    .await;

    producer.await.unwrap();
    let seen = ids_out(&format!("{topics}-out"), N, Duration::from_secs(180));
    let missing: Vec<u64> = (0..N).filter(|i| !seen.contains(i)).take(20).collect();
    assert!(
        missing.is_empty(),
        "{} of {N} ids missing, e.g. {missing:?}\n{}",
        N - seen.len() as u64,
        diagnostics(&ns.name)
    );

    api.delete("life", &DeleteParams::default()).await.unwrap();
    ns.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn real_node_the_other_operator_replica_takes_over_when_the_leader_is_killed() {
    install_vigil();
    let client = kube_client().await.unwrap();
    let ns = TestNamespace::create(&client, "node-failover").await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), VIGIL_NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), VIGIL_NAMESPACE);
    // A holder that is a running pod: the Lease may still name a replica of
    // an earlier install until it expires.
    let holder = || async {
        let name = leases.get("vigil-operator").await.ok()?.spec?.holder_identity?;
        pods.get_opt(&name).await.ok()??;
        Some(name)
    };
    let leader = wait_for("a leader", VIGIL_NAMESPACE, Duration::from_secs(60), holder).await;

    // Five Pipelines, and the leader killed while it reconciles them.
    let names: Vec<String> = (0..5).map(|i| format!("f{i}")).collect();
    let base = unique_name("fo");
    let yaml: String = names.iter().map(|n| pipeline(n, &format!("{base}-{n}"), 1, 0.9) + "---\n").collect();
    apply_manifest(&ns.name, &yaml);
    pods.delete(&leader, &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() })
        .await
        .unwrap();

    let api: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    for n in &names {
        wait_for(&format!("{n} Ready"), &ns.name, Duration::from_secs(120), || ready(&api, n)).await;
    }
    let new_leader = holder().await.unwrap();
    assert_ne!(new_leader, leader, "the Lease changed hands");

    // Exactly one of each child per Pipeline, each owned by its Pipeline.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=vigil-operator");
    let d = deployments.list(&lp).await.unwrap().items;
    let s = services.list(&lp).await.unwrap().items;
    let c = config_maps
        .list(
            &lp.clone()
                .labels("app.kubernetes.io/managed-by=vigil-operator,app.kubernetes.io/component=config"),
        )
        .await
        .unwrap()
        .items;
    assert_eq!(d.len(), 5, "one Deployment per Pipeline");
    assert_eq!(s.len(), 5, "one Service per Pipeline");
    assert_eq!(c.len(), 5, "one runner ConfigMap per Pipeline");
    for obj in d
        .iter()
        .map(|x| &x.metadata)
        .chain(s.iter().map(|x| &x.metadata))
        .chain(c.iter().map(|x| &x.metadata))
    {
        let owners = obj.owner_references.clone().unwrap_or_default();
        assert_eq!(owners.len(), 1, "{:?} has one owner", obj.name);
        assert!(names.contains(&owners[0].name), "{:?} is owned by a Pipeline", obj.name);
    }
    // The topics exist once each, as specified.
    for n in &names {
        assert_eq!(kafka::partitions(&format!("{base}-{n}-in")).unwrap(), Some(2));
    }
    for n in &names {
        api.delete(n, &DeleteParams::default()).await.unwrap();
    }
    ns.cleanup().await.unwrap();
}
