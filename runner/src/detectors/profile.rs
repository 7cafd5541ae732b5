//! A streaming left matrix profile: how far the newest stretch of a series
//! is from the nearest stretch of its own recent past.
//!
//! The series is first averaged in blocks of `block` values. A stretch is
//! `len` consecutive block means; its distance to an earlier, non-overlapping
//! stretch is the plain Euclidean distance (level and shape both count). For
//! each new block the profile finds the nearest of the last `history`
//! stretches; a stretch unlike anything in that history is a *discord*. The
//! score is that distance over the `quantile` of the last `past` such
//! distances, minus one, in [0, 1]: a stretch twice as far from its nearest
//! neighbour as most stretches are from theirs scores 1.
//!
//! Dot products of the new stretch with each earlier one are kept per lag
//! and updated in O(1) per lag (the sliding dot product of STOMP), so a block
//! costs O(`history`) and a record O(`history` / `block`). They are
//! recomputed from scratch every `history` blocks so rounding cannot build
//! up. Memory is bounded: see [`LeftProfile::bytes`].

use super::robust_z::Calibrated;

/// The shape of one profile.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Values averaged into one point.
    pub block: usize,
    /// Points in a stretch.
    pub len: usize,
    /// Earlier stretches (in points) a new one is compared with.
    pub history: usize,
    /// Quantile of past nearest-neighbour distances that scales the current one.
    pub quantile: f64,
    /// Past distances kept for that quantile.
    pub past: usize,
    /// Distances needed before anything scores.
    pub min_past: usize,
}

impl Shape {
    /// With `block` at least 1, `len` at least 2 and `history` at least `len`.
    fn normalised(mut self) -> Self {
        self.block = self.block.max(1);
        self.len = self.len.max(2);
        self.history = self.history.max(self.len);
        self
    }

    /// Ring slots at full size: room for a stretch and its whole history.
    fn full_slots(&self) -> usize {
        (self.history + self.len + 1).next_power_of_two()
    }
}

/// One series' profile state.
pub struct LeftProfile {
    s: Shape,
    acc: f64,
    filled: usize,
    /// Block means, newest first, in a ring of `mask + 1` slots written twice.
    x: Vec<f64>,
    /// Sum of squares of the stretch ending at each point, laid out as `x`.
    norms: Vec<f64>,
    /// Dot product of the newest stretch with the one `d` points earlier.
    qt: Vec<f64>,
    /// Lags whose `qt` is current from the previous point.
    ready: usize,
    mask: usize,
    /// Ring slots at full size.
    full: usize,
    /// Points seen.
    t: usize,
    distances: Calibrated,
    /// Distances measured.
    measured: usize,
}

impl LeftProfile {
    /// An empty profile (see [`Shape::normalised`]).
    pub fn new(s: Shape) -> Self {
        let s = s.normalised();
        // Buffers grow with the series (a key seen a few times costs
        // little), doubling up to their full size.
        LeftProfile {
            s,
            acc: 0.0,
            filled: 0,
            x: Vec::new(),
            norms: Vec::new(),
            qt: Vec::new(),
            ready: 0,
            mask: 0,
            full: s.full_slots(),
            t: 0,
            distances: Calibrated::new(s.past, s.quantile, s.min_past),
            measured: 0,
        }
    }

    /// Bytes one profile of this shape holds at most.
    pub fn bytes(s: &Shape) -> usize {
        let s = s.normalised();
        s.full_slots() * 32 + (s.history + 1) * 8 + s.past * 4 + 128
    }

    /// Take one value; the score of the stretch it completes (0 between
    /// block boundaries and while the history fills).
    pub fn score(&mut self, v: f64) -> f64 {
        self.acc += v;
        self.filled += 1;
        if self.filled < self.s.block {
            return 0.0;
        }
        let mean = self.acc / self.s.block as f64;
        self.acc = 0.0;
        self.filled = 0;
        let Some(distance) = self.push(mean) else { return 0.0 };
        self.measured += 1;
        self.distances.score(distance, self.measured, 32)
    }

    /// Make room for point `t` and the `history + len` before it (called
    /// before the first point and when `t` outgrows a ring not yet full).
    fn grow(&mut self, t: usize) {
        let slots = (t + 1).next_power_of_two().clamp(16, self.full);
        let (old_mask, old_x, old_norms) =
            (self.mask, std::mem::take(&mut self.x), std::mem::take(&mut self.norms));
        let mask = slots - 1;
        self.x = vec![0.0; 2 * slots];
        self.norms = vec![0.0; 2 * slots];
        if !old_x.is_empty() {
            for p in t.saturating_sub(old_mask + 1)..t {
                let (from, to) = (old_mask - (p & old_mask), mask - (p & mask));
                for (new, old) in [(&mut self.x, &old_x), (&mut self.norms, &old_norms)] {
                    new[to] = old[from];
                    new[to + slots] = old[from];
                }
            }
        }
        self.mask = mask;
        self.qt.resize(self.s.history.min(slots) + 1, 0.0);
    }

