//! The operator's Kafka access: describe, create, grow, reconfigure and
//! delete topics, and read a consumer group's lag. Every call has a time
//! bound, so an unreachable cluster is an error after seconds, not a hang.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use vigil_crds::TopicSpec;

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

/// An admin connection to one Kafka cluster.
pub struct Kafka {
    admin: AdminClient<DefaultClientContext>,
    config: ClientConfig,
}

impl Kafka {
    /// Connect (lazily: librdkafka connects on first use).
    pub fn new(config: ClientConfig) -> Result<Self, KafkaError> {
        let mut c = config.clone();
        c.set("socket.timeout.ms", "8000");
        Ok(Kafka { admin: c.create()?, config })
    }

    fn options() -> AdminOptions {
        AdminOptions::new().request_timeout(Some(TIMEOUT)).operation_timeout(Some(TIMEOUT))
    }

    /// The topic, or `None` if it does not exist.
    pub async fn describe(&self, name: &str) -> Result<Option<Observed>, KafkaError> {
        // Metadata requests block; only plain values leave this block, since
        // the metadata itself may not cross an await.
        let (partitions, replication_factor) = {
            let client = self.admin.inner();
            let md = tokio::task::block_in_place(|| client.fetch_metadata(Some(name), TIMEOUT))?;
            let Some(t) = md.topics().iter().find(|t| t.name() == name) else { return Ok(None) };
            match t.error() {
                Some(e) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition => {
                    return Ok(None);
                }
                Some(e) => {
                    return Err(KafkaError(format!(
                        "metadata of topic {name}: {:?}",
                        RDKafkaErrorCode::from(e)
                    )));
                }
                None => {}
            }
            if t.partitions().is_empty() {
                return Ok(None);
            }
            (t.partitions().len() as i32, t.partitions().first().map_or(0, |p| p.replicas().len() as i32))
        };
        let results =
            self.admin.describe_configs(&[ResourceSpecifier::Topic(name)], &Self::options()).await?;
        let mut config = BTreeMap::new();
        for r in results {
            let r = r.map_err(|e| KafkaError(format!("describing topic {name}: {e}")))?;
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

    /// Create a topic as specified.
    pub async fn create(&self, spec: &TopicSpec) -> Result<(), KafkaError> {
        let mut t =
            NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(spec.replication_factor));
        for (k, v) in &spec.config {
            t = t.set(k, v);
        }
        for r in self.admin.create_topics(&[t], &Self::options()).await? {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, e)) => return Err(KafkaError(format!("creating topic {name}: {e}"))),
            }
        }
        Ok(())
    }

    /// Grow a topic to `partitions`.
    pub async fn grow(&self, name: &str, partitions: i32) -> Result<(), KafkaError> {
        let np = NewPartitions::new(name, partitions.max(1) as usize);
        for r in self.admin.create_partitions(&[np], &Self::options()).await? {
            r.map_err(|(n, e)| KafkaError(format!("growing topic {n} to {partitions} partitions: {e}")))?;
        }
        Ok(())
    }

    /// Set a topic's whole dynamic configuration to `config`.
    pub async fn set_config(&self, name: &str, config: &BTreeMap<String, String>) -> Result<(), KafkaError> {
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(name));
        for (k, v) in config {
            alter = alter.set(k, v);
        }
        for r in self.admin.alter_configs(&[alter], &Self::options()).await? {
            r.map_err(|(_, e)| KafkaError(format!("configuring topic {name}: {e}")))?;
        }
        Ok(())
    }

    /// Delete topics; missing ones are fine.
    pub async fn delete(&self, names: &[&str]) -> Result<(), KafkaError> {
        for r in self.admin.delete_topics(names, &Self::options()).await? {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((name, e)) => return Err(KafkaError(format!("deleting topic {name}: {e}"))),
            }
        }
        Ok(())
    }

    /// Delete a consumer group; a missing group is fine.
    pub async fn delete_group(&self, group: &str) -> Result<(), KafkaError> {
        for r in self.admin.delete_groups(&[group], &Self::options()).await? {
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
            let mut lag = 0;
            for e in committed.elements() {
                let (low, high) = consumer.fetch_watermarks(&topic, e.partition(), TIMEOUT)?;
                lag += match e.offset() {
                    Offset::Offset(o) => (high - o).max(0),
                    _ => (high - low).max(0),
                };
            }
            Ok(lag)
        })
        .await
        .map_err(|e| KafkaError(format!("lag query failed: {e}")))?
    }
}
