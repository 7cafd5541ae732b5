//! The operator's Kafka access: describe, create, grow, reconfigure and
//! delete topics, and read a consumer group's lag. Every call has a time
//! bound, so an unreachable cluster is an error after seconds, not a hang.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use vigil_crds::{Pipeline, TopicSpec};

use crate::lock;
use crate::offsets::{self, OffsetsReader};

/// How long one Kafka request may take.
pub const TIMEOUT: Duration = Duration::from_secs(8);

/// A Kafka failure, as text (rdkafka's errors are not `Clone`).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{0}")]
pub struct KafkaError(pub String);

impl From<rdkafka::error::KafkaError> for KafkaError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        KafkaError(e.to_string())
    }
}

/// A topic as Kafka has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Partition count.
    pub partitions: i32,
    /// Replicas of partition 0.
    pub replication_factor: i32,
    /// Topic configuration set on the topic (not broker defaults).
    pub config: BTreeMap<String, String>,
}

impl KafkaError {
    /// Whether this is Kafka refusing the client (credentials, TLS, an
    /// ACL) rather than an outage, and which.
    pub fn refusal(&self) -> Option<vigil_crds::kafka_access::AccessProblem> {
        vigil_crds::kafka_access::AccessProblem::from_message(&self.0)
    }

    /// The condition reason for this failure.
    pub fn reason(&self) -> &'static str {
        self.refusal().map_or("KafkaUnavailable", |r| r.reason())
    }
}

/// For an authorization failure, the ACL the principal lacks.
fn needs(e: RDKafkaErrorCode, operation: &str, topic: &str) -> String {
    if e == RDKafkaErrorCode::TopicAuthorizationFailed {
        format!(" (the principal lacks ACL {operation} on topic {topic})")
    } else {
        String::new()
    }
}

/// Admin clients per cluster. A broker answers one request per connection
/// at a time, and creating a topic waits for the controller: with one
/// connection, a burst of new Pipelines queued every topic creation and
/// description behind the others.
const ADMIN_CONNECTIONS: usize = 4;

/// Admin connections to one Kafka cluster.
pub struct Kafka {
    /// The first also fetches the shared metadata; requests about topics go
    /// to each in turn.
    admins: Vec<Arc<AdminClient<DefaultClientContext>>>,
    next_admin: std::sync::atomic::AtomicUsize,
    /// The cluster refusing this connection's credentials, as last heard.
    refused: offsets::Refusals,
    config: ClientConfig,
    /// Committed offsets of the cluster's Vigil groups, for lag queries.
    offsets: Option<Arc<OffsetsReader>>,
    /// The cluster's topics, shared by the reconciles (see `shape`).
    metadata: Mutex<Metadata>,
    fetching: tokio::sync::Mutex<()>,
    /// Topics to create in the next CreateTopics request.
    creations: Arc<Mutex<Creations>>,
}

/// Topic creations asked for while one CreateTopics request is in flight:
/// they go together in the next. Kafka's controller commits the topics of
/// one request in one write to its metadata log, and handles requests one
/// at a time; one request per topic bounded a burst of new Pipelines to
/// about 32 topics a second (operator/BENCHMARKS.md).
#[derive(Default)]
struct Creations {
    waiting: Vec<(TopicSpec, tokio::sync::oneshot::Sender<Result<(), KafkaError>>)>,
    /// A task is sending them.
    sending: bool,
}

/// Most topics in one CreateTopics request.
const MOST_CREATIONS_PER_REQUEST: usize = 500;

/// How old the shared topic metadata may be. Changes made by this operator
/// are seen at once; changes made out of band within this delay.
pub const METADATA_TTL: Duration = Duration::from_secs(10);

/// How long a failed metadata request is answered from memory.
const FAILED_METADATA_TTL: Duration = Duration::from_secs(2);

/// Per topic: (partitions, replication factor), or why its metadata is bad.
type Shapes = HashMap<String, Result<(i32, i32), KafkaError>>;

struct Metadata {
    /// When the last fetch started, and what it got.
    fetched: Option<(Instant, Result<Shapes, KafkaError>)>,
    /// Topics this client changed since the last fetch began, and when.
    changed: HashMap<String, Instant>,
}

