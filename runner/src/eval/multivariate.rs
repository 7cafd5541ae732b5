//! A labelled multivariate benchmark of Vigil's own, in the shape industrial
//! users have, and its event-wise scoring.
//!
//! `vigil eval --generate DIR` writes it (seeded: the same seed gives the
//! same corpus); `vigil eval --corpus DIR` scores a pipeline on it. Two
//! streams of different shapes:
//!
//! - `plant`: pumps sampled every minute for 14 days. Per machine a load
//!   with a daily cycle (and lower at weekends) drives four correlated
//!   channels: `flow` (proportional to load), `pressure` (quadratic in
//!   flow), `temperature` (a lagged response to load) and `vibration`.
//! - `hvac`: air handlers sampled every 5 minutes for 30 days. Outdoor
//!   temperature (daily cycle plus weather) and weekday occupancy drive
//!   `supply`, `return`, `fan` and `power`.
//!
//! Each has noise, missing values (0.3 % of readings), a pure-noise key
//! with independent channels and no fault, and, after a probation of three
//! days, three instances of each fault kind sensors show ([`FaultKind`]).
//!
//! Scoring is event-wise: a fault counts as found when any record of its
//! key is flagged between its start and [`GRACE`] records after its end;
//! flagged records outside every window count as false events, one per run
//! (flags of a key closer than [`MERGE`] records are one run) and per
//! [`MERGE`] records a run lasts (so flagging everything is not a handful
//! of events). Precision, recall and F1 over events, per fault kind too.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256Plus;
use serde::{Deserialize, Serialize};

/// The marker file of the layout.
pub const MARKER: &str = "vigil-multivariate.json";

/// Records after a fault's end in which a flag still finds it.
pub const GRACE: usize = 30;

/// Flags of one key closer than this many records are one event.
pub const MERGE: usize = 60;

/// Days before the first fault.
const PROBATION_DAYS: f64 = 3.0;

/// What goes wrong with sensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FaultKind {
    /// One to three readings far off.
    Spike,
    /// A channel jumps and stays off (six hours).
    LevelShift,
    /// A channel's noise grows sixfold (one hour).
    VarianceBurst,
    /// A channel leaves its relation to the others while staying in its
    /// usual range (six hours).
    BrokenCorrelation,
    /// A channel drifts away slowly (twelve hours).
    Drift,
    /// A channel repeats one value (three hours).
    Stuck,
}

impl FaultKind {
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Spike,
        FaultKind::LevelShift,
        FaultKind::VarianceBurst,
        FaultKind::BrokenCorrelation,
        FaultKind::Drift,
        FaultKind::Stuck,
    ];

    fn hours(self) -> f64 {
        match self {
            FaultKind::Spike => 0.0,
            FaultKind::LevelShift | FaultKind::BrokenCorrelation => 6.0,
            FaultKind::VarianceBurst => 1.0,
            FaultKind::Drift => 12.0,
            FaultKind::Stuck => 3.0,
        }
    }
}

/// A labelled fault: records `start..=end` (indices into its key's series).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub key: String,
    pub kind: FaultKind,
    pub channel: String,
    pub start: usize,
    pub end: usize,
}

/// One stream of the benchmark.
#[derive(Debug, Clone)]
pub struct Stream {
    pub name: String,
    pub features: Vec<String>,
    /// Per key: (timestamp ms, readings; `None` is missing).
    pub series: BTreeMap<String, Vec<(i64, Vec<Option<f64>>)>>,
    pub faults: Vec<Fault>,
}

/// What `vigil-multivariate.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub layout: String,
    pub seed: u64,
    pub streams: Vec<StreamManifest>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamManifest {
    pub name: String,
    /// `data/<name>.jsonl`: `{"ts", "key", <features>}` in time order.
    pub file: String,
    pub features: Vec<String>,
    pub faults: Vec<Fault>,
}

/// The benchmark's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// 14 and 30 days, six and four keys plus a noise key.
    Full,
    /// A unit-sized version: 6 and 8 days, the same keys and faults.
    Small,
}

struct Gauss(Xoshiro256Plus);

impl Gauss {
    fn normal(&mut self) -> f64 {
        // Box-Muller.
        let u1: f64 = self.0.r#gen::<f64>().max(1e-300);
        let u2: f64 = self.0.r#gen();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    fn uniform(&mut self) -> f64 {
        self.0.r#gen()
    }
}

