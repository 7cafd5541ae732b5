//! The broker restarts under a running pipeline: no record is lost. A test
//! binary of its own, because every other Kafka test running beside it
//! would see the outage.
//!
//! The runner rides most restarts out. When librdkafka leaves its producer
//! with no broker at all (a restarting single broker can answer metadata
//! with an empty broker list), the runner exits with an error instead, to be
//! restarted by its Deployment; this test plays that part and restarts it.

mod support;

use std::time::{Duration, Instant};

use support::{Runner, Topics, count_ids, produce_ids};

#[tokio::test(flavor = "multi_thread")]
async fn real_kafka_broker_restart_mid_stream_loses_nothing() {
    let topics = Topics::create("run-restart", 3).await;
    produce_ids(&topics.input, 0..100_000, 30).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = topics.pipeline("restart", "atLeastOnce", "[]");
    let group = vigil_e2e::unique_name("g");
    let mut runner = Runner::start_with(dir.path(), &manifest, &group, "restart-0", &["--threads", "4"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while runner.metric("vigil_records_in_total").unwrap_or(0.0) < 20_000.0 {
        assert!(Instant::now() < deadline, "no progress before the restart:\n{}", runner.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }

    vigil_e2e::restart_kafka(Duration::from_secs(3)).expect("broker restarts");
    produce_ids(&topics.input, 100_000..150_000, 30).await;

    let output = topics.output.clone();
    let counter = std::thread::spawn(move || count_ids(&output, 150_000, Duration::from_secs(300), false));
    let mut restarts = 0;
    let mut exits = String::new();
    while !counter.is_finished() {
        if !runner.alive() {
            // The kubelet's part: the container exited, start it again.
            let log = runner.log_text();
            let code = runner.exit_code();
            assert_ne!(code, Some(0), "the runner exited cleanly without being asked:\n{log}");
            assert!(
                log.contains("has had no broker"),
                "the runner exited for another reason than a client left without brokers:\n{log}"
            );
            exits.push_str(log.lines().rev().find(|l| l.contains("no broker")).unwrap_or_default());
            restarts += 1;
            assert!(restarts <= 3, "the runner keeps exiting:\n{exits}");
            runner = Runner::start_with(
                dir.path(),
                &manifest,
                &group,
                &format!("restart-{restarts}"),
                &["--threads", "4"],
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let counts = counter.join().unwrap();
    let missing: Vec<u64> = (0..150_000).filter(|i| !counts.contains_key(i)).take(10).collect();
    assert!(missing.is_empty(), "ids lost across the broker restart: {missing:?}\n{}", runner.log_text());
    eprintln!("runner restarts after the broker restart: {restarts} {exits}");
    assert!(runner.alive(), "the runner is running after the outage:\n{}", runner.log_text());
    assert_eq!(runner.terminate(), Some(0));
    topics.delete().await;
}
