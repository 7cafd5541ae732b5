//! Isolation forest, as defined by Liu, Ting and Zhou, "Isolation Forest"
//! (ICDM 2008), written here: linfa has none, and the crates that do are
//! unmaintained or drag in another linear-algebra stack.
//!
//! Each tree is grown on a random subsample of `sample_size` records
//! (without replacement) by splitting on a random feature at a uniformly
//! random value between its minimum and maximum in the node, until a node
//! holds one record, all its records are equal, or the height limit
//! ceil(log2 sample_size) is reached. The score of x is
//! s(x) = 2^(-E[h(x)] / c(sample_size)), where h(x) is the path length to
//! x's leaf plus c(leaf size) for the records the leaf did not isolate, and
//! c(n) = 2 H(n-1) - 2 (n-1) / n is the average path length of an
//! unsuccessful search in a binary search tree (H the harmonic number).

use serde::{Deserialize, Serialize};

const LEAF: u16 = u16::MAX;
const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

/// One node, 16 bytes (a forest of 100 trees fits in a core's cache); a
/// leaf when `feature == u16::MAX`. The left child is always the next node.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The split feature, or `u16::MAX` for a leaf.
    pub feature: u16,
    /// Split value (x < value goes left); for a leaf, c(size).
    pub value: f32,
    /// Index of the right child.
    pub right: u32,
    /// ln(parent's size / this node's size): what the split that leads here
    /// adds to its feature's part in isolating a point (0 at the root).
    pub isolation: f32,
}

/// A fitted forest, each tree laid out as a complete binary tree of the
/// height limit (heap order: the children of node i are 2i+1 and 2i+2).
/// A leaf above the bottom becomes a chain of pass-through nodes (split at the
/// largest f32: always left) down to a bottom slot holding its path length.
/// Scoring is then the same number of branch-free steps for every tree,
/// which the core overlaps across trees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Forest {
    /// Records per tree.
    pub sample_size: usize,
    /// The height limit: steps from the root to a bottom slot.
    pub depth: usize,
    /// The trees.
    pub trees: Vec<HeapTree>,
}

/// One tree in heap order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeapTree {
    /// Split feature of each inner node (2^depth - 1 of them).
    pub feature: Vec<u16>,
    /// Split value of each inner node (x < value goes left).
    pub value: Vec<f32>,
    /// For every node but the root: ln(parent's size / this node's size),
    /// its feature's part in isolating a point that goes there; 0 for
    /// pass-through nodes. Indexed by node - 1.
    pub isolation: Vec<f32>,
    /// Path length (depth of the real leaf + c(leaf size)) of each bottom
    /// slot (2^depth of them).
    pub leaf: Vec<f32>,
}

impl HeapTree {
    /// From the grown tree (`nodes`, left child next, right by index).
    fn from_nodes(nodes: &[Node], depth: usize) -> HeapTree {
        let inner = (1usize << depth) - 1;
        let mut t = HeapTree {
            feature: vec![0; inner],
            value: vec![f32::MAX; inner],
            isolation: vec![0.0; 2 * inner + 1],
            leaf: vec![0.0; inner + 1],
        };
        // (node in `nodes`, heap position, depth)
        let mut stack = vec![(0usize, 0usize, 0usize)];
        while let Some((n, pos, d)) = stack.pop() {
            let node = nodes[n];
            if pos > 0 {
                t.isolation[pos - 1] = node.isolation;
            }
            if node.feature == LEAF {
                // Down the left edge to the bottom.
                let mut p = pos;
                for _ in d..depth {
                    p = 2 * p + 1;
                }
                t.leaf[p - inner] = d as f32 + node.value;
                continue;
            }
            t.feature[pos] = node.feature;
            t.value[pos] = node.value;
            stack.push((n + 1, 2 * pos + 1, d + 1));
            stack.push((node.right as usize, 2 * pos + 2, d + 1));
        }
        t
    }
}

/// c(n): the average path length of an unsuccessful BST search among n.
pub fn c(n: usize) -> f64 {
    match n {
        0 | 1 => 0.0,
        2 => 1.0,
        _ => {
            let n = n as f64;
            2.0 * ((n - 1.0).ln() + EULER_GAMMA) - 2.0 * (n - 1.0) / n
        }
    }
}

/// splitmix64: small, seedable, good enough for sampling and splits.
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

