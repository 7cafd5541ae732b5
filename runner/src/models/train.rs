//! `vigil train MODEL.yaml`: read training data (a file, or a Kafka topic
//! between two times), apply the Model's transforms with the runner's own
//! transform code, fit, calibrate the threshold, and write one immutable,
//! versioned artifact.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use vigil_crds::{Model, ModelSpec, RecordFormat};

use super::fit::{TrainingData, fit};
use super::{
    Artifact, FORMAT, Metadata, Model as Loaded, algorithm_name, calibrate, quantiles, transforms_hash,
};
use crate::codec::Meta;
use crate::engine::{Engine, Event};
use crate::record::FieldId;

/// What to train from and where to write.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Read this file instead of the spec's source.
    pub input: Option<PathBuf>,
    /// `json` or `csv`, when the file name does not say.
    pub format: Option<RecordFormat>,
    /// Directory of versioned artifacts.
    pub output: PathBuf,
    /// The version to write; by default one above the newest in `output`.
    pub version: Option<i64>,
    /// Kafka bootstrap servers for a topic source (over the spec's).
    pub bootstrap: Option<String>,
    /// Directory of the mounted Kafka Secret.
    pub kafka_secret_dir: Option<PathBuf>,
    /// Publish the artifact to this registry topic, under this namespace.
    pub publish: Option<(String, String)>,
    /// After publishing, keep only this many newest versions in the registry.
    pub keep: Option<usize>,
}

/// The outcome of one training run.
#[derive(Debug)]
pub struct Trained {
    /// Where the artifact was written.
    pub path: PathBuf,
    /// The artifact.
    pub artifact: Artifact,
}

/// The newest version in `dir` of `model`, if any.
pub fn latest_version(dir: &Path, model: &str) -> Option<i64> {
    let prefix = format!("{model}-v");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(&prefix)?.strip_suffix(".vmodel")?.parse::<i64>().ok()
        })
        .max()
}

