//! `vigil run`: the in-pod runner. Consumes the input topic in the
//! pipeline's consumer group (cooperative-sticky), processes each record
//! with the engine, produces scored records (key, headers and timestamp
//! kept) to the output topic and rejected ones, unchanged and with the
//! reason in headers, to the dead-letter topic.
//!
//! Delivery: at-least-once stores a partition's offset only once every
//! output and dead-letter record derived from the records before it is
//! acknowledged (`offsets.rs`); exactly-once wraps each batch's outputs and
//! offsets in one Kafka transaction. On revocation and on SIGTERM in-flight
//! work is flushed and committed before the partitions are let go; after a
//! failure nothing more is committed. One exception: records absorbed into
//! an open `window` count as done before the window emits (see
//! `transforms/window.rs`).
//!
//! Processing is single-threaded (one engine, no locks on the hot path
//! beyond uncontended ones); librdkafka's threads do the network I/O.
//!
//! Broker outages: partitions lost to a session timeout are let go at once
//! (nothing can be committed for them) and re-read from the committed
//! offsets when the group is joined again. A consumer that librdkafka left
//! with no broker at all (it happens when a restarting broker answers
//! metadata with an empty broker list) is replaced by a new one, in-flight
//! work forgotten; a producer left like that makes the runner exit, to be
//! restarted, without committing anything more; see `OrphanWatch`.

pub mod kafka_config;
pub mod offsets;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{error, info, warn};
use vigil_crds::{Delivery, Pipeline};

use crate::codec::Meta;
use crate::engine::{Engine, Event};
use crate::metrics::{KindLabel, Metrics, PartitionLabel, StageLabel};
use kafka_config::KafkaSettings;
use offsets::{Token, Tracker};

/// How `vigil run` was started.
#[derive(Debug, Clone)]
pub struct Options {
    /// The Pipeline manifest (the operator's ConfigMap, mounted).
    pub pipeline_file: PathBuf,
    /// Overrides `spec.kafka.bootstrapServers`.
    pub bootstrap: Option<String>,
    /// A mounted Secret with SASL/TLS settings.
    pub secret_dir: Option<PathBuf>,
    /// Consumer group; default `vigil.<namespace>.<name>`.
    pub group: Option<String>,
    /// Namespace, when the manifest has none.
    pub namespace: Option<String>,
    /// Address of the HTTP server (`/metrics`, `/healthz`, `/readyz`).
    pub listen: SocketAddr,
    /// This instance's name (the pod name), for the transactional id.
    pub instance: String,
    /// Most records per exactly-once transaction.
    pub batch: usize,
}

/// State shared between the processing loop, the rebalance callback and the
/// HTTP server.
struct Shared {
    metrics: Arc<Metrics>,
    /// Set on SIGTERM/SIGINT.
    stop: AtomicBool,
    /// Set once the consumer has joined its group.
    ready: AtomicBool,
    /// Set when the loop failed: nothing may be committed any more (closing
    /// the consumer runs the revoke callback, which must not finish then).
    abandoned: AtomicBool,
    /// Unix seconds of the loop's last turn, for liveness.
    heartbeat: AtomicU64,
    state: Mutex<LoopState>,
    producer: Arc<BaseProducer<ProducerCtx>>,
    mode: Delivery,
    input: String,
    dead_letter: String,
    /// The producer's `message.max.bytes`.
    max_output: i64,
}

/// What the rebalance callback must be able to finish.
struct LoopState {
    tracker: Tracker,
    /// At-least-once: the offsets stored per partition.
    stored: HashMap<i32, i64>,
    /// Exactly-once: next offset per partition consumed in the open transaction.
    txn_offsets: HashMap<i32, i64>,
    txn_open: bool,
    /// Set when a failure means the runner must stop without committing.
    fatal: Option<String>,
}

fn lock(m: &Mutex<LoopState>) -> MutexGuard<'_, LoopState> {
    // A panic while holding the lock ends the process anyway; keep going
    // with the data rather than panic twice.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Delivery reports collected by the producer's callback.
