//! Arbitrary bytes as a JSON record through a transform-heavy pipeline:
//! the JSON decoder, timestamps (auto format), flatten, rename, cast, fill,
//! derive, filter, diff, window, select, the detector and the encoder.
#![no_main]
include!("common.rs");

const PIPELINE: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {name: fuzz, namespace: fuzz}
spec:
  input: {topic: {name: in}, keyField: host, timestampField: ts, maxRecordBytes: 65536}
  transforms:
    - flatten: {separator: "_"}
    - rename: {fields: {m_temp: temp}}
    - cast: {fields: {load: float}}
    - fill: {fields: [temp], strategy: previous}
    - derive: {field: ratio, expr: "cpu / (load + 1.0)"}
    - filter: {expr: "cpu >= 0.0 || has(record.temp)"}
    - diff: {field: cpu}
    - window: {field: cpu, size: 10s, aggregates: [mean, max], emit: eachRecord}
    - select: {fields: [host, ts, cpu, load, ratio, temp, cpu_diff, cpu_mean, cpu_max]}
  detector: {algorithm: robustZ, features: [cpu], maxKeys: 64}
  output: {name: out}
  deadLetter: {name: dlq}
"#;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_engine(PIPELINE, data));
