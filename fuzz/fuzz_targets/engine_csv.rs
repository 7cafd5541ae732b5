//! Arbitrary bytes as a CSV record (quotes, delimiters, column counts)
//! through a pipeline with a multivariate detector.
#![no_main]
include!("common.rs");

const PIPELINE: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {name: fuzz, namespace: fuzz}
spec:
  input:
    topic: {name: in}
    format: csv
    columns: [ts, machine, temp, vibration, label]
    keyField: machine
    timestampField: ts
    maxRecordBytes: 65536
  transforms:
    - cast: {fields: {temp: float, vibration: float}}
    - standardize: {fields: [temp]}
  detector: {algorithm: halfSpaceTrees, features: [temp, vibration], maxKeys: 64}
  output: {name: out}
  deadLetter: {name: dlq}
"#;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_engine(PIPELINE, data));
