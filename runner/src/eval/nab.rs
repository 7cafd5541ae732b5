//! The NAB scoring method, implemented from the corpus's `SCORING.md`:
//! probationary period, windows, the scaled sigmoid, three profiles, a
//! corpus-wide threshold tuned over every distinct score, and normalisation
//! between the null and the perfect detector.

/// Weights of a scoring profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// Its name in NAB.
    pub name: &'static str,
    /// Reward of a detected window (at its start).
    pub tp: f64,
    /// Cost of a false positive far from any window.
    pub fp: f64,
    /// Cost of a missed window.
    pub fn_: f64,
}

/// The three published profiles.
pub const PROFILES: [Profile; 3] = [
    Profile { name: "standard", tp: 1.0, fp: 0.11, fn_: 1.0 },
    Profile { name: "reward_low_FP_rate", tp: 1.0, fp: 0.22, fn_: 1.0 },
    Profile { name: "reward_low_FN_rate", tp: 1.0, fp: 0.11, fn_: 2.0 },
];

/// NAB's scaled sigmoid.
pub fn sigmoid(x: f64) -> f64 {
    if x > 3.0 { -1.0 } else { 2.0 / (1.0 + (5.0 * x).exp()) - 1.0 }
}

/// One file: its scores and windows (as inclusive row ranges).
#[derive(Debug, Clone)]
pub struct File {
    /// Path relative to the corpus's data directory.
    pub name: String,
    /// One score per row.
    pub scores: Vec<f64>,
    /// Windows as (first row, last row), in order.
    pub windows: Vec<(usize, usize)>,
}

impl File {
    /// Rows ignored at the start.
    pub fn probation(&self) -> usize {
        ((0.15 * self.scores.len() as f64).floor() as usize).min(750)
    }
}

/// Where a row sits relative to the windows.
#[derive(Debug, Clone, Copy)]
enum Place {
    /// Inside window `w`; the value of detecting it here.
    In(usize, f64),
    /// Outside all windows; the (negative) value of a detection here.
    Out(f64),
}

fn places(file: &File, p: &Profile) -> Vec<Place> {
    let n = file.scores.len();
    let mut out = Vec::with_capacity(n);
    let mut next = 0; // index of the next window not yet passed
    for i in 0..n {
        while next < file.windows.len() && file.windows[next].1 < i {
            next += 1;
        }
        match file.windows.get(next) {
            Some(&(a, b)) if i >= a && i <= b => {
                let w = (b - a + 1) as f64;
                let x = -((b - i + 1) as f64) / w;
                out.push(Place::In(next, sigmoid(x) * p.tp / sigmoid(-1.0)));
            }
            _ if next == 0 => out.push(Place::Out(-p.fp)),
            _ => {
                let (a, b) = file.windows[next - 1];
                let w = (b - a + 1) as f64;
                let x = (i - b) as f64 / (w - 1.0).max(1.0);
                out.push(Place::Out(sigmoid(x) * p.fp));
            }
        }
    }
    out
}

/// Raw score of one file at threshold `t`.
pub fn raw_score(file: &File, p: &Profile, t: f64) -> f64 {
    let places = places(file, p);
    let mut earliest: Vec<Option<f64>> = vec![None; file.windows.len()];
    let mut raw = 0.0;
    for (i, place) in places.iter().enumerate().skip(file.probation()) {
        if file.scores[i] < t {
            continue;
        }
        match *place {
            Place::In(w, v) => {
                earliest[w].get_or_insert(v);
            }
            Place::Out(v) => raw += v,
        }
    }
    raw + earliest.iter().map(|e| e.unwrap_or(-p.fn_)).sum::<f64>()
}

/// The result of scoring a corpus under one profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Result {
    /// The threshold that maximised the raw score.
    pub threshold: f64,
    /// Normalised score at that threshold.
    pub score: f64,
}

/// Normalise a raw corpus score.
pub fn normalise(raw: f64, windows: usize, p: &Profile) -> f64 {
    let perfect = p.tp * windows as f64;
    let null = -p.fn_ * windows as f64;
    100.0 * (raw - null) / (perfect - null)
}

/// Normalised corpus score at a fixed threshold.
pub fn score_at(files: &[File], p: &Profile, t: f64) -> f64 {
    let raw: f64 = files.iter().map(|f| raw_score(f, p, t)).sum();
    normalise(raw, files.iter().map(|f| f.windows.len()).sum(), p)
}

