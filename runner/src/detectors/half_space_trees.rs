//! `halfSpaceTrees`: streaming half-space trees (Tan, Ting & Liu, 2011) for
//! several features at once.
//!
//! The trees' shape (split feature and point at each node, in normalised
//! [0, 1] space) is drawn once per pipeline from the seed and shared by every
//! key; a key keeps only node masses (two u16 per node and tree) and the
//! running range of each feature used to normalise it. A key's masses from
//! the last full window (`reference`) score the current window's records;
//! every `window` records the roles swap. Until the first window is complete
//! (or `warmup`, if longer) scores are 0.
//!
//! The raw score (the log of how little reference mass the record's path
//! holds) is turned into [0, 1] by the running tail probability of the key's own
//! score distribution (`likelihood.rs`), so thresholds mean the same across
//! algorithms. The explanation ranks features by how far the record sits
//! from the key's running mean, in standard deviations.

use std::sync::Arc;

use vigil_crds::DetectorParams;

use super::likelihood::Likelihood;
use super::{Factory, Score, Scorer, contributions};

const DEFAULT_TREES: usize = 20;
const DEFAULT_DEPTH: usize = 8;
const DEFAULT_WINDOW: usize = 256;

/// Shared tree shapes: for tree t and node n (heap order), the split.
struct Forest {
    trees: usize,
    depth: usize,
    nodes: usize,
    split_dim: Vec<u16>,
    split_at: Vec<f32>,
}

/// A small, seeded generator (splitmix64): reproducible across platforms.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Forest {
    fn new(trees: usize, depth: usize, dims: usize, seed: u64) -> Self {
        let nodes = (1usize << (depth + 1)) - 1;
        let mut rng = Rng(seed);
        let mut split_dim = vec![0u16; trees * nodes];
        let mut split_at = vec![0f32; trees * nodes];
        for t in 0..trees {
            // Each tree sees the unit cube through a random, enlarged workspace
            // so splits are not all at the same places.
            let mut lo = vec![0f64; dims];
            let mut hi = vec![0f64; dims];
            for d in 0..dims {
                let s = rng.unit();
                let r = 2.0 * s.max(1.0 - s);
                lo[d] = s - r;
                hi[d] = s + r;
            }
            Self::grow(&mut rng, t * nodes, 0, 0, depth, &mut lo, &mut hi, &mut split_dim, &mut split_at);
        }
        Forest { trees, depth, nodes, split_dim, split_at }
    }

    #[allow(clippy::too_many_arguments)]
    fn grow(
        rng: &mut Rng,
        base: usize,
        node: usize,
        level: usize,
        depth: usize,
        lo: &mut [f64],
        hi: &mut [f64],
        dims_out: &mut [u16],
        at_out: &mut [f32],
    ) {
        if level == depth {
            return;
        }
        let d = (rng.next() % lo.len() as u64) as usize;
        let mid = (lo[d] + hi[d]) / 2.0;
        dims_out[base + node] = d as u16;
        at_out[base + node] = mid as f32;
        let saved = hi[d];
        hi[d] = mid;
        Self::grow(rng, base, 2 * node + 1, level + 1, depth, lo, hi, dims_out, at_out);
        hi[d] = saved;
        let saved = lo[d];
        lo[d] = mid;
        Self::grow(rng, base, 2 * node + 2, level + 1, depth, lo, hi, dims_out, at_out);
        lo[d] = saved;
    }
}

/// Creates half-space-tree scorers that share one forest.
pub struct HstFactory {
    forest: Arc<Forest>,
    dims: usize,
    window: usize,
    warmup: usize,
}

impl HstFactory {
    /// From the spec's parameters.
    pub fn new(dims: usize, p: &DetectorParams) -> Self {
        let trees = p.trees.map_or(DEFAULT_TREES, |t| t.max(1) as usize);
        let depth = p.depth.map_or(DEFAULT_DEPTH, |d| d.clamp(1, 15) as usize);
        let window = p.window.map_or(DEFAULT_WINDOW, |w| (w as usize).clamp(16, u16::MAX as usize));
        let seed = p.seed.map_or(0x5eed, |s| s as u64);
        HstFactory {
            forest: Arc::new(Forest::new(trees, depth, dims.max(1), seed)),
            dims: dims.max(1),
            window,
            warmup: p.warmup.map_or(window, |w| w as usize),
        }
    }
}

impl Factory for HstFactory {
    fn name(&self) -> &'static str {
        "halfSpaceTrees"
    }
    fn scorer(&self) -> Box<dyn Scorer> {
        let n = self.forest.trees * self.forest.nodes;
        Box::new(Hst {
            forest: self.forest.clone(),
            window: self.window,
            warmup: self.warmup,
            reference: vec![0; n],
            latest: vec![0; n],
            filled: 0,
            seen: 0,
            min: vec![f64::INFINITY; self.dims],
            max: vec![f64::NEG_INFINITY; self.dims],
            stats: vec![(0.0, 0.0, 0.0); self.dims],
            unit: vec![0.0; self.dims],
            likelihood: Likelihood::with_short(1),
        })
    }
    fn default_threshold(&self) -> f64 {
        super::likelihood::DEFAULT_THRESHOLD
    }
    fn bytes_per_key(&self) -> usize {
        self.forest.trees * self.forest.nodes * 4 + self.dims * 56 + Likelihood::BYTES
    }
}

