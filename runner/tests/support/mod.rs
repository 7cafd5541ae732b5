//! Helpers for runner tests against the real broker: topics of a test's
//! own, the `vigil run` process (started, killed, stopped), producing and
//! reading back records by id.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use vigil_e2e::{kafka, unique_name};

/// Input, output and dead-letter topics of one test.
pub struct Topics {
    pub input: String,
    pub output: String,
    pub dead_letter: String,
}

impl Topics {
    pub async fn create(prefix: &str, partitions: i32) -> Topics {
        let base = unique_name(prefix);
        let t = Topics {
            input: format!("{base}-in"),
            output: format!("{base}-out"),
            dead_letter: format!("{base}-dlq"),
        };
        kafka::create_topic(&t.input, partitions, &[]).await.unwrap();
        kafka::create_topic(&t.output, partitions, &[]).await.unwrap();
        kafka::create_topic(&t.dead_letter, 1, &[]).await.unwrap();
        t
    }

    pub async fn delete(&self) {
        let _ = kafka::delete_topics(&[&self.input, &self.output, &self.dead_letter]).await;
    }

    /// A Pipeline manifest over these topics.
    pub fn pipeline(&self, name: &str, delivery: &str, transforms: &str) -> String {
        format!(
            r#"apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {{name: {name}, namespace: tests}}
spec:
  input: {{topic: {{name: {}}}, keyField: host}}
  transforms: {transforms}
  detector: {{algorithm: robustZ, features: [cpu]}}
  output: {{name: {}}}
  deadLetter: {{name: {}}}
  delivery: {delivery}
"#,
            self.input, self.output, self.dead_letter
        )
    }
}

pub use vigil_e2e::free_port;

/// A `vigil run` process.
pub struct Runner {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Runner {
    pub fn start(dir: &Path, manifest: &str, group: &str, instance: &str) -> Runner {
        Self::start_with(dir, manifest, group, instance, &[])
    }

    /// `start` with more arguments for `vigil run`.
    pub fn start_with(dir: &Path, manifest: &str, group: &str, instance: &str, extra: &[&str]) -> Runner {
        let file = dir.join(format!("{instance}.yaml"));
        std::fs::write(&file, manifest).unwrap();
        let port = free_port();
        let log = dir.join(format!("{instance}.log"));
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["run", "--pipeline", file.to_str().unwrap(), "--group", group])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--instance", instance])
            .args(extra)
            .env("VIGIL_KAFKA_BOOTSTRAP", kafka())
            // VIGIL_TEST_LOG, e.g. "info,librdkafka=debug", to see more.
            .env("VIGIL_LOG", std::env::var("VIGIL_TEST_LOG").unwrap_or("info".into()))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("vigil run starts");
        Runner { child, port, log }
    }

    /// GET a path of the runner's HTTP server: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        Some((status, body))
    }

    /// The value of a metric line starting with `prefix`.
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        body.lines().find(|l| l.starts_with(prefix))?.rsplit(' ').next()?.parse().ok()
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.get("/readyz").is_some_and(|(s, _)| s == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("runner not ready within {timeout:?}; log:\n{}", self.log_text());
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL: no chance to flush or commit.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The exit status code of a runner that has exited by itself.
    pub fn exit_code(mut self) -> Option<i32> {
        self.child.wait().unwrap().code()
    }

    /// SIGTERM, and the exit status code.
    pub fn terminate(mut self) -> Option<i32> {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                self.child.kill().unwrap();
                panic!("runner did not stop within 60 s of SIGTERM; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Produce records `{"id": i, "host": "h<i%hosts>", "cpu": ...}` for ids in `range`.
pub async fn produce_ids(topic: &str, range: std::ops::Range<u64>, hosts: u64) {
    let producer: FutureProducer = kafka::config()
        .set("linger.ms", "10")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .unwrap();
    let ids: Vec<u64> = range.collect();
    for chunk in ids.chunks(20_000) {
        let sends = chunk.iter().map(|i| {
            let host = format!("h{}", i % hosts);
            let payload = format!(r#"{{"id": {i}, "host": "{host}", "cpu": {}}}"#, 40.0 + (i % 17) as f64);
            let producer = producer.clone();
            async move {
                producer
                    .send(
                        FutureRecord::to(topic).key(&host).payload(&payload),
                        Timeout::After(Duration::from_secs(60)),
                    )
                    .await
            }
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e).expect("produce");
        }
    }
}

/// Read `topic` from the start and count outputs per `id` until every id in
/// `0..want` is present or `timeout` passes.
pub fn count_ids(topic: &str, want: u64, timeout: Duration, read_committed: bool) -> HashMap<u64, u32> {
    let consumer: BaseConsumer = kafka::config()
        .set("group.id", unique_name("count"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", if read_committed { "read_committed" } else { "read_uncommitted" })
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut counts: HashMap<u64, u32> = HashMap::new();
    let deadline = Instant::now() + timeout;
    let mut idle_since = Instant::now();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                idle_since = Instant::now();
                let v: serde_json::Value =
                    serde_json::from_slice(m.payload().unwrap_or_default()).expect("output is JSON");
                let id = v["id"].as_u64().expect("output keeps the id");
                *counts.entry(id).or_default() += 1;
            }
            Some(Err(e)) => panic!("consume {topic}: {e}"),
            None => {
                // Once everything arrived, wait a little for duplicates to show.
                if counts.len() as u64 >= want && idle_since.elapsed() > Duration::from_secs(2) {
                    break;
                }
            }
        }
    }
    counts
}

/// A record read back, headers as text.
pub struct Received {
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// Every record of `topic` (up to `want`) with key and headers.
pub fn read_all(topic: &str, want: usize, timeout: Duration) -> Vec<Received> {
    kafka::drain(topic, want, timeout, false)
        .unwrap()
        .into_iter()
        .map(|r| Received {
            key: r.key.map(|k| String::from_utf8_lossy(&k).into_owned()),
            value: r.value,
            headers: r
                .headers
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                .collect(),
        })
        .collect()
}
