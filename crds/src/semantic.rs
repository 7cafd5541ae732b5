//! Checks the schema cannot express: that every field a transform or the
//! detector reads is still there when it runs.
//!
//! Fields are tracked through the transforms in order. When the input's
//! fields are known (CSV `columns`), a reference to anything else is an
//! error; otherwise (JSON, whose fields are open-ended) only references to
//! fields an earlier step removed (`drop`, `rename`, `select`, a windowed
//! aggregate) are errors. Run by `vigil validate`, by the runner before it
//! starts, and by the operator (condition `Ready=False`, reason `InvalidSpec`).

use std::collections::BTreeSet;

use crate::RecordEncoding;
use crate::detector::DetectorSpec;
use crate::model::ModelSpec;
use crate::pipeline::PipelineSpec;
use crate::transform::{EncodeMethod, Transform, WindowEmit};

/// The fields available at one point in the pipeline.
#[derive(Debug, Clone)]
struct Fields {
    /// `Some` when every field is known; `None` when open-ended.
    known: Option<BTreeSet<String>>,
    /// Fields removed by an earlier step, with the step that removed them.
    removed: Vec<(String, String)>,
}

impl Fields {
    fn from_encoding(enc: &RecordEncoding) -> Self {
        Fields { known: enc.columns.as_ref().map(|c| c.iter().cloned().collect()), removed: Vec::new() }
    }

    fn check(&self, field: &str, path: &str, errors: &mut Vec<String>) {
        if let Some(why) = self.problem(field) {
            errors.push(format!("{path}: Invalid value: \"{field}\": {why}"));
        }
    }

    /// Why `field` is not available here, if it is not.
    fn problem(&self, field: &str) -> Option<String> {
        if let Some((_, by)) = self.removed.iter().rev().find(|(f, _)| f == field) {
            if self.known.as_ref().is_none_or(|k| !k.contains(field)) {
                return Some(format!("field was removed by {by} and is not produced again"));
            }
        }
        let known = self.known.as_ref()?;
        if known.contains(field) {
            return None;
        }
        let have: Vec<&str> = known.iter().map(String::as_str).collect();
        Some(format!("no such field at this point (available: {})", have.join(", ")))
    }

    fn add(&mut self, field: impl Into<String>) {
        let field = field.into();
        self.removed.retain(|(f, _)| *f != field);
        if let Some(k) = &mut self.known {
            k.insert(field);
        }
    }

    fn remove(&mut self, field: &str, by: &str) {
        self.removed.push((field.to_string(), by.to_string()));
        if let Some(k) = &mut self.known {
            k.remove(field);
        }
    }

    /// Replace the whole set (select, window onClose); what was there and is
    /// not kept counts as removed.
    fn replace(&mut self, keep: BTreeSet<String>, by: &str) {
        if let Some(k) = &self.known {
            for f in k.difference(&keep) {
                self.removed.push((f.clone(), by.to_string()));
            }
        }
        self.known = Some(keep);
    }
}

/// The fields an expression reads. A syntax error, an unknown function,
/// a wrong number of arguments or a bad `matches()` pattern is reported at
/// `path` (what the runner would refuse at start); so is a filter that
/// cannot give true or false.
fn expression_fields(src: &str, path: &str, filter: bool, errors: &mut Vec<String>) -> BTreeSet<String> {
    match crate::expr::parse(src) {
        Ok(e) => {
            if let Err(why) = e.check_calls() {
                errors.push(format!("{path}: Invalid value: {src:?}: {why}"));
            }
            let kind = e.kind();
            if filter && !matches!(kind, crate::expr::Kind::Bool | crate::expr::Kind::Unknown) {
                errors.push(format!(
                    "{path}: Invalid value: {src:?}: a filter must be true or false, and this gives {}",
                    kind.describe()
                ));
            }
            e.fields()
        }
        Err(e) => {
            errors.push(format!("{path}: Invalid value: {src:?}: {e}"));
            BTreeSet::new()
        }
    }
}