#[derive(Default)]
struct ProducerCtx {
    reports: Mutex<Vec<Report>>,
    orphan: OrphanWatch,
}

struct Report {
    token: Token,
    failure: Option<Failure>,
}

struct Failure {
    error: String,
    topic: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

impl ClientContext for ProducerCtx {
    fn stats(&self, stats: Statistics) {
        self.orphan.observe(&stats);
    }
}

/// How long a client has had no broker left at all. librdkafka drops the
/// brokers a metadata response leaves out, and a restarting KRaft broker
/// (a single-broker cluster, or a whole cluster restarted at once) can
/// answer with an empty list. A client left like that re-bootstraps only
/// after a metadata request it can no longer send: it never recovers by
/// itself (a consumer group sat unassigned and a producer's queue stayed
/// full for minutes in the broker-restart test). The runner replaces such a
/// consumer, and exits, to be restarted, when it happens to the producer.
#[derive(Default)]
struct OrphanWatch(Mutex<Option<Instant>>);

impl OrphanWatch {
    fn observe(&self, stats: &Statistics) {
        let mut since = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if has_cluster_broker(stats) {
            *since = None;
        } else if since.is_none() {
            *since = Some(Instant::now());
        }
    }

    fn orphaned_for(&self) -> Option<Duration> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).map(|t| t.elapsed())
    }
}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, token: usize) {
        let failure = match result {
            Ok(_) => None,
            Err((e, msg)) => Some(Failure {
                error: e.to_string(),
                topic: msg.topic().to_string(),
                key: msg.key().map(<[u8]>::to_vec),
                payload: msg.payload().unwrap_or_default().to_vec(),
            }),
        };
        self.reports.lock().unwrap_or_else(|p| p.into_inner()).push(Report { token, failure });
    }
}

struct ConsumerCtx {
    shared: Arc<Shared>,
    /// Set when this consumer was replaced: its late callbacks are ignored.
    retired: AtomicBool,
    orphan: OrphanWatch,
}

impl ConsumerCtx {
    fn new(shared: Arc<Shared>) -> Self {
        ConsumerCtx { shared, retired: AtomicBool::new(false), orphan: OrphanWatch::default() }
    }
}

/// Whether a client's statistics list a real broker (bootstrap or learned),
/// not only the internal one and the logical group coordinator.
fn has_cluster_broker(stats: &Statistics) -> bool {
    stats.brokers.values().any(|b| matches!(b.source.as_str(), "configured" | "learned"))
}

impl ClientContext for ConsumerCtx {
    fn stats(&self, stats: Statistics) {
        if self.retired.load(Ordering::Relaxed) {
            return;
        }
        self.orphan.observe(&stats);
        let Some(topic) = stats.topics.get(&self.shared.input) else { return };
        for (id, p) in &topic.partitions {
            if *id >= 0 && p.consumer_lag >= 0 {
                self.shared
                    .metrics
                    .lag
                    .get_or_create(&PartitionLabel { partition: id.to_string() })
                    .set(p.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for ConsumerCtx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if self.retired.load(Ordering::Relaxed) {
            return;
        }
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                info!(partitions = ?partitions, "Partitions revoked; finishing their in-flight records");
                self.shared.metrics.rebalances.get_or_create(&KindLabel { kind: "revoke".into() }).inc();
                let mut st = lock(&self.shared.state);
                let lost = consumer.assignment_lost();
                if lost {
                    // The group already gave these partitions away (session
                    // timeout, usually a broker outage): a commit cannot
                    // succeed, and waiting on the producer here only keeps
                    // the consumer from rejoining. The in-flight records are
                    // reprocessed from the committed offsets.
                    warn!(partitions = ?partitions, "Partitions lost; their in-flight records will be reprocessed");
                    self.shared.metrics.rebalances.get_or_create(&KindLabel { kind: "lost".into() }).inc();
                }
                if lost || self.shared.abandoned.load(Ordering::Relaxed) {
                    // Nothing is finished: what was in flight is reprocessed
                    // by the next owner, and no transaction may commit it.
                    self.shared.abort_open_transaction(&mut st);
                } else if let Err(e) = self.shared.finish(consumer, &mut st, Duration::from_secs(30)) {
                    error!(
                        error = format!("{e:#}"),
                        "Could not finish in-flight records before revocation; they will be reprocessed"
                    );
                    if st.txn_open {
                        // Keep no outputs whose offsets are about to be dropped.
                        st.fatal.get_or_insert(format!("transaction failed at revocation: {e:#}"));
                        self.shared.abort_open_transaction(&mut st);
                    }
                }
                for p in &partitions {
                    st.tracker.forget(*p);
                    st.stored.remove(p);
                    st.txn_offsets.remove(p);
                    self.shared.metrics.lag.remove(&PartitionLabel { partition: p.to_string() });
                }
            }
            Rebalance::Assign(tpl) => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                info!(partitions = ?partitions, "Partitions assigned");
                self.shared.metrics.rebalances.get_or_create(&KindLabel { kind: "assign".into() }).inc();
                self.shared.ready.store(true, Ordering::Relaxed);
            }
            Rebalance::Error(e) => warn!(error = %e, "Rebalance failed"),
        }
    }
}