/// Monday 2026-01-05 00:00 UTC.
const EPOCH_MS: i64 = 1_767_571_200_000;

fn hour_of_day(t_min: f64) -> f64 {
    (t_min / 60.0) % 24.0
}

fn weekend(t_min: f64) -> bool {
    ((t_min / 1440.0) as i64 % 7) >= 5
}

/// 1 on weekdays, 0 at weekends, ramping over the two hours around midnight.
fn weekday(t_min: f64) -> f64 {
    let ramp = |t: f64| ((t + 60.0) / 120.0).clamp(0.0, 1.0);
    let day = (t_min / 1440.0).floor();
    let into = t_min - day * 1440.0;
    let now = f64::from(u8::from(!weekend(t_min)));
    let next = f64::from(u8::from(!weekend(t_min + 1440.0 - into + 1.0)));
    let prev = f64::from(u8::from(!weekend(t_min - into - 1.0)));
    if into > 1380.0 {
        now + (next - now) * ramp(into - 1440.0)
    } else if into < 60.0 {
        prev + (now - prev) * ramp(into)
    } else {
        now
    }
}

/// Generate both streams.
pub fn generate(seed: u64, size: Size) -> Vec<Stream> {
    vec![plant(seed, size), hvac(seed.wrapping_add(1), size)]
}

/// The normal behaviour of one key of a shape, as a function of time.
trait Shape {
    fn step(&mut self, t_min: f64, g: &mut Gauss) -> Vec<f64>;
    /// Noise standard deviation per channel (faults are sized by it).
    fn noise(&self) -> Vec<f64>;
}

struct Pump {
    base: f64,
    lagged: f64,
    ar: f64,
}

impl Shape for Pump {
    fn step(&mut self, t: f64, g: &mut Gauss) -> Vec<f64> {
        let daily = (std::f64::consts::TAU * (hour_of_day(t) - 9.0) / 24.0).sin();
        let week = 0.7 + 0.3 * weekday(t);
        self.ar = 0.98 * self.ar + 0.01 * g.normal();
        let load = self.base * (1.0 + 0.35 * daily) * week * (1.0 + self.ar);
        self.lagged += (load - self.lagged) / 30.0;
        let n = self.noise();
        let flow = 100.0 * load + n[0] * g.normal();
        let pressure = 2.0 + 0.0003 * flow * flow + n[1] * g.normal();
        let temperature = 40.0 + 15.0 * self.lagged + n[2] * g.normal();
        let vibration = 0.5 + 0.004 * flow + n[3] * g.normal();
        vec![flow, pressure, temperature, vibration]
    }
    fn noise(&self) -> Vec<f64> {
        vec![2.0, 0.08, 0.3, 0.03]
    }
}

struct AirHandler {
    weather: f64,
    comfort: f64,
}

impl Shape for AirHandler {
    fn step(&mut self, t: f64, g: &mut Gauss) -> Vec<f64> {
        let h = hour_of_day(t);
        self.weather = 0.995 * self.weather + 0.1 * g.normal();
        let outdoor = 12.0 + 7.0 * (std::f64::consts::TAU * (h - 9.0) / 24.0).sin() + self.weather;
        // People arrive from 7:00 and leave from 19:00, over half an hour.
        let present = ((h - 7.0) * 2.0).clamp(0.0, 1.0) * ((19.5 - h) * 2.0).clamp(0.0, 1.0);
        let people = 0.1 + 0.9 * present * weekday(t);
        let n = self.noise();
        let supply = 14.0 + 0.05 * (outdoor - 12.0) + n[0] * g.normal();
        let ret = self.comfort + 0.15 * (outdoor - 12.0) + 2.0 * people + n[1] * g.normal();
        let fan = 30.0 + 6.0 * (ret - supply - 6.0) + 25.0 * people + n[2] * g.normal();
        let power = 1.5 + 0.08 * fan + 0.05 * (outdoor - 12.0).abs() + n[3] * g.normal();
        vec![supply, ret, fan, power]
    }
    fn noise(&self) -> Vec<f64> {
        vec![0.1, 0.15, 1.5, 0.08]
    }
}

struct Noise;

