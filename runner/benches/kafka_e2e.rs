//! End to end through the real broker of the e2e harness, on the same
//! machine: throughput of `vigil run` (release build) over a pre-loaded
//! input topic, the same measured for a pass-through loop (the ceiling of
//! this Kafka client on this machine), and latency percentiles at a fixed
//! input rate.
//!
//! `cargo bench -p vigil-runner --bench kafka_e2e [-- --records N --rate R --seconds S --threads 1,2]`
//! (`--threads`: the processing threads of each throughput run; latency is
//! measured with the last)
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

fn start_runner(dir: &std::path::Path, manifest: &str, threads: usize) -> Child {
    let file = dir.join("pipeline.yaml");
    std::fs::write(&file, manifest).unwrap();
    let port = vigil_e2e::free_port();
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["run", "--pipeline", file.to_str().unwrap(), "--group", &unique_name("bench")])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--threads", &threads.to_string()])
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

/// The ceiling: the same librdkafka consumer -> producer loop as a runner,
/// with the runner's client settings, copying each record's key and value
/// to the output topic with no decoding, transforms or scoring (offsets
/// committed automatically). Runs until `stop`.
fn pass_through(
    input: &str,
    output: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let (input, output) = (input.to_string(), output.to_string());
    std::thread::spawn(move || {
        let consumer: BaseConsumer = kafka::config()
            .set("group.id", unique_name("bench-pass"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "true")
            .set("isolation.level", "read_committed")
            .set("queued.max.messages.kbytes", "32768")
            .create()
            .unwrap();
        consumer.subscribe(&[&input]).unwrap();
        let producer: BaseProducer = kafka::config()
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "200000")
            .set("compression.type", "lz4")
            .create()
            .unwrap();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match consumer.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => {
                    let mut rec = BaseRecord::to(&output).payload(m.payload().unwrap_or_default());
                    if let Some(k) = m.key() {
                        rec = rec.key(k);
                    }
                    loop {
                        match producer.send(rec) {
                            Ok(()) => break,
                            Err((_, back)) => {
                                rec = back;
                                producer.poll(Duration::from_millis(1));
                            }
                        }
                    }
                }
                Some(Err(e)) => eprintln!("pass-through consumer: {e}"),
                None => {}
            }
            producer.poll(Duration::ZERO);
        }
        let _ = producer.flush(Duration::from_secs(30));
    })
}

/// Read `records` records from `topic`: (seconds from `started`, seconds
/// from the first record).
fn drain_timed(topic: &str, records: u64, started: Instant) -> (u64, f64, f64) {
    let c = output_consumer(topic);
    let mut seen = 0u64;
    let mut first: Option<Instant> = None;
    while seen < records && started.elapsed() < Duration::from_secs(600) {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            seen += 1;
        }
    }
    let total = started.elapsed().as_secs_f64();
    (seen, total, first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(total))
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
    // Processing threads of `vigil run`, each measured in the same run.
    let threads: Vec<usize> = std::env::args()
        .skip_while(|a| a != "--threads")
        .nth(1)
        .unwrap_or_else(|| "1,2".into())
        .split(',')
        .map(|t| t.parse().expect("--threads 1,2"))
        .collect();
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

    let mut vigil = 0f64;
    let mut outputs = vec![output.clone()];
    for (i, &n) in threads.iter().enumerate() {
        let output = if i == 0 { output.clone() } else { format!("{output}-{n}") };
        if i > 0 {
            kafka::create_topic(&output, partitions, &[]).await.unwrap();
            outputs.push(output.clone());
        }
        let started = Instant::now();
        let mut runner = start_runner(dir.path(), &pipeline(&input, &output, &dlq), n);
        let (seen, total, steady) = drain_timed(&output, records, started);
        let rate = seen as f64 / total;
        vigil = vigil.max(rate);
        println!(
            "throughput, {n} processing thread(s): {seen} records through the broker in {total:.2} s from runner start = {rate:.0} records/s ({:.0} records/s from the first output)",
            seen as f64 / steady
        );
        let _ = runner.kill();
        let _ = runner.wait();
    }

    // The ceiling, in the same run: the same input, a pass-through loop.
    let pass_out = format!("{base}-pass");
    kafka::create_topic(&pass_out, partitions, &[]).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let looping = pass_through(&input, &pass_out, stop.clone());
    let (seen, total, steady) = drain_timed(&pass_out, records, started);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = looping.join();
    let ceiling = seen as f64 / total;
    println!(
        "pass-through baseline: {seen} records in {total:.2} s = {ceiling:.0} records/s ({:.0} records/s from the first output); vigil run at its best reaches {:.0} % of it",
        seen as f64 / steady,
        100.0 * vigil / ceiling
    );
    let mut all: Vec<&str> = vec![&input, &dlq, &pass_out];
    all.extend(outputs.iter().map(String::as_str));
    let _ = kafka::delete_topics(&all).await;

    // Latency at a fixed rate, runner already up.
    let base = unique_name("bench-lat");
    let (input, output, dlq) = (format!("{base}-in"), format!("{base}-out"), format!("{base}-dlq"));
    for t in [&input, &output, &dlq] {
        kafka::create_topic(t, partitions, &[]).await.unwrap();
    }
    let latency_threads = *threads.last().unwrap();
    let mut runner = start_runner(dir.path(), &pipeline(&input, &output, &dlq), latency_threads);
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
        "latency, {latency_threads} processing thread(s), at {rate} records/s for {seconds} s ({} records): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
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
