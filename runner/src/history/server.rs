//! `vigil history-server`: the history component of one Pipeline. A writer
//! thread consumes the output and dead-letter topics (read_committed, its
//! own consumer group) into the store, committing the offsets with the rows;
//! the Data API serves the store and publishes to the input topic.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tracing::{error, info, warn};
use vigil_crds::Pipeline;

use super::ingest::Reader;
use super::store::{Batch, Store, is_full};
use crate::run::kafka_config::KafkaSettings;

/// How the component runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Namespace of the Pipeline.
    pub namespace: String,
    /// Directory of the store.
    pub data_dir: PathBuf,
    /// Address of the Data API (and its probes and metrics).
    pub listen: SocketAddr,
    /// Kafka bootstrap servers override.
    pub bootstrap: Option<String>,
    /// Mounted Kafka Secret.
    pub secret_dir: Option<PathBuf>,
    /// File holding the bearer token (the mounted `spec.api.tokenSecretRef`).
    pub token_file: Option<PathBuf>,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Requests per second the API accepts (all clients together).
    pub rate_per_second: u32,
    /// Longest a request may take (a follow stream excepted).
    pub request_timeout: Duration,
    /// How long records are kept (`spec.storage.retention`).
    pub retention: Duration,
    /// How often retention is enforced.
    pub retention_interval: Duration,
    /// Most records read into one store transaction.
    pub batch: usize,
}

/// What the writer reports (`/status`, `/readyz`, `GET /v1/pipeline`).
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WriterStatus {
    /// `Starting`, `Running`, `VolumeFull` or `Failing`.
    pub state: String,
    /// Why, when not Running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Records stored since start (outputs and dead letters).
    pub records: u64,
    /// Transactions committed since start.
    pub writes: u64,
    /// Records on the topics not yet stored (at the last check).
    pub lag: Option<i64>,
    /// Model version of the newest stored output, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_version: Option<i64>,
    /// When the last transaction committed (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_write: Option<String>,
}

/// State shared by the writer and the API.
pub struct Shared {
    /// The Pipeline served.
    pub pipeline: Pipeline,
    /// Namespace.
    pub namespace: String,
    /// The options.
    pub options: Options,
    /// Kafka settings.
    pub kafka: KafkaSettings,
    /// The writer's report.
    pub status: Mutex<WriterStatus>,
    /// Set to stop.
    pub stop: AtomicBool,
    /// History metrics.
    pub metrics: super::api::Metrics,
}

impl Shared {
    /// The writer's report.
    pub fn status(&self) -> WriterStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
    fn set(&self, f: impl FnOnce(&mut WriterStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }
}

/// Partitions of `topic` (from metadata).
fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("cannot read the metadata of topic {topic}"))?;
    let t = md.topics().iter().find(|t| t.name() == topic).context("no metadata")?;
    if let Some(e) = t.error() {
        anyhow::bail!("topic {topic}: {e:?}");
    }
    Ok(t.partitions().iter().map(|p| p.id()).collect())
}

/// Offsets the store resumes from: (topic, partition) -> next offset.
type Offsets = HashMap<(String, i32), i64>;

/// Assign every partition of the two topics at the stored offsets.
fn assign(consumer: &BaseConsumer, topics: &[&str], offsets: &Offsets) -> Result<usize> {
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        for p in partitions(consumer, topic)? {
            let at = offsets.get(&(topic.to_string(), p)).map_or(Offset::Beginning, |o| Offset::Offset(*o));
            tpl.add_partition_offset(topic, p, at)?;
        }
    }
    consumer.assign(&tpl)?;
    Ok(tpl.count())
}

/// Records on the topics after the stored offsets.
fn lag(consumer: &BaseConsumer, offsets: &Offsets) -> Option<i64> {
    let assignment = consumer.assignment().ok()?;
    let mut total = 0;
    for e in assignment.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(5)).ok()?;
        let at = offsets.get(&(e.topic().to_string(), e.partition())).copied().unwrap_or(low);
        total += (high - at.max(low)).max(0);
    }
    Some(total)
}

