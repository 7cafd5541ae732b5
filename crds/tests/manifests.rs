//! Offline validation agrees with admission: every shipped example is
//! accepted, and every invalid fixture is refused with a message naming the
//! field (the same fixtures the e2e tests send to a real API server).

use std::path::{Path, PathBuf};

use vigil_crds::manifest::{Manifest, parse_all};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    vigil_crds::manifest::yaml_files(&[dir.to_path_buf()]).unwrap()
}

#[test]
fn every_example_manifest_is_valid() {
    // Vigil's examples; examples/argocd holds Argo CD's own objects.
    let mut files = yaml_files(&repo().join("examples/pipelines"));
    files.extend(yaml_files(&repo().join("examples/models")));
    assert!(files.len() >= 3, "expected the shipped examples, found {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let docs = parse_all(&text);
        assert!(!docs.is_empty(), "{} holds no documents", file.display());
        for doc in docs {
            if let Err(e) = doc {
                panic!("{} is refused: {e}", file.display());
            }
        }
    }
}

#[test]
fn every_invalid_fixture_is_refused_naming_its_field() {
    let files = yaml_files(&repo().join("e2e/fixtures/invalid"));
    assert!(files.len() >= 10, "expected at least ten invalid fixtures");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expect =
            text.lines().next().and_then(|l| l.strip_prefix("# expect: ")).unwrap_or_else(|| {
                panic!("{} must start with '# expect: <text of the error>'", file.display())
            });
        let results = parse_all(&text);
        let err = match results.as_slice() {
            [Err(e)] => e.to_string(),
            other => panic!("{} was not refused: {other:?}", file.display()),
        };
        assert!(err.contains(expect), "{}: expected {expect:?} in:\n{err}", file.display());
    }
}

#[test]
fn a_reference_to_a_dropped_field_is_refused() {
    let text = r#"
apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {name: p}
spec:
  input: {topic: {name: in}}
  transforms:
    - rename: {fields: {cpu: cpu_pct}}
  detector: {algorithm: robustZ, features: [cpu]}
  output: {name: out}
  deadLetter: {name: dlq}
"#;
    let err = parse_all(text).remove(0).unwrap_err().to_string();
    assert!(
        err.contains("spec.detector.features[0]: Invalid value: \"cpu\": field was removed by spec.transforms[0] (rename to cpu_pct)"),
        "{err}"
    );
}

#[test]
fn csv_columns_make_every_reference_checked() {
    let text = r#"
apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {name: p}
spec:
  input: {topic: {name: in}, format: csv, columns: [ts, host, cpu]}
  transforms:
    - derive: {field: load, expr: "cpu / cores"}
  detector: {algorithm: robustZ, features: [load]}
  output: {name: out}
  deadLetter: {name: dlq}
"#;
    let err = parse_all(text).remove(0).unwrap_err().to_string();
    assert!(err.contains("spec.transforms[0].derive.expr: Invalid value: \"cores\": no such field"), "{err}");
}

#[test]
fn defaults_are_applied_like_admission() {
    let text = r#"
apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {name: p}
spec:
  input: {topic: {name: in}}
  detector: {algorithm: robustZ, features: [v]}
  output: {name: out}
  deadLetter: {name: dlq}
"#;
    let Ok(Manifest::Pipeline(p)) = parse_all(text).remove(0) else { panic!("refused") };
    assert_eq!(p.spec.input.topic.partitions, 1);
    assert_eq!(p.spec.replicas, 1);
    assert_eq!(p.spec.detector.max_keys, 10_000);
    assert_eq!(p.spec.input.encoding.max_record_bytes, 1_048_576);
}

#[test]
fn unknown_fields_are_refused_like_strict_kubectl() {
    let text = r#"
apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {name: p}
spec:
  input: {topic: {name: in, partitons: 3}}
  detector: {algorithm: robustZ, features: [v]}
  output: {name: out}
  deadLetter: {name: dlq}
"#;
    let err = parse_all(text).remove(0).unwrap_err().to_string();
    assert!(err.contains("unknown field \"spec.input.topic.partitons\""), "{err}");
}

#[test]
fn other_api_groups_are_skipped_but_a_wrong_vigil_version_is_refused() {
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: argocd-cm}\n---\napiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: vigil}\n";
    let docs = parse_all(text);
    assert_eq!(docs.len(), 2);
    for d in &docs {
        assert!(matches!(d, Ok(Manifest::Other { .. })), "{d:?}");
    }
    assert_eq!(docs[1].as_ref().unwrap().describe(), "Application/vigil (argoproj.io/v1alpha1)");
    let typo = "apiVersion: vigil.dev/v1alpah1\nkind: Pipeline\nmetadata: {name: p}\nspec: {}\n";
    let err = parse_all(typo).remove(0).unwrap_err().to_string();
    assert!(err.contains("apiVersion: Unsupported value: \"vigil.dev/v1alpah1\""), "{err}");
}
