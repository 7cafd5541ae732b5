//! `vigil anomalies`, `vigil history`, `vigil dead-letters`: the same
//! questions against a Pipeline's Data API (`--url`) or a local store
//! (`--dir`, written by `vigil local --history`). A table for people, JSON
//! lines for scripts (`--json`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::store::{Cursor, Query, Store};

/// Where the history is.
#[derive(clap::Args, Debug, Clone)]
pub struct Source {
    /// The Pipeline's Data API, e.g. http://cpu-anomalies-api.team-a:8081
    /// (kubectl port-forward svc/NAME-api 8081 for a local shell).
    #[arg(long, env = "VIGIL_API_URL", conflicts_with = "dir")]
    pub url: Option<String>,
    /// Bearer token of the API (the key `token` of spec.api.tokenSecretRef).
    #[arg(long, env = "VIGIL_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A local history store (`vigil local --history DIR`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// What to select.
#[derive(clap::Args, Debug, Clone)]
pub struct Filter {
    /// From this time (RFC 3339, or epoch milliseconds).
    #[arg(long)]
    pub from: Option<String>,
    /// Before this time.
    #[arg(long)]
    pub to: Option<String>,
    /// Only this key.
    #[arg(long)]
    pub key: Option<String>,
    /// Most rows to show (pages are followed until then).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Which question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Flagged records.
    Anomalies,
    /// Per-key minutes.
    History,
    /// Dead letters.
    DeadLetters,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Anomalies => "/v1/anomalies",
            Kind::History => "/v1/history",
            Kind::DeadLetters => "/v1/dead-letters",
        }
    }
}

fn time(name: &str, v: &Option<String>) -> Result<Option<i64>> {
    v.as_deref()
        .map(|s| {
            s.parse::<i64>()
                .ok()
                .or_else(|| crate::codec::time::parse_datetime(s))
                .with_context(|| format!("--{name} {s:?}: not a time (RFC 3339, or epoch milliseconds)"))
        })
        .transpose()
}

/// One page: rows as JSON, and the next cursor.
fn page_local(store: &Store, kind: Kind, q: &Query) -> Result<(Vec<serde_json::Value>, Option<String>)> {
    let to_values = |v: serde_json::Value| -> (Vec<serde_json::Value>, Option<String>) {
        (v["items"].as_array().cloned().unwrap_or_default(), v["nextCursor"].as_str().map(String::from))
    };
    Ok(match kind {
        Kind::Anomalies => to_values(serde_json::to_value(store.anomalies(q)?)?),
        Kind::History => to_values(serde_json::to_value(store.history(q)?)?),
        Kind::DeadLetters => to_values(serde_json::to_value(store.dead_letters(q)?)?),
    })
}

fn page_remote(
    agent: &ureq::Agent,
    src: &Source,
    kind: Kind,
    params: &[(&str, String)],
) -> Result<(Vec<serde_json::Value>, Option<String>)> {
    let base = src.url.as_deref().unwrap_or_default().trim_end_matches('/');
    let url = format!("{base}{}", kind.path());
    let mut req = agent.get(&url);
    for (k, v) in params {
        req = req.query(*k, v);
    }
    if let Some(t) = &src.token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = req.call().with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let body = resp.body_mut().read_to_string().with_context(|| format!("reading the answer of {url}"))?;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body.clone()));
    if !status.is_success() {
        let why = v["error"].as_str().map(String::from).unwrap_or(body);
        bail!("{url}: {status}: {why}");
    }
    Ok((v["items"].as_array().cloned().unwrap_or_default(), v["nextCursor"].as_str().map(String::from)))
}

