//! Fitting each algorithm (linfa where linfa has it, the isolation forest
//! here), and what scoring needs from the fitted linfa models.

use linfa::prelude::*;
use ndarray::{Array1, Array2};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256Plus;
use serde::{Deserialize, Serialize};
use vigil_crds::model::{ModelAlgorithm, ModelParams};

use super::{Classes, Fitted, iforest};

/// Most records a one-class SVM is fitted on: linfa's solver keeps the
/// kernel matrix (n x n doubles) in memory. Larger data is subsampled evenly.
pub const SVM_MAX_RECORDS: usize = 3000;
/// Reference points kept for the one-class SVM's explanation.
const SVM_REFERENCE: usize = 256;

/// Training rows and, for supervised algorithms, their labels.
#[derive(Debug, Default, Clone)]
pub struct TrainingData {
    /// One row per record, one column per feature.
    pub x: Vec<Vec<f64>>,
    /// The label of each row (supervised algorithms).
    pub labels: Vec<serde_json::Value>,
}

/// A decision-tree node; a leaf when `feature == u32::MAX`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TreeNode {
    /// Split feature, or `u32::MAX` for a leaf.
    pub feature: u32,
    /// x < value goes left.
    pub value: f64,
    /// Left child index.
    pub left: u32,
    /// Right child index.
    pub right: u32,
    /// Impurity decrease of the split (its weight in explanations).
    pub gain: f64,
    /// Leaf: the class probabilities (training records reaching it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proba: Vec<f64>,
}

const LEAF: u32 = u32::MAX;

fn param<T: Copy>(v: Option<T>, default: T) -> T {
    v.unwrap_or(default)
}

fn matrix(rows: &[Vec<f64>]) -> Array2<f64> {
    let d = rows.first().map_or(0, Vec::len);
    Array2::from_shape_fn((rows.len(), d), |(i, j)| rows[i][j])
}

