//! `seasonal`: one feature with a repeating pattern of `period` records (a
//! daily cycle, a weekly one). Additive Holt-Winters smoothing learns a level
//! and a profile value for each phase of the season; the residual from
//! `level + profile[phase]`, in units of its running mean absolute size, is
//! the raw unusualness, scored through `likelihood.rs`. Scores are 0 for the
//! first two seasons.

use vigil_crds::DetectorParams;

use super::likelihood::{DEFAULT_THRESHOLD, Likelihood};
use super::{Contribution, Factory, Score, Scorer};

const LEVEL_RATE: f64 = 0.05;
const SEASON_RATE: f64 = 0.2;
const SCALE_RATE: f64 = 0.01;

/// Creates seasonal scorers.
pub struct SeasonalFactory {
    period: usize,
    warmup: usize,
}

impl SeasonalFactory {
    /// From the spec's parameters (`period` is required by admission).
    pub fn new(p: &DetectorParams) -> Self {
        let period = p.period.map_or(24, |x| x.max(2) as usize);
        SeasonalFactory { period, warmup: p.warmup.map_or(2 * period, |w| w as usize) }
    }
}

impl Factory for SeasonalFactory {
    fn name(&self) -> &'static str {
        "seasonal"
    }
    fn scorer(&self) -> Box<dyn Scorer> {
        Box::new(Seasonal {
            profile: vec![0.0; self.period],
            level: 0.0,
            scale: 0.0,
            seen: 0,
            warmup: self.warmup,
            likelihood: Likelihood::new(),
        })
    }
    fn default_threshold(&self) -> f64 {
        DEFAULT_THRESHOLD
    }
    fn bytes_per_key(&self) -> usize {
        self.period * 4 + 64 + Likelihood::BYTES
    }
}

struct Seasonal {
    profile: Vec<f32>,
    level: f64,
    scale: f64,
    seen: usize,
    warmup: usize,
    likelihood: Likelihood,
}

impl Scorer for Seasonal {
    fn score(&mut self, x: &[f64]) -> Score {
        let v = x[0];
        let period = self.profile.len();
        let phase = self.seen % period;
        let seasonal = self.profile[phase] as f64;
        if self.seen == 0 {
            self.level = v;
        }
        let expected = self.level + seasonal;
        let residual = v - expected;
        let raw = if self.scale > 0.0 { (residual.abs() / self.scale).min(1e6) } else { 0.0 };

        // Learn: the first season sets the profile directly, later ones smooth it.
        if self.seen < period {
            self.profile[phase] = (v - self.level) as f32;
        } else {
            self.level += LEVEL_RATE * (v - seasonal - self.level);
            self.profile[phase] = (seasonal + SEASON_RATE * (v - self.level - seasonal)) as f32;
            self.scale += SCALE_RATE * (residual.abs() - self.scale);
        }
        if self.seen == period {
            self.scale = residual.abs().max(1e-9);
        }
        self.seen += 1;
        let s = self.likelihood.observe(raw.ln_1p());
        let value = if self.seen <= self.warmup { 0.0 } else { s };
        Score {
            value,
            explanation: smallvec::smallvec![Contribution {
                feature: 0,
                weight: 1.0,
                expected: Some(expected)
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_out_of_phase_is_anomalous_where_the_same_value_in_phase_is_not() {
        let p: DetectorParams = serde_json::from_str(r#"{"period": 24}"#).unwrap();
        let mut s = SeasonalFactory::new(&p).scorer();
        let wave = |i: usize| 100.0 + 50.0 * ((i % 24) as f64 / 24.0 * std::f64::consts::TAU).sin();
        let mut max_normal: f64 = 0.0;
        for i in 0..24 * 40 {
            let noise = ((i * 7919) % 17) as f64 / 17.0 - 0.5;
            let sc = s.score(&[wave(i) + noise]);
            if i > 24 * 10 {
                max_normal = max_normal.max(sc.value);
            }
        }
        // Phase 0 of the next season expects ~100; the peak value (150) is
        // normal at phase 6 but not here.
        let out = s.score(&[150.0]);
        assert!(out.value > 0.5 && out.value > max_normal, "scored {} (normal max {max_normal})", out.value);
        assert!((out.explanation[0].expected.unwrap() - 100.0).abs() < 5.0, "{:?}", out.explanation);
    }
}
