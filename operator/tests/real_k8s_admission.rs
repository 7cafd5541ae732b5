//! The admission webhook, through `kubectl apply` against the real API
//! server: what the runner would refuse at start is refused at apply, with
//! `vigil validate`'s message; every example is admitted; and the operator
//! restarting with a new certificate (its Secret gone) keeps admission
//! working, because it writes the new CA into the configuration.
//!
//! The webhook is served by the operator's own code, in this process, on
//! 127.0.0.1; the configuration points at it by URL, with `failurePolicy:
//! Fail` so that a webhook the API server cannot reach or does not trust
//! makes the apply fail instead of passing silently (the chart's default is
//! Ignore, see values.yaml). A Pod-served webhook behind the chart's Service
//! is checked on the real node (real_node_helm).

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use vigil_e2e::{
    TestNamespace, free_port, install_crds, kube_client, kubectl, repo_dir, unique_name, wait_until,
};
use vigil_operator::webhook;

const SECRET: &str = "vigil-webhook-tls";

fn configuration(name: &str, ns: &str, port: u16) -> ValidatingWebhookConfiguration {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "validate.vigil.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/validate")},
            "rules": [{
                "apiGroups": ["vigil.dev"], "apiVersions": ["*"],
                "operations": ["CREATE", "UPDATE"], "resources": ["pipelines", "models"],
            }],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
        }],
    }))
    .unwrap()
}

fn start(client: &Client, ns: &str, config: &str, port: u16) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let opts = webhook::Options {
        listen: ([127, 0, 0, 1], port).into(),
        namespace: ns.to_string(),
        secret: SECRET.to_string(),
        configuration: config.to_string(),
        hosts: vec!["127.0.0.1".into()],
        refresh: Duration::from_secs(1),
    };
    tokio::spawn(webhook::serve(opts, client.clone()))
}

async fn ca_bundle(client: &Client, config: &str) -> Option<Vec<u8>> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let c = api.get(config).await.ok()?;
    Some(c.webhooks?.first()?.client_config.ca_bundle.clone()?.0)
}

