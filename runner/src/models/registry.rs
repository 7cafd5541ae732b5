//! The model registry: a compacted, single-partition Kafka topic through
//! which trained versions reach every runner replica, on any node, with no
//! shared volume (the runners already talk to Kafka; a ReadWriteMany volume
//! is what most clusters do not have).
//!
//! Records, keyed by `<namespace>/<model>/...`:
//! - `v<N>/chunk/<i>`: the artifact's bytes, cut into chunks of at most
//!   `CHUNK` bytes, so an artifact larger than a Kafka record still goes
//!   through;
//! - `v<N>`: the version's manifest (chunks, bytes, sha256), written after
//!   its chunks;
//! - `serving`: `{"version": N}`, the version Pipelines that follow the
//!   Model serve (written by the operator: the latest, or the Model's pin).
//!
//! Compaction keeps the last record of each key, so every kept version stays
//! readable (rollback) and the topic does not grow with retraining beyond
//! the versions kept. A reader assembles a version only when every chunk is
//! there and the checksum of the whole matches.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::{Artifact, Model};
use crate::run::kafka_config::KafkaSettings;

pub use vigil_crds::registry::{DEFAULT_TOPIC, Serving};
/// Bytes per chunk: under Kafka's default 1 MiB record limit with room for
/// the key and headers.
pub const CHUNK: usize = 512 * 1024;

/// A version's manifest record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionManifest {
    /// The version.
    pub version: i64,
    /// Chunks written before this record.
    pub chunks: usize,
    /// Bytes of the whole artifact.
    pub bytes: usize,
    /// SHA-256 of the whole artifact.
    pub sha256: String,
}

use vigil_crds::registry::prefix;

fn producer(settings: &KafkaSettings) -> Result<BaseProducer> {
    settings
        .client_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.max.bytes", (CHUNK + 64 * 1024).to_string())
        .create()
        .context("creating the registry producer")
}

fn flush(p: &BaseProducer, what: &str) -> Result<()> {
    p.flush(Duration::from_secs(60)).with_context(|| format!("writing {what} to the model registry"))?;
    Ok(())
}

/// Publish an artifact: its chunks, then its manifest.
pub fn publish(
    settings: &KafkaSettings,
    topic: &str,
    namespace: &str,
    artifact: &Artifact,
) -> Result<VersionManifest> {
    let bytes = artifact.to_bytes();
    let m = &artifact.metadata;
    let base = vigil_crds::registry::version_key(namespace, &m.model, m.version);
    let p = producer(settings)?;
    let chunks: Vec<&[u8]> = bytes.chunks(CHUNK).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let key = format!("{base}/chunk/{i}");
        send(&p, BaseRecord::to(topic).key(&key).payload(*chunk))?;
    }
    let manifest = VersionManifest {
        version: m.version,
        chunks: chunks.len(),
        bytes: bytes.len(),
        sha256: super::hex(&Sha256::digest(&bytes)),
    };
    let value = serde_json::to_vec(&manifest)?;
    send(&p, BaseRecord::to(topic).key(&base).payload(&value))?;
    flush(&p, &format!("Model {} v{}", m.model, m.version))?;
    Ok(manifest)
}

fn send(p: &BaseProducer, record: BaseRecord<'_, String, [u8]>) -> Result<()> {
    let mut record = record;
    loop {
        match p.send(record) {
            Ok(()) => return Ok(()),
            Err((e, r)) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) => {
                p.poll(Duration::from_millis(100));
                record = r;
            }
            Err((e, _)) => bail!("writing to the model registry: {e}"),
        }
    }
}

/// Point the Model's followers at `version`.
pub fn set_serving(
    settings: &KafkaSettings,
    topic: &str,
    namespace: &str,
    model: &str,
    version: i64,
) -> Result<()> {
    let p = producer(settings)?;
    let key = vigil_crds::registry::serving_key(namespace, model);
    let value = serde_json::to_vec(&Serving { version })?;
    send(&p, BaseRecord::to(topic).key(&key).payload(&value))?;
    flush(&p, "the serving version")
}