impl Shared {
    /// Abort the open transaction, if any: none of its outputs may commit.
    /// A failed abort is fatal.
    fn abort_open_transaction(&self, st: &mut LoopState) {
        if st.txn_open {
            if let Err(e) = self.producer.abort_transaction(Duration::from_secs(10)) {
                st.fatal.get_or_insert(format!("could not abort the transaction: {e}"));
            }
            st.txn_open = false;
        }
    }

    /// Flush the producer and make everything acknowledged so far durable:
    /// store and commit offsets (at-least-once) or commit the open
    /// transaction (exactly-once).
    fn finish(
        &self,
        consumer: &BaseConsumer<ConsumerCtx>,
        st: &mut LoopState,
        timeout: Duration,
    ) -> Result<()> {
        match self.mode {
            Delivery::AtLeastOnce => {
                self.producer.flush(timeout).context("flushing the producer")?;
                self.drain_reports(st);
                self.store(consumer, st);
                let mut tpl = TopicPartitionList::new();
                for (p, o) in &st.stored {
                    tpl.add_partition_offset(&self.input, *p, Offset::Offset(*o))?;
                }
                if tpl.count() > 0 {
                    consumer.commit(&tpl, CommitMode::Sync).context("committing offsets")?;
                }
            }
            Delivery::ExactlyOnce => self.commit_transaction(consumer, st, timeout)?,
        }
        Ok(())
    }

