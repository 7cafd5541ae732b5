//! The dashboards against a real Prometheus: it scrapes the runner pods and
//! the operator pods on the real node, and every PromQL expression of the
//! Pipeline's generated dashboard (from the ConfigMap the operator wrote)
//! and of the operator's dashboard is evaluated through Prometheus's HTTP
//! API and returns data. Prometheus also loads Vigil's alerting rules.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams};
use vigil_crds::Pipeline;
use vigil_e2e::node::{VIGIL_NAMESPACE, diagnostics, install_vigil};
use vigil_e2e::{TestNamespace, free_port, kafka, kube_client, kubectl, unique_name};
use vigil_operator::pipeline::dashboard::dashboard_queries;

struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tool(name: &str) -> PathBuf {
    let script = vigil_e2e::repo_dir().join("e2e/lib/tools.sh");
    let built = Command::new(&script).args(["build", "prometheus"]).output().unwrap();
    assert!(built.status.success(), "building prometheus: {}", String::from_utf8_lossy(&built.stderr));
    let path = Command::new(&script).args(["path", name]).output().unwrap();
    PathBuf::from(String::from_utf8_lossy(&path.stdout).trim())
}

/// Prometheus scraping `targets` (job, address, pod) every second, with
/// Vigil's alerting rules loaded.
fn start_prometheus(targets: &[(&str, String, String)]) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let mut scrape = String::new();
    for job in ["runners", "operator"] {
        scrape.push_str(&format!("  - job_name: {job}\n    static_configs:\n"));
        for (j, addr, pod) in targets.iter().filter(|t| t.0 == job) {
            let _ = j;
            scrape.push_str(&format!("      - targets: ['{addr}']\n        labels: {{pod: '{pod}'}}\n"));
        }
    }
    let rules = vigil_e2e::repo_dir().join("helm/vigil/files/prometheus-rules.yaml");
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: ['{}']\nscrape_configs:\n{scrape}",
        rules.display()
    );
    std::fs::write(dir.path().join("prometheus.yml"), &config).unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let p = Prometheus { child, port, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(60);
    while query_raw(p.port, "up").is_none() {
        assert!(Instant::now() < deadline, "Prometheus did not start: {}", prometheus_log(&p));
        std::thread::sleep(Duration::from_millis(300));
    }
    p
}

fn prometheus_log(p: &Prometheus) -> String {
    std::fs::read_to_string(p._dir.path().join("prometheus.log")).unwrap_or_default()
}

