//! The `vigil` command line: argument parsing and dispatch only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Vigil: streaming anomaly detection and data transformation.
#[derive(Parser, Debug)]
#[command(name = "vigil", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Subcommand, Debug)]
pub enum Command {
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
    }
}
