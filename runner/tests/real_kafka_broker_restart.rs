//! The broker restarts under a running pipeline: the runner rides it out
//! and no record is lost. A test binary of its own, because every other
//! Kafka test running beside it would see the outage.

mod support;

use std::time::{Duration, Instant};

use support::{Runner, Topics, count_ids, produce_ids};

#[tokio::test(flavor = "multi_thread")]
async fn real_kafka_broker_restart_mid_stream_loses_nothing() {
    let topics = Topics::create("run-restart", 3).await;
    produce_ids(&topics.input, 0..100_000, 30).await;
    let dir = tempfile::tempdir().unwrap();
    let mut runner = Runner::start(
        dir.path(),
        &topics.pipeline("restart", "atLeastOnce", "[]"),
        &vigil_e2e::unique_name("g"),
        "restart-0",
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while runner.metric("vigil_records_in_total").unwrap_or(0.0) < 20_000.0 {
        assert!(Instant::now() < deadline, "no progress before the restart:\n{}", runner.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }

    vigil_e2e::restart_kafka(Duration::from_secs(3)).expect("broker restarts");
    produce_ids(&topics.input, 100_000..150_000, 30).await;

    let counts = count_ids(&topics.output, 150_000, Duration::from_secs(300), false);
    let missing: Vec<u64> = (0..150_000).filter(|i| !counts.contains_key(i)).take(10).collect();
    assert!(missing.is_empty(), "ids lost across the broker restart: {missing:?}\n{}", runner.log_text());
    assert!(runner.alive(), "the runner survived the outage");
    assert_eq!(runner.terminate(), Some(0));
    topics.delete().await;
}