    fn commit_transaction(
        &self,
        consumer: &BaseConsumer<ConsumerCtx>,
        st: &mut LoopState,
        timeout: Duration,
    ) -> Result<()> {
        if !st.txn_open {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &st.txn_offsets {
            tpl.add_partition_offset(&self.input, *p, Offset::Offset(*o))?;
        }
        if tpl.count() > 0 {
            let meta = consumer.group_metadata().context("no consumer group metadata")?;
            self.producer
                .send_offsets_to_transaction(&tpl, &meta, timeout)
                .context("adding offsets to the transaction")?;
        }
        self.producer.commit_transaction(timeout).context("committing the transaction")?;
        st.txn_open = false;
        self.drain_reports(st);
        st.tracker.committable_timed(|d| self.metrics.latency.observe(d.as_secs_f64()));
        st.txn_offsets.clear();
        Ok(())
    }

    /// Apply delivery reports to the tracker. A failed output is re-sent to
    /// the dead-letter topic; a failed dead letter is fatal.
    fn drain_reports(&self, st: &mut LoopState) {
        let reports =
            std::mem::take(&mut *self.producer.context().reports.lock().unwrap_or_else(|p| p.into_inner()));
        for r in reports {
            if let Some(f) = r.failure {
                if f.topic == self.dead_letter.as_str() || self.mode == Delivery::ExactlyOnce {
                    st.fatal.get_or_insert(format!("producing to {} failed: {}", f.topic, f.error));
                    continue;
                }
                warn!(topic = %f.topic, error = %f.error, "An output could not be produced; sending it to the dead-letter topic");
                let headers = OwnedHeaders::new()
                    .insert(Header { key: "vigil.stage", value: Some("produce") })
                    .insert(Header { key: "vigil.reason", value: Some(f.error.as_str()) });
                st.tracker.add_output(r.token);
                self.metrics.dead_lettered.get_or_create(&StageLabel { stage: "produce".into() }).inc();
                let mut rec = BaseRecord::with_opaque_to(self.dead_letter.as_str(), r.token)
                    .payload(f.payload.as_slice())
                    .headers(headers);
                if let Some(k) = &f.key {
                    rec = rec.key(k.as_slice());
                }
                if let Err(e) = send(&self.producer, rec) {
                    st.fatal.get_or_insert(format!("could not enqueue a dead letter: {e}"));
                }
            }
            st.tracker.ack(r.token);
        }
    }

    /// At-least-once: store the offsets whose records are done.
    fn store(&self, consumer: &BaseConsumer<ConsumerCtx>, st: &mut LoopState) {
        let metrics = &self.metrics;
        for (p, next) in st.tracker.committable_timed(|d| metrics.latency.observe(d.as_secs_f64())) {
            // rd_kafka_offsets_store takes the next offset to read, as we
            // compute it. (rd_kafka_offset_store, behind `store_offset`, adds
            // one itself: passing it `next` skipped a record at every handover.)
            let mut tpl = TopicPartitionList::new();
            let stored = tpl
                .add_partition_offset(&self.input, p, Offset::Offset(next))
                .and_then(|()| consumer.store_offsets(&tpl));
            match stored {
                Ok(()) => {
                    st.stored.insert(p, next);
                }
                // The partition was revoked meanwhile: the next owner re-reads.
                Err(e) => warn!(partition = p, error = %e, "Could not store an offset"),
            }
        }
        self.metrics.in_flight.set(st.tracker.in_flight() as i64);
    }
}

/// Run until SIGTERM/SIGINT or a fatal error.
pub fn run(opts: Options) -> Result<()> {
    let text = std::fs::read_to_string(&opts.pipeline_file)
        .with_context(|| format!("cannot read {}", opts.pipeline_file.display()))?;
    let pipeline: Pipeline = vigil_crds::manifest::single_pipeline(&text)?;
    let name = pipeline.metadata.name.clone().unwrap_or_default();
    let namespace = opts
        .namespace
        .clone()
        .or_else(|| pipeline.metadata.namespace.clone())
        .unwrap_or_else(|| "default".into());
    let spec = &pipeline.spec;
    let settings =
        KafkaSettings::resolve(&spec.kafka, opts.bootstrap.as_deref(), opts.secret_dir.as_deref())?;
    let group = opts.group.clone().unwrap_or_else(|| Pipeline::consumer_group(&namespace, &name));
    let mut engine = Engine::new(spec, None, None).map_err(|e| anyhow::anyhow!("pipeline {name}: {e}"))?;
    let metrics = Arc::new(Metrics::new(&namespace, &name));

    let mut pc = settings.client_config();
    pc.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("queue.buffering.max.kbytes", "65536")
        .set("message.max.bytes", spec.max_output_bytes().to_string())
        .set("compression.type", "lz4")
        .set("statistics.interval.ms", "5000");
    if spec.delivery == Delivery::ExactlyOnce {
        pc.set("transactional.id", format!("{group}.{}", opts.instance));
    }
    let producer: Arc<BaseProducer<ProducerCtx>> =
        Arc::new(pc.create_with_context(ProducerCtx::default()).context("creating the Kafka producer")?);
    if spec.delivery == Delivery::ExactlyOnce {
        producer.init_transactions(Duration::from_secs(60)).context("initialising Kafka transactions")?;
    }

    let shared = Arc::new(Shared {
        metrics: metrics.clone(),
        stop: AtomicBool::new(false),
        ready: AtomicBool::new(false),
        abandoned: AtomicBool::new(false),
        heartbeat: AtomicU64::new(now_secs()),
        state: Mutex::new(LoopState {
            tracker: Tracker::default(),
            stored: HashMap::new(),
            txn_offsets: HashMap::new(),
            txn_open: false,
            fatal: None,
        }),
        producer: producer.clone(),
        mode: spec.delivery,
        input: spec.input.topic.name.clone(),
        dead_letter: spec.dead_letter.name.clone(),
        max_output: spec.max_output_bytes(),
    });

    let mut cc = settings.client_config();
    cc.set("group.id", &group)
        .set("enable.auto.commit", if spec.delivery == Delivery::AtLeastOnce { "true" } else { "false" })
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("statistics.interval.ms", "5000")
        .set("queued.max.messages.kbytes", "32768");
    let new_consumer = || -> Result<BaseConsumer<ConsumerCtx>> {
        let consumer: BaseConsumer<ConsumerCtx> = cc
            .create_with_context(ConsumerCtx::new(shared.clone()))
            .context("creating the Kafka consumer")?;
        consumer.subscribe(&[&spec.input.topic.name]).context("subscribing to the input topic")?;
        Ok(consumer)
    };
    let mut consumer = new_consumer()?;

    let http = crate::http::serve(opts.listen, shared_http(&shared))?;
    install_signal_handlers(&shared)?;
    info!(pipeline = %name, namespace = %namespace, group = %group, input = %spec.input.topic.name,
        output = %spec.output.name, dead_letter = %spec.dead_letter.name, delivery = ?spec.delivery,
        listen = %opts.listen,
        detector_bytes_per_key = engine.detector().bytes_per_key(), max_keys = spec.detector.max_keys,
        "Runner started");

    // Every log line of the loop carries the pipeline's namespace and name.
    let span = tracing::info_span!("pipeline", namespace = %namespace, pipeline = %name);
    let result = loop {
        match span.in_scope(|| process_loop(&shared, &consumer, &mut engine, spec, opts.batch)) {
            Ok(LoopExit::Orphaned) => {
                let _span = span.enter();
                warn!(
                    "The Kafka consumer has had no broker for {ORPHAN_LIMIT:?}; replacing it (in-flight records are reprocessed)"
                );
                shared
                    .metrics
                    .rebalances
                    .get_or_create(&KindLabel { kind: "consumer_replaced".into() })
                    .inc();
                shared.ready.store(false, Ordering::Relaxed);
                consumer.context().retired.store(true, Ordering::Relaxed);
                forget_everything(&shared);
                match new_consumer() {
                    // Closing the old consumer waits for librdkafka; it may
                    // never finish in this state, so not on this thread.
                    Ok(fresh) => {
                        close_in_background(std::mem::replace(&mut consumer, fresh));
                    }
                    Err(e) => break Err(e),
                }
            }
            Ok(LoopExit::Stopped) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    shared.ready.store(false, Ordering::Relaxed);
    if result.is_err() {
        shared.abandoned.store(true, Ordering::Relaxed);
    }
    let closing = {
        let mut st = lock(&shared.state);
        match &result {
            Ok(()) => shared.finish(&consumer, &mut st, Duration::from_secs(30)),
            Err(_) => Ok(()),
        }
    };
    let closed = close_in_background(consumer);
    if closed.recv_timeout(Duration::from_secs(30)).is_err() {
        warn!("The Kafka consumer did not close within 30 s; exiting without waiting for it");
    }
    drop(http);
    let counts = engine.counts();
    info!(
        records_in = counts.records_in,
        records_out = counts.records_out,
        anomalies = counts.anomalies,
        dead_lettered = counts.dead_lettered,
        filtered = counts.filtered,
        "Runner stopped"
    );
    result.and(closing)
}

/// Leave the group and close a consumer on a thread of its own: librdkafka's
/// close can wait forever on a client that lost its brokers. The receiver
/// hears once it is closed.
fn close_in_background(consumer: BaseConsumer<ConsumerCtx>) -> std::sync::mpsc::Receiver<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("consumer-close".into()).spawn(move || {
        consumer.unsubscribe();
        drop(consumer);
        let _ = tx.send(());
    });
    if let Err(e) = spawned {
        warn!(error = %e, "Cannot start a thread to close the Kafka consumer");
    }
    rx
}

fn shared_http(shared: &Arc<Shared>) -> crate::http::Health {
    let s = shared.clone();
    let r = shared.clone();
    crate::http::Health {
        metrics: shared.metrics.clone(),
        live: Arc::new(move || now_secs().saturating_sub(s.heartbeat.load(Ordering::Relaxed)) < 60),
        ready: Arc::new(move || r.ready.load(Ordering::Relaxed) && !r.stop.load(Ordering::Relaxed)),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn install_signal_handlers(shared: &Arc<Shared>) -> Result<()> {
    let s = shared.clone();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return error!(error = %e, "Cannot watch for signals"),
        };
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) =
                (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
            else {
                return error!("Cannot install signal handlers");
            };
            tokio::select! {
                _ = term.recv() => info!("SIGTERM: draining in-flight records and committing"),
                _ = int.recv() => info!("SIGINT: draining in-flight records and committing"),
            }
            s.stop.store(true, Ordering::Relaxed);
        });
    })?;
    Ok(())
}