/// The versions of a Model in the registry (those whose manifest is there),
/// with their chunk counts; read from the start to the current end.
pub fn versions(
    settings: &KafkaSettings,
    topic: &str,
    namespace: &str,
    model: &str,
) -> Result<BTreeMap<i64, usize>> {
    let consumer: BaseConsumer = settings
        .client_config()
        .set("group.id", format!("vigil-registry-{namespace}-{model}"))
        .set("enable.auto.commit", "false")
        .set("fetch.message.max.bytes", (CHUNK + 64 * 1024).to_string())
        .create()
        .context("creating the registry reader")?;
    let timeout = Duration::from_secs(30);
    let (low, high) = consumer.fetch_watermarks(topic, 0, timeout).context("reading the model registry")?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let prefix = prefix(namespace, model);
    let mut found = BTreeMap::new();
    let mut next = low;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while next < high {
        if std::time::Instant::now() > deadline {
            bail!("reading the model registry {topic}: not at its end after 120 s");
        }
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else { continue };
        let m = msg.context("reading the model registry")?;
        next = m.offset() + 1;
        let Some(rest) =
            m.key().and_then(|k| std::str::from_utf8(k).ok()).and_then(|k| k.strip_prefix(&prefix))
        else {
            continue;
        };
        let Some(v) = rest.strip_prefix('v').filter(|r| !r.contains('/')).and_then(|v| v.parse::<i64>().ok())
        else {
            continue;
        };
        match m.payload().and_then(|p| serde_json::from_slice::<VersionManifest>(p).ok()) {
            Some(manifest) => found.insert(v, manifest.chunks),
            None => found.remove(&v),
        };
    }
    Ok(found)
}

/// Tombstone every version of the Model older than the newest `keep`
/// (manifest first, so a reader never sees a version without its chunks);
/// compaction then removes them. Returns the versions removed.
pub fn prune(
    settings: &KafkaSettings,
    topic: &str,
    namespace: &str,
    model: &str,
    keep: usize,
) -> Result<Vec<i64>> {
    let present = versions(settings, topic, namespace, model)?;
    let old: Vec<(i64, usize)> = present.iter().rev().skip(keep.max(1)).map(|(v, c)| (*v, *c)).collect();
    if old.is_empty() {
        return Ok(Vec::new());
    }
    let p = producer(settings)?;
    for (v, chunks) in &old {
        let base = vigil_crds::registry::version_key(namespace, model, *v);
        send(&p, BaseRecord::<String, [u8]>::to(topic).key(&base))?;
        for i in 0..*chunks {
            let key = format!("{base}/chunk/{i}");
            send(&p, BaseRecord::<String, [u8]>::to(topic).key(&key))?;
        }
    }
    flush(&p, "tombstones of old versions")?;
    Ok(old.into_iter().map(|(v, _)| v).collect())
}

/// What a reader has seen of one Model.
#[derive(Debug, Default)]
struct Seen {
    chunks: BTreeMap<(i64, usize), Vec<u8>>,
    manifests: BTreeMap<i64, VersionManifest>,
    serving: Option<i64>,
}

impl Seen {
    fn apply(&mut self, rest: &str, value: Option<&[u8]>) {
        if rest == "serving" {
            self.serving = value.and_then(|v| serde_json::from_slice::<Serving>(v).ok()).map(|s| s.version);
            return;
        }
        let Some(rest) = rest.strip_prefix('v') else { return };
        match rest.split_once("/chunk/") {
            Some((v, i)) => {
                if let (Ok(v), Ok(i)) = (v.parse(), i.parse()) {
                    match value {
                        Some(b) => self.chunks.insert((v, i), b.to_vec()),
                        None => self.chunks.remove(&(v, i)),
                    };
                }
            }
            None => {
                if let Ok(v) = rest.parse::<i64>() {
                    match value.and_then(|b| serde_json::from_slice::<VersionManifest>(b).ok()) {
                        Some(m) => self.manifests.insert(v, m),
                        None => self.manifests.remove(&v),
                    };
                }
            }
        }
    }

    /// The artifact of `version`, when complete and intact.
    fn assemble(&self, version: i64, what: &str) -> Option<Result<Artifact, String>> {
        let m = self.manifests.get(&version)?;
        let mut bytes = Vec::with_capacity(m.bytes);
        for i in 0..m.chunks {
            bytes.extend_from_slice(self.chunks.get(&(version, i))?);
        }
        if bytes.len() != m.bytes || super::hex(&Sha256::digest(&bytes)) != m.sha256 {
            return Some(Err(format!("{what} v{version} in the registry does not match its manifest")));
        }
        Some(Artifact::from_bytes(&bytes, &format!("{what} v{version}")).map_err(|e| e.to_string()))
    }
}

