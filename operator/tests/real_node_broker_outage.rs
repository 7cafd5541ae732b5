//! The broker stops while runner pods run on the real node: the Pipeline's
//! conditions go False with a reason, the pods stay up (no crash loop), and
//! everything recovers when the broker returns. A test binary of its own:
//! every other test would see the outage.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use support::condition;
use vigil_crds::Pipeline;
use vigil_e2e::node::{diagnostics, install_vigil};
use vigil_e2e::{TestNamespace, kafka, kube_client, kubectl, unique_name};

async fn restarts(pods: &Api<Pod>) -> HashMap<String, i32> {
    let list = pods.list(&ListParams::default().labels("app.kubernetes.io/component=runner")).await.unwrap();
    list.items
        .iter()
        .map(|p| {
            let n = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map_or(0, |c| c.iter().map(|c| c.restart_count).sum());
            (p.metadata.name.clone().unwrap(), n)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn real_node_a_broker_outage_is_reported_without_a_crash_loop_and_recovers() {
    install_vigil();
    let client = kube_client().await.unwrap();
    let ns = TestNamespace::create(&client, "node-outage").await.unwrap();
    let t = unique_name("outage");
    let yaml = format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {{name: o}}
spec:
  input: {{topic: {{name: {t}-in, partitions: 2}}, keyField: host}}
  detector: {{algorithm: robustZ, features: [cpu]}}
  output: {{name: {t}-out}}
  deadLetter: {{name: {t}-dlq}}
  replicas: 2
  topicDeletionPolicy: Delete
  resources: {{requests: {{cpu: 10m, memory: 32Mi}}, limits: {{memory: 256Mi}}}}
"#
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("o.yaml"), &yaml).unwrap();
    let out = kubectl(&["apply", "-n", &ns.name, "-f", dir.path().join("o.yaml").to_str().unwrap()]);
    assert!(out.status.success());
    let api: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let wait = |status: &'static str, timeout: Duration| {
        let api = api.clone();
        let ns = ns.name.clone();
        async move {
            let deadline = Instant::now() + timeout;
            loop {
                if let Ok(p) = api.get("o").await {
                    if condition(&p, "Ready").is_some_and(|c| c.0 == status) {
                        return p;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "Ready={status} not within {timeout:?}\n{}",
                    diagnostics(&ns)
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    wait("True", Duration::from_secs(120)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let before = restarts(&pods).await;
    assert_eq!(before.len(), 2);

    vigil_e2e::stop_kafka().unwrap();
    let down = wait("False", Duration::from_secs(90)).await;
    let (_, reason, message) = condition(&down, "Ready").unwrap();
    assert_eq!(reason, "KafkaUnavailable", "{message}");
    // Some time without a broker: the runners wait, they do not crash.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let during = restarts(&pods).await;
    vigil_e2e::start_kafka().unwrap();
    assert_eq!(during, before, "no runner restarted during the outage\n{}", diagnostics(&ns.name));

    wait("True", Duration::from_secs(180)).await;
    let records: Vec<String> =
        (0..50).map(|i| format!(r#"{{"id": {i}, "host": "h{}", "cpu": 50.0}}"#, i % 3)).collect();
    let pairs: Vec<(Option<&str>, &[u8])> = records.iter().map(|r| (None, r.as_bytes())).collect();
    kafka::produce(&format!("{t}-in"), &pairs).await.unwrap();
    let out = kafka::drain(&format!("{t}-out"), 50, Duration::from_secs(120), false).unwrap();
    assert_eq!(out.len(), 50, "records flow again after the outage\n{}", diagnostics(&ns.name));
    assert_eq!(restarts(&pods).await, before, "still no restart");
    api.delete("o", &DeleteParams::default()).await.unwrap();
    ns.cleanup().await.unwrap();
}