/// Run one of the three commands.
pub fn run(kind: Kind, src: &Source, f: &Filter, min_score: Option<f64>) -> Result<ExitCode> {
    if src.url.is_none() && src.dir.is_none() {
        bail!(
            "say where the history is: --url of the Pipeline's Data API (or VIGIL_API_URL), or --dir of a local store"
        );
    }
    let (from, to) = (time("from", &f.from)?, time("to", &f.to)?);
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    let local = src.dir.as_deref().map(Store::open_read_only).transpose()?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    while rows.len() < f.limit {
        let want = (f.limit - rows.len()).min(super::store::MAX_LIMIT);
        let (items, next) = match &local {
            Some(store) => {
                let q = Query {
                    from,
                    to,
                    key: f.key.clone(),
                    min_score,
                    limit: want,
                    cursor: cursor.as_deref().map(Cursor::decode).transpose().map_err(anyhow::Error::msg)?,
                };
                page_local(store, kind, &q)?
            }
            None => {
                let mut params = vec![("limit", want.to_string())];
                if let Some(v) = from {
                    params.push(("from", v.to_string()));
                }
                if let Some(v) = to {
                    params.push(("to", v.to_string()));
                }
                if let (Some(k), true) = (&f.key, kind != Kind::DeadLetters) {
                    params.push(("key", k.clone()));
                }
                if let Some(m) = min_score {
                    params.push(("minScore", m.to_string()));
                }
                if let Some(c) = &cursor {
                    params.push(("cursor", c.clone()));
                }
                page_remote(&agent, src, kind, &params)?
            }
        };
        rows.extend(items);
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut out = std::io::stdout().lock();
    if f.json {
        for r in &rows {
            writeln!(out, "{r}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    print_table(&mut out, kind, &rows)?;
    if rows.is_empty() {
        eprintln!("nothing in that range");
    }
    Ok(ExitCode::SUCCESS)
}

fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        serde_json::Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), |x| format!("{x:.4}")),
        other => other.to_string(),
    }
}

fn print_table(out: &mut impl Write, kind: Kind, rows: &[serde_json::Value]) -> Result<()> {
    let (header, lines): (Vec<&str>, Vec<Vec<String>>) = match kind {
        Kind::Anomalies => (
            vec!["TIME", "KEY", "SCORE", "WHY"],
            rows.iter()
                .map(|r| {
                    let why = r["record"]["anomaly"]["explanation"]
                        .as_array()
                        .map(|e| {
                            e.iter()
                                .take(2)
                                .map(|x| format!("{}={}", cell(&x["feature"]), cell(&x["value"])))
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default();
                    vec![cell(&r["time"]), cell(&r["key"]), cell(&r["score"]), why]
                })
                .collect(),
        ),
        Kind::History => (
            vec!["MINUTE", "KEY", "RECORDS", "MEAN SCORE", "MAX SCORE", "ANOMALIES", "FEATURE MEANS"],
            rows.iter()
                .map(|r| {
                    let features = r["features"]
                        .as_object()
                        .map(|m| {
                            m.iter().map(|(k, v)| format!("{k}={}", cell(v))).collect::<Vec<_>>().join(" ")
                        })
                        .unwrap_or_default();
                    vec![
                        cell(&r["minute"]),
                        cell(&r["key"]),
                        r["count"].to_string(),
                        cell(&r["meanScore"]),
                        cell(&r["maxScore"]),
                        r["anomalies"].to_string(),
                        features,
                    ]
                })
                .collect(),
        ),
        Kind::DeadLetters => (
            vec!["TIME", "STAGE", "REASON", "SOURCE", "PAYLOAD"],
            rows.iter()
                .map(|r| {
                    let mut payload = cell(&r["payload"]).replace('\n', " ");
                    if payload.chars().count() > 40 {
                        payload = payload.chars().take(40).collect::<String>() + "...";
                    }
                    let source = match (r["partition"].as_i64(), r["offset"].as_i64()) {
                        (Some(p), Some(o)) => format!("{}/{p}@{o}", cell(&r["topic"])),
                        (None, Some(o)) => format!("{} line {o}", cell(&r["topic"])),
                        _ => cell(&r["topic"]),
                    };
                    vec![cell(&r["time"]), cell(&r["stage"]), cell(&r["reason"]), source, payload]
                })
                .collect(),
        ),
    };
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for l in &lines {
        for (w, c) in widths.iter_mut().zip(l) {
            *w = (*w).max(c.chars().count()).min(60);
        }
    }
    let row = |cells: Vec<String>| {
        let n = cells.len();
        cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| if i + 1 == n { c } else { format!("{c:<w$}", w = widths[i]) })
            .collect::<Vec<_>>()
            .join("  ")
    };
    writeln!(out, "{}", row(header.iter().map(|h| h.to_string()).collect()))?;
    for l in lines {
        writeln!(out, "{}", row(l))?;
    }
    Ok(())
}
