//! End to end through the real broker of the e2e harness, on the same
//! machine: throughput of `vigil run` (release build) over a pre-loaded
//! input topic, and latency percentiles at a fixed input rate.
//!
//! `cargo bench -p vigil-runner --bench kafka_e2e [-- --records N --rate R --seconds S]`
//! prints the figures recorded in runner/BENCHMARKS.md.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use vigil_e2e::{kafka, unique_name};

use vigil_e2e::bench_arg as arg;

fn pipeline(input: &str, output: &str, dlq: &str) -> String {
    format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {{name: bench, namespace: bench}}
spec:
  input: {{topic: {{name: {input}}}, keyField: host}}
  transforms:
    - filter: {{expr: "cpu >= 0.0"}}
    - derive: {{field: load, expr: "cpu / 100.0"}}
    - drop: {{fields: [region]}}
  detector: {{algorithm: robustZ, features: [load]}}
  output: {{name: {output}}}
  deadLetter: {{name: {dlq}}}
"#
    )
}

fn start_runner(dir: &std::path::Path, manifest: &str) -> Child {
    let file = dir.join("pipeline.yaml");
    std::fs::write(&file, manifest).unwrap();
    let port = vigil_e2e::free_port();
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["run", "--pipeline", file.to_str().unwrap(), "--group", &unique_name("bench")])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("VIGIL_KAFKA_BOOTSTRAP", kafka())
        .env("VIGIL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("vigil run")
}

fn producer() -> BaseProducer {
    kafka::config()
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "lz4")
        .create()
        .unwrap()
}

fn record(i: u64, sent_us: u128) -> String {
    format!(
        r#"{{"id":{i},"sent_us":{sent_us},"host":"host-{}","region":"eu-west-1","cpu":{:.2}}}"#,
        i % 1000,
        20.0 + (i * 7919 % 6000) as f64 / 100.0
    )
}

fn now_us() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros()
}

fn send_all(p: &BaseProducer, topic: &str, from: u64, to: u64) {
    for i in from..to {
        let payload = record(i, now_us());
        let key = format!("host-{}", i % 1000);
        let mut rec = BaseRecord::to(topic).key(&key).payload(&payload);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    p.poll(Duration::from_millis(5));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
}

fn output_consumer(topic: &str) -> BaseConsumer {
    let c: BaseConsumer = kafka::config()
        .set("group.id", unique_name("bench-read"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

#[tokio::main]
async fn main() {
    let records = arg("--records", 1_000_000);
    let rate = arg("--rate", 10_000);
    let seconds = arg("--seconds", 20);
    let partitions = arg("--partitions", 2) as i32;
    let dir = tempfile::tempdir().unwrap();

    // Throughput: a pre-loaded input topic drained by one runner.
    let base = unique_name("bench-tput");
    let (input, output, dlq) = (format!("{base}-in"), format!("{base}-out"), format!("{base}-dlq"));
    for t in [&input, &output, &dlq] {
        kafka::create_topic(t, partitions, &[]).await.unwrap();
    }
    let p = producer();
    let load_started = Instant::now();
    send_all(&p, &input, 0, records);
    p.flush(Duration::from_secs(120)).unwrap();
    println!("loaded {records} records in {:.1} s", load_started.elapsed().as_secs_f64());

    let c = output_consumer(&output);
    let started = Instant::now();
    let mut runner = start_runner(dir.path(), &pipeline(&input, &output, &dlq));
    let mut seen = 0u64;
    let mut first: Option<Instant> = None;
    while seen < records && started.elapsed() < Duration::from_secs(600) {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            seen += 1;
        }
    }
    let total = started.elapsed().as_secs_f64();
    let steady = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(total);
    println!(
        "throughput: {seen} records through the broker in {total:.2} s from runner start = {:.0} records/s ({:.0} records/s from the first output)",
        seen as f64 / total,
        seen as f64 / steady
    );
    let _ = runner.kill();
    let _ = runner.wait();

    // Latency at a fixed rate, runner already up.
    let base = unique_name("bench-lat");
    let (input, output, dlq) = (format!("{base}-in"), format!("{base}-out"), format!("{base}-dlq"));
    for t in [&input, &output, &dlq] {
        kafka::create_topic(t, partitions, &[]).await.unwrap();
    }
    let mut runner = start_runner(dir.path(), &pipeline(&input, &output, &dlq));
    std::thread::sleep(Duration::from_secs(5));
    let out_topic = output.clone();
    let total = rate * seconds;
    let reader = std::thread::spawn(move || {
        let c = output_consumer(&out_topic);
        let mut lat = Vec::with_capacity(total as usize);
        let deadline = Instant::now() + Duration::from_secs(seconds + 60);
        while (lat.len() as u64) < total && Instant::now() < deadline {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
                let sent = v["sent_us"].as_u64().unwrap_or(0) as u128;
                lat.push((now_us().saturating_sub(sent)) as f64 / 1000.0);
            }
        }
        lat
    });
    let p = producer();
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        if due > sent {
            send_all(&p, &input, sent, due.min(total));
            sent = due.min(total);
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).unwrap();
    let mut lat = reader.join().unwrap();
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| lat.get(((lat.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(f64::NAN);
    println!(
        "latency at {rate} records/s for {seconds} s ({} records): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    let _ = runner.kill();
    let _ = runner.wait();
    let _ = kafka::delete_topics(&[&input, &output, &dlq]).await;
}
