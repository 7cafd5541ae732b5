//! Committed offsets of every Vigil consumer group in a cluster, read from
//! Kafka's own `__consumer_offsets` topic by one long-lived consumer.
//!
//! Asking the group coordinator for one group's offsets needs a consumer
//! whose `group.id` is that group (rdkafka has no admin call for it), so
//! measuring lag that way opens and closes a Kafka client per Pipeline per
//! re-check. Reading the offsets topic instead costs one idle long-poll per
//! cluster, and a lag query is then a map lookup plus the high watermarks.
//! The reader only trusts its map once it has read every partition of the
//! offsets topic up to where it stood when the reader started; until then,
//! or when the cluster does not let it read that topic (ACLs), callers fall
//! back to asking the coordinator.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, ClientContext};
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{KafkaError, TIMEOUT};
use crate::lock;

/// Kafka's internal topic of committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// A committed offset's address: (group, topic, partition).
type Key = (String, String, i32);

/// One decoded record of the offsets topic.
#[derive(Debug, PartialEq, Eq)]
pub enum OffsetRecord {
    /// `group` committed `offset` for `topic`/`partition`; `None` is a
    /// tombstone (the offset was deleted or expired).
    Commit { group: String, topic: String, partition: i32, offset: Option<i64> },
    /// Anything else the coordinator keeps there (group metadata, KIP-848
    /// member records).
    Other,
}

fn read_i16(b: &[u8], at: &mut usize) -> Option<i16> {
    let v = i16::from_be_bytes(b.get(*at..*at + 2)?.try_into().ok()?);
    *at += 2;
    Some(v)
}

fn read_i32(b: &[u8], at: &mut usize) -> Option<i32> {
    let v = i32::from_be_bytes(b.get(*at..*at + 4)?.try_into().ok()?);
    *at += 4;
    Some(v)
}

fn read_i64(b: &[u8], at: &mut usize) -> Option<i64> {
    let v = i64::from_be_bytes(b.get(*at..*at + 8)?.try_into().ok()?);
    *at += 8;
    Some(v)
}

fn read_string(b: &[u8], at: &mut usize) -> Option<String> {
    let len = usize::try_from(read_i16(b, at)?).ok()?;
    let s = std::str::from_utf8(b.get(*at..*at + len)?).ok()?.to_string();
    *at += len;
    Some(s)
}

/// Decode a record of `__consumer_offsets`. Offset commits have key version
/// 0 or 1 (`OffsetCommitKey`: group, topic, partition) and a value whose
/// first field after its version is the offset in every version (0-4, the
/// flexible v4 included). `None` means the bytes do not parse.
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Option<OffsetRecord> {
    let mut at = 0;
    let version = read_i16(key, &mut at)?;
    if !(0..=1).contains(&version) {
        return Some(OffsetRecord::Other);
    }
    let group = read_string(key, &mut at)?;
    let topic = read_string(key, &mut at)?;
    let partition = read_i32(key, &mut at)?;
    let offset = match value {
        None => None,
        Some(v) => {
            let mut at = 0;
            read_i16(v, &mut at)?;
            Some(read_i64(v, &mut at)?)
        }
    };
    Some(OffsetRecord::Commit { group, topic, partition, offset })
}

/// The reading consumer's context: librdkafka also reports each
/// end-of-partition (which the reader asks for, to know it caught up) as a
/// client error, which rdkafka's default context logs at error level. The
/// reader is the cluster connection's one client whose error events are
/// polled, so it is also the one that hears the cluster refuse the
/// credentials (the admin client's requests only time out).
struct ReaderCtx {
    refused: Refusals,
}

/// The last time the cluster refused a connection's credentials or TLS
/// (not an ACL: reading the offsets topic may be denied to a principal
/// that may do everything a Pipeline needs), and how.
pub type Refusals = Arc<Mutex<Option<(String, std::time::Instant)>>>;

impl ClientContext for ReaderCtx {
    fn error(&self, error: RdError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        tracing::warn!(error = %error, "Reading {OFFSETS_TOPIC}: {reason}");
        use vigil_crds::kafka_access::AccessProblem;
        if matches!(
            code.and_then(|c| AccessProblem::from_code(c as i32)),
            Some(AccessProblem::Authentication | AccessProblem::Tls)
        ) {
            *lock(&self.refused) = Some((reason.to_string(), std::time::Instant::now()));
        }
    }
}

impl ConsumerContext for ReaderCtx {}

#[derive(Default)]
struct State {
    offsets: HashMap<Key, i64>,
    /// Set once every partition reached its starting high watermark.
    caught_up: bool,
    /// Why the reader stopped, if it did.
    failed: Option<String>,
}