/// Fit `algorithm` on `data`.
pub fn fit(
    algorithm: ModelAlgorithm,
    params: &ModelParams,
    data: &TrainingData,
) -> Result<(Fitted, Option<Classes>), String> {
    let n = data.x.len();
    let d = data.x.first().map_or(0, Vec::len);
    if n < 2 || d == 0 {
        return Err(format!("{n} usable training records: at least 2 are needed"));
    }
    let seed = param(params.seed, 0).max(0) as u64;
    let iterations = param(params.max_iterations, 300).max(1) as u64;
    let x = matrix(&data.x);
    match algorithm {
        ModelAlgorithm::KMeans => {
            let k = param(params.clusters, 8).max(1) as usize;
            if k > n {
                return Err(format!("params.clusters is {k}, more than the {n} training records"));
            }
            let ds = DatasetBase::from(x);
            let model = linfa_clustering::KMeans::params_with_rng(k, Xoshiro256Plus::seed_from_u64(seed))
                .max_n_iterations(iterations)
                .tolerance(1e-4)
                // One k-means++ start, as scikit-learn's default (linfa's
                // is ten).
                .n_runs(1)
                .fit(&ds)
                .map_err(|e| format!("k-means: {e}"))?;
            let centroids = model.centroids().rows().into_iter().map(|r| r.to_vec()).collect();
            Ok((Fitted::KMeans { centroids }, None))
        }
        ModelAlgorithm::GaussianMixture => {
            let k = param(params.components, 2).max(1) as usize;
            if k > 64 {
                return Err(format!("params.components is {k}; a Gaussian mixture here has at most 64"));
            }
            let ds = DatasetBase::from(x);
            let model = linfa_clustering::GaussianMixtureModel::params_with_rng(
                k,
                Xoshiro256Plus::seed_from_u64(seed),
            )
            .max_n_iterations(iterations)
            .reg_covariance(1e-6)
            .fit(&ds)
            .map_err(|e| format!("Gaussian mixture: {e}"))?;
            let mut log_norm = Vec::with_capacity(k);
            let mut precisions = Vec::with_capacity(k);
            for c in 0..k {
                let p = model.precisions().index_axis(ndarray::Axis(0), c).to_owned();
                let flat: Vec<f64> = p.iter().copied().collect();
                let log_det = log_det_spd(&flat, d)
                    .ok_or("Gaussian mixture: a precision matrix is not positive definite")?;
                let w = model.weights()[c].max(f64::MIN_POSITIVE);
                log_norm.push(w.ln() + 0.5 * log_det - 0.5 * d as f64 * (2.0 * std::f64::consts::PI).ln());
                precisions.push(flat);
            }
            let means = model.means().rows().into_iter().map(|r| r.to_vec()).collect();
            Ok((Fitted::GaussianMixture { log_norm, means, precisions }, None))
        }
        ModelAlgorithm::Pca => {
            let k = param(params.components, 1).max(1) as usize;
            if k >= d {
                return Err(format!(
                    "params.components is {k}: PCA must keep fewer components than the {d} features, or nothing is left to score"
                ));
            }
            let ds = DatasetBase::from(x);
            let model = linfa_reduction::Pca::params(k).fit(&ds).map_err(|e| format!("PCA: {e}"))?;
            let c = model.components();
            let rows: Vec<Vec<f64>> = if c.ncols() == d {
                c.rows().into_iter().map(|r| r.to_vec()).collect()
            } else {
                c.columns().into_iter().map(|r| r.to_vec()).collect()
            };
            // Unit length (whitening, if any, scales them).
            let components = rows
                .into_iter()
                .map(|r| {
                    let norm = r.iter().map(|v| v * v).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
                    r.into_iter().map(|v| v / norm).collect()
                })
                .collect();
            Ok((Fitted::Pca { mean: model.mean().to_vec(), components }, None))
        }
        ModelAlgorithm::OneClassSvm => {
            let nu = params.nu.unwrap_or(0.05).clamp(1e-6, 1.0);
            let gamma = params.gamma.unwrap_or(1.0 / d as f64).max(1e-12);
            let rows = evenly(&data.x, SVM_MAX_RECORDS);
            let ds = DatasetBase::from(matrix(&rows));
            let svm = linfa_svm::Svm::<f64, linfa::dataset::Pr>::params()
                .nu_weight(nu)
                .gaussian_kernel(1.0 / gamma)
                .fit(&ds)
                .map_err(|e| format!("one-class SVM: {e}"))?;
            let reference = evenly(&data.x, SVM_REFERENCE);
            Ok((Fitted::OneClassSvm { svm: Box::new(svm), reference }, None))
        }
        ModelAlgorithm::IsolationForest => {
            let trees = param(params.trees, 100).max(1) as usize;
            let sample = param(params.sample_size, 256).max(2) as usize;
            Ok((Fitted::IsolationForest(iforest::Forest::fit(&data.x, trees, sample, seed)), None))
        }
        ModelAlgorithm::LogisticRegression => {
            let classes = classes(&data.labels)?;
            if classes.names.len() != 2 {
                return Err(format!(
                    "logisticRegression: the label has {} classes ({}); it separates exactly two (use decisionTree for more)",
                    classes.names.len(),
                    list(&classes.names)
                ));
            }
            let y: Array1<bool> =
                data.labels.iter().map(|l| Some(l) == classes.names.get(classes.positive)).collect();
            let ds = Dataset::new(x, y);
            let model = linfa_logistic::LogisticRegression::default()
                .max_iterations(iterations)
                .fit(&ds)
                .map_err(|e| format!("logistic regression: {e}"))?;
            // Our probability is of the positive class (true).
            let sign = if model.labels().pos.class { 1.0 } else { -1.0 };
            let weights = model.params().iter().map(|w| w * sign).collect();
            let intercept = model.intercept() * sign;
            let means = column_means(&data.x);
            Ok((Fitted::LogisticRegression { weights, intercept, means }, Some(classes)))
        }
        ModelAlgorithm::DecisionTree => {
            let classes = classes(&data.labels)?;
            let y: Array1<usize> =
                data.labels.iter().map(|l| classes.names.iter().position(|c| c == l).unwrap_or(0)).collect();
            let depth = param(params.max_depth, 10).max(1) as usize;
            let ds = Dataset::new(x, y.clone());
            let model = linfa_trees::DecisionTree::params()
                .max_depth(Some(depth))
                .fit(&ds)
                .map_err(|e| format!("decision tree: {e}"))?;
            let mut nodes = Vec::new();
            flatten_tree(model.root_node(), &mut nodes);
            // Leaf probabilities from the training records that reach them.
            let k = classes.names.len();
            let mut counts: Vec<Vec<f64>> = vec![vec![0.0; k]; nodes.len()];
            for (row, label) in data.x.iter().zip(y.iter()) {
                let leaf = leaf_of(&nodes, row);
                counts[leaf][*label] += 1.0;
            }
            for (node, c) in nodes.iter_mut().zip(counts) {
                if node.feature == LEAF {
                    let total: f64 = c.iter().sum();
                    node.proba = if total > 0.0 {
                        c.iter().map(|v| v / total).collect()
                    } else {
                        vec![1.0 / k as f64; k]
                    };
                }
            }
            Ok((Fitted::DecisionTree { nodes }, Some(classes)))
        }
    }
}

fn list(values: &[serde_json::Value]) -> String {
    values.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
}

