//! Operator benchmarks against the real API server and broker of the e2e
//! harness, with the operator as a separate process (release build):
//!
//! 1. apply -> Ready latency of one Pipeline (the bench marks its Deployment
//!    ready, as there is no kubelet), over several runs;
//! 2. N Pipelines applied at once: time until all are Ready, the operator's
//!    peak memory, and its CPU over a quiet minute afterwards.
//!
//! `cargo bench -p vigil-operator --bench scale [-- --pipelines N --idle-seconds S --refresh-interval S]`
//! prints the figures recorded in operator/BENCHMARKS.md. `VIGIL_BENCH_OPERATOR=path`
//! runs another build of the operator (to compare two, run them in turns:
//! this machine's speed drifts by a third between minutes).

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use vigil_crds::Pipeline;
use vigil_e2e::{TestNamespace, install_crds, kafka, kube_client, unique_name};

use vigil_e2e::bench_arg as arg;

fn pipeline(name: &str, topics: &str) -> Pipeline {
    let yaml = format!(
        r#"apiVersion: vigil.dev/v1alpha1
kind: Pipeline
metadata: {{name: {name}}}
spec:
  input: {{topic: {{name: {topics}-in}}, keyField: host}}
  detector: {{algorithm: robustZ, features: [cpu]}}
  output: {{name: {topics}-out}}
  deadLetter: {{name: {topics}-dlq}}
  topicDeletionPolicy: Delete
"#
    );
    let value: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
    serde_json::from_value(value).unwrap()
}

fn start_operator(namespace: &str, refresh_interval: u64) -> (Child, u16) {
    let port = vigil_e2e::free_port();
    // Another build of the operator can be compared on the same harness.
    let binary = std::env::var("VIGIL_BENCH_OPERATOR")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_vigil-operator").to_string());
    let child = Command::new(binary)
        .args(["run", "--namespace", namespace, "--listen", &format!("127.0.0.1:{port}")])
        .args(["--kafka-bootstrap", vigil_e2e::kafka(), "--refresh-interval", &refresh_interval.to_string()])
        .env("KUBECONFIG", vigil_e2e::kubeconfig())
        .env("VIGIL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("vigil-operator starts");
    (child, port)
}

/// CPU seconds used so far by every process whose command is `comm` (the
/// API server, etcd, the broker's JVM).
fn cpu_of(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        // The harness's binaries carry their version (`kube-apiserver-v1.37.2`),
        // and the kernel keeps 15 characters of a command.
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim().starts_with(comm))
        })
        .map(|pid| proc_stats(pid).2)
        .sum()
}

/// A counter or histogram sum of the operator's `/metrics`, summed over
/// its labels.
fn metric(port: u16, name: &str) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return 0.0 };
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// (peak RSS KiB, current RSS KiB, CPU seconds) of a process, from /proc.
fn proc_stats(pid: u32) -> (u64, u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of /proc/pid/stat (11 and 12 after the command).
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    (kib("VmHWM:"), kib("VmRSS:"), cpu)
}

/// Mark every Deployment in the namespace ready whose status lags its spec.
async fn play_kubelet(client: &Client, namespace: &str) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let Ok(list) = api.list(&ListParams::default()).await else { return };
    for d in list.items {
        mark_ready(&api, &d).await;
    }
}

/// Write a Deployment's status as the deployment controller and a kubelet
/// would once its pods run, if it lags the spec.
async fn mark_ready(api: &Api<Deployment>, d: &Deployment) {
    let s = d.status.clone().unwrap_or_default();
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if s.observed_generation == d.metadata.generation && s.ready_replicas == Some(want) {
        return;
    }
    let status = serde_json::json!({"status": {
        "observedGeneration": d.metadata.generation, "replicas": want,
        "updatedReplicas": want, "readyReplicas": want, "availableReplicas": want,
    }});
    let _ = api.patch_status(&d.name_any(), &PatchParams::default(), &Patch::Merge(&status)).await;
}

/// `play_kubelet` for a burst, the way the real controllers do it: from a
/// watch, not by listing every Deployment again and again (a list of 500
/// every half second cost the API server more than the operator's own
/// writes, and is not what a cluster does).
async fn play_kubelet_watching(client: Client, namespace: String) {
    let api: Api<Deployment> = Api::namespaced(client, &namespace);
    let events = watcher(api.clone(), watcher::Config::default()).default_backoff().applied_objects();
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        if let Ok(d) = event {
            mark_ready(&api, &d).await;
        }
    }
}

