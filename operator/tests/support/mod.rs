//! Helpers for operator tests against the real API server and broker: an
//! operator of the test's own (watching only its namespace), Pipelines with
//! topics of their own, waiting on status, and playing the kubelet.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use vigil_crds::Pipeline;
use vigil_operator::context::Settings;
use vigil_operator::pipeline::children;

pub use vigil_e2e::free_port;

/// An operator running in this process for one namespace.
pub struct Operator {
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub port: u16,
}

impl Operator {
    pub fn start(client: Client, namespace: &str) -> Operator {
        Self::start_with(client, namespace, None)
    }

    pub fn start_with(client: Client, namespace: &str, lease: Option<(String, String)>) -> Operator {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            // VIGIL_TEST_LOG, e.g. "vigil_operator=debug,kube_runtime=debug", to see more.
            .with_env_filter(std::env::var("VIGIL_TEST_LOG").unwrap_or_else(|_| "vigil_operator=info".into()))
            .try_init();
        let port = free_port();
        let opts = vigil_operator::controller::Options {
            settings: Settings {
                children: children::Settings {
                    runner_image: "ghcr.io/vigil-dev/vigil-runner:test".into(),
                    kafka_bootstrap: Some(vigil_e2e::kafka().to_string()),
                    model_registry: format!("vigil-models-{namespace}"),
                },
                refresh_interval: Some(Duration::from_secs(2)),
            },
            namespace: Some(namespace.to_string()),
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            lease,
            identity: format!("test-{port}"),
            webhook: None,
        };
        Operator { handle: tokio::spawn(vigil_operator::controller::run(opts, client)), port }
    }

    pub fn is_running(&self) -> bool {
        !self.handle.is_finished()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// A Pipeline manifest whose topics are named after `prefix`.
pub fn pipeline_yaml(name: &str, prefix: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  input:
    topic: {{name: {prefix}-in, partitions: 3, config: {{retention.ms: "3600000"}}}}
    keyField: host
  transforms:
    - filter: {{expr: "cpu >= 0.0"}}
  detector: {{algorithm: robustZ, features: [cpu]}}
  output: {{name: {prefix}-out, partitions: 2}}
  deadLetter: {{name: {prefix}-dlq}}
{extra}"#
    )
}

pub fn parse(yaml: &str) -> Pipeline {
    vigil_crds::manifest::single_pipeline(yaml).unwrap_or_else(|e| panic!("{e}"))
}

/// Create a Pipeline as written: admission decides, not the offline checks.
pub async fn create(api: &Api<Pipeline>, yaml: &str) -> Pipeline {
    let value: serde_json::Value = serde_yaml::from_str(yaml).expect("YAML");
    let p: Pipeline = serde_json::from_value(value).expect("a Pipeline");
    api.create(&PostParams::default(), &p).await.expect("Pipeline created")
}

/// Replace the spec (as `kubectl apply` would).
pub async fn update_spec(api: &Api<Pipeline>, yaml: &str) {
    let p = parse(yaml);
    let patch = serde_json::json!({"apiVersion": "vigil.dev/v1alpha1", "kind": "Pipeline", "spec": p.spec});
    api.patch(&p.name_any(), &PatchParams::apply("test").force(), &Patch::Apply(&patch))
        .await
        .expect("spec updated");
}

/// Poll until `check` returns Some, or panic with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The condition `type_` of a Pipeline's status: (status, reason, message).
pub fn condition(p: &Pipeline, type_: &str) -> Option<(String, String, String)> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

pub async fn wait_condition(
    api: &Api<Pipeline>,
    name: &str,
    type_: &str,
    status: &str,
    timeout: Duration,
) -> Pipeline {
    eventually(timeout, &format!("{name} {type_}={status}"), || async {
        let p = api.get(name).await.ok()?;
        let fresh = p.status.as_ref()?.observed_generation == p.metadata.generation;
        (fresh && condition(&p, type_).is_some_and(|c| c.0 == status)).then_some(p)
    })
    .await
}

/// Play the kubelet: report the Deployment's pods as ready.
pub async fn mark_ready(client: &Client, namespace: &str, name: &str) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let d = api.get(name).await.expect("deployment exists");
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = serde_json::json!({
        "status": {
            "observedGeneration": d.metadata.generation,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
        }
    });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("deployment status");
}