/// Most records taken from the consumer between two rounds of delivery
/// reports and offset storing.
const MAX_BATCH: usize = 512;

/// How long the consumer may have no broker before it is replaced (the
/// statistics that tell arrive every 5 s).
const ORPHAN_LIMIT: Duration = Duration::from_secs(10);

/// Why the processing loop returned.
enum LoopExit {
    /// SIGTERM/SIGINT.
    Stopped,
    /// The consumer lost every broker and must be replaced.
    Orphaned,
}

/// Drop all in-flight work: the partitions are re-read from their committed
/// offsets, and an open transaction must not commit any of it.
fn forget_everything(shared: &Shared) {
    let mut st = lock(&shared.state);
    st.tracker.forget_all();
    st.stored.clear();
    st.txn_offsets.clear();
    shared.abort_open_transaction(&mut st);
    shared.metrics.in_flight.set(0);
}

fn process_loop(
    shared: &Arc<Shared>,
    consumer: &BaseConsumer<ConsumerCtx>,
    engine: &mut Engine,
    spec: &vigil_crds::PipelineSpec,
    batch: usize,
) -> Result<LoopExit> {
    let producer = &shared.producer;
    let output = spec.output.name.as_str();
    let mut last_counts = engine.counts();
    let mut batch_started = Instant::now();
    let mut in_batch = 0usize;
    let mut last_store = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        shared.heartbeat.store(now_secs(), Ordering::Relaxed);
        if consumer.context().orphan.orphaned_for().is_some_and(|d| d >= ORPHAN_LIMIT) {
            return Ok(LoopExit::Orphaned);
        }
        if producer.context().orphan.orphaned_for().is_some_and(|d| d >= ORPHAN_LIMIT) {
            // What it holds cannot be delivered, and a replacement could not
            // take over its idempotence or transaction state: start afresh
            // from the committed offsets (in a pod, the container restarts).
            bail!(
                "the Kafka producer has had no broker for {ORPHAN_LIMIT:?} and cannot recover; \
                 exiting so that the runner restarts with fresh clients"
            );
        }
        // Take up to MAX_BATCH records that are already fetched, then do the
        // per-batch work (delivery reports, offsets) once. The state lock is
        // never held across poll: poll runs the rebalance callback.
        let mut wait = Duration::from_millis(50);
        // One clock read per batch, taken when its first record arrives.
        let mut batch_clock = None;
        for _ in 0..MAX_BATCH {
            let msg = consumer.poll(wait);
            wait = Duration::ZERO;
            let Some(msg) = msg else { break };
            let mut st = lock(&shared.state);
            if let Some(f) = st.fatal.take() {
                bail!(f);
            }
            match msg {
                Err(e) => {
                    warn!(error = %e, "Consumer error");
                    break;
                }
                Ok(m) => {
                    if shared.mode == Delivery::ExactlyOnce && !st.txn_open {
                        producer.begin_transaction().context("beginning a transaction")?;
                        st.txn_open = true;
                        batch_started = Instant::now();
                        in_batch = 0;
                    }
                    let now = *batch_clock.get_or_insert_with(Instant::now);
                    process_message(shared, now, &mut st, engine, &m, output)?;
                    in_batch += 1;
                    if shared.mode == Delivery::ExactlyOnce {
                        st.txn_offsets.insert(m.partition(), m.offset() + 1);
                        if in_batch >= batch {
                            break;
                        }
                    }
                }
            }
        }
        let mut st = lock(&shared.state);
        if let Some(f) = st.fatal.take() {
            bail!(f);
        }
        producer.poll(Duration::ZERO);
        match shared.mode {
            Delivery::AtLeastOnce => {
                shared.drain_reports(&mut st);
                if last_store.elapsed() >= Duration::from_millis(20) {
                    shared.store(consumer, &mut st);
                    last_store = Instant::now();
                }
            }
            Delivery::ExactlyOnce => {
                if st.txn_open && (in_batch >= batch || batch_started.elapsed() >= Duration::from_millis(100))
                {
                    if let Err(e) = shared.commit_transaction(consumer, &mut st, Duration::from_secs(60)) {
                        // The transaction's outputs are discarded by the broker;
                        // a restart resumes from the last committed offsets.
                        let _ = producer.abort_transaction(Duration::from_secs(30));
                        return Err(e);
                    }
                }
            }
        }
        drop(st);
        let c = engine.counts();
        let m = &shared.metrics;
        m.records_in.inc_by(c.records_in - last_counts.records_in);
        m.records_out.inc_by(c.records_out - last_counts.records_out);
        m.anomalies.inc_by(c.anomalies - last_counts.anomalies);
        m.filtered.inc_by(c.filtered - last_counts.filtered);
        m.detector_keys.set(engine.detector().keys().0 as i64);
        last_counts = c;
    }
    Ok(LoopExit::Stopped)
}

