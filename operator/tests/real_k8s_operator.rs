//! The operator against the real API server and the real broker of the e2e
//! harness. Each test runs its own operator, watching only its own
//! namespace, with topics named after the test.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
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

fn owned_by(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, p: &Pipeline) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.kind == "Pipeline" && Some(&o.uid) == p.meta().uid.as_ref())
}

#[tokio::test(flavor = "multi_thread")]
async fn real_k8s_a_pipeline_gets_its_topics_and_children_and_becomes_ready() {
    let (client, ns, api, _op, t) = setup("op-apply").await;
    let started = Instant::now();
    let p = create(&api, &pipeline_yaml("cpu", &t, "  storage: {size: 1Gi}\n")).await;

    // Topics exist in Kafka as declared.
    let in_topic = format!("{t}-in");
    eventually(Duration::from_secs(30), "topics", || async {
        (kafka::partitions(&format!("{t}-dlq")).ok()?? == 1).then_some(())
    })
    .await;
    assert_eq!(kafka::partitions(&in_topic).unwrap(), Some(3));
    assert_eq!(kafka::partitions(&format!("{t}-out")).unwrap(), Some(2));
    let cfg = kafka::topic_config(&in_topic).await.unwrap();
    assert_eq!(cfg.get("retention.ms").map(String::as_str), Some("3600000"));

    // Children exist with a controller owner reference.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let d = eventually(Duration::from_secs(30), "deployment", || async {
        deployments.get("cpu-runner").await.ok()
    })
    .await;
    assert!(owned_by(&d.metadata, &p));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    for name in ["cpu-pipeline", "cpu-dashboard", "cpu-loki-rules"] {
        let cm = cms.get(name).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(owned_by(&cm.metadata, &p), "{name}");
    }
    let svc: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    assert!(owned_by(&svc.get("cpu-runner").await.unwrap().metadata, &p));
    // With spec.storage, the history component: its StatefulSet (a claim
    // template of its own) and two Services.
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    let sts = eventually(Duration::from_secs(30), "history StatefulSet", || async {
        sets.get("cpu-history").await.ok()
    })
    .await;
    assert!(owned_by(&sts.metadata, &p));
    for name in ["cpu-history", "cpu-api"] {
        assert!(owned_by(&svc.get(name).await.unwrap().metadata, &p), "{name}");
    }

    // A Deployment that exists is not ready runners.
    let before = wait_condition(&api, "cpu", "TopicsReady", "True", Duration::from_secs(30)).await;
    assert_eq!(condition(&before, "RunnersReady").unwrap().0, "False");
    assert_eq!(condition(&before, "Ready").unwrap().0, "False");

    mark_ready(&client, &ns.name, "cpu-runner").await;
    let ready = wait_condition(&api, "cpu", "Ready", "True", Duration::from_secs(30)).await;
    println!("apply -> Ready (with the Deployment marked ready by the test): {:?}", started.elapsed());
    let status = ready.status.clone().unwrap();
    // No kubelet runs the history pod here: reported as starting, which
    // does not hold up Ready (records flow without it).
    let (st, reason, _) = condition(&ready, "HistoryReady").expect("a HistoryReady condition");
    assert_eq!((st.as_str(), reason.as_str()), ("False", "HistoryStarting"));
    assert_eq!(status.phase, Some(vigil_crds::pipeline::PipelinePhase::Running));
    assert_eq!(status.ready_replicas, Some(1));
    assert_eq!(status.topics.len(), 3);
    assert!(status.topics.iter().all(|t| t.state == "Ready"), "{:?}", status.topics);

    // Events were recorded for the transitions (published just after the
    // status write the test saw).
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns.name);
    eventually(Duration::from_secs(10), "a Ready Event", || async {
        let reasons: Vec<String> =
            events.list(&Default::default()).await.ok()?.items.into_iter().filter_map(|e| e.reason).collect();
        reasons.iter().any(|r| r == "Ready").then_some(())
    })
    .await;

    // Without spec.storage, the history component goes.
    let remove = serde_json::json!({"spec": {"storage": null}});
    api.patch("cpu", &PatchParams::default(), &Patch::Merge(&remove)).await.unwrap();
    eventually(Duration::from_secs(30), "the history StatefulSet deleted", || async {
        sets.get_opt("cpu-history").await.ok()?.is_none().then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "the history Services deleted", || async {
        (svc.get_opt("cpu-api").await.ok()?.is_none() && svc.get_opt("cpu-history").await.ok()?.is_none())
            .then_some(())
    })
    .await;
    assert!(svc.get("cpu-runner").await.is_ok(), "the runner Service stays");

    api.delete("cpu", &DeleteParams::default()).await.unwrap();
    let _ = kafka::delete_topics(&[&in_topic, &format!("{t}-out"), &format!("{t}-dlq")]).await;
    ns.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn real_k8s_spec_changes_roll_the_runners_grow_topics_and_refuse_to_shrink_them() {
    let (client, ns, api, _op, t) = setup("op-change").await;
    create(&api, &pipeline_yaml("p", &t, "")).await;
    let _kubelet = keep_ready(client.clone(), ns.name.clone(), "p-runner".into());
    let ready = wait_condition(&api, "p", "Ready", "True", Duration::from_secs(60)).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let hash = |d: &Deployment| {
        d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()["vigil.dev/config-hash"]
            .clone()
    };
    let before = hash(&deployments.get("p-runner").await.unwrap());
    assert_eq!(ready.status.as_ref().unwrap().config_hash.as_deref(), Some(before.as_str()));

    // A detector change rolls the runners: the pod template's hash changes.
    let changed = pipeline_yaml("p", &t, "").replace("features: [cpu]}", "features: [cpu], threshold: 0.97}");
    update_spec(&api, &changed).await;
    eventually(Duration::from_secs(30), "a new config hash", || async {
        let h = hash(&deployments.get("p-runner").await.ok()?);
        (h != before).then_some(())
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    assert!(cms.get("p-pipeline").await.unwrap().data.unwrap()["pipeline.yaml"].contains("threshold: 0.97"));

    // Growing partitions grows the topic.
    let grown = changed.replace("partitions: 3", "partitions: 5");
    update_spec(&api, &grown).await;
    eventually(Duration::from_secs(30), "input grown to 5", || async {
        (kafka::partitions(&format!("{t}-in")).ok()?? == 5).then_some(())
    })
    .await;

    // Shrinking is refused with a condition, and the topic keeps 5.
    update_spec(&api, &grown.replace("partitions: 5", "partitions: 2")).await;
    let p = wait_condition(&api, "p", "TopicsReady", "False", Duration::from_secs(30)).await;
    let (_, reason, message) = condition(&p, "TopicsReady").unwrap();
    assert_eq!(reason, "PartitionDecreaseNotSupported");
    assert!(message.contains("has 5 partitions"), "{message}");
    assert_eq!(condition(&p, "Ready").unwrap().0, "False");
    assert_eq!(kafka::partitions(&format!("{t}-in")).unwrap(), Some(5));

    api.delete("p", &DeleteParams::default()).await.unwrap();
    let _ = kafka::delete_topics(&[&format!("{t}-in"), &format!("{t}-out"), &format!("{t}-dlq")]).await;
    ns.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn real_k8s_drift_in_children_and_topic_config_is_corrected() {
    let (client, ns, api, _op, t) = setup("op-drift").await;
    create(&api, &pipeline_yaml("d", &t, "")).await;
    let _kubelet = keep_ready(client.clone(), ns.name.clone(), "d-runner".into());
    wait_condition(&api, "d", "Ready", "True", Duration::from_secs(60)).await;

    // Someone scales the runners by hand and edits the config.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    deployments
        .patch(
            "d-runner",
            &PatchParams::apply("someone").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 7}
            })),
        )
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    cms.patch(
        "d-pipeline",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"pipeline.yaml": "hacked"}})),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(30), "replicas and config restored", || async {
        let d = deployments.get("d-runner").await.ok()?;
        let cm = cms.get("d-pipeline").await.ok()?;
        (d.spec?.replicas == Some(1) && cm.data?["pipeline.yaml"] != "hacked").then_some(())
    })
    .await;

    // The operator does not re-apply children it applied and nobody changed
    // since; one that someone deletes, or edits again, is still restored.
    cms.delete("d-dashboard", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(30), "the dashboard ConfigMap recreated", || async {
        cms.get_opt("d-dashboard").await.ok()?.map(|_| ())
    })
    .await;
    cms.patch(
        "d-pipeline",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"pipeline.yaml": "hacked again"}})),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(30), "config restored a second time", || async {
        let cm = cms.get("d-pipeline").await.ok()?;
        (cm.data?["pipeline.yaml"] != "hacked again").then_some(())
    })
    .await;

    // Someone changes the input topic's retention in Kafka.
    let admin = vigil_e2e::kafka::admin().unwrap();
    let in_topic = format!("{t}-in");
    let alter = rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic(&in_topic))
        .set("retention.ms", "1000");
    admin.alter_configs(&[alter], &rdkafka::admin::AdminOptions::new()).await.unwrap();
    eventually(Duration::from_secs(30), "retention.ms restored", || async {
        let c = kafka::topic_config(&format!("{t}-in")).await.ok()?;
        (c.get("retention.ms").map(String::as_str) == Some("3600000")).then_some(())
    })
    .await;

    api.delete("d", &DeleteParams::default()).await.unwrap();
    let _ = kafka::delete_topics(&[&format!("{t}-in"), &format!("{t}-out"), &format!("{t}-dlq")]).await;
    ns.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn real_k8s_pause_scales_to_zero_and_resume_restores() {
    let (client, ns, api, _op, t) = setup("op-pause").await;
    let yaml = pipeline_yaml("z", &t, "  replicas: 2\n");
    create(&api, &yaml).await;
    let _kubelet = keep_ready(client.clone(), ns.name.clone(), "z-runner".into());
    wait_condition(&api, "z", "Ready", "True", Duration::from_secs(60)).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert_eq!(deployments.get("z-runner").await.unwrap().spec.unwrap().replicas, Some(2));

    update_spec(&api, &format!("{yaml}  lifecycle: Paused\n")).await;
    let paused = eventually(Duration::from_secs(30), "paused", || async {
        let p = api.get("z").await.ok()?;
        (p.status.as_ref()?.phase == Some(vigil_crds::pipeline::PipelinePhase::Paused)).then_some(p)
    })
    .await;
    assert_eq!(deployments.get("z-runner").await.unwrap().spec.unwrap().replicas, Some(0));
    assert_eq!(condition(&paused, "Ready").unwrap().1, "Paused");
    assert_eq!(kafka::partitions(&format!("{t}-in")).unwrap(), Some(3), "topics kept while paused");

    update_spec(&api, &yaml).await;
    eventually(Duration::from_secs(30), "resumed", || async {
        let d = deployments.get("z-runner").await.ok()?;
        let p = api.get("z").await.ok()?;
        (d.spec?.replicas == Some(2) && p.status?.phase == Some(vigil_crds::pipeline::PipelinePhase::Running))
            .then_some(())
    })
    .await;

    api.delete("z", &DeleteParams::default()).await.unwrap();
    let _ = kafka::delete_topics(&[&format!("{t}-in"), &format!("{t}-out"), &format!("{t}-dlq")]).await;
    ns.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn real_k8s_deletion_retains_or_deletes_topics_as_the_policy_says() {
    let (_client, ns, api, _op, t) = setup("op-delete").await;
    let retain_t = format!("{t}r");
    let delete_t = format!("{t}d");
    create(&api, &pipeline_yaml("keep", &retain_t, "")).await;
    create(&api, &pipeline_yaml("drop", &delete_t, "  topicDeletionPolicy: Delete\n")).await;
    for (name, prefix) in [("keep", &retain_t), ("drop", &delete_t)] {
        wait_condition(&api, name, "TopicsReady", "True", Duration::from_secs(60)).await;
        assert_eq!(kafka::partitions(&format!("{prefix}-in")).unwrap(), Some(3));
        let p = api.get(name).await.unwrap();
        assert!(p.finalizers().iter().any(|f| f == "vigil.dev/topics"), "{name} has the finalizer");
    }
    api.delete("keep", &DeleteParams::default()).await.unwrap();
    api.delete("drop", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(30), "both pipelines gone", || async {
        (api.get_opt("keep").await.ok()?.is_none() && api.get_opt("drop").await.ok()?.is_none()).then_some(())
    })
    .await;
    for suffix in ["in", "out", "dlq"] {
        assert!(
            kafka::partitions(&format!("{retain_t}-{suffix}")).unwrap().is_some(),
            "Retain kept {suffix}"
        );
    }
    eventually(Duration::from_secs(30), "Delete removed the topics", || async {
        let gone = ["in", "out", "dlq"]
            .iter()
            .all(|s| kafka::partitions(&format!("{delete_t}-{s}")).ok().flatten().is_none());
        gone.then_some(())
    })
    .await;
    let _ = kafka::delete_topics(&[
        &format!("{retain_t}-in"),
        &format!("{retain_t}-out"),
        &format!("{retain_t}-dlq"),
    ])
    .await;
    ns.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn real_k8s_an_invalid_spec_is_reported_and_waits_for_a_change() {
    let (_client, ns, api, _op, t) = setup("op-invalid").await;
    // Admission accepts this (the schema cannot follow fields through
    // transforms); the operator refuses it with the field named.
    let yaml = pipeline_yaml("bad", &t, "").replace(
        "    - filter: {expr: \"cpu >= 0.0\"}",
        "    - filter: {expr: \"cpu >= 0.0\"}\n    - rename: {fields: {cpu: cpu_pct}}",
    );
    create(&api, &yaml).await;
    let p = wait_condition(&api, "bad", "Ready", "False", Duration::from_secs(30)).await;
    let (_, reason, message) = condition(&p, "Ready").unwrap();
    assert_eq!(reason, "InvalidSpec");
    assert!(message.contains("spec.detector.features[0]"), "{message}");
    assert_eq!(p.status.unwrap().phase, Some(vigil_crds::pipeline::PipelinePhase::Failed));
    assert_eq!(
        kafka::partitions(&format!("{t}-in")).unwrap(),
        None,
        "nothing provisioned for an invalid spec"
    );
    api.delete("bad", &DeleteParams::default()).await.unwrap();
    ns.cleanup().await.unwrap();
}

/// Commit `offsets` (partition -> next offset to read) for `group` on `topic`,
/// as a runner of that group would.
fn commit(group: &str, topic: &str, offsets: &[(i32, i64)]) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let mut c = kafka::config();
    c.set("group.id", group).set("enable.auto.commit", "false");
    let consumer: BaseConsumer = c.create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for &(p, o) in offsets {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(o)).unwrap();
    }
    consumer.commit(&tpl, CommitMode::Sync).unwrap();
}