impl Forest {
    /// Grow `trees` trees on `data` (rows of equal width).
    pub fn fit(data: &[Vec<f64>], trees: usize, sample_size: usize, seed: u64) -> Forest {
        let mut rng = Rng::new(seed);
        let psi = sample_size.min(data.len()).max(2);
        let limit = (psi as f64).log2().ceil() as usize;
        let width = data.first().map_or(0, Vec::len);
        let mut forest = Vec::with_capacity(trees);
        let limit = limit.max(1);
        let mut idx: Vec<usize> = (0..data.len()).collect();
        for _ in 0..trees {
            // Partial Fisher-Yates: a sample without replacement.
            for i in 0..psi.min(idx.len()) {
                let j = i + rng.below(idx.len() - i);
                idx.swap(i, j);
            }
            let mut sample: Vec<usize> = idx[..psi.min(idx.len())].to_vec();
            let mut nodes = Vec::new();
            grow(data, &mut sample, 0, limit, width, &mut rng, &mut nodes);
            forest.push(HeapTree::from_nodes(&nodes, limit));
        }
        Forest { sample_size: psi, depth: limit, trees: forest }
    }

    /// s(x) in (0, 1]; `parts` gets each feature's part in isolating x: a
    /// split that sends x from n training records to m adds ln(n / m) to
    /// its feature (the parts of one tree sum to ln(sample / leaf size)).
    pub fn score(&self, x: &[f64], parts: &mut [f64]) -> f64 {
        let mut total = 0.0f64;
        let inner = (1usize << self.depth) - 1;
        // Four trees in step: independent walks the core overlaps.
        let mut groups = self.trees.chunks_exact(4);
        for g in &mut groups {
            let mut at = [0usize; 4];
            for _ in 0..self.depth {
                for (lane, t) in g.iter().enumerate() {
                    let i = at[lane];
                    let f = usize::from(t.feature[i]);
                    let next = 2 * i + 1 + usize::from(x[f] >= f64::from(t.value[i]));
                    parts[f] += f64::from(t.isolation[next - 1]);
                    at[lane] = next;
                }
            }
            for (lane, t) in g.iter().enumerate() {
                total += f64::from(t.leaf[at[lane] - inner]);
            }
        }
        for t in groups.remainder() {
            let mut i = 0usize;
            for _ in 0..self.depth {
                let f = usize::from(t.feature[i]);
                i = 2 * i + 1 + usize::from(x[f] >= f64::from(t.value[i]));
                parts[f] += f64::from(t.isolation[i - 1]);
            }
            total += f64::from(t.leaf[i - inner]);
        }
        let mean = total / self.trees.len().max(1) as f64;
        let cn = c(self.sample_size).max(f64::MIN_POSITIVE);
        2f64.powf(-mean / cn)
    }

    /// Every array of the right length, every feature below `width`.
    pub fn check(&self, width: usize) -> bool {
        let Some(inner) = 1usize.checked_shl(self.depth as u32).map(|n| n - 1) else { return false };
        self.depth >= 1
            && self.depth <= 16
            && width > 0
            && !self.trees.is_empty()
            && self.trees.iter().all(|t| {
                t.feature.len() == inner
                    && t.value.len() == inner
                    && t.isolation.len() == 2 * inner + 1
                    && t.leaf.len() == inner + 1
                    && t.feature.iter().all(|f| usize::from(*f) < width)
            })
    }
}

