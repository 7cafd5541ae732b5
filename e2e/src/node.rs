//! The harness's real node (`e2e/up --node`): containerd, kubelet,
//! kube-scheduler and kube-proxy running Vigil's own images, and Helm to
//! install Vigil on it as users do. Tests that need it are named
//! `real_node_...`; they run after the others (`e2e/test`), because the node
//! brings the Deployment controller, which overwrites the Deployment status
//! the other tests write themselves.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use anyhow::{Result, bail};

use crate::{kubeconfig, repo_dir, setting};

/// Where pods reach the harness's services.
#[derive(Debug, Clone)]
pub struct Node {
    /// The node's IP (an address on lo).
    pub ip: String,
    /// The broker's listener for pods.
    pub kafka_bootstrap: String,
    /// The broker's SASL_SSL listener for pods (see `kafka::secure`).
    pub kafka_secure_bootstrap: String,
}

/// The node, started if needed (and the control plane and broker with it,
/// restarted in node mode if they ran without it).
pub fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        let ready = || {
            setting("VIGIL_NODE").is_some()
                && Command::new("kubectl")
                    .args(["--kubeconfig", &kubeconfig_path(), "get", "node", "vigil-node"])
                    .args(["-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"])
                    .output()
                    .is_ok_and(|o| o.stdout == b"True")
        };
        if !ready() {
            if let Err(e) = crate::bring_up("--node") {
                panic!("the node could not be started: {e:#}");
            }
        }
        Node {
            ip: setting("VIGIL_NODE_IP").expect("VIGIL_NODE_IP"),
            kafka_bootstrap: setting("VIGIL_KAFKA_POD_BOOTSTRAP").expect("VIGIL_KAFKA_POD_BOOTSTRAP"),
            kafka_secure_bootstrap: setting("VIGIL_KAFKA_POD_SECURE_BOOTSTRAP")
                .expect("VIGIL_KAFKA_POD_SECURE_BOOTSTRAP (restart the node: e2e/down && e2e/up --node)"),
        }
    })
}

fn kubeconfig_path() -> String {
    setting("VIGIL_KUBECONFIG").unwrap_or_else(|| kubeconfig().display().to_string())
}

/// The Helm binary, built once (`e2e/lib/tools.sh build helm`).
pub fn helm_binary() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let script = repo_dir().join("e2e/lib/tools.sh");
        let built = Command::new(&script).args(["build", "helm"]).output().expect("tools.sh runs");
        assert!(built.status.success(), "building helm: {}", String::from_utf8_lossy(&built.stderr));
        let path = Command::new(&script).args(["path", "helm"]).output().expect("tools.sh runs");
        PathBuf::from(String::from_utf8_lossy(&path.stdout).trim())
    })
}

/// Run helm against the harness's API server, with its caches in a
/// directory of the harness's own.
pub fn helm(args: &[&str]) -> Output {
    let home = crate::state_dir().join("helm");
    Command::new(helm_binary())
        .env("KUBECONFIG", kubeconfig())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("helm could not be run: {e}"))
}

/// Run helm and fail with its output unless it succeeds.
pub fn helm_ok(args: &[&str]) -> Result<String> {
    let out = helm(args);
    if !out.status.success() {
        bail!(
            "helm {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The chart's directory.
pub fn chart() -> PathBuf {
    repo_dir().join("helm/vigil")
}

/// `--set` arguments that point the chart at the images the harness built
/// and imported, and at the broker's listener for pods.
pub fn local_image_values(node: &Node) -> Vec<String> {
    [
        "image.repository=registry.local/vigil/vigil-operator".to_string(),
        "image.tag=dev".into(),
        "image.pullPolicy=Never".into(),
        "runner.image.repository=registry.local/vigil/vigil-runner".into(),
        "runner.image.tag=dev".into(),
        format!("kafka.bootstrapServers={}", node.kafka_bootstrap),
    ]
    .into_iter()
    .flat_map(|v| ["--set".to_string(), v])
    .collect()
}

/// Host processes (pids) whose command line starts with `argv0` and
/// contains `arg`: the node's containers, seen from the host.
pub fn processes(argv0: &str, arg: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> =
            cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.first().is_some_and(|a| a == argv0) && args.iter().any(|a| a == arg) {
            pids.push(pid);
        }
    }
    pids
}

/// The namespace the tests install the chart into.
pub const VIGIL_NAMESPACE: &str = "vigil-system";

/// Install (or upgrade) the chart once per test binary, as release `vigil`
/// in `vigil-system`, from the locally built images, and wait for the
/// operator to be ready. `--take-ownership --force-conflicts`: the CRDs may
/// have been applied without Helm (kubectl, server-side apply) by the
/// node-less tests.
pub fn install_vigil() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let node = node();
        let chart = chart();
        let mut args: Vec<String> = ["upgrade", "--install", "vigil", chart.to_str().unwrap_or_default()]
            .into_iter()
            .map(String::from)
            .collect();
        args.extend(
            [
                "--namespace",
                VIGIL_NAMESPACE,
                "--create-namespace",
                "--take-ownership",
                "--force-conflicts",
                "--wait",
                "--timeout",
                "240s",
            ]
            .map(String::from),
        );
        args.extend(["--set".to_string(), "refreshInterval=5".to_string()]);
        args.extend(local_image_values(node));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if let Err(e) = helm_ok(&args) {
            panic!("{e:#}\n{}", diagnostics(VIGIL_NAMESPACE));
        }
    });
}

/// What a person would look at when something does not come up: pods,
/// Deployments and Pipelines of `namespace`, its Events, the operator's log.
pub fn diagnostics(namespace: &str) -> String {
    let out = |args: &[&str]| {
        let o = crate::kubectl(args);
        format!(
            "$ kubectl {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    [
        out(&["get", "pods,deployments,pipelines", "-n", namespace, "-o", "wide"]),
        out(&["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"]),
        out(&[
            "logs",
            "-n",
            VIGIL_NAMESPACE,
            "-l",
            "app.kubernetes.io/component=operator",
            "--tail=30",
            "--prefix",
        ]),
    ]
    .join("\n")
}

/// Poll `check` until it gives a value; after `timeout`, fail with `what`
/// and the diagnostics of namespace `ns`.
pub async fn wait_for<T, F, Fut>(what: &str, ns: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: not within {timeout:?}\n{}", diagnostics(ns));
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// `kubectl apply` a manifest given as text into namespace `ns`; panics
/// with kubectl's message if it is refused.
pub fn apply_manifest(ns: &str, yaml: &str) {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig())
        .args(["apply", "-n", ns, "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("kubectl could not be run: {e}"));
    child.stdin.take().expect("stdin").write_all(yaml.as_bytes()).expect("manifest written to kubectl");
    let out = child.wait_with_output().expect("kubectl ran");
    assert!(out.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
}

/// The `id` fields of the JSON records on `topic`, read from the start
/// until every id of `0..n` is there or `timeout` has passed.
pub fn ids_out(topic: &str, n: u64, timeout: std::time::Duration) -> std::collections::HashSet<u64> {
    let deadline = std::time::Instant::now() + timeout;
    let mut seen = std::collections::HashSet::new();
    while (seen.len() as u64) < n && std::time::Instant::now() < deadline {
        seen.clear();
        let records = crate::kafka::drain(topic, usize::MAX, std::time::Duration::from_secs(8), false)
            .unwrap_or_else(|e| panic!("reading {topic}: {e}"));
        for r in records {
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap_or_default();
            if let Some(id) = v["id"].as_u64() {
                seen.insert(id);
            }
        }
    }
    seen
}
