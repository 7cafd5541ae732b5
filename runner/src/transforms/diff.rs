//! `diff` and `lag` (siblings, one runtime): the value of a field `periods`
//! records earlier for the same key, or the difference to it. Until a key has
//! that much history the output is null, which detectors treat as "not
//! scored yet" rather than as an error.

use std::collections::VecDeque;

use vigil_crds::transform::LagSpec;

use super::{BuildCtx, Ctx, Transform, field};
use crate::keyed::Keyed;
use crate::record::{FieldId, Record, Value};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Diff,
    Lag,
}

pub struct Diff {
    kind: Kind,
    field: FieldId,
    output: FieldId,
    periods: usize,
    history: Keyed<VecDeque<f64>>,
}

impl Diff {
    pub fn new(spec: &LagSpec, kind: Kind, ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let periods = usize::try_from(spec.periods).unwrap_or(1).max(1);
        let default = match kind {
            Kind::Diff => format!("{}_diff", spec.field),
            Kind::Lag => format!("{}_lag{periods}", spec.field),
        };
        Ok(Diff {
            kind,
            field: field(ctx, &spec.field)?,
            output: field(ctx, spec.output.as_deref().unwrap_or(&default))?,
            periods,
            history: Keyed::new(ctx.max_keys),
        })
    }
}

impl Transform for Diff {
    fn apply(&mut self, mut rec: Record, ctx: &mut Ctx<'_>, out: &mut Vec<Record>) -> Result<(), String> {
        let name = || ctx.interner.name(self.field).to_string();
        let x = match rec.get(self.field) {
            Some(v) => {
                v.as_f64().ok_or_else(|| format!("field {:?} is not a number: {}", name(), v.describe()))?
            }
            None => return Err(format!("field {:?} is missing", name())),
        };
        let periods = self.periods;
        let h = self.history.get(&rec.key, || VecDeque::with_capacity(periods + 1));
        let earlier = if h.len() == periods { h.front().copied() } else { None };
        h.push_back(x);
        if h.len() > periods {
            h.pop_front();
        }
        let value = match (earlier, self.kind) {
            (None, _) => Value::Null,
            (Some(e), Kind::Diff) => Value::Float(x - e),
            (Some(e), Kind::Lag) => Value::Float(e),
        };
        rec.set(self.output, value);
        out.push(rec);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::transforms::testing::{ok, run};

    #[test]
    fn differences_and_lags_per_key() {
        let inputs = [
            r#"{"v": 1, "_key": "a"}"#,
            r#"{"v": 10, "_key": "b"}"#,
            r#"{"v": 4, "_key": "a"}"#,
            r#"{"v": 9, "_key": "a"}"#,
        ];
        let d = ok(run("diff: {field: v}", &inputs));
        assert_eq!(
            d,
            [
                r#"{"v":1,"v_diff":null}"#,
                r#"{"v":10,"v_diff":null}"#,
                r#"{"v":4,"v_diff":3.0}"#,
                r#"{"v":9,"v_diff":5.0}"#
            ]
        );
        let l = ok(run("lag: {field: v, periods: 2, output: before}", &inputs));
        assert_eq!(l[3], r#"{"v":9,"before":1.0}"#);
    }

    #[test]
    fn missing_values_are_refused() {
        assert_eq!(run("diff: {field: v}", &["{}"])[0], Err("field \"v\" is missing".into()));
    }
}
