//! The `vigil` command line: argument parsing and dispatch only.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use vigil_crds::RecordFormat;

/// Vigil: streaming anomaly detection and data transformation.
#[derive(Parser, Debug)]
#[command(name = "vigil", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Record formats on the command line.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Format {
    /// JSON lines.
    Json,
    /// CSV with a header row.
    Csv,
}

impl From<Format> for RecordFormat {
    fn from(f: Format) -> Self {
        match f {
            Format::Json => RecordFormat::Json,
            Format::Csv => RecordFormat::Csv,
        }
    }
}

/// What to do.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a pipeline over a file with no cluster and no broker. Without
    /// arguments, runs the shipped example (examples/pipelines/cpu-univariate.yaml
    /// over examples/data/cpu.csv) and prints the anomalies it finds.
    Local {
        /// The Pipeline manifest.
        pipeline: Option<PathBuf>,
        /// Input: CSV with a header, or JSON lines; `-` reads stdin.
        #[arg(long, short)]
        input: Option<PathBuf>,
        /// Input format, when the file name does not say.
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Write every scored record here (JSON lines; `-` for stdout).
        /// Without it, only anomalies are printed.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Write records that could not be processed here (JSON lines with
        /// stage and reason); without it they are reported on stderr.
        #[arg(long)]
        dead_letter: Option<PathBuf>,
        /// Print every scored record to stdout, not only anomalies.
        #[arg(long, conflicts_with = "output")]
        all: bool,
        /// The artifact of the Model a `detector.modelRef` names:
        /// NAME=FILE (written by `vigil train`). Repeatable.
        #[arg(long = "model", value_name = "NAME=ARTIFACT")]
        models: Vec<String>,
        /// Also keep history in this directory (the store the history
        /// component writes in a cluster): `vigil anomalies --dir DIR` and
        /// `vigil history --dir DIR` query it.
        #[arg(long, value_name = "DIR")]
        history: Option<PathBuf>,
    },
    /// Run the history component of a Pipeline (what its history pod does):
    /// store the output and dead-letter topics, and serve the Data API.
    HistoryServer {
        /// The Pipeline manifest (in a pod: the operator's ConfigMap).
        #[arg(long, env = "VIGIL_PIPELINE_FILE", default_value = "/etc/vigil/pipeline.yaml")]
        pipeline: PathBuf,
        /// Directory of the store (the history volume).
        #[arg(long, env = "VIGIL_HISTORY_DIR", default_value = "/var/lib/vigil/history")]
        data_dir: PathBuf,
        /// Address of the Data API, probes and metrics.
        #[arg(long, env = "VIGIL_API_LISTEN", default_value = "0.0.0.0:8081")]
        listen: std::net::SocketAddr,
        /// Kafka bootstrap servers; overrides spec.kafka.bootstrapServers.
        #[arg(long, env = "VIGIL_KAFKA_BOOTSTRAP")]
        bootstrap_servers: Option<String>,
        /// A directory with one file per Kafka client setting.
        #[arg(long, env = "VIGIL_KAFKA_SECRET_DIR")]
        kafka_secret_dir: Option<PathBuf>,
        /// Namespace of the Pipeline, when the manifest has none.
        #[arg(long, env = "VIGIL_NAMESPACE", default_value = "default")]
        namespace: String,
        /// A file holding the bearer token clients must send (the mounted
        /// key of spec.api.tokenSecretRef); re-read when it changes.
        #[arg(long, env = "VIGIL_API_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        /// Largest request body, bytes (413 above).
        #[arg(long, env = "VIGIL_API_MAX_BODY", default_value_t = 8 * 1024 * 1024)]
        max_body_bytes: usize,
        /// Requests per second the API accepts, all clients together (429 above).
        #[arg(long, env = "VIGIL_API_RATE", default_value_t = 500)]
        rate: u32,
        /// Longest a request may take, e.g. 30s (a follow stream excepted).
        #[arg(long, default_value = "30s", value_parser = crate::history::server::parse_duration)]
        request_timeout: std::time::Duration,
        /// How long history is kept, e.g. 7d; default spec.storage.retention.
        #[arg(long, value_parser = crate::history::server::parse_duration)]
        retention: Option<std::time::Duration>,
        /// How often old rows are removed.
        #[arg(long, default_value = "60s", value_parser = crate::history::server::parse_duration, hide = true)]
        retention_interval: std::time::Duration,
    },
    /// Flagged records of a Pipeline, newest pages last: from its Data API
    /// (--url) or a local store (--dir).
    Anomalies {
        #[command(flatten)]
        source: crate::history::cli::Source,
        #[command(flatten)]
        query: crate::history::cli::Filter,
        /// Only scores at or above (0-1).
        #[arg(long)]
        min_score: Option<f64>,
    },
    /// Per-key minutes of a Pipeline (count, mean and max score, anomalies,
    /// feature means): from its Data API (--url) or a local store (--dir).
    History {
        #[command(flatten)]
        source: crate::history::cli::Source,
        #[command(flatten)]
        query: crate::history::cli::Filter,
    },
    /// Dead letters of a Pipeline, with stage and reason: from its Data API
    /// (--url) or a local store (--dir).
    DeadLetters {
        #[command(flatten)]
        source: crate::history::cli::Source,
        #[command(flatten)]
        query: crate::history::cli::Filter,
    },
    /// Train a Model: read its training data (the spec's file or topic, or
    /// --input), apply its transforms, fit, calibrate the threshold, and
    /// write an immutable versioned artifact into --output.
    Train {
        /// The Model manifest.
        model: PathBuf,
        /// Train on this file (CSV with a header, or JSON lines) instead of
        /// the spec's source.
        #[arg(long, short)]
        input: Option<PathBuf>,
        /// Input format, when the file name does not say.
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Directory of the Model's artifacts.
        #[arg(long, short, env = "VIGIL_MODEL_DIR", default_value = "models")]
        output: PathBuf,
        /// Version to write; default: one above the newest in --output.
        #[arg(long)]
        version: Option<i64>,
        /// Kafka bootstrap servers for a topic source; overrides
        /// spec.training.kafka.bootstrapServers.
        #[arg(long, env = "VIGIL_KAFKA_BOOTSTRAP")]
        bootstrap_servers: Option<String>,
        /// A directory with one file per Kafka client setting.
        #[arg(long, env = "VIGIL_KAFKA_SECRET_DIR")]
        kafka_secret_dir: Option<PathBuf>,
        /// Also publish the artifact to the model registry (a compacted
        /// Kafka topic) so that runners on any node can serve it.
        #[arg(long)]
        publish: bool,
        /// The registry topic.
        #[arg(long, env = "VIGIL_MODEL_REGISTRY", default_value = crate::models::registry::DEFAULT_TOPIC)]
        registry_topic: String,
        /// After publishing, remove all but this many newest versions of the
        /// Model from the registry.
        #[arg(long, requires = "publish")]
        keep: Option<usize>,
        /// Namespace of the Model in the registry, when the manifest has none.
        #[arg(long, env = "VIGIL_NAMESPACE", default_value = "default")]
        namespace: String,
        /// Where the outcome is written for the pod's status (a JSON summary,
        /// or the error); written only if the file exists.
        #[arg(long, env = "VIGIL_TERMINATION_LOG", default_value = "/dev/termination-log")]
        termination_log: PathBuf,
    },
    /// Score a detector on a labelled corpus in the NAB layout (data/**/*.csv
    /// with timestamp,value; labels/combined_windows.json): NAB standard,
    /// low-FP and low-FN scores at the tuned threshold and at the pipeline's.
    Eval {
        /// The corpus directory: the NAB layout (e.g. ../shared/datasets/nab)
        /// or Vigil's multivariate benchmark (written by --generate); the
        /// layout is detected.
        #[arg(long, required_unless_present = "generate")]
        corpus: Option<PathBuf>,
        /// A Pipeline whose detector is evaluated: on NAB it reads the
        /// `value` column (default robustZ); on the multivariate benchmark
        /// its detector runs on each stream's channels (default auto).
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// Write the multivariate benchmark into this directory instead.
        #[arg(long, conflicts_with = "corpus")]
        generate: Option<PathBuf>,
        /// Seed of the generated benchmark.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Generate the unit-sized benchmark (what the tests use).
        #[arg(long, requires = "generate")]
        small: bool,
        /// Score a peer's scores instead of running a pipeline (multivariate
        /// benchmark only): JSON `{stream: {key: [score or null, ...]}}`.
        #[arg(long, conflicts_with = "pipeline")]
        scores: Option<PathBuf>,
        /// The threshold the peer's scores are reported at besides tuned.
        #[arg(long, default_value_t = 0.5, requires = "scores")]
        threshold: f64,
    },
    /// Run a pipeline against Kafka (what each runner pod does).
    Run {
        /// The Pipeline manifest (in a pod: the operator's ConfigMap).
        #[arg(long, env = "VIGIL_PIPELINE_FILE", default_value = "/etc/vigil/pipeline.yaml")]
        pipeline: PathBuf,
        /// Kafka bootstrap servers; overrides spec.kafka.bootstrapServers.
        #[arg(long, env = "VIGIL_KAFKA_BOOTSTRAP")]
        bootstrap_servers: Option<String>,
        /// A directory with one file per Kafka client setting (the mounted
        /// Secret of spec.kafka.secretRef).
        #[arg(long, env = "VIGIL_KAFKA_SECRET_DIR")]
        kafka_secret_dir: Option<PathBuf>,
        /// Consumer group; default vigil.<namespace>.<name>.
        #[arg(long, env = "VIGIL_CONSUMER_GROUP")]
        group: Option<String>,
        /// Namespace of the Pipeline, when the manifest has none.
        #[arg(long, env = "VIGIL_NAMESPACE")]
        namespace: Option<String>,
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, env = "VIGIL_LISTEN", default_value = "0.0.0.0:8080")]
        listen: std::net::SocketAddr,
        /// This instance's name (the pod name), used in the transactional id.
        #[arg(long, env = "HOSTNAME", default_value = "vigil-runner")]
        instance: String,
        /// Most records in one exactly-once transaction.
        #[arg(long, default_value_t = 5000)]
        batch: usize,
        /// Seconds to wait before consuming again after a failure stopped
        /// the runner (an unwritable output or dead-letter topic); doubles
        /// on each failure, up to a minute.
        #[arg(long, env = "VIGIL_STALL_BACKOFF", default_value_t = 5)]
        stall_backoff: u64,
        /// Where the error that ends the runner is written, for the pod's
        /// status (Kubernetes' terminationMessagePath); written only if the
        /// file exists.
        #[arg(long, env = "VIGIL_TERMINATION_LOG", default_value = "/dev/termination-log")]
        termination_log: PathBuf,
        /// The model registry topic, for a Pipeline whose detector is a
        /// `modelRef`.
        #[arg(long, env = "VIGIL_MODEL_REGISTRY", default_value = crate::models::registry::DEFAULT_TOPIC)]
        model_registry: String,
        /// Processing threads; partitions are spread over them. Default:
        /// spec.threads, else the cores the container may use (its CPU
        /// limit, or the host's cores).
        #[arg(long, env = "VIGIL_THREADS")]
        threads: Option<usize>,
    },
    /// Check Pipeline and Model manifests offline, with the messages the API
    /// server would give at admission.
    Validate {
        /// Manifest files, or directories searched for *.yaml.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Run the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { files } => {
            let invalid = crate::validate::run(&files, &mut std::io::stdout().lock())?;
            Ok(if invalid == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Run {
            pipeline,
            bootstrap_servers,
            kafka_secret_dir,
            group,
            namespace,
            listen,
            instance,
            batch,
            stall_backoff,
            termination_log,
            model_registry,
            threads,
        } => {
            crate::logging::init(true);
            let result = crate::run::run(crate::run::Options {
                pipeline_file: pipeline,
                bootstrap: bootstrap_servers,
                secret_dir: kafka_secret_dir,
                group,
                namespace,
                listen,
                instance,
                batch: batch.max(1),
                stall_backoff: std::time::Duration::from_secs(stall_backoff),
                model_registry,
                threads,
            });
            if let Err(e) = &result {
                tracing::error!(error = format!("{e:#}"), "Runner failed");
                // The kubelet mounts this file; its content becomes the
                // container's lastState.terminated.message, which the
                // operator reports on the Pipeline.
                if termination_log.is_file() {
                    let _ = std::fs::write(&termination_log, format!("{e:#}"));
                }
            }
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval { corpus, pipeline, generate, seed, small, scores, threshold } => {
            use crate::eval::multivariate;
            if let Some(dir) = generate {
                let size = if small { multivariate::Size::Small } else { multivariate::Size::Full };
                let streams = multivariate::generate(seed, size);
                multivariate::write(&dir, seed, &streams)?;
                for s in &streams {
                    eprintln!(
                        "{}: {} keys, {} records, {} faults",
                        s.name,
                        s.series.len(),
                        s.series.values().map(Vec::len).sum::<usize>(),
                        s.faults.len()
                    );
                }
                eprintln!("Wrote the multivariate benchmark (seed {seed}) to {}", dir.display());
                return Ok(ExitCode::SUCCESS);
            }
            let corpus = corpus.context("--corpus is required")?;
            let multivariate = corpus.join(multivariate::MARKER).is_file();
            if let Some(file) = scores {
                if !multivariate {
                    anyhow::bail!("--scores applies to the multivariate benchmark only");
                }
                print!("{}", multivariate::run_scores(&corpus, &file, threshold)?);
                return Ok(ExitCode::SUCCESS);
            }
            let text = match &pipeline {
                Some(p) => {
                    std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?
                }
                None if multivariate => multivariate::DEFAULT_PIPELINE.to_string(),
                None => crate::eval::DEFAULT_PIPELINE.to_string(),
            };
            let pipeline = vigil_crds::manifest::single_pipeline(&text)?;
            if multivariate {
                print!("{}", multivariate::run(&pipeline, &corpus)?);
            } else {
                print!("{}", crate::eval::run(&pipeline, &corpus)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Train {
            model,
            input,
            format,
            output,
            version,
            bootstrap_servers,
            kafka_secret_dir,
            publish,
            registry_topic,
            keep,
            namespace,
            termination_log,
        } => {
            let result = (|| {
                let text = std::fs::read_to_string(&model)
                    .with_context(|| format!("cannot read {}", model.display()))?;
                let model = vigil_crds::manifest::single_model(&text)?;
                let namespace = model.metadata.namespace.clone().unwrap_or(namespace);
                let opts = crate::models::train::Options {
                    input,
                    format: format.map(Into::into),
                    output,
                    version,
                    bootstrap: bootstrap_servers,
                    kafka_secret_dir,
                    publish: publish.then_some((registry_topic, namespace)),
                    keep,
                };
                crate::models::train::train(&model, &opts)
            })();
            // The operator reads the outcome from the Job's pod.
            if termination_log.is_file() {
                let text = match &result {
                    Ok(t) => {
                        serde_json::to_string(&crate::models::train::summary(&t.artifact)).unwrap_or_default()
                    }
                    Err(e) => format!("{e:#}"),
                };
                let _ = std::fs::write(&termination_log, text);
            }
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Command::HistoryServer {
            pipeline,
            data_dir,
            listen,
            bootstrap_servers,
            kafka_secret_dir,
            namespace,
            token_file,
            max_body_bytes,
            rate,
            request_timeout,
            retention,
            retention_interval,
        } => {
            crate::logging::init(true);
            let text = std::fs::read_to_string(&pipeline)
                .with_context(|| format!("cannot read the pipeline manifest {}", pipeline.display()))?;
            let p = vigil_crds::manifest::single_pipeline(&text)?;
            let namespace = p.metadata.namespace.clone().unwrap_or(namespace);
            let retention = match retention {
                Some(r) => r,
                None => crate::history::server::parse_duration(
                    p.spec.storage.as_ref().map_or("7d", |s| s.retention.as_str()),
                )
                .map_err(|e| anyhow::anyhow!("spec.storage.retention: {e}"))?,
            };
            let options = crate::history::server::Options {
                namespace,
                data_dir,
                listen,
                bootstrap: bootstrap_servers,
                secret_dir: kafka_secret_dir,
                token_file,
                max_body_bytes,
                rate_per_second: rate,
                request_timeout,
                retention,
                retention_interval,
                batch: 5000,
            };
            crate::history::server::run(p, options)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Anomalies { source, query, min_score } => {
            crate::history::cli::run(crate::history::cli::Kind::Anomalies, &source, &query, min_score)
        }
        Command::History { source, query } => {
            crate::history::cli::run(crate::history::cli::Kind::History, &source, &query, None)
        }
        Command::DeadLetters { source, query } => {
            crate::history::cli::run(crate::history::cli::Kind::DeadLetters, &source, &query, None)
        }
        Command::Local { pipeline, input, format, output, dead_letter, all, models, history } => {
            let (text, input) = match (&pipeline, input) {
                (Some(p), input) => {
                    let text =
                        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
                    if input.is_none() {
                        anyhow::bail!("--input is required with a pipeline manifest");
                    }
                    (text, input)
                }
                (None, None) => {
                    eprintln!(
                        "No pipeline given: running the shipped example cpu-anomalies over examples/data/cpu.csv."
                    );
                    (crate::local::DEFAULT_PIPELINE.to_string(), None)
                }
                (None, Some(_)) => {
                    anyhow::bail!("--input needs a pipeline manifest: vigil local PIPELINE.yaml --input FILE")
                }
            };
            let pipeline = vigil_crds::manifest::single_pipeline(&text)?;
            let models = models
                .iter()
                .map(|m| {
                    let (name, path) = m
                        .split_once('=')
                        .with_context(|| format!("--model {m}: expected NAME=ARTIFACT, e.g. sensor-kmeans=models/sensor-kmeans-v1.vmodel"))?;
                    Ok((name.to_string(), PathBuf::from(path)))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let opts = crate::local::Options {
                input,
                format: format.map(Into::into),
                output,
                dead_letter,
                all,
                models,
                history,
            };
            crate::local::run(&pipeline, &opts)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
