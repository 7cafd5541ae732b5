//! `flatten`: nested objects become top-level fields joined by a separator
//! (`{"a": {"b": 1}}` becomes `{"a_b": 1}`). Lists are kept as they are.

use vigil_crds::transform::FlattenSpec;

use super::{Ctx, Transform};
use crate::record::{FieldId, Interner, Record, Value};

pub struct Flatten {
    separator: String,
    /// The joined name being built (reused: no allocation per field).
    name: String,
    /// The name and id produced at each output position of the previous
    /// record: records of one stream nest the same way, so comparing the
    /// joined name with the prediction usually replaces a hash lookup.
    recent: Vec<(Box<str>, FieldId)>,
    /// A record's field vector, kept for the next record.
    spare: Vec<(FieldId, Value)>,
}

impl Flatten {
    pub fn new(spec: &FlattenSpec) -> Self {
        Flatten {
            separator: spec.separator.clone(),
            name: String::new(),
            recent: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// The id of the joined name in `self.name`, the `position`-th produced
    /// for this record.
    fn intern(&mut self, position: usize, interner: &mut Interner) -> Result<FieldId, String> {
        if let Some((name, id)) = self.recent.get(position) {
            if **name == *self.name {
                return Ok(*id);
            }
        }
        let id = interner.intern(&self.name).map_err(|e| e.to_string())?;
        let entry = (Box::from(self.name.as_str()), id);
        if position < self.recent.len() {
            self.recent[position] = entry;
        } else if position == self.recent.len() && position < 1024 {
            self.recent.push(entry);
        }
        Ok(id)
    }

    /// Flatten `fields` under the prefix in `self.name`.
    fn expand(
        &mut self,
        fields: Vec<(Box<str>, Value)>,
        position: &mut usize,
        interner: &mut Interner,
        out: &mut Record,
    ) -> Result<(), String> {
        let prefix_len = self.name.len();
        for (k, v) in fields {
            self.name.truncate(prefix_len);
            self.name.push_str(&self.separator);
            self.name.push_str(&k);
            match v {
                Value::Map(inner) => self.expand(inner, position, interner, out)?,
                v => {
                    let id = self.intern(*position, interner)?;
                    *position += 1;
                    out.set(id, v);
                }
            }
        }
        self.name.truncate(prefix_len);
        Ok(())
    }
}

impl Transform for Flatten {
    fn apply(&mut self, mut rec: Record, ctx: &mut Ctx<'_>, out: &mut Vec<Record>) -> Result<(), String> {
        if rec.fields.iter().any(|(_, v)| matches!(v, Value::Map(_))) {
            // The flattened fields go into the previous record's vector, so
            // neither allocates once records have the stream's shape.
            let mut fields = std::mem::replace(&mut rec.fields, std::mem::take(&mut self.spare));
            rec.fields.clear();
            let mut position = 0;
            for (id, v) in fields.drain(..) {
                match v {
                    Value::Map(inner) => {
                        self.name.clear();
                        self.name.push_str(ctx.interner.name(id));
                        self.expand(inner, &mut position, ctx.interner, &mut rec)?;
                    }
                    v => rec.set(id, v),
                }
            }
            self.spare = fields;
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

    #[test]
    fn records_that_nest_differently_keep_their_own_names() {
        let out = ok(run(
            "flatten: {}",
            &[
                r#"{"a": {"b": 1, "c": 2}, "d": {"e": 3}}"#,
                r#"{"a": {"c": 4, "b": 5}, "d": 6}"#,
                r#"{"d": {"e": {"f": 7}}, "a": {"b": 8}}"#,
                r#"{"a": {"b": 9, "c": 10}, "d": {"e": 11}}"#,
            ],
        ));
        assert_eq!(
            out,
            [
                r#"{"a_b":1,"a_c":2,"d_e":3}"#,
                r#"{"a_c":4,"a_b":5,"d":6}"#,
                r#"{"d_e_f":7,"a_b":8}"#,
                r#"{"a_b":9,"a_c":10,"d_e":11}"#,
            ]
        );
    }
}
