//! `vigil validate FILES...`: check manifests offline with the messages the
//! API server gives at admission, plus the field-flow checks.

use std::io::Write;
use std::path::{Path, PathBuf};

use vigil_crds::Model;
use vigil_crds::manifest::{Manifest, parse_all, yaml_files};

/// Validate the files; print one line per resource and every problem.
/// A Pipeline whose detector has a `modelRef` is also checked against the
/// Model of that name when one of the files holds it (the Model's features
/// must be produced by the Pipeline's transforms). Returns how many
/// documents were invalid.
pub fn run(paths: &[PathBuf], out: &mut impl Write) -> anyhow::Result<usize> {
    let files = yaml_files(paths)?;
    if files.is_empty() {
        anyhow::bail!("no manifests found in {paths:?}");
    }
    let mut parsed = Vec::new();
    for file in files {
        let docs = match std::fs::read_to_string(&file) {
            Ok(text) => Ok(parse_all(&text)),
            Err(e) => Err(e),
        };
        parsed.push((file, docs));
    }
    let models: Vec<&Model> = parsed
        .iter()
        .filter_map(|(_, docs)| docs.as_ref().ok())
        .flatten()
        .filter_map(|d| match d {
            Ok(Manifest::Model(m)) => Some(&**m),
            _ => None,
        })
        .collect();
    let mut invalid = 0;
    for (file, docs) in &parsed {
        let docs = match docs {
            Ok(d) => d,
            Err(e) => {
                writeln!(out, "{}: cannot be read: {e}", file.display())?;
                invalid += 1;
                continue;
            }
        };
        for doc in docs {
            invalid += report(file, doc, &models, out)?;
        }
    }
    Ok(invalid)
}

fn report(
    file: &Path,
    doc: &Result<Manifest, vigil_crds::manifest::Invalid>,
    models: &[&Model],
    out: &mut impl Write,
) -> anyhow::Result<usize> {
    let m = match doc {
        Ok(m) => m,
        Err(e) => {
            writeln!(out, "{}: {e}", file.display())?;
            return Ok(1);
        }
    };
    if let Manifest::Other { .. } = m {
        writeln!(out, "{}: {} is not a Vigil resource; skipped", file.display(), m.describe())?;
        return Ok(0);
    }
    if let Manifest::Pipeline(p) = m {
        if let Some(r) = &p.spec.detector.model_ref {
            let same = |model: &&&Model| {
                model.metadata.name.as_deref() == Some(r.name.as_str())
                    && model.metadata.namespace == p.metadata.namespace
            };
            if let Some(model) = models.iter().find(same) {
                let errors = vigil_crds::semantic::check_model_ref(&p.spec, &r.name, &model.spec);
                if !errors.is_empty() {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    let e = vigil_crds::manifest::Invalid { kind: "Pipeline".into(), name, errors };
                    writeln!(out, "{}: {e}", file.display())?;
                    return Ok(1);
                }
            }
        }
    }
    writeln!(out, "{}: {} is valid", file.display(), m.describe())?;
    Ok(0)
}
