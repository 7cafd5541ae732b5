//! Chaos on the control plane while the operator reconciles: the API server
//! is stopped and started again, then etcd is, each while Pipelines are
//! being reconciled. The operator stays up, recovers by itself, and every
//! Pipeline converges with its children made once and its topics as
//! specified. (Its own test binary: every test here sees the outages.)

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use support::*;
use vigil_crds::Pipeline;
use vigil_e2e::{
    TestNamespace, install_crds, kafka, kube_client, restart_apiserver, restart_etcd, unique_name,
};

const BATCH: usize = 8;

async fn create_batch(api: &Api<Pipeline>, from: usize, prefix: &str) {
    for i in from..from + BATCH {
        create(api, &pipeline_yaml(&format!("p{i}"), &format!("{prefix}-{i}"), "")).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn real_k8s_the_operator_recovers_from_api_server_and_etcd_restarts_mid_reconcile() {
    let client = kube_client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "op-chaos").await.unwrap();
    let api: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let op = Operator::start(client.clone(), &ns.name);
    let prefix = unique_name("op-chaos");

    // The API server goes away while the first batch is being reconciled.
    create_batch(&api, 0, &prefix).await;
    tokio::task::spawn_blocking(|| restart_apiserver(Duration::from_secs(5))).await.unwrap().unwrap();
    // etcd goes away while the second batch is: the API server answers,
    // with errors and timeouts.
    create_batch(&api, BATCH, &prefix).await;
    tokio::task::spawn_blocking(|| restart_etcd(Duration::from_secs(5))).await.unwrap().unwrap();

    let started = Instant::now();
    let all = 2 * BATCH;
    eventually(Duration::from_secs(180), "every Pipeline's topics ready and status current", || async {
        let list = api.list(&ListParams::default()).await.ok()?;
        let done = list
            .items
            .iter()
            .filter(|p| {
                p.status.as_ref().is_some_and(|s| s.observed_generation == p.metadata.generation)
                    && condition(p, "TopicsReady").is_some_and(|c| c.0 == "True")
            })
            .count();
        (done == all).then_some(())
    })
    .await;
    eprintln!("converged {:?} after the outages", started.elapsed());
    assert!(op.is_running(), "the operator did not exit on the outages");

    // Children made once: one Deployment and one ConfigMap per Pipeline,
    // never rewritten (generation 1), and the topics as specified.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let managed = ListParams::default().labels("app.kubernetes.io/managed-by=vigil-operator");
    let ds = eventually(Duration::from_secs(60), "a runner Deployment per Pipeline", || async {
        let ds = deployments.list(&managed).await.ok()?.items;
        (ds.len() == all).then_some(ds)
    })
    .await;
    for d in &ds {
        assert_eq!(d.metadata.generation, Some(1), "{:?} was rewritten", d.metadata.name);
    }
    let cms = configmaps.list(&managed).await.unwrap().items;
    assert_eq!(
        cms.iter().filter(|c| c.metadata.name.as_deref().is_some_and(|n| n.ends_with("-pipeline"))).count(),
        all
    );
    for i in 0..all {
        assert_eq!(kafka::partitions(&format!("{prefix}-{i}-in")).unwrap(), Some(3), "input topic of p{i}");
        assert_eq!(kafka::partitions(&format!("{prefix}-{i}-out")).unwrap(), Some(2), "output topic of p{i}");
    }

    // And it still works: a spec change made now is applied.
    update_spec(&api, &pipeline_yaml("p0", &format!("{prefix}-0"), "  replicas: 2\n")).await;
    eventually(Duration::from_secs(60), "the change after the outages applied", || async {
        let d = deployments.get("p0-runner").await.ok()?;
        (d.spec?.replicas == Some(2)).then_some(())
    })
    .await;

    let mut topics = Vec::new();
    for i in 0..all {
        for s in ["in", "out", "dlq"] {
            topics.push(format!("{prefix}-{i}-{s}"));
        }
    }
    let _ = kafka::delete_topics(&topics.iter().map(String::as_str).collect::<Vec<_>>()).await;
    ns.cleanup().await.unwrap();
}
