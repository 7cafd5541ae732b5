//! `vigil eval`: run a pipeline over a labelled corpus in the NAB layout
//! (`data/<category>/<file>.csv` with `timestamp,value`, and
//! `labels/combined_windows.json`) and report NAB scores at the tuned and
//! at the pipeline's own threshold.

pub mod multivariate;
pub mod nab;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use vigil_crds::{Pipeline, RecordFormat};

use crate::codec::Meta;
use crate::codec::time::parse_datetime;
use crate::engine::{Engine, Event};

/// The pipeline `vigil eval` uses when given none: the default univariate
/// detector on the corpus's `value` column with default parameters.
pub const DEFAULT_PIPELINE: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {name: nab}
spec:
  input: {topic: {name: nab}, timestampField: timestamp}
  detector: {algorithm: robustZ, features: [value]}
  output: {name: nab-scores}
  deadLetter: {name: nab-dead-letter}
"#;

/// Scores of one evaluation.
#[derive(Debug, Clone)]
pub struct Report {
    /// Files scored.
    pub files: usize,
    /// Rows scored.
    pub rows: usize,
    /// Windows in the labels.
    pub windows: usize,
    /// Per profile: the tuned result, and the score at the pipeline's threshold.
    pub profiles: Vec<(nab::Profile, nab::Result, f64)>,
    /// The pipeline's threshold.
    pub default_threshold: f64,
    /// Rows the pipeline rejected (scored 0).
    pub rejected: u64,
    /// Seconds spent scoring.
    pub seconds: f64,
}

fn csv_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(csv_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "csv") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Score `pipeline` over the corpus at `root`.
pub fn run(pipeline: &Pipeline, root: &Path) -> Result<Report> {
    let labels_path = root.join("labels/combined_windows.json");
    let labels: BTreeMap<String, Vec<(String, String)>> = serde_json::from_str(
        &std::fs::read_to_string(&labels_path)
            .with_context(|| format!("cannot read {}", labels_path.display()))?,
    )
    .with_context(|| format!("{} is not a map of file to [start, end] windows", labels_path.display()))?;
    let data = root.join("data");
    let started = Instant::now();
    let mut files = Vec::new();
    let mut rejected = 0;
    let mut threshold = 0.0;
    for path in csv_files(&data)? {
        let name = path.strip_prefix(&data).unwrap_or(&path).to_string_lossy().replace('\\', "/");
        let Some(windows) = labels.get(&name) else {
            bail!("{name} has no entry in {}", labels_path.display());
        };
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut lines = text.lines();
        let header: Vec<String> =
            lines.next().unwrap_or("").split(',').map(|s| s.trim().to_string()).collect();
        let mut engine = Engine::new(&pipeline.spec, Some(RecordFormat::Csv), Some(&header))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        threshold = engine.detector().map_or(threshold, |d| d.threshold());
        let mut scores = Vec::new();
        let mut stamps = Vec::new();
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let ts = line.split(',').next().and_then(parse_datetime).unwrap_or(i64::MIN);
            let mut score = 0.0;
            engine.process(line.as_bytes(), Meta { key: None, ts_ms: ts }, &mut |ev| match ev {
                Event::Output(o) => score = o.score.unwrap_or(0.0),
                Event::Rejected(_) => rejected += 1,
            });
            scores.push(score);
            stamps.push(ts);
        }
        let mut rows = Vec::new();
        for (start, end) in windows {
            let find = |t: &str| {
                let ms = parse_datetime(t)?;
                stamps.iter().position(|s| *s == ms)
            };
            match (find(start), find(end)) {
                (Some(a), Some(b)) if a <= b => rows.push((a, b)),
                _ => bail!("{name}: window [{start}, {end}] does not match the file's timestamps"),
            }
        }
        files.push(nab::File { name, scores, windows: rows });
    }
    if files.is_empty() {
        bail!("no CSV files under {}", data.display());
    }
    let seconds = started.elapsed().as_secs_f64();
    let profiles = nab::PROFILES
        .iter()
        .map(|p| (*p, nab::tune(&files, p), nab::score_at(&files, p, threshold)))
        .collect();
    Ok(Report {
        files: files.len(),
        rows: files.iter().map(|f| f.scores.len()).sum(),
        windows: files.iter().map(|f| f.windows.len()).sum(),
        profiles,
        default_threshold: threshold,
        rejected,
        seconds,
    })
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} files, {} rows, {} windows scored in {:.1} s ({} rows rejected)",
            self.files, self.rows, self.windows, self.seconds, self.rejected
        )?;
        writeln!(f, "{:<20} {:>10} {:>10} {:>22}", "profile", "score", "threshold", "score at threshold")?;
        for (p, tuned, at_default) in &self.profiles {
            writeln!(
                f,
                "{:<20} {:>10.1} {:>10.4} {:>15.1} @ {:.2}",
                p.name, tuned.score, tuned.threshold, at_default, self.default_threshold
            )?;
        }
        Ok(())
    }
}