impl Shape for Noise {
    fn step(&mut self, _t: f64, g: &mut Gauss) -> Vec<f64> {
        (0..4).map(|i| 50.0 + 10.0 * i as f64 + 5.0 * g.normal()).collect()
    }
    fn noise(&self) -> Vec<f64> {
        vec![5.0; 4]
    }
}

fn plant(seed: u64, size: Size) -> Stream {
    let (days, machines) = match size {
        Size::Full => (14.0, 6),
        Size::Small => (6.0, 6),
    };
    let mut g = Gauss(Xoshiro256Plus::seed_from_u64(seed));
    let mut keys: Vec<(String, Box<dyn Shape>)> = (1..=machines)
        .map(|i| {
            let base = 0.8 + 0.4 * g.uniform();
            (format!("pump-{i}"), Box::new(Pump { base, lagged: base, ar: 0.0 }) as Box<dyn Shape>)
        })
        .collect();
    keys.push(("pump-noise".into(), Box::new(Noise)));
    build("plant", &["flow", "pressure", "temperature", "vibration"], 1.0, days, keys, &mut g)
}

fn hvac(seed: u64, size: Size) -> Stream {
    let (days, units) = match size {
        Size::Full => (30.0, 4),
        Size::Small => (8.0, 4),
    };
    let mut g = Gauss(Xoshiro256Plus::seed_from_u64(seed));
    let mut keys: Vec<(String, Box<dyn Shape>)> = (1..=units)
        .map(|i| {
            let comfort = 20.0 + 2.0 * g.uniform();
            (format!("ahu-{i}"), Box::new(AirHandler { weather: 0.0, comfort }) as Box<dyn Shape>)
        })
        .collect();
    keys.push(("ahu-noise".into(), Box::new(Noise)));
    build("hvac", &["supply", "return", "fan", "power"], 5.0, days, keys, &mut g)
}

/// Sample every key, then place three faults of each kind on the keys
/// with a shape (round robin), at random times after the probation.
fn build(
    name: &str,
    features: &[&str],
    every_min: f64,
    days: f64,
    mut keys: Vec<(String, Box<dyn Shape>)>,
    g: &mut Gauss,
) -> Stream {
    let n = (days * 1440.0 / every_min) as usize;
    let mut clean: Vec<Vec<Vec<f64>>> = Vec::new();
    for (_, shape) in keys.iter_mut() {
        clean.push((0..n).map(|i| shape.step(i as f64 * every_min, g)).collect());
    }
    let faulty = keys.len() - 1; // the last key is pure noise: no faults
    let per_hour = 60.0 / every_min;
    let first = (PROBATION_DAYS * 1440.0 / every_min) as usize;
    let mut taken: Vec<Vec<(usize, usize)>> = vec![Vec::new(); faulty];
    let mut faults = Vec::new();
    let mut slot = 0usize;
    for kind in FaultKind::ALL {
        for _ in 0..3 {
            let k = slot % faulty;
            slot += 1;
            let len = ((kind.hours() * per_hour) as usize).max(1 + (g.uniform() * 2.0) as usize);
            // A free place, a day clear of the key's other faults.
            let gap = (24.0 * per_hour) as usize;
            let start = (0..1000)
                .map(|_| first + (g.uniform() * (n - first - len - GRACE - 1) as f64) as usize)
                .find(|s| taken[k].iter().all(|(a, b)| s + len + gap < *a || *s > b + gap))
                .unwrap_or(first);
            let end = start + len - 1;
            taken[k].push((start, end));
            let channel = (g.uniform() * features.len() as f64) as usize % features.len();
            let noise = keys[k].1.noise()[channel];
            let series = &mut clean[k];
            let level = series[start.saturating_sub(60)..start].iter().map(|r| r[channel]).sum::<f64>()
                / 60f64.min(start as f64).max(1.0);
            match kind {
                FaultKind::Spike => {
                    for r in &mut series[start..=end] {
                        r[channel] += 14.0 * noise + 0.15 * level.abs();
                    }
                }
                FaultKind::LevelShift => {
                    for r in &mut series[start..=end] {
                        r[channel] += 6.0 * noise + 0.05 * level.abs();
                    }
                }
                FaultKind::VarianceBurst => {
                    for r in &mut series[start..=end] {
                        r[channel] += 6.0 * noise * g.normal();
                    }
                }
                FaultKind::BrokenCorrelation => {
                    // The channel plays back its own values from twelve
                    // hours earlier: its usual range, the wrong moment.
                    let back = (12.0 * per_hour) as usize;
                    for i in start..=end {
                        series[i][channel] = series[i - back][channel];
                    }
                }
                FaultKind::Drift => {
                    for (j, r) in series[start..=end].iter_mut().enumerate() {
                        r[channel] += (8.0 * noise + 0.06 * level.abs()) * (j + 1) as f64 / len as f64;
                    }
                }
                FaultKind::Stuck => {
                    let v = series[start][channel];
                    for r in &mut series[start..=end] {
                        r[channel] = v;
                    }
                }
            }
            faults.push(Fault {
                key: keys[k].0.clone(),
                kind,
                channel: features[channel].into(),
                start,
                end,
            });
        }
    }
    let mut series = BTreeMap::new();
    for ((key, _), values) in keys.iter().zip(clean) {
        let rows = values
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let ts = EPOCH_MS + (i as f64 * every_min * 60_000.0) as i64;
                let r = r
                    .into_iter()
                    .map(|v| if g.uniform() < 0.003 { None } else { Some((v * 1000.0).round() / 1000.0) })
                    .collect();
                (ts, r)
            })
            .collect();
        series.insert(key.clone(), rows);
    }
    Stream { name: name.into(), features: features.iter().map(|f| f.to_string()).collect(), series, faults }
}

