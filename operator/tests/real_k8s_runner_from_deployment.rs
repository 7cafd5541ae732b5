//! The runner the operator deploys actually runs: the test plays the
//! kubelet, starting `vigil run` with the Deployment's container args and
//! env and the ConfigMap's content, then sends records through the topics
//! the operator created and reads scored records back.

mod support;

use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams};
use support::*;
use vigil_crds::Pipeline;
use vigil_e2e::{TestNamespace, install_crds, kafka, kube_client, unique_name};

#[tokio::test(flavor = "multi_thread")]
async fn real_k8s_the_deployed_runner_scores_records_from_the_operators_topics() {
    let client = kube_client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "op-runner").await.unwrap();
    let api: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let _op = Operator::start(client.clone(), &ns.name);
    let t = unique_name("op-runner");
    create(&api, &pipeline_yaml("r", &t, "")).await;
    wait_condition(&api, "r", "TopicsReady", "True", Duration::from_secs(60)).await;

    // What the kubelet would get: the pod template and the mounted ConfigMap.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let d = eventually(Duration::from_secs(30), "deployment", || async {
        deployments.get("r-runner").await.ok()
    })
    .await;
    let pod = d.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let config = cms.get("r-pipeline").await.unwrap().data.unwrap()["pipeline.yaml"].clone();
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("etc-vigil");
    std::fs::create_dir_all(&mount).unwrap();
    std::fs::write(mount.join("pipeline.yaml"), &config).unwrap();

    let port = free_port();
    let mut cmd = container_command(container, &ns.name, &[("/etc/vigil", mount.as_path())], port);
    let log = std::fs::File::create(dir.path().join("runner.log")).unwrap();
    let mut child = cmd.env("HOSTNAME", "r-runner-0").stdout(Stdio::null()).stderr(log).spawn().unwrap();

    let records: Vec<String> =
        (0..200).map(|i| format!(r#"{{"id": {i}, "host": "h{}", "cpu": {}}}"#, i % 4, 50 + i % 9)).collect();
    let pairs: Vec<(Option<&str>, &[u8])> = records.iter().map(|r| (Some("h"), r.as_bytes())).collect();
    kafka::produce(&format!("{t}-in"), &pairs).await.unwrap();
    let out = kafka::drain(&format!("{t}-out"), 200, Duration::from_secs(60), false).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.path().join("runner.log")).unwrap_or_default();
    assert_eq!(out.len(), 200, "scored records read back; runner log:\n{log}");
    let v: serde_json::Value = serde_json::from_slice(&out[0].value).unwrap();
    assert!(v["anomaly"]["score"].is_number() && v["id"].is_number(), "{v}");
    assert!(
        log.contains(&format!("vigil.{}.r", ns.name)),
        "the runner used the operator's consumer group:\n{log}"
    );

    api.delete("r", &DeleteParams::default()).await.unwrap();
    let _ = kafka::delete_topics(&[&format!("{t}-in"), &format!("{t}-out"), &format!("{t}-dlq")]).await;
    ns.cleanup().await.unwrap();
}