fn high_watermark(topic: &str, partition: i32) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = kafka::config().create().unwrap();
    consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)).unwrap().1
}

#[tokio::test(flavor = "multi_thread")]
async fn real_kafka_the_offsets_reader_follows_commits_and_deletions() {
    use vigil_operator::offsets::OffsetsReader;
    let topic = unique_name("offsets-reader");
    kafka::create_topic(&topic, 2, &[]).await.unwrap();
    let group = format!("{}{topic}", Pipeline::CONSUMER_GROUP_PREFIX);
    let other_group = format!("not-vigil-{topic}");
    // Commits made before the reader starts are read back from the topic.
    commit(&group, &topic, &[(0, 7)]);
    commit(&other_group, &topic, &[(0, 9)]);

    let reader =
        OffsetsReader::start(&kafka::config(), Pipeline::CONSUMER_GROUP_PREFIX, Default::default()).unwrap();
    let first = eventually(Duration::from_secs(30), "the reader to catch up", || async {
        reader.committed(&group, &topic, 2)
    })
    .await;
    assert_eq!(first, vec![Some(7), None], "failed: {:?}", reader.failed());
    // Groups outside Vigil's prefix are not kept.
    assert_eq!(reader.committed(&other_group, &topic, 1), Some(vec![None]));

    // Later commits arrive while it runs.
    commit(&group, &topic, &[(0, 12), (1, 3)]);
    eventually(Duration::from_secs(30), "the new commits", || async {
        (reader.committed(&group, &topic, 2)? == vec![Some(12), Some(3)]).then_some(())
    })
    .await;

    // A deleted group's offsets go too (the coordinator writes tombstones).
    kafka::admin()
        .unwrap()
        .delete_groups(&[&group], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap()
        .into_iter()
        .for_each(|r| {
            r.unwrap();
        });
    eventually(Duration::from_secs(30), "the deletion", || async {
        (reader.committed(&group, &topic, 2)? == vec![None, None]).then_some(())
    })
    .await;
    let _ = kafka::delete_topics(&[&topic]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn real_k8s_status_reports_the_consumer_lag_the_broker_has() {
    let (client, ns, api, _op, t) = setup("op-lag").await;
    create(&api, &pipeline_yaml("p", &t, "")).await;
    let ready = keep_ready(client.clone(), ns.name.clone(), "p-runner".into());
    wait_condition(&api, "p", "Ready", "True", Duration::from_secs(60)).await;
    let lag = |want: i64| {
        let api = api.clone();
        async move {
            eventually(Duration::from_secs(60), &format!("status.consumerLag = {want}"), || async {
                let p = api.get("p").await.ok()?;
                (p.status?.consumer_lag? == want).then_some(())
            })
            .await
        }
    };
    lag(0).await;

    // Nothing committed yet: every record produced is lag.
    let in_topic = format!("{t}-in");
    let body = br#"{"host": "a", "cpu": 0.5}"#;
    let keys: Vec<String> = (0..30).map(|i| format!("host-{i}")).collect();
    let records: Vec<(Option<&str>, &[u8])> = keys.iter().map(|k| (Some(k.as_str()), &body[..])).collect();
    kafka::produce(&in_topic, &records).await.unwrap();
    lag(30).await;

    // The runners' group commits all of partitions 1 and 2: partition 0 is
    // the lag left.
    let group = Pipeline::consumer_group(&ns.name, "p");
    let (h0, h1, h2) =
        (high_watermark(&in_topic, 0), high_watermark(&in_topic, 1), high_watermark(&in_topic, 2));
    assert_eq!(h0 + h1 + h2, 30);
    commit(&group, &in_topic, &[(1, h1), (2, h2)]);
    lag(h0).await;
    commit(&group, &in_topic, &[(0, h0)]);
    lag(0).await;

    ready.abort();
    api.delete("p", &DeleteParams::default()).await.unwrap();
    let _ = kafka::delete_topics(&[&in_topic, &format!("{t}-out"), &format!("{t}-dlq")]).await;
    ns.cleanup().await.unwrap();
}
