//! Arbitrary text as an expression: the parser (shared by validate, the
//! operator and the runner), the runner's compiler, and its evaluator on a
//! few decoded records (numbers at the edges, text, lists, objects, null).
//! Evaluation may fail with a message, never panic.
#![no_main]
use std::sync::OnceLock;

use vigil_crds::RecordFormat;
use vigil_crds::common::RecordEncoding;
use vigil_runner::codec::{Decoder, Meta};
use vigil_runner::expr::Compiled;
use vigil_runner::record::{Interner, Record};

const RECORDS: &[&str] = &[
    r#"{"host": "web-1", "cpu": 1.5, "load": 2, "name": "web-1", "tags": [1, 2], "m": {"x": 1}}"#,
    r#"{"host": "b", "cpu": -3, "load": 0, "name": "", "flag": true, "n": 9223372036854775807}"#,
    r#"{"host": "c", "cpu": 1e300, "load": null, "name": "\u00e9\u00e9"}"#,
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let _ = vigil_crds::expr::parse(src).map(|e| e.fields());
    // Records decoded once; every input compiles against a copy of the
    // interner they were decoded with.
    static DECODED: OnceLock<(Interner, Vec<Record>)> = OnceLock::new();
    let (interner, records) = DECODED.get_or_init(|| {
        let enc: RecordEncoding = serde_json::from_str(r#"{"keyField": "host"}"#).unwrap();
        let mut interner = Interner::default();
        let mut decoder = Decoder::new(&enc, RecordFormat::Json, None, &mut interner).unwrap();
        let records = RECORDS
            .iter()
            .map(|r| {
                let mut rec = Record::default();
                decoder.decode(r.as_bytes(), Meta { key: None, ts_ms: 0 }, &mut interner, &mut rec).unwrap();
                rec
            })
            .collect();
        (interner, records)
    });
    let mut interner = interner.clone();
    let Ok(compiled) = Compiled::new(src, &mut interner) else { return };
    for rec in records {
        let _ = compiled.eval(rec, &interner);
        let _ = compiled.eval_bool(rec, &interner);
    }
});