/// A batch written (or not) by the store thread.
struct Written {
    result: Result<(), rusqlite::Error>,
    batch: Batch,
    model_version: Option<i64>,
    took: Duration,
}

/// The writer: consume, store, commit; report; enforce retention. Returns
/// when `shared.stop` is set. Never exits on a full volume or a failing
/// store: it reports, waits, rewinds to the stored offsets and tries again.
///
/// Two threads: this one polls the consumer and reads records into the next
/// batch while the store thread commits the previous one (a transaction per
/// batch, the batch's offsets in it); one batch is in flight at a time.
pub fn write_loop(shared: &Shared, store: Store, reader: &Reader) -> Result<()> {
    let spec = &shared.pipeline.spec;
    let (output, dead) = (spec.output.name.as_str(), spec.dead_letter.name.as_str());
    let mut cfg = shared.kafka.client_config();
    cfg.set(
        "group.id",
        format!(
            "vigil-history.{}.{}",
            shared.namespace,
            shared.pipeline.metadata.name.as_deref().unwrap_or("")
        ),
    )
    .set("enable.auto.commit", "false")
    .set("enable.auto.offset.store", "false")
    .set("isolation.level", "read_committed")
    // Catching up on a backlog: larger fetches, fewer round trips.
    .set("max.partition.fetch.bytes", "8388608")
    .set("queued.min.messages", "200000");
    let consumer: BaseConsumer = cfg.create().context("cannot create the history consumer")?;
    let mut stored = store.offsets()?;
    let path = store.path().to_path_buf();
    let store = Arc::new(Mutex::new(store));
    let mut assigned = loop {
        match assign(&consumer, &[output, dead], &stored) {
            Ok(n) => break n,
            Err(e) => {
                shared.set(|s| {
                    s.state = "Starting".into();
                    s.message = Some(format!("waiting for topics {output} and {dead}: {e:#}"));
                });
                if shared.stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    };
    info!(output, dead_letter = dead, partitions = assigned, store = %path.display(), "History writer started");
    shared.set(|s| {
        s.state = "Running".into();
        s.message = None;
    });

    let (jobs, job_rx) = std::sync::mpsc::sync_channel::<(Batch, Option<i64>)>(0);
    let (done_tx, done) = std::sync::mpsc::channel::<Written>();
    let store_thread = {
        let store = store.clone();
        std::thread::Builder::new().name("history-store".into()).spawn(move || {
            for (batch, model_version) in job_rx {
                let started = Instant::now();
                let result = match store.lock() {
                    Ok(mut s) => s.write(&batch),
                    Err(_) => Err(rusqlite::Error::InvalidQuery),
                };
                if done_tx.send(Written { result, batch, model_version, took: started.elapsed() }).is_err() {
                    return;
                }
            }
        })?
    };
    let mut in_flight = false;
    let mut backoff = Duration::from_secs(1);
    let mut last_retention = Instant::now() - Duration::from_secs(3600);
    let mut last_check = Instant::now();
    // The outcome of the batch in flight: Ok(true) written, Ok(false)
    // failed (reported; the consumer rewound).
    let mut settle = |in_flight: &mut bool, stored: &mut Offsets| -> bool {
        if !*in_flight {
            return true;
        }
        *in_flight = false;
        let Ok(w) = done.recv() else { return false };
        match w.result {
            Ok(()) => {
                backoff = Duration::from_secs(1);
                stored.extend(w.batch.offsets.iter().map(|(k, v)| (k.clone(), *v)));
                let records = w.batch.records() as u64;
                shared.metrics.record_write(records, w.took);
                shared.set(|s| {
                    if s.state != "Running" {
                        info!("History writes again");
                    }
                    s.state = "Running".into();
                    s.message = None;
                    s.records += records;
                    s.writes += 1;
                    s.last_write =
                        Some(crate::codec::time::format_rfc3339(chrono::Utc::now().timestamp_millis()));
                    if w.model_version.is_some() {
                        s.model_version = w.model_version;
                    }
                });
                // For lag dashboards and the operator: the committed group
                // offsets follow the store (the store's own offsets are what
                // a restart resumes from).
                let mut tpl = TopicPartitionList::new();
                for ((t, p), o) in &w.batch.offsets {
                    let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
                }
                let _ = consumer.commit(&tpl, CommitMode::Async);
                true
            }
            Err(e) => {
                let (state, message) = if is_full(&e) {
                    (
                        "VolumeFull",
                        format!(
                            "the history volume is full ({e}); writing stopped, nothing is lost (the topics keep the records until there is room): grow spec.storage.size or shorten spec.storage.retention"
                        ),
                    )
                } else {
                    ("Failing", format!("the history store refused a write: {e}"))
                };
                error!(state, %message, "History write failed");
                shared.metrics.write_failed();
                shared.set(|s| {
                    s.state = state.into();
                    s.message = Some(message);
                });
                // Rewind to what is stored and try again later; retention
                // may free room in the meantime.
                if let Ok(mut s) = store.lock() {
                    let _ = s.enforce_retention(retention_cutoff(shared));
                    if let Ok(o) = s.offsets() {
                        *stored = o;
                    }
                }
                if let Err(e) = assign(&consumer, &[output, dead], stored) {
                    warn!(error = %format!("{e:#}"), "could not rewind the history consumer");
                }
                sleep_unless_stopped(shared, backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
                false
            }
        }
    };
    while !shared.stop.load(Ordering::Relaxed) {
        let mut batch = Batch::default();
        let deadline = Instant::now() + Duration::from_millis(200);
        let mut n = 0;
        let mut model_version = None;
        while n < shared.options.batch {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match consumer.poll(left) {
                None => break,
                Some(Err(e)) => {
                    warn!(error = %e, "history consumer");
                    break;
                }
                Some(Ok(m)) => {
                    n += 1;
                    let ts =
                        m.timestamp().to_millis().unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
                    let payload = m.payload().unwrap_or_default();
                    if m.topic() == output {
                        if let Some(v) = reader.output(&mut batch, payload, m.key(), ts) {
                            model_version = Some(v);
                        }
                    } else {
                        let headers: Vec<(&str, &[u8])> = m
                            .headers()
                            .map(|h| h.iter().map(|h| (h.key, h.value.unwrap_or_default())).collect())
                            .unwrap_or_default();
                        reader.dead_letter(&mut batch, payload, &headers, ts);
                    }
                    match batch.offsets.get_mut(&(m.topic().to_string(), m.partition())) {
                        Some(o) => *o = m.offset() + 1,
                        None => {
                            batch.offsets.insert((m.topic().to_string(), m.partition()), m.offset() + 1);
                        }
                    }
                }
            }
        }
        // The previous batch must be stored before this one goes (and if it
        // failed, this one was read past a rewind: dropped, read again).
        if !settle(&mut in_flight, &mut stored) {
            continue;
        }
        if batch.is_empty() {
            // Idle: transaction markers (exactly-once outputs) move the
            // positions past the last record; store them, so the lag reads
            // 0 and a restart does not re-read the markers' offsets.
            if let Ok(pos) = consumer.position() {
                for e in pos.elements() {
                    if let Some(o) = e.offset().to_raw().filter(|o| *o >= 0) {
                        let key = (e.topic().to_string(), e.partition());
                        if stored.get(&key).is_none_or(|s| o > *s) {
                            batch.offsets.insert(key, o);
                        }
                    }
                }
            }
        }
        if !batch.is_empty() {
            if jobs.send((batch, model_version)).is_err() {
                anyhow::bail!("the history store thread stopped");
            }
            in_flight = true;
        }
        if last_retention.elapsed() >= shared.options.retention_interval {
            last_retention = Instant::now();
            let cutoff = retention_cutoff(shared);
            let (removed, stats) = match store.lock() {
                Ok(mut s) => (s.enforce_retention(cutoff), s.stats().ok()),
                Err(_) => (Ok(0), None),
            };
            match removed {
                Ok(0) => {}
                Ok(n) => info!(rows = n, "History retention removed old rows"),
                Err(e) => warn!(error = %format!("{e:#}"), "History retention"),
            }
            if let Some(stats) = stats {
                shared.metrics.set_bytes(stats.bytes);
            }
        }
        if last_check.elapsed() > Duration::from_secs(5) {
            last_check = Instant::now();
            let l = lag(&consumer, &stored);
            if let Some(l) = l {
                shared.metrics.set_lag(l);
            }
            shared.set(|s| s.lag = l);
            // Partitions added to a topic are picked up.
            let now: usize =
                [output, dead].iter().map(|t| partitions(&consumer, t).map_or(0, |p| p.len())).sum();
            if now > assigned && settle(&mut in_flight, &mut stored) {
                if let Ok(n) = assign(&consumer, &[output, dead], &stored) {
                    info!(partitions = n, "History consumer reassigned (partitions added)");
                    assigned = n;
                }
            }
        }
    }
    settle(&mut in_flight, &mut stored);
    drop(jobs);
    let _ = store_thread.join();
    Ok(())
}

fn retention_cutoff(shared: &Shared) -> i64 {
    chrono::Utc::now().timestamp_millis() - shared.options.retention.as_millis() as i64
}

fn sleep_unless_stopped(shared: &Shared, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run the component until SIGTERM/ctrl-c.
pub fn run(pipeline: Pipeline, options: Options) -> Result<()> {
    let name = pipeline.metadata.name.clone().unwrap_or_default();
    let kafka = KafkaSettings::resolve(
        &pipeline.spec.kafka,
        options.bootstrap.as_deref(),
        options.secret_dir.as_deref(),
    )?;
    let features = super::ingest::features(&pipeline);
    let store = Store::open(&options.data_dir, &features)?;
    let reader = Reader::new(&pipeline, features);
    if options.token_file.is_none() {
        warn!(
            pipeline = %name,
            "The Data API has no token (spec.api.tokenSecretRef is not set): anyone who can reach its Service can read history and publish records. It is served on the cluster network only (a Service, no Ingress)"
        );
    }
    let shared = Arc::new(Shared {
        namespace: options.namespace.clone(),
        pipeline,
        kafka,
        options: options.clone(),
        status: Mutex::new(WriterStatus { state: "Starting".into(), ..WriterStatus::default() }),
        stop: AtomicBool::new(false),
        metrics: super::api::Metrics::new(&options.namespace, &name),
    });
    let writer = {
        let shared = shared.clone();
        std::thread::Builder::new().name("history-writer".into()).spawn(move || {
            if let Err(e) = write_loop(&shared, store, &reader) {
                error!(error = %format!("{e:#}"), "History writer stopped");
                shared.set(|s| {
                    s.state = "Failing".into();
                    s.message = Some(format!("{e:#}"));
                });
            }
        })?
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .with_context(|| format!("cannot listen on {}", options.listen))?;
        info!(pipeline = %name, listen = %options.listen, "Data API serving");
        let app = super::api::router(shared.clone())?;
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async {
                shutdown_signal().await;
            })
            .await
            .context("the Data API server")
    });
    shared.stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    info!("History component stopped");
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: stopping the Data API and the history writer"),
        _ = int.recv() => info!("SIGINT: stopping the Data API and the history writer"),
    }
}

/// Parse `7d`, `12h`, `30m`, `45s`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?} is not a duration like 7d, 12h, 30m, 45s or 500ms"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return Err(format!("{s:?} is not a duration like 7d, 12h, 30m, 45s or 500ms")),
    };
    Ok(Duration::from_millis(ms))
}

/// Per-partition offsets, for tests.
pub fn stored_offsets(dir: &std::path::Path) -> Result<HashMap<(String, i32), i64>> {
    Store::open_read_only(dir)?.offsets()
}
