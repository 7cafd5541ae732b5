//! `select`: keep only the listed fields, in the listed order.

use vigil_crds::transform::FieldList;

use super::{BuildCtx, Ctx, Transform, field};
use crate::record::{FieldId, Record};

pub struct Select {
    fields: Vec<FieldId>,
}

impl Select {
    pub fn new(spec: &FieldList, ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        Ok(Select { fields: spec.fields.iter().map(|f| field(ctx, f)).collect::<Result<_, _>>()? })
    }
}

impl Transform for Select {
    fn apply(&mut self, mut rec: Record, _: &mut Ctx<'_>, out: &mut Vec<Record>) -> Result<(), String> {
        let mut kept = Vec::with_capacity(self.fields.len());
        for id in &self.fields {
            if let Some(v) = rec.remove(*id) {
                kept.push((*id, v));
            }
        }
        rec.fields = kept;
        out.push(rec);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::transforms::testing::{ok, run};

    #[test]
    fn keeps_listed_fields_in_order() {
        let out = ok(run("select: {fields: [c, a, missing]}", &[r#"{"a": 1, "b": 2, "c": 3}"#]));
        assert_eq!(out, [r#"{"c":3,"a":1}"#]);
    }
}