/// Write the benchmark into `dir` (`vigil-multivariate.json`, `data/*.jsonl`).
pub fn write(dir: &Path, seed: u64, streams: &[Stream]) -> Result<()> {
    std::fs::create_dir_all(dir.join("data")).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut manifest = Manifest { layout: "vigil-multivariate".into(), seed, streams: Vec::new() };
    for s in streams {
        let file = format!("data/{}.jsonl", s.name);
        let mut out = String::new();
        for (ts, key, row) in interleave(s) {
            let mut obj = serde_json::Map::new();
            obj.insert("ts".into(), ts.into());
            obj.insert("key".into(), key.into());
            for (f, v) in s.features.iter().zip(row) {
                obj.insert(f.clone(), v.map_or(serde_json::Value::Null, serde_json::Value::from));
            }
            out.push_str(&serde_json::Value::Object(obj).to_string());
            out.push('\n');
        }
        std::fs::write(dir.join(&file), out).with_context(|| format!("cannot write {file}"))?;
        manifest.streams.push(StreamManifest {
            name: s.name.clone(),
            file,
            features: s.features.clone(),
            faults: s.faults.clone(),
        });
    }
    std::fs::write(dir.join(MARKER), serde_json::to_string_pretty(&manifest)?)?;
    Ok(())
}

/// Records of every key in time order: (ts, key, readings).
fn interleave(s: &Stream) -> Vec<(i64, &str, &[Option<f64>])> {
    let mut all: Vec<(i64, &str, &[Option<f64>])> = s
        .series
        .iter()
        .flat_map(|(k, rows)| rows.iter().map(move |(ts, r)| (*ts, k.as_str(), r.as_slice())))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)));
    all
}

/// Read a benchmark written by [`write`].
pub fn read(dir: &Path) -> Result<Vec<Stream>> {
    let path = dir.join(MARKER);
    let manifest: Manifest = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?,
    )
    .with_context(|| format!("{} is not a multivariate benchmark manifest", path.display()))?;
    let mut streams = Vec::new();
    for m in manifest.streams {
        let text = std::fs::read_to_string(dir.join(&m.file))
            .with_context(|| format!("cannot read {}", dir.join(&m.file).display()))?;
        let mut series: BTreeMap<String, Vec<(i64, Vec<Option<f64>>)>> = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{} line {}", m.file, n + 1))?;
            let key = v["key"].as_str().context("a record without key")?.to_string();
            let ts = v["ts"].as_i64().context("a record without ts")?;
            let row = m.features.iter().map(|f| v[f].as_f64()).collect();
            series.entry(key).or_default().push((ts, row));
        }
        for f in &m.faults {
            if series.get(&f.key).is_none_or(|s| f.end >= s.len()) {
                bail!("{}: fault {:?} on {} is outside its key's series", m.file, f.kind, f.key);
            }
        }
        streams.push(Stream { name: m.name, features: m.features, series, faults: m.faults });
    }
    Ok(streams)
}

/// Event-wise counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub faults: usize,
    pub found: usize,
    pub false_events: usize,
}

