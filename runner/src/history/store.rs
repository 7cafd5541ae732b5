//! The history store: an embedded SQLite database on the Pipeline's volume.
//!
//! Why SQLite: one file, transactions that survive `kill -9` (write-ahead
//! log), range scans on composite indexes for the time and key queries, and
//! a format every operator can open with the `sqlite3` shell when something
//! needs looking at by hand. It is compiled in (rusqlite's `bundled`), so
//! the image needs nothing more.
//!
//! Tables:
//! - `anomalies`: every flagged record in full, by time and key: its JSON
//!   compressed with zstd and a dictionary trained on the store's first
//!   flagged records (`dictionaries`): flagged records of one pipeline look
//!   alike, so a small dictionary shrinks them several times.
//! - `dead_letters`: every dead-lettered record with stage, reason, where it
//!   came from, and its payload (cut to [`MAX_PAYLOAD`] bytes).
//! - `rollups`: per key and minute, the count, score sum and maximum,
//!   anomalies, and the sum of each feature (little-endian f64s, in the
//!   order of the row's feature set): what every record looked like, in
//!   bounded space.
//! - `offsets`: the next offset of each topic partition, written in the
//!   same transaction as the rows, so a restart resumes exactly after what
//!   was stored: nothing acknowledged is lost, nothing is stored twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;

/// Largest dead-letter payload kept (the rest is cut, and says so).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The store's file in its directory.
pub const FILE: &str = "history.db";
/// Schema version written in `PRAGMA user_version`.
const SCHEMA: i64 = 1;
/// One minute, the rollup resolution.
pub const MINUTE_MS: i64 = 60_000;
/// Most rows one query returns.
pub const MAX_LIMIT: usize = 1000;

