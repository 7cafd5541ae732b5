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
//! Processing: with one thread, the consumer's thread processes each record
//! with one engine; with more (`--threads`, `spec.threads`, default the
//! cores the container may use), partitions are spread over processing
//! threads with an engine each (`pool.rs`). librdkafka's threads do the
//! network I/O.
//!
//! Broker outages: partitions lost to a session timeout are let go at once
//! (nothing can be committed for them) and re-read from the committed
//! offsets when the group is joined again. A consumer that librdkafka left
//! with no broker at all (it happens when a restarting broker answers
//! metadata with an empty broker list) is replaced by a new one, in-flight
//! work forgotten; a producer left like that makes the runner exit, to be
//! restarted, without committing anything more; see `OrphanWatch`.

pub mod dead_letter;
pub mod kafka_config;
pub mod offsets;
pub mod pool;
pub mod status;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{error, info, warn};
use vigil_crds::{Delivery, Pipeline};

use crate::codec::Meta;
use crate::engine::{Engine, Event};
use crate::metrics::{KindLabel, Metrics, PartitionLabel, StageLabel};
use dead_letter::{Letter, RECORD_OVERHEAD, STUB_LIMIT};
use kafka_config::KafkaSettings;
use offsets::{Token, Tracker};
use status::{Halt, RecordRef, RunnerStatus};
use vigil_crds::kafka_access::AccessProblem;

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
    /// First wait before consuming again after a failure stopped the
    /// runner (doubling up to a minute).
    pub stall_backoff: Duration,
    /// The model registry topic (for a `detector.modelRef`).
    pub model_registry: String,
    /// Processing threads; `None`: `spec.threads`, else the cores the
    /// container may use.
    pub threads: Option<usize>,
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
    /// The largest record the output topic takes: the producer's
    /// `message.max.bytes`, lowered to the topic's `max.message.bytes` when
    /// the broker tells it, and after the broker refused a record as too large.
    output_limit: AtomicUsize,
    /// The same for the dead-letter topic.
    dead_letter_limit: AtomicUsize,
    /// What `/status` reports.
    status: Mutex<RunnerStatus>,
}

/// What the rebalance callback must be able to finish.
struct LoopState {
    tracker: Tracker,
    /// At-least-once: the offsets stored per partition.
    stored: HashMap<i32, i64>,
    /// Exactly-once: next offset per partition consumed in the open transaction.
    txn_offsets: HashMap<i32, i64>,
    txn_open: bool,
    /// Set when a failure means the runner must stop consuming without
    /// committing anything more.
    halt: Option<Halt>,
    /// With several processing threads: the work routed to them.
    pool: Option<pool::PoolState>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock ends the process anyway; keep going
    // with the data rather than panic twice.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Delivery reports collected by the producer's callback.
#[derive(Default)]
struct ProducerCtx {
    reports: Mutex<Vec<Report>>,
    orphan: OrphanWatch,
    /// Refusals by Kafka seen by any of the runner's clients.
    access: status::AccessWatch,
}

struct Report {
    token: Token,
    failure: Option<Failure>,
}

struct Failure {
    error: String,
    code: Option<RDKafkaErrorCode>,
    topic: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
}

impl ClientContext for ProducerCtx {
    fn stats(&self, stats: Statistics) {
        self.orphan.observe(&stats);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(&self.access, "producer", &error, reason);
    }
}

/// Whether an error code is Kafka refusing the runner, and how.
fn refusal(code: Option<RDKafkaErrorCode>) -> Option<AccessProblem> {
    code.and_then(|c| AccessProblem::from_code(c as i32))
}

/// A client-level error from librdkafka: logged, and kept for `/status`
/// when it is Kafka refusing the runner (which retrying does not cure).
fn client_error(access: &status::AccessWatch, client: &str, error: &KafkaError, reason: &str) {
    match refusal(error.rdkafka_error_code()) {
        Some(kind) => {
            error!(client, error = %error, reason, "Kafka refuses the runner ({})", kind.hint());
            access.refused(kind, reason);
        }
        None => warn!(client, error = %error, reason, "Kafka client error"),
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
                code: e.rdkafka_error_code(),
                topic: msg.topic().to_string(),
                key: msg.key().map(<[u8]>::to_vec),
                payload: msg.payload().unwrap_or_default().to_vec(),
                headers: msg.headers().map(|h| h.detach()),
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
    fn error(&self, error: KafkaError, reason: &str) {
        client_error(&self.shared.producer.context().access, "consumer", &error, reason);
    }

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
                // What the processing threads hold of these partitions is
                // finished (or failed) first.
                self.shared.quiesce(&mut st);
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
                        st.halt.get_or_insert(Halt::new(
                            format!("transaction failed at revocation: {e:#}"),
                            None,
                        ));
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
                lock(&self.shared.status).running();
            }
            Rebalance::Error(e) => warn!(error = %e, "Rebalance failed"),
        }
    }
}

