//! `robustZ`: the default univariate detector. Robust z-scores (median and
//! MAD over a sliding history) of the value and of its change, scored
//! through `likelihood.rs`.

use std::collections::VecDeque;

use vigil_crds::DetectorParams;

use super::likelihood::{DEFAULT_THRESHOLD, Likelihood};
use super::{Contribution, Factory, Score, Scorer};

const DEFAULT_WINDOW: usize = 512;
const REFRESH: usize = 16;

/// Creates robustZ scorers.
pub struct RobustZFactory {
    window: usize,
    warmup: usize,
}

impl RobustZFactory {
    /// From the spec's parameters.
    pub fn new(p: &DetectorParams) -> Self {
        let window = p.window.map_or(DEFAULT_WINDOW, |w| w.max(16) as usize);
        RobustZFactory { window, warmup: p.warmup.map_or(64, |w| w as usize) }
    }
}

impl Factory for RobustZFactory {
    fn name(&self) -> &'static str {
        "robustZ"
    }
    fn scorer(&self) -> Box<dyn Scorer> {
        Box::new(RobustZ {
            values: VecDeque::with_capacity(self.window),
            diffs: VecDeque::with_capacity(self.window),
            window: self.window,
            warmup: self.warmup,
            seen: 0,
            stats: [(0.0, 0.0); 2],
            scratch: Vec::with_capacity(self.window),
            likelihood: Likelihood::new(),
        })
    }
    fn default_threshold(&self) -> f64 {
        DEFAULT_THRESHOLD
    }
    fn bytes_per_key(&self) -> usize {
        self.window * 8 * 3 + 96 + Likelihood::BYTES
    }
}

struct RobustZ {
    values: VecDeque<f64>,
    diffs: VecDeque<f64>,
    window: usize,
    warmup: usize,
    seen: usize,
    /// (median, scale) of values and of differences.
    stats: [(f64, f64); 2],
    scratch: Vec<f64>,
    likelihood: Likelihood,
}

/// Median and 1.4826 * MAD of `xs`, using `scratch`.
fn median_mad(xs: &VecDeque<f64>, scratch: &mut Vec<f64>) -> (f64, f64) {
    scratch.clear();
    scratch.extend(xs.iter().copied());
    let n = scratch.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let mid = n / 2;
    let (_, m, _) = scratch.select_nth_unstable_by(mid, f64::total_cmp);
    let median = *m;
    scratch.iter_mut().for_each(|x| *x = (*x - median).abs());
    let (_, d, _) = scratch.select_nth_unstable_by(mid, f64::total_cmp);
    (median, 1.4826 * *d)
}

impl Scorer for RobustZ {
    fn score(&mut self, x: &[f64]) -> Score {
        let v = x[0];
        let diff = self.values.back().map_or(0.0, |last| v - last);
        if self.seen % REFRESH == 0 || self.seen < self.window {
            self.stats[0] = median_mad(&self.values, &mut self.scratch);
            self.stats[1] = median_mad(&self.diffs, &mut self.scratch);
        }
        let z = |x: f64, (med, scale): (f64, f64)| {
            if scale > 0.0 {
                (x - med).abs() / scale
            } else if x == med {
                0.0
            } else {
                10.0
            }
        };
        let (zv, zd) = (z(v, self.stats[0]), z(diff, self.stats[1]));
        let raw = zv.max(zd).min(1e6).ln_1p();
        let expected = if zv >= zd {
            self.stats[0].0
        } else {
            self.values.back().copied().unwrap_or(v) + self.stats[1].0
        };

        if self.values.len() == self.window {
            self.values.pop_front();
            self.diffs.pop_front();
        }
        self.values.push_back(v);
        self.diffs.push_back(diff);
        self.seen += 1;
        let s = self.likelihood.observe(raw);
        let value = if self.seen <= self.warmup { 0.0 } else { s };
        Score { value, explanation: vec![Contribution { feature: 0, weight: 1.0, expected: Some(expected) }] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spike_in_noise_scores_high_and_says_what_was_expected() {
        let p = DetectorParams::default();
        let mut s = RobustZFactory::new(&p).scorer();
        let mut normal_max: f64 = 0.0;
        for i in 0..2000 {
            let noise = ((i * 7919) % 101) as f64 / 101.0;
            let sc = s.score(&[50.0 + noise]);
            if i > 500 {
                normal_max = normal_max.max(sc.value);
            }
        }
        let out = s.score(&[80.0]);
        assert!(out.value >= DEFAULT_THRESHOLD, "spike scored {}", out.value);
        assert!(normal_max < DEFAULT_THRESHOLD, "noise reached {normal_max}");
        assert!((out.explanation[0].expected.unwrap() - 50.5).abs() < 1.0);
    }
}