/// Tune the threshold over every distinct score (and "detect nothing"),
/// ties going to the higher threshold, and return the best.
///
/// Lowering the threshold only adds detections, and each addition changes
/// the raw score by an amount that depends only on its own row and on the
/// earliest detection so far in its window, so one sweep from the highest
/// score down evaluates every candidate.
pub fn tune(files: &[File], p: &Profile) -> Result {
    let windows: usize = files.iter().map(|f| f.windows.len()).sum();
    let mut events: Vec<(f64, usize, usize)> = Vec::new();
    let mut file_places = Vec::with_capacity(files.len());
    let mut window_base = Vec::with_capacity(files.len());
    let mut base = 0;
    for (fi, f) in files.iter().enumerate() {
        file_places.push(places(f, p));
        window_base.push(base);
        base += f.windows.len();
        events.extend(f.scores.iter().enumerate().skip(f.probation()).map(|(i, s)| (*s, fi, i)));
    }
    events.sort_by(|a, b| b.0.total_cmp(&a.0));
    // earliest[w] = (row, value) of the earliest detection in window w.
    let mut earliest: Vec<Option<(usize, f64)>> = vec![None; windows];
    let mut raw = -p.fn_ * windows as f64;
    let mut best = Result { threshold: f64::INFINITY, score: normalise(raw, windows, p) };
    let mut i = 0;
    while i < events.len() {
        let t = events[i].0;
        while i < events.len() && events[i].0 == t {
            let (_, fi, row) = events[i];
            match file_places[fi][row] {
                Place::Out(v) => raw += v,
                Place::In(w, v) => {
                    let slot = &mut earliest[window_base[fi] + w];
                    match *slot {
                        None => {
                            raw += v + p.fn_;
                            *slot = Some((row, v));
                        }
                        Some((r, old)) if row < r => {
                            raw += v - old;
                            *slot = Some((row, v));
                        }
                        Some(_) => {}
                    }
                }
            }
            i += 1;
        }
        let score = normalise(raw, windows, p);
        if score > best.score {
            best = Result { threshold: t, score };
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(perfect: bool) -> Vec<File> {
        // Two files: one with two windows, one with none.
        let mut a = File { name: "a".into(), scores: vec![0.0; 1000], windows: vec![(300, 340), (700, 760)] };
        let b = File { name: "b".into(), scores: vec![0.0; 500], windows: vec![] };
        if perfect {
            a.scores[300] = 1.0;
            a.scores[700] = 1.0;
        }
        vec![a, b]
    }

    #[test]
    fn sigmoid_matches_the_published_points() {
        assert!((sigmoid(-1.0) - 0.98661).abs() < 1e-5);
        assert_eq!(sigmoid(0.0), 0.0);
        assert_eq!(sigmoid(3.5), -1.0);
    }

    #[test]
    fn a_perfect_detector_scores_100_on_every_profile_and_a_silent_one_0() {
        for p in &PROFILES {
            let perfect = tune(&corpus(true), p);
            assert!((perfect.score - 100.0).abs() < 1e-9, "{}: {perfect:?}", p.name);
            assert_eq!(perfect.threshold, 1.0);
            let silent = tune(&corpus(false), p);
            assert!(silent.score.abs() < 1e-9, "{}: {silent:?}", p.name);
            assert!((score_at(&corpus(true), p, 0.5) - 100.0).abs() < 1e-9);
        }
    }

    #[test]
    fn late_detections_earn_less_and_false_positives_cost() {
        let p = &PROFILES[0];
        let mut files = corpus(false);
        files[0].scores[330] = 1.0; // late in the first window
        let late = score_at(&files, p, 0.5);
        assert!(late > 0.0 && late < 50.0, "{late}");
        files[1].scores[400] = 1.0; // a false positive in a file without windows
        let with_fp = score_at(&files, p, 0.5);
        let expected_drop = 100.0 * 0.11 / 4.0;
        assert!((late - with_fp - expected_drop).abs() < 1e-9, "{late} {with_fp}");
    }

    #[test]
    fn probation_rows_neither_earn_nor_cost() {
        let p = &PROFILES[0];
        let mut files = corpus(false);
        files[1].scores[10] = 1.0; // row 10 < 75 = 15% of 500
        assert!(score_at(&files, p, 0.5).abs() < 1e-9);
    }

    #[test]
    fn the_sweep_agrees_with_scoring_at_each_threshold() {
        let p = &PROFILES[0];
        let mut files = corpus(false);
        let mut x: u64 = 1;
        for f in &mut files {
            for s in &mut f.scores {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                *s = ((x >> 33) % 1000) as f64 / 1000.0;
            }
        }
        let best = tune(&files, p);
        let direct = score_at(&files, p, best.threshold);
        assert!((best.score - direct).abs() < 1e-9, "{best:?} vs {direct}");
        for t in [0.9, 0.99, 0.999] {
            assert!(score_at(&files, p, t) <= best.score + 1e-9);
        }
    }
}