/// An instant query through the HTTP API: the JSON answer.
fn query_raw(port: u16, expr: &str) -> Option<serde_json::Value> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5", "-G", &format!("http://127.0.0.1:{port}/api/v1/query")])
        .args(["--data-urlencode", &format!("query={expr}")])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn results(port: u16, expr: &str) -> Vec<serde_json::Value> {
    let v = query_raw(port, expr).unwrap_or_default();
    assert_eq!(v["status"], "success", "{expr}: {v}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn pod_targets(pods: &[Pod], job: &'static str) -> Vec<(&'static str, String, String)> {
    pods.iter()
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            // The container port named http: 8080 on runners, 8081 on the
            // history component, 8080 on the operator.
            let port = p
                .spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some("http"))
                .map_or(8080, |p| p.container_port);
            Some((job, format!("{ip}:{port}"), p.metadata.name.clone()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn real_node_every_dashboard_query_returns_data_from_a_real_prometheus() {
    install_vigil();
    let client = kube_client().await.unwrap();
    let ns = TestNamespace::create(&client, "node-obs").await.unwrap();
    let t = unique_name("obs");
    let yaml = format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {{name: obs}}
spec:
  input: {{topic: {{name: {t}-in, partitions: 2}}, keyField: host}}
  detector: {{algorithm: robustZ, features: [cpu]}}
  output: {{name: {t}-out, partitions: 2}}
  deadLetter: {{name: {t}-dlq}}
  topicDeletionPolicy: Delete
  resources: {{requests: {{cpu: 10m, memory: 32Mi}}, limits: {{memory: 256Mi}}}}
  storage: {{size: 64Mi, retention: 1d}}
"#
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("obs.yaml"), &yaml).unwrap();
    assert!(
        kubectl(&["apply", "-n", &ns.name, "-f", dir.path().join("obs.yaml").to_str().unwrap()])
            .status
            .success()
    );
    let api: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // Ready, and the history component too (its panels are checked).
        let ready = api.get("obs").await.ok().and_then(|p| p.status).is_some_and(|s| {
            ["Ready", "HistoryReady"]
                .iter()
                .all(|t| s.conditions.iter().any(|c| c.type_ == *t && c.status == "True"))
        });
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "not Ready\n{}", diagnostics(&ns.name));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let runners = pods.list(&ListParams::default().labels("vigil.dev/pipeline=obs")).await.unwrap().items;
    let operators: Api<Pod> = Api::namespaced(client.clone(), VIGIL_NAMESPACE);
    let operators = operators
        .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
        .await
        .unwrap()
        .items;
    let mut targets = pod_targets(&runners, "runners");
    targets.extend(pod_targets(&operators, "operator"));
    assert!(targets.len() >= 3, "{targets:?}");
    let prom = start_prometheus(&targets);

    // Records (some anomalous, one not JSON) while Prometheus scrapes.
    let input = format!("{t}-in");
    let feeder = tokio::spawn(async move {
        for round in 0..20u64 {
            let mut records: Vec<Vec<u8>> = (0..200u64)
                .map(|i| {
                    let cpu = if i % 97 == 0 && round > 5 { 99.0 } else { 40.0 + (i % 5) as f64 };
                    format!(r#"{{"host": "h{}", "cpu": {cpu}}}"#, i % 4).into_bytes()
                })
                .collect();
            records.push(b"not json".to_vec());
            let pairs: Vec<(Option<&str>, &[u8])> = records.iter().map(|r| (None, r.as_slice())).collect();
            kafka::produce(&input, &pairs).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = results(prom.port, "up == 1");
        if up.len() == targets.len() {
            break;
        }
        assert!(Instant::now() < deadline, "targets not all up: {up:?}\n{}", prometheus_log(&prom));
        std::thread::sleep(Duration::from_secs(1));
    }
    // A few seconds of samples for the rate() windows.
    tokio::time::sleep(Duration::from_secs(8)).await;

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let cm = cms.get("obs-dashboard").await.unwrap();
    let json: serde_json::Value = serde_json::from_str(cm.data.unwrap().values().next().unwrap()).unwrap();
    let mut queries = dashboard_queries(&json);
    let operator_dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            vigil_e2e::repo_dir().join("helm/vigil/files/dashboards/vigil-operator.json"),
        )
        .unwrap(),
    )
    .unwrap();
    queries.extend(dashboard_queries(&operator_dashboard));
    assert!(queries.len() >= 15, "{queries:?}");
    let mut empty = Vec::new();
    for q in &queries {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if !results(prom.port, q).is_empty() {
                break;
            }
            if Instant::now() > deadline {
                empty.push(q.clone());
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    feeder.await.unwrap();
    assert!(empty.is_empty(), "queries that return no data from the real runners and operator: {empty:#?}");

    // The rules Prometheus loaded are Vigil's, healthy.
    let out = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{}/api/v1/rules", prom.port)])
        .output()
        .unwrap();
    let rules: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let loaded: Vec<&serde_json::Value> =
        rules["data"]["groups"][0]["rules"].as_array().map(|r| r.iter().collect()).unwrap_or_default();
    assert_eq!(loaded.len(), 5, "{rules}");
    assert!(loaded.iter().all(|r| r["health"] == "ok" || r["health"] == "unknown"), "{rules}");
    ns.cleanup().await.unwrap();
}
