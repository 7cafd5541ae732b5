//! `window`: aggregates of a field over event-time windows per key.
//!
//! `emit: onClose` keeps windows aligned to the epoch (tumbling when `slide`
//! is absent, hopping when it is smaller than `size`) and emits one record
//! per key and window once a later record of that key passes the window's
//! end, or the input ends. A record older than every window it belongs to is
//! late and is dead-lettered (nothing is silently dropped). `emit:
//! eachRecord` passes every record through with the aggregates of the `size`
//! before it added.
//!
//! Window contents are not checkpointed, and this bends the delivery
//! guarantee: a record absorbed into an open window counts as processed, so
//! its offset is committed before the window emits. A restart, a rebalance
//! or a rollout starts open windows afresh, and a key evicted from the
//! per-key state (beyond `maxKeys`) loses its open windows; records already
//! committed are not replayed into them.

use std::collections::{BTreeMap, VecDeque};

use vigil_crds::duration::parse_duration;
use vigil_crds::transform::{Aggregate, MAX_WINDOWS_PER_RECORD, WindowEmit, WindowSpec};

use super::{BuildCtx, Ctx, Transform, field};
use crate::codec::time::format_rfc3339;
use crate::keyed::Keyed;
use crate::record::{FieldId, Record, Value};

/// Most records an `eachRecord` window keeps per key; older ones leave it
/// early when a key sends faster than this per window.
const MAX_RECENT: usize = 100_000;

#[derive(Clone, Copy)]
struct Agg {
    count: u64,
    sum: f64,
    sumsq: f64,
    min: f64,
    max: f64,
}

impl Default for Agg {
    fn default() -> Self {
        Agg { count: 0, sum: 0.0, sumsq: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY }
    }
}

impl Agg {
    fn add(&mut self, x: Option<f64>) {
        self.count += 1;
        if let Some(x) = x {
            self.sum += x;
            self.sumsq += x * x;
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
    }

    fn value(&self, a: Aggregate, size_secs: f64) -> Value {
        let n = self.count as f64;
        match a {
            Aggregate::Count => Value::Int(self.count as i64),
            Aggregate::Rate => Value::Float(n / size_secs),
            Aggregate::Sum => Value::Float(self.sum),
            _ if self.count == 0 => Value::Null,
            Aggregate::Mean => Value::Float(self.sum / n),
            Aggregate::Min => Value::Float(self.min),
            Aggregate::Max => Value::Float(self.max),
            Aggregate::Std => {
                let mean = self.sum / n;
                Value::Float((self.sumsq / n - mean * mean).max(0.0).sqrt())
            }
        }
    }
}

struct KeyState {
    open: BTreeMap<i64, Agg>,
    /// Latest event time seen for the key.
    watermark: i64,
    recent: VecDeque<(i64, Option<f64>)>,
}

impl Default for KeyState {
    fn default() -> Self {
        KeyState { open: BTreeMap::new(), watermark: i64::MIN, recent: VecDeque::new() }
    }
}

pub struct Window {
    field: FieldId,
    size: i64,
    slide: i64,
    emit: WindowEmit,
    outputs: Vec<(Aggregate, FieldId)>,
    numeric: bool,
    key_field: FieldId,
    start_field: FieldId,
    end_field: FieldId,
    state: Keyed<KeyState>,
}

impl Window {
    pub fn new(spec: &WindowSpec, ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let ms = |s: &str| -> Result<i64, String> {
            let d = parse_duration(s).map_err(|e| e.to_string())?;
            i64::try_from(d.as_millis())
                .ok()
                .filter(|m| *m > 0)
                .ok_or_else(|| format!("window duration {s} must be positive"))
        };
        let size = ms(&spec.size)?;
        let slide = spec.slide.as_deref().map(ms).transpose()?.unwrap_or(size);
        if slide > size || size % slide != 0 {
            return Err(format!("window slide {} must be at most size {} and divide it", slide, size));
        }
        // Each record belongs to size/slide windows: bound the work per record.
        if (size / slide) as u128 > MAX_WINDOWS_PER_RECORD {
            return Err(format!(
                "window size {} is more than {MAX_WINDOWS_PER_RECORD} slides of {}: use a longer slide",
                spec.size,
                spec.slide.as_deref().unwrap_or_default()
            ));
        }
        let outputs = spec
            .aggregates
            .iter()
            .map(|a| Ok((*a, field(ctx, &format!("{}_{}", spec.field, a.suffix()))?)))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Window {
            field: field(ctx, &spec.field)?,
            size,
            slide,
            emit: spec.emit,
            numeric: spec.aggregates.iter().any(|a| !matches!(a, Aggregate::Count | Aggregate::Rate)),
            outputs,
            key_field: field(ctx, "key")?,
            start_field: field(ctx, "window_start")?,
            end_field: field(ctx, "window_end")?,
            state: Keyed::new(ctx.max_keys),
        })
    }

    fn closed(&self, key: &str, start: i64, agg: &Agg) -> Record {
        let end = start + self.size;
        let mut fields = vec![
            (self.key_field, Value::Str(key.into())),
            (self.start_field, Value::Str(format_rfc3339(start).into())),
            (self.end_field, Value::Str(format_rfc3339(end).into())),
        ];
        let secs = self.size as f64 / 1000.0;
        fields.extend(self.outputs.iter().map(|(a, id)| (*id, agg.value(*a, secs))));
        Record { fields, key: key.into(), ts_ms: end }
    }
}

