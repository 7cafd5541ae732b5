//! Trained models: the artifact `vigil train` writes, and the scorer a
//! pipeline with `detector.modelRef` uses.
//!
//! An artifact is one immutable file: a header line
//! `vigil-model 1 sha256=<hex> bytes=<n>` and a JSON body (the fitted
//! parameters and the metadata: algorithm, params, features, a hash of the
//! Model's transforms, training records and seconds, the threshold, the
//! training-score quantiles, accuracy for supervised algorithms). Reading
//! checks the length and the checksum before anything else, so a truncated
//! or altered file is refused with a clear error, never half-loaded.
//!
//! Scores are mapped to [0, 1] from the training-score distribution: a raw
//! score at the q-th training quantile scores about q (so the calibrated
//! threshold for contamination c is about 1 - c), and scores beyond the
//! largest training score approach 1 without reaching it, keeping their
//! order. Supervised algorithms score the probability of the positive
//! class, and also write the predicted class.

pub mod fit;
pub mod iforest;
pub mod registry;
pub mod train;

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vigil_crds::model::ModelAlgorithm;

use crate::detectors::{Factory, Score, Scorer, contributions};

/// The artifact format this runner writes and reads.
pub const FORMAT: u32 = 1;
const MAGIC: &str = "vigil-model";
/// Knots of the score calibration (training-score quantiles 0..=1 in steps
/// of 1/QUANTILES).
pub const QUANTILES: usize = 1000;
/// The mapped score of the largest training score; above it scores
/// approach 1.
const TOP: f64 = 0.999;

/// What was trained, on what, and how well.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// The Model's name.
    pub model: String,
    /// The version (1, 2, ...).
    pub version: i64,
    /// The algorithm.
    pub algorithm: ModelAlgorithm,
    /// The Model's `spec.params` as given.
    pub params: serde_json::Value,
    /// Feature names, in the order the model reads them.
    pub features: Vec<String>,
    /// The label field (supervised algorithms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// SHA-256 of the Model's transforms (as JSON): scoring must apply the
    /// same ones.
    pub transforms_hash: String,
    /// The Model's transforms, applied before scoring.
    pub transforms: Vec<vigil_crds::Transform>,
    /// RFC 3339 time training finished.
    pub trained_at: String,
    /// Records trained on.
    pub records: u64,
    /// Records read but not usable (dead-lettered, a feature missing).
    pub skipped: u64,
    /// Seconds spent fitting (reading excluded).
    pub fit_seconds: f64,
    /// Seconds in all.
    pub seconds: f64,
    /// Where the data came from.
    pub source: String,
    /// The threshold in [0, 1] the calibration chose.
    pub threshold: f64,
    /// How: `contamination=0.01`, `quantile=0.99`, or `probability=0.5`.
    pub calibration: String,
    /// Training accuracy (supervised algorithms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
}

/// The fitted parameters, per algorithm.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Fitted {
    /// Squared distance to the nearest centroid.
    KMeans {
        /// One row per centroid.
        centroids: Vec<Vec<f64>>,
    },
    /// Negative log-likelihood under the mixture.
    GaussianMixture {
        /// Per component: log weight + log normalisation.
        log_norm: Vec<f64>,
        /// Per component: the mean.
        means: Vec<Vec<f64>>,
        /// Per component: the precision matrix, row-major.
        precisions: Vec<Vec<f64>>,
    },
    /// Squared reconstruction error.
    Pca {
        /// The training mean.
        mean: Vec<f64>,
        /// One row per principal component (unit length).
        components: Vec<Vec<f64>>,
    },
    /// Negative decision value of a one-class SVM (linfa-svm).
    OneClassSvm {
        /// The fitted linfa model.
        svm: Box<linfa_svm::Svm<f64, bool>>,
        /// Training points, for the per-feature explanation (a sample).
        reference: Vec<Vec<f64>>,
    },
    /// Isolation forest anomaly score.
    IsolationForest(iforest::Forest),
    /// Probability of the positive class.
    LogisticRegression {
        /// One weight per feature.
        weights: Vec<f64>,
        /// The intercept.
        intercept: f64,
        /// Feature means on the training data, for the explanation.
        means: Vec<f64>,
    },
    /// Probability of the positive class at the leaf.
    DecisionTree {
        /// Nodes; the root is the first.
        nodes: Vec<fit::TreeNode>,
    },
}

