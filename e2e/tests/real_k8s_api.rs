//! Vigil's API against a real kube-apiserver (from the e2e harness): the
//! generated CRDs install, document themselves, admit every shipped example
//! and refuse every invalid fixture with a message naming the field.

use std::path::{Path, PathBuf};

use vigil_e2e::{TestNamespace, install_crds, kube_client, kubectl, repo_dir};

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    vigil_crds::manifest::yaml_files(&[dir.to_path_buf()]).unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn real_k8s_generated_crds_install_with_kubectl_and_explain_their_fields() {
    let crds = repo_dir().join("crds");
    let out = kubectl(&["apply", "--server-side", "--force-conflicts", "-f", crds.to_str().unwrap()]);
    assert!(out.status.success(), "kubectl apply of crds/ failed: {}", text(&out));
    let out = kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/pipelines.vigil.dev",
        "crd/models.vigil.dev",
    ]);
    assert!(out.status.success(), "CRDs not established: {}", text(&out));

    // kubectl explain reads the OpenAPI the API server publishes from the
    // CRD, which takes a moment after establishment.
    let mut explained = String::new();
    for _ in 0..50 {
        let out = kubectl(&["explain", "pipeline.spec"]);
        explained = text(&out);
        if out.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(explained.contains("The topic records are read from"), "{explained}");
    assert!(explained.contains("topicDeletionPolicy"), "{explained}");

    let out = kubectl(&["explain", "pipeline.spec.detector.threshold"]);
    assert!(text(&out).contains("Score at or above which a record is flagged anomalous"), "{}", text(&out));
    let out = kubectl(&["explain", "model.spec.calibration"]);
    assert!(text(&out).contains("contamination"), "{}", text(&out));

    // Short names and the category work.
    let out = kubectl(&["get", "vigil", "-A"]);
    assert!(out.status.success(), "kubectl get vigil: {}", text(&out));
    let out = kubectl(&["get", "vpl,vmo", "-A"]);
    assert!(out.status.success(), "kubectl get vpl,vmo: {}", text(&out));
}

#[tokio::test]
async fn real_k8s_every_example_passes_server_side_dry_run() {
    let client = kube_client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "examples").await.unwrap();
    // Vigil's examples; examples/argocd holds Argo CD's own objects.
    let mut files = yaml_files(&repo_dir().join("examples/pipelines"));
    files.extend(yaml_files(&repo_dir().join("examples/models")));
    assert!(files.len() >= 3);
    for file in &files {
        let out = kubectl(&["apply", "--dry-run=server", "-n", &ns.name, "-f", file.to_str().unwrap()]);
        assert!(out.status.success(), "{} was refused: {}", file.display(), text(&out));
        assert!(text(&out).contains("(server dry run)"), "{}", text(&out));
    }
    ns.cleanup().await.unwrap();
}

#[tokio::test]
async fn real_k8s_invalid_manifests_are_refused_naming_the_field_online_and_offline() {
    let client = kube_client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "invalid").await.unwrap();
    let files = yaml_files(&repo_dir().join("e2e/fixtures/invalid"));
    assert!(files.len() >= 10, "at least ten invalid fixtures, one per rule");
    for file in &files {
        let manifest = std::fs::read_to_string(file).unwrap();
        let expect = manifest.lines().next().and_then(|l| l.strip_prefix("# expect: ")).unwrap();

        let out = kubectl(&["apply", "--dry-run=server", "-n", &ns.name, "-f", file.to_str().unwrap()]);
        let online = text(&out);
        assert!(!out.status.success(), "{} was admitted: {online}", file.display());
        assert!(
            online.contains(expect),
            "{}: the API server said {online:?}, not {expect:?}",
            file.display()
        );

        // `vigil validate` gives the same field-naming message without a cluster.
        let offline = match vigil_crds::manifest::parse_all(&manifest).remove(0) {
            Err(e) => e.to_string(),
            Ok(m) => panic!("{} passed offline validation as {}", file.display(), m.describe()),
        };
        assert!(offline.contains(expect), "{}: offline said {offline:?}", file.display());
    }
    ns.cleanup().await.unwrap();
}
