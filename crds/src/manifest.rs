//! Reading manifests the way the API server admits them: schema, CEL rules,
//! then the field-flow checks of `semantic.rs`, with the same messages.
//!
//! Used by `vigil validate` (offline) and by `vigil local`/`vigil run` to
//! load the pipeline they execute.

use std::fmt;
use std::sync::OnceLock;

use kube::CustomResourceExt;
use kube::core::cel::{Validator, apply_defaults};
use serde::Deserialize;
use serde_json::Value;

use crate::model::Model;
use crate::pipeline::Pipeline;
use crate::{schema_check, semantic};

/// A Vigil resource read from a manifest.
#[derive(Debug, Clone)]
pub enum Manifest {
    /// A `Pipeline`.
    Pipeline(Box<Pipeline>),
    /// A `Model`.
    Model(Box<Model>),
    /// Something that is not a Vigil resource (another API group: a
    /// ConfigMap, an Argo CD Application beside the examples): not checked.
    Other {
        /// `apiVersion` as written.
        api_version: String,
        /// `kind` as written.
        kind: String,
        /// `metadata.name`.
        name: String,
    },
}

impl Manifest {
    /// `Kind/name`, for messages.
    pub fn describe(&self) -> String {
        match self {
            Manifest::Pipeline(p) => format!("Pipeline/{}", p.metadata.name.as_deref().unwrap_or("")),
            Manifest::Model(m) => format!("Model/{}", m.metadata.name.as_deref().unwrap_or("")),
            Manifest::Other { api_version, kind, name } => format!("{kind}/{name} ({api_version})"),
        }
    }
}

/// Why a manifest was refused: every problem found, each naming its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// `Pipeline`, `Model`, or what the document claimed to be.
    pub kind: String,
    /// `metadata.name`, if any.
    pub name: String,
    /// One message per problem.
    pub errors: Vec<String>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "The {} {:?} is invalid:", self.kind, self.name)?;
        if let [only] = self.errors.as_slice() {
            write!(f, " {only}")
        } else {
            for e in &self.errors {
                write!(f, "\n* {e}")?;
            }
            Ok(())
        }
    }
}

impl std::error::Error for Invalid {}

fn schema_of<K: CustomResourceExt>(cell: &'static OnceLock<Value>) -> &'static Value {
    cell.get_or_init(|| {
        let crd = K::crd();
        crd.spec
            .versions
            .first()
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null)
    })
}

/// Parse every YAML document in `text`. Each document yields a resource or
/// the reasons it is invalid; a document that is not YAML at all yields one
/// error for the stream (documents after it cannot be located reliably).
pub fn parse_all(text: &str) -> Vec<Result<Manifest, Invalid>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        match Value::deserialize(doc) {
            Ok(Value::Null) => continue,
            Ok(value) => out.push(from_value(value)),
            Err(e) => {
                out.push(Err(Invalid {
                    kind: "document".into(),
                    name: String::new(),
                    errors: vec![format!("not valid YAML: {e}")],
                }));
                break;
            }
        }
    }
    out
}