/// Class names of a supervised model and which one is "positive" (flagged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Classes {
    /// Label values, as they appear in records.
    pub names: Vec<serde_json::Value>,
    /// Index of the positive class.
    pub positive: usize,
}

/// z = (x - mean) / std, per feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaling {
    /// Training means.
    pub mean: Vec<f64>,
    /// Training standard deviations (1 where a feature is constant).
    pub std: Vec<f64>,
}

impl Scaling {
    /// From training rows.
    pub fn fit(rows: &[Vec<f64>]) -> Scaling {
        let d = rows.first().map_or(0, Vec::len);
        let n = rows.len().max(1) as f64;
        let mut mean = vec![0.0; d];
        for r in rows {
            for (m, v) in mean.iter_mut().zip(r) {
                *m += v / n;
            }
        }
        let mut var = vec![0.0; d];
        for r in rows {
            for ((s, v), m) in var.iter_mut().zip(r).zip(&mean) {
                *s += (v - m) * (v - m) / n;
            }
        }
        let std = var.into_iter().map(|v| if v > 1e-24 { v.sqrt() } else { 1.0 }).collect();
        Scaling { mean, std }
    }

    /// Standardise `x` into `z`.
    #[inline]
    pub fn apply(&self, x: &[f64], z: &mut [f64]) {
        for i in 0..x.len().min(z.len()) {
            z[i] = (x[i] - self.mean[i]) / self.std[i];
        }
    }
}

/// One trained version: metadata, calibration and parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// Always `FORMAT`.
    pub format: u32,
    /// What was trained.
    pub metadata: Metadata,
    /// Raw training-score quantiles (QUANTILES + 1 knots, ascending);
    /// empty for supervised models, whose score is a probability.
    pub quantiles: Vec<f64>,
    /// Supervised models' classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Classes>,
    /// Per-feature standardisation applied before the model (training mean
    /// and standard deviation): distances and explanations are not
    /// dominated by the feature with the largest unit.
    pub scaling: Scaling,
    /// The parameters.
    pub fitted: Fitted,
}

/// Why an artifact cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// Not readable.
    #[error("cannot read {0}: {1}")]
    Io(String, std::io::Error),
    /// Not a Vigil model file at all.
    #[error("{0} is not a Vigil model artifact (it does not start with `{MAGIC}`)")]
    NotAnArtifact(String),
    /// Written by a newer Vigil.
    #[error("{0} is in artifact format {1}; this runner reads format {FORMAT}")]
    Format(String, String),
    /// Cut short or altered.
    #[error("{0} is corrupt: {1}")]
    Corrupt(String, String),
}

