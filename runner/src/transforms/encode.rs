//! `encode`: categorical values as numbers, one-hot over listed categories
//! (plus `<field>_other`) or hashed into buckets (FNV-1a, stable across
//! versions and machines).

use vigil_crds::transform::{EncodeMethod, EncodeSpec};

use super::{BuildCtx, Ctx, Transform, field};
use crate::record::{FieldId, Record, Value};

pub struct Encode {
    field: FieldId,
    method: EncodeMethod,
    categories: Vec<(String, FieldId)>,
    other: FieldId,
    buckets: Vec<FieldId>,
    drop_original: bool,
}

impl Encode {
    pub fn new(spec: &EncodeSpec, ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let f = &spec.field;
        let categories = spec
            .categories
            .iter()
            .flatten()
            .map(|c| Ok((c.clone(), field(ctx, &format!("{f}_{c}"))?)))
            .collect::<Result<_, String>>()?;
        let buckets = match spec.method {
            EncodeMethod::Hashing => {
                (0..spec.buckets).map(|b| field(ctx, &format!("{f}_h{b}"))).collect::<Result<_, _>>()?
            }
            EncodeMethod::OneHot => Vec::new(),
        };
        Ok(Encode {
            field: field(ctx, f)?,
            method: spec.method,
            categories,
            other: field(ctx, &format!("{f}_other"))?,
            buckets,
            drop_original: spec.drop_original,
        })
    }
}

/// FNV-1a, 64 bit.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

impl Transform for Encode {
    fn apply(&mut self, mut rec: Record, ctx: &mut Ctx<'_>, out: &mut Vec<Record>) -> Result<(), String> {
        let category = match rec.get(self.field) {
            Some(Value::Str(s)) => s.to_string(),
            Some(v @ (Value::Int(_) | Value::Bool(_))) => v.to_string(),
            Some(other) => {
                return Err(format!(
                    "field {:?} is not a category: {}",
                    ctx.interner.name(self.field),
                    other.describe()
                ));
            }
            None => return Err(format!("field {:?} is missing", ctx.interner.name(self.field))),
        };
        if self.drop_original {
            rec.remove(self.field);
        }
        match self.method {
            EncodeMethod::OneHot => {
                let mut matched = false;
                for (c, id) in &self.categories {
                    let hit = *c == category;
                    matched |= hit;
                    rec.set(*id, Value::Int(hit as i64));
                }
                rec.set(self.other, Value::Int(!matched as i64));
            }
            EncodeMethod::Hashing => {
                let hit = (fnv1a(&category) % self.buckets.len() as u64) as usize;
                for (i, id) in self.buckets.iter().enumerate() {
                    rec.set(*id, Value::Int((i == hit) as i64));
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
    fn one_hot_with_an_other_column() {
        let out = ok(run(
            "encode: {field: r, categories: [eu, us]}",
            &[r#"{"r": "us"}"#, r#"{"r": "ap", "x": 1}"#],
        ));
        assert_eq!(out, [r#"{"r_eu":0,"r_us":1,"r_other":0}"#, r#"{"x":1,"r_eu":0,"r_us":0,"r_other":1}"#]);
    }

    #[test]
    fn hashing_is_stable() {
        let out = ok(run(
            "encode: {field: r, method: hashing, buckets: 4, dropOriginal: false}",
            &[r#"{"r": "eu"}"#, r#"{"r": "eu"}"#],
        ));
        assert_eq!(out[0], out[1]);
        assert_eq!(out[0].matches(":1").count(), 1, "exactly one bucket set: {}", out[0]);
        // The bucket must not change between releases: FNV-1a("eu") is fixed.
        assert_eq!(super::fnv1a("eu"), 0x088e_3f07_b539_528f);
        assert!(out[0].contains(r#""r_h3":1"#), "{}", out[0]);
    }
}
