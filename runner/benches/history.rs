//! The history store's figures (runner/BENCHMARKS.md, History):
//!
//! 1. Ingest: scored records as the output topic has them (1,000 keys, four
//!    features, 0.5 % flagged with explanations) parsed and written by the
//!    history writer's own code (`ingest::Reader` -> `Batch` -> one
//!    transaction per 5,000), records/s on one core.
//! 2. A week of one pipeline at 10,000 records/s (1,000 keys, 0.5 %
//!    flagged): the rows it leaves (every flagged record in full, a rollup
//!    per key and minute) written day by day; bytes on disk per day and for
//!    the week; then p50/p99 of a one-day anomaly query and a one-hour
//!    history query of one key, at random times.
//!
//! 3. With the broker (`e2e/up` running, or VIGIL_KAFKA_BOOTSTRAP): the same
//!    records on an output topic of 4 partitions, stored by a `vigil
//!    history-server` process: records/s from its start to the last stored.
//!
//! `cargo bench -p vigil-runner --bench history -- [--days 7] [--ingest 1000000] [--broker 1000000] [--dir DIR]`

use std::path::PathBuf;
use std::time::Instant;

use vigil_runner::history::ingest::Reader;
use vigil_runner::history::store::{Acc, Batch, MINUTE_MS, NewAnomaly, Query, Store};

const KEYS: u64 = 1000;
const RATE: u64 = 10_000;
const FLAGGED_PER_MILLE: u64 = 5;
const FEATURES: [&str; 4] = ["cpu", "mem", "disk", "net"];

/// xorshift64*: deterministic data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One output record as the runner writes it.
fn record(rng: &mut Rng, key: u64, ts: i64, flagged: bool) -> String {
    let v: Vec<f64> = (0..4).map(|i| 10.0 * (i + 1) as f64 + rng.unit() * 5.0).collect();
    let score = if flagged { 0.9 + rng.unit() * 0.1 } else { rng.unit() * 0.5 };
    let explanation: Vec<String> = FEATURES
        .iter()
        .zip(&v)
        .map(|(f, x)| {
            format!(
                r#"{{"feature":"{f}","weight":{:.6},"value":{x},"expected":{:.4}}}"#,
                rng.unit() / 4.0,
                x - rng.unit()
            )
        })
        .collect();
    format!(
        r#"{{"ts":{ts},"host":"host-{key:04}","cpu":{},"mem":{},"disk":{},"net":{},"anomaly":{{"score":{score:.6},"isAnomaly":{flagged},"detector":"robustZ","modelVersion":null,"explanation":[{}]}}}}"#,
        v[0],
        v[1],
        v[2],
        v[3],
        explanation.join(",")
    )
}

fn pipeline() -> vigil_crds::Pipeline {
    vigil_crds::manifest::single_pipeline(
        r#"apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {name: bench, namespace: bench}
spec:
  input: {topic: {name: in}, keyField: host, timestampField: ts}
  detector: {algorithm: halfSpaceTrees, features: [cpu, mem, disk, net]}
  output: {name: out}
  deadLetter: {name: dlq}
"#,
    )
    .expect("bench pipeline")
}

