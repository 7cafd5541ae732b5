//! Arbitrary bytes through the JSON decoder's direct path and through
//! serde_json alone: they must agree on every input (the same fields and
//! values, floats to the bit, or the same error).
#![no_main]

use vigil_runner::codec::json::{decode, decode_with_serde};
use vigil_runner::record::Interner;

fn outcome(data: &[u8], serde_only: bool) -> String {
    let mut interner = Interner::default();
    let mut out = Vec::new();
    let r = if serde_only {
        decode_with_serde(data, &mut interner, &mut out)
    } else {
        decode(data, &mut interner, &mut out)
    };
    match r {
        Ok(()) => out.iter().map(|(f, v)| format!("{}={v:?};", interner.name(*f))).collect(),
        Err(e) => format!("error: {e}"),
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    assert_eq!(outcome(data, false), outcome(data, true), "{}", String::from_utf8_lossy(data));
});
