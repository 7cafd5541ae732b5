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

/// Nodes per block: a block is a subtree of up to four levels (15 nodes)
/// whose masses fill one 64-byte cache line, so a record's path through a
/// tree of depth 8 touches three lines of a key's state instead of one per
/// level in each of two arrays (heap order put every level below the fourth
/// on its own line).
const BLOCK: usize = 16;
const BLOCK_LEVELS: usize = 4;

/// One block of a key's masses: for each node, the mass of the last full
/// window and of the current one (which is which flips every window).
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([[u16; 2]; BLOCK]);

/// Where one tree's walk is: block, index in the block, level in the block,
/// and whether the reference mass was read yet.
#[derive(Clone, Copy)]
struct Cursor {
    block: u32,
    local: u8,
    within: u8,
    scored: bool,
}

/// A block's place in its tree.
#[derive(Clone, Copy)]
struct BlockShape {
    /// Levels in this block (the top block may have fewer than four).
    levels: u8,
    /// Index of the block under the leftmost node of this block's last level;
    /// node q of that level (left to right) has its children in blocks
    /// `first_child + 2q` and `+ 2q + 1`.
    first_child: u32,
}

/// Shared tree shapes, blocked: for tree t, its blocks are
/// `t * blocks .. (t + 1) * blocks`, and a node's split lives at
/// `block * BLOCK + local`, local being its heap index within the block.
struct Forest {
    trees: usize,
    depth: usize,
    blocks: usize,
    shape: Vec<BlockShape>,
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

/// Where heap node `h` (root 0, children 2h+1 and 2h+2) of one tree lives:
/// (block within the tree, index within the block). The top row of blocks
/// takes the levels that do not divide into fours, so the rows below are
/// full.
fn place(h: usize, depth: usize) -> (usize, usize) {
    let level = (usize::BITS - 1 - (h + 1).leading_zeros()) as usize;
    let pos = h + 1 - (1 << level);
    let top_rows = (depth + 1) % BLOCK_LEVELS;
    let top_rows = if top_rows == 0 { BLOCK_LEVELS } else { top_rows };
    // The first level of this node's block row, and blocks in earlier rows.
    let (row_top, before) = if level < top_rows {
        (0, 0)
    } else {
        let row = (level - top_rows) / BLOCK_LEVELS;
        let row_top = top_rows + row * BLOCK_LEVELS;
        // Row r (below the top) has 2^row_top blocks; the top row has one.
        let before = 1 + (0..row).map(|r| 1usize << (top_rows + r * BLOCK_LEVELS)).sum::<usize>();
        (row_top, before)
    };
    let within = level - row_top;
    let block = before + (pos >> within);
    let local = (1 << within) - 1 + (pos & ((1 << within) - 1));
    (block, local)
}

impl Forest {
    fn new(trees: usize, depth: usize, dims: usize, seed: u64) -> Self {
        let nodes = (1usize << (depth + 1)) - 1;
        let (heap_dim, heap_at) = Self::heap_order(trees, depth, dims, seed);
        let blocks = place(nodes - 1, depth).0 + 1;
        let mut shape = Vec::with_capacity(trees * blocks);
        let mut split_dim = vec![0u16; trees * blocks * BLOCK];
        let mut split_at = vec![0f32; trees * blocks * BLOCK];
        for t in 0..trees {
            let mut tree_shape = vec![BlockShape { levels: 0, first_child: 0 }; blocks];
            for h in 0..nodes {
                let (b, local) = place(h, depth);
                let i = (t * blocks + b) * BLOCK + local;
                split_dim[i] = heap_dim[t * nodes + h];
                split_at[i] = heap_at[t * nodes + h];
                let within = (usize::BITS - 1 - (local + 1).leading_zeros()) as u8;
                let s = &mut tree_shape[b];
                s.levels = s.levels.max(within + 1);
                // The leftmost node of a block's row has the block's first
                // child block under its left child.
                if local == (1 << within) - 1 && 2 * h + 1 < nodes {
                    let (child_block, child_local) = place(2 * h + 1, depth);
                    if child_local == 0 {
                        s.first_child = (t * blocks + child_block) as u32;
                    }
                }
            }
            shape.extend(tree_shape);
        }
        Forest { trees, depth, blocks, shape, split_dim, split_at }
    }

    /// The splits of every tree in heap order (node n's children at 2n+1
    /// and 2n+2), grown as before the blocked layout so the same seed gives
    /// the same trees.
    fn heap_order(trees: usize, depth: usize, dims: usize, seed: u64) -> (Vec<u16>, Vec<f32>) {
        let nodes = (1usize << (depth + 1)) - 1;
        let mut rng = Rng(seed);
        let mut heap_dim = vec![0u16; trees * nodes];
        let mut heap_at = vec![0f32; trees * nodes];
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
            Self::grow(&mut rng, t * nodes, 0, 0, depth, &mut lo, &mut hi, &mut heap_dim, &mut heap_at);
        }
        (heap_dim, heap_at)
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
        Box::new(Hst {
            masses: vec![Line::default(); self.forest.trees * self.forest.blocks],
            current: 1,
            forest: self.forest.clone(),
            window: self.window,
            warmup: self.warmup,
            filled: 0,
            seen: 0,
            min: vec![f64::INFINITY; self.dims],
            max: vec![f64::NEG_INFINITY; self.dims],
            stats: vec![(0.0, 0.0, 0.0); self.dims],
            unit: vec![0.0; self.dims],
            cursors: Vec::with_capacity(self.forest.trees),
            z: vec![0.0; self.dims],
            expected: vec![None; self.dims],
            likelihood: Likelihood::with_short(1),
        })
    }
    fn default_threshold(&self) -> f64 {
        super::likelihood::DEFAULT_THRESHOLD
    }
    fn bytes_per_key(&self) -> usize {
        self.forest.trees * self.forest.blocks * std::mem::size_of::<Line>()
            + self.dims * 56
            + Likelihood::BYTES
    }
}

