//! `vigil run` against the real broker from the e2e harness: records in,
//! scored records out, nothing lost when the runner is killed, exactly one
//! output per input with transactions, partitions handed over between
//! runners, and bad records dead-lettered with their reasons.

mod support;

use std::time::{Duration, Instant};

use support::{Runner, Topics, count_ids, produce_ids};

const N: u64 = 200_000;

fn missing(counts: &std::collections::HashMap<u64, u32>, n: u64) -> Vec<u64> {
    (0..n).filter(|i| !counts.contains_key(i)).take(10).collect()
}

/// Wait until the runner reports at least `n` records consumed.
fn wait_consumed(r: &Runner, n: f64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if r.metric("vigil_records_in_total").is_some_and(|v| v >= n) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("runner consumed fewer than {n} records in {timeout:?}; log:\n{}", r.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn real_kafka_runner_scores_records_end_to_end_and_reports_health_and_metrics() {
    let topics = Topics::create("run-basic", 3).await;
    produce_ids(&topics.input, 0..1000, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let mut runner = Runner::start(
        dir.path(),
        &topics.pipeline("basic", "atLeastOnce", "[]"),
        &vigil_e2e::unique_name("g"),
        "basic-0",
    );
    runner.wait_ready(Duration::from_secs(60));
    assert_eq!(runner.get("/healthz").map(|r| r.0), Some(200));

    let counts = count_ids(&topics.output, 1000, Duration::from_secs(120), false);
    assert_eq!(counts.len(), 1000, "missing ids {:?}", missing(&counts, 1000));

    let out = support::read_all(&topics.output, 1, Duration::from_secs(10));
    let v: serde_json::Value = serde_json::from_slice(&out[0].value).unwrap();
    assert!(v["host"].is_string() && v["cpu"].is_number(), "input fields kept: {v}");
    let a = &v["anomaly"];
    assert!(a["score"].as_f64().is_some_and(|s| (0.0..=1.0).contains(&s)), "{v}");
    assert_eq!(a["detector"], "robustZ");
    assert!(a["isAnomaly"].is_boolean() && a["explanation"].is_array(), "{v}");

    // Metrics count what happened.
    let deadline = Instant::now() + Duration::from_secs(10);
    while runner.metric("vigil_records_out_total") != Some(1000.0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(runner.metric("vigil_records_in_total"), Some(1000.0));
    assert_eq!(runner.metric("vigil_records_out_total"), Some(1000.0));
    assert!(runner.get("/metrics").unwrap().1.contains("vigil_processing_latency_seconds_bucket"));

    assert!(runner.alive());
    assert_eq!(runner.terminate(), Some(0), "SIGTERM drains and exits cleanly");
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn real_kafka_kill_9_mid_stream_loses_nothing_with_at_least_once() {
    let topics = Topics::create("run-kill", 4).await;
    produce_ids(&topics.input, 0..N, 50).await;
    let dir = tempfile::tempdir().unwrap();
    let group = vigil_e2e::unique_name("g");
    let manifest = topics.pipeline("kill", "atLeastOnce", "[]");

    let first = Runner::start(dir.path(), &manifest, &group, "kill-0");
    wait_consumed(&first, (N / 4) as f64, Duration::from_secs(300));
    first.kill9();

    let second = Runner::start(dir.path(), &manifest, &group, "kill-1");
    let counts = count_ids(&topics.output, N, Duration::from_secs(600), false);
    assert_eq!(counts.len() as u64, N, "ids lost after kill -9: {:?}", missing(&counts, N));
    let duplicates = counts.values().filter(|c| **c > 1).count();
    println!("kill -9 at-least-once: {N} ids, {duplicates} delivered more than once");
    drop(second);
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn real_kafka_kill_9_mid_stream_gives_exactly_one_output_per_record_with_transactions() {
    let topics = Topics::create("run-eos", 4).await;
    produce_ids(&topics.input, 0..N, 50).await;
    let dir = tempfile::tempdir().unwrap();
    let group = vigil_e2e::unique_name("g");
    let manifest = topics.pipeline("eos", "exactlyOnce", "[]");

    let first = Runner::start(dir.path(), &manifest, &group, "eos-0");
    wait_consumed(&first, (N / 4) as f64, Duration::from_secs(300));
    first.kill9();

    // The same instance name, as a restarted pod would have: its
    // transactional id fences the dead one's open transaction.
    let second = Runner::start(dir.path(), &manifest, &group, "eos-0");
    let counts = count_ids(&topics.output, N, Duration::from_secs(600), true);
    assert_eq!(counts.len() as u64, N, "ids lost: {:?}", missing(&counts, N));
    let dup: Vec<(&u64, &u32)> = counts.iter().filter(|(_, c)| **c > 1).take(10).collect();
    assert!(dup.is_empty(), "read_committed saw duplicates: {dup:?}");
    drop(second);
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn real_kafka_two_runners_share_the_partitions_and_one_stopping_loses_nothing() {
    let topics = Topics::create("run-group", 6).await;
    let dir = tempfile::tempdir().unwrap();
    let group = vigil_e2e::unique_name("g");
    let manifest = topics.pipeline("group", "atLeastOnce", "[]");
    let a = Runner::start(dir.path(), &manifest, &group, "group-a");
    let b = Runner::start(dir.path(), &manifest, &group, "group-b");
    a.wait_ready(Duration::from_secs(60));
    b.wait_ready(Duration::from_secs(60));

    produce_ids(&topics.input, 0..50_000, 60).await;
    wait_consumed(&a, 5_000.0, Duration::from_secs(120));
    wait_consumed(&b, 5_000.0, Duration::from_secs(120));
    let b_log = b.log.clone();
    assert_eq!(b.terminate(), Some(0), "b leaves the group cleanly");

    // a takes over b's partitions, including records produced after b left.
    produce_ids(&topics.input, 50_000..60_000, 60).await;
    let counts = count_ids(&topics.output, 60_000, Duration::from_secs(300), false);
    assert_eq!(
        counts.len(),
        60_000,
        "ids lost in the handover: {:?}\na:\n{}\nb:\n{}",
        missing(&counts, 60_000),
        a.log_text(),
        std::fs::read_to_string(&b_log).unwrap_or_default()
    );
    assert!(a.log_text().contains("Partitions assigned"), "a saw the rebalance");
    drop(a);
    topics.delete().await;
}
