//! Kafka helpers for tests: an admin client, topic creation and inspection,
//! producing and draining records on the harness's real broker.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

/// A client config pointing at the harness broker.
pub fn config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", crate::kafka());
    // Tests restart the broker: re-bootstrap soon when it does not answer.
    c.set("metadata.recovery.rebootstrap.trigger.ms", "10000");
    c
}

/// An admin client for the harness broker.
pub fn admin() -> Result<AdminClient<DefaultClientContext>> {
    Ok(config().create()?)
}

/// Create a topic, failing if it exists.
pub async fn create_topic(name: &str, partitions: i32, topic_config: &[(&str, &str)]) -> Result<()> {
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in topic_config {
        topic = topic.set(k, v);
    }
    let results = admin()?.create_topics(&[topic], &AdminOptions::new()).await?;
    for r in results {
        if let Err((t, e)) = r {
            bail!("creating topic {t} failed: {e}");
        }
    }
    Ok(())
}

/// Delete topics; missing ones are not an error.
pub async fn delete_topics(names: &[&str]) -> Result<()> {
    admin()?.delete_topics(names, &AdminOptions::new()).await?;
    Ok(())
}

/// The partition count of a topic, or `None` if it does not exist.
pub fn partitions(name: &str) -> Result<Option<usize>> {
    let consumer: BaseConsumer = config().create()?;
    let md = consumer.fetch_metadata(Some(name), Duration::from_secs(10))?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == name)
        .and_then(|t| if t.error().is_some() { None } else { Some(t.partitions().len()) }))
}

/// The dynamic (non-default) configuration of a topic.
pub async fn topic_config(name: &str) -> Result<BTreeMap<String, String>> {
    let results = admin()?.describe_configs(&[ResourceSpecifier::Topic(name)], &AdminOptions::new()).await?;
    let resource = results.into_iter().next().context("no describe result")??;
    Ok(resource
        .entries
        .into_iter()
        .filter(|e| !e.is_default)
        .filter_map(|e| e.value.map(|v| (e.name, v)))
        .collect())
}

/// Produce records (key, value) and wait for every acknowledgement.
pub async fn produce(topic: &str, records: &[(Option<&str>, &[u8])]) -> Result<()> {
    let producer: FutureProducer = config().set("linger.ms", "5").create()?;
    let sends = records.iter().map(|(key, value)| {
        let mut r = FutureRecord::<str, [u8]>::to(topic).payload(value);
        if let Some(k) = key {
            r = r.key(k);
        }
        producer.send(r, Timeout::After(Duration::from_secs(30)))
    });
    for result in futures::future::join_all(sends).await {
        if let Err((e, _)) = result {
            bail!("produce to {topic} failed: {e}");
        }
    }
    Ok(())
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Received {
    /// Partition it was read from.
    pub partition: i32,
    /// Offset in that partition.
    pub offset: i64,
    /// The key, if any.
    pub key: Option<Vec<u8>>,
    /// The value.
    pub value: Vec<u8>,
    /// Headers as (name, value) pairs.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Read a topic from the beginning until `want` records arrived or `timeout`
/// passed; returns what was read. `read_committed` reads only committed
/// transactional records.
pub fn drain(topic: &str, want: usize, timeout: Duration, read_committed: bool) -> Result<Vec<Received>> {
    let consumer: BaseConsumer = config()
        .set("group.id", crate::unique_name("drain"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", if read_committed { "read_committed" } else { "read_uncommitted" })
        .create()?;
    consumer.subscribe(&[topic])?;
    let deadline = std::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < want && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(Received {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|hs| {
                        hs.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect()
                    })
                    .unwrap_or_default(),
            }),
            Some(Err(e)) => bail!("consuming {topic} failed: {e}"),
            None => {}
        }
    }
    Ok(out)
}

/// The offsets `group` committed on partitions `0..partitions` of `topic`
/// (`None` where it committed nothing). Does not join the group.
pub fn committed_offsets(group: &str, topic: &str, partitions: i32) -> Result<Vec<Option<i64>>> {
    let consumer: BaseConsumer = config().set("group.id", group).create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some(o),
            _ => None,
        })
        .collect())
}

/// Commit `group`'s offsets at the end of every partition of `topic`, as a
/// consumer that has read everything would: the group's lag drops to zero.
pub fn commit_to_end(group: &str, topic: &str, partitions: i32) -> Result<()> {
    let consumer: BaseConsumer = config().set("group.id", group).create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(high))?;
    }
    consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync)?;
    Ok(())
}

/// The broker's SASL_SSL listener (SCRAM-SHA-512 over TLS, ACLs enforced)
/// and the CA that signed its certificate.
#[derive(Debug, Clone)]
pub struct Secure {
    /// `127.0.0.1:port`, for clients on this machine.
    pub bootstrap: String,
    /// The CA certificate (PEM) clients must trust.
    pub ca_pem: String,
}

/// The secure listener, with the broker started if needed.
pub fn secure() -> Secure {
    crate::kafka();
    let bootstrap = crate::setting("VIGIL_KAFKA_SECURE_BOOTSTRAP").expect("VIGIL_KAFKA_SECURE_BOOTSTRAP");
    let ca = crate::setting("VIGIL_KAFKA_CA").expect("VIGIL_KAFKA_CA");
    let ca_pem = std::fs::read_to_string(&ca).unwrap_or_else(|e| panic!("reading {ca}: {e}"));
    Secure { bootstrap, ca_pem }
}

/// Run `kafka.sh admin` commands (`scram USER PASSWORD`, `allow USER TYPE
/// PATTERN NAME OPERATION`, `revoke USER`; several separated by `","`).
pub fn security_admin(args: &[&str]) -> Result<()> {
    crate::kafka();
    let script = crate::repo_dir().join("e2e/lib/kafka.sh");
    let out = std::process::Command::new(&script).arg("admin").args(args).output()?;
    if !out.status.success() {
        bail!("kafka.sh admin {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Client settings (librdkafka properties) of SCRAM user `user` over TLS,
/// as a Kafka Secret for a Pipeline holds them (`ca.crt` is a file key).
pub fn scram_secret(user: &str, password: &str, ca_pem: &str) -> BTreeMap<String, String> {
    [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", user),
        ("sasl.password", password),
        ("ca.crt", ca_pem),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}
