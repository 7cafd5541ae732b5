//! A Pipeline on a secured cluster (the harness broker's SASL_SSL listener:
//! SCRAM-SHA-512 over TLS, ACLs enforced) through `spec.kafka.secretRef`:
//! the operator names what Kafka refuses (a wrong password, a missing ACL)
//! in the Pipeline's conditions, and a fixed or rotated Secret is applied
//! without anyone restarting anything: the Secret's watch reconciles, and
//! the runners' pod template changes so they roll onto the new Secret.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use support::*;
use vigil_crds::Pipeline;
use vigil_e2e::kafka::{scram_secret, secure, security_admin};
use vigil_e2e::{TestNamespace, install_crds, kafka, kube_client, unique_name};
use vigil_operator::pipeline::children::CONFIG_HASH;

fn secret(name: &str, data: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
        string_data: Some(data),
        ..Secret::default()
    }
}

async fn set_password(secrets: &Api<Secret>, name: &str, password: &str) {
    let patch = serde_json::json!({"stringData": {"sasl.password": password}});
    secrets.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

async fn runner_hash(deployments: &Api<Deployment>, name: &str) -> Option<String> {
    let d = deployments.get_opt(name).await.ok()??;
    d.spec?.template.metadata?.annotations?.get(CONFIG_HASH).cloned()
}

#[tokio::test(flavor = "multi_thread")]
async fn real_k8s_kafka_refusals_are_named_and_a_rotated_secret_is_applied_without_restarts() {
    let client = kube_client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "op-sec").await.unwrap();
    let api: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let _op = Operator::start(client.clone(), &ns.name);
    let sec = secure();

    // A user allowed everything on topics named after the test, nothing else.
    let t = unique_name("op-sec");
    let user = unique_name("op-user");
    security_admin(&["scram", &user, "first", ",", "allow", &user, "topic", "prefixed", &t, "all"]).unwrap();
    let kafka_spec =
        format!("  kafka: {{bootstrapServers: \"{}\", secretRef: {{name: kafka-creds}}}}\n", sec.bootstrap);

    // A wrong password: named as such, with what to check.
    secrets
        .create(&PostParams::default(), &secret("kafka-creds", scram_secret(&user, "wrong", &sec.ca_pem)))
        .await
        .unwrap();
    create(&api, &pipeline_yaml("s", &t, &kafka_spec)).await;
    let p = wait_condition(&api, "s", "TopicsReady", "False", Duration::from_secs(60)).await;
    let (_, reason, message) = condition(&p, "TopicsReady").unwrap();
    let p = if reason == "KafkaAuthenticationFailed" {
        p
    } else {
        eventually(Duration::from_secs(60), "TopicsReady reason KafkaAuthenticationFailed", || async {
            let p = api.get("s").await.ok()?;
            condition(&p, "TopicsReady").is_some_and(|c| c.1 == "KafkaAuthenticationFailed").then_some(p)
        })
        .await
    };
    let (_, _, message_now) = condition(&p, "TopicsReady").unwrap();
    assert!(message_now.contains("Authentication failed"), "{message_now} (first: {reason}: {message})");
    assert!(message_now.contains("sasl.password"), "says what to check: {message_now}");
    assert!(
        deployments.get_opt("s-runner").await.unwrap().is_none(),
        "no runner before the topics are checked"
    );

    // The Secret is fixed: the operator applies it, no restart needed.
    set_password(&secrets, "kafka-creds", "first").await;
    wait_condition(&api, "s", "TopicsReady", "True", Duration::from_secs(90)).await;
    let first = eventually(Duration::from_secs(30), "the runner Deployment", || {
        runner_hash(&deployments, "s-runner")
    })
    .await;

    // Rotation: the password changes on the broker, then in the Secret. The
    // runners' pod template changes (they roll onto the new Secret), and
    // the operator keeps working with the new password.
    security_admin(&["scram", &user, "second"]).unwrap();
    set_password(&secrets, "kafka-creds", "second").await;
    // Within seconds: the Secret's watch, not the periodic full resync.
    let second = eventually(Duration::from_secs(10), "the runners' pod template to change", || async {
        runner_hash(&deployments, "s-runner").await.filter(|h| *h != first)
    })
    .await;
    let p = eventually(Duration::from_secs(30), "status.configHash to follow", || async {
        let p = api.get("s").await.ok()?;
        (p.status.as_ref()?.config_hash.as_deref() == Some(second.as_str())).then_some(p)
    })
    .await;
    assert_eq!(condition(&p, "TopicsReady").unwrap().0, "True", "{:?}", condition(&p, "TopicsReady"));

    // A missing ACL: topics outside the user's prefix. The condition names
    // the operation and the topic.
    let other = unique_name("op-noacl");
    create(&api, &pipeline_yaml("other", &other, &kafka_spec)).await;
    let p = eventually(Duration::from_secs(60), "TopicsReady reason KafkaNotAuthorized", || async {
        let p = api.get("other").await.ok()?;
        condition(&p, "TopicsReady").is_some_and(|c| c.1 == "KafkaNotAuthorized").then_some(p)
    })
    .await;
    let (status, _, message) = condition(&p, "TopicsReady").unwrap();
    assert_eq!(status, "False");
    assert!(message.contains(&format!("lacks ACL Create on topic {other}-")), "{message}");

    // A certificate the client does not trust (the Secret's ca.crt is
    // another CA: the harness's Kubernetes CA).
    let other_ca =
        std::fs::read_to_string(vigil_e2e::kubeconfig().parent().unwrap().join("pki/ca.crt")).unwrap();
    secrets
        .create(&PostParams::default(), &secret("kafka-wrong-ca", scram_secret(&user, "second", &other_ca)))
        .await
        .unwrap();
    let tls = unique_name("op-tls");
    let wrong_ca = format!(
        "  kafka: {{bootstrapServers: \"{}\", secretRef: {{name: kafka-wrong-ca}}}}\n",
        sec.bootstrap
    );
    create(&api, &pipeline_yaml("tls", &tls, &wrong_ca)).await;
    let p = eventually(Duration::from_secs(60), "TopicsReady reason KafkaTLSFailed", || async {
        let p = api.get("tls").await.ok()?;
        condition(&p, "TopicsReady").is_some_and(|c| c.1 == "KafkaTLSFailed").then_some(p)
    })
    .await;
    let (_, _, message) = condition(&p, "TopicsReady").unwrap();
    assert!(message.contains("ca.crt"), "says what to check: {message}");

    let _ = security_admin(&["revoke", &user]);
    let _ = kafka::delete_topics(&[&format!("{t}-in"), &format!("{t}-out"), &format!("{t}-dlq")]).await;
    ns.cleanup().await.unwrap();
}
