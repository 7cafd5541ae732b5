//! Arbitrary text as a manifest file: the YAML loader and schema checks of
//! `vigil validate`, the semantic checks, and for a Pipeline they accept,
//! the runner's start (which must not panic either).
#![no_main]
use vigil_crds::manifest::{Manifest, parse_all};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for m in parse_all(text).into_iter().flatten() {
        match m {
            Manifest::Pipeline(p) => {
                if vigil_crds::semantic::check_pipeline(&p.spec).is_empty() {
                    let _ = vigil_runner::engine::Engine::new(&p.spec, None, None);
                }
            }
            Manifest::Model(m) => {
                let _ = vigil_crds::semantic::check_model(&m.spec);
            }
            Manifest::Other { .. } => {}
        }
    }
});