const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS anomalies (
  id INTEGER PRIMARY KEY,
  ts INTEGER NOT NULL,
  key TEXT NOT NULL,
  score REAL NOT NULL,
  dict INTEGER NOT NULL,
  size INTEGER NOT NULL,
  record BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS dictionaries (
  id INTEGER PRIMARY KEY,
  data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS anomalies_by_time ON anomalies(ts);
CREATE INDEX IF NOT EXISTS anomalies_by_key ON anomalies(key, ts);
CREATE TABLE IF NOT EXISTS dead_letters (
  id INTEGER PRIMARY KEY,
  ts INTEGER NOT NULL,
  stage TEXT NOT NULL,
  reason TEXT NOT NULL,
  topic TEXT NOT NULL,
  partition INTEGER,
  offset INTEGER,
  truncated INTEGER NOT NULL,
  original_size INTEGER NOT NULL,
  payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_time ON dead_letters(ts);
CREATE TABLE IF NOT EXISTS feature_sets (
  id INTEGER PRIMARY KEY,
  names TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS rollups (
  key TEXT NOT NULL,
  minute INTEGER NOT NULL,
  count INTEGER NOT NULL,
  score_sum REAL NOT NULL,
  score_max REAL NOT NULL,
  scored INTEGER NOT NULL,
  anomalies INTEGER NOT NULL,
  feature_set INTEGER NOT NULL,
  feature_sums BLOB NOT NULL,
  feature_counts BLOB NOT NULL,
  PRIMARY KEY (key, minute)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rollups_by_minute ON rollups(minute, key);
CREATE TABLE IF NOT EXISTS offsets (
  topic TEXT NOT NULL,
  partition INTEGER NOT NULL,
  next INTEGER NOT NULL,
  PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
";

/// A flagged record to keep.
#[derive(Debug, Clone)]
pub struct NewAnomaly {
    /// Event time, ms since the epoch.
    pub ts: i64,
    /// The record's key.
    pub key: String,
    /// Its score.
    pub score: f64,
    /// The scored record (JSON).
    pub record: String,
}

/// A dead letter to keep.
#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    /// When it was dead-lettered (the dead letter's timestamp), ms.
    pub ts: i64,
    /// The stage that refused it.
    pub stage: String,
    /// Why.
    pub reason: String,
    /// The topic it came from.
    pub topic: String,
    /// Its partition there, when known.
    pub partition: Option<i32>,
    /// Its offset there, when known.
    pub offset: Option<i64>,
    /// Whether the payload was cut (by the runner or here).
    pub truncated: bool,
    /// The payload's size before any cut.
    pub original_size: u64,
    /// The payload (at most [`MAX_PAYLOAD`] bytes).
    pub payload: Vec<u8>,
}

/// Per key and minute, what records looked like.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Acc {
    /// Records.
    pub count: i64,
    /// Of those, scored.
    pub scored: i64,
    /// Sum of their scores.
    pub score_sum: f64,
    /// Highest score.
    pub score_max: f64,
    /// Flagged.
    pub anomalies: i64,
    /// Per feature (in the store's feature order): sum of the values seen.
    pub sums: Vec<f64>,
    /// Per feature: how many records had a number there.
    pub counts: Vec<i64>,
}

impl Acc {
    fn merge(&mut self, o: &Acc) {
        self.count += o.count;
        self.scored += o.scored;
        self.score_sum += o.score_sum;
        if o.scored > 0 && (self.scored == o.scored || o.score_max > self.score_max) {
            self.score_max = o.score_max;
        }
        self.anomalies += o.anomalies;
        let n = self.sums.len().max(o.sums.len());
        self.sums.resize(n, 0.0);
        self.counts.resize(n, 0);
        for (i, (s, c)) in o.sums.iter().zip(&o.counts).enumerate() {
            self.sums[i] += s;
            self.counts[i] += c;
        }
    }
}

/// Rows to write in one transaction, with the offsets they take the store to.
#[derive(Debug, Default)]
pub struct Batch {
    /// Flagged records.
    pub anomalies: Vec<NewAnomaly>,
    /// Dead letters.
    pub dead_letters: Vec<NewDeadLetter>,
    /// Per (key, minute start) accumulators.
    pub rollups: HashMap<(String, i64), Acc>,
    /// (topic, partition) -> the next offset to read.
    pub offsets: HashMap<(String, i32), i64>,
}

impl Batch {
    /// Count one scored (or unscored) output record in its key's minute.
    pub fn roll(&mut self, key: &str, ts: i64, score: Option<f64>, anomaly: bool, features: &[Option<f64>]) {
        let minute = ts.div_euclid(MINUTE_MS) * MINUTE_MS;
        let acc = match self.rollups.get_mut(&(key.to_string(), minute)) {
            Some(a) => a,
            None => self.rollups.entry((key.to_string(), minute)).or_default(),
        };
        acc.count += 1;
        if let Some(s) = score {
            if acc.scored == 0 || s > acc.score_max {
                acc.score_max = s;
            }
            acc.scored += 1;
            acc.score_sum += s;
        }
        acc.anomalies += i64::from(anomaly);
        if acc.sums.len() < features.len() {
            acc.sums.resize(features.len(), 0.0);
            acc.counts.resize(features.len(), 0);
        }
        for (i, v) in features.iter().enumerate() {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                acc.sums[i] += v;
                acc.counts[i] += 1;
            }
        }
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.anomalies.is_empty()
            && self.dead_letters.is_empty()
            && self.rollups.is_empty()
            && self.offsets.is_empty()
    }

    /// Records this batch covers (for progress and metrics).
    pub fn records(&self) -> i64 {
        self.rollups.values().map(|a| a.count).sum::<i64>() + self.dead_letters.len() as i64
    }
}

/// A stored anomaly, as the API returns it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnomalyRow {
    /// Event time (RFC 3339).
    pub time: String,
    /// The record's key.
    pub key: String,
    /// Its score.
    pub score: f64,
    /// The scored record as the output topic has it.
    #[schema(value_type = Object)]
    pub record: serde_json::Value,
}

/// A stored dead letter.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterRow {
    /// When it was dead-lettered (RFC 3339).
    pub time: String,
    /// The stage that refused it (decode, transform, detect, produce...).
    pub stage: String,
    /// Why.
    pub reason: String,
    /// The topic it came from.
    pub topic: String,
    /// Its partition there.
    pub partition: Option<i32>,
    /// Its offset there.
    pub offset: Option<i64>,
    /// Whether the payload below is cut.
    pub truncated: bool,
    /// The payload's size before any cut.
    pub original_size: u64,
    /// The payload, as text (invalid UTF-8 replaced).
    pub payload: String,
}

/// One key's minute.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollupRow {
    /// Start of the minute (RFC 3339).
    pub minute: String,
    /// The key.
    pub key: String,
    /// Records in that minute.
    pub count: i64,
    /// Mean score of the scored ones.
    pub mean_score: Option<f64>,
    /// Highest score.
    pub max_score: Option<f64>,
    /// Flagged records.
    pub anomalies: i64,
    /// Mean of each feature.
    pub features: std::collections::BTreeMap<String, f64>,
}

