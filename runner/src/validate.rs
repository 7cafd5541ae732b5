//! `vigil validate FILES...`: check manifests offline with the messages the
//! API server gives at admission, plus the field-flow checks.

use std::io::Write;
use std::path::{Path, PathBuf};

use vigil_crds::manifest::{parse_all, yaml_files};

/// Validate the files; print one line per resource and every problem.
/// Returns how many documents were invalid.
pub fn run(paths: &[PathBuf], out: &mut impl Write) -> anyhow::Result<usize> {
    let files = yaml_files(paths)?;
    if files.is_empty() {
        anyhow::bail!("no manifests found in {paths:?}");
    }
    let mut invalid = 0;
    for file in files {
        invalid += validate_file(&file, out)?;
    }
    Ok(invalid)
}

fn validate_file(file: &Path, out: &mut impl Write) -> anyhow::Result<usize> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            writeln!(out, "{}: cannot be read: {e}", file.display())?;
            return Ok(1);
        }
    };
    let mut invalid = 0;
    for doc in parse_all(&text) {
        match doc {
            Ok(m @ vigil_crds::manifest::Manifest::Other { .. }) => {
                writeln!(out, "{}: {} is not a Vigil resource; skipped", file.display(), m.describe())?;
            }
            Ok(m) => writeln!(out, "{}: {} is valid", file.display(), m.describe())?,
            Err(e) => {
                invalid += 1;
                writeln!(out, "{}: {e}", file.display())?;
            }
        }
    }
    Ok(invalid)
}
