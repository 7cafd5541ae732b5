//! Runner pods on the real node on a secured cluster: the broker's SASL_SSL
//! listener (SCRAM-SHA-512 over TLS, the harness's CA given as `ca.crt` in
//! the Pipeline's Secret, ACLs enforced), with only the ACLs a Pipeline
//! needs. The password is rotated while the Pipeline runs: the runners roll
//! onto the new Secret by themselves and no record is lost.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use vigil_crds::Pipeline;
use vigil_e2e::kafka::{scram_secret, secure, security_admin};
use vigil_e2e::node::{install_vigil, node, wait_for};
use vigil_e2e::{TestNamespace, kafka, kube_client, kubectl, unique_name};

/// The ids in `topic`, read until all of `0..want` are there or 2 minutes pass.
fn ids_in(topic: &str, want: u64) -> HashSet<u64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = kafka::drain(topic, usize::MAX, Duration::from_secs(5), false).unwrap();
        let ids: HashSet<u64> = got
            .iter()
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.value).ok()?["id"].as_u64())
            .collect();
        if (0..want).all(|i| ids.contains(&i)) || Instant::now() > deadline {
            return ids;
        }
    }
}

async fn produce_ids(topic: &str, ids: std::ops::Range<u64>) {
    let values: Vec<(String, Vec<u8>)> = ids
        .map(|i| {
            (
                format!("h{}", i % 3),
                format!(r#"{{"id": {i}, "host": "h{}", "cpu": 40.5}}"#, i % 3).into_bytes(),
            )
        })
        .collect();
    let records: Vec<(Option<&str>, &[u8])> =
        values.iter().map(|(k, v)| (Some(k.as_str()), v.as_slice())).collect();
    kafka::produce(topic, &records).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn real_node_a_pipeline_on_a_secured_cluster_keeps_every_record_through_a_password_rotation() {
    let node = node();
    install_vigil();
    let client = kube_client().await.unwrap();
    let ns = TestNamespace::create(&client, "node-sec").await.unwrap();
    let sec = secure();
    let t = unique_name("node-sec");
    let user = unique_name("node-user");
    let group = Pipeline::consumer_group(&ns.name, "secure");
    // The operator manages the topics (everything on the test's prefix);
    // the runners read as the Pipeline's consumer group.
    #[rustfmt::skip]
    security_admin(&[
        "scram", &user, "first", ",",
        "allow", &user, "topic", "prefixed", &t, "all", ",",
        "allow", &user, "group", "literal", &group, "read",
    ])
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some("kafka-creds".into()), ..Default::default() },
        string_data: Some(scram_secret(&user, "first", &sec.ca_pem)),
        ..Secret::default()
    };
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let manifest = format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {{name: secure}}
spec:
  kafka: {{bootstrapServers: "{}", secretRef: {{name: kafka-creds}}}}
  input: {{topic: {{name: {t}-in, partitions: 2}}, keyField: host}}
  detector: {{algorithm: robustZ, features: [cpu]}}
  output: {{name: {t}-out, partitions: 2}}
  deadLetter: {{name: {t}-dlq}}
  topicDeletionPolicy: Delete
  resources: {{requests: {{cpu: 10m, memory: 32Mi}}, limits: {{memory: 256Mi}}}}
"#,
        node.kafka_secure_bootstrap
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), &manifest).unwrap();
    let out = kubectl(&["apply", "-n", &ns.name, "-f", dir.path().join("p.yaml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let api: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let ready = || async {
        let p = api.get("secure").await.ok()?;
        let s = p.status.as_ref()?;
        (s.observed_generation == p.metadata.generation
            && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        .then_some(p)
    };
    wait_for("the Pipeline Ready over SASL_SSL", &ns.name, Duration::from_secs(180), ready).await;
    produce_ids(&format!("{t}-in"), 0..300).await;
    let first = ids_in(&format!("{t}-out"), 300);
    assert_eq!(first.len(), 300, "every record scored by the runner pod over SASL_SSL");

    // Rotation: the broker takes only the new password from now on; then
    // the Secret changes. Nobody restarts anything.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let hash = |d: Deployment| d.spec?.template.metadata?.annotations?.get("vigil.dev/config-hash").cloned();
    let before = hash(deployments.get("secure-runner").await.unwrap()).unwrap();
    security_admin(&["scram", &user, "second"]).unwrap();
    let patch = serde_json::json!({"stringData": {"sasl.password": "second"}});
    secrets.patch("kafka-creds", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    produce_ids(&format!("{t}-in"), 300..600).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    wait_for(
        "the runners rolled onto the new Secret and ready",
        &ns.name,
        Duration::from_secs(180),
        || async {
            let d = deployments.get("secure-runner").await.ok()?;
            let now = hash(d.clone())?;
            let s = d.status?;
            let rolled = now != before
                && s.updated_replicas == Some(1)
                && s.ready_replicas == Some(1)
                && s.replicas == Some(1);
            rolled.then_some(())
        },
    )
    .await;
    wait_for("the Pipeline Ready again", &ns.name, Duration::from_secs(120), ready).await;
    let all = ids_in(&format!("{t}-out"), 600);
    let missing: Vec<u64> = (0..600).filter(|i| !all.contains(i)).collect();
    assert!(missing.is_empty(), "records lost across the rotation: {missing:?}");
    let runner_pods = pods
        .list(&ListParams::default().labels("vigil.dev/pipeline=secure,app.kubernetes.io/component=runner"))
        .await
        .unwrap();
    for p in &runner_pods.items {
        let restarts: i32 = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).sum())
            .unwrap_or(0);
        assert_eq!(restarts, 0, "the new runner did not crash on its way up");
    }

    let _ = kubectl(&["delete", "pipeline", "secure", "-n", &ns.name, "--wait=true", "--timeout=60s"]);
    let _ = security_admin(&["revoke", &user]);
    ns.cleanup().await.unwrap();
}
