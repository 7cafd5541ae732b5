//! Scoring throughput of trained models, one core, parse to encode: JSON
//! records of the peer data set's shape (`../shared/peers/gen_jsonl.py`: a
//! key of 100, four features from an 8-cluster mixture) through
//! `Engine::with_model` (decode, standardise, score, calibrate, explain,
//! encode). Each algorithm is trained first with `vigil train`'s code on
//! 20,000 records of the same mixture.
//!
//! `cargo bench -p vigil-runner --bench models [-- --records N]`; prints
//! one line per algorithm. Results in runner/BENCHMARKS.md.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use vigil_runner::codec::Meta;
use vigil_runner::engine::{Engine, Event};
use vigil_runner::models::iforest::Rng;
use vigil_runner::models::train::{Options, train};

/// `n` records of the mixture (its centres fixed), drawn with `seed`.
fn mixture(n: usize, seed: u64) -> Vec<String> {
    let mut fixed = Rng::new(7);
    let centres: Vec<[f64; 4]> = (0..8).map(|_| [0; 4].map(|_: i32| -10.0 + 20.0 * fixed.unit())).collect();
    let mut rng = Rng::new(seed);
    let normal = |rng: &mut Rng| {
        let (u, v) = (rng.unit().max(1e-12), rng.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    };
    (0..n)
        .map(|i| {
            let c = centres[rng.below(8)];
            let f: Vec<f64> = if rng.unit() < 0.001 {
                (0..4).map(|_| -30.0 + 60.0 * rng.unit()).collect()
            } else {
                c.iter().map(|m| m + normal(&mut rng)).collect()
            };
            format!(
                r#"{{"ts": {}, "key": "sensor-{}", "f1": {:.6}, "f2": {:.6}, "f3": {:.6}, "f4": {:.6}}}"#,
                1_700_000_000_000u64 + i as u64,
                i % 100,
                f[0],
                f[1],
                f[2],
                f[3]
            )
        })
        .collect()
}

fn main() {
    let records = vigil_e2e::bench_arg("--records", 1_000_000) as usize;
    let dir = tempfile::tempdir().expect("tempdir");
    let train_file = dir.path().join("train.jsonl");
    let mut f = std::fs::File::create(&train_file).expect("train file");
    for r in mixture(20_000, 1) {
        writeln!(f, "{r}").expect("write");
    }
    drop(f);
    let input: Vec<Vec<u8>> = mixture(records, 2).into_iter().map(String::into_bytes).collect();
    let algorithms = [
        ("kMeans", "{clusters: 8, seed: 1}"),
        ("gaussianMixture", "{components: 8, seed: 1}"),
        ("pca", "{components: 2}"),
        ("isolationForest", "{trees: 100, sampleSize: 256, seed: 1}"),
        ("oneClassSvm", "{nu: 0.05}"),
    ];
    println!(
        "{:<18} {:>10} {:>14} {:>10}   (one core, {records} JSON records, parse -> score -> encode)",
        "algorithm", "fit s", "records/s", "flagged"
    );
    for (algorithm, params) in algorithms {
        let manifest = format!(
            "apiVersion: vigil.dev/v1alpha1\nkind: Model\nmetadata: {{name: bench-{}}}\nspec:\n  algorithm: {algorithm}\n  params: {params}\n  features: [f1, f2, f3, f4]\n  training: {{file: x.jsonl, format: json}}\n",
            algorithm.to_lowercase()
        );
        let model = vigil_crds::manifest::single_model(&manifest).expect("model");
        let opts = Options {
            input: Some(train_file.clone()),
            output: dir.path().join("models"),
            ..Options::default()
        };
        let trained = train(&model, &opts).expect("training");
        let fit = trained.artifact.metadata.fit_seconds;
        let pipeline = format!(
            "apiVersion: vigil.dev/v1alpha1\nkind: Pipeline\nmetadata: {{name: b}}\nspec:\n  input: {{topic: {{name: in}}, keyField: key}}\n  detector: {{modelRef: {{name: bench-{}}}}}\n  output: {{name: out}}\n  deadLetter: {{name: dlq}}\n",
            algorithm.to_lowercase()
        );
        let spec = vigil_crds::manifest::single_pipeline(&pipeline).expect("pipeline").spec;
        let served = Arc::new(vigil_runner::models::Model { artifact: trained.artifact });
        let mut engine = Engine::with_model(&spec, None, None, Some(served)).expect("engine");
        let (mut bytes, mut flagged) = (0usize, 0u64);
        let started = Instant::now();
        for r in &input {
            engine.process(r, Meta::default(), &mut |ev| {
                if let Event::Output(o) = ev {
                    bytes += o.json.len();
                    flagged += u64::from(o.is_anomaly);
                }
            });
        }
        let rate = input.len() as f64 / started.elapsed().as_secs_f64();
        assert!(bytes > 0);
        println!("{algorithm:<18} {fit:>10.3} {rate:>14.0} {flagged:>10}");
    }
}
