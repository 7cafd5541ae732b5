//! `vigil-operator crd`: writes the CRD YAML generated from the API types.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Print every CRD as one multi-document YAML stream.
pub fn print(out: &mut impl Write) -> Result<()> {
    for (i, (_, crd)) in vigil_crds::crds().iter().enumerate() {
        if i > 0 {
            writeln!(out, "---")?;
        }
        write!(out, "{}", vigil_crds::crd_yaml(crd)?)?;
    }
    Ok(())
}

/// Write each CRD to its file in `dir` (`pipeline.yaml`, `model.yaml`).
pub fn write(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let mut written = Vec::new();
    for (file, crd) in vigil_crds::crds() {
        let path = dir.join(file);
        std::fs::write(&path, vigil_crds::crd_yaml(&crd)?)
            .with_context(|| format!("failed to write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}
