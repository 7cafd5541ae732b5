//! `robustZ`: the default univariate detector, designed and tuned on the
//! NAB corpus (`vigil eval`). Five signals, each in [0, 1]:
//!
//! - **range novelty**: after a warm-up, a value beyond everything seen so
//!   far by more than `GROW` of the observed range scores 1;
//! - **pattern surprise**: values are quantised into `BINS` bins over the
//!   observed range, and an order-`ORDER` Markov model of the bin sequence
//!   (counts per context) says how unexpected the current bin is after the
//!   previous ones; when the range grows the bins are rebuilt from the last
//!   `REPLAY` values;
//! - **robust deviation**: the distance from the median of the last `window`
//!   values, over a high quantile of such distances in the recent past (a
//!   spike like one seen before is still a spike);
//! - **discords**, at two time scales: how far the latest stretch of the
//!   series (means of 4 values, 16 of them; means of 8 values, 24 of them)
//!   is from the nearest stretch in its recent past, against how far
//!   stretches usually are (a streaming left matrix profile, `profile.rs`).
//!   This finds changes of shape that no single value shows: a missing daily
//!   peak, a slower rhythm, a burst of a kind not seen before.
//!
//! The score is the largest signal, reported only when no score above
//! `REST_LEVEL` was reported in the previous `REST` records (growing with
//! the series, to 1/25 of the records seen, at most `REST_MAX`): an incident
//! is flagged once, at its start, instead of on every record of it. Memory
//! per key is bounded (see `bytes_per_key`).

use std::collections::{HashMap, VecDeque};

use vigil_crds::DetectorParams;

use super::profile::{LeftProfile, Shape};
use super::{Contribution, Factory, Score, Scorer};

/// Tunable constants (one set for every series; defaults tuned on NAB).
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Records before any score.
    pub warmup: usize,
    /// Range growth, as a fraction of the observed range, that counts as novel.
    pub grow: f64,
    /// Values replayed into a rebuilt pattern model.
    pub replay: usize,
    /// Quantisation bins.
    pub bins: u32,
    /// Markov order (previous bins in a context).
    pub order: usize,
    /// Pseudo-count of the pattern model.
    pub alpha: f64,
    /// Weight of the pattern surprise.
    pub pattern_weight: f64,
    /// Median window.
    pub window: usize,
    /// Quantile of past deviations that scales the current one.
    pub quantile: f64,
    /// Deviations kept for that quantile.
    pub deviations: usize,
    /// Weight of the robust deviation.
    pub deviation_weight: f64,
    /// The discord profiles.
    pub profiles: [Shape; 2],
    /// Weight of the discord scores.
    pub profile_weight: f64,
    /// Records a reported alarm silences, at least.
    pub rest: usize,
    /// The rest grows to this fraction of the records seen...
    pub rest_fraction: f64,
    /// ...up to this many records.
    pub rest_max: usize,
    /// Scores at or above this start a rest period.
    pub rest_level: f64,
    /// Most distinct contexts the pattern model keeps.
    pub max_contexts: usize,
    /// Decades of improbability that make a pattern score of 1: the score
    /// is `-log10(p) / decades`, so with 3.5 the default threshold 0.8
    /// means a bin seen after its predecessor about once in 600 times.
    pub decades: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            warmup: 100,
            grow: 0.005,
            replay: 2000,
            bins: 8,
            order: 1,
            alpha: 0.5,
            pattern_weight: 1.0,
            window: 256,
            quantile: 0.999,
            deviations: 2000,
            deviation_weight: 1.0,
            profiles: [
                Shape { block: 4, len: 16, history: 1000, quantile: 0.9, past: 2000, min_past: 100 },
                Shape { block: 8, len: 24, history: 480, quantile: 0.9, past: 2000, min_past: 100 },
            ],
            profile_weight: 1.0,
            rest: 200,
            rest_fraction: 0.04,
            rest_max: 1000,
            rest_level: DEFAULT_THRESHOLD,
            max_contexts: 20_000,
            decades: 3.5,
        }
    }
}

/// The threshold the defaults are tuned for (NAB standard profile: 72.1 at
/// this threshold, 72.2 at the corpus-tuned one; see runner/BENCHMARKS.md).
pub const DEFAULT_THRESHOLD: f64 = 0.8;

/// Creates robustZ scorers.
pub struct RobustZFactory {
    params: Params,
}

impl RobustZFactory {
    /// From the spec's parameters (`window`, `warmup`).
    pub fn new(p: &DetectorParams) -> Self {
        let mut params = Params::default();
        if let Some(w) = p.window {
            params.window = (w as usize).max(16);
        }
        if let Some(w) = p.warmup {
            params.warmup = (w as usize).max(2);
        }
        RobustZFactory { params }
    }
}

