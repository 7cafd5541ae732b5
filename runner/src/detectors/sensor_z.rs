//! `sensorZ`: the multivariate detector for sensor channels, designed on
//! Vigil's labelled multivariate benchmark (`vigil eval --generate`).
//!
//! Per key and per channel:
//!
//! - **relation residual**: each channel is predicted from the others, now
//!   and smoothed over the last `SMOOTH` records (so a lagged response, a
//!   temperature following a load, is predicted too), by a streaming linear
//!   regression (recursive least squares with forgetting, on inputs
//!   standardised by running means and deviations). Channels that move
//!   together with a daily cycle or a load predict each other, so the cycle
//!   is not an anomaly; a channel that leaves its relation to the others (a
//!   spike, a level shift, a drift, a broken correlation) leaves a residual.
//!   With one channel the prediction is its running mean.
//! - **residual step**: the change of the residual since the previous
//!   record, against its usual size: one channel jumping, or a burst of
//!   noise, shows at once, while a step all channels take together (a load
//!   change, a schedule) does not.
//! - **robust scales**: both are divided by running means of their absolute
//!   values (clipped, so faults barely move them), giving z's.
//! - **flatline**: a channel repeating one value for `STUCK` records, where
//!   it normally changes every record, scores 1.
//!
//! Learning is down-weighted for records that look anomalous (Huber-like),
//! so a fault is not learned as the new normal while it lasts. The score is
//! `z² / (z² + Z0²)` of the largest z: 0.8 (the default threshold) is
//! `2 * Z0` = 5.2 typical residuals. The explanation names the channels by
//! their share of the z's above the noise, with the value each was
//! expected to have.

use vigil_crds::DetectorParams;

use super::{Contribution, Explanation, Factory, Score, Scorer};

/// Records per key before any score.
const WARMUP: usize = 500;
/// Records that only settle the input norms.
const NORMS_FIRST: usize = 50;
/// Forgetting factor of the regressions (memory ~ 1 / (1 - LAMBDA) records).
const LAMBDA: f64 = 0.9995;
const INV_LAMBDA: f64 = 1.0 / LAMBDA;
/// Smoothing of the input means and deviations.
const NORM_ALPHA: f64 = 1.0 / 2000.0;
/// Records over which the channels' recent past is smoothed.
const SMOOTH: f64 = 30.0;
/// Smoothing of the residual scale.
const SCALE_ALPHA: f64 = 1.0 / 500.0;
/// Weight of a step's z against a residual's (steps of noise are larger).
const STEP_WEIGHT: f64 = 0.8;
/// z at which a score is one half.
const Z0: f64 = 2.6;
/// Residuals are clipped at this many scales when they update the scale.
const CLIP: f64 = 3.0;
/// z above which learning is down-weighted.
const HUBER: f64 = 3.0;
/// Repeats of one value that make a flatline.
const STUCK: usize = 30;
/// A channel whose value repeats more often than this is not expected to change.
const REPEATS_NORMAL: f64 = 0.02;
/// The default threshold.
pub const DEFAULT_THRESHOLD: f64 = 0.8;

/// Creates `sensorZ` scorers.
pub struct SensorZFactory {
    dims: usize,
    warmup: usize,
}

impl SensorZFactory {
    pub fn new(dims: usize, p: &DetectorParams) -> Self {
        SensorZFactory { dims: dims.max(1), warmup: p.warmup.map_or(WARMUP, |w| w.max(0) as usize) }
    }
}

impl Factory for SensorZFactory {
    fn name(&self) -> &'static str {
        "sensorZ"
    }
    fn scorer(&self) -> Box<dyn Scorer> {
        Box::new(SensorZ::new(self.dims, self.warmup))
    }
    fn default_threshold(&self) -> f64 {
        DEFAULT_THRESHOLD
    }
    fn bytes_per_key(&self) -> usize {
        let d = self.dims;
        let n = 2 * d - 1;
        // Per channel: a regression of n inputs (weights and an n x n
        // matrix) and its state; per key, scratch of 8 values per channel.
        std::mem::size_of::<SensorZ>() + d * ((n + n * n) * 8 + std::mem::size_of::<Channel>()) + d * 8 * 8
    }
}

/// A running mean absolute value: plain over the first values, then
/// smoothed with each new value clipped, so outliers barely move it.
fn running_scale(scale: f64, value: f64, n: f64) -> f64 {
    if !value.is_finite() {
        return scale;
    }
    if n <= 0.5 / SCALE_ALPHA {
        scale + (value - scale) / n.max(1.0)
    } else {
        scale + SCALE_ALPHA * (value.min(CLIP * scale / 0.798) - scale)
    }
}