/// Validate one object (already parsed from YAML or JSON) and build the typed
/// resource.
pub fn from_value(value: Value) -> Result<Manifest, Invalid> {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
    let name = value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
    let invalid = |errors: Vec<String>| Invalid { kind: kind.clone(), name: name.clone(), errors };
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let expected = format!("{}/{}", crate::GROUP, crate::VERSION);
    // Another API group is someone else's to check; a Vigil group with a
    // wrong version (`vigil.dev/v1alpah1`) is refused below.
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    if group != crate::GROUP && !api_version.is_empty() {
        return Ok(Manifest::Other { api_version: api_version.to_string(), kind, name });
    }
    if api_version != expected {
        return Err(invalid(vec![format!(
            "apiVersion: Unsupported value: {api_version:?}: supported values: {expected:?}"
        )]));
    }
    static PIPELINE: OnceLock<Value> = OnceLock::new();
    static MODEL: OnceLock<Value> = OnceLock::new();
    let schema = match kind.as_str() {
        "Pipeline" => schema_of::<Pipeline>(&PIPELINE),
        "Model" => schema_of::<Model>(&MODEL),
        other => {
            return Err(invalid(vec![format!(
                "kind: Unsupported value: {other:?}: supported values: \"Pipeline\", \"Model\""
            )]));
        }
    };
    let mut errors = Vec::new();
    check_name(&name, &mut errors);
    let defaulted = apply_defaults(schema, &value);
    // The CRD schema describes spec and status; the API server checks the
    // object's envelope itself (done above for the name), and users do not
    // write status.
    let mut spec_only = defaulted.clone();
    if let Some(obj) = spec_only.as_object_mut() {
        for key in ["apiVersion", "kind", "metadata", "status"] {
            obj.remove(key);
        }
    }
    schema_check::check(schema, &spec_only, "", &mut errors);
    if !errors.is_empty() {
        // Like the API server, CEL rules run only on a structurally valid object.
        errors.push("<nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation".into());
        return Err(invalid(errors));
    }
    if let Err(cel_errors) = Validator::new().validate(schema, &spec_only, None) {
        for e in cel_errors.iter() {
            errors.push(format!("{}: Invalid value: {}", e.field_path, e.message));
        }
        return Err(invalid(errors));
    }
    let manifest = match kind.as_str() {
        "Pipeline" => serde_json::from_value::<Pipeline>(defaulted).map(|p| {
            errors.extend(semantic::check_pipeline(&p.spec));
            Manifest::Pipeline(Box::new(p))
        }),
        _ => serde_json::from_value::<Model>(defaulted).map(|m| {
            errors.extend(semantic::check_model(&m.spec));
            Manifest::Model(Box::new(m))
        }),
    }
    .map_err(|e| invalid(vec![format!("spec: {e}")]))?;
    if errors.is_empty() { Ok(manifest) } else { Err(invalid(errors)) }
}

/// `metadata.name` must be a DNS subdomain, as for every Kubernetes object.
fn check_name(name: &str, errors: &mut Vec<String>) {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if name.is_empty() {
        errors.push("metadata.name: Required value: name or generateName is required".into());
    } else if !ok {
        errors.push(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        ));
    }
}

/// Every file named in `paths`, and every `*.yaml`/`*.yml` found under the
/// directories named, in sorted order.
pub fn yaml_files(paths: &[std::path::PathBuf]) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut entries: Vec<std::path::PathBuf> =
                std::fs::read_dir(path)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
            entries.sort();
            let nested: Vec<std::path::PathBuf> = entries
                .into_iter()
                .filter(|p| p.is_dir() || p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect();
            out.extend(yaml_files(&nested)?);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// Read the single Pipeline in `text` (a file with exactly one Pipeline; other
/// kinds are ignored).
pub fn single_pipeline(text: &str) -> Result<Pipeline, Invalid> {
    single(text, "Pipeline", |m| match m {
        Manifest::Pipeline(p) => Ok(*p),
        other => Err(other),
    })
}

/// The one Model in a manifest file (`vigil train`).
pub fn single_model(text: &str) -> Result<Model, Invalid> {
    single(text, "Model", |m| match m {
        Manifest::Model(m) => Ok(*m),
        other => Err(other),
    })
}

/// The one resource of `kind` in a file; others are ignored, two is an error.
fn single<T: kube::Resource>(
    text: &str,
    kind: &str,
    pick: impl Fn(Manifest) -> Result<T, Manifest>,
) -> Result<T, Invalid> {
    let mut found = None;
    for doc in parse_all(text) {
        let Ok(item) = pick(doc?) else { continue };
        if found.is_some() {
            return Err(Invalid {
                kind: kind.into(),
                name: item.meta().name.clone().unwrap_or_default(),
                errors: vec![format!("the file holds more than one {kind}; pass a file with one")],
            });
        }
        found = Some(item);
    }
    found.ok_or_else(|| Invalid {
        kind: kind.into(),
        name: String::new(),
        errors: vec![format!("the file holds no {kind}")],
    })
}