fn arg(name: &str, default: u64) -> u64 {
    vigil_e2e::bench_arg(name, default)
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let base: PathBuf = std::env::args()
        .skip_while(|a| a != "--dir")
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("vigil-history-bench-{}", std::process::id()));
    let p = pipeline();
    let features: Vec<String> = FEATURES.iter().map(|s| s.to_string()).collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

    // 1. Ingest through the writer's code.
    let n = arg("--ingest", 1_000_000);
    let lines: Vec<String> = (0..n)
        .map(|i| {
            record(&mut rng, i % KEYS, 1_700_000_000_000 + (i / 10) as i64, i % 1000 < FLAGGED_PER_MILLE)
        })
        .collect();
    let bytes: usize = lines.iter().map(String::len).sum();
    let dir = base.join("ingest");
    let mut store = Store::open(&dir, &features).expect("store");
    let reader = Reader::new(&p, features.clone());
    let started = Instant::now();
    for (c, chunk) in lines.chunks(5000).enumerate() {
        let mut batch = Batch::default();
        for l in chunk {
            reader.output(&mut batch, l.as_bytes(), None, 0);
        }
        batch.offsets.insert(("out".into(), 0), ((c + 1) * 5000) as i64);
        store.write(&batch).expect("write");
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ingest: {n} records ({:.0} bytes each, {:.1} % flagged) in {secs:.2} s = {:.0} records/s on one core",
        bytes as f64 / n as f64,
        FLAGGED_PER_MILLE as f64 / 10.0,
        n as f64 / secs
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);

    // 3. Through the broker, by the history component's own process.
    let through = arg("--broker", 1_000_000) as usize;
    if through > 0 {
        broker_ingest(&base, &lines[..through.min(lines.len())]);
    }

    // 2. A week at 10,000 records/s.
    let days = arg("--days", 7);
    if days == 0 {
        let _ = std::fs::remove_dir_all(&base);
        return;
    }
    let dir = base.join("week");
    let mut store = Store::open(&dir, &features).expect("store");
    let start = 1_767_225_600_000i64; // 2026-01-01
    let per_minute = RATE * 60;
    let flagged_per_minute = per_minute * FLAGGED_PER_MILLE / 1000;
    let started = Instant::now();
    for day in 0..days {
        let day_started = Instant::now();
        // An hour per transaction.
        for hour in 0..24 {
            let mut batch = Batch::default();
            for m in 0..60 {
                let minute = start + ((day * 24 + hour) * 60 + m) as i64 * MINUTE_MS;
                for k in 0..KEYS {
                    let count = (per_minute / KEYS) as i64;
                    let sums = (0..4).map(|i| count as f64 * (10.0 * (i + 1) as f64 + 2.5)).collect();
                    batch.rollups.insert(
                        (format!("host-{k:04}"), minute),
                        Acc {
                            count,
                            scored: count,
                            score_sum: count as f64 * 0.2,
                            score_max: 0.99,
                            anomalies: 3,
                            sums,
                            counts: vec![count; 4],
                        },
                    );
                }
                for f in 0..flagged_per_minute {
                    let key = rng.next() % KEYS;
                    let ts = minute + (f * 60_000 / flagged_per_minute) as i64;
                    let rec = record(&mut rng, key, ts, true);
                    batch.anomalies.push(NewAnomaly {
                        ts,
                        key: format!("host-{key:04}"),
                        score: 0.95,
                        record: rec,
                    });
                }
            }
            store.write(&batch).expect("write");
        }
        let size = dir_size(&dir);
        println!(
            "day {}: written in {:.1} s; store {:.2} GiB ({:.2} GiB per day so far)",
            day + 1,
            day_started.elapsed().as_secs_f64(),
            size as f64 / (1u64 << 30) as f64,
            size as f64 / (1u64 << 30) as f64 / (day + 1) as f64
        );
    }
    drop(store);
    // Let the log be folded into the file (as it is on close), then open as
    // the API does.
    let size = dir_size(&dir);
    let stats = Store::open_read_only(&dir).and_then(|s| s.stats()).expect("stats");
    println!(
        "{days} days at {RATE} records/s ({} keys, {:.1} % flagged): {} flagged records, {} rollups, written in {:.0} s; {:.2} GiB on disk ({:.0} bytes per flagged record and rollup together)",
        KEYS,
        FLAGGED_PER_MILLE as f64 / 10.0,
        stats.anomalies,
        stats.rollups,
        started.elapsed().as_secs_f64(),
        size as f64 / (1u64 << 30) as f64,
        size as f64 / (stats.anomalies + stats.rollups) as f64
    );

    let store = Store::open_read_only(&dir).expect("store");
    let span = days as i64 * 86_400_000;
    let mut anomaly_ms = Vec::new();
    let mut history_ms = Vec::new();
    for _ in 0..300 {
        let from = start + (rng.next() % (span.max(86_400_000) as u64 - 86_400_000 + 1)) as i64;
        let q = Query { from: Some(from), to: Some(from + 86_400_000), limit: 100, ..Query::default() };
        let t = Instant::now();
        let page = store.anomalies(&q).expect("query");
        anomaly_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(page.items.len(), 100);
        let key = format!("host-{:04}", rng.next() % KEYS);
        let from = start + (rng.next() % (span as u64 - 3_600_000)) as i64;
        let q = Query {
            from: Some(from),
            to: Some(from + 3_600_000),
            key: Some(key),
            limit: 1000,
            ..Query::default()
        };
        let t = Instant::now();
        let page = store.history(&q).expect("query");
        history_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!((59..=61).contains(&page.items.len()), "{}", page.items.len());
    }
    println!(
        "one-day anomaly query (first page of 100): p50 {:.2} ms, p99 {:.2} ms; one-hour history of one key (60 rows): p50 {:.2} ms, p99 {:.2} ms",
        percentile(&mut anomaly_ms, 0.5),
        percentile(&mut anomaly_ms, 0.99),
        percentile(&mut history_ms, 0.5),
        percentile(&mut history_ms, 0.99)
    );
    let _ = std::fs::remove_dir_all(&base);
}

