//! `flatten`: nested objects become top-level fields joined by a separator
//! (`{"a": {"b": 1}}` becomes `{"a_b": 1}`). Lists are kept as they are.

use vigil_crds::transform::FlattenSpec;

use super::{Ctx, Transform};
use crate::record::{Interner, Record, Value};

pub struct Flatten {
    separator: String,
}

impl Flatten {
    pub fn new(spec: &FlattenSpec) -> Self {
        Flatten { separator: spec.separator.clone() }
    }

    fn expand(
        &self,
        prefix: &str,
        fields: Vec<(Box<str>, Value)>,
        interner: &mut Interner,
        out: &mut Record,
    ) -> Result<(), String> {
        for (k, v) in fields {
            let name = format!("{prefix}{}{k}", self.separator);
            match v {
                Value::Map(inner) => self.expand(&name, inner, interner, out)?,
                v => out.set(interner.intern(&name).map_err(|e| e.to_string())?, v),
            }
        }
        Ok(())
    }
}

impl Transform for Flatten {
    fn apply(&mut self, mut rec: Record, ctx: &mut Ctx<'_>, out: &mut Vec<Record>) -> Result<(), String> {
        if rec.fields.iter().any(|(_, v)| matches!(v, Value::Map(_))) {
            let fields = std::mem::take(&mut rec.fields);
            for (id, v) in fields {
                match v {
                    Value::Map(inner) => {
                        let prefix = ctx.interner.name(id).to_string();
                        self.expand(&prefix, inner, ctx.interner, &mut rec)?;
                    }
                    v => rec.set(id, v),
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
    fn nested_objects_become_fields() {
        let out = ok(run("flatten: {}", &[r#"{"m": "x", "r": {"t": {"c": 21.5}, "p": 3}, "l": [1]}"#]));
        assert_eq!(out, [r#"{"m":"x","r_t_c":21.5,"r_p":3,"l":[1]}"#]);
        let out = ok(run("flatten: {separator: '.'}", &[r#"{"a": {"b": 1}}"#]));
        assert_eq!(out, [r#"{"a.b":1}"#]);
    }
}
