use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The Vigil operator.
#[derive(Parser)]
#[command(name = "vigil-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CRDs (Pipeline, Model) generated from the API types, or write
    /// them into a directory with --out-dir.
    Crd {
        /// Write one file per CRD into this directory (e.g. `crds/`).
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd { out_dir: None } => vigil_operator::crdgen::print(&mut std::io::stdout().lock()),
        Command::Crd { out_dir: Some(dir) } => {
            for path in vigil_operator::crdgen::write(&dir)? {
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}