impl Factory for RobustZFactory {
    fn name(&self) -> &'static str {
        "robustZ"
    }
    fn scorer(&self) -> Box<dyn Scorer> {
        Box::new(RobustZ::new(self.params))
    }
    fn default_threshold(&self) -> f64 {
        DEFAULT_THRESHOLD
    }
    fn bytes_per_key(&self) -> usize {
        let p = &self.params;
        // Replay buffer, median window and deviation history (f32 each),
        // the pattern model's contexts (at most bins^order of them) and the
        // discord profiles.
        let contexts = (p.bins as usize).saturating_pow(p.order as u32).min(p.max_contexts);
        (p.replay + p.window + p.deviations) * 4
            + contexts * (48 + 4 * p.bins as usize)
            + p.profiles.iter().map(LeftProfile::bytes).sum::<usize>()
            + 512
    }
}

/// Counts of the bins that followed each context.
#[derive(Default)]
struct Pattern {
    counts: HashMap<u64, (u32, Vec<u32>), foldhash::fast::RandomState>,
    history: VecDeque<u32>,
}

struct RobustZ {
    p: Params,
    n: usize,
    lo: f64,
    hi: f64,
    replay: VecDeque<f32>,
    pattern: Option<Pattern>,
    /// Range the pattern model quantises over.
    model_lo: f64,
    model_hi: f64,
    window: VecDeque<f32>,
    median: f64,
    deviations: Calibrated,
    profiles: [LeftProfile; 2],
    since_alarm: usize,
}

impl RobustZ {
    fn new(p: Params) -> Self {
        RobustZ {
            p,
            n: 0,
            lo: f64::INFINITY,
            hi: f64::NEG_INFINITY,
            // Buffers grow as records arrive: a key seen a few times costs
            // little.
            replay: VecDeque::new(),
            pattern: None,
            model_lo: 0.0,
            model_hi: 0.0,
            window: VecDeque::new(),
            median: 0.0,
            deviations: Calibrated::new(p.deviations, p.quantile, 64),
            profiles: p.profiles.map(LeftProfile::new),
            since_alarm: usize::MAX,
        }
    }

    fn bin(&self, v: f64) -> u32 {
        let span = self.model_hi - self.model_lo;
        if span <= 0.0 {
            return 0;
        }
        (((v - self.model_lo) / span) * self.p.bins as f64).floor().clamp(0.0, (self.p.bins - 1) as f64)
            as u32
    }

    /// The pattern surprise of `v`, learning it.
    fn pattern_step(&mut self, v: f64) -> f64 {
        let b = self.bin(v);
        let (order, bins, alpha, cap, decades) =
            (self.p.order, self.p.bins, self.p.alpha, self.p.max_contexts, self.p.decades);
        let Some(pat) = self.pattern.as_mut() else { return 0.0 };
        let surprise = if pat.history.len() == order {
            let ctx = pat.history.iter().fold(0u64, |k, b| k * 64 + *b as u64 + 1);
            if !pat.counts.contains_key(&ctx) {
                if pat.counts.len() >= cap {
                    // At the cap a context never seen is as surprising as it gets.
                    pat.history.push_back(b);
                    pat.history.pop_front();
                    return 1.0;
                }
                pat.counts.insert(ctx, (0, vec![0; bins as usize]));
            }
            let Some((total, counts)) = pat.counts.get_mut(&ctx) else { return 0.0 };
            let prob = (counts[b as usize] as f64 + alpha) / (*total as f64 + alpha * bins as f64);
            counts[b as usize] += 1;
            *total += 1;
            (-prob.log10() / decades).min(1.0)
        } else {
            0.0
        };
        pat.history.push_back(b);
        if pat.history.len() > order {
            pat.history.pop_front();
        }
        surprise
    }

    /// Rebuild the pattern model over the current range from the replay buffer.
    fn rebuild(&mut self) {
        self.model_lo = self.lo;
        self.model_hi = self.hi;
        self.pattern = Some(Pattern::default());
        let replay: Vec<f32> = self.replay.iter().copied().collect();
        for v in replay {
            self.pattern_step(v as f64);
        }
    }

    fn deviation_step(&mut self, v: f64) -> f64 {
        let mut score = 0.0;
        if self.window.len() >= 16 {
            if self.n % 16 == 0 || self.window.len() < self.p.window {
                self.median = quantile(&self.window, 0.5);
            }
            let dev = (v - self.median).abs();
            score = self.deviations.score(dev, self.n, 128);
        }
        if self.window.len() == self.p.window {
            self.window.pop_front();
        }
        self.window.push_back(v as f32);
        score
    }
}

/// A non-negative measure scored against a high quantile of its own recent
/// past: 0 up to that quantile, rising to 1 at twice it.
pub(super) struct Calibrated {
    past: VecDeque<f32>,
    keep: usize,
    quantile: f64,
    min: usize,
    scale: f64,
}

impl Calibrated {
    /// Keeps the last `keep` values; scores once `min` are kept.
    pub(super) fn new(keep: usize, quantile: f64, min: usize) -> Self {
        Calibrated { past: VecDeque::new(), keep: keep.max(1), quantile, min, scale: 0.0 }
    }