impl Shared {
    /// Abort the open transaction, if any: none of its outputs may commit.
    /// A failed abort halts the loop.
    fn abort_open_transaction(&self, st: &mut LoopState) {
        // No thread may still be adding outputs to the transaction.
        self.quiesce(st);
        if st.txn_open {
            if let Err(e) = self.producer.abort_transaction(Duration::from_secs(10)) {
                st.halt.get_or_insert(Halt::new(format!("could not abort the transaction: {e}"), None));
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
        self.quiesce(st);
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
        // Every record whose offset the transaction carries has its outputs
        // in it.
        self.quiesce(st);
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

    /// Apply delivery reports to the tracker. An output the broker refused
    /// for what it is (too large, invalid) is dead-lettered instead; a dead
    /// letter refused as too large is sent again cut to a stub. Any other
    /// failure (the topic cannot be written at all), and any failure inside
    /// a transaction, halts the loop: nothing more is committed.
    fn drain_reports(&self, st: &mut LoopState) {
        let reports =
            std::mem::take(&mut *self.producer.context().reports.lock().unwrap_or_else(|p| p.into_inner()));
        for r in reports {
            if let Some(f) = r.failure {
                // A record no longer tracked was forgotten (revoked, or after
                // a halt; purged outputs report here): someone reprocesses it.
                let Some((partition, offset)) = st.tracker.source(r.token) else { continue };
                let record = Some(RecordRef { topic: self.input.clone(), partition, offset });
                if let Some(halt) = self.redeliver(st, r.token, &f, record) {
                    st.halt.get_or_insert(halt);
                    continue;
                }
            }
            st.tracker.ack(r.token);
        }
    }

    /// Handle one failed delivery: dead-letter it (`None`, the token has a
    /// new output in flight) or say why the loop must halt.
    fn redeliver(
        &self,
        st: &mut LoopState,
        token: Token,
        f: &Failure,
        record: Option<RecordRef>,
    ) -> Option<Halt> {
        let size_error = f.code.is_some_and(dead_letter::is_size_error);
        let to_dead_letter = f.topic == self.dead_letter;
        note_refusal(self, &f.topic, f.code, &f.error);
        let wire = f.payload.len() + f.key.as_ref().map_or(0, Vec::len) + headers_size(f.headers.as_ref());
        if size_error {
            // The topic takes less than the runner thought: remember it.
            let limit = if to_dead_letter { &self.dead_letter_limit } else { &self.output_limit };
            let lowered = (wire / 2).max(STUB_LIMIT);
            if limit.fetch_min(lowered, Ordering::Relaxed) > lowered {
                warn!(topic = %f.topic, limit = lowered, "The broker refused a record as too large; lowering the record limit for the topic");
            }
        }
        if self.mode == Delivery::ExactlyOnce {
            // The transaction cannot commit; its records are processed again
            // from the committed offsets, with the lowered limit if that was
            // the cause.
            let mut halt = Halt::new(format!("producing to {} failed: {}", f.topic, f.error), record);
            halt.retry_now = size_error;
            return Some(halt);
        }
        let headers: Vec<(&str, Option<&[u8]>)> =
            f.headers.as_ref().map(|h| h.iter().map(|h| (h.key, h.value)).collect()).unwrap_or_default();
        let letter = if to_dead_letter {
            let already_stub =
                f.payload.len() <= STUB_LIMIT && headers.iter().any(|(k, _)| *k == dead_letter::TRUNCATED);
            if !size_error || already_stub {
                return Some(Halt::new(
                    format!("the dead-letter topic {} cannot take records: {}", f.topic, f.error),
                    record,
                ));
            }
            // Keep the `vigil.*` context; what was cut before stays cut.
            let (own, input): (Vec<_>, Vec<_>) = headers.iter().partition(|(k, _)| k.starts_with("vigil."));
            let original = own
                .iter()
                .find(|(k, _)| *k == dead_letter::ORIGINAL_SIZE)
                .and_then(|(_, v)| v.map(|v| String::from_utf8_lossy(v).into_owned()));
            let vigil: Vec<(String, String)> = own
                .iter()
                .filter(|(k, _)| !matches!(*k, dead_letter::TRUNCATED | dead_letter::ORIGINAL_SIZE))
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.unwrap_or_default()).into_owned()))
                .collect();
            let mut letter = dead_letter::fit(STUB_LIMIT, &f.payload, f.key.as_deref(), &input, vigil);
            if let (Some(size), Some(h)) =
                (original, letter.headers.iter_mut().find(|(k, _)| k == dead_letter::ORIGINAL_SIZE))
            {
                h.1 = size;
            }
            letter
        } else {
            if !f.code.is_some_and(dead_letter::is_record_error) {
                return Some(Halt::new(
                    format!("the output topic {} cannot take records: {}", f.topic, f.error),
                    record,
                ));
            }
            warn!(topic = %f.topic, error = %f.error, record = ?record, "The broker refused a scored record; sending its input to the dead-letter topic");
            let vigil = dead_letter::context(
                "produce",
                &format!("the output topic refused the scored record: {}", f.error),
                &self.input,
                record.as_ref().map(|r| (r.partition, r.offset)),
            );
            dead_letter::fit(
                self.dead_letter_limit.load(Ordering::Relaxed),
                &f.payload,
                f.key.as_deref(),
                &headers,
                vigil,
            )
        };
        self.metrics.dead_lettered.get_or_create(&StageLabel { stage: "produce".into() }).inc();
        if letter.truncated() {
            self.metrics.dead_letters_truncated.inc();
        }
        let input_headers = if letter.keep_input_headers {
            f.headers.as_ref().map(|h| {
                h.iter()
                    .filter(|h| !h.key.starts_with("vigil."))
                    .fold(OwnedHeaders::new(), |acc, h| acc.insert(h))
            })
        } else {
            None
        };
        let rec = letter_record(self.dead_letter.as_str(), token, &letter, input_headers, None);
        match send(&self.producer, rec) {
            Ok(()) => {
                st.tracker.add_output(token);
                None
            }
            Err(e) => Some(Halt::new(format!("could not enqueue a dead letter: {e}"), record)),
        }
    }

