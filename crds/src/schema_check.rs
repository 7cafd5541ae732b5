//! Offline validation of an object against a CRD's OpenAPI v3 schema, with
//! the messages kube-apiserver gives, so `vigil validate` says on a laptop
//! what `kubectl apply` would say at admission.
//!
//! Covers what Vigil's generated schemas use: types, nullable, enums,
//! required fields, numeric ranges, string lengths and patterns, item
//! counts, maps (`additionalProperties`) and unknown fields. CEL rules
//! (`x-kubernetes-validations`) are evaluated separately by kube's CEL
//! validator (see `manifest.rs`).

use std::collections::HashMap;
use std::sync::Mutex;

use regex::Regex;
use serde_json::Value;

/// Validate `value` at `path` against `schema`, appending messages to `errors`.
pub fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) == Some(true) {
            return;
        }
        if let Some(ty) = schema.get("type").and_then(Value::as_str) {
            errors.push(format!(
                "{path}: Invalid value: \"null\": {path} in body must be of type {ty}: \"null\""
            ));
        }
        return;
    }
    if let Some(ty) = schema.get("type").and_then(Value::as_str) {
        let actual = json_type(value);
        let ok = actual == ty || (ty == "number" && actual == "integer");
        if !ok {
            errors.push(format!(
                "{path}: Invalid value: \"{actual}\": {path} in body must be of type {ty}: \"{actual}\""
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            errors.push(format!("{path}: Unsupported value: {value}: supported values: {}", list.join(", ")));
            return;
        }
    }
    match value {
        Value::String(s) => check_string(schema, s, path, errors),
        Value::Number(n) => check_number(schema, n.as_f64().unwrap_or(f64::NAN), value, path, errors),
        Value::Array(items) => check_array(schema, items, path, errors),
        Value::Object(map) => check_object(schema, map, path, errors),
        _ => {}
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check_string(schema: &Value, s: &str, path: &str, errors: &mut Vec<String>) {
    let len = s.chars().count() as u64;
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
        if len < min {
            errors.push(format!(
                "{path}: Invalid value: \"{s}\": {path} in body should be at least {min} chars long"
            ));
        }
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
        if len > max {
            errors.push(format!("{path}: Too long: may not be more than {max} bytes"));
        }
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        if !pattern_matches(pattern, s) {
            errors.push(format!("{path}: Invalid value: \"{s}\": {path} in body should match '{pattern}'"));
        }
    }
}

/// Patterns are compiled once per process: `vigil validate` checks many
/// manifests against the same few patterns.
fn pattern_matches(pattern: &str, s: &str) -> bool {
    static CACHE: Mutex<Option<HashMap<String, Option<Regex>>>> = Mutex::new(None);
    let mut guard = CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let cache = guard.get_or_insert_with(HashMap::new);
    let re = cache.entry(pattern.to_string()).or_insert_with(|| Regex::new(pattern).ok());
    // A pattern this validator cannot compile is left to the API server.
    re.as_ref().is_none_or(|re| re.is_match(s))
}

fn check_number(schema: &Value, n: f64, raw: &Value, path: &str, errors: &mut Vec<String>) {
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        if n < min {
            errors.push(format!(
                "{path}: Invalid value: {raw}: {path} in body should be greater than or equal to {}",
                trim_float(min)
            ));
        }
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        if n > max {
            errors.push(format!(
                "{path}: Invalid value: {raw}: {path} in body should be less than or equal to {}",
                trim_float(max)
            ));
        }
    }
}

fn trim_float(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 { format!("{}", x as i64) } else { x.to_string() }
}

fn check_array(schema: &Value, items: &[Value], path: &str, errors: &mut Vec<String>) {
    let n = items.len() as u64;
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
        if n < min {
            errors
                .push(format!("{path}: Invalid value: {n}: {path} in body should have at least {min} items"));
        }
    }
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
        if n > max {
            errors.push(format!("{path}: Too many: {n}: must have at most {max} items"));
        }
    }
    if let Some(item_schema) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            check(item_schema, item, &format!("{path}[{i}]"), errors);
        }
    }
}

fn check_object(schema: &Value, map: &serde_json::Map<String, Value>, path: &str, errors: &mut Vec<String>) {
    let join = |key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for key in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(key) {
                errors.push(format!("{}: Required value", join(key)));
            }
        }
    }
    // A oneOf of `required` lists (externally tagged enums): exactly one key.
    if let Some(one_of) = schema.get("oneOf").and_then(Value::as_array) {
        let matching = one_of
            .iter()
            .filter(|alt| {
                alt.get("required")
                    .and_then(Value::as_array)
                    .is_some_and(|req| req.iter().filter_map(Value::as_str).all(|k| map.contains_key(k)))
            })
            .count();
        if matching != 1 {
            let keys: Vec<&str> =
                one_of.iter().filter_map(|alt| alt.get("required")?.as_array()?.first()?.as_str()).collect();
            errors.push(format!(
                "{path}: Invalid value: \"object\": must set exactly one of: {}",
                keys.join(", ")
            ));
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    let preserve = schema.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true);
    for (key, child) in map {
        let child_path = join(key);
        if let Some(prop) = properties.and_then(|p| p.get(key)) {
            check(prop, child, &child_path, errors);
        } else if let Some(add) = additional {
            check(add, child, &child_path, errors);
        } else if properties.is_some() && !preserve {
            // A bare `type: object` (metadata) takes any fields.
            errors.push(format!("unknown field \"{child_path}\""));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn errors(schema: Value, value: Value) -> Vec<String> {
        let mut out = Vec::new();
        check(&schema, &value, "spec", &mut out);
        out
    }

    #[test]
    fn reports_range_with_the_api_server_wording() {
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1.0}}});
        assert_eq!(
            errors(schema, json!({"n": -3})),
            vec!["spec.n: Invalid value: -3: spec.n in body should be greater than or equal to 1"]
        );
    }

    #[test]
    fn reports_missing_required_and_unknown_fields() {
        let schema =
            json!({"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}});
        let errs = errors(schema, json!({"nmae": "x"}));
        assert!(errs.contains(&"spec.name: Required value".to_string()), "{errs:?}");
        assert!(errs.contains(&"unknown field \"spec.nmae\"".to_string()), "{errs:?}");
    }

    #[test]
    fn reports_enum_pattern_and_type() {
        let schema = json!({"type": "object", "properties": {
            "mode": {"type": "string", "enum": ["a", "b"]},
            "topic": {"type": "string", "pattern": "^[a-z]+$"},
            "count": {"type": "integer"}
        }});
        let errs = errors(schema, json!({"mode": "c", "topic": "A/B", "count": "3"}));
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].starts_with("spec.count: Invalid value: \"string\""), "{errs:?}");
        assert_eq!(errs[1], "spec.mode: Unsupported value: \"c\": supported values: \"a\", \"b\"");
        assert!(errs[2].contains("spec.topic in body should match '^[a-z]+$'"), "{errs:?}");
    }

    #[test]
    fn one_of_required_means_exactly_one_key() {
        let schema = json!({"type": "object", "oneOf": [{"required": ["a"]}, {"required": ["b"]}],
            "properties": {"a": {"type": "object"}, "b": {"type": "object"}}});
        assert!(errors(schema.clone(), json!({"a": {}})).is_empty());
        assert_eq!(errors(schema.clone(), json!({"a": {}, "b": {}})).len(), 1);
        assert_eq!(errors(schema, json!({})).len(), 1);
    }
}
