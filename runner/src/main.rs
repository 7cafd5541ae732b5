use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match vigil_runner::cli::run(vigil_runner::cli::Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