/// `kubectl apply` of `yaml` in `ns`: (succeeded, stdout + stderr).
fn apply(ns: &str, yaml: &str, dir: &tempfile::TempDir) -> (bool, String) {
    let file = dir.path().join(format!("{}.yaml", unique_name("m")));
    std::fs::write(&file, yaml).unwrap();
    let out = kubectl(&["apply", "-n", ns, "-f", file.to_str().unwrap()]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn pipeline(name: &str, transforms: &str, detector: &str) -> String {
    format!(
        "apiVersion: vigil.dev/v1alpha1\nkind: Pipeline\nmetadata: {{name: {name}}}\nspec:\n  input: {{topic: {{name: in}}, keyField: host}}\n  transforms: {transforms}\n  detector: {detector}\n  output: {{name: out}}\n  deadLetter: {{name: dlq}}\n"
    )
}

fn assert_refused((ok, out): (bool, String), expected: &[&str]) {
    assert!(!ok, "admitted, but should have been refused:\n{out}");
    assert!(
        out.contains("admission webhook \"validate.vigil.dev\" denied the request"),
        "not the webhook's refusal:\n{out}"
    );
    for e in expected {
        assert!(out.contains(e), "the refusal does not say {e:?}:\n{out}");
    }
}

/// Apply until the API server stops calling a webhook configuration just
/// deleted (it may for a moment): whether it was stored.
async fn eventually_apply(ns: &str, yaml: &str, dir: &tempfile::TempDir) -> bool {
    for _ in 0..50 {
        let (ok, _) = apply(ns, yaml, dir);
        if ok {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_k8s_admission_webhook_refuses_what_the_runner_would() {
    let client = kube_client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "admission").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = unique_name("vigil-webhook");
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let port = free_port();
    configs.create(&PostParams::default(), &configuration(&config, &ns.name, port)).await.unwrap();

    let server = start(&client, &ns.name, &config, port);
    let first_ca = wait_until(Duration::from_secs(30), || ca_bundle(&client, &config))
        .await
        .expect("the operator writes its CA into the webhook configuration");

    // An unknown function.
    let unknown = pipeline(
        "unknown-fn",
        r#"[{filter: {expr: "avg(cpu) > 1"}}]"#,
        "{algorithm: robustZ, features: [cpu]}",
    );
    assert_refused(
        apply(&ns.name, &unknown, &dir),
        &[
            "The Pipeline \"unknown-fn\" is invalid",
            "spec.transforms[0].filter.expr",
            "unknown function avg()",
        ],
    );
    // A filter that is not true or false.
    let number = pipeline(
        "number-filter",
        r#"[{filter: {expr: "cpu * 2"}}]"#,
        "{algorithm: robustZ, features: [cpu]}",
    );
    assert_refused(
        apply(&ns.name, &number, &dir),
        &["spec.transforms[0].filter.expr", "a filter must be true or false, and this gives a number"],
    );
    // A feature dropped before the detector.
    let dropped = pipeline("dropped", "[{drop: {fields: [cpu]}}]", "{algorithm: robustZ, features: [cpu]}");
    assert_refused(
        apply(&ns.name, &dropped, &dir),
        &["spec.detector.features[0]", "field was removed by spec.transforms[0] (drop)"],
    );
    // The message is vigil validate's, word for word.
    let file = dir.path().join("dropped-for-validate.yaml");
    std::fs::write(&file, &dropped).unwrap();
    let mut validate = Vec::new();
    vigil_runner::validate::run(&[file], &mut validate).unwrap();
    let validate = String::from_utf8(validate).unwrap();
    let message = validate.split_once(": ").map(|(_, m)| m.trim()).unwrap();
    let (_, refused) = apply(&ns.name, &dropped, &dir);
    assert!(refused.contains(message), "vigil validate says {message:?}, the webhook:\n{refused}");

    // A Model's features the Pipeline does not produce.
    let model = "apiVersion: vigil.dev/v1alpha1\nkind: Model\nmetadata: {name: usage}\nspec:\n  algorithm: kMeans\n  features: [cpu, mem]\n  training: {file: /data/train.csv}\n";
    let (ok, out) = apply(&ns.name, model, &dir);
    assert!(ok, "a valid Model is admitted: {out}");
    let without_mem =
        pipeline("without-mem", "[{select: {fields: [host, cpu]}}]", "{modelRef: {name: usage}}");
    assert_refused(
        apply(&ns.name, &without_mem, &dir),
        &["spec.detector.modelRef", "Model usage reads feature \"mem\" (its spec.features[1])"],
    );
    let with_mem =
        pipeline("with-mem", "[{select: {fields: [host, cpu, mem]}}]", "{modelRef: {name: usage}}");
    let (ok, out) = apply(&ns.name, &with_mem, &dir);
    assert!(ok, "a Pipeline producing the Model's features is admitted: {out}");
    // A Model not applied yet is not a reason to refuse (GitOps applies in
    // any order); the user is warned.
    let later = pipeline("later", "[]", "{modelRef: {name: not-yet}}");
    let (ok, out) = apply(&ns.name, &later, &dir);
    assert!(ok && out.contains("Model not-yet does not exist"), "admitted with a warning: {out}");

    // A Pipeline admitted before (here: created while the webhook was not
    // configured for this namespace) is still invalid, but a change that
    // leaves its spec alone (the operator's finalizer, a label) is admitted.
    let patch =
        serde_json::json!({"metadata": {"labels": {"team": "a"}, "finalizers": ["vigil.dev/topics"]}});
    let pipelines: Api<vigil_crds::Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let selector = |ns: &str| {
        serde_json::json!({"webhooks": [{"name": "validate.vigil.dev",
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}]})
    };
    let pp = kube::api::PatchParams::default();
    // The webhook looks elsewhere for a moment: the invalid Pipeline is stored.
    configs.patch(&config, &pp, &kube::api::Patch::Strategic(selector("elsewhere"))).await.unwrap();
    let stale =
        pipeline("stale", r#"[{filter: {expr: "cpu * 2"}}]"#, "{algorithm: robustZ, features: [cpu]}");
    let created = eventually_apply(&ns.name, &stale, &dir).await;
    assert!(created, "without the webhook, the invalid Pipeline is stored");
    configs.patch(&config, &pp, &kube::api::Patch::Strategic(selector(&ns.name))).await.unwrap();
    pipelines
        .patch("stale", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .expect("a metadata-only change to an admitted Pipeline is not refused");
    let respec = r#"[{filter: {expr: "cpu * 3"}}]"#;
    let (ok, out) =
        apply(&ns.name, &pipeline("stale", respec, "{algorithm: robustZ, features: [cpu]}"), &dir);
    assert!(!ok && out.contains("denied the request"), "a spec change is judged: {out}");
    pipelines
        .patch(
            "stale",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&serde_json::json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();

    // Every example is admitted (server-side dry run goes through webhooks).
    let examples: Vec<PathBuf> =
        ["examples/pipelines", "examples/models"].iter().map(|d| repo_dir().join(d)).collect();
    for d in &examples {
        let out = kubectl(&["apply", "--dry-run=server", "-n", &ns.name, "-f", d.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{} refused: {}{}",
            d.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The operator restarts and the certificate is gone: it issues a new
    // one under a new CA, updates the caBundle, and admission keeps working.
    server.abort();
    let _ = server.await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    secrets.delete(SECRET, &DeleteParams::default()).await.unwrap();
    let server = start(&client, &ns.name, &config, port);
    let second_ca = wait_until(Duration::from_secs(30), || async {
        ca_bundle(&client, &config).await.filter(|ca| *ca != first_ca)
    })
    .await
    .expect("the new CA replaces the old one in the webhook configuration");
    assert_ne!(first_ca, second_ca);
    let secret = secrets.get(SECRET).await.unwrap();
    assert_eq!(
        secret.data.unwrap()["ca.crt"].0,
        second_ca,
        "the caBundle is the CA of the Secret the webhook serves from"
    );
    let unknown_again = unknown.replace("unknown-fn", "unknown-fn-again");
    // The API server may hold a connection to the old server for a moment.
    let refused = wait_until(Duration::from_secs(20), || async {
        let (ok, out) = apply(&ns.name, &unknown_again, &dir);
        (!ok && out.contains("denied the request")).then_some((ok, out))
    })
    .await
    .expect("after the restart the webhook answers again");
    assert_refused(refused, &["unknown function avg()"]);
    let (ok, out) = apply(&ns.name, &with_mem.replace("with-mem", "with-mem-again"), &dir);
    assert!(ok, "a valid Pipeline is admitted after the restart: {out}");

    server.abort();
    configs.delete(&config, &DeleteParams::default()).await.unwrap();
    ns.cleanup().await.unwrap();
}