impl Kafka {
    /// Connect (lazily: librdkafka connects on first use).
    pub fn new(config: ClientConfig) -> Result<Self, KafkaError> {
        let mut c = config.clone();
        c.set("socket.timeout.ms", "8000");
        let refused = offsets::Refusals::default();
        let offsets = match OffsetsReader::start(&c, Pipeline::CONSUMER_GROUP_PREFIX, refused.clone()) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                tracing::info!(error = %e, "Lag is asked of each group's coordinator");
                None
            }
        };
        Ok(Kafka {
            admins: (0..ADMIN_CONNECTIONS).map(|_| c.create().map(Arc::new)).collect::<Result<_, _>>()?,
            next_admin: Default::default(),
            refused,
            config,
            offsets,
            metadata: Mutex::new(Metadata { fetched: None, changed: HashMap::new() }),
            fetching: tokio::sync::Mutex::new(()),
            creations: Arc::default(),
        })
    }

    /// `e`, with the cluster's refusal of this client when there was one
    /// in the last minute (a refused client sees its requests time out or
    /// fail as transport failures). A refusal not heard yet is waited for
    /// up to a second: the error may come a few milliseconds after the
    /// request failed.
    pub async fn explain(&self, e: KafkaError) -> KafkaError {
        if e.refusal().is_some() {
            return e;
        }
        let heard = || lock(&self.refused).clone().filter(|(_, at)| at.elapsed() < Duration::from_secs(60));
        if heard().is_none() {
            if let Some(r) = self.offsets.clone() {
                let _ = tokio::task::spawn_blocking(move || r.poll_events(Duration::from_secs(1))).await;
            }
        }
        match heard() {
            Some((why, _)) => KafkaError(format!("{why} ({e})")),
            None => e,
        }
    }

    /// The next admin connection, in turn.
    fn admin(&self) -> &Arc<AdminClient<DefaultClientContext>> {
        let i = self.next_admin.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.admins[i % self.admins.len()]
    }

    fn options() -> AdminOptions {
        AdminOptions::new().request_timeout(Some(TIMEOUT)).operation_timeout(Some(TIMEOUT))
    }

    /// The topic, or `None` if it does not exist.
    pub async fn describe(&self, name: &str) -> Result<Option<Observed>, KafkaError> {
        let Some((partitions, replication_factor)) = self.shape(name).await? else { return Ok(None) };
        let results =
            self.admin().describe_configs(&[ResourceSpecifier::Topic(name)], &Self::options()).await?;
        let mut config = BTreeMap::new();
        for r in results {
            let r = r.map_err(|e| {
                KafkaError(format!("describing topic {name}: {e}{}", needs(e, "DescribeConfigs", name)))
            })?;
            for e in r.entries {
                if !e.is_default && matches!(e.source, rdkafka::admin::ConfigSource::DynamicTopic) {
                    if let Some(v) = e.value {
                        config.insert(e.name, v);
                    }
                }
            }
        }
        Ok(Some(Observed { partitions, replication_factor, config }))
    }

    /// (partitions, replication factor) of a topic, from the cluster's
    /// metadata as of at most `METADATA_TTL` ago and after this client's
    /// last change to that topic. Asking for one topic by name would make
    /// librdkafka keep a topic object for it for the client's lifetime, and
    /// a client holding thousands of those spends its idle time scanning
    /// them; the whole cluster's metadata, shared by the reconciles, leaves
    /// none behind.
    async fn shape(&self, name: &str) -> Result<Option<(i32, i32)>, KafkaError> {
        let _one_fetch_at_a_time = self.fetching.lock().await;
        {
            let m = lock(&self.metadata);
            if let Some((at, fetched)) = &m.fetched {
                let current = m.changed.get(name).is_none_or(|c| at >= c);
                match fetched {
                    // A topic whose metadata had an error (a leader not yet
                    // elected after creation) is asked again.
                    Ok(shapes)
                        if current
                            && at.elapsed() < METADATA_TTL
                            && !shapes.get(name).is_some_and(Result::is_err) =>
                    {
                        return shapes.get(name).cloned().transpose();
                    }
                    // While the cluster does not answer, reconciles do not
                    // queue behind one timeout each.
                    Err(e) if at.elapsed() < FAILED_METADATA_TTL => return Err(e.clone()),
                    _ => {}
                }
            }
        }
        let started = Instant::now();
        // Off the async threads: the request blocks for up to TIMEOUT.
        let admin = self.admins[0].clone();
        let fetched = tokio::task::spawn_blocking(move || -> Result<Shapes, KafkaError> {
            let md = admin.inner().fetch_metadata(None, TIMEOUT)?;
            let mut shapes = HashMap::with_capacity(md.topics().len());
            for t in md.topics() {
                let shape = match t.error().map(RDKafkaErrorCode::from) {
                    Some(RDKafkaErrorCode::UnknownTopicOrPartition) => continue,
                    Some(e) => Err(KafkaError(format!("metadata of topic {}: {e:?}", t.name()))),
                    None if t.partitions().is_empty() => continue,
                    None => Ok((
                        t.partitions().len() as i32,
                        t.partitions().first().map_or(0, |p| p.replicas().len() as i32),
                    )),
                };
                shapes.insert(t.name().to_string(), shape);
            }
            Ok(shapes)
        })
        .await
        .map_err(|e| KafkaError(format!("metadata request failed: {e}")))?;
        let answer = match &fetched {
            Ok(shapes) => shapes.get(name).cloned().transpose(),
            Err(e) => Err(e.clone()),
        };
        let mut m = lock(&self.metadata);
        if fetched.is_ok() {
            // Changes made before this fetch began are in it.
            m.changed.retain(|_, c| *c > started);
        }
        m.fetched = Some((started, fetched));
        answer
    }

    /// This client is changing the partitions of these topics (creating,
    /// growing, deleting them): their next `describe` reads fresh metadata.
    /// Called before the request and again after it, so that a fetch made
    /// while the request was in flight is not trusted either.
    fn changed(&self, names: &[&str]) {
        let now = Instant::now();
        let mut m = lock(&self.metadata);
        for n in names {
            m.changed.insert(n.to_string(), now);
        }
    }

    /// Create a topic as specified; an existing topic is fine. Creations
    /// asked for while a CreateTopics request is in flight are sent
    /// together in the next one (`Creations`).
    pub async fn create(&self, spec: &TopicSpec) -> Result<(), KafkaError> {
        self.changed(&[&spec.name]);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start_sending = {
            let mut c = lock(&self.creations);
            c.waiting.push((spec.clone(), tx));
            !std::mem::replace(&mut c.sending, true)
        };
        if start_sending {
            tokio::spawn(send_creations(self.admin().clone(), self.creations.clone()));
        }
        let created =
            rx.await.unwrap_or_else(|_| Err(KafkaError(format!("creating topic {}: abandoned", spec.name))));
        self.changed(&[&spec.name]);
        created
    }

    /// Grow a topic to `partitions`.
    pub async fn grow(&self, name: &str, partitions: i32) -> Result<(), KafkaError> {
        self.changed(&[name]);
        let np = NewPartitions::new(name, partitions.max(1) as usize);
        for r in self.admin().create_partitions(&[np], &Self::options()).await? {
            r.map_err(|(n, e)| {
                KafkaError(format!(
                    "growing topic {n} to {partitions} partitions: {e}{}",
                    needs(e, "Alter", &n)
                ))
            })?;
        }
        self.changed(&[name]);
        Ok(())
    }

    /// Set a topic's whole dynamic configuration to `config`.
    pub async fn set_config(&self, name: &str, config: &BTreeMap<String, String>) -> Result<(), KafkaError> {
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(name));
        for (k, v) in config {
            alter = alter.set(k, v);
        }
        for r in self.admin().alter_configs(&[alter], &Self::options()).await? {
            r.map_err(|(_, e)| {
                KafkaError(format!("configuring topic {name}: {e}{}", needs(e, "AlterConfigs", name)))
            })?;
        }
        Ok(())
    }

    /// Delete topics; missing ones are fine.
    pub async fn delete(&self, names: &[&str]) -> Result<(), KafkaError> {
        self.changed(names);
        for r in self.admin().delete_topics(names, &Self::options()).await? {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((name, e)) => return Err(KafkaError(format!("deleting topic {name}: {e}"))),
            }
        }
        self.changed(names);
        Ok(())
    }

    /// Delete a consumer group; a missing group is fine.
    pub async fn delete_group(&self, group: &str) -> Result<(), KafkaError> {
        for r in self.admin().delete_groups(&[group], &Self::options()).await? {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => {}
                Err((g, e)) => return Err(KafkaError(format!("deleting consumer group {g}: {e}"))),
            }
        }
        Ok(())
    }

    /// Records in `topic` not yet committed by `group`: the sum over
    /// partitions of high watermark minus committed offset (the whole
    /// partition when the group has committed nothing).
    pub async fn lag(&self, group: &str, topic: &str, partitions: i32) -> Result<i64, KafkaError> {
        if let Some(reader) = &self.offsets {
            if let Some(committed) = reader.committed(group, topic, partitions) {
                let (reader, topic) = (reader.clone(), topic.to_string());
                return tokio::task::spawn_blocking(move || reader.lag(&topic, &committed))
                    .await
                    .map_err(|e| KafkaError(format!("lag query failed: {e}")))?;
            }
        }
        // Not (yet) readable from the offsets topic: ask the group's
        // coordinator, through a consumer of that group made for the query.
        let mut c = self.config.clone();
        c.set("group.id", group).set("enable.auto.commit", "false");
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || -> Result<i64, KafkaError> {
            let consumer: BaseConsumer = c.create()?;
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(&topic, p);
            }
            let committed = consumer.committed_offsets(tpl, TIMEOUT)?;
            let committed = committed.elements().into_iter().map(|e| match e.offset() {
                Offset::Offset(o) => (Some(o), e.partition()),
                _ => (None, e.partition()),
            });
            offsets::lag_of(&consumer, &topic, committed)
        })
        .await
        .map_err(|e| KafkaError(format!("lag query failed: {e}")))?
    }
}