/// Train `model` as `opts` say; prints progress and a summary to stderr.
pub fn train(model: &Model, opts: &Options) -> Result<Trained> {
    let started = Instant::now();
    let name = model.metadata.name.clone().unwrap_or_default();
    let spec = &model.spec;
    let version = match opts.version {
        Some(v) => v,
        None => latest_version(&opts.output, &name).unwrap_or(0) + 1,
    };
    let (data, read, source) = read_training_data(spec, opts)?;
    if data.x.len() < 2 {
        bail!(
            "Model {name}: {} of {read} records from {source} are usable for training (each needs every feature in {:?} as a number{}); nothing was written",
            data.x.len(),
            spec.features,
            spec.label.as_ref().map(|l| format!(" and the label {l:?}")).unwrap_or_default()
        );
    }
    let fit_started = Instant::now();
    let params = spec.params.clone().unwrap_or_default();
    let scaling = super::Scaling::fit(&data.x);
    let mut data = data;
    for row in &mut data.x {
        let raw = row.clone();
        scaling.apply(&raw, row);
    }
    let (fitted, classes) = fit(spec.algorithm, &params, &data)
        .map_err(|e| anyhow::anyhow!("Model {name}: training failed: {e}"))?;
    let fit_seconds = fit_started.elapsed().as_secs_f64();

    // Training scores: calibration, threshold, accuracy.
    let mut parts = vec![0.0; spec.features.len()];
    let mut raw = Vec::with_capacity(data.x.len());
    let mut correct = 0usize;
    for (i, x) in data.x.iter().enumerate() {
        let (r, class) = fitted.raw(x, &mut parts, classes.as_ref());
        raw.push(r);
        if let (Some(c), Some(cls)) = (class, &classes) {
            correct += usize::from(cls.names.get(c) == data.labels.get(i));
        }
    }
    let supervised = classes.is_some();
    let qs = if supervised { Vec::new() } else { quantiles(&mut raw.clone()) };
    let cal = spec
        .calibration
        .clone()
        .unwrap_or(vigil_crds::model::Calibration { contamination: None, quantile: None });
    let (threshold, how) = match (cal.contamination, cal.quantile, supervised) {
        (Some(c), _, false) => (calibrate(&qs, raw_quantile(&qs, 1.0 - c)), format!("contamination={c}")),
        (None, Some(q), false) => (calibrate(&qs, raw_quantile(&qs, q)), format!("quantile={q}")),
        (None, None, false) => {
            (calibrate(&qs, raw_quantile(&qs, 0.99)), "contamination=0.01 (default)".into())
        }
        (Some(c), _, true) => (probability_quantile(&mut raw, 1.0 - c), format!("contamination={c}")),
        (None, Some(q), true) => (probability_quantile(&mut raw, q), format!("quantile={q}")),
        (None, None, true) => (0.5, "probability=0.5 (default)".into()),
    };
    let accuracy = supervised.then(|| correct as f64 / data.x.len() as f64);
    let artifact = Artifact {
        format: FORMAT,
        metadata: Metadata {
            model: name.clone(),
            version,
            algorithm: spec.algorithm,
            params: serde_json::to_value(&params).unwrap_or_default(),
            features: spec.features.clone(),
            label: spec.label.clone(),
            transforms_hash: transforms_hash(&spec.transforms),
            transforms: spec.transforms.clone(),
            trained_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            records: data.x.len() as u64,
            skipped: read.saturating_sub(data.x.len() as u64),
            fit_seconds,
            seconds: started.elapsed().as_secs_f64(),
            source,
            threshold,
            calibration: how,
            accuracy,
        },
        quantiles: qs,
        classes,
        scaling,
        fitted,
    };
    let path = artifact.write(&opts.output).with_context(|| format!("Model {name}"))?;
    if let Some((topic, namespace)) = &opts.publish {
        let settings = training_kafka(spec, opts)?;
        let manifest = super::registry::publish(&settings, topic, namespace, &artifact)?;
        eprintln!(
            "Published Model {namespace}/{name} v{version} to the registry topic {topic} ({} chunk(s), sha256 {})",
            manifest.chunks, manifest.sha256
        );
        if let Some(keep) = opts.keep {
            let removed = super::registry::prune(&settings, topic, namespace, &name, keep)?;
            if !removed.is_empty() {
                eprintln!("Removed versions {removed:?} from the registry (keeping the newest {keep})");
            }
        }
    }
    let m = &artifact.metadata;
    eprintln!(
        "Model {name} v{version} ({}): {} records ({} skipped) from {}; fitted in {:.2} s, {:.2} s in all; threshold {:.4} ({}){}; written to {} ({} bytes)",
        algorithm_name(m.algorithm),
        m.records,
        m.skipped,
        m.source,
        m.fit_seconds,
        started.elapsed().as_secs_f64(),
        m.threshold,
        m.calibration,
        accuracy.map(|a| format!("; training accuracy {:.3}", a)).unwrap_or_default(),
        path.display(),
        std::fs::metadata(&path).map(|md| md.len()).unwrap_or(0),
    );
    Ok(Trained { path, artifact })
}

/// The Kafka connection of the training data (and of the registry).
fn training_kafka(spec: &ModelSpec, opts: &Options) -> Result<crate::run::kafka_config::KafkaSettings> {
    let kafka = spec.training.kafka.clone().unwrap_or_default();
    crate::run::kafka_config::KafkaSettings::resolve(
        &kafka,
        opts.bootstrap.as_deref(),
        opts.kafka_secret_dir.as_deref(),
    )
}

fn raw_quantile(qs: &[f64], q: f64) -> f64 {
    let pos = q.clamp(0.0, 1.0) * (qs.len().saturating_sub(1)) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    match (qs.get(lo), qs.get(hi)) {
        (Some(a), Some(b)) => a + (b - a) * (pos - lo as f64),
        _ => 0.0,
    }
}