impl Artifact {
    /// The artifact's bytes: header line and JSON body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let body = serde_json::to_vec(self).unwrap_or_default();
        let sum = hex(&Sha256::digest(&body));
        let mut out = format!("{MAGIC} {FORMAT} sha256={sum} bytes={}\n", body.len()).into_bytes();
        out.extend_from_slice(&body);
        out
    }

    /// Parse and verify bytes (`what` names them in errors).
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Self, ArtifactError> {
        let corrupt = |why: String| ArtifactError::Corrupt(what.to_string(), why);
        let Some(rest) = bytes.strip_prefix(MAGIC.as_bytes()) else {
            return Err(ArtifactError::NotAnArtifact(what.to_string()));
        };
        let nl = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| corrupt("the header line has no end".into()))?;
        let header =
            std::str::from_utf8(&rest[..nl]).map_err(|_| corrupt("the header is not text".into()))?;
        let body = &rest[nl + 1..];
        let mut parts = header.split_whitespace();
        let format = parts.next().unwrap_or("");
        if format != FORMAT.to_string() {
            return Err(ArtifactError::Format(what.to_string(), format.to_string()));
        }
        let mut sum = None;
        let mut len = None;
        for p in parts {
            if let Some(v) = p.strip_prefix("sha256=") {
                sum = Some(v.to_string());
            } else if let Some(v) = p.strip_prefix("bytes=") {
                len = v.parse::<usize>().ok();
            }
        }
        let (Some(sum), Some(len)) = (sum, len) else {
            return Err(corrupt("the header lacks sha256= or bytes=".into()));
        };
        if body.len() != len {
            return Err(corrupt(format!("the header says {len} bytes, the body has {}", body.len())));
        }
        let actual = hex(&Sha256::digest(body));
        if actual != sum {
            return Err(corrupt(format!("checksum mismatch (header sha256={sum}, body sha256={actual})")));
        }
        let a: Artifact =
            serde_json::from_slice(body).map_err(|e| corrupt(format!("the body does not parse: {e}")))?;
        a.check().map_err(corrupt)?;
        Ok(a)
    }

    /// Read and verify a file.
    pub fn read(path: &Path) -> Result<Self, ArtifactError> {
        let what = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| ArtifactError::Io(what.clone(), e))?;
        Self::from_bytes(&bytes, &what)
    }

    /// Write to `dir/<model>-v<version>.vmodel`; never over an existing
    /// file (versions are immutable). Returns the path.
    pub fn write(&self, dir: &Path) -> anyhow::Result<std::path::PathBuf> {
        use std::io::Write;
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join(self.file_name());
        let tmp = dir.join(format!(".{}.tmp", self.file_name()));
        let bytes = self.to_bytes();
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(&bytes)?;
            f.sync_all()
        });
        if let Err(e) = written {
            // A partial file would hold space the next attempt needs.
            let _ = std::fs::remove_file(&tmp);
            let full = e.kind() == std::io::ErrorKind::StorageFull;
            anyhow::bail!(
                "cannot write the model artifact {} ({} bytes): {e}{}",
                path.display(),
                bytes.len(),
                if full {
                    "; the model volume is full: raise the Model's spec.storage.size (every trained \
                     version's artifact stays on it)"
                } else {
                    ""
                }
            );
        }
        // A hard link fails if the version exists: immutable.
        std::fs::hard_link(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            anyhow::anyhow!("cannot write {}: {e} (a trained version is never overwritten)", path.display())
        })?;
        std::fs::remove_file(&tmp)?;
        Ok(path)
    }

    /// `<model>-v<version>.vmodel`.
    pub fn file_name(&self) -> String {
        format!("{}-v{}.vmodel", self.metadata.model, self.metadata.version)
    }

    /// Internal consistency, so a scorer never indexes out of bounds.
    fn check(&self) -> Result<(), String> {
        let d = self.metadata.features.len();
        if d == 0 {
            return Err("no features".into());
        }
        let rows_ok = |rows: &[Vec<f64>], width: usize| rows.iter().all(|r| r.len() == width);
        if self.scaling.mean.len() != d
            || self.scaling.std.len() != d
            || self.scaling.std.iter().any(|s| !(*s > 0.0 && s.is_finite()))
        {
            return Err("the feature scaling does not match the features".into());
        }
        let ok = match &self.fitted {
            Fitted::KMeans { centroids } => !centroids.is_empty() && rows_ok(centroids, d),
            Fitted::GaussianMixture { log_norm, means, precisions } => {
                !means.is_empty()
                    && log_norm.len() == means.len()
                    && precisions.len() == means.len()
                    && rows_ok(means, d)
                    && rows_ok(precisions, d * d)
            }
            Fitted::Pca { mean, components } => mean.len() == d && rows_ok(components, d),
            Fitted::OneClassSvm { svm, reference } => rows_ok(reference, d) && svm_fits(svm, d),
            Fitted::IsolationForest(f) => f.check(d),
            Fitted::LogisticRegression { weights, means, .. } => weights.len() == d && means.len() == d,
            Fitted::DecisionTree { nodes } => {
                fit::check_tree(nodes, d, self.classes.as_ref().map_or(0, |c| c.names.len()))
            }
        };
        if !ok {
            return Err("the fitted parameters do not match the features".into());
        }
        let supervised = self.metadata.algorithm.is_supervised();
        if supervised != self.classes.is_some() {
            return Err("classes must be present exactly for supervised algorithms".into());
        }
        if !supervised
            && (self.quantiles.len() != QUANTILES + 1 || self.quantiles.windows(2).any(|w| w[0] > w[1]))
        {
            return Err("the score calibration is missing or not ascending".into());
        }
        Ok(())
    }
}

