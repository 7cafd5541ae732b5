//! `filter`: keep records for which a CEL expression is true.

use vigil_crds::transform::FilterSpec;

use super::{BuildCtx, Ctx, Transform};
use crate::expr::Compiled;
use crate::record::Record;

pub struct Filter {
    expr: Compiled,
}

impl Filter {
    pub fn new(spec: &FilterSpec, ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        Ok(Filter { expr: Compiled::new(&spec.expr, ctx.interner)? })
    }
}

impl Transform for Filter {
    fn apply(&mut self, rec: Record, ctx: &mut Ctx<'_>, out: &mut Vec<Record>) -> Result<(), String> {
        if self.expr.eval_bool(&rec, ctx.interner)? {
            out.push(rec);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::transforms::testing::{ok, run};

    #[test]
    fn keeps_matching_records_and_rejects_bad_ones() {
        let out = run(
            "filter: {expr: \"cpu >= 0.5 && host.startsWith('db')\"}",
            &[
                r#"{"cpu": 0.7, "host": "db1"}"#,
                r#"{"cpu": 0.1, "host": "db1"}"#,
                r#"{"host": "db1"}"#,
                r#"{"cpu": 1, "host": "web"}"#,
            ],
        );
        assert_eq!(out[0], Ok(r#"{"cpu":0.7,"host":"db1"}"#.to_string()));
        assert_eq!(
            out[1],
            Err("no such field: cpu".to_string()),
            "the 0.1 record is dropped, the third errors"
        );
        assert_eq!(out.len(), 2);
        assert!(ok(run("filter: {expr: \"x\"}", &[r#"{"x": true}"#])).len() == 1);
        assert_eq!(
            run("filter: {expr: \"x\"}", &[r#"{"x": 1}"#])[0],
            Err("expression must be true or false, got integer 1".into())
        );
    }
}
