//! The whole path as users run it, on the harness's real node: `helm
//! install` of the chart (CRDs, RBAC, the operator Deployment from its own
//! image, leader election on), the shipped examples applied as they are,
//! runner pods made Ready by their own probes, records in and scored
//! records out, status, logs, the runner Service, the history component
//! and its Data API, and pod security checked
//! on the running processes, not on the manifests.

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams};
use vigil_crds::Pipeline;
use vigil_e2e::node::{diagnostics, install_vigil, processes};
use vigil_e2e::{TestNamespace, kafka, kube_client, kubectl, repo_dir};

async fn wait_ready(api: &Api<Pipeline>, name: &str, ns: &str, timeout: Duration) -> Pipeline {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(p) = api.get(name).await {
            let s = p.status.clone().unwrap_or_default();
            let ready = s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
            if ready && s.observed_generation == p.metadata.generation {
                return p;
            }
        }
        assert!(Instant::now() < deadline, "{name} not Ready within {timeout:?}\n{}", diagnostics(ns));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Fields of /proc/PID/status.
fn proc_status(pid: u32) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.to_string(), v.trim().to_string())))
        .collect()
}

/// Whether the process's root filesystem is mounted read-only.
fn root_read_only(pid: u32) -> bool {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    mountinfo.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(4) == Some(&"/") && f.get(5).is_some_and(|o| o.split(',').any(|x| x == "ro"))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn real_node_helm_install_examples_and_records_through_running_pods() {
    install_vigil();
    let client = kube_client().await.unwrap();
    let ns = TestNamespace::create(&client, "node-path").await.unwrap();

    // The operator runs from its image, in its Deployment, with its
    // ServiceAccount: ready through its own probes (helm --wait).
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "vigil-system");
    let op = deployments.get("vigil-operator").await.unwrap();
    assert_eq!(op.status.as_ref().and_then(|s| s.ready_replicas), Some(2), "{}", diagnostics("vigil-system"));

    // The shipped examples, applied as they are.
    let examples = repo_dir().join("examples/pipelines");
    let out = kubectl(&["apply", "-n", &ns.name, "-f", examples.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let api: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    for name in ["cpu-anomalies", "sensor-anomalies"] {
        let p = wait_ready(&api, name, &ns.name, Duration::from_secs(180)).await;
        let s = p.status.unwrap();
        assert_eq!(s.ready_replicas, s.replicas, "{name}: every runner pod is ready");
        assert!(s.ready_replicas.unwrap_or(0) >= 1);
    }
    // GitOps: once the operator has reconciled, the user's manifests show
    // no difference (defaults, status and the finalizer never fight them).
    let diff = kubectl(&["diff", "-n", &ns.name, "-f", examples.to_str().unwrap()]);
    assert!(
        diff.status.success(),
        "kubectl diff after reconcile:\n{}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
    let table = kubectl(&["get", "pipelines", "-n", &ns.name]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert_eq!(table.matches("Running").count(), 2, "kubectl get pipelines:\n{table}");

    // Records in, scored records out, through the runner pods.
    let run = vigil_e2e::unique_name("r");
    let records: Vec<String> = (0..300)
        .map(|i| {
            format!(
                r#"{{"run": "{run}", "id": {i}, "host": "web-{}", "timestamp": "2026-12-01 10:{:02}:{:02}", "cpu": {}}}"#,
                i % 3,
                i / 60,
                i % 60,
                30.0 + (i % 7) as f64
            )
        })
        .collect();
    let pairs: Vec<(Option<&str>, &[u8])> = records.iter().map(|r| (None, r.as_bytes())).collect();
    kafka::produce("cpu-metrics", &pairs).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 300 && Instant::now() < deadline {
        for r in kafka::drain("cpu-scores", usize::MAX, Duration::from_secs(5), false).unwrap() {
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap_or_default();
            if v["run"] == run.as_str() {
                assert!(v["anomaly"]["score"].is_number(), "scored: {v}");
                seen.insert(v["id"].as_u64().unwrap());
            }
        }
    }
    assert_eq!(seen.len(), 300, "every record came out scored\n{}", diagnostics(&ns.name));

    // The lag the operator reports falls to zero.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = api.get("cpu-anomalies").await.unwrap();
        if p.status.as_ref().and_then(|s| s.consumer_lag) == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "consumer lag did not reach 0: {:?}\n{}",
            p.status,
            diagnostics(&ns.name)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // kubectl logs shows the runner's JSON logs.
    let logs = kubectl(&["logs", "-n", &ns.name, "deployment/cpu-anomalies-runner"]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    let first: serde_json::Value =
        serde_json::from_str(logs.lines().next().unwrap_or("")).unwrap_or_default();
    assert!(first["level"].is_string() && first["message"].is_string(), "JSON logs:\n{logs}");
    assert!(logs.contains("Runner started"), "{logs}");

    // The runner Service answers /metrics (through kube-proxy).
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let svc = services.get("cpu-anomalies-runner").await.unwrap();
    let ip = svc.spec.unwrap().cluster_ip.unwrap();
    let metrics = Command::new("curl")
        .args(["-sf", "--max-time", "5", &format!("http://{ip}:8080/metrics")])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(metrics.contains("vigil_records_in_total"), "metrics through the Service:\n{metrics}");

    // The example has spec.storage: its history component runs from the
    // runner image with a volume of its own, stores what the runners
    // wrote, and serves the Data API through its Service.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = api.get("cpu-anomalies").await.unwrap();
        let c = p.status.unwrap_or_default().conditions.into_iter().find(|c| c.type_ == "HistoryReady");
        if c.as_ref().is_some_and(|c| c.status == "True") {
            break;
        }
        assert!(Instant::now() < deadline, "HistoryReady: {c:?}\n{}", diagnostics(&ns.name));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let api_svc = services.get("cpu-anomalies-api").await.unwrap();
    let api_url = format!("http://{}:8081", api_svc.spec.unwrap().cluster_ip.unwrap());
    let curl = |args: &[&str]| {
        let out = Command::new("curl").args(["-s", "--max-time", "10"]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Publish through the API; the records come back scored, and the
    // store counts them per key. (The example's topics outlive a test run,
    // and the component stores what the output topic holds: a key of this
    // run's own.)
    let api_key = format!("api-{run}");
    let published: String = (0..30)
        .map(|i| format!("{{\"run\": \"{run}-api\", \"id\": {i}, \"host\": \"{api_key}\", \"timestamp\": \"2026-12-01 11:00:{i:02}\", \"cpu\": 31.5}}\n"))
        .collect();
    let answer = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/x-ndjson",
        "--data-binary",
        &published,
        &format!("{api_url}/v1/records"),
    ]);
    assert!(answer.contains("\"accepted\":30"), "POST /v1/records: {answer}");
    // The store counts what the output topic holds for that key: each
    // record once per runner group that scored it (one, unless a Pipeline
    // of an earlier run in another namespace still reads the same topic).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let on_topic = kafka::drain("cpu-scores", usize::MAX, Duration::from_secs(3), false)
            .unwrap()
            .iter()
            .filter(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap_or_default();
                v["host"] == api_key.as_str()
            })
            .count() as i64;
        let page = curl(&[&format!("{api_url}/v1/history?key={api_key}")]);
        let v: serde_json::Value = serde_json::from_str(&page).unwrap_or_default();
        let n: i64 = v["items"].as_array().map_or(0, |r| r.iter().filter_map(|x| x["count"].as_i64()).sum());
        if on_topic >= 30 && n == on_topic {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "history of {api_key}: {page} ({on_topic} on the output topic)\n{}",
            diagnostics(&ns.name)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let info: serde_json::Value = serde_json::from_str(&curl(&[&format!("{api_url}/v1/pipeline")])).unwrap();
    assert!(info["store"]["records"].as_i64().unwrap_or(0) >= 330, "{info}");
    assert_eq!(info["history"]["state"], "Running", "{info}");

    // Pod security, from the running processes: not root, no capabilities,
    // no privilege escalation, a read-only root filesystem.
    // Replicas of an earlier release may still be shutting down.
    let deadline = Instant::now() + Duration::from_secs(45);
    let (runners, operators) = loop {
        let runners: Vec<u32> = processes("/usr/local/bin/vigil", "run")
            .into_iter()
            .chain(processes("/usr/local/bin/vigil", "history-server"))
            .collect();
        let operators = processes("/usr/local/bin/vigil-operator", "run");
        if !runners.is_empty() && operators.len() == 2 {
            break (runners, operators);
        }
        assert!(Instant::now() < deadline, "runner {runners:?}, operator {operators:?} processes");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    for pid in runners.iter().chain(&operators) {
        let st = proc_status(*pid);
        assert!(st["Uid"].split_whitespace().all(|u| u == "65532"), "pid {pid} uid {}", st["Uid"]);
        assert_eq!(st["CapEff"], "0000000000000000", "pid {pid}: capabilities dropped");
        assert_eq!(st["CapPrm"], "0000000000000000", "pid {pid}");
        assert_eq!(st["NoNewPrivs"], "1", "pid {pid}: no privilege escalation");
        assert!(root_read_only(*pid), "pid {pid}: read-only root filesystem");
    }

    // Every runner pod is Ready through its readiness probe, on the node.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let list = pods.list(&ListParams::default().labels("app.kubernetes.io/component=runner")).await.unwrap();
    assert!(!list.items.is_empty());
    for p in &list.items {
        assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("vigil-node"));
    }
    ns.cleanup().await.unwrap();
}

#[test]
fn real_node_a_second_node_on_the_same_host_is_refused_clearly() {
    vigil_e2e::node::node();
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(repo_dir().join("e2e/lib/node.sh"))
        .arg("start")
        .env("VIGIL_STATE", other.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second node must not start");
    assert!(err.contains("only one node can run per host"), "{err}");
    assert!(err.contains("e2e/down"), "says how to stop the first: {err}");
}