/// A page of rows and the cursor of the next one.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    /// Rows, oldest first.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// From this time (ms, inclusive).
    pub from: Option<i64>,
    /// Before this time (ms, exclusive).
    pub to: Option<i64>,
    /// Only this key.
    pub key: Option<String>,
    /// Only scores at or above.
    pub min_score: Option<f64>,
    /// Most rows (capped at [`MAX_LIMIT`]).
    pub limit: usize,
    /// Continue after this cursor.
    pub cursor: Option<Cursor>,
}

/// A position in a query's order: (time, row id), or for rollups
/// (minute, key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Time of the last row returned.
    pub ts: i64,
    /// Its row id (0 for rollups).
    pub id: i64,
    /// For rollups: the key of the last row.
    pub key: Option<String>,
}

impl Cursor {
    /// The opaque text form.
    pub fn encode(&self) -> String {
        let mut s = format!("v1.{:x}.{:x}", self.ts as u64, self.id as u64);
        if let Some(k) = &self.key {
            s.push('.');
            for b in k.bytes() {
                s.push_str(&format!("{b:02x}"));
            }
        }
        s
    }
    /// Parse what [`Cursor::encode`] wrote; anything else is an error.
    pub fn decode(s: &str) -> Result<Cursor, String> {
        let bad = || "not a cursor this API returned (pass nextCursor as it is)".to_string();
        let parts: Vec<&str> = s.strip_prefix("v1.").ok_or_else(bad)?.split('.').collect();
        if !(2..=3).contains(&parts.len()) || s.len() > 4096 {
            return Err(bad());
        }
        let ts = u64::from_str_radix(parts[0], 16).map_err(|_| bad())? as i64;
        let id = u64::from_str_radix(parts[1], 16).map_err(|_| bad())? as i64;
        let key = match parts.get(2) {
            None => None,
            Some(h) if h.len() % 2 == 0 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                let bytes: Vec<u8> = (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&h[i..i + 2], 16).map_err(|_| bad()))
                    .collect::<Result<_, _>>()?;
                Some(String::from_utf8(bytes).map_err(|_| bad())?)
            }
            Some(_) => return Err(bad()),
        };
        Ok(Cursor { ts, id, key })
    }
}

/// Counters of what the store holds.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Flagged records kept.
    pub anomalies: i64,
    /// Dead letters kept.
    pub dead_letters: i64,
    /// Rollup rows (key-minutes).
    pub rollups: i64,
    /// Records counted in the rollups.
    pub records: i64,
    /// Size of the database file and its log, bytes.
    pub bytes: u64,
}

/// Flagged records kept to train the dictionary on.
const DICT_SAMPLES: usize = 1000;
/// Dictionary size.
const DICT_BYTES: usize = 16 * 1024;
/// zstd level (fast; the dictionary does most of the work).
const ZSTD_LEVEL: i32 = 3;

/// The history database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    features: Vec<String>,
    feature_set: i64,
    compressor: Option<(i64, zstd::bulk::Compressor<'static>)>,
    samples: Vec<Vec<u8>>,
}