/// The API server's request counts so far, by verb and resource
/// (`apiserver_request_total` of its `/metrics`), to say which requests a
/// burst of Pipelines costs.
async fn api_requests(client: &Client) -> std::collections::BTreeMap<String, f64> {
    let mut counts = std::collections::BTreeMap::new();
    let request = hyper::http::Request::get("/metrics").body(Vec::new()).unwrap();
    let Ok(text) = client.request_text(request).await else { return counts };
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let label = |key: &str| {
            labels
                .split(&format!("{key}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("")
                .to_string()
        };
        let sub = label("subresource");
        let key = format!(
            "{} {}{}",
            label("verb"),
            label("resource"),
            if sub.is_empty() { sub } else { format!("/{sub}") }
        );
        *counts.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    counts
}

fn ready(p: &Pipeline) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.observed_generation == p.metadata.generation
            && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// An earlier run's namespaces are deleted in the background: the garbage
/// collector removing its thousands of children would share the API server
/// with this run's burst, so wait for them to be gone (up to a minute: a
/// namespace whose Pipelines lost their operator before their finalizers
/// ran stays until an operator runs there again).
async fn wait_for_earlier_runs(client: &Client) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let started = Instant::now();
    loop {
        let left: Vec<String> = api
            .list(&ListParams::default())
            .await
            .map(|l| l.items.into_iter().map(|n| n.name_any()).filter(|n| n.starts_with("bench-")).collect())
            .unwrap_or_default();
        if left.is_empty() || started.elapsed() > Duration::from_secs(60) {
            if !left.is_empty() {
                println!("earlier runs' namespaces still there after a minute, going on: {left:?}");
            }
            return;
        }
        if started.elapsed() < Duration::from_secs(2) {
            println!("waiting for earlier runs' namespaces to be deleted: {left:?}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[tokio::main]
async fn main() {
    let n = arg("--pipelines", 500) as usize;
    let idle = arg("--idle-seconds", 60);
    let refresh_interval = arg("--refresh-interval", 60);
    let client = kube_client().await.unwrap();
    install_crds(&client).await.unwrap();
    wait_for_earlier_runs(&client).await;

    // 1. One Pipeline, several times.
    let ns = TestNamespace::create(&client, "bench-one").await.unwrap();
    let (mut op, _) = start_operator(&ns.name, refresh_interval);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let api: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let mut latencies = Vec::new();
    for i in 0..5 {
        let name = format!("one-{i}");
        let started = Instant::now();
        api.create(&PostParams::default(), &pipeline(&name, &unique_name("bench1"))).await.unwrap();
        loop {
            play_kubelet(&client, &ns.name).await;
            if api.get(&name).await.is_ok_and(|p| ready(&p)) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{name} not Ready in 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    println!(
        "apply -> Ready for one Pipeline (5 runs): min {:?}, median {:?}, max {:?}",
        latencies[0], latencies[2], latencies[4]
    );
    for i in 0..5 {
        let _ = api.delete(&format!("one-{i}"), &Default::default()).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = op.kill();
    let _ = op.wait();
    let _ = ns.cleanup().await;

    // 2. Many at once.
    let ns = TestNamespace::create(&client, "bench-many").await.unwrap();
    let (mut op, port) = start_operator(&ns.name, refresh_interval);
    let pid = op.id();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (reconciles_before, busy_before) = (
        metric(port, "vigil_operator_reconciles_total"),
        metric(port, "vigil_operator_reconcile_duration_seconds_sum"),
    );
    let components = ["kube-apiserver", "etcd", "java", "kube-controller"];
    let component_cpu_before: Vec<f64> = components.iter().map(|c| cpu_of(c)).collect();
    let operator_cpu_before = proc_stats(pid).2;
    let requests_before = api_requests(&client).await;
    let api: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let prefix = unique_name("bench");
    let started = Instant::now();
    let creates = (0..n).map(|i| {
        let api = api.clone();
        let p = pipeline(&format!("p{i}"), &format!("{prefix}-{i}"));
        async move { api.create(&PostParams::default(), &p).await }
    });
    for r in futures::future::join_all(creates).await {
        r.unwrap();
    }
    println!("created {n} Pipelines in {:?}", started.elapsed());
    // Readiness from a watch too, for the same reason.
    let kubelet = tokio::spawn(play_kubelet_watching(client.clone(), ns.name.clone()));
    let mut peak_seen = 0;
    let mut ready_now: HashSet<String> = HashSet::new();
    let events = watcher(api.clone(), watcher::Config::default()).default_backoff().applied_objects();
    futures::pin_mut!(events);
    let mut memory_sampled = Instant::now();
    while ready_now.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(1), events.next()).await;
        if let Ok(Some(Ok(p))) = next {
            if ready(&p) {
                ready_now.insert(p.name_any());
            } else {
                ready_now.remove(&p.name_any());
            }
        }
        if memory_sampled.elapsed() > Duration::from_millis(500) {
            peak_seen = peak_seen.max(proc_stats(pid).0);
            memory_sampled = Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "only {}/{n} Ready after 15 minutes",
            ready_now.len()
        );
    }
    let all_ready = started.elapsed();
    kubelet.abort();
    let (hwm, rss, cpu_before) = proc_stats(pid);
    let reconciles = metric(port, "vigil_operator_reconciles_total") - reconciles_before;
    let busy = metric(port, "vigil_operator_reconcile_duration_seconds_sum") - busy_before;
    let failures = metric(port, "vigil_operator_reconcile_failures_total");
    println!(
        "during the burst: {reconciles:.0} reconciles ({:.1} per Pipeline, {:.1} per second, mean {:.0} ms each, {failures:.0} failed)",
        reconciles / n as f64,
        reconciles / all_ready.as_secs_f64(),
        1000.0 * busy / reconciles.max(1.0)
    );
    let requests_after = api_requests(&client).await;
    let mut per_pipeline: Vec<(String, f64)> = requests_after
        .iter()
        .map(|(k, v)| (k.clone(), (v - requests_before.get(k).unwrap_or(&0.0)) / n as f64))
        .filter(|(k, v)| *v >= 0.05 && !k.starts_with("WATCH"))
        .collect();
    per_pipeline.sort_by(|a, b| b.1.total_cmp(&a.1));
    let writes: f64 = per_pipeline
        .iter()
        .filter(|(k, _)| ["POST", "PUT", "PATCH", "APPLY", "DELETE"].iter().any(|v| k.starts_with(v)))
        .map(|(_, v)| v)
        .sum();
    println!(
        "API server requests per Pipeline during the burst ({writes:.1} writes): {}",
        per_pipeline.iter().map(|(k, v)| format!("{k} {v:.2}")).collect::<Vec<_>>().join(", ")
    );
    let mut cpu = vec![format!("vigil-operator {:.1}", cpu_before - operator_cpu_before)];
    for (c, before) in components.iter().zip(&component_cpu_before) {
        cpu.push(format!("{c} {:.1}", cpu_of(c) - before));
    }
    println!(
        "CPU seconds during the burst ({:.1} s on 2 cores = {:.1} CPU s available): {}",
        all_ready.as_secs_f64(),
        2.0 * all_ready.as_secs_f64(),
        cpu.join(", ")
    );
    println!(
        "{n} Pipelines applied at once: all Ready after {all_ready:?}; operator peak RSS {:.1} MiB (now {:.1} MiB)",
        hwm.max(peak_seen) as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let (_, rss_after, cpu_after) = proc_stats(pid);
    println!(
        "idle {idle} s afterwards (re-check every {refresh_interval} s, 0 = only on change): {:.2} CPU seconds = {:.2}% of one core; RSS {:.1} MiB",
        cpu_after - cpu_before,
        100.0 * (cpu_after - cpu_before) / idle as f64,
        rss_after as f64 / 1024.0
    );

    // Clean up: the operator deletes the topics through its finalizer.
    let names: HashSet<String> =
        api.list(&ListParams::default()).await.unwrap().items.iter().map(|p| p.name_any()).collect();
    for name in &names {
        let _ = api.delete(name, &Default::default()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline
        && !api.list(&ListParams::default()).await.map(|l| l.items.is_empty()).unwrap_or(true)
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = op.kill();
    let _ = op.wait();
    let leftover: Vec<String> = (0..n)
        .flat_map(|i| ["in", "out", "dlq"].map(|s| format!("{prefix}-{i}-{s}")))
        .filter(|t| kafka::partitions(t).ok().flatten().is_some())
        .collect();
    if !leftover.is_empty() {
        let refs: Vec<&str> = leftover.iter().map(String::as_str).collect();
        let _ = kafka::delete_topics(&refs).await;
    }
    let _ = ns.cleanup().await;
}