struct Hst {
    forest: Arc<Forest>,
    /// Per tree and block, the reference and current window's masses.
    masses: Vec<Line>,
    /// Which of a node's two masses counts the current window (the other is
    /// the reference).
    current: usize,
    window: usize,
    warmup: usize,
    filled: usize,
    seen: usize,
    min: Vec<f64>,
    max: Vec<f64>,
    /// Welford (n, mean, m2) per feature, for explanations.
    stats: Vec<(f64, f64, f64)>,
    unit: Vec<f64>,
    /// Scratch for the walk (one cursor per tree).
    cursors: Vec<Cursor>,
    /// Scratch for the explanation: each feature's z-score and mean.
    z: Vec<f64>,
    expected: Vec<Option<f64>>,
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
        let (cur, refr) = (self.current, 1 - self.current);
        // All trees go down one level at a time: each tree's path is a chain
        // of dependent loads (mostly cache misses on a key's state), and
        // stepping the trees side by side lets the processor wait for many
        // of them at once instead of one after another.
        let cursors = &mut self.cursors;
        cursors.clear();
        cursors.extend((0..f.trees).map(|t| Cursor {
            block: (t * f.blocks) as u32,
            local: 0,
            within: 0,
            scored: false,
        }));
        for level in 0..=f.depth {
            let last = level == f.depth;
            for c in cursors.iter_mut() {
                let block = c.block as usize;
                let local = c.local as usize;
                let m = &mut self.masses[block].0[local];
                m[cur] = m[cur].saturating_add(1);
                // The reference mass is read down the path until it is too
                // small to trust (or at the leaf); the current window's mass
                // is counted all the way down.
                if !c.scored && (last || m[refr] < size_limit) {
                    raw += m[refr] as f64 * (1u64 << level) as f64;
                    c.scored = true;
                }
                if last {
                    continue;
                }
                let i = block * BLOCK + local;
                let right = (self.unit[f.split_dim[i] as usize] as f32) >= f.split_at[i];
                let shape = f.shape[block];
                if (c.within + 1) < shape.levels {
                    c.local = 2 * c.local + 1 + right as u8;
                    c.within += 1;
                } else {
                    let q = local + 1 - (1 << c.within);
                    c.block = shape.first_child + (2 * q) as u32 + right as u32;
                    c.local = 0;
                    c.within = 0;
                }
            }
        }
        self.filled += 1;
        self.seen += 1;
        if self.filled >= self.window {
            // The current window becomes the reference; the old reference's
            // slots start the new window at zero.
            self.current = refr;
            for line in &mut self.masses {
                for m in &mut line.0 {
                    m[refr] = 0;
                }
            }
            self.filled = 0;
        }
        // Mass is high where normal records live. Its logarithm spreads the
        // low end, where anomalies are, instead of squashing it near 1.
        let max_raw = (f.trees * self.window) as f64 * (1u64 << f.depth) as f64;
        let unusual = (max_raw / (raw + 1.0)).ln();

        let (z, expected) = (&mut self.z, &mut self.expected);
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
        Score { value, explanation: contributions(z, expected) }
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

    /// The blocked layout is a re-arrangement: every path visits the splits
    /// heap order gives, at every depth the spec allows.
    #[test]
    fn blocked_paths_visit_the_heap_order_splits() {
        for depth in 1..=11 {
            let (trees, dims) = (3, 3);
            let f = Forest::new(trees, depth, dims, 42);
            let nodes = (1usize << (depth + 1)) - 1;
            let (heap_dim, heap_at) = Forest::heap_order(trees, depth, dims, 42);
            let mut seen = std::collections::HashSet::new();
            let mut points = Rng(9);
            for _ in 0..500 {
                let x: Vec<f64> = (0..dims).map(|_| points.unit() * 1.4 - 0.2).collect();
                for t in 0..trees {
                    let (mut h, mut block, mut local, mut within) = (0usize, t * f.blocks, 0usize, 0usize);
                    for _ in 0..depth {
                        let i = block * BLOCK + local;
                        seen.insert(i);
                        assert_eq!(f.split_dim[i], heap_dim[t * nodes + h], "depth {depth}");
                        assert_eq!(f.split_at[i], heap_at[t * nodes + h], "depth {depth}");
                        let right = (x[f.split_dim[i] as usize] as f32) >= f.split_at[i];
                        h = 2 * h + 1 + right as usize;
                        if within + 1 < f.shape[block].levels as usize {
                            local = 2 * local + 1 + right as usize;
                            within += 1;
                        } else {
                            block = f.shape[block].first_child as usize
                                + 2 * (local + 1 - (1 << within))
                                + right as usize;
                            local = 0;
                            within = 0;
                        }
                    }
                    assert_eq!(place(h, depth), (block - t * f.blocks, local), "leaf of depth {depth}");
                }
            }
            // Paths reach every internal node slot, and no two nodes share one.
            let slots: std::collections::HashSet<_> = (0..nodes).map(|h| place(h, depth)).collect();
            assert_eq!(slots.len(), nodes, "depth {depth}: slots collide");
            assert!(seen.len() > (nodes / 2).min(300), "depth {depth}: few paths visited");
        }
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