/// The reader of one cluster's offsets topic (a thread polling a consumer).
/// Dropping it stops the thread.
pub struct OffsetsReader {
    /// Watermark queries only. Not the reading consumer: a broker serves one
    /// request per connection at a time, so a query sent behind that
    /// consumer's long-poll fetch would wait for it.
    queries: BaseConsumer<ReaderCtx>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl OffsetsReader {
    /// Start reading `__consumer_offsets` from the beginning, keeping the
    /// offsets of groups whose name starts with `group_prefix`.
    pub fn start(config: &ClientConfig, group_prefix: &str, refused: Refusals) -> Result<Self, KafkaError> {
        let mut c = config.clone();
        // Partitions are assigned by hand and nothing is committed; librdkafka
        // assigns only in a consumer with a group, which never joins here.
        c.set("group.id", "vigil-operator-offsets-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            // Offsets lost to truncation: read what is there rather than
            // skip to the end and call the gap caught up.
            .set("auto.offset.reset", "earliest")
            // Offsets committed inside a transaction count once it commits,
            // as the coordinator itself reports them.
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "2000")
            // Do not buffer much of a large offsets topic in memory.
            .set("queued.max.messages.kbytes", "4096");
        let reading: BaseConsumer<ReaderCtx> =
            c.create_with_context(ReaderCtx { refused: refused.clone() })?;
        // Connected at once (librdkafka connects only when a request needs
        // it by default), so a refusal of the credentials or of TLS is
        // heard even while no lag is asked.
        let queries: BaseConsumer<ReaderCtx> =
            c.clone().set("enable.sparse.connections", "false").create_with_context(ReaderCtx { refused })?;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, prefix) = (state.clone(), stop.clone(), group_prefix.to_string());
        std::thread::Builder::new()
            .name("offsets-reader".into())
            .spawn(move || {
                if let Err(e) = run(&reading, &s, &st, &prefix) {
                    tracing::info!(error = %e, "Not reading committed offsets from {OFFSETS_TOPIC}; lag is asked of each group's coordinator instead");
                    lock(&s).failed = Some(e.to_string());
                }
            })
            .map_err(|e| KafkaError(format!("starting the offsets reader: {e}")))?;
        Ok(OffsetsReader { queries, state, stop })
    }

    /// Committed offsets of `group` for `topic` partitions `0..partitions`
    /// (`None` for a partition the group never committed), or `None` while
    /// the reader has not caught up or has stopped.
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Option<Vec<Option<i64>>> {
        let s = lock(&self.state);
        if !s.caught_up || s.failed.is_some() {
            return None;
        }
        let mut key = (group.to_string(), topic.to_string(), 0);
        Some(
            (0..partitions)
                .map(|p| {
                    key.2 = p;
                    s.offsets.get(&key).copied()
                })
                .collect(),
        )
    }

    /// Records of `topic` past `committed` (one entry per partition from 0),
    /// against the high watermarks. Blocks for up to one request timeout per
    /// partition.
    pub fn lag(&self, topic: &str, committed: &[Option<i64>]) -> Result<i64, KafkaError> {
        // Nothing is assigned to this consumer: polling only clears the
        // client events (errors) that would otherwise pile up.
        while self.queries.poll(Duration::ZERO).is_some() {}
        lag_of(&self.queries, topic, committed.iter().copied().zip(0..))
    }

    /// Serve the client events (errors) of the query consumer, so a
    /// refusal of the credentials is recorded now; waits up to `wait` for
    /// the first.
    pub fn poll_events(&self, wait: Duration) {
        let deadline = std::time::Instant::now() + wait;
        while self.queries.poll(deadline.saturating_duration_since(std::time::Instant::now())).is_some() {}
    }

    /// Why the reader stopped, if it did.
    pub fn failed(&self) -> Option<String> {
        lock(&self.state).failed.clone()
    }
}

impl Drop for OffsetsReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sum over partitions of high watermark minus committed offset (minus the
/// low watermark where nothing is committed).
pub fn lag_of<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    topic: &str,
    committed: impl Iterator<Item = (Option<i64>, i32)>,
) -> Result<i64, KafkaError> {
    let mut lag = 0;
    for (offset, partition) in committed {
        let (low, high) = consumer.fetch_watermarks(topic, partition, TIMEOUT)?;
        lag += (high - offset.unwrap_or(low)).max(0);
    }
    Ok(lag)
}

/// Refusals that retrying will not change.
fn denied(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
        )
    )
}