/// A stored record as text (dict 0: stored as it came).
fn unpack(
    dicts: &mut HashMap<i64, zstd::bulk::Decompressor<'static>>,
    conn: &Connection,
    dict: i64,
    size: i64,
    data: Vec<u8>,
) -> Result<String> {
    if dict == 0 {
        return Ok(String::from_utf8_lossy(&data).into_owned());
    }
    if !dicts.contains_key(&dict) {
        let bytes: Vec<u8> = conn
            .query_row("SELECT data FROM dictionaries WHERE id = ?1", [dict], |r| r.get(0))
            .with_context(|| format!("the store lacks dictionary {dict}: damaged"))?;
        dicts.insert(dict, zstd::bulk::Decompressor::with_dictionary(&bytes)?);
    }
    let d = dicts.get_mut(&dict).context("dictionary")?;
    let out = d
        .decompress(&data, usize::try_from(size).unwrap_or(0).min(64 << 20))
        .context("a stored record does not decompress: damaged")?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn rfc3339(ms: i64) -> String {
    crate::codec::time::format_rfc3339(ms)
}

fn f64s(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn i64s(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn read_f64s(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()
}
fn read_i64s(b: &[u8]) -> Vec<i64> {
    b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()
}

/// Refuse a database file shorter than its header says (a truncated copy
/// or a disk that lost its tail): SQLite would otherwise only notice when a
/// query reaches a missing page.
fn check_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else { return Ok(()) };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return Ok(());
    }
    let mut h = [0u8; 100];
    if len < 100 || f.read_exact(&mut h).is_err() {
        bail!(
            "{} is {len} bytes, shorter than a SQLite header: truncated or not a history store",
            path.display()
        );
    }
    if &h[..16] != b"SQLite format 3\0" {
        bail!("{} is not a SQLite database (the history store): refusing to use it", path.display());
    }
    let page = match u32::from(u16::from_be_bytes([h[16], h[17]])) {
        1 => 65536,
        p => p,
    };
    let pages = u32::from_be_bytes([h[28], h[29], h[30], h[31]]);
    // The size at offset 28 is valid when the change counter (24) matches
    // the version-valid-for number (92).
    let valid = h[24..28] == h[92..96];
    let want = u64::from(pages) * u64::from(page);
    if valid && pages > 0 && len < want {
        bail!(
            "{} is truncated: {len} bytes where its header says {pages} pages of {page} ({want} bytes). \
             Restore it from a backup, or move it away to start an empty store (the history is rebuilt \
             from what the topics still hold)",
            path.display()
        );
    }
    Ok(())
}

impl Store {
    /// Open (or create) the store in `dir`, rolling up `features`.
    pub fn open(dir: &Path, features: &[String]) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the history directory {}", dir.display()))?;
        let path = dir.join(FILE);
        check_header(&path)?;
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot open the history store {}", path.display()))?;
        let corrupt = |e: rusqlite::Error| {
            anyhow::anyhow!(
                "the history store {} is damaged ({e}): restore it from a backup, or move it away to start an empty one",
                path.display()
            )
        };
        conn.pragma_update(None, "journal_mode", "WAL").map_err(corrupt)?;
        // NORMAL in WAL mode: a commit survives the process being killed
        // (the log is in the OS's cache); FULL adds an fsync per commit
        // for power loss.
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(corrupt)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(corrupt)?;
        if version > SCHEMA {
            bail!(
                "the history store {} has schema {version}, newer than this vigil understands ({SCHEMA})",
                path.display()
            );
        }
        // A small file is checked in full; a large one relies on the
        // header check above and on SQLite's page checks as it reads.
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if size > 0 && size < 1 << 30 {
            let ok: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(corrupt)?;
            if ok != "ok" {
                bail!(
                    "the history store {} failed its integrity check ({ok}): restore it from a backup, or move it away to start an empty one",
                    path.display()
                );
            }
        }
        conn.execute_batch(SCHEMA_SQL).map_err(corrupt)?;
        conn.pragma_update(None, "user_version", SCHEMA)?;
        let names = serde_json::to_string(features)?;
        conn.execute("INSERT OR IGNORE INTO feature_sets(names) VALUES (?1)", [&names])?;
        let feature_set =
            conn.query_row("SELECT id FROM feature_sets WHERE names = ?1", [&names], |r| r.get(0))?;
        let compressor = conn
            .query_row("SELECT id, data FROM dictionaries ORDER BY id DESC LIMIT 1", [], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .optional()?
            .map(|(id, data)| zstd::bulk::Compressor::with_dictionary(ZSTD_LEVEL, &data).map(|c| (id, c)))
            .transpose()?;
        Ok(Store { conn, path, features: features.to_vec(), feature_set, compressor, samples: Vec::new() })
    }

    /// Open an existing store read-only (queries).
    pub fn open_read_only(dir: &Path) -> Result<Store> {
        let path = dir.join(FILE);
        if !path.is_file() {
            bail!("no history store in {} (expected {FILE})", dir.display());
        }
        check_header(&path)?;
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot open the history store {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Store { conn, path, features: Vec::new(), feature_set: 0, compressor: None, samples: Vec::new() })
    }

    /// The features rolled up, in order.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// Where each partition resumes: (topic, partition) -> next offset.
    pub fn offsets(&self) -> Result<HashMap<(String, i32), i64>> {
        let mut st = self.conn.prepare("SELECT topic, partition, next FROM offsets")?;
        let rows =
            st.query_map([], |r| Ok(((r.get::<_, String>(0)?, r.get::<_, i32>(1)?), r.get::<_, i64>(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Write a batch and its offsets in one transaction.
    pub fn write(&mut self, batch: &Batch) -> Result<(), rusqlite::Error> {
        let tx = self.conn.transaction()?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO anomalies(ts, key, score, dict, size, record) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for a in &batch.anomalies {
                let raw = a.record.as_bytes();
                let packed =
                    self.compressor.as_mut().and_then(|(id, c)| c.compress(raw).ok().map(|b| (*id, b)));
                match packed {
                    Some((id, b)) => ins.execute(params![a.ts, a.key, a.score, id, raw.len() as i64, b])?,
                    None => {
                        if self.samples.len() < DICT_SAMPLES {
                            self.samples.push(raw.to_vec());
                        }
                        ins.execute(params![a.ts, a.key, a.score, 0i64, raw.len() as i64, raw])?
                    }
                };
            }
            let mut ins = tx.prepare_cached(
                "INSERT INTO dead_letters(ts, stage, reason, topic, partition, offset, truncated, original_size, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for d in &batch.dead_letters {
                ins.execute(params![
                    d.ts,
                    d.stage,
                    d.reason,
                    d.topic,
                    d.partition,
                    d.offset,
                    d.truncated,
                    d.original_size as i64,
                    d.payload
                ])?;
            }
            let mut get = tx.prepare_cached(
                "SELECT count, scored, score_sum, score_max, anomalies, feature_set, feature_sums, feature_counts
                 FROM rollups WHERE key = ?1 AND minute = ?2",
            )?;
            let mut put = tx.prepare_cached(
                "INSERT OR REPLACE INTO rollups(key, minute, count, scored, score_sum, score_max, anomalies, feature_set, feature_sums, feature_counts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for ((key, minute), acc) in &batch.rollups {
                let old = get
                    .query_row(params![key, minute], |r| {
                        Ok((
                            Acc {
                                count: r.get(0)?,
                                scored: r.get(1)?,
                                score_sum: r.get(2)?,
                                score_max: r.get(3)?,
                                anomalies: r.get(4)?,
                                sums: read_f64s(&r.get::<_, Vec<u8>>(6)?),
                                counts: read_i64s(&r.get::<_, Vec<u8>>(7)?),
                            },
                            r.get::<_, i64>(5)?,
                        ))
                    })
                    .optional()?;
                let merged = match old {
                    // The same features: add up. Another feature set (the
                    // Pipeline changed within the minute): this minute
                    // keeps the counts and starts the feature sums afresh.
                    Some((mut old, set)) => {
                        if set != self.feature_set {
                            old.sums.clear();
                            old.counts.clear();
                        }
                        old.merge(acc);
                        old
                    }
                    None => acc.clone(),
                };
                put.execute(params![
                    key,
                    minute,
                    merged.count,
                    merged.scored,
                    merged.score_sum,
                    merged.score_max,
                    merged.anomalies,
                    self.feature_set,
                    f64s(&merged.sums),
                    i64s(&merged.counts)
                ])?;
            }
            let mut off = tx.prepare_cached(
                "INSERT OR REPLACE INTO offsets(topic, partition, next) VALUES (?1, ?2, ?3)",
            )?;
            for ((topic, partition), next) in &batch.offsets {
                off.execute(params![topic, partition, next])?;
            }
        }
        tx.commit()?;
        if self.compressor.is_none() && self.samples.len() >= DICT_SAMPLES {
            self.train();
        }
        Ok(())
    }

    /// Train the dictionary on the samples kept; later records use it
    /// (records already stored stay as they are). A failure leaves records
    /// uncompressed, which costs room, not correctness.
    fn train(&mut self) {
        let samples = std::mem::take(&mut self.samples);
        let Ok(dict) = zstd::dict::from_samples(&samples, DICT_BYTES) else { return };
        let Ok(c) = zstd::bulk::Compressor::with_dictionary(ZSTD_LEVEL, &dict) else { return };
        if self.conn.execute("INSERT INTO dictionaries(data) VALUES (?1)", [&dict]).is_ok() {
            self.compressor = Some((self.conn.last_insert_rowid(), c));
        }
    }

    /// Remove everything older than `cutoff` (ms); returns rows removed.
    pub fn enforce_retention(&mut self, cutoff: i64) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let mut n = tx.execute("DELETE FROM anomalies WHERE ts < ?1", [cutoff])?;
        n += tx.execute("DELETE FROM dead_letters WHERE ts < ?1", [cutoff])?;
        n +=
            tx.execute("DELETE FROM rollups WHERE minute < ?1", [cutoff.div_euclid(MINUTE_MS) * MINUTE_MS])?;
        tx.commit()?;
        Ok(n)
    }

    fn range(q: &Query) -> (i64, i64, usize) {
        (q.from.unwrap_or(i64::MIN), q.to.unwrap_or(i64::MAX), q.limit.clamp(1, MAX_LIMIT))
    }

    /// Flagged records, oldest first.
    pub fn anomalies(&self, q: &Query) -> Result<Page<AnomalyRow>> {
        let (from, to, limit) = Self::range(q);
        let (cts, cid) = q.cursor.as_ref().map_or((i64::MIN, i64::MIN), |c| (c.ts, c.id));
        let min = q.min_score.unwrap_or(f64::NEG_INFINITY);
        let sql_key =
            "SELECT id, ts, key, score, dict, size, record FROM anomalies INDEXED BY anomalies_by_key
             WHERE key = ?1 AND ts >= ?2 AND ts < ?3 AND (ts, id) > (?4, ?5) AND score >= ?6
             ORDER BY ts, id LIMIT ?7";
        let sql_all =
            "SELECT id, ts, key, score, dict, size, record FROM anomalies INDEXED BY anomalies_by_time
             WHERE ts >= ?2 AND ts < ?3 AND (ts, id) > (?4, ?5) AND score >= ?6 AND ?1 IS NULL
             ORDER BY ts, id LIMIT ?7";
        let mut st = self.conn.prepare_cached(if q.key.is_some() { sql_key } else { sql_all })?;
        let rows = st.query_map(params![q.key, from, to, cts, cid, min, (limit + 1) as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, f64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Vec<u8>>(6)?,
            ))
        })?;
        let mut items = Vec::new();
        let mut last = None;
        let mut dicts = HashMap::new();
        for row in rows {
            let (id, ts, key, score, dict, size, data) = row?;
            if items.len() == limit {
                return Ok(Page { items, next_cursor: last.map(|c: Cursor| c.encode()) });
            }
            last = Some(Cursor { ts, id, key: None });
            let record = unpack(&mut dicts, &self.conn, dict, size, data)?;
            let record = serde_json::from_str(&record).unwrap_or(serde_json::Value::String(record));
            items.push(AnomalyRow { time: rfc3339(ts), key, score, record });
        }
        Ok(Page { items, next_cursor: None })
    }

    /// Dead letters, oldest first.
    pub fn dead_letters(&self, q: &Query) -> Result<Page<DeadLetterRow>> {
        let (from, to, limit) = Self::range(q);
        let (cts, cid) = q.cursor.as_ref().map_or((i64::MIN, i64::MIN), |c| (c.ts, c.id));
        let mut st = self.conn.prepare_cached(
            "SELECT id, ts, stage, reason, topic, partition, offset, truncated, original_size, payload
             FROM dead_letters WHERE ts >= ?1 AND ts < ?2 AND (ts, id) > (?3, ?4) ORDER BY ts, id LIMIT ?5",
        )?;
        let rows = st.query_map(params![from, to, cts, cid, (limit + 1) as i64], |r| {
            Ok((
                Cursor { ts: r.get(1)?, id: r.get(0)?, key: None },
                DeadLetterRow {
                    time: rfc3339(r.get(1)?),
                    stage: r.get(2)?,
                    reason: r.get(3)?,
                    topic: r.get(4)?,
                    partition: r.get(5)?,
                    offset: r.get(6)?,
                    truncated: r.get(7)?,
                    original_size: r.get::<_, i64>(8)?.max(0) as u64,
                    payload: String::from_utf8_lossy(&r.get::<_, Vec<u8>>(9)?).into_owned(),
                },
            ))
        })?;
        let mut items = Vec::new();
        let mut last: Option<Cursor> = None;
        for row in rows {
            let (c, d) = row?;
            if items.len() == limit {
                return Ok(Page { items, next_cursor: last.map(|c| c.encode()) });
            }
            last = Some(c);
            items.push(d);
        }
        Ok(Page { items, next_cursor: None })
    }

    /// Per-minute rollups (of one key, or of all), by minute then key.
    pub fn history(&self, q: &Query) -> Result<Page<RollupRow>> {
        let (from, to, limit) = Self::range(q);
        let from = from.div_euclid(MINUTE_MS).saturating_mul(MINUTE_MS);
        let sets: HashMap<i64, Vec<String>> = {
            let mut st = self.conn.prepare_cached("SELECT id, names FROM feature_sets")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
            rows.filter_map(Result::ok)
                .map(|(id, n)| (id, serde_json::from_str(&n).unwrap_or_default()))
                .collect()
        };
        let (cmin, ckey) = match &q.cursor {
            Some(c) => (c.ts, c.key.clone().unwrap_or_default()),
            None => (i64::MIN, String::new()),
        };
        let cols = "key, minute, count, scored, score_sum, score_max, anomalies, feature_set, feature_sums, feature_counts";
        let sql = if q.key.is_some() {
            format!(
                "SELECT {cols} FROM rollups WHERE key = ?1 AND minute >= ?2 AND minute < ?3 AND (minute, key) > (?4, ?5)
                 ORDER BY minute LIMIT ?6"
            )
        } else {
            format!(
                "SELECT {cols} FROM rollups INDEXED BY rollups_by_minute WHERE ?1 IS NULL AND minute >= ?2 AND minute < ?3
                 AND (minute, key) > (?4, ?5) ORDER BY minute, key LIMIT ?6"
            )
        };
        let mut st = self.conn.prepare_cached(&sql)?;
        let rows = st.query_map(params![q.key, from, to, cmin, ckey, (limit + 1) as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                Acc {
                    count: r.get(2)?,
                    scored: r.get(3)?,
                    score_sum: r.get(4)?,
                    score_max: r.get(5)?,
                    anomalies: r.get(6)?,
                    sums: read_f64s(&r.get::<_, Vec<u8>>(8)?),
                    counts: read_i64s(&r.get::<_, Vec<u8>>(9)?),
                },
                r.get::<_, i64>(7)?,
            ))
        })?;
        let mut items = Vec::new();
        let mut last: Option<Cursor> = None;
        for row in rows {
            let (key, minute, acc, set) = row?;
            if items.len() == limit {
                return Ok(Page { items, next_cursor: last.map(|c| c.encode()) });
            }
            last = Some(Cursor { ts: minute, id: 0, key: Some(key.clone()) });
            let names = sets.get(&set).cloned().unwrap_or_default();
            let features = names
                .into_iter()
                .zip(acc.sums.iter().zip(&acc.counts))
                .filter(|(_, (_, c))| **c > 0)
                .map(|(n, (s, c))| (n, s / *c as f64))
                .collect();
            items.push(RollupRow {
                minute: rfc3339(minute),
                key,
                count: acc.count,
                mean_score: (acc.scored > 0).then(|| acc.score_sum / acc.scored as f64),
                max_score: (acc.scored > 0).then_some(acc.score_max),
                anomalies: acc.anomalies,
                features,
            });
        }
        Ok(Page { items, next_cursor: None })
    }

    /// What the store holds.
    pub fn stats(&self) -> Result<Stats> {
        let one = |sql: &str| self.conn.query_row(sql, [], |r| r.get::<_, i64>(0));
        let bytes = [FILE, &format!("{FILE}-wal")]
            .iter()
            .filter_map(|f| std::fs::metadata(self.path.with_file_name(f)).ok())
            .map(|m| m.len())
            .sum();
        Ok(Stats {
            anomalies: one("SELECT count(*) FROM anomalies")?,
            dead_letters: one("SELECT count(*) FROM dead_letters")?,
            rollups: one("SELECT count(*) FROM rollups")?,
            records: one("SELECT coalesce(sum(count), 0) FROM rollups")?,
            bytes,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether a write failed because the volume is full.
pub fn is_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}
