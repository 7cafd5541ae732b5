//! A Pipeline that scores with a trained Model, through the real broker:
//! `vigil train --publish` puts versions into the registry topic, `vigil
//! run` serves the serving version, switches to a new one while records
//! flow (no restart, no record lost or scored twice, every output saying
//! which version scored it), and back again when the pointer goes back
//! (a rollback). A pin on the Pipeline is never left.

mod support;

use std::time::{Duration, Instant};

use support::Runner;
use vigil_e2e::{kafka, unique_name};
use vigil_runner::run::kafka_config::KafkaSettings;

fn model(name: &str, clusters: u32) -> String {
    format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: Model
metadata: {{name: {name}}}
spec:
  algorithm: kMeans
  params: {{clusters: {clusters}, seed: 3}}
  features: [cpu, mem]
  training: {{file: /nonexistent.jsonl, format: json}}
"#
    )
}

fn pipeline(input: &str, output: &str, dlq: &str, model: &str, pin: Option<i64>) -> String {
    let pin = pin.map(|v| format!(", version: {v}")).unwrap_or_default();
    format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {{name: scored, namespace: tests}}
spec:
  input: {{topic: {{name: {input}}}, keyField: host}}
  detector: {{modelRef: {{name: {model}{pin}}}}}
  output: {{name: {output}}}
  deadLetter: {{name: {dlq}}}
  delivery: exactlyOnce
"#
    )
}

fn train(dir: &std::path::Path, manifest: &str, data: &std::path::Path, registry: &str, version: i64) {
    let file = dir.join(format!("model-{version}.yaml"));
    std::fs::write(&file, manifest).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["train", file.to_str().unwrap(), "--input", data.to_str().unwrap()])
        .args(["--output", dir.join("models").to_str().unwrap(), "--version", &version.to_string()])
        .args(["--publish", "--registry-topic", registry, "--namespace", "tests"])
        .env("VIGIL_KAFKA_BOOTSTRAP", vigil_e2e::kafka())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vigil train: {stderr}");
    assert!(stderr.contains(&format!("v{version} to the registry topic {registry}")), "{stderr}");
}

fn serve(registry: &str, model: &str, version: i64) {
    let settings = KafkaSettings { bootstrap: vigil_e2e::kafka().to_string(), ..KafkaSettings::default() };
    vigil_runner::models::registry::set_serving(&settings, registry, "tests", model, version).unwrap();
}

async fn produce(topic: &str, ids: std::ops::Range<u64>) {
    let records: Vec<String> = ids
        .map(|i| {
            format!(r#"{{"id": {i}, "host": "h{}", "cpu": {}, "mem": {}}}"#, i % 3, 40 + i % 7, 60 + i % 5)
        })
        .collect();
    let pairs: Vec<(Option<&str>, &[u8])> = records.iter().map(|r| (None, r.as_bytes())).collect();
    kafka::produce(topic, &pairs).await.unwrap();
}

/// The outputs so far, by id: the model versions that scored each.
fn outputs(topic: &str) -> Vec<(u64, i64)> {
    kafka::drain(topic, usize::MAX, Duration::from_secs(3), true)
        .unwrap()
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            (v["id"].as_u64().unwrap(), v["anomaly"]["modelVersion"].as_i64().unwrap())
        })
        .collect()
}