    /// With processing threads: send them what was routed and wait until
    /// they reported all of it. Without: nothing to wait for.
    fn quiesce(&self, st: &mut LoopState) {
        let Some(mut pool) = st.pool.take() else { return };
        pool.dispatch();
        while let Some(done) = pool.next_report(true) {
            self.apply(st, done);
        }
        st.pool = Some(pool);
    }

    /// Apply the reports the processing threads have sent so far.
    fn collect(&self, st: &mut LoopState) {
        let Some(mut pool) = st.pool.take() else { return };
        while let Some(done) = pool.next_report(false) {
            self.apply(st, done);
        }
        st.pool = Some(pool);
    }

    fn apply(&self, st: &mut LoopState, done: pool::Done) {
        match done {
            pool::Done::Records(results) => {
                for (token, r) in results {
                    match r {
                        Ok(outputs) => st.tracker.dispatched_with(token, outputs),
                        Err(h) => {
                            st.halt.get_or_insert(h);
                        }
                    }
                }
            }
            pool::Done::Swapped { name, version, result } => self.swapped(&name, version, result),
        }
    }

    /// A model version was swapped in (by the engine, or by every thread).
    fn swapped(&self, name: &str, version: i64, result: Result<(), String>) {
        match result {
            Ok(()) => {
                let mut status = lock(&self.status);
                if status.model_version != Some(version) {
                    info!(model = %name, version, "Serving a new model version");
                    status.model_version = Some(version);
                    self.metrics.model_version.set(version);
                }
            }
            Err(e) => {
                error!(model = %name, version, error = %e, "Cannot serve this model version; keeping the current one")
            }
        }
    }