/// Walk `transforms` from the input's fields; returns the fields after the
/// last one.
fn walk(transforms: &[Transform], mut fields: Fields, base: &str, errors: &mut Vec<String>) -> Fields {
    for (i, t) in transforms.iter().enumerate() {
        let at = format!("{base}[{i}]");
        match t {
            Transform::Filter(f) => {
                let path = format!("{at}.filter.expr");
                for name in expression_fields(&f.expr, &path, true, errors) {
                    fields.check(&name, &path, errors);
                }
            }
            Transform::Derive(d) => {
                let path = format!("{at}.derive.expr");
                for name in expression_fields(&d.expr, &path, false, errors) {
                    fields.check(&name, &path, errors);
                }
                fields.add(&d.field);
            }
            Transform::Select(s) => {
                for (j, f) in s.fields.iter().enumerate() {
                    fields.check(f, &format!("{at}.select.fields[{j}]"), errors);
                }
                fields.replace(s.fields.iter().cloned().collect(), &format!("{at} (select)"));
            }
            Transform::Drop(d) => {
                for f in &d.fields {
                    fields.remove(f, &format!("{at} (drop)"));
                }
            }
            Transform::Rename(r) => {
                for (old, new) in &r.fields {
                    fields.check(old, &format!("{at}.rename.fields.{old}"), errors);
                    fields.remove(old, &format!("{at} (rename to {new})"));
                    fields.add(new);
                }
            }
            Transform::Cast(c) => {
                for f in c.fields.keys() {
                    fields.check(f, &format!("{at}.cast.fields.{f}"), errors);
                }
            }
            Transform::Fill(f) => {
                // Filling is how a missing field comes back; only a field no
                // step could have produced is suspicious, and that the check
                // on later readers catches.
                for f in &f.fields {
                    fields.add(f);
                }
            }
            Transform::Flatten(_) => {
                // Nested names become top-level fields whose names depend on
                // the data.
                fields.known = None;
            }
            Transform::Window(w) => {
                fields.check(&w.field, &format!("{at}.window.field"), errors);
                window_durations(w, &at, errors);
                let outputs = w.aggregates.iter().map(|a| format!("{}_{}", w.field, a.suffix()));
                match w.emit {
                    WindowEmit::EachRecord => outputs.for_each(|o| fields.add(o)),
                    WindowEmit::OnClose => {
                        let mut keep: BTreeSet<String> = outputs.collect();
                        keep.insert("window_start".into());
                        keep.insert("window_end".into());
                        keep.insert("key".into());
                        fields.replace(keep, &format!("{at} (window emitting on close)"));
                    }
                }
            }
            Transform::Diff(l) | Transform::Lag(l) => {
                let verb = if matches!(t, Transform::Diff(_)) { "diff" } else { "lag" };
                fields.check(&l.field, &format!("{at}.{verb}.field"), errors);
                let default = if verb == "diff" {
                    format!("{}_diff", l.field)
                } else {
                    format!("{}_lag{}", l.field, l.periods)
                };
                fields.add(l.output.clone().unwrap_or(default));
            }
            Transform::Standardize(s) => {
                for (j, f) in s.fields.iter().enumerate() {
                    fields.check(f, &format!("{at}.standardize.fields[{j}]"), errors);
                    fields.add(format!("{f}{}", s.suffix));
                }
            }
            Transform::Encode(e) => {
                fields.check(&e.field, &format!("{at}.encode.field"), errors);
                if e.drop_original {
                    fields.remove(&e.field, &format!("{at} (encode)"));
                }
                match e.method {
                    EncodeMethod::OneHot => {
                        for c in e.categories.iter().flatten() {
                            fields.add(format!("{}_{c}", e.field));
                        }
                        fields.add(format!("{}_other", e.field));
                    }
                    EncodeMethod::Hashing => {
                        for b in 0..e.buckets {
                            fields.add(format!("{}_h{b}", e.field));
                        }
                    }
                }
            }
        }
    }
    fields
}

fn check_detector(det: &DetectorSpec, fields: &Fields, errors: &mut Vec<String>) {
    for (i, f) in det.features.iter().enumerate() {
        fields.check(f, &format!("spec.detector.features[{i}]"), errors);
    }
}

/// Field-flow errors of a Pipeline spec, in the API server's message style.
pub fn check_pipeline(spec: &PipelineSpec) -> Vec<String> {
    let mut errors = Vec::new();
    let fields = Fields::from_encoding(&spec.input.encoding);
    let after = walk(&spec.transforms, fields, "spec.transforms", &mut errors);
    check_detector(&spec.detector, &after, &mut errors);
    errors
}