/// Keep marking the Deployment ready while a test runs (the operator's
/// changes bump its generation, as a rollout would).
pub fn keep_ready(client: Client, namespace: String, name: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let api: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
            if let Ok(d) = api.get(&name).await {
                let s = d.status.clone().unwrap_or_default();
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                if s.observed_generation != d.metadata.generation || s.ready_replicas.unwrap_or(0) != want {
                    mark_ready(&client, &namespace, &name).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// The `vigil` binary of this workspace (built by `cargo test --workspace`;
/// built here when a narrower command did not).
pub fn vigil_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let bin = dir.join("vigil");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "vigil-runner", "--bin", "vigil"])
            .status()
            .unwrap();
        assert!(status.success(), "building the runner");
    }
    bin
}

/// Play the kubelet for one container: a command running the workspace's
/// `vigil` binary with the container's args and env, paths of the pod mapped
/// onto this machine (`paths`: pod prefix -> local directory), the HTTP
/// listener on 127.0.0.1:`port`, and fieldRefs to the namespace resolved.
pub fn container_command(
    container: &k8s_openapi::api::core::v1::Container,
    namespace: &str,
    paths: &[(&str, &std::path::Path)],
    port: u16,
) -> std::process::Command {
    let map = |v: &str| {
        let mut v = v.to_string();
        for (from, to) in paths {
            v = v.replace(from, to.to_str().unwrap());
        }
        v
    };
    let mut cmd = std::process::Command::new(vigil_binary());
    cmd.args(container.args.clone().unwrap_or_default().iter().map(|a| map(a)));
    for e in container.env.clone().unwrap_or_default() {
        let value = match (e.name.as_str(), e.value, e.value_from) {
            ("VIGIL_LISTEN", Some(_), _) => format!("127.0.0.1:{port}"),
            (_, Some(v), _) => map(&v),
            (_, None, Some(from)) => {
                let field = from.field_ref.expect("only fieldRefs are used").field_path;
                assert_eq!(field, "metadata.namespace");
                namespace.to_string()
            }
            (name, None, None) => panic!("env {name} has no value"),
        };
        cmd.env(&e.name, value);
    }
    cmd
}

/// The Deployment's pod, as its ReplicaSet would create it.
pub async fn create_pod(
    client: &Client,
    ns: &str,
    deployment: &str,
    pod: &str,
    http_port: Option<i32>,
) -> Pod {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let _ = sas
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}})).unwrap(),
        )
        .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d = eventually(Duration::from_secs(30), "deployment", || async {
        deployments.get(deployment).await.ok()
    })
    .await;
    let template = d.spec.unwrap().template;
    let mut pod_spec = template.spec.unwrap();
    if let Some(port) = http_port {
        pod_spec.containers[0].ports.as_mut().unwrap()[0].container_port = port;
        // Probes name the port; no kubelet runs them here.
    }
    let p = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(pod.into()),
            labels: template.metadata.unwrap().labels,
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), &p).await.expect("pod created")
}

/// Play the kubelet: write a pod's status.
pub async fn set_pod_status(client: &Client, ns: &str, pod: &str, status: serde_json::Value) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(&serde_json::json!({"status": status})))
        .await
        .expect("pod status");
}

/// The operator's `/metrics` on `port` (empty when it does not answer).
pub async fn metrics_text(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return String::new() };
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await;
    let mut body = String::new();
    let _ = s.read_to_string(&mut body).await;
    body
}
