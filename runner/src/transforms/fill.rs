//! `fill`: replace missing or null values with a constant, the key's
//! previous value, or the key's running mean.

use vigil_crds::transform::{FillSpec, FillStrategy};

use super::{BuildCtx, Ctx, Transform, field};
use crate::keyed::Keyed;
use crate::record::{FieldId, Record, Value};

#[derive(Clone, Default)]
struct Seen {
    last: Option<Value>,
    sum: f64,
    n: u64,
}

pub struct Fill {
    fields: Vec<FieldId>,
    strategy: FillStrategy,
    value: f64,
    state: Keyed<Vec<Seen>>,
}

impl Fill {
    pub fn new(spec: &FillSpec, ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        Ok(Fill {
            fields: spec.fields.iter().map(|f| field(ctx, f)).collect::<Result<_, _>>()?,
            strategy: spec.strategy,
            value: spec.value.unwrap_or(0.0),
            state: Keyed::new(ctx.max_keys),
        })
    }
}

impl Transform for Fill {
    fn apply(&mut self, mut rec: Record, ctx: &mut Ctx<'_>, out: &mut Vec<Record>) -> Result<(), String> {
        let n = self.fields.len();
        let seen = self.state.get(&rec.key, || vec![Seen::default(); n]);
        for (i, id) in self.fields.iter().enumerate() {
            let s = &mut seen[i];
            match rec.get(*id) {
                Some(v) if *v != Value::Null => {
                    if let Some(x) = v.as_f64() {
                        s.sum += x;
                        s.n += 1;
                    }
                    s.last = Some(v.clone());
                }
                _ => {
                    let filled = match self.strategy {
                        FillStrategy::Value => Value::Float(self.value),
                        FillStrategy::Previous => s.last.clone().ok_or_else(|| {
                            format!(
                                "field {:?} is missing and key {:?} has no earlier value to fill from",
                                ctx.interner.name(*id),
                                rec.key
                            )
                        })?,
                        FillStrategy::Mean if s.n > 0 => Value::Float(s.sum / s.n as f64),
                        FillStrategy::Mean => {
                            return Err(format!(
                                "field {:?} is missing and key {:?} has no earlier numbers to average",
                                ctx.interner.name(*id),
                                rec.key
                            ));
                        }
                    };
                    rec.set(*id, filled);
                }
            }
        }
        out.push(rec);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::transforms::testing::{ok, run};

    #[test]
    fn fills_with_a_constant() {
        assert_eq!(
            ok(run("fill: {fields: [v], value: 0}", &[r#"{"v": null}"#, r#"{}"#])),
            [r#"{"v":0.0}"#, r#"{"v":0.0}"#]
        );
    }

    #[test]
    fn fills_from_the_same_keys_history() {
        let inputs = [
            r#"{"v": 1, "_key": "a"}"#,
            r#"{"v": 5, "_key": "b"}"#,
            r#"{"_key": "a"}"#,
            r#"{"v": 3, "_key": "a"}"#,
            r#"{"_key": "a"}"#,
        ];
        assert_eq!(ok(run("fill: {fields: [v], strategy: previous}", &inputs))[2], r#"{"v":1}"#);
        let mean = ok(run("fill: {fields: [v], strategy: mean}", &inputs));
        assert_eq!(mean[2], r#"{"v":1.0}"#);
        assert_eq!(mean[4], r#"{"v":2.0}"#);
    }

    #[test]
    fn a_key_without_history_cannot_be_filled() {
        let out = run("fill: {fields: [v], strategy: previous}", &[r#"{"w": 1}"#]);
        assert_eq!(
            out[0],
            Err("field \"v\" is missing and key \"k\" has no earlier value to fill from".into())
        );
    }
}