/// One channel's regression on the other channels (and a bias).
#[derive(Clone)]
struct Regression {
    w: Vec<f64>,
    /// Inverse correlation matrix, row-major.
    p: Vec<f64>,
}

impl Regression {
    fn new(n: usize) -> Self {
        let mut p = vec![0.0; n * n];
        for i in 0..n {
            p[i * n + i] = 100.0;
        }
        Regression { w: vec![0.0; n], p }
    }

    fn predict(&self, u: &[f64]) -> f64 {
        self.w.iter().zip(u).map(|(w, u)| w * u).sum()
    }

    /// One weighted RLS step (weight in (0, 1]), given the error of the
    /// prediction for `u`.
    ///
    /// The n x n update is the hot loop of `sensorZ` (four channels: four
    /// 7 x 7 matrices a record), so it multiplies by the two reciprocals
    /// instead of dividing each element by them. `P` stays exactly
    /// symmetric: each element's correction is `pu_i * pu_j`, the same
    /// product either way round, times one factor.
    fn learn(&mut self, u: &[f64], err: f64, weight: f64, pu: &mut [f64]) {
        let n = self.w.len();
        let pu = &mut pu[..n];
        for (row, out) in self.p.chunks_exact(n).zip(pu.iter_mut()) {
            *out = row.iter().zip(u).map(|(p, u)| p * u).sum();
        }
        let denom = LAMBDA / weight + u.iter().zip(pu.iter()).map(|(a, b)| a * b).sum::<f64>();
        if !(denom.is_finite() && denom > 1e-12) {
            return;
        }
        let gain = err / denom;
        for (w, p) in self.w.iter_mut().zip(pu.iter()) {
            *w += p * gain;
        }
        let inv_denom = 1.0 / denom;
        let mut wound_up = false;
        for (i, row) in self.p.chunks_exact_mut(n).enumerate() {
            let pi = pu[i];
            for (p, pj) in row.iter_mut().zip(pu.iter()) {
                *p = (*p - pi * pj * inv_denom) * INV_LAMBDA;
            }
            wound_up |= row[i] > 1e4;
        }
        // Wind-up guard: inputs that stop varying make P grow without end.
        if wound_up {
            for v in &mut self.p {
                *v *= 0.5;
            }
        }
    }
}

struct Channel {
    mean: f64,
    var: f64,
    /// Running mean absolute step between consecutive residuals.
    step_scale: f64,
    last_residual: f64,
    scale: f64,
    last: f64,
    run: usize,
    repeats: f64,
    regression: Option<Regression>,
}

struct SensorZ {
    seen: usize,
    warmup: usize,
    channels: Vec<Channel>,
    /// Scratch: standardised values, regression inputs, P*u, z's.
    std: Vec<f64>,
    /// Scratch: each channel's running deviation and residual this record.
    sd: Vec<f64>,
    residual: Vec<f64>,
    input: Vec<f64>,
    pu: Vec<f64>,
    z: Vec<f64>,
    predicted: Vec<f64>,
    /// Smoothed standardised values: the channels' recent past, so a
    /// lagged response (a temperature following a load) is predicted too.
    smooth: Vec<f64>,
}

/// The regression inputs of channel `i`: the other channels now and
/// smoothed, and a bias. Returns how many.
fn inputs(input: &mut [f64], std: &[f64], smooth: &[f64], i: usize) -> usize {
    let mut k = 0;
    for (j, (v, s)) in std.iter().zip(smooth).enumerate() {
        if j != i {
            input[k] = *v;
            input[k + 1] = *s;
            k += 2;
        }
    }
    input[k] = 1.0;
    k + 1
}

impl SensorZ {
    fn new(d: usize, warmup: usize) -> Self {
        let regression = (d > 1).then(|| Regression::new(2 * d - 1));
        SensorZ {
            seen: 0,
            warmup,
            channels: (0..d)
                .map(|_| Channel {
                    mean: 0.0,
                    var: 0.0,
                    scale: 0.0,
                    step_scale: 0.0,
                    last_residual: 0.0,
                    last: f64::NAN,
                    run: 0,
                    repeats: 0.0,
                    regression: regression.clone(),
                })
                .collect(),
            std: vec![0.0; d],
            sd: vec![0.0; d],
            residual: vec![0.0; d],
            input: vec![0.0; 2 * d],
            pu: vec![0.0; 2 * d],
            smooth: vec![0.0; d],
            z: vec![0.0; d],
            predicted: vec![0.0; d],
        }
    }
}