fn probability_quantile(p: &mut [f64], q: f64) -> f64 {
    p.sort_by(f64::total_cmp);
    let i = ((p.len().saturating_sub(1)) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    p.get(i).copied().unwrap_or(0.5)
}

/// Read, transform and extract features (and labels): the rows, the number
/// of records read, and a description of the source.
fn read_training_data(spec: &ModelSpec, opts: &Options) -> Result<(TrainingData, u64, String)> {
    let enc = &spec.training.encoding;
    let max = u64::try_from(spec.training.max_records).unwrap_or(u64::MAX);
    let file = opts.input.clone().or_else(|| spec.training.file.as_ref().map(PathBuf::from));
    if let Some(path) = file {
        let format = match opts.format {
            Some(f) => f,
            None => match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
                Some("csv") => RecordFormat::Csv,
                Some("json" | "jsonl" | "ndjson") => RecordFormat::Json,
                _ => enc.format,
            },
        };
        let f = std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let size = f.metadata().ok().map(|m| m.len());
        let mut lines = BufReader::with_capacity(1 << 16, f).split(b'\n');
        let mut columns = enc.columns.clone();
        if format == RecordFormat::Csv {
            let header = lines.next().transpose()?.unwrap_or_default();
            let cells = crate::codec::csv::CsvRow::new(enc.delimiter_byte())
                .split(&header)
                .map_err(|e| anyhow::anyhow!("{}: the CSV header: {e}", path.display()))?
                .iter()
                .map(|c| c.trim().to_string())
                .collect::<Vec<_>>();
            columns = Some(cells);
        }
        let mut collector = Collector::new(spec, format, columns.as_deref())?;
        let progress = crate::local::progress_bar(size);
        for line in lines {
            let line = line?;
            progress.inc(line.len() as u64 + 1);
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            collector.offer(line, None, 0);
            if collector.read >= max {
                break;
            }
        }
        progress.finish_and_clear();
        let read = collector.read;
        return Ok((collector.finish(), read, path.display().to_string()));
    }
    let Some(topic) = &spec.training.topic else {
        bail!("spec.training: set a file or a topic, or pass --input");
    };
    let settings = training_kafka(spec, opts)?;
    let mut collector = Collector::new(spec, enc.format, enc.columns.as_deref())?;
    let start = topic.start_time.as_ref().map(|t| t.0.as_millisecond());
    let end = topic.end_time.as_ref().map(|t| t.0.as_millisecond());
    read_topic(&settings, &topic.name, start, end, max, &mut collector)?;
    let read = collector.read;
    Ok((collector.finish(), read, format!("topic {}", topic.name)))
}

/// Read `topic` from `start` (ms; the earliest offset when absent) up to
/// the high watermarks at the start of reading, or `end`, or `max` records.
fn read_topic(
    settings: &crate::run::kafka_config::KafkaSettings,
    topic: &str,
    start: Option<i64>,
    end: Option<i64>,
    max: u64,
    collector: &mut Collector,
) -> Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = settings
        .client_config()
        .set("group.id", "vigil-train")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating the Kafka consumer")?;
    let timeout = Duration::from_secs(30);
    let md =
        consumer.fetch_metadata(Some(topic), timeout).with_context(|| format!("reading topic {topic}"))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        bail!("topic {topic} does not exist or has no partitions");
    }
    let mut tpl = TopicPartitionList::new();
    let mut stop = std::collections::HashMap::new();
    for p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *p, timeout)?;
        if high > low {
            stop.insert(*p, high);
        }
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    if let Some(ms) = start {
        let mut times = TopicPartitionList::new();
        for p in &partitions {
            times.add_partition_offset(topic, *p, Offset::Offset(ms))?;
        }
        tpl = consumer.offsets_for_times(times, timeout)?;
    }
    consumer.assign(&tpl)?;
    let progress = crate::local::progress_bar(None);
    let mut idle = Instant::now();
    while !stop.is_empty() && collector.read < max {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                idle = Instant::now();
                let p = m.partition();
                let ts = m.timestamp().to_millis().unwrap_or(0);
                if let Some(high) = stop.get(&p) {
                    if m.offset() + 1 >= *high {
                        stop.remove(&p);
                    }
                }
                if end.is_some_and(|e| ts > e) {
                    stop.remove(&p);
                    continue;
                }
                let key = m.key().and_then(|k| std::str::from_utf8(k).ok());
                if let Some(payload) = m.payload() {
                    collector.offer(payload, key, ts);
                    progress.inc(1);
                }
            }
            Some(Err(e)) => bail!("reading topic {topic}: {e}"),
            None if idle.elapsed() > timeout => bail!("reading topic {topic}: no records for {timeout:?}"),
            None => {}
        }
    }
    progress.finish_and_clear();
    Ok(())
}