    /// Add what `engine` did since `last` to the metrics; returns its counts.
    fn count(&self, engine: &Engine, last: crate::engine::Counts) -> crate::engine::Counts {
        let c = engine.counts();
        let m = &self.metrics;
        m.records_in.inc_by(c.records_in - last.records_in);
        m.records_out.inc_by(c.records_out - last.records_out);
        m.anomalies.inc_by(c.anomalies - last.anomalies);
        m.filtered.inc_by(c.filtered - last.filtered);
        c
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
    // A trained model comes from the registry; the runner serves the pinned
    // version or the Model's serving version, and follows the latter.
    let watcher = match &spec.detector.model_ref {
        Some(r) => Some((
            crate::models::registry::Watcher::start(
                &settings,
                &opts.model_registry,
                &namespace,
                &r.name,
                r.version,
            )?,
            r.clone(),
        )),
        None => None,
    };
    let model = match &watcher {
        Some((w, r)) => {
            let which =
                r.version.map(|v| format!("version {v}")).unwrap_or_else(|| "its serving version".into());
            let started = Instant::now();
            loop {
                if let Some(m) = w.next(Duration::from_secs(10)) {
                    break Some(m);
                }
                info!(model = %r.name, registry = %opts.model_registry, waited_s = started.elapsed().as_secs(),
                    "Waiting for Model {} ({which}) in the model registry", r.name);
            }
        }
        None => None,
    };
    let threads = pool::resolve_threads(opts.threads, spec.threads);
    let pool_model = if threads > 1 { model.clone() } else { None };
    let mut engine =
        Engine::with_model(spec, None, None, model).map_err(|e| anyhow::anyhow!("pipeline {name}: {e}"))?;
    let metrics = Arc::new(Metrics::new(&namespace, &name));
    let limits = record_limits(&settings, spec);

    let mut pc = settings.client_config();
    pc.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("queue.buffering.max.kbytes", "65536")
        .set("message.max.bytes", spec.max_output_bytes().to_string())
        // A batch larger than a topic's max.message.bytes is refused whole.
        .set("batch.size", limits.output.min(limits.dead_letter).min(1_000_000).to_string())
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
            halt: None,
            pool: None,
        }),
        producer: producer.clone(),
        mode: spec.delivery,
        input: spec.input.topic.name.clone(),
        dead_letter: spec.dead_letter.name.clone(),
        output_limit: AtomicUsize::new(limits.output),
        dead_letter_limit: AtomicUsize::new(limits.dead_letter),
        status: Mutex::new(RunnerStatus {
            model_version: engine.detector().and_then(|d| d.model_version()),
            ..RunnerStatus::default()
        }),
    });
    metrics.model_version.set(engine.detector().and_then(|d| d.model_version()).unwrap_or(0));

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
        detector_bytes_per_key = engine.detector().map_or(0, |d| d.bytes_per_key()), max_keys = spec.detector.max_keys,
        threads, "Runner started");

    // Every log line of the loop carries the pipeline's namespace and name.
    let span = tracing::info_span!("pipeline", namespace = %namespace, pipeline = %name);
    let workers = if threads > 1 {
        let (workers, state) = span.in_scope(|| pool::Pool::start(threads, &shared, spec, pool_model))?;
        lock(&shared.state).pool = Some(state);
        span.in_scope(|| pool::announce(threads));
        Some(workers)
    } else {
        None
    };
    let mut backoff = opts.stall_backoff;
    let mut last_halt: Option<Instant> = None;
    let result = loop {
        let models = watcher.as_ref().map(|(w, _)| w);
        match span.in_scope(|| {
            process_loop(&shared, &consumer, &mut engine, spec, opts.batch, models, workers.as_ref())
        }) {
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
            Ok(LoopExit::Halted(halt)) => {
                let _span = span.enter();
                if let Some((code, message)) = producer.client().fatal_error() {
                    // Nothing this producer holds can be delivered any more.
                    break Err(anyhow::anyhow!(
                        "the Kafka producer failed for good ({code}: {message}) after: {halt}"
                    ));
                }
                if last_halt.is_some_and(|t: Instant| t.elapsed() > Duration::from_secs(600)) {
                    backoff = opts.stall_backoff;
                }
                last_halt = Some(Instant::now());
                let wait = if halt.retry_now { Duration::ZERO } else { backoff };
                if !halt.retry_now {
                    backoff = (backoff * 2).min(MAX_STALL_BACKOFF);
                }
                error!(
                    error = %halt.reason,
                    topic = halt.record.as_ref().map(|r| r.topic.as_str()),
                    partition = halt.record.as_ref().map(|r| r.partition),
                    offset = halt.record.as_ref().map(|r| r.offset),
                    retry_in_s = wait.as_secs(),
                    "Stopped consuming without committing past the failure; will consume again from the committed offsets"
                );
                lock(&shared.status).stalled(&halt, wait.as_secs());
                shared.metrics.stalled.set(1);
                shared.metrics.stalls.inc();
                shared.ready.store(false, Ordering::Relaxed);
                // The retired consumer keeps its partitions while the runner
                // waits (another replica would hit the same failure); it is
                // closed once a fresh one joins.
                consumer.context().retired.store(true, Ordering::Relaxed);
                forget_everything(&shared);
                if shared.mode == Delivery::AtLeastOnce {
                    // Outputs still queued belong to forgotten work; they are
                    // produced again after the retry.
                    producer.purge(PurgeConfig::default().queue());
                    producer.poll(Duration::ZERO);
                }
                let until = Instant::now() + wait;
                while Instant::now() < until && !shared.stop.load(Ordering::Relaxed) {
                    shared.heartbeat.store(now_secs(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(200).min(until - Instant::now()));
                }
                if shared.stop.load(Ordering::Relaxed) {
                    break Ok(());
                }
                shared.metrics.stalled.set(0);
                lock(&shared.status).rejoining();
                match new_consumer() {
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
    lock(&shared.status).stopping();
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
    let counts = match workers {
        Some(workers) => {
            if let Some(state) = lock(&shared.state).pool.as_mut() {
                state.close();
            }
            workers.join()
        }
        None => engine.counts(),
    };
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
    let t = shared.clone();
    crate::http::Health {
        metrics: shared.metrics.clone(),
        live: Arc::new(move || now_secs().saturating_sub(s.heartbeat.load(Ordering::Relaxed)) < 60),
        ready: Arc::new(move || r.ready.load(Ordering::Relaxed) && !r.stop.load(Ordering::Relaxed)),
        status: Arc::new(move || {
            let refusal = t.producer.context().access.recent(REFUSAL_SHOWN_FOR);
            serde_json::to_value(lock(&t.status).clone().with_refusal(refusal)).unwrap_or_default()
        }),
    }
}

/// A produce to `topic` failed with `code`: if that is Kafka refusing the
/// runner, `/status` says so, naming the operation and the topic.
fn note_refusal(shared: &Shared, topic: &str, code: Option<RDKafkaErrorCode>, error: &str) {
    if let Some(kind) = refusal(code) {
        let what = match kind {
            AccessProblem::Authorization => format!("not authorized to Write to topic {topic}"),
            _ => format!("cannot produce to topic {topic}"),
        };
        shared.producer.context().access.refused(kind, &format!("{what}: {error}"));
    }
}

/// How long a refusal by Kafka stays the reason a runner that is not
/// consuming gives (librdkafka retries, and reports again, within seconds).
const REFUSAL_SHOWN_FOR: Duration = Duration::from_secs(120);

/// A consumer refused an operation: which one, on what.
fn consumer_refusal(e: &KafkaError, input: &str) -> String {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::TopicAuthorizationFailed) => {
            format!("not authorized to Read (and Describe) topic {input}: {e}")
        }
        Some(RDKafkaErrorCode::GroupAuthorizationFailed) => {
            format!("not authorized to Read the consumer group: {e}")
        }
        _ => e.to_string(),
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

/// The longest wait between a halt and consuming again.
const MAX_STALL_BACKOFF: Duration = Duration::from_secs(60);

/// The largest records the output and dead-letter topics take.
struct RecordLimits {
    output: usize,
    dead_letter: usize,
}

/// The producer's `message.max.bytes`, lowered to the output and dead-letter
/// topics' `max.message.bytes` as the broker reports them. A topic can take
/// less than the runner would produce (an adopted topic, a spec that sets
/// the config, a broker default): dead letters are then cut to fit. If the
/// broker cannot be asked (no DescribeConfigs ACL), the producer's limit is
/// assumed and a refusal lowers it later.
fn record_limits(settings: &KafkaSettings, spec: &vigil_crds::PipelineSpec) -> RecordLimits {
    let producer_limit = usize::try_from(spec.max_output_bytes()).unwrap_or(usize::MAX);
    let mut limits = RecordLimits { output: producer_limit, dead_letter: producer_limit };
    let topics = [spec.output.name.as_str(), spec.dead_letter.name.as_str()];
    match topic_max_message_bytes(settings, &topics) {
        Ok(found) => {
            for (topic, bytes) in found {
                if topic == spec.output.name {
                    limits.output = limits.output.min(bytes);
                }
                if topic == spec.dead_letter.name {
                    limits.dead_letter = limits.dead_letter.min(bytes);
                }
            }
            info!(
                output = limits.output,
                dead_letter = limits.dead_letter,
                "Record limits of the output and dead-letter topics"
            );
        }
        Err(e) => warn!(
            error = format!("{e:#}"),
            assumed = producer_limit,
            "Could not read max.message.bytes of the output and dead-letter topics; records the broker refuses as too large lower the limit"
        ),
    }
    limits
}

/// `max.message.bytes` of each topic the broker describes.
fn topic_max_message_bytes(settings: &KafkaSettings, topics: &[&str]) -> Result<Vec<(String, usize)>> {
    use rdkafka::admin::{AdminClient, AdminOptions, OwnedResourceSpecifier, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        settings.client_config().create().context("creating a Kafka admin client")?;
    let specs: Vec<ResourceSpecifier<'_>> = topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = futures::executor::block_on(admin.describe_configs(&specs, &opts))
        .context("describing the topics' configs")?;
    let mut out = Vec::new();
    for r in results {
        // A topic that cannot be described (missing, no ACL) keeps the
        // producer's limit; producing to it will say what is wrong.
        let Ok(resource) = r else { continue };
        let OwnedResourceSpecifier::Topic(topic) = &resource.specifier else { continue };
        if let Some(bytes) =
            resource.get("max.message.bytes").and_then(|e| e.value.as_deref()).and_then(|v| v.parse().ok())
        {
            out.push((topic.clone(), bytes));
        }
    }
    Ok(out)
}

/// How long the consumer may have no broker before it is replaced (the
/// statistics that tell arrive every 5 s).
const ORPHAN_LIMIT: Duration = Duration::from_secs(10);

/// Why the processing loop returned.
enum LoopExit {
    /// SIGTERM/SIGINT.
    Stopped,
    /// The consumer lost every broker and must be replaced.
    Orphaned,
    /// A failure stopped consumption: nothing more may be committed; the
    /// runner consumes again from the committed offsets after a wait.
    Halted(Halt),
}

/// Drop all in-flight work: the partitions are re-read from their committed
/// offsets, and an open transaction must not commit any of it.
fn forget_everything(shared: &Shared) {
    let mut st = lock(&shared.state);
    shared.quiesce(&mut st);
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
    models: Option<&crate::models::registry::Watcher>,
    workers: Option<&pool::Pool>,
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
            if let Some(h) = st.halt.take() {
                return Ok(LoopExit::Halted(h));
            }
            match msg {
                Err(e) => {
                    match refusal(e.rdkafka_error_code()) {
                        Some(kind) => {
                            error!(error = %e, "Kafka refuses the consumer ({})", kind.hint());
                            producer
                                .context()
                                .access
                                .refused_by_code(kind, &consumer_refusal(&e, &shared.input));
                        }
                        None => warn!(error = %e, "Consumer error"),
                    }
                    break;
                }
                Ok(m) => {
                    if shared.mode == Delivery::ExactlyOnce && !st.txn_open {
                        if let Err(e) = producer.begin_transaction() {
                            return Ok(LoopExit::Halted(Halt::new(
                                format!("could not begin a transaction: {e}"),
                                None,
                            )));
                        }
                        st.txn_open = true;
                        batch_started = Instant::now();
                        in_batch = 0;
                    }
                    let now = *batch_clock.get_or_insert_with(Instant::now);
                    let token = st.tracker.begin_at(m.partition(), m.offset(), now);
                    match st.pool.as_mut() {
                        // Sent to its thread at the end of the batch (or by
                        // whatever must wait for it first).
                        Some(pool) => pool.route(pool::Work { token, msg: m.detach() }),
                        None => match process_message(shared, token, engine, &m, output) {
                            Ok(outputs) => st.tracker.dispatched_with(token, outputs),
                            Err(h) => return Ok(LoopExit::Halted(h)),
                        },
                    }
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
        if let Some(pool) = st.pool.as_mut() {
            pool.dispatch();
        }
        shared.collect(&mut st);
        if let Some(h) = st.halt.take() {
            return Ok(LoopExit::Halted(h));
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
                        // The transaction's outputs are discarded by the
                        // broker; consuming resumes from the last committed
                        // offsets. A refused record says why (and lowers
                        // the limit that made it too large).
                        shared.drain_reports(&mut st);
                        shared.abort_open_transaction(&mut st);
                        let halt = st.halt.take().unwrap_or_else(|| Halt::new(format!("{e:#}"), None));
                        return Ok(LoopExit::Halted(halt));
                    }
                }
            }
        }
        // A new model version is served from the next record on: between
        // two batches, nothing in flight is scored twice or skipped.
        let model = models.and_then(|w| w.try_next());
        if let (Some(model), Some(pool)) = (&model, st.pool.as_mut()) {
            pool.swap(model);
        }
        drop(st);
        if let Some(workers) = workers {
            shared.metrics.detector_keys.set(workers.detector_keys() as i64);
        } else {
            last_counts = shared.count(engine, last_counts);
            shared.metrics.detector_keys.set(engine.detector().map_or(0, |d| d.keys().0) as i64);
            if let Some(model) = model {
                let (name, version) = (model.artifact.metadata.model.clone(), model.version());
                let result = engine.swap_model(model);
                shared.swapped(&name, version, result);
            }
        }
    }
    Ok(LoopExit::Stopped)
}

/// Headers as the producer takes them: copied from the consumer's, or
/// cloned from a record a processing thread holds.
pub(crate) trait OwnHeaders: Headers {
    fn owned(&self) -> OwnedHeaders;
}

impl OwnHeaders for BorrowedHeaders {
    fn owned(&self) -> OwnedHeaders {
        self.detach()
    }
}

impl OwnHeaders for OwnedHeaders {
    fn owned(&self) -> OwnedHeaders {
        self.clone()
    }
}

/// Process one consumed record (tracked as `token`): hand its outputs and
/// dead letters to the producer. Returns how many it handed over; an error
/// means one could not be, and the runner must halt (the record stays
/// unfinished and its offset is never stored).
fn process_message<M>(
    shared: &Shared,
    token: Token,
    engine: &mut Engine,
    m: &M,
    output: &str,
) -> Result<u32, Halt>
where
    M: Message,
    M::Headers: OwnHeaders,
{
    let payload = m.payload().unwrap_or_default();
    let ts = m.timestamp().to_millis().unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    let meta = Meta { key: m.key(), ts_ms: ts };
    let mut failure: Option<String> = None;
    let mut outputs = 0u32;
    let producer = &shared.producer;
    let context = m.key().map_or(0, <[u8]>::len) + headers_size(m.headers()) + RECORD_OVERHEAD;
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
                let limit = shared.output_limit.load(Ordering::Relaxed);
                let too_large = |size: usize| {
                    format!("the scored record is {size} bytes, more than the output topic takes ({limit})")
                };
                if o.json.len() + context > limit {
                    // Too big to produce: the input goes to the dead-letter
                    // topic instead, so nothing is lost and nothing stops.
                    send_dead_letter(shared, token, m, "produce", &too_large(o.json.len()))
                } else {
                    let mut rec = BaseRecord::with_opaque_to(output, token).payload(o.json).timestamp(ts);
                    if let Some(k) = m.key() {
                        rec = rec.key(k);
                    }
                    if let Some(h) = m.headers() {
                        rec = rec.headers(h.owned());
                    }
                    match send(producer, rec) {
                        Err(KafkaError::MessageProduction(code)) if dead_letter::is_record_error(code) => {
                            send_dead_letter(shared, token, m, "produce", &format!("{} ({code})", too_large(o.json.len())))
                        }
                        other => other.map_err(|e| {
                            note_refusal(shared, output, e.rdkafka_error_code(), &e.to_string());
                            format!("could not enqueue a scored record to {output}: {e}")
                        }),
                    }
                }
            }
            Event::Rejected(r) => send_dead_letter(shared, token, m, &r.stage, &r.reason),
        };
        match sent {
            Ok(()) => outputs += 1,
            Err(e) => failure = Some(e),
        }
    });
    match failure {
        Some(e) => Err(Halt::new(
            e,
            Some(RecordRef { topic: m.topic().to_string(), partition: m.partition(), offset: m.offset() }),
        )),
        None => Ok(outputs),
    }
}