async fn wait_for(topic: &str, want: usize, what: &str) -> Vec<(u64, i64)> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = outputs(topic);
        if got.len() >= want {
            return got;
        }
        assert!(Instant::now() < deadline, "{what}: {} of {want} outputs", got.len());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn real_kafka_a_new_model_version_is_served_without_a_restart_or_a_lost_record() {
    let dir = tempfile::tempdir().unwrap();
    let base = unique_name("hot");
    let (input, output, dlq, registry) =
        (format!("{base}-in"), format!("{base}-out"), format!("{base}-dlq"), format!("{base}-models"));
    // One input partition: the order of outputs is the order of inputs.
    kafka::create_topic(&input, 1, &[]).await.unwrap();
    kafka::create_topic(&output, 1, &[]).await.unwrap();
    kafka::create_topic(&dlq, 1, &[]).await.unwrap();
    kafka::create_topic(&registry, 1, &[("cleanup.policy", "compact")]).await.unwrap();
    let data = dir.path().join("train.jsonl");
    let rows: String =
        (0..500).map(|i| format!("{{\"cpu\": {}, \"mem\": {}}}\n", 40 + i % 7, 60 + i % 5)).collect();
    std::fs::write(&data, rows).unwrap();

    let name = "usage";
    train(dir.path(), &model(name, 2), &data, &registry, 1);
    serve(&registry, name, 1);

    let runner = Runner::start_with(
        dir.path(),
        &pipeline(&input, &output, &dlq, name, None),
        &format!("{base}-g"),
        "r0",
        &["--model-registry", &registry],
    );
    runner.wait_ready(Duration::from_secs(60));
    assert_eq!(runner.metric("vigil_model_version"), Some(1.0), "{}", runner.log_text());
    produce(&input, 0..300).await;
    let first = wait_for(&output, 300, "v1").await;
    assert!(first.iter().all(|(_, v)| *v == 1));

    // Retrain: v2 is published and made the serving version while records
    // keep coming.
    train(dir.path(), &model(name, 3), &data, &registry, 2);
    let feeding = tokio::spawn({
        let input = input.clone();
        async move {
            for chunk in 0..20u64 {
                produce(&input, 300 + chunk * 50..300 + (chunk + 1) * 50).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let switched_at = Instant::now();
    serve(&registry, name, 2);
    let switch_took = loop {
        if runner.metric("vigil_model_version") == Some(2.0) {
            break switched_at.elapsed();
        }
        assert!(switched_at.elapsed() < Duration::from_secs(60), "v2 never served:\n{}", runner.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    feeding.await.unwrap();
    let all = wait_for(&output, 1300, "after the switch").await;
    eprintln!("switched to v2 {switch_took:?} after the serving pointer moved");

    // Every id exactly once, in order; v1 then v2, never back.
    let ids: Vec<u64> = all.iter().map(|(i, _)| *i).collect();
    assert_eq!(ids, (0..1300).collect::<Vec<_>>(), "each record scored exactly once, in order");
    let first_v2 = all.iter().position(|(_, v)| *v == 2).expect("some records scored by v2");
    assert!(all[..first_v2].iter().all(|(_, v)| *v == 1) && all[first_v2..].iter().all(|(_, v)| *v == 2));
    assert!(first_v2 > 300, "v1 scored until the switch");
    assert!(runner.log_text().contains("Serving a new model version"));

    // Rollback: the pointer goes back to v1, and so does the runner.
    serve(&registry, name, 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while runner.metric("vigil_model_version") != Some(1.0) {
        assert!(Instant::now() < deadline, "the rollback to v1 was not served:\n{}", runner.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    produce(&input, 1300..1400).await;
    let all = wait_for(&output, 1400, "after the rollback").await;
    assert!(all[1300..].iter().all(|(_, v)| *v == 1), "records after the rollback are scored by v1");
    drop(runner);

    // A Pipeline pinned to v2 serves v2 whatever the pointer says.
    let pinned = Runner::start_with(
        dir.path(),
        &pipeline(&input, &format!("{output}"), &dlq, name, Some(2)),
        &format!("{base}-pinned"),
        "r1",
        &["--model-registry", &registry],
    );
    pinned.wait_ready(Duration::from_secs(60));
    assert_eq!(pinned.metric("vigil_model_version"), Some(2.0), "{}", pinned.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn real_kafka_an_artifact_larger_than_a_kafka_record_goes_through_the_registry_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let registry = format!("{}-models", unique_name("big"));
    kafka::create_topic(&registry, 1, &[("cleanup.policy", "compact")]).await.unwrap();
    let data = dir.path().join("train.jsonl");
    let rows: String = (0..3000)
        .map(|i| format!("{{\"cpu\": {}, \"mem\": {}}}\n", (i * 7919) % 101, (i * 104729) % 97))
        .collect();
    std::fs::write(&data, rows).unwrap();
    // 1000 trees: several MB of parameters, over Kafka's 1 MiB record limit.
    let manifest = "apiVersion: vigil.dev/v1alpha1\nkind: Model\nmetadata: {name: forest}\nspec:\n  algorithm: isolationForest\n  params: {trees: 1000, sampleSize: 256, seed: 1}\n  features: [cpu, mem]\n  training: {file: x.jsonl, format: json}\n";
    train(dir.path(), manifest, &data, &registry, 1);
    let artifact = dir.path().join("models/forest-v1.vmodel");
    let size = std::fs::metadata(&artifact).unwrap().len();
    assert!(size > 2 * 1024 * 1024, "the artifact is {size} bytes");
    serve(&registry, "forest", 1);
    let settings = KafkaSettings { bootstrap: vigil_e2e::kafka().to_string(), ..KafkaSettings::default() };
    let watcher =
        vigil_runner::models::registry::Watcher::start(&settings, &registry, "tests", "forest", None)
            .unwrap();
    let model = watcher.next(Duration::from_secs(60)).expect("the artifact is reassembled from its chunks");
    assert_eq!(model.version(), 1);
    let local = vigil_runner::models::Artifact::read(&artifact).unwrap();
    assert_eq!(model.artifact.to_bytes(), local.to_bytes(), "the same artifact, byte for byte");
}

#[tokio::test(flavor = "multi_thread")]
async fn real_kafka_old_versions_are_removed_from_the_registry_beyond_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let registry = format!("{}-models", unique_name("keep"));
    kafka::create_topic(&registry, 1, &[("cleanup.policy", "compact")]).await.unwrap();
    let data = dir.path().join("train.jsonl");
    let rows: String =
        (0..300).map(|i| format!("{{\"cpu\": {}, \"mem\": {}}}\n", 40 + i % 7, 60 + i % 5)).collect();
    std::fs::write(&data, rows).unwrap();
    let file = dir.path().join("model.yaml");
    std::fs::write(&file, model("kept", 2)).unwrap();
    for version in 1..=4 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["train", file.to_str().unwrap(), "--input", data.to_str().unwrap()])
            .args([
                "--output",
                dir.path().join("models").to_str().unwrap(),
                "--version",
                &version.to_string(),
            ])
            .args(["--publish", "--registry-topic", &registry, "--namespace", "tests", "--keep", "2"])
            .env("VIGIL_KAFKA_BOOTSTRAP", vigil_e2e::kafka())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let settings = KafkaSettings { bootstrap: vigil_e2e::kafka().to_string(), ..KafkaSettings::default() };
    let kept = vigil_runner::models::registry::versions(&settings, &registry, "tests", "kept").unwrap();
    assert_eq!(kept.keys().copied().collect::<Vec<_>>(), vec![3, 4], "the newest two are kept");
    // A pin on a removed version never gets an artifact; a kept one does.
    let gone = vigil_runner::models::registry::Watcher::start(&settings, &registry, "tests", "kept", Some(1))
        .unwrap();
    let there =
        vigil_runner::models::registry::Watcher::start(&settings, &registry, "tests", "kept", Some(3))
            .unwrap();
    assert_eq!(there.next(Duration::from_secs(30)).map(|m| m.version()), Some(3));
    assert!(gone.next(Duration::from_secs(3)).is_none(), "version 1 was removed");
}