fn process_message(
    shared: &Shared,
    now: Instant,
    st: &mut LoopState,
    engine: &mut Engine,
    m: &BorrowedMessage<'_>,
    output: &str,
) -> Result<()> {
    let dead_letter_topic = shared.dead_letter.as_str();
    let spec_limit = shared.max_output;
    let token = st.tracker.begin_at(m.partition(), m.offset(), now);
    let payload = m.payload().unwrap_or_default();
    let ts = m.timestamp().to_millis().unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    let meta = Meta { key: m.key(), ts_ms: ts };
    let mut failure: Option<anyhow::Error> = None;
    let producer = &shared.producer;
    engine.process(payload, meta, &mut |ev| {
        if failure.is_some() {
            return;
        }
        let sent = match ev {
            Event::Output(o) => {
                shared.metrics.score.observe(o.score.unwrap_or(0.0));
                if o.is_anomaly && anomaly_log_allowed() {
                    info!(key = %o.key, score = o.score.unwrap_or(0.0), partition = m.partition(), offset = m.offset(),
                        "{ANOMALY_LOG_MESSAGE}");
                }
                let mut rec = BaseRecord::with_opaque_to(output, token).payload(o.json).timestamp(ts);
                if let Some(k) = m.key() {
                    rec = rec.key(k);
                }
                if let Some(h) = m.headers() {
                    rec = rec.headers(h.detach());
                }
                match send(producer, rec) {
                    // Too big to produce: the input goes to the dead-letter
                    // topic instead, so nothing is lost and nothing crashes.
                    Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                        shared.metrics.dead_lettered.get_or_create(&StageLabel { stage: "produce".into() }).inc();
                        let reason = format!(
                            "the scored record is {} bytes, more than the output topic takes ({})",
                            o.json.len(),
                            spec_limit
                        );
                        send(producer, dead_letter(dead_letter_topic, token, m, "produce", &reason))
                    }
                    other => other,
                }
            }
            Event::Rejected(r) => {
                shared.metrics.dead_lettered.get_or_create(&StageLabel { stage: r.stage.clone() }).inc();
                send(producer, dead_letter(dead_letter_topic, token, m, &r.stage, &r.reason))
            }
        };
        match sent {
            Ok(()) => st.tracker.add_output(token),
            Err(e) => failure = Some(anyhow::anyhow!("could not enqueue a record: {e}")),
        }
    });
    match failure {
        // Not dispatched: the record stays pending and its offset is never
        // stored; the caller stops the runner.
        Some(e) => Err(e),
        None => {
            st.tracker.dispatched(token);
            Ok(())
        }
    }
}

