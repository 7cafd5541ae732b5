//! `vigil local`: run a pipeline over a file (or stdin) with no cluster and
//! no broker. Scored records go to `--output` (JSON lines), dead letters to
//! `--dead-letter` (JSON lines with stage and reason), a progress bar to the
//! terminal, a summary at the end.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use vigil_crds::{Pipeline, RecordFormat};

use crate::codec::Meta;
use crate::codec::json::write_str;
use crate::engine::{Counts, Engine, Event};

/// The example run when `vigil local` is given no pipeline.
pub const DEFAULT_PIPELINE: &str = include_str!("../../examples/pipelines/cpu-univariate.yaml");
/// Its data.
pub const DEFAULT_DATA: &str = include_str!("../../examples/data/cpu.csv");

/// What to read and where to write.
#[derive(Debug, Clone)]
pub struct Options {
    /// Input file; `None` reads the embedded example data; `-` is stdin.
    pub input: Option<PathBuf>,
    /// `json` or `csv`; by default from the file's extension.
    pub format: Option<RecordFormat>,
    /// Write every scored record here (JSON lines); `-` is stdout.
    pub output: Option<PathBuf>,
    /// Write dead letters here (JSON lines).
    pub dead_letter: Option<PathBuf>,
    /// With no `output`, print every record to stdout, not only anomalies.
    pub all: bool,
    /// Model artifacts by Model name, for a `detector.modelRef`.
    pub models: Vec<(String, PathBuf)>,
    /// Also write the history store (flagged records, per-key minutes,
    /// dead letters) into this directory, as the history component does.
    pub history: Option<PathBuf>,
}

/// The outcome of a local run.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// What the engine counted.
    pub counts: Counts,
    /// Wall-clock time.
    pub elapsed: Duration,
}