fn broker_ingest(base: &std::path::Path, lines: &[String]) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let stamp = std::process::id();
    let (out, dlq) = (format!("bench-hist-{stamp}-out"), format!("bench-hist-{stamp}-dlq"));
    rt.block_on(async {
        vigil_e2e::kafka::create_topic(&out, 4, &[]).await.expect("topic");
        vigil_e2e::kafka::create_topic(&dlq, 1, &[]).await.expect("topic");
        for chunk in lines.chunks(100_000) {
            let pairs: Vec<(Option<&str>, &[u8])> = chunk.iter().map(|l| (None, l.as_bytes())).collect();
            vigil_e2e::kafka::produce(&out, &pairs).await.expect("produce");
        }
    });
    let dir = base.join("broker");
    std::fs::create_dir_all(&dir).expect("dir");
    let manifest = dir.join("pipeline.yaml");
    let yaml = format!(
        "apiVersion: vigil.dev/v1alpha1\nkind: Pipeline\nmetadata: {{name: bench, namespace: bench}}\nspec:\n  input: {{topic: {{name: bench-in}}, keyField: host, timestampField: ts}}\n  detector: {{algorithm: halfSpaceTrees, features: [cpu, mem, disk, net]}}\n  output: {{name: {out}}}\n  deadLetter: {{name: {dlq}}}\n"
    );
    std::fs::write(&manifest, yaml).expect("manifest");
    let port = vigil_e2e::free_port();
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["history-server", "--pipeline", manifest.to_str().unwrap_or_default()])
        .args(["--data-dir", dir.join("store").to_str().unwrap_or_default()])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--retention", "3650d"])
        .env("VIGIL_KAFKA_BOOTSTRAP", vigil_e2e::kafka())
        .env("VIGIL_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("vigil history-server");
    let status = |port: u16| -> Option<serde_json::Value> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        write!(s, "GET /status HTTP/1.0\r\n\r\n").ok()?;
        let mut t = String::new();
        s.read_to_string(&mut t).ok()?;
        serde_json::from_str(t.split("\r\n\r\n").nth(1)?).ok()
    };
    let n = lines.len() as u64;
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let stored = status(port).and_then(|v| v["records"].as_u64()).unwrap_or(0);
        if stored > 0 && first.is_none() {
            first = Some((Instant::now(), stored));
        }
        if stored >= n {
            break;
        }
        assert!(started.elapsed().as_secs() < 600, "history-server stored {stored} of {n}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    let steady = first.map_or(0.0, |(t, k)| (n - k) as f64 / t.elapsed().as_secs_f64().max(1e-9));
    println!(
        "through the broker: {n} records from a 4-partition output topic stored by vigil history-server in {secs:.2} s = {:.0} records/s from process start, {steady:.0} records/s from the first write",
        n as f64 / secs
    );
    rt.block_on(async {
        let _ = vigil_e2e::kafka::delete_topics(&[&out, &dlq]).await;
    });
}