/// The label's classes, and the positive one: `true` or 1 when the label is
/// boolean or 0/1, otherwise the rarest class (what a detector flags).
pub fn classes(labels: &[serde_json::Value]) -> Result<Classes, String> {
    let mut names: Vec<serde_json::Value> = Vec::new();
    let mut counts: Vec<usize> = Vec::new();
    for l in labels {
        match names.iter().position(|n| n == l) {
            Some(i) => counts[i] += 1,
            None => {
                if names.len() == 1024 {
                    return Err("the label has more than 1024 distinct values; is it a class?".into());
                }
                names.push(l.clone());
                counts.push(1);
            }
        }
    }
    if names.len() < 2 {
        return Err(format!(
            "the label has {} distinct value(s) ({}) in the training data; a classifier needs at least two",
            names.len(),
            list(&names)
        ));
    }
    let positive = names
        .iter()
        .position(|n| *n == serde_json::Value::Bool(true) || n.as_f64() == Some(1.0))
        .filter(|_| names.iter().all(|n| n.is_boolean() || n.as_f64().is_some_and(|v| v == 0.0 || v == 1.0)))
        .unwrap_or_else(|| counts.iter().enumerate().min_by_key(|(_, c)| **c).map_or(0, |(i, _)| i));
    Ok(Classes { names, positive })
}

fn flatten_tree(node: &linfa_trees::TreeNode<f64, usize>, out: &mut Vec<TreeNode>) -> u32 {
    let at = out.len() as u32;
    if node.is_leaf() {
        out.push(TreeNode { feature: LEAF, value: 0.0, left: 0, right: 0, gain: 0.0, proba: Vec::new() });
        return at;
    }
    let (feature, value, gain) = node.split();
    out.push(TreeNode { feature: feature as u32, value, left: 0, right: 0, gain, proba: Vec::new() });
    let children = node.children();
    let mut idx = [at, at];
    for (slot, child) in children.into_iter().take(2).enumerate() {
        if let Some(c) = child {
            idx[slot] = flatten_tree(c, out);
        }
    }
    // A missing child (linfa keeps none when a side is empty) falls back to
    // a leaf of its own.
    for slot in &mut idx {
        if *slot == at {
            *slot = out.len() as u32;
            out.push(TreeNode { feature: LEAF, value: 0.0, left: 0, right: 0, gain: 0.0, proba: Vec::new() });
        }
    }
    out[at as usize].left = idx[0];
    out[at as usize].right = idx[1];
    at
}

fn leaf_of(nodes: &[TreeNode], x: &[f64]) -> usize {
    let mut i = 0usize;
    while nodes[i].feature != LEAF {
        let n = &nodes[i];
        i = if x[n.feature as usize] < n.value { n.left } else { n.right } as usize;
    }
    i
}

/// The positive-class probability at x's leaf, the predicted class, and the
/// features on the path weighted by their splits' impurity decrease.
pub fn tree_predict(
    nodes: &[TreeNode],
    x: &[f64],
    parts: &mut [f64],
    positive: usize,
) -> (f64, Option<usize>) {
    let mut i = 0usize;
    while nodes[i].feature != LEAF {
        let n = &nodes[i];
        if let Some(p) = parts.get_mut(n.feature as usize) {
            *p += n.gain.abs().max(1e-12);
        }
        i = if x[n.feature as usize] < n.value { n.left } else { n.right } as usize;
    }
    let proba = &nodes[i].proba;
    let class = proba.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(c, _)| c);
    (proba.get(positive).copied().unwrap_or(0.0), class)
}

/// Indices in bounds, children after parents, leaf probabilities per class.
pub fn check_tree(nodes: &[TreeNode], width: usize, classes: usize) -> bool {
    !nodes.is_empty()
        && nodes.iter().enumerate().all(|(i, n)| {
            if n.feature == LEAF {
                n.proba.len() == classes
            } else {
                (n.feature as usize) < width
                    && (n.left as usize) > i
                    && (n.right as usize) > i
                    && (n.left as usize) < nodes.len()
                    && (n.right as usize) < nodes.len()
            }
        })
}

/// Up to `max` rows, evenly spaced.
fn evenly(rows: &[Vec<f64>], max: usize) -> Vec<Vec<f64>> {
    if rows.len() <= max {
        return rows.to_vec();
    }
    (0..max).map(|i| rows[i * rows.len() / max].clone()).collect()
}

fn column_means(rows: &[Vec<f64>]) -> Vec<f64> {
    let d = rows.first().map_or(0, Vec::len);
    let mut m = vec![0.0; d];
    for r in rows {
        for (a, v) in m.iter_mut().zip(r) {
            *a += v;
        }
    }
    m.iter_mut().for_each(|a| *a /= rows.len().max(1) as f64);
    m
}

/// log det of a symmetric positive-definite d x d matrix (row-major), by
/// Cholesky; `None` if it is not positive definite.
pub fn log_det_spd(a: &[f64], d: usize) -> Option<f64> {
    let mut l = vec![0.0; d * d];
    let mut log_det = 0.0;
    for i in 0..d {
        for j in 0..=i {
            let mut s = a[i * d + j];
            for k in 0..j {
                s -= l[i * d + k] * l[j * d + k];
            }
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * d + i] = s.sqrt();
                log_det += 2.0 * l[i * d + i].ln();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    Some(log_det)
}