/// Whether a one-class SVM's support vectors have `d` features, as scoring
/// needs (linfa keeps them private; their serialised form says).
fn svm_fits(svm: &linfa_svm::Svm<f64, bool>, d: usize) -> bool {
    let Ok(v) = serde_json::to_value(svm) else { return false };
    let Some(sv) = v.get("sep_hyperplane").and_then(|h| h.get("WeightedCombination")) else { return false };
    let dims: Vec<u64> = sv
        .get("dim")
        .and_then(|x| x.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
        .unwrap_or_default();
    let data = sv.get("data").and_then(|x| x.as_array()).map_or(0, Vec::len);
    // (Weights pair with support vectors by zip: their count is free.)
    matches!(dims.as_slice(), [n, w] if *w as usize == d && data == *n as usize * d)
        && matches!(v.get("kernel_method"), Some(k) if k.get("Gaussian").is_some_and(|g| g.as_f64().is_some_and(|e| e > 0.0)))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Map a raw score to [0, 1] through the training quantiles.
pub fn calibrate(quantiles: &[f64], raw: f64) -> f64 {
    let n = quantiles.len();
    if n < 2 || raw.is_nan() {
        return 0.0;
    }
    let top = quantiles[n - 1];
    if raw > top {
        // Beyond every training score: towards 1, keeping the order.
        let scale = (top - quantiles[n / 2]).max(top.abs() * 1e-6).max(1e-12);
        return TOP + (1.0 - TOP) * (1.0 - (-(raw - top) / scale).exp());
    }
    if raw <= quantiles[0] {
        return 0.0;
    }
    // The last knot at or below raw.
    let i = quantiles.partition_point(|q| *q <= raw).saturating_sub(1).min(n - 2);
    let (lo, hi) = (quantiles[i], quantiles[i + 1]);
    let frac = if hi > lo { (raw - lo) / (hi - lo) } else { 1.0 };
    // Ties (many equal knots) take the highest rank they reach.
    let j = quantiles.partition_point(|q| *q <= raw);
    let rank = if hi > lo { i as f64 + frac } else { (j.max(1) - 1) as f64 };
    TOP * rank / (n - 1) as f64
}

/// Raw-score quantiles of the training scores.
pub fn quantiles(scores: &mut [f64]) -> Vec<f64> {
    scores.sort_by(f64::total_cmp);
    let n = scores.len();
    (0..=QUANTILES)
        .map(|i| {
            if n == 0 {
                return 0.0;
            }
            let pos = i as f64 / QUANTILES as f64 * (n - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            scores[lo] + (scores[hi] - scores[lo]) * (pos - lo as f64)
        })
        .collect()
}

impl Fitted {
    /// The raw score of `x` (higher is more anomalous; for supervised
    /// models the positive-class probability) and each feature's part in it
    /// (written to `parts`, not normalised). Also the predicted class for
    /// supervised models.
    pub fn raw(&self, x: &[f64], parts: &mut [f64], classes: Option<&Classes>) -> (f64, Option<usize>) {
        parts.iter_mut().for_each(|p| *p = 0.0);
        match self {
            Fitted::KMeans { centroids } => {
                let mut best = (f64::INFINITY, 0);
                for (k, c) in centroids.iter().enumerate() {
                    let d: f64 = c.iter().zip(x).map(|(c, x)| (x - c) * (x - c)).sum();
                    if d < best.0 {
                        best = (d, k);
                    }
                }
                for ((p, c), x) in parts.iter_mut().zip(&centroids[best.1]).zip(x) {
                    *p = (x - c) * (x - c);
                }
                (best.0, None)
            }
            Fitted::GaussianMixture { log_norm, means, precisions } => {
                let d = x.len();
                let mut best = (f64::NEG_INFINITY, 0);
                let mut logs = [0.0f64; 64];
                let mut total_max = f64::NEG_INFINITY;
                for k in 0..means.len() {
                    let m = &means[k];
                    let p = &precisions[k];
                    let mut q = 0.0;
                    for i in 0..d {
                        let di = x[i] - m[i];
                        let row = &p[i * d..(i + 1) * d];
                        let mut s = 0.0;
                        for j in 0..d {
                            s += row[j] * (x[j] - m[j]);
                        }
                        q += di * s;
                    }
                    let l = log_norm[k] - 0.5 * q;
                    if k < logs.len() {
                        logs[k] = l;
                    }
                    total_max = total_max.max(l);
                    if l > best.0 {
                        best = (l, k);
                    }
                }
                // log-sum-exp over components.
                // Components more than e^36 less likely than the best add
                // nothing a double can hold: no exp for them.
                let sum: f64 = if means.len() <= logs.len() {
                    logs[..means.len()]
                        .iter()
                        .filter(|l| **l > total_max - 36.0)
                        .map(|l| (l - total_max).exp())
                        .sum()
                } else {
                    1.0
                };
                let nll = -(total_max + sum.ln());
                // The most likely component's Mahalanobis terms, per feature.
                let (m, p) = (&means[best.1], &precisions[best.1]);
                for i in 0..d {
                    let row = &p[i * d..(i + 1) * d];
                    let s: f64 = (0..d).map(|j| row[j] * (x[j] - m[j])).sum();
                    parts[i] = ((x[i] - m[i]) * s).abs();
                }
                (nll, None)
            }
            Fitted::Pca { mean, components } => {
                let d = x.len();
                let mut r = [0.0f64; 256];
                let r = &mut r[..d.min(256)];
                for (i, ri) in r.iter_mut().enumerate() {
                    *ri = x[i] - mean[i];
                }
                let mut centred = [0.0f64; 256];
                centred[..r.len()].copy_from_slice(r);
                for c in components {
                    let proj: f64 = c.iter().zip(&centred[..r.len()]).map(|(a, b)| a * b).sum();
                    for (ri, ci) in r.iter_mut().zip(c) {
                        *ri -= proj * ci;
                    }
                }
                let mut err = 0.0;
                for (p, ri) in parts.iter_mut().zip(r.iter()) {
                    *p = ri * ri;
                    err += *p;
                }
                (err, None)
            }
            Fitted::OneClassSvm { svm, reference } => {
                let v = ndarray::ArrayView1::from(x);
                let decision = svm.weighted_sum(&v) - svm.rho;
                // Per feature: distance to the nearest reference point.
                let mut best = (f64::INFINITY, 0);
                for (k, r) in reference.iter().enumerate() {
                    let d: f64 = r.iter().zip(x).map(|(r, x)| (x - r) * (x - r)).sum();
                    if d < best.0 {
                        best = (d, k);
                    }
                }
                if let Some(r) = reference.get(best.1) {
                    for ((p, r), x) in parts.iter_mut().zip(r).zip(x) {
                        *p = (x - r) * (x - r);
                    }
                }
                (-decision, None)
            }
            Fitted::IsolationForest(f) => (f.score(x, parts), None),
            Fitted::LogisticRegression { weights, intercept, means } => {
                let z: f64 = weights.iter().zip(x).map(|(w, x)| w * x).sum::<f64>() + intercept;
                let p = 1.0 / (1.0 + (-z).exp());
                for (i, part) in parts.iter_mut().enumerate() {
                    *part = (weights[i] * (x[i] - means[i])).abs();
                }
                let positive = classes.map_or(1, |c| c.positive);
                let class = if p >= 0.5 { positive } else { 1 - positive.min(1) };
                (p, Some(class))
            }
            Fitted::DecisionTree { nodes } => {
                let positive = classes.map_or(0, |c| c.positive);
                fit::tree_predict(nodes, x, parts, positive)
            }
        }
    }
}

/// A loaded artifact, shared by every key's scorer.
#[derive(Debug)]
pub struct Model {
    /// The artifact.
    pub artifact: Artifact,
}

impl Model {
    /// Score `x`: the calibrated score, the explanation and the class.
    /// `buf` is scratch space, reused between calls.
    pub fn score(&self, x: &[f64], buf: &mut Vec<f64>) -> (Score, Option<usize>) {
        let a = &self.artifact;
        let d = x.len();
        buf.resize(2 * d, 0.0);
        let (z, parts) = buf.split_at_mut(d);
        a.scaling.apply(x, z);
        let (raw, class) = a.fitted.raw(z, parts, a.classes.as_ref());
        let value = if a.classes.is_some() { raw.clamp(0.0, 1.0) } else { calibrate(&a.quantiles, raw) };
        let explanation = contributions(parts, &[]);
        (Score { value, explanation }, class)
    }

    /// The version.
    pub fn version(&self) -> i64 {
        self.artifact.metadata.version
    }

    /// The class name of `class`, as JSON.
    pub fn class_name(&self, class: usize) -> Option<&serde_json::Value> {
        self.artifact.classes.as_ref()?.names.get(class)
    }
}

/// A detector factory over a trained model: every key shares the model
/// (scoring is stateless, so no per-key state is kept).
pub struct ModelFactory {
    model: Arc<Model>,
}

impl ModelFactory {
    /// Serve `model`.
    pub fn new(model: Arc<Model>) -> Self {
        ModelFactory { model }
    }
}

struct ModelScorer {
    model: Arc<Model>,
    parts: Vec<f64>,
}

impl Scorer for ModelScorer {
    fn score(&mut self, x: &[f64]) -> Score {
        self.model.score(x, &mut self.parts).0
    }
}

impl Factory for ModelFactory {
    fn name(&self) -> &'static str {
        algorithm_name(self.model.artifact.metadata.algorithm)
    }

    fn scorer(&self) -> Box<dyn Scorer> {
        Box::new(ModelScorer { model: self.model.clone(), parts: Vec::new() })
    }

    fn default_threshold(&self) -> f64 {
        self.model.artifact.metadata.threshold
    }

    fn bytes_per_key(&self) -> usize {
        0
    }
}

/// The algorithm's name as in manifests.
pub fn algorithm_name(a: ModelAlgorithm) -> &'static str {
    match a {
        ModelAlgorithm::KMeans => "kMeans",
        ModelAlgorithm::GaussianMixture => "gaussianMixture",
        ModelAlgorithm::Pca => "pca",
        ModelAlgorithm::OneClassSvm => "oneClassSvm",
        ModelAlgorithm::IsolationForest => "isolationForest",
        ModelAlgorithm::LogisticRegression => "logisticRegression",
        ModelAlgorithm::DecisionTree => "decisionTree",
    }
}

/// SHA-256 of transforms as JSON, as recorded in artifacts.
pub fn transforms_hash(transforms: &[vigil_crds::Transform]) -> String {
    hex(&Sha256::digest(serde_json::to_vec(transforms).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::iforest::Rng;
    use super::train::{Options, train};
    use super::*;

    /// x0 ~ N(0, 1), x1 = x0 + small noise (correlated), x2 ~ N(0, 1); a
    /// label `bad` = x0 + x2 > 1.5.
    fn data(n: usize) -> String {
        let mut rng = Rng::new(42);
        let mut normal = || {
            // Box-Muller.
            let (u, v) = (rng.unit().max(1e-12), rng.unit());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        };
        let mut out = String::from("x0,x1,x2,bad\n");
        for _ in 0..n {
            let (a, b, c) = (normal(), normal(), normal());
            out.push_str(&format!("{a},{},{c},{}\n", a + 0.1 * b, a + c > 1.5));
        }
        out
    }

    fn model(algorithm: &str, extra: &str) -> vigil_crds::Model {
        let text = format!(
            "apiVersion: vigil.dev/v1alpha1\nkind: Model\nmetadata: {{name: m}}\nspec:\n  algorithm: {algorithm}\n  features: [x0, x1, x2]\n  training: {{file: data.csv, format: json}}\n{extra}"
        );
        vigil_crds::manifest::single_model(&text).unwrap()
    }

    fn trained(algorithm: &str, extra: &str) -> (Model, Vec<Vec<f64>>) {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("data.csv");
        let text = data(2000);
        std::fs::File::create(&csv).unwrap().write_all(text.as_bytes()).unwrap();
        let opts = Options { input: Some(csv), output: dir.path().join("out"), ..Options::default() };
        let t = train(&model(algorithm, extra), &opts).unwrap();
        let back = Artifact::read(&t.path).unwrap();
        // Round trip: the same model (floats may differ in the last bit:
        // serde_json parses without float_roundtrip).
        let (a, b) = (Model { artifact: t.artifact.clone() }, Model { artifact: back.clone() });
        for p in [[0.0, 0.0, 0.0], [3.0, -3.0, 0.0], [1.0, 1.0, 8.0]] {
            let (sa, ca) = a.score(&p, &mut Vec::new());
            let (sb, cb) = b.score(&p, &mut Vec::new());
            assert!((sa.value - sb.value).abs() < 1e-9 && ca == cb, "{algorithm}: {sa:?} vs {sb:?}");
        }
        assert_eq!(back.metadata.features, t.artifact.metadata.features);
        assert_eq!(back.metadata.version, 1);
        let rows = text
            .lines()
            .skip(1)
            .map(|l| l.split(',').take(3).map(|v| v.parse().unwrap()).collect())
            .collect();
        (Model { artifact: back }, rows)
    }

    const UNSUPERVISED: [&str; 5] = ["kMeans", "gaussianMixture", "pca", "oneClassSvm", "isolationForest"];

    fn params(algorithm: &str) -> &'static str {
        match algorithm {
            "kMeans" => "  params: {clusters: 4, seed: 1}\n",
            "gaussianMixture" => "  params: {components: 2, seed: 1}\n",
            "pca" => "  params: {components: 2}\n",
            "oneClassSvm" => "  params: {nu: 0.05}\n",
            _ => "  params: {trees: 100, sampleSize: 256, seed: 1}\n",
        }
    }

    #[test]
    fn every_unsupervised_algorithm_flags_the_asked_contamination_and_an_obvious_outlier() {
        for algorithm in UNSUPERVISED {
            let (m, rows) =
                trained(algorithm, &format!("{}  calibration: {{contamination: 0.05}}\n", params(algorithm)));
            let threshold = m.artifact.metadata.threshold;
            let mut buf = Vec::new();
            let flagged = rows.iter().filter(|r| m.score(r, &mut buf).0.value >= threshold).count();
            let rate = flagged as f64 / rows.len() as f64;
            assert!(
                (0.03..=0.07).contains(&rate),
                "{algorithm}: {rate} of the training data flagged, asked 0.05"
            );
            // Breaks the x0 ~ x1 correlation, far out.
            let (outlier, _) = m.score(&[3.0, -3.0, 0.0], &mut buf);
            assert!(
                outlier.value >= threshold && outlier.value <= 1.0,
                "{algorithm}: outlier scores {}",
                outlier.value
            );
            let (centre, _) = m.score(&[0.0, 0.0, 0.0], &mut buf);
            assert!(centre.value < threshold, "{algorithm}: the centre scores {}", centre.value);
            let total: f64 = outlier.explanation.iter().map(|c| c.weight).sum();
            assert!((total - 1.0).abs() < 1e-9, "{algorithm}: explanation shares sum to {total}");
            assert!(
                outlier.explanation[0].feature < 2,
                "{algorithm}: x0 or x1 is at fault: {:?}",
                outlier.explanation
            );
        }
    }

    #[test]
    fn the_explanation_names_the_feature_at_fault() {
        for algorithm in ["kMeans", "gaussianMixture", "isolationForest", "oneClassSvm"] {
            let (m, _) = trained(algorithm, params(algorithm));
            let (s, _) = m.score(&[0.0, 0.0, 8.0], &mut Vec::new());
            assert_eq!(s.explanation[0].feature, 2, "{algorithm}: {:?}", s.explanation);
        }
    }

    #[test]
    fn supervised_algorithms_learn_the_label_and_predict_the_class() {
        for algorithm in ["logisticRegression", "decisionTree"] {
            let (m, _) = trained(
                algorithm,
                "  label: bad\n  params: {maxDepth: 6}\n"
                    .replace(
                        if algorithm == "logisticRegression" { "  params: {maxDepth: 6}\n" } else { "\u{0}" },
                        "",
                    )
                    .as_str(),
            );
            let accuracy = m.artifact.metadata.accuracy.unwrap();
            assert!(accuracy > 0.9, "{algorithm}: training accuracy {accuracy}");
            let classes = m.artifact.classes.as_ref().unwrap();
            assert_eq!(classes.names[classes.positive], serde_json::Value::Bool(true));
            let (s, class) = m.score(&[2.0, 2.0, 2.0], &mut Vec::new());
            assert_eq!(m.class_name(class.unwrap()), Some(&serde_json::Value::Bool(true)), "{algorithm}");
            assert!(s.value > 0.5, "{algorithm}: P(bad) {}", s.value);
            let (s, class) = m.score(&[-2.0, -2.0, -2.0], &mut Vec::new());
            assert_eq!(m.class_name(class.unwrap()), Some(&serde_json::Value::Bool(false)), "{algorithm}");
            assert!(s.value < 0.5, "{algorithm}: P(bad) {}", s.value);
        }
    }

    #[test]
    fn a_corrupted_or_truncated_artifact_is_refused_with_a_clear_error() {
        let (m, _) = trained("kMeans", params("kMeans"));
        let bytes = m.artifact.to_bytes();
        let mut flipped = bytes.clone();
        let last = flipped.len() - 10;
        flipped[last] ^= 0x01;
        let e = Artifact::from_bytes(&flipped, "m-v1.vmodel").unwrap_err().to_string();
        assert!(e.starts_with("m-v1.vmodel is corrupt: checksum mismatch"), "{e}");
        let e = Artifact::from_bytes(&bytes[..bytes.len() - 100], "m-v1.vmodel").unwrap_err().to_string();
        assert!(e.contains("is corrupt: the header says"), "{e}");
        let e = Artifact::from_bytes(b"{\"format\":1}", "x.json").unwrap_err().to_string();
        assert_eq!(e, "x.json is not a Vigil model artifact (it does not start with `vigil-model`)");
        let e =
            Artifact::from_bytes(b"vigil-model 9 sha256=00 bytes=0\n", "new.vmodel").unwrap_err().to_string();
        assert_eq!(e, "new.vmodel is in artifact format 9; this runner reads format 1");
    }

    #[test]
    fn calibration_maps_training_quantiles_to_scores_and_keeps_order_beyond_them() {
        let mut raw: Vec<f64> = (0..10_000).map(|i| i as f64).collect();
        let qs = quantiles(&mut raw);
        assert!((calibrate(&qs, 5_000.0) - 0.5 * TOP).abs() < 1e-3);
        assert!((calibrate(&qs, 9_900.0) - 0.99 * TOP).abs() < 1e-3);
        let (a, b) = (calibrate(&qs, 20_000.0), calibrate(&qs, 40_000.0));
        assert!(TOP < a && a < b && b < 1.0, "{a} {b}");
        assert_eq!(calibrate(&qs, -5.0), 0.0);
    }

    #[test]
    fn training_data_with_no_usable_record_fails_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("data.csv");
        std::fs::write(&csv, "x0,x1,x2,bad\na,b,c,true\n,,,\n").unwrap();
        let out = dir.path().join("out");
        let opts = Options { input: Some(csv), output: out.clone(), ..Options::default() };
        let e = train(&model("kMeans", ""), &opts).unwrap_err().to_string();
        assert!(e.contains("0 of 2 records") && e.contains("nothing was written"), "{e}");
        assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none());
    }
}