impl Transform for Window {
    fn apply(&mut self, mut rec: Record, ctx: &mut Ctx<'_>, out: &mut Vec<Record>) -> Result<(), String> {
        let value = match rec.get(self.field) {
            Some(v) => match v.as_f64() {
                Some(x) => Some(x),
                None if !self.numeric => None,
                None => {
                    return Err(format!(
                        "window field {:?} is not a number: {}",
                        ctx.interner.name(self.field),
                        v.describe()
                    ));
                }
            },
            None if !self.numeric => None,
            None => return Err(format!("window field {:?} is missing", ctx.interner.name(self.field))),
        };
        let ts = rec.ts_ms;
        let (size, slide) = (self.size, self.slide);
        let st = self.state.get(&rec.key, KeyState::default);
        if self.emit == WindowEmit::EachRecord {
            st.recent.push_back((ts, value));
            while st.recent.front().is_some_and(|(t, _)| *t <= ts - size) || st.recent.len() > MAX_RECENT {
                st.recent.pop_front();
            }
            let mut agg = Agg::default();
            st.recent.iter().filter(|(t, _)| *t <= ts).for_each(|(_, x)| agg.add(*x));
            for (a, id) in &self.outputs {
                rec.set(*id, agg.value(*a, size as f64 / 1000.0));
            }
            out.push(rec);
            return Ok(());
        }
        st.watermark = st.watermark.max(ts);
        let watermark = st.watermark;
        let mut closing = Vec::new();
        while let Some((&start, _)) = st.open.first_key_value() {
            if start + size > watermark {
                break;
            }
            if let Some((start, agg)) = st.open.pop_first() {
                closing.push((start, agg));
            }
        }
        let mut placed = false;
        let mut start = ts.div_euclid(slide) * slide;
        while start > ts - size {
            if start + size > watermark {
                st.open.entry(start).or_default().add(value);
                placed = true;
            }
            start -= slide;
        }
        let key = rec.key.clone();
        for (start, agg) in closing {
            out.push(self.closed(&key, start, &agg));
        }
        if !placed {
            return Err(format!(
                "late record: every window containing {} has already closed for key {:?} (latest event time {})",
                format_rfc3339(ts),
                key,
                format_rfc3339(watermark)
            ));
        }
        Ok(())
    }

    fn flush(&mut self, _: &mut Ctx<'_>, out: &mut Vec<Record>) {
        let mut all = Vec::new();
        for (key, st) in self.state.iter_mut() {
            for (start, agg) in std::mem::take(&mut st.open) {
                all.push((key.clone(), start, agg));
            }
        }
        all.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        out.extend(all.iter().map(|(k, s, a)| self.closed(k, *s, a)));
    }
}

#[cfg(test)]
mod tests {
    use crate::transforms::testing::{ok, run};

    fn at(ms: i64, v: f64) -> String {
        format!(r#"{{"v": {v:?}, "_ts": {ms}}}"#)
    }

    #[test]
    fn tumbling_windows_emit_when_the_next_window_starts_and_at_the_end() {
        let inputs: Vec<String> = [(0, 1.0), (400, 3.0), (999, 5.0), (1000, 10.0), (2500, 7.0)]
            .iter()
            .map(|(t, v)| at(*t, *v))
            .collect();
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let out = ok(run(
            "window: {field: v, size: 1s, aggregates: [count, mean, min, max, std, sum, rate]}",
            &refs,
        ));
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[0],
            r#"{"key":"k","window_start":"1970-01-01T00:00:00.000Z","window_end":"1970-01-01T00:00:01.000Z","v_count":3,"v_mean":3.0,"v_min":1.0,"v_max":5.0,"v_std":1.6329931618554518,"v_sum":9.0,"v_rate":3.0}"#
        );
        assert!(out[1].contains(r#""v_count":1,"v_mean":10.0"#), "{}", out[1]);
        assert!(
            out[2].contains(r#""window_start":"1970-01-01T00:00:02.000Z""#),
            "flushed at end: {}",
            out[2]
        );
    }

    #[test]
    fn sliding_windows_overlap() {
        let inputs: Vec<String> =
            [(0, 1.0), (500, 2.0), (1000, 3.0), (1500, 4.0)].iter().map(|(t, v)| at(*t, *v)).collect();
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let out = ok(run("window: {field: v, size: 1s, slide: 500ms, aggregates: [sum]}", &refs));
        let sums: Vec<&str> =
            out.iter().map(|o| o.split("\"v_sum\":").nth(1).unwrap().trim_end_matches('}')).collect();
        // Windows starting at -0.5s, 0, 0.5s, 1s, 1.5s.
        assert_eq!(sums, ["1.0", "3.0", "5.0", "7.0", "4.0"]);
    }

    #[test]
    fn late_records_are_refused_not_lost() {
        let out = run("window: {field: v, size: 1s, aggregates: [count]}", &[&at(5000, 1.0), &at(1000, 1.0)]);
        assert!(out[0].as_ref().unwrap_err().starts_with("late record"), "{out:?}");
    }

    #[test]
    fn each_record_carries_its_trailing_window() {
        let inputs: Vec<String> =
            [(0, 1.0), (500, 3.0), (1200, 5.0)].iter().map(|(t, v)| at(*t, *v)).collect();
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let out = ok(run("window: {field: v, size: 1s, aggregates: [mean, count], emit: eachRecord}", &refs));
        assert_eq!(out[2], r#"{"v":5.0,"v_mean":4.0,"v_count":2}"#);
    }

    #[test]
    fn non_numeric_values_are_refused_for_numeric_aggregates() {
        let out = run("window: {field: v, size: 1s, aggregates: [mean]}", &[r#"{"v": "high"}"#]);
        assert_eq!(out[0], Err("window field \"v\" is not a number: string \"high\"".into()));
        let counted = ok(run("window: {field: v, size: 1s, aggregates: [count]}", &[r#"{"v": "high"}"#]));
        assert!(counted[0].contains("\"v_count\":1"));
    }
}
