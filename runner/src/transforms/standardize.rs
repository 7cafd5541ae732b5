//! `standardize`: the running z-score of numeric fields per key, against the
//! mean and standard deviation of that key's earlier values (so an outlier
//! does not dampen its own score). 0 until a key has two values.

use vigil_crds::transform::StandardizeSpec;

use super::{BuildCtx, Ctx, Transform, field};
use crate::keyed::Keyed;
use crate::record::{FieldId, Record, Value};

#[derive(Clone, Copy, Default)]
struct Welford {
    n: f64,
    mean: f64,
    m2: f64,
}

impl Welford {
    fn add(&mut self, x: f64) {
        self.n += 1.0;
        let d = x - self.mean;
        self.mean += d / self.n;
        self.m2 += d * (x - self.mean);
    }
    fn z(&self, x: f64) -> f64 {
        if self.n < 2.0 {
            return 0.0;
        }
        let sd = (self.m2 / self.n).sqrt();
        if sd > 0.0 { (x - self.mean) / sd } else { 0.0 }
    }
}

pub struct Standardize {
    fields: Vec<(FieldId, FieldId)>,
    state: Keyed<Vec<Welford>>,
}

impl Standardize {
    pub fn new(spec: &StandardizeSpec, ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let fields = spec
            .fields
            .iter()
            .map(|f| Ok((field(ctx, f)?, field(ctx, &format!("{f}{}", spec.suffix))?)))
            .collect::<Result<_, String>>()?;
        Ok(Standardize { fields, state: Keyed::new(ctx.max_keys) })
    }
}

impl Transform for Standardize {
    fn apply(&mut self, mut rec: Record, ctx: &mut Ctx<'_>, out: &mut Vec<Record>) -> Result<(), String> {
        let n = self.fields.len();
        let stats = self.state.get(&rec.key, || vec![Welford::default(); n]);
        let mut zs = Vec::with_capacity(n);
        for (i, (id, _)) in self.fields.iter().enumerate() {
            let x = match rec.get(*id) {
                Some(v) => v.as_f64().ok_or_else(|| {
                    format!("field {:?} is not a number: {}", ctx.interner.name(*id), v.describe())
                })?,
                None => return Err(format!("field {:?} is missing", ctx.interner.name(*id))),
            };
            zs.push(stats[i].z(x));
            stats[i].add(x);
        }
        for ((_, out_id), z) in self.fields.iter().zip(zs) {
            rec.set(*out_id, Value::Float(z));
        }
        out.push(rec);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::transforms::testing::{ok, run};

    #[test]
    fn scores_against_earlier_values() {
        let out = ok(run("standardize: {fields: [v]}", &[r#"{"v": 1}"#, r#"{"v": 3}"#, r#"{"v": 5}"#]));
        assert_eq!(out[0], r#"{"v":1,"v_z":0.0}"#);
        // Earlier values 1 and 3: mean 2, sd 1, so 5 is 3 standard deviations out.
        assert_eq!(out[2], r#"{"v":5,"v_z":3.0}"#);
        let in_place = ok(run("standardize: {fields: [v], suffix: ''}", &[r#"{"v": 1}"#]));
        assert_eq!(in_place[0], r#"{"v":0.0}"#);
    }
}