    /// Score `x` and remember it; the quantile is refreshed when `tick` is
    /// a multiple of `every`.
    pub(super) fn score(&mut self, x: f64, tick: usize, every: usize) -> f64 {
        let mut score = 0.0;
        if self.past.len() >= self.min {
            if tick % every == 0 || self.scale == 0.0 {
                self.scale = quantile(&self.past, self.quantile);
            }
            score = if self.scale > 0.0 {
                (x / self.scale - 1.0).clamp(0.0, 1.0)
            } else if x > 0.0 {
                1.0
            } else {
                0.0
            };
        }
        if self.past.len() == self.keep {
            self.past.pop_front();
        }
        self.past.push_back(x as f32);
        score
    }
}

/// The `q` quantile of `xs`, with one scratch buffer per thread rather than
/// one per key.
///
/// The values are selected as integers that sort as `f32::total_cmp` does
/// (`order_key`): the same value is picked, with one integer comparison
/// each time instead of two conversions and a comparison. The selections of
/// `robustZ` and its discord signal were 7-8 % of a run.
pub(super) fn quantile(xs: &VecDeque<f32>, q: f64) -> f64 {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        let (a, b) = xs.as_slices();
        scratch.extend(a.iter().chain(b).map(|x| order_key(*x)));
        if scratch.is_empty() {
            return 0.0;
        }
        let k = ((scratch.len() - 1) as f64 * q) as usize;
        let (_, v, _) = scratch.select_nth_unstable(k);
        from_order_key(*v) as f64
    })
}

/// `x`'s bits, mapped so that unsigned order is `f32::total_cmp`'s order:
/// negatives (sign bit set) are inverted, so larger magnitudes come first;
/// positives get the sign bit, so they follow every negative.
#[inline]
fn order_key(x: f32) -> u32 {
    let bits = x.to_bits();
    if bits >> 31 == 1 { !bits } else { bits | 1 << 31 }
}

/// The inverse of [`order_key`].
#[inline]
fn from_order_key(k: u32) -> f32 {
    f32::from_bits(if k >> 31 == 1 { k & !(1 << 31) } else { !k })
}

impl Scorer for RobustZ {
    fn score(&mut self, x: &[f64]) -> Score {
        let v = x[0];
        self.n += 1;
        let range = self.hi - self.lo;
        let novel = self.pattern.is_some()
            && range.is_finite()
            && (v > self.hi + self.p.grow * range || v < self.lo - self.p.grow * range);
        self.lo = self.lo.min(v);
        self.hi = self.hi.max(v);
        if (self.pattern.is_none() && self.n >= self.p.warmup) || novel {
            self.rebuild();
        }
        let pattern = self.pattern_step(v) * self.p.pattern_weight;
        let deviation = self.deviation_step(v) * self.p.deviation_weight;
        let discord =
            self.profiles.iter_mut().map(|p| p.score(v)).fold(0.0, f64::max) * self.p.profile_weight;
        if self.replay.len() == self.p.replay {
            self.replay.pop_front();
        }
        self.replay.push_back(v as f32);

        let raw = if novel { 1.0 } else { pattern.max(deviation).max(discord).min(1.0) };
        let rest = ((self.n as f64 * self.p.rest_fraction) as usize)
            .clamp(self.p.rest, self.p.rest_max.max(self.p.rest));
        let resting = self.since_alarm < rest;
        let value = if self.n < self.p.warmup || (resting && !novel) { 0.0 } else { raw };
        if value >= self.p.rest_level {
            self.since_alarm = 0;
        } else {
            self.since_alarm = self.since_alarm.saturating_add(1);
        }
        Score {
            value,
            explanation: smallvec::smallvec![Contribution {
                feature: 0,
                weight: 1.0,
                expected: Some(self.median)
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_keys_sort_as_total_cmp_and_invert() {
        let mut xs = vec![
            0.0f32,
            -0.0,
            1.0,
            -1.0,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e-45,
            -1e-45,
            3.5,
            -3.5,
            0.1,
            -0.1,
        ];
        for x in &xs {
            assert_eq!(from_order_key(order_key(*x)).to_bits(), x.to_bits(), "{x}");
        }
        let mut by_key = xs.clone();
        by_key.sort_by_key(|x| order_key(*x));
        xs.sort_by(f32::total_cmp);
        assert_eq!(
            by_key.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            xs.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        let window: VecDeque<f32> = [5.0, -2.0, 9.0, 1.0, 7.0].into();
        assert_eq!(quantile(&window, 0.5), 5.0);
        assert_eq!(quantile(&window, 0.0), -2.0);
        assert_eq!(quantile(&window, 1.0), 9.0);
    }

    #[test]
    fn a_spike_in_noise_scores_high_and_says_what_was_expected() {
        let mut s = RobustZFactory::new(&DetectorParams::default()).scorer();
        let mut normal_max: f64 = 0.0;
        for i in 0..3000 {
            let noise = ((i * 7919) % 101) as f64 / 101.0;
            let sc = s.score(&[50.0 + noise]);
            if i > 1000 {
                normal_max = normal_max.max(sc.value);
            }
        }
        let out = s.score(&[80.0]);
        assert!(out.value >= DEFAULT_THRESHOLD, "spike scored {}", out.value);
        assert!(normal_max < DEFAULT_THRESHOLD, "noise reached {normal_max}");
        assert!((out.explanation[0].expected.unwrap() - 50.5).abs() < 1.0);
    }
}