/// The log message of a flagged record (the operator's Loki rule counts it).
pub const ANOMALY_LOG_MESSAGE: &str = "Anomaly detected";

/// At most this many "Anomaly detected" log lines per second: enough for
/// the Loki anomaly-rate rule and for a human, not a flood when a whole
/// stream turns anomalous (the `vigil_anomalies_total` metric counts all).
const ANOMALY_LOGS_PER_SECOND: u64 = 50;

fn anomaly_log_allowed() -> bool {
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let now = now_secs();
    if WINDOW.swap(now, Ordering::Relaxed) != now {
        COUNT.store(0, Ordering::Relaxed);
    }
    COUNT.fetch_add(1, Ordering::Relaxed) < ANOMALY_LOGS_PER_SECOND
}

/// Enqueue a record, waiting for room when the producer's queue is full.
fn send(
    producer: &BaseProducer<ProducerCtx>,
    mut rec: BaseRecord<'_, [u8], [u8], usize>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// A dead letter: the input's bytes, key, headers and timestamp, with where
/// it came from and why in `vigil.*` headers.
fn dead_letter<'a>(
    topic: &'a str,
    token: Token,
    m: &'a BorrowedMessage<'_>,
    stage: &str,
    reason: &str,
) -> BaseRecord<'a, [u8], [u8], usize> {
    let partition = m.partition().to_string();
    let offset = m.offset().to_string();
    let mut headers = m.headers().map(|h| h.detach()).unwrap_or_default();
    for (k, v) in [
        ("vigil.stage", stage),
        ("vigil.reason", reason),
        ("vigil.source.topic", m.topic()),
        ("vigil.source.partition", partition.as_str()),
        ("vigil.source.offset", offset.as_str()),
    ] {
        headers = headers.insert(Header { key: k, value: Some(v) });
    }
    let mut rec =
        BaseRecord::with_opaque_to(topic, token).payload(m.payload().unwrap_or_default()).headers(headers);
    if let Some(ts) = m.timestamp().to_millis() {
        rec = rec.timestamp(ts);
    }
    if let Some(k) = m.key() {
        rec = rec.key(k);
    }
    rec
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::statistics::Broker;

    fn stats(sources: &[&str]) -> Statistics {
        let mut s = Statistics::default();
        for (i, source) in sources.iter().enumerate() {
            s.brokers.insert(format!("b{i}"), Broker { source: source.to_string(), ..Default::default() });
        }
        s
    }

    #[test]
    fn a_client_left_with_only_internal_and_coordinator_brokers_is_orphaned() {
        assert!(has_cluster_broker(&stats(&["internal", "configured"])), "bootstrap broker, before metadata");
        assert!(
            has_cluster_broker(&stats(&["internal", "learned", "logical"])),
            "a learned broker, even down"
        );
        assert!(!has_cluster_broker(&stats(&["internal", "logical"])), "what the broker-restart test saw");
        assert!(!has_cluster_broker(&stats(&[])));
    }
}