fn window_durations(w: &crate::transform::WindowSpec, at: &str, errors: &mut Vec<String>) {
    use crate::duration::parse_duration;
    let (Ok(size), Some(Ok(slide))) = (parse_duration(&w.size), w.slide.as_deref().map(parse_duration))
    else {
        return;
    };
    if slide.is_zero() || size.is_zero() || slide > size || size.as_millis() % slide.as_millis() != 0 {
        errors.push(format!(
            "{at}.window.slide: Invalid value: \"{}\": must be at most size ({}) and divide it",
            w.slide.as_deref().unwrap_or_default(),
            w.size
        ));
    } else if size.as_millis() / slide.as_millis() > crate::transform::MAX_WINDOWS_PER_RECORD {
        errors.push(format!(
            "{at}.window.slide: Invalid value: \"{}\": size ({}) is more than {} slides; use a longer slide",
            w.slide.as_deref().unwrap_or_default(),
            w.size,
            crate::transform::MAX_WINDOWS_PER_RECORD
        ));
    }
}

/// Errors of a Pipeline whose detector scores with the Model `name`: the
/// Model's own transforms run on what the Pipeline's transforms produce, and
/// then every feature the Model reads must be there. Reported at
/// `spec.detector.modelRef`, naming the Model's field.
pub fn check_model_ref(spec: &PipelineSpec, name: &str, model: &ModelSpec) -> Vec<String> {
    // The Pipeline's own problems are check_pipeline's to report.
    let mut own = Vec::new();
    let after =
        walk(&spec.transforms, Fields::from_encoding(&spec.input.encoding), "spec.transforms", &mut own);
    let mut theirs = Vec::new();
    let after = walk(&model.transforms, after, "spec.transforms", &mut theirs);
    let at = format!("spec.detector.modelRef: Invalid value: {name:?}");
    let mut errors: Vec<String> = theirs.into_iter().map(|e| format!("{at}: in Model {name}, {e}")).collect();
    for (i, f) in model.features.iter().enumerate() {
        if let Some(why) = after.problem(f) {
            errors.push(format!(
                "{at}: Model {name} reads feature {f:?} (its spec.features[{i}]), which this Pipeline does not produce: {why}"
            ));
        }
    }
    errors
}

/// Field-flow errors of a Model spec.
pub fn check_model(spec: &ModelSpec) -> Vec<String> {
    let mut errors = Vec::new();
    let fields = Fields::from_encoding(&spec.training.encoding);
    let after = walk(&spec.transforms, fields, "spec.transforms", &mut errors);
    for (i, f) in spec.features.iter().enumerate() {
        after.check(f, &format!("spec.features[{i}]"), &mut errors);
    }
    if let Some(label) = &spec.label {
        after.check(label, "spec.label", &mut errors);
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_names_the_expression_field() {
        let mut errors = Vec::new();
        expression_fields("cpu >", "spec.transforms[0].filter.expr", true, &mut errors);
        assert_eq!(
            errors,
            [
                "spec.transforms[0].filter.expr: Invalid value: \"cpu >\": column 6: expected a value, found the end of the expression"
            ]
        );
    }

    fn pipeline(transforms: &str) -> crate::PipelineSpec {
        let text = format!(
            "apiVersion: vigil.dev/v1alpha1\nkind: Pipeline\nmetadata: {{name: p}}\nspec:\n  input: {{topic: {{name: in}}, keyField: host}}\n  transforms: {transforms}\n  detector: {{algorithm: robustZ, features: [cpu]}}\n  output: {{name: out}}\n  deadLetter: {{name: dlq}}\n"
        );
        let value: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        serde_json::from_value::<crate::Pipeline>(value).unwrap().spec
    }

    #[test]
    fn what_the_runner_would_refuse_at_start_is_refused_here_first() {
        let errors = check_pipeline(&pipeline(r#"[{filter: {expr: "avg(cpu) > 1"}}]"#));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "spec.transforms[0].filter.expr: Invalid value: \"avg(cpu) > 1\": unknown function avg() (available: size,"
            ),
            "{errors:?}"
        );
        let errors = check_pipeline(&pipeline(r#"[{derive: {field: x, expr: "pow(cpu)"}}]"#));
        assert_eq!(
            errors,
            ["spec.transforms[0].derive.expr: Invalid value: \"pow(cpu)\": pow() takes 2 argument(s), got 1"]
        );
        let errors = check_pipeline(&pipeline(r#"[{filter: {expr: "cpu * 2"}}]"#));
        assert_eq!(
            errors,
            [
                "spec.transforms[0].filter.expr: Invalid value: \"cpu * 2\": a filter must be true or false, and this gives a number"
            ]
        );
        assert!(
            check_pipeline(&pipeline(r#"[{filter: {expr: "cpu > 1 && host.startsWith('db')"}}]"#)).is_empty()
        );
        assert!(
            check_pipeline(&pipeline(r#"[{filter: {expr: "flag"}}]"#)).is_empty(),
            "a JSON field's type is only known per record"
        );
    }
}