fn grow(
    data: &[Vec<f64>],
    rows: &mut [usize],
    depth: usize,
    limit: usize,
    width: usize,
    rng: &mut Rng,
    nodes: &mut Vec<Node>,
) -> u32 {
    let at = nodes.len() as u32;
    let leaf = |nodes: &mut Vec<Node>, n: usize| {
        nodes.push(Node { feature: LEAF, value: c(n) as f32, right: 0, isolation: 0.0 });
        at
    };
    if depth >= limit || rows.len() <= 1 || width == 0 || width >= usize::from(LEAF) {
        return leaf(nodes, rows.len());
    }
    // A random feature among those that vary in this node (as the paper's
    // implementation and scikit-learn's do: constant features are never
    // drawn, so data with many constant columns still isolates).
    let mut varying = Vec::with_capacity(width);
    for f in 0..width {
        let (lo, hi) = rows.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| {
            (lo.min(data[*r][f]), hi.max(data[*r][f]))
        });
        if hi > lo {
            varying.push((f, lo, hi));
        }
    }
    let choice = (!varying.is_empty()).then(|| varying[rng.below(varying.len())]);
    let Some((f, lo, hi)) = choice else {
        return leaf(nodes, rows.len());
    };
    // Stored as f32 (the node's size); rounded before partitioning so that
    // scoring sends a point where training sent it.
    let split = f64::from((lo + rng.unit() * (hi - lo)) as f32);
    let split = if split <= lo || split > hi { f64::from(((lo + hi) / 2.0) as f32) } else { split };
    if split <= lo || split > hi {
        return leaf(nodes, rows.len());
    }
    let mut k = 0;
    for i in 0..rows.len() {
        if data[rows[i]][f] < split {
            rows.swap(i, k);
            k += 1;
        }
    }
    nodes.push(Node { feature: f as u16, value: split as f32, right: 0, isolation: 0.0 });
    let n = rows.len().max(1) as f64;
    let (l, r) = rows.split_at_mut(k);
    let (nl, nr) = (l.len().max(1) as f64, r.len().max(1) as f64);
    let left = grow(data, l, depth + 1, limit, width, rng, nodes);
    let right = grow(data, r, depth + 1, limit, width, rng, nodes);
    debug_assert_eq!(left, at + 1);
    nodes[at as usize].right = right;
    nodes[left as usize].isolation = (n / nl).ln() as f32;
    nodes[right as usize].isolation = (n / nr).ln() as f32;
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_follows_the_published_definition() {
        // c(n) = 2 H(n-1) - 2(n-1)/n with H(i) = ln(i) + gamma.
        assert_eq!(c(1), 0.0);
        assert_eq!(c(2), 1.0);
        let n = 256.0f64;
        let expected = 2.0 * ((n - 1.0).ln() + EULER_GAMMA) - 2.0 * (n - 1.0) / n;
        assert!((c(256) - expected).abs() < 1e-12);
        assert!((c(256) - 10.244).abs() < 0.01, "{}", c(256));
    }

    #[test]
    fn an_isolated_point_scores_high_and_a_central_one_about_half_or_less() {
        let mut rng = Rng::new(1);
        let mut normal = || {
            let (u, v) = (rng.unit().max(1e-12), rng.unit());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        };
        let data: Vec<Vec<f64>> = (0..2000).map(|_| vec![normal(), normal()]).collect();
        let forest = Forest::fit(&data, 100, 256, 7);
        assert!(forest.check(2));
        assert!(!forest.check(0));
        let mut parts = [0.0; 2];
        let outlier = forest.score(&[6.0, 0.0], &mut parts);
        assert!(parts[0] > parts[1], "the x feature isolates the outlier: {parts:?}");
        let centre = forest.score(&[0.0, 0.0], &mut [0.0; 2]);
        // The paper: s above 0.5 for anomalies, below 0.5 for normal points.
        // (A point beyond the training range shares a leaf with the most
        // extreme training points, so its score is theirs.)
        assert!(outlier > 0.6, "outlier {outlier}");
        assert!(centre < 0.45, "centre {centre}");
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    /// Path length of `x` in a grown tree, walked node by node.
    fn path(nodes: &[Node], x: &[f64]) -> f64 {
        let (mut i, mut d) = (0usize, 0.0);
        loop {
            let n = nodes[i];
            if n.feature == LEAF {
                return d + f64::from(n.value);
            }
            i = if x[usize::from(n.feature)] < f64::from(n.value) { i + 1 } else { n.right as usize };
            d += 1.0;
        }
    }

    #[test]
    fn the_heap_layout_gives_the_grown_trees_path_lengths() {
        let mut rng = Rng::new(3);
        // Some constant columns and ties, as pixel data has.
        let data: Vec<Vec<f64>> = (0..600)
            .map(|_| vec![rng.below(4) as f64, 0.0, rng.unit(), (rng.below(17) as f64) / 16.0])
            .collect();
        let psi = 256;
        let limit = 8;
        for seed in 0..5 {
            let mut r = Rng::new(seed);
            let mut rows: Vec<usize> = (0..psi).collect();
            let mut nodes = Vec::new();
            grow(&data, &mut rows, 0, limit, 4, &mut r, &mut nodes);
            let heap = HeapTree::from_nodes(&nodes, limit);
            let forest = Forest { sample_size: psi, depth: limit, trees: vec![heap] };
            for x in data.iter().take(200) {
                let expected = path(&nodes, x);
                let s = forest.score(x, &mut [0.0; 4]);
                let got = -s.log2() * c(psi);
                assert!((got - expected).abs() < 1e-4, "seed {seed}: heap {got}, nodes {expected}");
            }
        }
    }
}
