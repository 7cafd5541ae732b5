//! `derive`: set a field to the value of a CEL expression.

use vigil_crds::transform::DeriveSpec;

use super::{BuildCtx, Ctx, Transform, field};
use crate::expr::Compiled;
use crate::record::{FieldId, Record};

pub struct Derive {
    field: FieldId,
    expr: Compiled,
}

impl Derive {
    pub fn new(spec: &DeriveSpec, ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        Ok(Derive { field: field(ctx, &spec.field)?, expr: Compiled::new(&spec.expr, ctx.interner)? })
    }
}

impl Transform for Derive {
    fn apply(&mut self, mut rec: Record, ctx: &mut Ctx<'_>, out: &mut Vec<Record>) -> Result<(), String> {
        let value = self.expr.eval(&rec, ctx.interner)?.into_owned();
        rec.set(self.field, value);
        out.push(rec);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::transforms::testing::{ok, run};

    #[test]
    fn adds_or_overwrites_a_field() {
        let out = ok(run(
            "derive: {field: ratio, expr: \"a / b\"}",
            &[r#"{"a": 1.0, "b": 4}"#, r#"{"a": 3, "b": 1, "ratio": 9}"#],
        ));
        assert_eq!(out, [r#"{"a":1.0,"b":4,"ratio":0.25}"#, r#"{"a":3,"b":1,"ratio":3}"#]);
        assert_eq!(
            run("derive: {field: r, expr: \"a / b\"}", &[r#"{"a": 1, "b": 0}"#])[0],
            Err("division by zero".into())
        );
    }
}
