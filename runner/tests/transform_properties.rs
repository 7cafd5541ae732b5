//! Properties of the transforms, over generated inputs (proptest): select
//! then drop keeps exactly what it should, unchanged; tumbling windows
//! account for every record once and their aggregates are consistent; diff
//! and lag follow each key's own history, and a record lacking the field is
//! dead-lettered without disturbing that history.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use vigil_crds::{RecordEncoding, RecordFormat, Transform};
use vigil_runner::codec::Meta;
use vigil_runner::engine::{Engine, Event};

fn engine(transforms: serde_json::Value) -> Engine {
    let encoding: RecordEncoding = serde_json::from_value(serde_json::json!({
        "format": "json", "keyField": "k", "timestampField": "ts", "timestampFormat": "epochMillis",
    }))
    .unwrap();
    let transforms: Vec<Transform> = serde_json::from_value(transforms).unwrap();
    Engine::transform_only(&encoding, RecordFormat::Json, None, &transforms).unwrap()
}

/// Outputs (as JSON objects) and dead letters (stage, reason), in order.
fn run(engine: &mut Engine, inputs: &[serde_json::Value]) -> (Vec<serde_json::Value>, Vec<(String, String)>) {
    let (mut out, mut dead) = (Vec::new(), Vec::new());
    let mut sink = |ev: Event<'_>| match ev {
        Event::Output(o) => out.push(serde_json::from_slice(o.json).unwrap()),
        Event::Rejected(r) => dead.push((r.stage, r.reason)),
    };
    for i in inputs {
        engine.process(i.to_string().as_bytes(), Meta::default(), &mut sink);
    }
    engine.flush(&mut sink);
    (out, dead)
}

const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

fn subset() -> impl Strategy<Value = BTreeSet<&'static str>> {
    proptest::sample::subsequence(NAMES.to_vec(), 0..=NAMES.len()).prop_map(|v| v.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn select_then_drop_keeps_the_selected_fields_not_dropped_unchanged(
        present in subset(),
        selected in subset(),
        dropped in subset(),
        values in proptest::collection::vec(-1e6f64..1e6, NAMES.len()),
    ) {
        let keep: Vec<&str> = ["k", "ts"].into_iter().chain(selected.iter().copied()).collect();
        let drop: Vec<&str> = dropped.iter().copied().collect();
        let mut e = engine(serde_json::json!([
            {"select": {"fields": keep}},
            {"drop": {"fields": drop}},
        ]));
        let mut record = serde_json::Map::new();
        record.insert("k".into(), "key".into());
        record.insert("ts".into(), 1_000.into());
        for (i, n) in NAMES.iter().enumerate() {
            if present.contains(n) {
                record.insert(n.to_string(), values[i].into());
            }
        }
        let (out, dead) = run(&mut e, &[serde_json::Value::Object(record.clone())]);
        prop_assert!(dead.is_empty(), "{dead:?}");
        prop_assert_eq!(out.len(), 1);
        let got: BTreeSet<String> = out[0].as_object().unwrap().keys().filter(|k| NAMES.contains(&k.as_str())).cloned().collect();
        let want: BTreeSet<String> = present.intersection(&selected).filter(|n| !dropped.contains(*n)).map(|n| n.to_string()).collect();
        prop_assert_eq!(&got, &want);
        for n in &got {
            prop_assert_eq!(&out[0][n], &record[n], "field {} changed", n);
        }
    }

    #[test]
    fn tumbling_windows_count_every_record_once_with_consistent_aggregates(
        // Per record: the key and the time step since the previous record.
        steps in proptest::collection::vec((0usize..3, 0i64..2_500, -100.0f64..100.0), 1..120),
    ) {
        let mut e = engine(serde_json::json!([
            {"window": {"field": "v", "size": "1s", "aggregates": ["count", "sum", "mean", "min", "max"], "emit": "onClose"}},
        ]));
        let mut ts = 1_000_000i64;
        let mut inputs = Vec::new();
        let mut total = 0.0;
        for (k, dt, v) in &steps {
            ts += dt;
            total += v;
            inputs.push(serde_json::json!({"k": format!("k{k}"), "ts": ts, "v": v}));
        }
        let (out, dead) = run(&mut e, &inputs);
        prop_assert!(dead.is_empty(), "records in time order are never late: {dead:?}");
        let count: f64 = out.iter().map(|w| w["v_count"].as_f64().unwrap()).sum();
        prop_assert_eq!(count as usize, steps.len(), "every record in exactly one window");
        let sum: f64 = out.iter().map(|w| w["v_sum"].as_f64().unwrap()).sum();
        prop_assert!((sum - total).abs() < 1e-6 * (1.0 + total.abs()), "sums {sum} vs {total}");
        let mut seen = BTreeSet::new();
        for w in &out {
            let (min, mean, max) = (w["v_min"].as_f64().unwrap(), w["v_mean"].as_f64().unwrap(), w["v_max"].as_f64().unwrap());
            prop_assert!(min <= mean + 1e-9 && mean <= max + 1e-9, "{w}");
            let (start, end) = (w["window_start"].as_str().unwrap().to_string(), w["window_end"].as_str().unwrap().to_string());
            prop_assert!(start < end);
            prop_assert!(seen.insert((w["key"].to_string(), start)), "one record per key and window: {w}");
        }
    }

    #[test]
    fn diff_and_lag_follow_each_keys_history_and_skip_records_without_the_field(
        records in proptest::collection::vec((0usize..3, proptest::option::weighted(0.8, -1e3f64..1e3)), 1..80),
        periods in 1i32..4,
    ) {
        let mut e = engine(serde_json::json!([
            {"diff": {"field": "v", "periods": periods}},
            {"lag": {"field": "v", "periods": periods}},
        ]));
        let inputs: Vec<serde_json::Value> = records.iter().enumerate().map(|(i, (k, v))| match v {
            Some(v) => serde_json::json!({"k": format!("k{k}"), "ts": 1000 + i, "v": v}),
            None => serde_json::json!({"k": format!("k{k}"), "ts": 1000 + i}),
        }).collect();
        let (out, dead) = run(&mut e, &inputs);
        let gaps = records.iter().filter(|(_, v)| v.is_none()).count();
        prop_assert_eq!(dead.len(), gaps, "each record without the field is dead-lettered");
        prop_assert!(dead.iter().all(|(stage, reason)| stage == "transforms[0].diff" && reason.contains("\"v\" is missing")), "{dead:?}");
        // The model: each key's own sequence of values, gaps left out.
        let mut history: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        let mut expected = Vec::new();
        for (k, v) in &records {
            let Some(v) = v else { continue };
            let h = history.entry(*k).or_default();
            let p = periods as usize;
            expected.push(if h.len() >= p { Some((v - h[h.len() - p], h[h.len() - p])) } else { None });
            h.push(*v);
        }
        prop_assert_eq!(out.len(), expected.len());
        let lag = format!("v_lag{periods}");
        for (o, want) in out.iter().zip(&expected) {
            match want {
                None => {
                    prop_assert!(o["v_diff"].is_null() && o[&lag].is_null(), "{o}");
                }
                Some((d, l)) => {
                    prop_assert!((o["v_diff"].as_f64().unwrap() - d).abs() < 1e-9, "{o} want diff {d}");
                    prop_assert!((o[&lag].as_f64().unwrap() - l).abs() < 1e-9, "{o} want lag {l}");
                }
            }
        }
    }
}
