//! Kafka goes away under the operator: status says so, nothing crashes,
//! retries back off, and the Pipeline recovers when Kafka returns; a
//! Pipeline deleted while Kafka is gone is released within the finalizer's
//! bound. A test binary of its own: it stops the shared broker.

mod support;

use std::time::{Duration, Instant};

use futures::FutureExt;
use kube::api::{Api, DeleteParams};
use support::*;
use vigil_crds::Pipeline;
use vigil_e2e::{TestNamespace, install_crds, kafka, kube_client, unique_name};

#[tokio::test(flavor = "multi_thread")]
async fn real_k8s_kafka_outage_is_reported_survived_and_recovered_and_deletion_is_never_stuck() {
    let client = kube_client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "op-outage").await.unwrap();
    let api: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let op = Operator::start(client.clone(), &ns.name);
    let t = unique_name("op-outage");
    let gone_t = format!("{t}g");
    create(&api, &pipeline_yaml("o", &t, "")).await;
    create(&api, &pipeline_yaml("gone", &gone_t, "  topicDeletionPolicy: Delete\n")).await;
    let _kubelet = keep_ready(client.clone(), ns.name.clone(), "o-runner".into());
    wait_condition(&api, "o", "Ready", "True", Duration::from_secs(60)).await;
    wait_condition(&api, "gone", "TopicsReady", "True", Duration::from_secs(60)).await;

    vigil_e2e::stop_kafka().unwrap();
    // Whatever happens while Kafka is down, it is started again before the
    // test reports, so later tests find it up.
    let result = std::panic::AssertUnwindSafe(async {
        // A spec change makes the operator talk to Kafka now.
        let changed =
            pipeline_yaml("o", &t, "").replace("features: [cpu]}", "features: [cpu], threshold: 0.99}");
        update_spec(&api, &changed).await;
        let p = wait_condition(&api, "o", "TopicsReady", "False", Duration::from_secs(60)).await;
        let (_, reason, _) = condition(&p, "TopicsReady").unwrap();
        assert_eq!(reason, "KafkaUnavailable");
        assert_eq!(condition(&p, "Ready").unwrap().0, "False");
        assert!(op.is_running(), "the operator did not crash");

        // Deleting a Pipeline whose topics cannot be deleted must not hang.
        let started = Instant::now();
        api.delete("gone", &DeleteParams::default()).await.unwrap();
        eventually(Duration::from_secs(150), "the finalizer to let go", || async {
            api.get_opt("gone").await.ok()?.is_none().then_some(())
        })
        .await;
        println!("finalizer released after {:?} with Kafka down", started.elapsed());
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns.name);
        let reasons: Vec<String> = events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect();
        assert!(reasons.iter().any(|r| r == "TopicDeletionAbandoned"), "{reasons:?}");
    })
    .catch_unwind()
    .await;
    vigil_e2e::start_kafka().unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }

    // Back off, then recover without any change to the spec.
    wait_condition(&api, "o", "Ready", "True", Duration::from_secs(120)).await;
    let failures = reqwest_metrics(op.port).await;
    assert!(
        failures.contains(
            "vigil_operator_reconcile_failures_total{kind=\"Pipeline\",error=\"KafkaUnavailable\"}"
        ),
        "{failures}"
    );

    api.delete("o", &DeleteParams::default()).await.unwrap();
    let _ = kafka::delete_topics(&[
        &format!("{t}-in"),
        &format!("{t}-out"),
        &format!("{t}-dlq"),
        &format!("{gone_t}-in"),
        &format!("{gone_t}-out"),
        &format!("{gone_t}-dlq"),
    ])
    .await;
    ns.cleanup().await.unwrap();
}

/// The operator's /metrics text.
async fn reqwest_metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await.unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}