impl Scorer for SensorZ {
    fn score(&mut self, x: &[f64]) -> Score {
        let d = self.channels.len().min(x.len());
        self.seen += 1;
        if x[..d].iter().any(|v| !v.is_finite()) {
            return Score { value: 0.0, explanation: Explanation::new() };
        }
        // The first records only settle the means and deviations the
        // regressions' inputs are standardised by.
        if self.seen <= NORMS_FIRST {
            let n = self.seen as f64;
            for (i, c) in self.channels.iter_mut().enumerate().take(d) {
                let delta = x[i] - c.mean;
                c.mean += delta / n;
                c.var += (delta * (x[i] - c.mean) - c.var) / n;
                c.run = if x[i] == c.last { c.run + 1 } else { 0 };
                c.last = x[i];
            }
            return Score { value: 0.0, explanation: Explanation::new() };
        }
        // Standardise with the running means and deviations.
        for (i, c) in self.channels.iter_mut().enumerate().take(d) {
            self.sd[i] = c.var.sqrt().max(1e-9 * (1.0 + c.mean.abs()));
            self.std[i] = (x[i] - c.mean) / self.sd[i];
        }
        // Residual of each channel against its prediction.
        let mut z_max = 0.0f64;
        let mut flat = None;
        for i in 0..d {
            let c = &self.channels[i];
            let predicted_std = match &c.regression {
                Some(r) => {
                    let n = inputs(&mut self.input, &self.std[..d], &self.smooth[..d], i);
                    r.predict(&self.input[..n])
                }
                None => 0.0,
            };
            self.predicted[i] = c.mean + predicted_std * self.sd[i];
            let residual = self.std[i] - predicted_std;
            self.residual[i] = residual;
            let scale = if c.scale > 0.0 { c.scale / 0.798 } else { f64::INFINITY };
            // The step of the residual from the previous one, against the
            // usual steps: a jump of one channel (spike, level shift) or a
            // burst of noise shows at once, while a step all channels take
            // together (a load change, a schedule) leaves the residual be.
            let step_scale = if c.step_scale > 0.0 { c.step_scale / 0.798 } else { f64::INFINITY };
            let step_z = (residual - c.last_residual).abs() / step_scale.max(1e-9) * STEP_WEIGHT;
            self.z[i] = (residual.abs() / scale.max(1e-9)).max(step_z);
            z_max = z_max.max(self.z[i]);
            // Flatline: the same value again.
            let run = if x[i] == c.last { c.run + 1 } else { 0 };
            if run >= STUCK && c.repeats < REPEATS_NORMAL {
                flat = Some(i);
            }
        }
        // Learn, less from what looks anomalous.
        let weight = if z_max > HUBER { (HUBER / z_max).powi(2) } else { 1.0 };
        for i in 0..d {
            let residual = self.residual[i];
            let c = &mut self.channels[i];
            let n = (self.seen - NORMS_FIRST) as f64;
            c.scale = running_scale(c.scale, residual.abs(), n);
            c.step_scale = running_scale(c.step_scale, (residual - c.last_residual).abs(), n);
            c.last_residual = residual;
            if let Some(r) = &mut c.regression {
                let n = inputs(&mut self.input, &self.std[..d], &self.smooth[..d], i);
                r.learn(&self.input[..n], residual, weight, &mut self.pu);
            }
            let a = NORM_ALPHA * weight;
            let delta = x[i] - c.mean;
            c.mean += a * delta;
            c.var = (1.0 - a) * (c.var + a * delta * delta);
            let repeated = x[i] == c.last;
            c.run = if repeated { c.run + 1 } else { 0 };
            // How often a value repeats its predecessor, learnt outside
            // runs of repeats (a flatline does not teach that repeats are normal).
            if c.run <= 1 {
                c.repeats += (f64::from(u8::from(repeated)) - c.repeats) / 1000.0;
            }
            c.last = x[i];
        }
        for (sm, v) in self.smooth.iter_mut().zip(&self.std[..d]) {
            *sm += (v - *sm) / SMOOTH;
        }
        if self.seen <= self.warmup {
            return Score { value: 0.0, explanation: Explanation::new() };
        }
        let (value, explanation) = match flat {
            Some(i) => (
                1.0,
                smallvec::smallvec![Contribution {
                    feature: i,
                    weight: 1.0,
                    expected: Some(self.predicted[i])
                }],
            ),
            None => {
                let value = z_max * z_max / (z_max * z_max + Z0 * Z0);
                // Shares of the z's above the noise (z > 1).
                let excess = |z: f64| (z - 1.0).max(0.0);
                let total: f64 = self.z[..d].iter().map(|z| excess(*z)).sum();
                let mut parts: Explanation = if total > 0.0 {
                    self.z[..d]
                        .iter()
                        .enumerate()
                        .filter(|(_, z)| excess(**z) > 0.0)
                        .map(|(i, z)| Contribution {
                            feature: i,
                            weight: excess(*z) / total,
                            expected: Some(self.predicted[i]),
                        })
                        .collect()
                } else {
                    Explanation::new()
                };
                parts.sort_by(|a, b| b.weight.total_cmp(&a.weight));
                (value, parts)
            }
        };
        Score { value, explanation }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(d: usize, n: usize, f: impl Fn(usize) -> Vec<f64>) -> Vec<Score> {
        let mut s = SensorZ::new(d, WARMUP);
        (0..n).map(|i| s.score(&f(i))).collect()
    }

    /// Noise in [-1, 1], roughly bell-shaped (the mean of two uniforms from
    /// SplitMix64, seeded by the index and the stream).
    fn noise(i: usize, k: u64) -> f64 {
        let uniform = |seed: u64| {
            let mut z = seed.wrapping_add(0x9e3779b97f4a7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64
        };
        let seed = (i as u64) ^ (k << 40);
        uniform(seed.wrapping_mul(2)) + uniform(seed.wrapping_mul(2) + 1) - 1.0
    }

    /// Three channels following one cycle, with noise.
    fn pair(i: usize) -> Vec<f64> {
        let load = (i as f64 / 240.0).sin();
        vec![
            100.0 + 30.0 * load + noise(i, 1),
            50.0 + 15.0 * load + 0.5 * noise(i, 2),
            20.0 - 5.0 * load + 0.2 * noise(i, 3),
        ]
    }

    /// The regression's matrix stays exactly symmetric through many updates
    /// (and a wind-up halving): a drift between P[i][j] and P[j][i] is how
    /// recursive least squares goes unstable over long runs.
    #[test]
    fn the_regression_matrix_stays_exactly_symmetric() {
        let n = 7;
        let mut r = Regression::new(n);
        let mut pu = vec![0.0; n];
        let mut state = 11u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        for k in 0..20_000 {
            // Inputs that stop varying for a while wind P up.
            let u: Vec<f64> = (0..n).map(|i| if k % 5000 < 2500 || i == 0 { next() } else { 0.3 }).collect();
            let err = next();
            r.learn(&u, err, if k % 7 == 0 { 0.2 } else { 1.0 }, &mut pu);
        }
        for i in 0..n {
            for j in 0..n {
                assert_eq!(r.p[i * n + j].to_bits(), r.p[j * n + i].to_bits(), "P[{i}][{j}]");
            }
        }
        assert!(r.w.iter().all(|w| w.is_finite()));
    }

    #[test]
    fn a_shared_cycle_is_normal_and_a_channel_leaving_it_is_named() {
        let scores = run(3, 4000, |i| {
            let mut v = pair(i);
            if (3000..3060).contains(&i) {
                v[1] += 8.0; // the second channel leaves its relation
            }
            v
        });
        let quiet = scores[1000..3000].iter().filter(|s| s.value >= DEFAULT_THRESHOLD).count();
        assert!(quiet <= 2, "{quiet} false alarms on a plain shared cycle");
        let hit =
            scores[3000..3060].iter().find(|s| s.value >= DEFAULT_THRESHOLD).expect("the fault is flagged");
        assert_eq!(hit.explanation[0].feature, 1, "the faulty channel is named first: {hit:?}");
        let expected = hit.explanation[0].expected.unwrap();
        assert!((expected - (pair(3000)[1])).abs() < 3.0, "expected near its usual relation: {expected}");
    }

    #[test]
    fn a_stuck_channel_is_flagged_and_nothing_is_scored_during_warmup() {
        let scores = run(3, 3000, |i| {
            let mut v = pair(i);
            if (2000..2100).contains(&i) {
                v[0] = 123.0;
            }
            v
        });
        assert!(scores[..WARMUP].iter().all(|s| s.value == 0.0));
        let flagged = scores[2000..2100].iter().position(|s| s.value >= DEFAULT_THRESHOLD);
        assert!(flagged.is_some_and(|p| p <= STUCK + 1), "flagged at {flagged:?}");
    }

    #[test]
    fn one_channel_works_as_a_robust_z() {
        let scores = run(1, 2000, |i| vec![10.0 + noise(i, 3) + if i == 1500 { 15.0 } else { 0.0 }]);
        assert!(scores[1500].value >= DEFAULT_THRESHOLD, "{:?}", scores[1500]);
        let quiet = scores[600..1500].iter().filter(|s| s.value >= DEFAULT_THRESHOLD).count();
        assert_eq!(quiet, 0);
    }
}