/// Follows one Model in the registry on a thread of its own and sends each
/// version to serve: the pinned one, or whatever the serving pointer names.
pub struct Watcher {
    rx: mpsc::Receiver<Arc<Model>>,
    _thread: std::thread::JoinHandle<()>,
}

impl Watcher {
    /// Start following `model` (in `namespace`); `pin` fixes the version.
    pub fn start(
        settings: &KafkaSettings,
        topic: &str,
        namespace: &str,
        model: &str,
        pin: Option<i64>,
    ) -> Result<Self> {
        let consumer: BaseConsumer = settings
            .client_config()
            .set("group.id", format!("vigil-registry-{namespace}-{model}"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.message.max.bytes", (CHUNK + 64 * 1024).to_string())
            .set("fetch.wait.max.ms", "100")
            .create()
            .context("creating the registry consumer")?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
        consumer.assign(&tpl).context("reading the model registry")?;
        let (tx, rx) = mpsc::channel();
        let (prefix, what) = (prefix(namespace, model), format!("Model {namespace}/{model}"));
        let topic = topic.to_string();
        let thread = std::thread::Builder::new().name("model-registry".into()).spawn(move || {
            let mut seen = Seen::default();
            let mut sent: Option<i64> = None;
            let mut refused: Option<i64> = None;
            loop {
                let mut changed = false;
                // Take everything fetched, then decide once.
                let mut wait = Duration::from_millis(500);
                while let Some(msg) = consumer.poll(wait) {
                    wait = Duration::ZERO;
                    match msg {
                        Ok(m) => {
                            let Some(rest) = m
                                .key()
                                .and_then(|k| std::str::from_utf8(k).ok())
                                .and_then(|k| k.strip_prefix(&prefix))
                            else {
                                continue;
                            };
                            seen.apply(rest, m.payload());
                            changed = true;
                        }
                        Err(e) => {
                            warn!(topic = %topic, error = %e, "Reading the model registry");
                            break;
                        }
                    }
                }
                if !changed {
                    continue;
                }
                let Some(target) = pin.or(seen.serving) else { continue };
                if Some(target) == sent || Some(target) == refused {
                    continue;
                }
                match seen.assemble(target, &what) {
                    None => {}
                    Some(Ok(artifact)) => {
                        info!(model = %what, version = target, "Model version available in the registry");
                        if tx.send(Arc::new(Model { artifact })).is_err() {
                            return;
                        }
                        // Every kept version's bytes stay: a rollback needs them.
                        sent = Some(target);
                    }
                    Some(Err(e)) => {
                        warn!(model = %what, version = target, error = %e, "Refusing a model version");
                        refused = Some(target);
                    }
                }
            }
        })?;
        Ok(Watcher { rx, _thread: thread })
    }

    /// A new version to serve, if one arrived.
    pub fn try_next(&self) -> Option<Arc<Model>> {
        let mut last = None;
        while let Ok(m) = self.rx.try_recv() {
            last = Some(m);
        }
        last
    }

    /// Wait up to `timeout` for a version.
    pub fn next(&self, timeout: Duration) -> Option<Arc<Model>> {
        self.rx.recv_timeout(timeout).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_is_assembled_only_when_every_chunk_is_there_and_intact() {
        let mut seen = Seen::default();
        let bytes = b"vigil-model 1 sha256=00 bytes=3\nabc".to_vec();
        let m = VersionManifest {
            version: 3,
            chunks: 2,
            bytes: bytes.len(),
            sha256: crate::models::hex(&Sha256::digest(&bytes)),
        };
        seen.apply("v3", Some(&serde_json::to_vec(&m).unwrap()));
        seen.apply("v3/chunk/0", Some(&bytes[..10]));
        assert!(seen.assemble(3, "m").is_none(), "a chunk is missing");
        seen.apply("v3/chunk/1", Some(b"tampered"));
        let e = seen.assemble(3, "m").unwrap().unwrap_err();
        assert!(e.contains("does not match its manifest"), "{e}");
        seen.apply("serving", Some(br#"{"version": 3}"#));
        assert_eq!(seen.serving, Some(3));
        seen.apply("v3", None);
        assert!(seen.assemble(3, "m").is_none(), "a tombstone removes the version");
    }
}
