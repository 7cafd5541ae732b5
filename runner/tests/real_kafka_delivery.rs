//! `vigil run` against the real broker from the e2e harness: records in,
//! scored records out, nothing lost when the runner is killed, exactly one
//! output per input with transactions, partitions handed over between
//! runners, and bad records dead-lettered with their reasons.
//!
//! Runners take the default processing threads (the cores of the machine,
//! two on CI) unless a test says `--threads`: the kill -9, exactly-once and
//! handover tests mix 2 and 4 threads, and one test checks per-key order
//! with 4.

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

    let first = Runner::start_with(dir.path(), &manifest, &group, "kill-0", &["--threads", "4"]);
    wait_consumed(&first, (N / 4) as f64, Duration::from_secs(300));
    first.kill9();

    let second = Runner::start_with(dir.path(), &manifest, &group, "kill-1", &["--threads", "2"]);
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

    let first = Runner::start_with(dir.path(), &manifest, &group, "eos-0", &["--threads", "2"]);
    wait_consumed(&first, (N / 4) as f64, Duration::from_secs(300));
    first.kill9();

    // The same instance name, as a restarted pod would have: its
    // transactional id fences the dead one's open transaction.
    let second = Runner::start_with(dir.path(), &manifest, &group, "eos-0", &["--threads", "4"]);
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
    let a = Runner::start_with(dir.path(), &manifest, &group, "group-a", &["--threads", "4"]);
    let b = Runner::start_with(dir.path(), &manifest, &group, "group-b", &["--threads", "2"]);
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

#[tokio::test(flavor = "multi_thread")]
async fn real_kafka_four_threads_keep_each_keys_records_in_input_order() {
    let topics = Topics::create("run-order", 8).await;
    // 40 keys (the Kafka key is the host), 30,000 ids in order.
    const IDS: u64 = 30_000;
    produce_ids(&topics.input, 0..IDS, 40).await;
    let dir = tempfile::tempdir().unwrap();
    let group = vigil_e2e::unique_name("g");
    let manifest = topics.pipeline("order", "atLeastOnce", "[]");
    let runner = Runner::start_with(dir.path(), &manifest, &group, "order-0", &["--threads", "4"]);
    let out = support::read_all(&topics.output, IDS as usize, Duration::from_secs(300));
    assert_eq!(out.len() as u64, IDS, "every record out; log:\n{}", runner.log_text());
    assert!(runner.log_text().contains("Processing partitions on 4 threads"), "{}", runner.log_text());
    // Per key (one input partition each), the ids come out in the order
    // they were consumed. Records of one partition are read in offset order.
    let per_key = |records: &[support::Received]| {
        let mut m: std::collections::HashMap<String, Vec<u64>> = std::collections::HashMap::new();
        for r in records {
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            let host = v["host"].as_str().unwrap().to_string();
            assert_eq!(r.key.as_deref(), Some(host.as_str()), "the key is kept");
            m.entry(host).or_default().push(v["id"].as_u64().unwrap());
        }
        m
    };
    let input = per_key(&support::read_all(&topics.input, IDS as usize, Duration::from_secs(60)));
    let output = per_key(&out);
    assert_eq!(output.len(), 40);
    for (host, ids) in &input {
        assert!(output.get(host) == Some(ids), "key {host}: output order differs from input order");
    }
    drop(runner);
    topics.delete().await;
}