/// Assign every partition of the offsets topic from the beginning; returns
/// the high watermark of each partition that has records (where reading
/// catches up). `Err((denied, why))`.
fn assign_all(consumer: &BaseConsumer<ReaderCtx>) -> Result<HashMap<i32, i64>, (bool, KafkaError)> {
    let failed = |e: RdError| (denied(e.rdkafka_error_code()), KafkaError::from(e));
    let md = consumer.fetch_metadata(Some(OFFSETS_TOPIC), TIMEOUT).map_err(failed)?;
    let topic = md
        .topics()
        .iter()
        .find(|t| t.name() == OFFSETS_TOPIC)
        .ok_or_else(|| (false, KafkaError(format!("{OFFSETS_TOPIC} is not in the metadata"))))?;
    if let Some(e) = topic.error() {
        let code = RDKafkaErrorCode::from(e);
        return Err((denied(Some(code)), KafkaError(format!("metadata of {OFFSETS_TOPIC}: {code:?}"))));
    }
    if topic.partitions().is_empty() {
        // No group has ever committed; the topic is created on first use.
        return Err((false, KafkaError(format!("{OFFSETS_TOPIC} has no partitions yet"))));
    }
    let mut behind = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in topic.partitions().iter().map(|p| p.id()) {
        let (low, high) = consumer.fetch_watermarks(OFFSETS_TOPIC, p, TIMEOUT).map_err(failed)?;
        if high > low {
            behind.insert(p, high);
        }
        tpl.add_partition_offset(OFFSETS_TOPIC, p, Offset::Beginning).map_err(failed)?;
    }
    consumer.assign(&tpl).map_err(failed)?;
    Ok(behind)
}

fn run(
    consumer: &BaseConsumer<ReaderCtx>,
    state: &Mutex<State>,
    stop: &AtomicBool,
    prefix: &str,
) -> Result<(), KafkaError> {
    // Caught up once each partition has been read to its high watermark as
    // of the assignment (an empty partition already is). Until the topic can
    // be read (the cluster is down, or no group has committed yet) lag
    // queries use the coordinator.
    let mut behind = loop {
        match assign_all(consumer) {
            Ok(behind) => break behind,
            Err((true, e)) => return Err(e),
            Err((false, e)) => {
                tracing::debug!(error = %e, "Cannot read {OFFSETS_TOPIC} yet; retrying in 10 s");
                for _ in 0..20 {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    };
    lock(state).caught_up = behind.is_empty();
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Ok(m)) => {
                if let Some(h) = behind.get(&m.partition()) {
                    if m.offset() + 1 >= *h {
                        behind.remove(&m.partition());
                    }
                }
                if let Some(OffsetRecord::Commit { group, topic, partition, offset }) =
                    m.key().and_then(|k| decode(k, m.payload()))
                {
                    if group.starts_with(prefix) {
                        let mut s = lock(state);
                        match offset {
                            Some(o) => s.offsets.insert((group, topic, partition), o),
                            None => s.offsets.remove(&(group, topic, partition)),
                        };
                    }
                }
                if !behind.is_empty() {
                    continue;
                }
                let mut s = lock(state);
                if !s.caught_up {
                    tracing::debug!(
                        groups = s.offsets.len(),
                        "Read the committed offsets of {OFFSETS_TOPIC}"
                    );
                    s.caught_up = true;
                }
            }
            Some(Err(RdError::PartitionEOF(p))) => {
                behind.remove(&p);
                if behind.is_empty() {
                    lock(state).caught_up = true;
                }
            }
            Some(Err(e)) => {
                if denied(e.rdkafka_error_code()) {
                    return Err(e.into());
                }
                tracing::debug!(error = %e, "Reading {OFFSETS_TOPIC}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &str) -> Vec<u8> {
        let mut b = (s.len() as i16).to_be_bytes().to_vec();
        b.extend_from_slice(s.as_bytes());
        b
    }

    fn commit_key(version: i16, group: &str, topic: &str, partition: i32) -> Vec<u8> {
        let mut k = version.to_be_bytes().to_vec();
        k.extend(string(group));
        k.extend(string(topic));
        k.extend(partition.to_be_bytes());
        k
    }

    #[test]
    fn offset_commits_decode_in_every_value_version() {
        let key = commit_key(1, "vigil.ns.p", "in", 2);
        for version in 0..=4i16 {
            let mut v = version.to_be_bytes().to_vec();
            v.extend(1234i64.to_be_bytes());
            v.extend([0u8; 12]); // the fields after the offset are not read
            assert_eq!(
                decode(&key, Some(&v)),
                Some(OffsetRecord::Commit {
                    group: "vigil.ns.p".into(),
                    topic: "in".into(),
                    partition: 2,
                    offset: Some(1234)
                }),
                "value version {version}"
            );
        }
        assert_eq!(
            decode(&commit_key(0, "g", "t", 0), None),
            Some(OffsetRecord::Commit { group: "g".into(), topic: "t".into(), partition: 0, offset: None })
        );
    }

    #[test]
    fn other_records_and_garbage_are_not_commits() {
        // Group metadata (key version 2) and KIP-848 records (3 and up).
        for version in [2i16, 3, 11] {
            let mut k = version.to_be_bytes().to_vec();
            k.extend(string("g"));
            assert_eq!(decode(&k, Some(&[0, 0])), Some(OffsetRecord::Other));
        }
        assert_eq!(decode(&[0], None), None);
        let mut truncated = commit_key(1, "g", "t", 0);
        truncated.truncate(truncated.len() - 2);
        assert_eq!(decode(&truncated, None), None);
        assert_eq!(decode(&commit_key(1, "g", "t", 0), Some(&[0, 1, 0, 0])), None);
    }
}
