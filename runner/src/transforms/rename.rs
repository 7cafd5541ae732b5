//! `rename`: give fields new names.

use vigil_crds::transform::RenameSpec;

use super::{BuildCtx, Ctx, Transform, field};
use crate::record::{FieldId, Record};

pub struct Rename {
    pairs: Vec<(FieldId, FieldId)>,
}

impl Rename {
    pub fn new(spec: &RenameSpec, ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let pairs = spec.fields.iter().map(|(old, new)| Ok((field(ctx, old)?, field(ctx, new)?)));
        Ok(Rename { pairs: pairs.collect::<Result<_, String>>()? })
    }
}

impl Transform for Rename {
    fn apply(&mut self, mut rec: Record, _: &mut Ctx<'_>, out: &mut Vec<Record>) -> Result<(), String> {
        for (old, new) in &self.pairs {
            // `set` replaces a field already called `new`.
            if let Some(v) = rec.remove(*old) {
                rec.set(*new, v);
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
    fn renames_and_replaces_an_existing_field() {
        assert_eq!(ok(run("rename: {fields: {a: x}}", &[r#"{"a": 1, "b": 2}"#])), [r#"{"b":2,"x":1}"#]);
        assert_eq!(ok(run("rename: {fields: {a: b}}", &[r#"{"b": 2, "a": 1}"#])), [r#"{"b":1}"#]);
        assert_eq!(ok(run("rename: {fields: {nope: x}}", &[r#"{"a": 1}"#])), [r#"{"a":1}"#]);
    }
}
