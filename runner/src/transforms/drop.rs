//! `drop`: remove the listed fields.

use vigil_crds::transform::FieldList;

use super::{BuildCtx, Ctx, Transform, field};
use crate::record::{FieldId, Record};

pub struct Drop {
    fields: Vec<FieldId>,
}

impl Drop {
    pub fn new(spec: &FieldList, ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        Ok(Drop { fields: spec.fields.iter().map(|f| field(ctx, f)).collect::<Result<_, _>>()? })
    }
}

impl Transform for Drop {
    fn apply(&mut self, mut rec: Record, _: &mut Ctx<'_>, out: &mut Vec<Record>) -> Result<(), String> {
        rec.fields.retain(|(id, _)| !self.fields.contains(id));
        out.push(rec);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::transforms::testing::{ok, run};

    #[test]
    fn removes_listed_fields() {
        assert_eq!(ok(run("drop: {fields: [b, nope]}", &[r#"{"a": 1, "b": 2}"#])), [r#"{"a":1}"#]);
    }
}
