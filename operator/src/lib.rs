//! The Vigil operator: reconciles `Pipeline` resources into Kafka topics and
//! Kubernetes workloads, and reports status you can trust.

pub mod chaos;
pub mod context;
pub mod controller;
pub mod crdgen;
pub mod kafka;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod offsets;
pub mod pipeline;
pub mod rbac;
pub mod webhook;

/// Lock a mutex, taking over one a panicking thread left poisoned: the
/// operator's shared maps stay usable (each update is a single insert or
/// remove, never left half done).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Wait until the Pipeline `namespace/name` is Ready for its current
/// generation; print its conditions and fail if it is not within `timeout`
/// (`vigil-operator wait-ready`, what the chart's `helm test` runs).
pub async fn wait_ready(
    client: kube::Client,
    namespace: &str,
    name: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let api: kube::Api<vigil_crds::Pipeline> = kube::Api::namespaced(client, namespace);
    let deadline = std::time::Instant::now() + timeout;
    let mut last = None;
    while std::time::Instant::now() < deadline {
        match api.get_opt(name).await {
            Ok(Some(p)) => {
                let status = p.status.clone().unwrap_or_default();
                let current = status.observed_generation == p.metadata.generation;
                if current && status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True") {
                    println!("Pipeline {namespace}/{name} is Ready");
                    return Ok(());
                }
                last = Some(status);
            }
            Ok(None) => {}
            Err(e) => eprintln!("reading Pipeline {namespace}/{name}: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    let conditions = last
        .map(|s| {
            s.conditions
                .iter()
                .map(|c| format!("  {}={} {}: {}", c.type_, c.status, c.reason, c.message))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_else(|| "  (no status yet)".into());
    anyhow::bail!("Pipeline {namespace}/{name} is not Ready after {timeout:?}:\n{conditions}")
}