/// Send the waiting topic creations, as many as have accumulated per
/// request, until none wait; each asker hears its topic's outcome.
async fn send_creations(admin: Arc<AdminClient<DefaultClientContext>>, queue: Arc<Mutex<Creations>>) {
    loop {
        let batch: Vec<_> = {
            let mut c = lock(&queue);
            if c.waiting.is_empty() {
                c.sending = false;
                return;
            }
            let n = c.waiting.len().min(MOST_CREATIONS_PER_REQUEST);
            c.waiting.drain(..n).collect()
        };
        let outcomes = create_topics(&admin, batch.iter().map(|(spec, _)| spec)).await;
        for (spec, asker) in batch {
            let outcome = match &outcomes {
                Ok(failed) => failed.get(&spec.name).map_or(Ok(()), |e| Err(e.clone())),
                Err(e) => Err(e.clone()),
            };
            // An asker that gave up (its reconcile was cancelled) is fine.
            let _ = asker.send(outcome);
        }
    }
}

/// One CreateTopics request for these topics (a name asked for twice is
/// sent once, as first asked: Kafka refuses a request naming a topic
/// twice). The topics that failed, and why; an existing topic is no
/// failure.
async fn create_topics<'a>(
    admin: &AdminClient<DefaultClientContext>,
    specs: impl Iterator<Item = &'a TopicSpec>,
) -> Result<HashMap<String, KafkaError>, KafkaError> {
    let mut named = HashSet::new();
    let topics: Vec<NewTopic> = specs
        .filter(|spec| named.insert(spec.name.as_str()))
        .map(|spec| {
            let mut t =
                NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(spec.replication_factor));
            for (k, v) in &spec.config {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let mut failed = HashMap::new();
    for r in admin.create_topics(&topics, &Kafka::options()).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, e)) => {
                let why = KafkaError(format!("creating topic {name}: {e}{}", needs(e, "Create", &name)));
                failed.insert(name, why);
            }
        }
    }
    Ok(failed)
}
