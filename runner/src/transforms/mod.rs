//! Transforms: one file per verb, each a config (in `vigil_crds::transform`)
//! and a runtime struct implementing `Transform`. `build` is the one place a
//! verb is registered.

mod cast;
mod derive;
mod diff;
mod drop;
mod encode;
mod fill;
mod filter;
mod flatten;
mod rename;
mod select;
mod standardize;
mod window;

use vigil_crds::transform::Transform as Spec;

use crate::record::{Interner, Record};

/// What a transform needs besides the record.
pub struct Ctx<'a> {
    /// Field names; transforms that create fields from data (flatten) add to it.
    pub interner: &'a mut Interner,
}

/// A step of the pipeline.
pub trait Transform: Send {
    /// Apply to one record: push what continues onto `out` (nothing drops it,
    /// several are possible when a window closes). An error dead-letters the
    /// record with the message.
    fn apply(&mut self, rec: Record, ctx: &mut Ctx<'_>, out: &mut Vec<Record>) -> Result<(), String>;

    /// The input has ended: push anything held back (open windows).
    fn flush(&mut self, _ctx: &mut Ctx<'_>, _out: &mut Vec<Record>) {}
}

/// Settings shared by every transform of a pipeline.
pub struct BuildCtx<'a> {
    /// Field names.
    pub interner: &'a mut Interner,
    /// Bound on per-key state (the detector's `maxKeys`).
    pub max_keys: usize,
}

/// The verb of a transform spec, for stage names (`transforms[2].cast`).
pub fn verb(spec: &Spec) -> &'static str {
    match spec {
        Spec::Filter(_) => "filter",
        Spec::Derive(_) => "derive",
        Spec::Select(_) => "select",
        Spec::Drop(_) => "drop",
        Spec::Rename(_) => "rename",
        Spec::Cast(_) => "cast",
        Spec::Fill(_) => "fill",
        Spec::Flatten(_) => "flatten",
        Spec::Window(_) => "window",
        Spec::Diff(_) => "diff",
        Spec::Lag(_) => "lag",
        Spec::Standardize(_) => "standardize",
        Spec::Encode(_) => "encode",
    }
}

/// Build the runtime of one transform.
pub fn build(spec: &Spec, ctx: &mut BuildCtx<'_>) -> Result<Box<dyn Transform>, String> {
    Ok(match spec {
        Spec::Filter(c) => Box::new(filter::Filter::new(c, ctx)?),
        Spec::Derive(c) => Box::new(derive::Derive::new(c, ctx)?),
        Spec::Select(c) => Box::new(select::Select::new(c, ctx)?),
        Spec::Drop(c) => Box::new(drop::Drop::new(c, ctx)?),
        Spec::Rename(c) => Box::new(rename::Rename::new(c, ctx)?),
        Spec::Cast(c) => Box::new(cast::Cast::new(c, ctx)?),
        Spec::Fill(c) => Box::new(fill::Fill::new(c, ctx)?),
        Spec::Flatten(c) => Box::new(flatten::Flatten::new(c)),
        Spec::Window(c) => Box::new(window::Window::new(c, ctx)?),
        Spec::Diff(c) => Box::new(diff::Diff::new(c, diff::Kind::Diff, ctx)?),
        Spec::Lag(c) => Box::new(diff::Diff::new(c, diff::Kind::Lag, ctx)?),
        Spec::Standardize(c) => Box::new(standardize::Standardize::new(c, ctx)?),
        Spec::Encode(c) => Box::new(encode::Encode::new(c, ctx)?),
    })
}

/// Intern a field name at build time.
fn field(ctx: &mut BuildCtx<'_>, name: &str) -> Result<crate::record::FieldId, String> {
    ctx.interner.intern(name).map_err(|e| e.to_string())
}

#[cfg(test)]
pub(crate) mod testing {
    //! Run transforms over JSON records in tests.
    use super::*;
    use crate::codec::json;

    /// Build `yaml` (one transform), feed `inputs` (JSON objects, all with
    /// key `k` unless they carry `"_key"`), flush, and return outputs as JSON.
    pub fn run(yaml: &str, inputs: &[&str]) -> Vec<Result<String, String>> {
        // Through JSON, as manifests are read: serde_yaml 0.9 wants YAML tags
        // for enums, Kubernetes manifests use single-key maps.
        let value: serde_json::Value = serde_yaml::from_str(yaml).expect("transform yaml");
        let spec: Spec = serde_json::from_value(value).expect("transform spec");
        let mut interner = Interner::default();
        let mut t = build(&spec, &mut BuildCtx { interner: &mut interner, max_keys: 100 }).expect("builds");
        let key_id = interner.intern("_key").unwrap();
        let ts_id = interner.intern("_ts").unwrap();
        let mut results = Vec::new();
        let mut out = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            let mut rec = Record::default();
            json::decode(input.as_bytes(), &mut interner, &mut rec.fields).expect("test input is JSON");
            rec.key = match rec.remove(key_id) {
                Some(crate::record::Value::Str(k)) => k.into(),
                _ => "k".into(),
            };
            rec.ts_ms = match rec.remove(ts_id) {
                Some(crate::record::Value::Int(t)) => t,
                _ => i as i64 * 1000,
            };
            out.clear();
            match t.apply(rec, &mut Ctx { interner: &mut interner }, &mut out) {
                Ok(()) => results.extend(out.drain(..).map(|r| Ok(render(&r, &interner)))),
                Err(e) => results.push(Err(e)),
            }
        }
        out.clear();
        t.flush(&mut Ctx { interner: &mut interner }, &mut out);
        results.extend(out.drain(..).map(|r| Ok(render(&r, &interner))));
        results
    }

    fn render(r: &Record, interner: &Interner) -> String {
        let mut buf = Vec::new();
        json::write_record(&mut buf, &r.fields, interner).unwrap();
        String::from_utf8(buf).unwrap()
    }

    pub fn ok(results: Vec<Result<String, String>>) -> Vec<String> {
        results.into_iter().map(|r| r.expect("transform succeeded")).collect()
    }
}
