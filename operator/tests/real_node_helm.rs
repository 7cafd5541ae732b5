//! The Helm chart against the real tools: `helm lint --strict`, a bad value
//! refused by the schema with the field named, the rendered chart accepted
//! by the real API server (server-side dry run), the chart's RBAC rules and
//! CRDs the same as the code's, and on the real node: `helm test`, `helm
//! upgrade` bringing a new CRD field that the API server then serves, and
//! `helm uninstall` leaving the CRDs and the user's Pipelines and nothing
//! else.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use vigil_crds::Pipeline;
use vigil_e2e::node::{
    VIGIL_NAMESPACE, chart, diagnostics, helm, helm_ok, install_vigil, local_image_values, node,
};
use vigil_e2e::{TestNamespace, kube_client, kubectl, repo_dir};

fn rendered(args: &[&str]) -> Vec<serde_yaml::Value> {
    let chart = chart();
    let mut all = vec!["template", "t", chart.to_str().unwrap(), "--namespace", "vigil-system"];
    all.extend_from_slice(args);
    let text = helm_ok(&all).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).ok())
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> Vec<&'a serde_yaml::Value> {
    docs.iter().filter(|d| d["kind"].as_str() == Some(kind)).collect()
}

#[test]
fn real_node_helm_lint_schema_and_rendering_match_the_code() {
    let chart = chart();
    let out = helm_ok(&["lint", "--strict", chart.to_str().unwrap()]).unwrap();
    assert!(out.contains("0 chart(s) failed"), "{out}");

    // A bad value fails at install time, naming the field.
    for (set, field) in [
        ("replicas=0", "/replicas"),
        ("kafka.bootstrapServer=x:1", "bootstrapServer"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ] {
        let o = helm(&["template", "t", chart.to_str().unwrap(), "--set", set]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(field), "--set {set}: {err}");
    }

    // The chart's ClusterRole is the operator's own rules.
    let docs = rendered(&[]);
    let roles = of_kind(&docs, "ClusterRole");
    assert_eq!(roles.len(), 1);
    let chart_rules: Vec<PolicyRule> = serde_yaml::from_value(roles[0]["rules"].clone()).unwrap();
    assert_eq!(
        chart_rules,
        vigil_operator::rbac::rules(),
        "helm/vigil rules differ from operator/src/rbac.rs"
    );

    // The chart's CRDs are the generated ones, with the keep policy.
    let crds = of_kind(&docs, "CustomResourceDefinition");
    assert_eq!(crds.len(), 2);
    for (_, generated) in vigil_crds::crds() {
        let name = generated.metadata.name.clone().unwrap();
        let c = crds
            .iter()
            .find(|c| c["metadata"]["name"].as_str() == Some(name.as_str()))
            .expect("CRD in the chart");
        let from_chart: CustomResourceDefinition = serde_yaml::from_value((*c).clone()).unwrap();
        assert_eq!(from_chart.spec, generated.spec, "{name}: the chart's CRD differs from the Rust types");
        assert_eq!(c["metadata"]["annotations"]["helm.sh/resource-policy"].as_str(), Some("keep"));
    }
    for file in ["pipeline.yaml", "model.yaml"] {
        let a = std::fs::read_to_string(repo_dir().join("crds").join(file)).unwrap();
        let b = std::fs::read_to_string(chart.join("files/crds").join(file)).unwrap();
        assert_eq!(a, b, "helm/vigil/files/crds/{file} is a copy of crds/{file} (make crds)");
    }

    // Optional monitors render when asked.
    let docs = rendered(&[
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.podMonitor.enabled=true",
    ]);
    assert_eq!(of_kind(&docs, "ServiceMonitor").len(), 1);
    assert_eq!(of_kind(&docs, "PodMonitor").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn real_node_helm_rendered_chart_passes_server_side_dry_run() {
    let client = kube_client().await.unwrap();
    let ns = TestNamespace::create(&client, "helm-dry").await.unwrap();
    let chart = chart();
    let text =
        helm_ok(&["template", "dry", chart.to_str().unwrap(), "--namespace", &ns.name, "--skip-tests"])
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, text).unwrap();
    let out = kubectl(&["apply", "--dry-run=server", "-n", &ns.name, "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "server dry run: {}", String::from_utf8_lossy(&out.stderr));
    ns.cleanup().await.unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// `helm upgrade` of the release with `chart`.
fn upgrade(chart: &Path) {
    let mut args: Vec<String> = [
        "upgrade",
        "vigil",
        chart.to_str().unwrap(),
        "--namespace",
        VIGIL_NAMESPACE,
        "--wait",
        "--timeout",
        "240s",
        "--force-conflicts",
    ]
    .map(String::from)
    .into();
    args.extend(["--set".to_string(), "refreshInterval=5".to_string()]);
    args.extend(local_image_values(node()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    helm_ok(&args).unwrap_or_else(|e| panic!("{e:#}\n{}", diagnostics(VIGIL_NAMESPACE)));
}

#[tokio::test(flavor = "multi_thread")]
async fn real_node_helm_test_upgrade_and_uninstall() {
    install_vigil();
    let client = kube_client().await.unwrap();

    // helm test: a sample Pipeline becomes Ready, checked from a pod.
    let out = helm(&["test", "vigil", "--namespace", VIGIL_NAMESPACE, "--timeout", "240s"]);
    assert!(
        out.status.success(),
        "helm test: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        diagnostics(VIGIL_NAMESPACE)
    );

    // helm upgrade with a CRD that gained an optional field: the API server
    // serves (keeps) the new field afterwards.
    let ns = TestNamespace::create(&client, "helm-up").await.unwrap();
    let work = tempfile::tempdir().unwrap();

    // The chart's admission webhook, served by the operator pods behind its
    // Service with the certificate they issued, refuses what the runner would
    // refuse at start.
    let bad = work.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            "apiVersion: vigil.dev/v1alpha1\nkind: Pipeline\nmetadata: {{name: bad, namespace: {ns}}}\nspec:\n  input: {{topic: {{name: {ns}-in}}}}\n  transforms: [{{filter: {{expr: \"avg(cpu) > 1\"}}}}]\n  detector: {{algorithm: robustZ, features: [cpu]}}\n  output: {{name: {ns}-out}}\n  deadLetter: {{name: {ns}-dlq}}\n",
            ns = ns.name
        ),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = kubectl(&["apply", "--dry-run=server", "-f", bad.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        if !out.status.success() && text.contains("denied the request") {
            assert!(text.contains("unknown function avg()"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the webhook did not refuse an unknown function within 60 s: {text}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            diagnostics(VIGIL_NAMESPACE)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let changed = work.path().join("vigil");
    copy_dir(&chart(), &changed);
    let crd_file = changed.join("files/crds/pipeline.yaml");
    let text = std::fs::read_to_string(&crd_file).unwrap();
    let anchor = "            properties:\n              api:";
    assert!(text.contains(anchor), "the spec's first property moved; adjust the test");
    let text = text.replacen(
        anchor,
        "            properties:\n              upgradeNote:\n                description: A field only the upgraded CRD has.\n                type: string\n              api:",
        1,
    );
    std::fs::write(&crd_file, text).unwrap();
    upgrade(&changed);
    let pipeline = format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {{name: kept, namespace: {ns}}}
spec:
  upgradeNote: served after helm upgrade
  input: {{topic: {{name: {ns}-in}}}}
  detector: {{algorithm: robustZ, features: [cpu]}}
  output: {{name: {ns}-out}}
  deadLetter: {{name: {ns}-dlq}}
  lifecycle: Paused
"#,
        ns = ns.name
    );
    let file = work.path().join("kept.yaml");
    std::fs::write(&file, &pipeline).unwrap();
    let out = kubectl(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = kubectl(&["get", "pipeline", "kept", "-n", &ns.name, "-o", "jsonpath={.spec.upgradeNote}"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "served after helm upgrade",
        "the new field is served, not pruned"
    );

    // Back to the real chart, then uninstall: the CRDs and the user's
    // Pipelines stay (keep policy, documented); nothing of the release does.
    upgrade(&chart());
    helm_ok(&["uninstall", "vigil", "--namespace", VIGIL_NAMESPACE, "--wait", "--timeout", "120s"]).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    assert!(crds.get_opt("pipelines.vigil.dev").await.unwrap().is_some(), "the Pipeline CRD is kept");
    assert!(crds.get_opt("models.vigil.dev").await.unwrap().is_some(), "the Model CRD is kept");
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    assert!(pipelines.get_opt("kept").await.unwrap().is_some(), "the user's Pipeline is kept");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let roles: Api<ClusterRole> = Api::all(client.clone());
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), VIGIL_NAMESPACE);
        let left_roles = roles
            .list(&ListParams::default().labels("app.kubernetes.io/instance=vigil"))
            .await
            .unwrap()
            .items
            .len();
        let left_sas = sas
            .list(&ListParams::default().labels("app.kubernetes.io/instance=vigil"))
            .await
            .unwrap()
            .items
            .len();
        let deploys = kubectl(&[
            "get",
            "deployments,pods,services,poddisruptionbudgets",
            "-n",
            VIGIL_NAMESPACE,
            "-l",
            "app.kubernetes.io/instance=vigil",
            "-o",
            "name",
        ]);
        // The webhook's certificate Secret, which the operator wrote, goes
        // with the webhook configuration that owns it.
        let webhook_secret = kubectl(&[
            "get",
            "secrets",
            "-n",
            VIGIL_NAMESPACE,
            "-l",
            "app.kubernetes.io/component=webhook",
            "-o",
            "name",
        ]);
        let left = format!(
            "{} {}",
            String::from_utf8_lossy(&deploys.stdout).trim(),
            String::from_utf8_lossy(&webhook_secret.stdout).trim()
        )
        .trim()
        .to_string();
        if left_roles == 0 && left_sas == 0 && left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left after uninstall: {left_roles} ClusterRoles, {left_sas} ServiceAccounts, {left}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Helm's own Secrets of the release are gone too.
    let secrets =
        kubectl(&["get", "secrets", "-n", VIGIL_NAMESPACE, "-l", "owner=helm,name=vigil", "-o", "name"]);
    assert!(String::from_utf8_lossy(&secrets.stdout).trim().is_empty(), "release records left");

    // With no operator left, its finalizer is removed by hand (as the docs
    // say to do before uninstalling with Pipelines still there).
    let out = kubectl(&[
        "patch",
        "pipeline",
        "kept",
        "-n",
        &ns.name,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = kubectl(&["delete", "pipeline", "kept", "-n", &ns.name]);
    assert!(out.status.success());
    ns.cleanup().await.unwrap();
}
