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
        } => {
            vigil_operator::controller::init_logging();
            let client = kube::Client::try_default().await?;
            let opts = vigil_operator::controller::Options {
                settings: Settings {
                    children: children::Settings { runner_image, kafka_bootstrap },
                    refresh_interval: (refresh_interval > 0).then(|| Duration::from_secs(refresh_interval)),
                },
                namespace,
                listen,
                lease: lease_namespace.map(|ns| (ns, lease_name)),
                identity,
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
        Command::Rbac { name } => {
            print!("{}", serde_yaml::to_string(&vigil_operator::rbac::cluster_role(&name))?);
            Ok(())
        }
    }
}
