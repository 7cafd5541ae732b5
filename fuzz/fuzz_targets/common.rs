// Shared by the fuzz targets (included with `include!`).

use vigil_runner::codec::Meta;
use vigil_runner::engine::{Engine, Event};

/// Run one record through an engine: no panic, and every scored record is
/// valid JSON that keeps the score in [0, 1].
#[allow(dead_code)]
fn check_record(engine: &mut Engine, bytes: &[u8]) {
    engine.process(bytes, Meta { key: Some(b"k"), ts_ms: 1_764_000_000_000 }, &mut |ev| {
        if let Event::Output(o) = ev {
            let v: serde_json::Value = serde_json::from_slice(o.json)
                .unwrap_or_else(|e| panic!("invalid output JSON ({e}): {}", String::from_utf8_lossy(o.json)));
            if let Some(score) = v["anomaly"]["score"].as_f64() {
                assert!((0.0..=1.0).contains(&score), "score {score} out of [0, 1]");
            }
        }
    });
}

#[allow(dead_code)]
fn engine(manifest: &str) -> Engine {
    let p = vigil_crds::manifest::single_pipeline(manifest).expect("the target's pipeline is valid");
    Engine::new(&p.spec, None, None).expect("the target's pipeline builds")
}

/// Run `data` through the engine built once per thread from `manifest`.
#[allow(dead_code)]
fn fuzz_engine(manifest: &'static str, data: &[u8]) {
    thread_local! {
        static ENGINE: std::cell::RefCell<Option<Engine>> = const { std::cell::RefCell::new(None) };
    }
    ENGINE.with(|e| {
        let mut e = e.borrow_mut();
        check_record(e.get_or_insert_with(|| engine(manifest)), data);
    });
}