struct Hst {
    forest: Arc<Forest>,
    window: usize,
    warmup: usize,
    reference: Vec<u16>,
    latest: Vec<u16>,
    filled: usize,
    seen: usize,
    min: Vec<f64>,
    max: Vec<f64>,
    /// Welford (n, mean, m2) per feature, for explanations.
    stats: Vec<(f64, f64, f64)>,
    unit: Vec<f64>,
    likelihood: Likelihood,
}

impl Scorer for Hst {
    fn score(&mut self, x: &[f64]) -> Score {
        let f = &*self.forest;
        // Normalise with the range seen before this record, so an outlier
        // does not stretch the range to swallow itself; values outside it land
        // in the trees' empty outer regions.
        for (d, &v) in x.iter().enumerate() {
            let span = self.max[d] - self.min[d];
            self.unit[d] = if span > 0.0 && span.is_finite() { (v - self.min[d]) / span } else { 0.5 };
            self.min[d] = self.min[d].min(v);
            self.max[d] = self.max[d].max(v);
        }
        let mut raw = 0.0;
        let size_limit = (self.window / 10).max(1) as u16;
        for t in 0..f.trees {
            let base = t * f.nodes;
            let mut node = 0;
            for level in 0..=f.depth {
                let i = base + node;
                let r = self.reference[i];
                self.latest[i] = self.latest[i].saturating_add(1);
                if level == f.depth || r < size_limit {
                    raw += r as f64 * (1u64 << level) as f64;
                    // Keep updating the rest of the path's latest masses.
                    let mut n2 = node;
                    for _ in level..f.depth {
                        let go_left =
                            (self.unit[f.split_dim[base + n2] as usize] as f32) < f.split_at[base + n2];
                        n2 = if go_left { 2 * n2 + 1 } else { 2 * n2 + 2 };
                        self.latest[base + n2] = self.latest[base + n2].saturating_add(1);
                    }
                    break;
                }
                let go_left = (self.unit[f.split_dim[i] as usize] as f32) < f.split_at[i];
                node = if go_left { 2 * node + 1 } else { 2 * node + 2 };
            }
        }
        self.filled += 1;
        self.seen += 1;
        if self.filled >= self.window {
            std::mem::swap(&mut self.reference, &mut self.latest);
            self.latest.iter_mut().for_each(|m| *m = 0);
            self.filled = 0;
        }
        // Mass is high where normal records live. Its logarithm spreads the
        // low end, where anomalies are, instead of squashing it near 1.
        let max_raw = (f.trees * self.window) as f64 * (1u64 << f.depth) as f64;
        let unusual = (max_raw / (raw + 1.0)).ln();

        let mut z = vec![0.0; x.len()];
        let mut expected = vec![None; x.len()];
        for (d, &v) in x.iter().enumerate() {
            let (n, mean, m2) = &mut self.stats[d];
            if *n >= 2.0 {
                let sd = (*m2 / *n).sqrt();
                z[d] = if sd > 0.0 { (v - *mean) / sd } else { 0.0 };
                expected[d] = Some(*mean);
            }
            *n += 1.0;
            let delta = v - *mean;
            *mean += delta / *n;
            *m2 += delta * (v - *mean);
        }
        // Before the first window completes there is no reference mass: every
        // record would look maximally unusual, so the history starts after it.
        let value = if self.seen <= self.window {
            0.0
        } else {
            let s = self.likelihood.observe(unusual);
            if self.seen <= self.warmup { 0.0 } else { s }
        };
        Score { value, explanation: contributions(&z, &expected) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: &str) -> DetectorParams {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn an_outlier_scores_far_above_normal_points_and_is_explained() {
        let factory = HstFactory::new(2, &params(r#"{"window": 64, "seed": 1}"#));
        let mut s = factory.scorer();
        let mut rng = Rng(7);
        let mut normal_max: f64 = 0.0;
        for i in 0..2000 {
            let x = [10.0 + rng.unit(), 5.0 + rng.unit()];
            let sc = s.score(&x);
            if i > 1000 {
                normal_max = normal_max.max(sc.value);
            }
        }
        let out = s.score(&[10.5, 25.0]);
        assert!(out.value > 0.9, "outlier scored {}", out.value);
        assert!(out.value > normal_max, "outlier {} vs normal max {normal_max}", out.value);
        assert_eq!(out.explanation[0].feature, 1, "the second feature is the unusual one");
    }

    #[test]
    fn same_seed_same_scores() {
        let run = || {
            let mut s = HstFactory::new(3, &params(r#"{"window": 32, "seed": 3}"#)).scorer();
            (0..500).map(|i| s.score(&[i as f64 % 7.0, (i * 3) as f64 % 11.0, 1.0]).value).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}