impl Counts {
    pub fn precision(&self) -> f64 {
        if self.found + self.false_events == 0 {
            0.0
        } else {
            self.found as f64 / (self.found + self.false_events) as f64
        }
    }
    pub fn recall(&self) -> f64 {
        if self.faults == 0 { 0.0 } else { self.found as f64 / self.faults as f64 }
    }
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) }
    }
}

/// The result at one threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub threshold: f64,
    pub total: Counts,
    /// Per fault kind: (faults, found). False events belong to no kind.
    pub by_kind: BTreeMap<FaultKind, (usize, usize)>,
    /// False events on the pure-noise keys.
    pub noise_false_events: usize,
}

/// Per stream, per key: the score of each record (`None`: not scored).
pub type Scores = BTreeMap<String, BTreeMap<String, Vec<Option<f64>>>>;

/// Score event-wise at `threshold`.
pub fn outcome(streams: &[Stream], scores: &Scores, threshold: f64) -> Outcome {
    let mut total = Counts::default();
    let mut by_kind: BTreeMap<FaultKind, (usize, usize)> = BTreeMap::new();
    let mut noise_false_events = 0;
    for s in streams {
        for (key, rows) in &s.series {
            let flags: Vec<usize> = scores
                .get(&s.name)
                .and_then(|k| k.get(key))
                .map(|v| {
                    v.iter()
                        .enumerate()
                        .filter(|(_, x)| x.is_some_and(|x| x >= threshold))
                        .map(|(i, _)| i)
                        .collect()
                })
                .unwrap_or_default();
            let faults: Vec<&Fault> = s.faults.iter().filter(|f| &f.key == key).collect();
            for f in &faults {
                let hit = flags.iter().any(|&i| i >= f.start && i <= (f.end + GRACE).min(rows.len() - 1));
                total.faults += 1;
                total.found += usize::from(hit);
                let e = by_kind.entry(f.kind).or_default();
                e.0 += 1;
                e.1 += usize::from(hit);
            }
            // Runs of false flags (gaps under MERGE records), each worth one
            // event per MERGE records it lasts: flagging everything is not
            // a handful of events.
            let mut runs: Vec<(usize, usize)> = Vec::new();
            for &i in &flags {
                if faults.iter().any(|f| i >= f.start && i <= f.end + GRACE) {
                    continue;
                }
                match runs.last_mut() {
                    Some((_, end)) if i <= *end + MERGE => *end = i,
                    _ => runs.push((i, i)),
                }
            }
            let events: usize = runs.iter().map(|(a, b)| (b - a + 1).div_ceil(MERGE)).sum();
            total.false_events += events;
            if key.ends_with("-noise") {
                noise_false_events += events;
            }
        }
    }
    Outcome { threshold, total, by_kind, noise_false_events }
}

/// The threshold with the best F1 (the tuned profile), from the scores seen.
pub fn tune(streams: &[Stream], scores: &Scores) -> Outcome {
    let mut candidates: Vec<f64> = (1..100).map(|i| i as f64 / 100.0).collect();
    candidates.extend((0..20).map(|i| 0.99 + i as f64 / 2000.0));
    candidates
        .into_iter()
        .map(|t| outcome(streams, scores, t))
        .max_by(|a, b| a.total.f1().total_cmp(&b.total.f1()).then(b.threshold.total_cmp(&a.threshold)))
        .unwrap_or_else(|| outcome(streams, scores, 0.5))
}

/// The pipeline `vigil eval` runs on the multivariate benchmark when given
/// none: the default detector (`auto`) on every channel. A given pipeline's
/// detector (algorithm, parameters, threshold) is used with the stream's
/// channels as features.
pub const DEFAULT_PIPELINE: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {name: multivariate}
spec:
  input: {topic: {name: multivariate}, keyField: key, timestampField: ts}
  detector: {algorithm: auto, features: [x]}
  output: {name: multivariate-scores}
  deadLetter: {name: multivariate-dead-letter}
"#;

/// An evaluation on the benchmark.
#[derive(Debug, Clone)]
pub struct Report {
    pub streams: usize,
    pub rows: usize,
    pub faults: usize,
    pub algorithm: String,
    pub tuned: Outcome,
    pub at_default: Outcome,
    pub rejected: u64,
    pub seconds: f64,
}