/// Bytes the headers take in a record (an estimate on the safe side).
fn headers_size<H: Headers>(headers: Option<&H>) -> usize {
    headers.map_or(0, |h| h.iter().map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len) + 16).sum())
}

/// Dead-letter the consumed record `m`, cut to fit the dead-letter topic
/// if need be; if even that is refused by the client, once more as a stub.
fn send_dead_letter<M>(shared: &Shared, token: Token, m: &M, stage: &str, reason: &str) -> Result<(), String>
where
    M: Message,
    M::Headers: OwnHeaders,
{
    shared.metrics.dead_lettered.get_or_create(&StageLabel { stage: stage.to_string() }).inc();
    let input: Vec<(&str, Option<&[u8]>)> =
        m.headers().map(|h| h.iter().map(|h| (h.key, h.value)).collect()).unwrap_or_default();
    let vigil = dead_letter::context(stage, reason, m.topic(), Some((m.partition(), m.offset())));
    let payload = m.payload().unwrap_or_default();
    let mut limit = shared.dead_letter_limit.load(Ordering::Relaxed);
    loop {
        let letter = dead_letter::fit(limit, payload, m.key(), &input, vigil.clone());
        if letter.truncated() {
            warn!(
                partition = m.partition(),
                offset = m.offset(),
                size = payload.len(),
                limit,
                "A dead letter is larger than the dead-letter topic takes; writing it truncated"
            );
        }
        let headers = if letter.keep_input_headers { m.headers().map(|h| h.owned()) } else { None };
        let rec =
            letter_record(shared.dead_letter.as_str(), token, &letter, headers, m.timestamp().to_millis());
        match send(&shared.producer, rec) {
            Ok(()) => {
                if letter.truncated() {
                    shared.metrics.dead_letters_truncated.inc();
                }
                return Ok(());
            }
            Err(KafkaError::MessageProduction(code))
                if dead_letter::is_size_error(code) && limit > STUB_LIMIT =>
            {
                limit = STUB_LIMIT;
            }
            Err(e) => {
                note_refusal(shared, &shared.dead_letter, e.rdkafka_error_code(), &e.to_string());
                return Err(format!("could not enqueue a dead letter to {}: {e}", shared.dead_letter));
            }
        }
    }
}

/// The record of a sized dead letter: `headers` (the input's, when kept)
/// followed by the letter's `vigil.*` headers.
fn letter_record<'a>(
    topic: &'a str,
    token: Token,
    letter: &'a Letter<'a>,
    headers: Option<OwnedHeaders>,
    timestamp: Option<i64>,
) -> BaseRecord<'a, [u8], [u8], usize> {
    let mut h = headers.unwrap_or_default();
    for (k, v) in &letter.headers {
        h = h.insert(Header { key: k.as_str(), value: Some(v.as_str()) });
    }
    let mut rec = BaseRecord::with_opaque_to(topic, token).payload(letter.payload).headers(h);
    if let Some(ts) = timestamp {
        rec = rec.timestamp(ts);
    }
    if let Some(k) = letter.key {
        rec = rec.key(k);
    }
    rec
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
