//! No record can stop a pipeline. A record larger than the dead-letter
//! topic takes is dead-lettered truncated, with headers saying so, and the
//! records after it are scored; a dead-letter topic that cannot be written
//! at all stops consumption without committing (the runner stays up, says
//! why on `/readyz`, `/status` and `/metrics`) and resumes once it can.

mod support;

use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use support::Runner;
use vigil_e2e::{kafka, unique_name};

fn big_producer() -> FutureProducer {
    kafka::config().set("message.max.bytes", "20000000").set("compression.type", "lz4").create().unwrap()
}

async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: Option<OwnedHeaders>,
) {
    let mut rec = FutureRecord::to(topic).key(key).payload(payload);
    if let Some(h) = headers {
        rec = rec.headers(h);
    }
    producer.send(rec, Timeout::After(Duration::from_secs(60))).await.map_err(|(e, _)| e).expect("produce");
}

async fn produce_good(producer: &FutureProducer, topic: &str, ids: std::ops::Range<u64>) {
    for i in ids {
        let rec = format!(r#"{{"id": {i}, "host": "h{}", "cpu": {}}}"#, i % 3, 40.0 + (i % 7) as f64);
        produce(producer, topic, &format!("h{}", i % 3), rec.as_bytes(), None).await;
    }
}

fn manifest(input: &str, output: &str, dead_letter: &str) -> String {
    format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {{name: poison, namespace: tests}}
spec:
  input: {{topic: {{name: {input}}}, keyField: host}}
  detector: {{algorithm: robustZ, features: [cpu]}}
  output: {{name: {output}}}
  deadLetter: {{name: {dead_letter}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn real_kafka_records_larger_than_the_dead_letter_topic_takes_are_truncated_and_the_runner_goes_on() {
    let base = unique_name("poison");
    let (input, output, dlq) = (format!("{base}-in"), format!("{base}-out"), format!("{base}-dlq"));
    // An input topic that allows 8 MiB records (an adopted topic, or one
    // with a raised max.message.bytes); output and dead-letter topics at the
    // broker's default (1 MiB).
    kafka::create_topic(&input, 2, &[("max.message.bytes", "8388608")]).await.unwrap();
    kafka::create_topic(&output, 2, &[]).await.unwrap();
    kafka::create_topic(&dlq, 1, &[]).await.unwrap();

    let producer = big_producer();
    produce_good(&producer, &input, 0..100).await;
    // 4 MiB of valid JSON: over maxRecordBytes (1 MiB), so dead-lettered
    // with its original bytes, which the dead-letter topic cannot take.
    let big_json = format!(r#"{{"id": 9001, "host": "h1", "cpu": 1.0, "pad": "{}"}}"#, "x".repeat(4 << 20));
    let trace = OwnedHeaders::new().insert(Header { key: "trace", value: Some("t-1") });
    produce(&producer, &input, "bad-json", big_json.as_bytes(), Some(trace)).await;
    produce_good(&producer, &input, 100..150).await;
    // 7 MiB that are not JSON at all, with a key of 400 KB (more than a
    // quarter of what the dead-letter topic takes: cut too).
    let garbage: Vec<u8> = (0..7u32 << 20).map(|i| (i % 251) as u8).collect();
    let big_key = format!("bad-bin-{}", "k".repeat(400_000));
    produce(&producer, &input, &big_key, &garbage, None).await;
    produce_good(&producer, &input, 150..200).await;

    let dir = tempfile::tempdir().unwrap();
    let runner = Runner::start(dir.path(), &manifest(&input, &output, &dlq), &unique_name("g"), "poison-0");

    let counts = support::count_ids(&output, 200, Duration::from_secs(120), false);
    assert_eq!(
        counts.len(),
        200,
        "every good record before and after the oversize ones is scored:\n{}",
        runner.log_text()
    );
    assert!(!counts.contains_key(&9001), "the oversize record is not scored");

    let dead = support::read_all(&dlq, 2, Duration::from_secs(60));
    assert_eq!(dead.len(), 2, "both oversize records are dead-lettered:\n{}", runner.log_text());
    let json = dead.iter().find(|r| r.key.as_deref() == Some("bad-json")).expect("the JSON record");
    assert_eq!(json.headers["vigil.truncated"], "true");
    assert_eq!(json.headers["vigil.original.size"], big_json.len().to_string());
    assert_eq!(json.headers["vigil.stage"], "decode");
    assert!(json.headers["vigil.reason"].contains("over the limit"), "{:?}", json.headers);
    assert_eq!(json.headers["vigil.source.topic"], input);
    assert!(json.headers["vigil.source.offset"].parse::<i64>().is_ok());
    assert_eq!(json.headers.get("trace").map(String::as_str), Some("t-1"), "small input headers are kept");
    assert!(
        json.value.len() > 900_000 && json.value.len() < 1_048_576,
        "cut to the topic's limit: {}",
        json.value.len()
    );
    assert_eq!(&json.value[..], &big_json.as_bytes()[..json.value.len()], "a prefix of the original bytes");

    let bin = dead
        .iter()
        .find(|r| r.key.as_deref().is_some_and(|k| k.starts_with("bad-bin-")))
        .expect("the binary record");
    assert_eq!(bin.headers["vigil.truncated"], "true");
    assert_eq!(bin.headers["vigil.original.size"], garbage.len().to_string());
    assert_eq!(&bin.value[..], &garbage[..bin.value.len()]);
    let key = bin.key.as_deref().unwrap();
    assert!(
        key.len() < big_key.len() && big_key.starts_with(key),
        "the key is cut to a prefix: {}",
        key.len()
    );
    assert_eq!(bin.headers["vigil.key.original.size"], big_key.len().to_string());
    assert!(bin.value.len() + key.len() < 1_048_576, "payload and key share the limit");

    let mut runner = runner;
    assert!(runner.alive(), "the runner is still running:\n{}", runner.log_text());
    assert_eq!(runner.metric("vigil_dead_letters_truncated_total"), Some(2.0));
    assert_eq!(runner.metric("vigil_runner_stalls_total"), Some(0.0), "nothing stopped it");
    let (code, status) = runner.get("/status").unwrap();
    assert_eq!(code, 200);
    assert!(status.contains(r#""state":"running""#), "{status}");
    assert_eq!(runner.terminate(), Some(0));
    let _ = kafka::delete_topics(&[&input, &output, &dlq]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn real_kafka_an_unwritable_dead_letter_topic_stops_consumption_without_a_crash_and_recovers() {
    let base = unique_name("nodlq");
    let (input, output, dlq) = (format!("{base}-in"), format!("{base}-out"), format!("{base}-dlq"));
    kafka::create_topic(&input, 1, &[]).await.unwrap();
    kafka::create_topic(&output, 1, &[]).await.unwrap();
    // The dead-letter topic does not exist (and the broker does not create
    // topics): every dead letter fails.
    let producer = big_producer();
    produce_good(&producer, &input, 0..20).await;
    produce(&producer, &input, "bad", b"{not json", None).await;
    produce_good(&producer, &input, 20..40).await;

    let dir = tempfile::tempdir().unwrap();
    // Client settings through the Secret directory, as a user's Secret would:
    // give up on a missing topic after 1 s rather than librdkafka's 30 s.
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("topic.metadata.propagation.max.ms"), "1000").unwrap();
    let group = unique_name("g");
    let mut runner = Runner::start_with(
        dir.path(),
        &manifest(&input, &output, &dlq),
        &group,
        "nodlq-0",
        &["--kafka-secret-dir", secret.to_str().unwrap(), "--stall-backoff", "2"],
    );

    // The runner stalls on the bad record: alive, not ready, saying why.
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        let s = runner.get("/status").map(|(_, b)| b).unwrap_or_default();
        if s.contains(r#""state":"stalled""#) || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.contains(r#""state":"stalled""#), "stalled: {status}\n{}", runner.log_text());
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let err = &v["lastError"];
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains(&format!("the dead-letter topic {dlq} cannot take records")),
        "{v}"
    );
    assert_eq!(err["record"]["topic"], input.as_str());
    assert_eq!(err["record"]["offset"], 20, "names the bad record");
    let (code, body) = runner.get("/readyz").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("cannot take records"), "{body}");
    assert_eq!(runner.get("/healthz").unwrap().0, 200, "alive: no restart wanted");
    assert!(runner.metric("vigil_runner_stalls_total").unwrap() >= 1.0);
    assert!(runner.log_text().contains(r#""offset":20"#), "the log names the record:\n{}", runner.log_text());

    // It keeps retrying without exiting, and commits nothing past the bad record.
    std::thread::sleep(Duration::from_secs(5));
    assert!(runner.alive(), "no exit, no crash loop:\n{}", runner.log_text());
    let committed = kafka::committed_offsets(&group, &input, 1).unwrap();
    assert!(committed[0].unwrap_or(0) <= 20, "nothing committed past the bad record: {committed:?}");

    // Once the topic exists, the runner resumes by itself.
    kafka::create_topic(&dlq, 1, &[]).await.unwrap();
    let dead = support::read_all(&dlq, 1, Duration::from_secs(90));
    assert_eq!(dead.len(), 1, "the bad record reaches the dead-letter topic:\n{}", runner.log_text());
    assert_eq!(dead[0].value, b"{not json");
    let counts = support::count_ids(&output, 40, Duration::from_secs(60), false);
    assert_eq!(counts.len(), 40, "every good record is scored");
    runner.wait_ready(Duration::from_secs(30));
    assert_eq!(runner.metric("vigil_runner_stalled"), Some(0.0));
    assert_eq!(runner.terminate(), Some(0));
    let _ = kafka::delete_topics(&[&input, &output, &dlq]).await;
}
