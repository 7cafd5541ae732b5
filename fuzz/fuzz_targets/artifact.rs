//! Arbitrary bytes as a model artifact: the reader must refuse what is not a
//! whole, intact, consistent artifact with an error, never panic; and an
//! artifact it accepts must score a record of its width without panicking.
//! (The checksum is recomputed first, so the fuzzer reaches the body's
//! consistency checks, not only the checksum.)
#![no_main]
use sha2::{Digest, Sha256};
use vigil_runner::models::{Artifact, Model};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = Artifact::from_bytes(data, "fuzz");
    // The body alone, under a valid header: the consistency checks.
    let sum: String = Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect();
    let mut framed = format!("vigil-model 1 sha256={sum} bytes={}\n", data.len()).into_bytes();
    framed.extend_from_slice(data);
    if let Ok(artifact) = Artifact::from_bytes(&framed, "fuzz") {
        let width = artifact.metadata.features.len().min(4096);
        let model = Model { artifact };
        let mut buf = Vec::new();
        for x in [0.0, 1.0, -1e300, f64::MAX] {
            let (score, _) = model.score(&vec![x; width], &mut buf);
            assert!((0.0..=1.0).contains(&score.value) || score.value.is_nan());
        }
    }
});