/// Records through the Model's transforms into training rows.
struct Collector {
    engine: Engine,
    features: Vec<FieldId>,
    label: Option<FieldId>,
    data: TrainingData,
    read: u64,
    row: Vec<f64>,
}

impl Collector {
    fn new(spec: &ModelSpec, format: RecordFormat, columns: Option<&[String]>) -> Result<Self> {
        let mut engine = Engine::transform_only(&spec.training.encoding, format, columns, &spec.transforms)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let features = spec
            .features
            .iter()
            .map(|f| engine.intern(f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let label =
            spec.label.as_ref().map(|l| engine.intern(l)).transpose().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Collector { engine, features, label, data: TrainingData::default(), read: 0, row: Vec::new() })
    }

    fn offer(&mut self, bytes: &[u8], key: Option<&str>, ts: i64) {
        self.read += 1;
        let now = if ts > 0 { ts } else { chrono::Utc::now().timestamp_millis() };
        let (features, label, data, row) = (&self.features, self.label, &mut self.data, &mut self.row);
        self.engine.process(bytes, Meta { key: key.map(str::as_bytes), ts_ms: now }, &mut |ev| {
            if let Event::Output(o) = ev {
                take(o.record, features, label, data, row);
            }
        });
    }

    fn finish(mut self) -> TrainingData {
        let (features, label, data, row) = (&self.features, self.label, &mut self.data, &mut self.row);
        self.engine.flush(&mut |ev| {
            if let Event::Output(o) = ev {
                take(o.record, features, label, data, row);
            }
        });
        self.data
    }
}

fn take(
    rec: &crate::record::Record,
    features: &[FieldId],
    label: Option<FieldId>,
    data: &mut TrainingData,
    row: &mut Vec<f64>,
) {
    row.clear();
    for f in features {
        match rec.get(*f).and_then(|v| v.as_f64()) {
            Some(x) if x.is_finite() => row.push(x),
            _ => return,
        }
    }
    if let Some(l) = label {
        let value = match rec.get(l) {
            Some(crate::record::Value::Null) | None => return,
            Some(v) => to_json(v),
        };
        data.labels.push(value);
    }
    data.x.push(row.clone());
}

/// Load an artifact for serving, checking it was trained for `features`
/// and the Model's `transforms`.
pub fn load(path: &Path) -> Result<Loaded> {
    let artifact = Artifact::read(path)?;
    Ok(Loaded { artifact })
}

fn to_json(v: &crate::record::Value) -> serde_json::Value {
    use crate::record::Value;
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Int(n) => serde_json::Value::from(*n),
        Value::Float(x) => {
            serde_json::Number::from_f64(*x).map_or(serde_json::Value::Null, serde_json::Value::Number)
        }
        Value::Str(s) => serde_json::Value::String(s.to_string()),
        Value::List(l) => serde_json::Value::Array(l.iter().map(to_json).collect()),
        Value::Map(m) => {
            serde_json::Value::Object(m.iter().map(|(k, v)| (k.to_string(), to_json(v))).collect())
        }
    }
}

/// What a training Job reports (its termination message).
pub use vigil_crds::registry::TrainingSummary as Summary;

/// The summary of an artifact.
pub fn summary(a: &Artifact) -> Summary {
    let m = &a.metadata;
    Summary {
        version: m.version,
        records: m.records,
        seconds: m.seconds,
        threshold: m.threshold,
        accuracy: m.accuracy,
        trained_at: m.trained_at.clone(),
    }
}
