//! Turning raw "unusualness" into a score in [0, 1] that means the same for
//! every algorithm: how improbable the recent raw values are under the key's
//! own history (after Numenta's anomaly likelihood).
//!
//! The short moving average of raw values is compared with the mean and
//! spread of earlier averages; its upper-tail probability under a normal
//! approximation is log-scaled so that 0.5 means "1 in 10^5" and 1.0 means
//! "1 in 10^10".

use std::collections::VecDeque;

/// The threshold that suits scores produced through this module.
pub const DEFAULT_THRESHOLD: f64 = 0.5;

const HISTORY: usize = 2048;
/// Longest short-term average.
const SHORT: usize = 10;
const MIN_HISTORY: usize = 32;
const MIN_STD: f64 = 1e-3;

/// One key's history of raw values.
#[derive(Debug, Clone)]
pub struct Likelihood {
    history: VecDeque<f32>,
    sum: f64,
    sumsq: f64,
    short: [f64; SHORT],
    short_cap: usize,
    short_len: usize,
    short_pos: usize,
}

impl Default for Likelihood {
    fn default() -> Self {
        Self::new()
    }
}

impl Likelihood {
    /// Approximate bytes held per key.
    pub const BYTES: usize = HISTORY * 4 + SHORT * 8 + 64;

    /// An empty history, averaging the last 10 raw values (sustained
    /// changes; Numenta's setting).
    pub fn new() -> Self {
        Self::with_short(SHORT)
    }

    /// An empty history averaging the last `short` raw values (1 scores
    /// every point on its own).
    pub fn with_short(short: usize) -> Self {
        Likelihood {
            short_cap: short.clamp(1, SHORT),
            history: VecDeque::with_capacity(HISTORY),
            sum: 0.0,
            sumsq: 0.0,
            short: [0.0; SHORT],
            short_len: 0,
            short_pos: 0,
        }
    }

    /// Record a raw value; return the score of the recent values.
    pub fn observe(&mut self, raw: f64) -> f64 {
        self.short[self.short_pos] = raw;
        self.short_pos = (self.short_pos + 1) % self.short_cap;
        self.short_len = (self.short_len + 1).min(self.short_cap);
        let avg = self.short[..self.short_len].iter().sum::<f64>() / self.short_len as f64;

        let n = self.history.len();
        let score = if n >= MIN_HISTORY {
            let mean = self.sum / n as f64;
            let var = (self.sumsq / n as f64 - mean * mean).max(0.0);
            let std = var.sqrt().max(MIN_STD);
            let tail = upper_tail((avg - mean) / std);
            log_scale(tail)
        } else {
            0.0
        };

        if self.history.len() == HISTORY {
            if let Some(old) = self.history.pop_front() {
                self.sum -= old as f64;
                self.sumsq -= (old as f64) * (old as f64);
            }
        }
        self.history.push_back(avg as f32);
        let a = avg as f32 as f64;
        self.sum += a;
        self.sumsq += a * a;
        score
    }
}

/// `log(tail) / log(1e-10)`, clamped to [0, 1].
pub fn log_scale(tail: f64) -> f64 {
    (tail.max(1e-300).ln() / (1e-10f64).ln()).clamp(0.0, 1.0)
}

/// P(Z > z) for a standard normal Z.
pub fn upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function (Numerical Recipes' Chebyshev fit,
/// relative error below 1.2e-7 everywhere).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erfc_matches_known_values() {
        for (x, want) in [(0.0, 1.0), (1.0, 0.157_299_207), (2.0, 0.004_677_735), (-1.0, 1.842_700_793)] {
            assert!((erfc(x) - want).abs() < 1e-6, "erfc({x}) = {} not {want}", erfc(x));
        }
        assert!((upper_tail(1.959_964) - 0.025).abs() < 1e-6);
    }

    #[test]
    fn steady_input_scores_low_and_a_jump_scores_high() {
        let mut l = Likelihood::new();
        let mut last = 0.0;
        for i in 0..1000 {
            last = l.observe(0.1 + 0.01 * ((i * 7919) % 13) as f64 / 13.0);
        }
        assert!(last < 0.2, "steady: {last}");
        let jump = l.observe(0.9);
        assert!(jump > 0.5, "jump: {jump}");
    }
}