    /// Add a point; the distance of the stretch ending at it to its nearest
    /// earlier neighbour, once one exists.
    fn push(&mut self, point: f64) -> Option<f64> {
        let len = self.s.len;
        let t = self.t;
        if self.x.is_empty() || (t > self.mask && self.mask + 1 < self.full) {
            self.grow(t);
        }
        let slots = self.mask + 1;
        self.t += 1;
        // Points are stored newest-first, twice (at `at` and `at + slots`),
        // so point t - k sits at base + k for every k <= slots: the lags
        // below read contiguous, ascending slices the compiler vectorises.
        let base = self.mask - (t & self.mask);
        self.x[base] = point;
        self.x[base + slots] = point;
        if t + 1 < len {
            return None;
        }
        let norm: f64 = self.x[base..base + len].iter().map(|v| v * v).sum();
        self.norms[base] = norm;
        self.norms[base + slots] = norm;
        // The stretch `d` points back ends at t - d >= len - 1; stretches
        // closer than `len` overlap this one and are skipped.
        let deepest = (t + 1 - len).min(self.s.history);
        if deepest < len {
            self.ready = deepest;
            return None;
        }
        if t % self.s.history == 0 {
            self.ready = 0; // recompute every lag from scratch
        }
        let (x, norms, qt) = (&self.x, &self.norms, &mut self.qt);
        let (newest, oldest) = (x[base], x[base + len]);
        let mut best = [f64::INFINITY; 4];
        // Lags whose dot product was current a point ago: one multiply-add each.
        let ready = self.ready.min(deepest);
        if ready >= len {
            let n = ready + 1 - len;
            let then = &x[base + len..base + len + n];
            let before = &x[base + 2 * len..base + 2 * len + n];
            let their_norms = &norms[base + len..base + len + n];
            let qs = &mut qt[len..len + n];
            for ((q, a), b) in qs.iter_mut().zip(then).zip(before) {
                *q += newest * a - oldest * b;
            }
            // Four running minima of |b|^2 - 2q, so the loop vectorises.
            let (q4, n4) = (qs.chunks_exact(4), their_norms.chunks_exact(4));
            let (q_rest, n_rest) = (q4.remainder(), n4.remainder());
            for (q, nb) in q4.zip(n4) {
                for k in 0..4 {
                    best[k] = best[k].min(nb[k] - 2.0 * q[k]);
                }
            }
            for (q, nb) in q_rest.iter().zip(n_rest) {
                best[0] = best[0].min(nb - 2.0 * q);
            }
        }
        // The rest from scratch.
        let now = &x[base..base + len];
        for (d, q) in qt.iter_mut().enumerate().take(deepest + 1).skip(ready.max(len - 1) + 1) {
            *q = now.iter().zip(&x[base + d..base + d + len]).map(|(a, b)| a * b).sum();
            best[0] = best[0].min(norms[base + d] - 2.0 * *q);
        }
        self.ready = deepest;
        let best = norm + best.iter().fold(f64::INFINITY, |m, v| m.min(*v));
        Some(best.max(0.0).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(block: usize, len: usize, history: usize) -> Shape {
        Shape { block, len, history, quantile: 0.9, past: 2000, min_past: 100 }
    }

    /// The nearest-neighbour distance, by brute force over block means.
    fn brute(points: &[f64], len: usize, history: usize) -> Option<f64> {
        if points.len() < len {
            return None;
        }
        let t = points.len() - 1;
        let now = &points[t + 1 - len..=t];
        (len..=history.min(t + 1 - len))
            .map(|d| {
                let then = &points[t - d + 1 - len..=t - d];
                now.iter().zip(then).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt()
            })
            .min_by(f64::total_cmp)
    }

    #[test]
    fn sliding_dot_products_match_brute_force_through_recomputes() {
        let mut p = LeftProfile::new(shape(1, 8, 40));
        let mut points = Vec::new();
        for i in 0..300u64 {
            let v = ((i * 7919) % 101) as f64 / 10.0 + (i as f64 / 9.0).sin() * 20.0 + 1e4;
            points.push(v);
            let got = p.push(v);
            let want = brute(&points, 8, 40);
            match (got, want) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-6 * b.max(1.0), "point {i}: {a} vs {b}"),
                (None, None) => {}
                other => panic!("point {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_stretch_unlike_its_past_scores_and_a_repeat_does_not() {
        let mut p = LeftProfile::new(shape(2, 12, 400));
        let wave = |i: usize| (i as f64 * std::f64::consts::TAU / 48.0).sin() * 10.0 + 50.0;
        let mut max_normal: f64 = 0.0;
        for i in 0..4000 {
            let s = p.score(wave(i) + ((i * 31) % 7) as f64 * 0.05);
            if i > 1000 {
                max_normal = max_normal.max(s);
            }
        }
        assert!(max_normal < 0.5, "a repeating wave scored {max_normal}");
        // The wave flattens at its mean for a while: nothing like it before.
        let flat = (4000..4040).map(|_| p.score(50.0)).fold(0.0, f64::max);
        assert!(flat >= 0.8, "a flattened wave scored {flat}");
    }
}
