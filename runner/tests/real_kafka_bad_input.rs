//! Bad input never crashes the runner: every kind of malformed record lands
//! in the dead-letter topic byte for byte, with the stage and reason in
//! headers, and the good records around them are scored.

mod support;

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use support::{Runner, Topics};

/// (what is wrong, payload, the stage that must refuse it, text the reason must contain)
fn bad_records() -> Vec<(&'static str, Vec<u8>, &'static str, &'static str)> {
    let ok = |body: &str| format!(r#"{{"host": "h1", "ts": "2026-11-28T10:00:00Z", {body}}}"#).into_bytes();
    vec![
        ("truncated JSON", br#"{"host": "h1", "cpu": 5"#.to_vec(), "decode", "invalid JSON"),
        ("a JSON array", b"[1, 2, 3]".to_vec(), "decode", "invalid JSON"),
        ("a bare number", b"42".to_vec(), "decode", "invalid JSON"),
        ("an empty record", Vec::new(), "decode", "invalid JSON"),
        ("bytes that are not UTF-8", vec![0xff, 0xfe, 0x00, 0x81], "decode", "invalid JSON"),
        ("trailing garbage", ok(r#""cpu": 1.0, "load": 1} xyz"#), "decode", "invalid JSON"),
        ("a NaN literal", ok(r#""cpu": NaN, "load": 1"#), "decode", "invalid JSON"),
        ("a number out of range", ok(r#""cpu": 1e999, "load": 1"#), "decode", "invalid JSON"),
        (
            "no key field",
            br#"{"ts": "2026-11-28T10:00:00Z", "cpu": 1.0, "load": 1}"#.to_vec(),
            "decode",
            "key field \"host\" is missing",
        ),
        (
            "a key that is an object",
            br#"{"host": {"a": 1}, "ts": "2026-11-28T10:00:00Z", "cpu": 1.0, "load": 1}"#.to_vec(),
            "decode",
            "key field \"host\" must be a string or number",
        ),
        (
            "an unreadable timestamp",
            br#"{"host": "h1", "ts": "yesterday", "cpu": 1.0, "load": 1}"#.to_vec(),
            "decode",
            "timestamp field \"ts\"",
        ),
        (
            "no timestamp",
            br#"{"host": "h1", "cpu": 1.0, "load": 1}"#.to_vec(),
            "decode",
            "timestamp field \"ts\" is missing",
        ),
        (
            "an oversize record",
            ok(&format!(r#""cpu": 1.0, "load": 1, "pad": "{}""#, "x".repeat(2000))),
            "decode",
            "over the limit of 1024",
        ),
        ("a filter on text", ok(r#""cpu": "high", "load": 1"#), "transforms[0].filter", ">= needs a number"),
        ("no feature field", ok(r#""load": 1"#), "transforms[0].filter", "no such field: cpu"),
        (
            "a cast that cannot convert",
            ok(r#""cpu": 1.0, "load": "abc""#),
            "transforms[1].cast",
            "cannot convert string \"abc\" to float",
        ),
        ("division by zero", ok(r#""cpu": 1.0, "load": 0"#), "transforms[2].derive", "not a finite number"),
        (
            "a feature that is a list",
            ok(r#""cpu": 1.0, "load": 1, "cpu2": [1]"#),
            "detector",
            "feature \"cpu2\" is not a number",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn real_kafka_malformed_records_are_dead_lettered_with_reasons_and_the_runner_keeps_going() {
    let topics = Topics::create("run-bad", 2).await;
    let bad = bad_records();
    assert!(bad.len() >= 15);
    let producer: FutureProducer = vigil_e2e::kafka::config().create().unwrap();
    let mut good = 0u64;
    for (i, (what, payload, _, _)) in bad.iter().enumerate() {
        for _ in 0..3 {
            let rec = format!(
                r#"{{"id": {good}, "host": "h{}", "ts": "2026-11-28T10:00:00Z", "cpu": 50.0, "load": 2, "cpu2": 1}}"#,
                good % 3
            );
            producer
                .send(FutureRecord::to(&topics.input).key("k").payload(&rec), Timeout::Never)
                .await
                .unwrap();
            good += 1;
        }
        producer
            .send(FutureRecord::to(&topics.input).key(&format!("bad-{i}")).payload(payload), Timeout::Never)
            .await
            .unwrap_or_else(|_| panic!("producing {what}"));
    }

    let manifest = format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {{name: bad, namespace: tests}}
spec:
  input: {{topic: {{name: {}}}, keyField: host, timestampField: ts, maxRecordBytes: 1024}}
  transforms:
    - filter: {{expr: "cpu >= 0.0"}}
    - cast: {{fields: {{load: float}}}}
    - derive: {{field: ratio, expr: "cpu / load"}}
  detector: {{algorithm: halfSpaceTrees, features: [cpu, cpu2]}}
  output: {{name: {}}}
  deadLetter: {{name: {}}}
"#,
        topics.input, topics.output, topics.dead_letter
    );
    let dir = tempfile::tempdir().unwrap();
    let mut runner = Runner::start(dir.path(), &manifest, &vigil_e2e::unique_name("g"), "bad-0");

    let counts = support::count_ids(&topics.output, good, Duration::from_secs(120), false);
    assert_eq!(counts.len() as u64, good, "every good record around the bad ones is scored");

    let dead = support::read_all(&topics.dead_letter, bad.len(), Duration::from_secs(60));
    assert_eq!(dead.len(), bad.len(), "one dead letter per bad record");
    for (i, (what, payload, stage, reason)) in bad.iter().enumerate() {
        let key = format!("bad-{i}");
        let found = dead.iter().find(|r| r.key.as_deref() == Some(key.as_str()));
        let r = found.unwrap_or_else(|| panic!("{what}: not in the dead-letter topic"));
        let headers = &r.headers;
        assert_eq!(&r.value, payload, "{what}: the original bytes are kept");
        assert_eq!(headers.get("vigil.stage").map(String::as_str), Some(*stage), "{what}: {headers:?}");
        let got = headers.get("vigil.reason").cloned().unwrap_or_default();
        assert!(got.contains(reason), "{what}: reason {got:?} lacks {reason:?}");
        assert_eq!(headers.get("vigil.source.topic"), Some(&topics.input));
    }
    assert!(runner.alive(), "the runner survived all of it:\n{}", runner.log_text());
    let dead_metric: f64 = runner
        .get("/metrics")
        .unwrap()
        .1
        .lines()
        .filter(|l| l.starts_with("vigil_records_dead_lettered_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(dead_metric, bad.len() as f64, "the metric counts every dead letter");
    assert_eq!(runner.terminate(), Some(0));
    topics.delete().await;
}