impl Summary {
    /// Records per second over the whole run.
    pub fn throughput(&self) -> f64 {
        self.counts.records_in as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn format_of(path: Option<&Path>, explicit: Option<RecordFormat>) -> Result<RecordFormat> {
    if let Some(f) = explicit {
        return Ok(f);
    }
    let ext = path.and_then(|p| p.extension()).and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "csv" => Ok(RecordFormat::Csv),
        "json" | "jsonl" | "ndjson" => Ok(RecordFormat::Json),
        "" if path.is_none() => Ok(RecordFormat::Csv),
        _ => bail!(
            "cannot tell the format of {}: name it .csv or .jsonl, or pass --format",
            path.map(|p| p.display().to_string()).unwrap_or_default()
        ),
    }
}

fn writer(path: &Path) -> Result<Box<dyn Write>> {
    if path == Path::new("-") {
        return Ok(Box::new(BufWriter::new(std::io::stdout().lock())));
    }
    let f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(Box::new(BufWriter::with_capacity(1 << 16, f)))
}

/// Run `pipeline` as the options say; the summary is also printed to stderr.
pub fn run(pipeline: &Pipeline, opts: &Options) -> Result<Summary> {
    let format = format_of(opts.input.as_deref(), opts.format)?;
    let (mut reader, size): (Box<dyn BufRead>, Option<u64>) = match opts.input.as_deref() {
        None => (Box::new(DEFAULT_DATA.as_bytes()), Some(DEFAULT_DATA.len() as u64)),
        Some(p) if p == Path::new("-") => (Box::new(BufReader::new(std::io::stdin().lock())), None),
        Some(p) => {
            let f = File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
            let size = f.metadata().ok().map(|m| m.len());
            (Box::new(BufReader::with_capacity(1 << 16, f)), size)
        }
    };
    let out: Box<dyn Write> = match &opts.output {
        Some(p) => writer(p)?,
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let only_anomalies = opts.output.is_none() && !opts.all;
    let dead: Option<Box<dyn Write>> = opts.dead_letter.as_deref().map(writer).transpose()?;
    let progress = progress_bar(size);
    let started = Instant::now();
    let name = pipeline.metadata.name.clone().unwrap_or_default();

    // One line buffer for the whole run: no allocation per record.
    let mut line = Vec::with_capacity(4096);
    let mut next_line = |line: &mut Vec<u8>| -> std::io::Result<bool> {
        line.clear();
        if reader.read_until(b'\n', line)? == 0 {
            return Ok(false);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        Ok(true)
    };
    let mut columns = None;
    if format == RecordFormat::Csv {
        next_line(&mut line)?;
        let header = std::mem::take(&mut line);
        let cells = crate::codec::csv::CsvRow::new(pipeline.spec.input.encoding.delimiter_byte())
            .split(&header)
            .map_err(|e| anyhow::anyhow!("the CSV header: {e}"))?
            .iter()
            .map(|c| c.trim().to_string())
            .collect::<Vec<_>>();
        if cells.is_empty() || cells.iter().all(String::is_empty) {
            bail!("the CSV input has no header row naming its columns");
        }
        progress.inc(header.len() as u64 + 1);
        columns = Some(cells);
    }
    let model = match &pipeline.spec.detector.model_ref {
        Some(r) => {
            let Some((_, path)) = opts.models.iter().find(|(n, _)| *n == r.name) else {
                bail!(
                    "pipeline {name}: spec.detector.modelRef names Model {}: pass its artifact with --model {}=FILE (vigil train writes one)",
                    r.name,
                    r.name
                );
            };
            let model = crate::models::Model { artifact: crate::models::Artifact::read(path)? };
            if model.artifact.metadata.model != r.name {
                bail!(
                    "{} is an artifact of Model {}, not {}",
                    path.display(),
                    model.artifact.metadata.model,
                    r.name
                );
            }
            Some(std::sync::Arc::new(model))
        }
        None => None,
    };
    let mut engine = Engine::with_model(&pipeline.spec, Some(format), columns.as_deref(), model)
        .map_err(|e| anyhow::anyhow!("pipeline {name}: {e}"))?;

    let history = match &opts.history {
        Some(dir) => {
            let features = crate::history::ingest::features(pipeline);
            let store = crate::history::store::Store::open(dir, &features)?;
            Some(History {
                store,
                reader: crate::history::ingest::Reader::new(pipeline, features),
                batch: Default::default(),
            })
        }
        None => None,
    };
    let mut sinks = Sinks { out, dead, only_anomalies, error: None, history, history_error: None };
    let mut line_no = if columns.is_some() { 1 } else { 0 };
    // The progress bar and the wall clock (the event time of records that
    // carry none) are read every 256 records: per record, the two clock
    // reads were a twentieth of a run.
    let (mut unreported, mut now) = (0u64, chrono::Utc::now().timestamp_millis());
    while next_line(&mut line)? {
        line_no += 1;
        unreported += line.len() as u64 + 1;
        if line_no % 256 == 0 {
            progress.inc(std::mem::take(&mut unreported));
            now = chrono::Utc::now().timestamp_millis();
        }
        let trimmed = line.strip_suffix(b"\r").unwrap_or(&line);
        if trimmed.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        engine.process(trimmed, Meta { key: None, ts_ms: now }, &mut |ev| {
            sinks.handle(ev, line_no, trimmed, &progress)
        });
        if let Some(e) = sinks.history_error.take() {
            return Err(e);
        }
        if let Some(e) = sinks.error.take() {
            // A closed pipe (`vigil local | head`) ends the run quietly.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(e).context("writing output");
        }
    }
    progress.inc(unreported);
    engine.flush(&mut |ev| sinks.handle(ev, line_no, b"", &progress));
    sinks.finish()?;
    if let Some(e) = sinks.history_error.take() {
        return Err(e);
    }
    progress.finish_and_clear();
    let summary = Summary { counts: engine.counts(), elapsed: started.elapsed() };
    let det = engine.detector();
    eprintln!(
        "{name}: {} records in {:.2} s ({:.0} records/s): {} scored, {} anomalies (detector {}{}, threshold {}), {} dead-lettered, {} filtered",
        summary.counts.records_in,
        summary.elapsed.as_secs_f64(),
        summary.throughput(),
        summary.counts.records_out,
        summary.counts.anomalies,
        det.map_or("none", |d| d.name()),
        det.and_then(|d| d.model_version()).map(|v| format!(" v{v}")).unwrap_or_default(),
        det.map_or(f64::NAN, |d| d.threshold()),
        summary.counts.dead_lettered,
        summary.counts.filtered,
    );
    Ok(summary)
}

/// The history store a local run writes, and the rows not yet written.
struct History {
    store: crate::history::store::Store,
    reader: crate::history::ingest::Reader,
    batch: crate::history::store::Batch,
}

/// Rows per history transaction in a local run.
const HISTORY_BATCH: i64 = 20_000;

/// Where outputs and dead letters go.
struct Sinks {
    out: Box<dyn Write>,
    dead: Option<Box<dyn Write>>,
    only_anomalies: bool,
    error: Option<std::io::Error>,
    history: Option<History>,
    history_error: Option<anyhow::Error>,
}

impl Sinks {
    fn keep(&mut self, ev: &Event<'_>, line: u64, raw: &[u8]) {
        let Some(h) = self.history.as_mut() else { return };
        match ev {
            Event::Output(o) => {
                h.reader.output(&mut h.batch, o.json, None, o.ts_ms);
            }
            Event::Rejected(r) => {
                let headers: [(&str, &[u8]); 3] = [
                    ("vigil.stage", r.stage.as_bytes()),
                    ("vigil.reason", r.reason.as_bytes()),
                    ("vigil.source.topic", b"(local file)"),
                ];
                h.reader.dead_letter(&mut h.batch, raw, &headers, chrono::Utc::now().timestamp_millis());
                if let Some(d) = h.batch.dead_letters.last_mut() {
                    d.offset = Some(line as i64);
                }
            }
        }
        if h.batch.records() >= HISTORY_BATCH {
            self.flush_history();
        }
    }

    fn flush_history(&mut self) {
        let Some(h) = self.history.as_mut() else { return };
        if let Err(e) = h.store.write(&std::mem::take(&mut h.batch)) {
            self.history_error.get_or_insert(anyhow::anyhow!(
                "writing the history store {}: {e}",
                h.store.path().display()
            ));
        }
    }

    fn handle(&mut self, ev: Event<'_>, line: u64, raw: &[u8], progress: &ProgressBar) {
        self.keep(&ev, line, raw);
        let res = match ev {
            Event::Output(o) if !self.only_anomalies || o.is_anomaly => {
                self.out.write_all(o.json).and_then(|()| self.out.write_all(b"\n"))
            }
            Event::Output(_) => Ok(()),
            Event::Rejected(r) => match self.dead.as_mut() {
                Some(d) => d.write_all(&dead_letter_line(line, &r.stage, &r.reason, raw)),
                None => {
                    progress.suspend(|| eprintln!("line {line}: {}: {}", r.stage, r.reason));
                    Ok(())
                }
            },
        };
        if let Err(e) = res {
            self.error.get_or_insert(e);
        }
    }

    fn finish(&mut self) -> Result<()> {
        self.flush_history();
        match self.out.flush() {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e).context("writing output"),
            _ => {}
        }
        if let Some(d) = self.dead.as_mut() {
            d.flush().context("writing dead letters")?;
        }
        Ok(())
    }
}

/// A progress bar on stderr when it is a terminal: bytes for a file over
/// 1 MiB, a spinner for a stream.
pub(crate) fn progress_bar(size: Option<u64>) -> ProgressBar {
    let stderr_is_tty = std::io::stderr().is_terminal();
    match size {
        Some(n) if stderr_is_tty && n > 1 << 20 => {
            let pb = ProgressBar::new(n);
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:40} {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                pb.set_style(style);
            }
            pb
        }
        None if stderr_is_tty => ProgressBar::new_spinner(),
        _ => ProgressBar::hidden(),
    }
}

/// One dead letter as a JSON line: where, why, and the original text.
fn dead_letter_line(line: u64, stage: &str, reason: &str, raw: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(raw.len() + 96);
    buf.extend_from_slice(b"{\"line\":");
    buf.extend_from_slice(itoa::Buffer::new().format(line).as_bytes());
    buf.extend_from_slice(b",\"stage\":");
    write_str(&mut buf, stage);
    buf.extend_from_slice(b",\"reason\":");
    write_str(&mut buf, reason);
    buf.extend_from_slice(b",\"record\":");
    write_str(&mut buf, &String::from_utf8_lossy(raw));
    buf.extend_from_slice(b"}\n");
    buf
}
