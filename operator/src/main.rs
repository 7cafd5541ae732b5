use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vigil_operator::context::Settings;
use vigil_operator::pipeline::children;

/// The Vigil operator.
#[derive(Parser)]
#[command(name = "vigil-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile Pipelines (the operator's normal mode).
    Run {
        /// Kafka bootstrap servers for Pipelines that name none.
        #[arg(long, env = "VIGIL_KAFKA_BOOTSTRAP")]
        kafka_bootstrap: Option<String>,
        /// Runner image for Pipelines that name none.
        #[arg(long, env = "VIGIL_RUNNER_IMAGE", default_value = concat!("ghcr.io/vigil-dev/vigil-runner:", env!("CARGO_PKG_VERSION")))]
        runner_image: String,
        /// Watch only this namespace (default: all).
        #[arg(long, env = "VIGIL_WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, env = "VIGIL_LISTEN", default_value = "0.0.0.0:8080")]
        listen: std::net::SocketAddr,
        /// Namespace of the leader-election Lease; no election when absent.
        #[arg(long, env = "VIGIL_LEASE_NAMESPACE")]
        lease_namespace: Option<String>,
        /// Name of the leader-election Lease.
        #[arg(long, env = "VIGIL_LEASE_NAME", default_value = "vigil-operator")]
        lease_name: String,
        /// This replica's identity for leader election.
        #[arg(long, env = "POD_NAME", default_value = "vigil-operator")]
        identity: String,
        /// Seconds between re-checks of a Ready pipeline (consumer lag, and
        /// topic configuration changed in Kafka behind Vigil's back, which no
        /// watch reports); 0 re-checks only when something changes.
        #[arg(long, env = "VIGIL_REFRESH_INTERVAL", default_value_t = 60)]
        refresh_interval: u64,
        /// Serve the validating admission webhook on this address (HTTPS).
        #[arg(long, env = "VIGIL_WEBHOOK_LISTEN")]
        webhook_listen: Option<std::net::SocketAddr>,
        /// Names the webhook's certificate is issued for (the Service's DNS
        /// names, or the address in a URL-configured webhook).
        #[arg(long = "webhook-host", env = "VIGIL_WEBHOOK_HOSTS", value_delimiter = ',')]
        webhook_hosts: Vec<String>,
        /// The Secret (in the operator's namespace) that holds the webhook
        /// certificate; created and renewed by the operator unless someone
        /// else fills it.
        #[arg(long, env = "VIGIL_WEBHOOK_SECRET", default_value = "vigil-operator-webhook-tls")]
        webhook_secret: String,
        /// The ValidatingWebhookConfiguration whose caBundle is kept current.
        #[arg(long, env = "VIGIL_WEBHOOK_CONFIGURATION", default_value = "vigil-operator")]
        webhook_configuration: String,
        /// The model registry topic (a compacted Kafka topic through which
        /// trained Model versions reach the runners).
        #[arg(long, env = "VIGIL_MODEL_REGISTRY", default_value = vigil_crds::registry::DEFAULT_TOPIC)]
        model_registry: String,
        /// The operator's own namespace (where the certificate Secret lives).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        pod_namespace: String,
    },
    /// Print the CRDs (Pipeline, Model) generated from the API types, or write
    /// them into a directory with --out-dir.
    Crd {
        /// Write one file per CRD into this directory (e.g. `crds/`).
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Print the ClusterRole the operator needs.
    Rbac {
        /// Name of the ClusterRole.
        #[arg(long, default_value = "vigil-operator")]
        name: String,
        /// Print only the rules (the Helm chart's files/rbac-rules.yaml).
        #[arg(long)]
        rules_only: bool,
        /// Print the rules of the Role in the operator's own namespace
        /// instead (files/rbac-namespace-rules.yaml).
        #[arg(long, requires = "rules_only")]
        namespaced: bool,
    },
    /// Wait until a Pipeline is Ready (what `helm test` runs in a pod); exits
    /// 1 with its conditions if it is not within the timeout.
    WaitReady {
        /// The Pipeline's name.
        #[arg(long)]
        pipeline: String,
        /// Its namespace.
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        namespace: String,
        /// Seconds to wait.
        #[arg(long, default_value_t = 180)]
        timeout: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run {
            kafka_bootstrap,
            runner_image,
            namespace,
            listen,
            lease_namespace,
            lease_name,
            identity,
            refresh_interval,
            webhook_listen,
            webhook_hosts,
            webhook_secret,
            webhook_configuration,
            model_registry,
            pod_namespace,
        } => {
            vigil_operator::controller::init_logging();
            let client = kube::Client::try_default().await?;
            let opts = vigil_operator::controller::Options {
                settings: Settings {
                    children: children::Settings { runner_image, kafka_bootstrap, model_registry },
                    refresh_interval: (refresh_interval > 0).then(|| Duration::from_secs(refresh_interval)),
                },
                namespace,
                listen,
                lease: lease_namespace.map(|ns| (ns, lease_name)),
                identity,
                webhook: webhook_listen.map(|listen| vigil_operator::webhook::Options {
                    listen,
                    namespace: pod_namespace,
                    secret: webhook_secret,
                    configuration: webhook_configuration,
                    hosts: webhook_hosts,
                    refresh: Duration::from_secs(60),
                }),
            };
            vigil_operator::controller::run(opts, client).await
        }
        Command::Crd { out_dir: None } => vigil_operator::crdgen::print(&mut std::io::stdout().lock()),
        Command::Crd { out_dir: Some(dir) } => {
            for path in vigil_operator::crdgen::write(&dir)? {
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Rbac { name, rules_only: false, .. } => {
            print!("{}", serde_yaml::to_string(&vigil_operator::rbac::cluster_role(&name))?);
            Ok(())
        }
        Command::Rbac { rules_only: true, namespaced, .. } => {
            let (flag, rules) = match namespaced {
                false => ("", vigil_operator::rbac::rules()),
                true => (" --namespaced", vigil_operator::rbac::namespace_rules()),
            };
            println!(
                "# Generated by `vigil-operator rbac --rules-only{flag}` from operator/src/rbac.rs. Do not edit."
            );
            print!("{}", serde_yaml::to_string(&rules)?);
            Ok(())
        }
        Command::WaitReady { pipeline, namespace, timeout } => {
            let client = kube::Client::try_default().await?;
            vigil_operator::wait_ready(client, &namespace, &pipeline, Duration::from_secs(timeout)).await
        }
    }
}
