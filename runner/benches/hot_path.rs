//! The hot path without Kafka: parse JSON, three transforms, score with the
//! default univariate detector, encode the output record. One core; and
//! with 1 and 2 threads each running its own engine over its own keys, as
//! the runner's processing threads do (`hot_path_threads`).
//!
//! `cargo bench -p vigil-runner --bench hot_path`; results in
//! runner/BENCHMARKS.md.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vigil_runner::codec::Meta;
use vigil_runner::engine::{Engine, Event};

const PIPELINE: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {name: bench}
spec:
  input: {topic: {name: in}, keyField: host}
  transforms:
    - filter: {expr: "cpu >= 0.0"}
    - derive: {field: load, expr: "cpu / 100.0"}
    - drop: {fields: [region]}
  detector: {algorithm: robustZ, features: [load]}
  output: {name: out}
  deadLetter: {name: dlq}
"#;

fn records(n: usize, hosts: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"ts":1764324000{:03},"host":"host-{}","region":"eu-west-1","cpu":{:.2},"mem":{}}}"#,
                i % 1000,
                i % hosts,
                20.0 + (i * 7919 % 6000) as f64 / 100.0,
                i % 64
            )
            .into_bytes()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let spec = vigil_crds::manifest::single_pipeline(PIPELINE).expect("bench pipeline").spec;
    let mut group = c.benchmark_group("hot_path");
    for hosts in [1usize, 1000] {
        let input = records(10_000, hosts);
        let mut engine = Engine::new(&spec, None, None).expect("engine");
        // Warm every key's detector past its warm-up so scoring does full work.
        for r in &input {
            engine.process(r, Meta::default(), &mut |_| {});
        }
        group.throughput(Throughput::Elements(input.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("json_3_transforms_robust_z", format!("{hosts}_keys")),
            &input,
            |b, input| {
                b.iter(|| {
                    let mut bytes = 0usize;
                    for r in input {
                        engine.process(r, Meta::default(), &mut |ev| {
                            if let Event::Output(o) = ev {
                                bytes += o.json.len();
                            }
                        });
                    }
                    bytes
                })
            },
        );
    }
    group.finish();

    // Processing threads: each owns an engine and its partitions' keys; no
    // state is shared. Throughput counts the records of all threads.
    let mut group = c.benchmark_group("hot_path_threads");
    for threads in [1usize, 2] {
        let inputs: Vec<Vec<Vec<u8>>> = (0..threads).map(|_| records(10_000, 1000)).collect();
        let mut engines: Vec<Engine> =
            (0..threads).map(|_| Engine::new(&spec, None, None).expect("engine")).collect();
        for (engine, input) in engines.iter_mut().zip(&inputs) {
            for r in input {
                engine.process(r, Meta::default(), &mut |_| {});
            }
        }
        group.throughput(Throughput::Elements((threads * 10_000) as u64));
        group.bench_function(BenchmarkId::new("1000_keys_per_thread", format!("{threads}_threads")), |b| {
            b.iter(|| {
                std::thread::scope(|scope| {
                    for (engine, input) in engines.iter_mut().zip(&inputs) {
                        scope.spawn(move || {
                            let mut bytes = 0usize;
                            for r in input {
                                engine.process(r, Meta::default(), &mut |ev| {
                                    if let Event::Output(o) = ev {
                                        bytes += o.json.len();
                                    }
                                });
                            }
                            bytes
                        });
                    }
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