/// Score every record of `streams` with `pipeline`'s detector.
pub fn score(pipeline: &vigil_crds::Pipeline, streams: &[Stream]) -> Result<(Scores, f64, u64)> {
    use crate::codec::Meta;
    use crate::engine::{Engine, Event};
    let mut scores = Scores::new();
    let mut threshold = 0.0;
    let mut rejected = 0;
    for s in streams {
        let mut spec = pipeline.spec.clone();
        spec.detector.features = s.features.clone();
        spec.input.encoding.key_field = Some("key".into());
        spec.input.encoding.timestamp_field = Some("ts".into());
        let mut engine = Engine::new(&spec, Some(vigil_crds::RecordFormat::Json), None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        threshold = engine.detector().map_or(threshold, |d| d.threshold());
        let by_key = scores.entry(s.name.clone()).or_default();
        for (k, rows) in &s.series {
            by_key.insert(k.clone(), Vec::with_capacity(rows.len()));
        }
        let mut line = String::new();
        for (ts, key, row) in interleave(s) {
            line.clear();
            line.push_str(&format!(r#"{{"ts":{ts},"key":"{key}""#));
            for (f, v) in s.features.iter().zip(row) {
                match v {
                    Some(v) => line.push_str(&format!(r#","{f}":{v}"#)),
                    None => line.push_str(&format!(r#","{f}":null"#)),
                }
            }
            line.push('}');
            let mut score = None;
            engine.process(line.as_bytes(), Meta { key: None, ts_ms: ts }, &mut |ev| match ev {
                Event::Output(o) => score = o.score,
                Event::Rejected(_) => rejected += 1,
            });
            if let Some(v) = by_key.get_mut(key) {
                v.push(score);
            }
        }
    }
    Ok((scores, threshold, rejected))
}

/// Evaluate scores made elsewhere (a peer: a JSON file `{stream: {key:
/// [score or null, ...]}}`, one score per record of the key in order) on
/// the benchmark at `root`, at `threshold` and tuned.
pub fn run_scores(root: &Path, file: &Path, threshold: f64) -> Result<Report> {
    let streams = read(root)?;
    let scores: Scores = serde_json::from_str(
        &std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?,
    )
    .with_context(|| format!("{} is not a map of stream to key to scores", file.display()))?;
    for s in &streams {
        for (key, rows) in &s.series {
            let got = scores.get(&s.name).and_then(|k| k.get(key)).map_or(0, Vec::len);
            if got != rows.len() {
                bail!(
                    "{}: {} scores for {}/{key}, which has {} records",
                    file.display(),
                    got,
                    s.name,
                    rows.len()
                );
            }
        }
    }
    Ok(Report {
        streams: streams.len(),
        rows: streams.iter().map(|s| s.series.values().map(Vec::len).sum::<usize>()).sum(),
        faults: streams.iter().map(|s| s.faults.len()).sum(),
        algorithm: format!("the scores in {}", file.display()),
        tuned: tune(&streams, &scores),
        at_default: outcome(&streams, &scores, threshold),
        rejected: 0,
        seconds: 0.0,
    })
}

/// Evaluate `pipeline` on the benchmark at `root`.
pub fn run(pipeline: &vigil_crds::Pipeline, root: &Path) -> Result<Report> {
    let streams = read(root)?;
    let started = std::time::Instant::now();
    let (scores, threshold, rejected) = score(pipeline, &streams)?;
    let seconds = started.elapsed().as_secs_f64();
    let algorithm = pipeline.spec.detector.algorithm.map_or("model".to_string(), |a| {
        let features = streams.first().map_or(2, |s| s.features.len());
        let resolved = a.resolve(features).name();
        if resolved == a.name() { resolved.to_string() } else { format!("{} ({resolved})", a.name()) }
    });
    Ok(Report {
        streams: streams.len(),
        rows: streams.iter().map(|s| s.series.values().map(Vec::len).sum::<usize>()).sum(),
        faults: streams.iter().map(|s| s.faults.len()).sum(),
        algorithm,
        tuned: tune(&streams, &scores),
        at_default: outcome(&streams, &scores, threshold),
        rejected,
        seconds,
    })
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "multivariate benchmark: {} streams, {} rows, {} faults scored with {} in {:.1} s ({} rows rejected)",
            self.streams, self.rows, self.faults, self.algorithm, self.seconds, self.rejected
        )?;
        writeln!(
            f,
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>7} {:>13}",
            "profile", "threshold", "precision", "recall", "F1", "found", "false events"
        )?;
        for (name, o) in [("tuned", &self.tuned), ("default threshold", &self.at_default)] {
            writeln!(
                f,
                "{:<22} {:>9.3} {:>9.2} {:>9.2} {:>9.2} {:>3}/{:<3} {:>6} ({} on noise keys)",
                name,
                o.threshold,
                o.total.precision(),
                o.total.recall(),
                o.total.f1(),
                o.total.found,
                o.total.faults,
                o.total.false_events,
                o.noise_false_events
            )?;
        }
        writeln!(f, "found per fault kind (default threshold / tuned):")?;
        for (kind, (n, found)) in &self.at_default.by_kind {
            let tuned = self.tuned.by_kind.get(kind).map_or(0, |(_, t)| *t);
            writeln!(f, "  {:<20} {found}/{n} / {tuned}/{n}", format!("{kind:?}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perfect(streams: &[Stream]) -> Scores {
        let mut scores = Scores::new();
        for s in streams {
            for (key, rows) in &s.series {
                let mut v = vec![Some(0.0); rows.len()];
                for f in s.faults.iter().filter(|f| &f.key == key) {
                    v[f.start] = Some(1.0);
                }
                scores.entry(s.name.clone()).or_default().insert(key.clone(), v);
            }
        }
        scores
    }

    #[test]
    fn a_perfect_detector_scores_f1_one_and_a_silent_one_zero() {
        let streams = generate(7, Size::Small);
        let scores = perfect(&streams);
        let o = outcome(&streams, &scores, 0.5);
        assert_eq!(o.total.f1(), 1.0, "{o:?}");
        assert_eq!(o.by_kind.len(), 6);
        assert!(o.by_kind.values().all(|(n, found)| *n == 6 && found == n), "{o:?}");
        let silent: Scores = scores
            .iter()
            .map(|(s, keys)| {
                (s.clone(), keys.iter().map(|(k, v)| (k.clone(), vec![Some(0.0); v.len()])).collect())
            })
            .collect();
        assert_eq!(outcome(&streams, &silent, 0.5).total.f1(), 0.0);
    }

    #[test]
    fn false_events_are_counted_once_per_run_and_the_same_seed_gives_the_same_corpus() {
        let streams = generate(7, Size::Small);
        assert_eq!(generate(7, Size::Small)[0].series, streams[0].series);
        assert_ne!(generate(8, Size::Small)[0].series, streams[0].series);
        let mut scores = perfect(&streams);
        // A run of 10 flags and a lone flag far from it on the noise key.
        let noise = scores.get_mut("plant").unwrap().get_mut("pump-noise").unwrap();
        for i in 100..110 {
            noise[i] = Some(1.0);
        }
        noise[2000] = Some(1.0);
        let o = outcome(&streams, &scores, 0.5);
        assert_eq!(o.total.false_events, 2);
        assert_eq!(o.noise_false_events, 2);
        assert!((o.total.precision() - 36.0 / 38.0).abs() < 1e-9);
    }

    #[test]
    fn the_default_detector_finds_every_fault_kind_in_the_small_benchmark() {
        let streams = generate(11, Size::Small);
        let pipeline = vigil_crds::manifest::single_pipeline(DEFAULT_PIPELINE).unwrap();
        let (scores, threshold, rejected) = score(&pipeline, &streams).unwrap();
        assert_eq!(rejected, 0);
        let o = outcome(&streams, &scores, threshold);
        for (kind, (n, found)) in &o.by_kind {
            assert!(*found * 3 >= *n * 2, "{kind:?}: {found} of {n} found at the default threshold: {o:?}");
        }
        assert!(o.noise_false_events <= 2, "pure-noise keys raise at most 2 false events: {o:?}");
        assert!(o.total.f1() >= 0.8, "{o:?}");
    }

    #[test]
    fn the_corpus_round_trips_through_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let streams = generate(3, Size::Small);
        write(dir.path(), 3, &streams).unwrap();
        let back = read(dir.path()).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].faults, streams[1].faults);
        assert_eq!(back[0].series.len(), streams[0].series.len());
        let missing = back[0].series.values().flatten().flat_map(|(_, r)| r).filter(|v| v.is_none()).count();
        assert!(missing > 0, "missing values are kept as null");
    }
}
