//! Why a Pipeline's runners are not ready, from what users would look at by
//! hand: the runner pods (a container waiting in `CrashLoopBackOff` with the
//! error the runner wrote to its termination log, an image that cannot be
//! pulled, a pod that cannot be scheduled), the Deployment's conditions
//! (`ReplicaFailure`, `ProgressDeadlineExceeded`), and for a runner that is
//! running but not ready, its own `/status` (stalled on an unwritable
//! dead-letter topic, with the record it was on). `RunnersReady=False`
//! then carries that reason and message instead of a bare count.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DeploymentStatus;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::reflector::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vigil_crds::kafka_access::AccessProblem;

/// Why runners are not ready: (reason, message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: String,
    pub message: String,
}

/// Waiting reasons that will not resolve by themselves.
const STUCK_WAITING: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// A running container may take this long to become ready before the
/// runner's own status is reported as the reason.
const STARTUP_GRACE: Duration = Duration::from_secs(30);

/// Longest termination message or runner status quoted in a condition.
const MAX_QUOTE: usize = 600;

fn quote(s: &str) -> String {
    let s = s.trim();
    if s.len() <= MAX_QUOTE {
        return s.to_string();
    }
    let mut end = MAX_QUOTE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn runner_container(pod: &Pod) -> Option<&ContainerStatus> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().find(|c| c.name == "runner").or_else(|| statuses.first())
}

/// The runner's last exit, as the kubelet recorded it.
fn last_exit(c: &ContainerStatus) -> Option<String> {
    let t = c.last_state.as_ref()?.terminated.as_ref()?;
    let mut s = format!("last exit code {}", t.exit_code);
    if let Some(r) = t.reason.as_deref().filter(|r| *r != "Error") {
        s.push_str(&format!(" ({r})"));
    }
    if let Some(m) = t.message.as_deref().filter(|m| !m.trim().is_empty()) {
        s.push_str(&format!(": {}", quote(m)));
    }
    Some(s)
}

fn pod_name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("?")
}

/// The problem of one pod, if it has one. `status` is the runner's
/// `/status` document, when it was fetched.
fn pod_problem(pod: &Pod, status: Option<&serde_json::Value>, now: Timestamp) -> Option<Problem> {
    let name = pod_name(pod);
    let ps = pod.status.as_ref()?;
    if let Some(c) = runner_container(pod) {
        let restarts = if c.restart_count > 0 {
            format!("; restarted {} times", c.restart_count)
        } else {
            String::new()
        };
        let exit = last_exit(c).map(|e| format!("; {e}")).unwrap_or_default();
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.clone().unwrap_or_default();
            if STUCK_WAITING.contains(&reason.as_str()) {
                let detail = w.message.as_deref().map(|m| format!(": {}", quote(m))).unwrap_or_default();
                return Some(Problem {
                    reason: reason.clone(),
                    message: format!("pod {name}: {reason}{detail}{restarts}{exit}"),
                });
            }
        }
        if c.ready {
            return None;
        }
        if let Some(running) = c.state.as_ref().and_then(|s| s.running.as_ref()) {
            if let Some(state) = status.and_then(|s| s["state"].as_str()) {
                let message = status.and_then(|s| s["message"].as_str()).unwrap_or("");
                // Kafka refusing the runner (credentials, TLS, an ACL) is
                // named at once: waiting does not cure it.
                let refusal = status.and_then(|s| {
                    serde_json::from_value::<AccessProblem>(s["kafkaRefusal"]["kind"].clone()).ok()
                });
                if let Some(kind) = refusal {
                    return Some(Problem {
                        reason: kind.reason().into(),
                        message: format!("pod {name}: {}{restarts}", quote(message)),
                    });
                }
                if state == "stalled" {
                    return Some(Problem {
                        reason: "RunnerStalled".into(),
                        message: format!("pod {name}: {}", quote(message)),
                    });
                }
                let started = running.started_at.as_ref().map(|t| t.0);
                let grace_over =
                    started.is_none_or(|t| now.duration_since(t).as_secs() >= STARTUP_GRACE.as_secs() as i64);
                if grace_over && state != "running" {
                    return Some(Problem {
                        reason: "RunnerNotReady".into(),
                        message: format!("pod {name}: not ready: {}{restarts}{exit}", quote(message)),
                    });
                }
            }
            if c.restart_count > 0 && !exit.is_empty() {
                return Some(Problem {
                    reason: "RunnerRestarting".into(),
                    message: format!("pod {name}: not ready{restarts}{exit}"),
                });
            }
        }
        return None;
    }
    let unschedulable = ps
        .conditions
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled" && c.status == "False"));
    unschedulable.map(|c| Problem {
        reason: c.reason.clone().unwrap_or_else(|| "Unschedulable".into()),
        message: format!("pod {name} cannot be scheduled: {}", quote(c.message.as_deref().unwrap_or(""))),
    })
}

/// The first problem among the pods (by name), or the Deployment's; the
/// message says how many pods share a problem. Pure.
pub fn diagnose(
    pods: &[Pod],
    deployment: Option<&DeploymentStatus>,
    statuses: &BTreeMap<String, serde_json::Value>,
    now: Timestamp,
) -> Option<Problem> {
    let mut sorted: Vec<&Pod> = pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    sorted.sort_by_key(|p| pod_name(p).to_string());
    let problems: Vec<Problem> =
        sorted.iter().filter_map(|p| pod_problem(p, statuses.get(pod_name(p)), now)).collect();
    if let Some(first) = problems.first() {
        let mut p = first.clone();
        if problems.len() > 1 {
            p.message.push_str(&format!(" (and {} more pods with problems)", problems.len() - 1));
        }
        return Some(p);
    }
    let conditions = deployment?.conditions.as_ref()?;
    let failure = conditions.iter().find(|c| c.type_ == "ReplicaFailure" && c.status == "True");
    let stalled = conditions.iter().find(|c| c.type_ == "Progressing" && c.status == "False");
    failure.or(stalled).map(|c| Problem {
        reason: c.reason.clone().unwrap_or_else(|| c.type_.clone()),
        message: format!("Deployment: {}", quote(c.message.as_deref().unwrap_or(""))),
    })
}

/// Pods of a Pipeline's runners, with the `/status` of those that run but
/// are not ready, then `diagnose`. The pods come from the operator's watch
/// of runner pods (`ChildStores::pods`): a list per reconcile was a read
/// of etcd for every Pipeline whose runners were starting.
pub async fn inspect(
    pods: &Store<Pod>,
    namespace: &str,
    pipeline: &str,
    deployment: Option<&DeploymentStatus>,
) -> Result<Option<Problem>, PodsUnknown> {
    let pods = pods_of(pods, namespace, pipeline).await?;
    let mut statuses = BTreeMap::new();
    for pod in &pods {
        let Some(c) = runner_container(pod) else { continue };
        let running = c.state.as_ref().is_some_and(|s| s.running.is_some());
        if c.ready || !running {
            continue;
        }
        if let Some(doc) = fetch_status(pod).await {
            statuses.insert(pod_name(pod).to_string(), doc);
        }
    }
    Ok(diagnose(&pods, deployment, &statuses, Timestamp::now()))
}

/// Why the runner pods are not known.
#[derive(Debug, thiserror::Error)]
pub enum PodsUnknown {
    /// The watch has not listed the pods yet: it cannot reach the API
    /// server, or is not allowed to list pods (the operator's Role).
    #[error(
        "the watch of runner pods has not listed them after {0:?} (can the operator list and watch pods?)"
    )]
    NotListed(Duration),
    /// The watch is gone (the operator is stopping).
    #[error("the watch of runner pods stopped")]
    Stopped,
}

/// How long a reconcile waits for the pod watch's first listing.
const POD_LIST_WAIT: Duration = Duration::from_secs(5);

/// The runner pods of one Pipeline, from the watch's store, once it has
/// listed them all; a reconcile does not wait for that past
/// `POD_LIST_WAIT` (it reports the runners without the pods' reasons).
async fn pods_of(store: &Store<Pod>, namespace: &str, pipeline: &str) -> Result<Vec<Pod>, PodsUnknown> {
    match tokio::time::timeout(POD_LIST_WAIT, store.wait_until_ready()).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(PodsUnknown::Stopped),
        Err(_) => return Err(PodsUnknown::NotListed(POD_LIST_WAIT)),
    }
    let selector = super::children::selector(pipeline);
    Ok(store
        .state()
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
        .filter(|p| {
            let labels = p.metadata.labels.as_ref();
            selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .map(|p| (**p).clone())
        .collect())
}

/// The model version the ready runner pods serve (from their `/status`);
/// the lowest when they differ (during a switch).
pub async fn served_model_version(store: &Store<Pod>, namespace: &str, pipeline: &str) -> Option<i64> {
    let pods = pods_of(store, namespace, pipeline).await.ok()?;
    let mut versions = Vec::new();
    for pod in &pods {
        if runner_container(pod).is_some_and(|c| c.ready) {
            if let Some(v) = fetch_status(pod).await.and_then(|d| d.get("modelVersion")?.as_i64()) {
                versions.push(v);
            }
        }
    }
    versions.into_iter().min()
}

/// GET `/status` from a runner pod (its IP and the `http` container port),
/// within 2 s; `None` if it does not answer with JSON.
async fn fetch_status(pod: &Pod) -> Option<serde_json::Value> {
    let ip = pod.status.as_ref()?.pod_ip.clone()?;
    let port = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("http"))?
        .container_port;
    let get = async {
        let mut s = tokio::net::TcpStream::connect((ip.as_str(), u16::try_from(port).ok()?)).await.ok()?;
        s.write_all(b"GET /status HTTP/1.0\r\nHost: runner\r\n\r\n").await.ok()?;
        let mut buf = Vec::new();
        s.take(256 * 1024).read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        let body = text.split_once("\r\n\r\n")?.1;
        serde_json::from_str(body).ok()
    };
    tokio::time::timeout(Duration::from_secs(2), get).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "runner", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": status,
        }))
        .unwrap()
    }

    fn now() -> Timestamp {
        "2026-12-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_crash_loop_is_named_with_the_runners_last_error() {
        let p = pod(
            "r-runner-1",
            serde_json::json!({
                "phase": "Running",
                "containerStatuses": [{
                    "name": "runner", "ready": false, "restartCount": 5, "image": "i", "imageID": "",
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 2m40s restarting failed container=runner"}},
                    "lastState": {"terminated": {"exitCode": 2, "reason": "Error",
                        "message": "the Kafka producer failed for good (x) after: boom (at record in/0@7)"}}
                }]
            }),
        );
        let got = diagnose(&[p], None, &BTreeMap::new(), now()).unwrap();
        assert_eq!(got.reason, "CrashLoopBackOff");
        assert!(got.message.contains("pod r-runner-1: CrashLoopBackOff: back-off"), "{}", got.message);
        assert!(got.message.contains("restarted 5 times"), "{}", got.message);
        assert!(
            got.message.contains("last exit code 2: the Kafka producer failed for good"),
            "{}",
            got.message
        );
        assert!(got.message.contains("in/0@7"), "{}", got.message);
    }

    #[test]
    fn a_stalled_runner_is_reported_from_its_own_status() {
        let p = pod(
            "r-runner-1",
            serde_json::json!({
                "phase": "Running", "podIP": "10.0.0.9",
                "containerStatuses": [{"name": "runner", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                    "state": {"running": {"startedAt": "2026-12-01T11:59:55Z"}}}]
            }),
        );
        let mut statuses = BTreeMap::new();
        statuses.insert(
            "r-runner-1".to_string(),
            serde_json::json!({"state": "stalled", "message": "stopped consuming: the dead-letter topic d cannot take records (at record in/0@20)"}),
        );
        let got = diagnose(std::slice::from_ref(&p), None, &statuses, now()).unwrap();
        assert_eq!(got.reason, "RunnerStalled");
        assert!(got.message.contains("dead-letter topic d cannot take records"), "{}", got.message);
        // A runner still joining its group within the grace period is no problem.
        statuses
            .insert("r-runner-1".to_string(), serde_json::json!({"state": "starting", "message": "joining"}));
        assert_eq!(diagnose(&[p.clone()], None, &statuses, now()), None);
        // Kafka refusing it is named at once, grace period or not.
        statuses.insert(
            "r-runner-1".to_string(),
            serde_json::json!({"state": "starting", "message": "Kafka refuses the runner: SASL authentication error",
                "kafkaRefusal": {"kind": "authentication", "message": "SASL authentication error", "time": "2026-12-01T12:00:00Z"}}),
        );
        let got = diagnose(&[p], None, &statuses, now()).unwrap();
        assert_eq!(got.reason, "KafkaAuthenticationFailed");
        assert!(got.message.contains("SASL authentication error"), "{}", got.message);
    }

    #[test]
    fn ready_pods_have_no_problem_and_deployment_failures_are_reported() {
        let p = pod(
            "r-runner-1",
            serde_json::json!({
                "phase": "Running",
                "containerStatuses": [{"name": "runner", "ready": true, "restartCount": 1, "image": "i", "imageID": "",
                    "state": {"running": {}}, "lastState": {"terminated": {"exitCode": 137}}}]
            }),
        );
        assert_eq!(diagnose(&[p], None, &BTreeMap::new(), now()), None);
        let d: DeploymentStatus = serde_json::from_value(serde_json::json!({"conditions": [
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": "pods \"x\" is forbidden: exceeded quota"}
        ]}))
        .unwrap();
        let got = diagnose(&[], Some(&d), &BTreeMap::new(), now()).unwrap();
        assert_eq!(got.reason, "FailedCreate");
        assert!(got.message.contains("exceeded quota"));
    }

    #[test]
    fn unschedulable_pods_and_several_problems_are_counted() {
        let pending = |n: &str| {
            pod(
                n,
                serde_json::json!({"phase": "Pending", "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes are available: 1 Insufficient cpu."}
                ]}),
            )
        };
        let got = diagnose(&[pending("b"), pending("a")], None, &BTreeMap::new(), now()).unwrap();
        assert_eq!(got.reason, "Unschedulable");
        assert!(got.message.starts_with("pod a cannot be scheduled: 0/1 nodes"), "{}", got.message);
        assert!(got.message.ends_with("(and 1 more pods with problems)"), "{}", got.message);
    }
}

/// The history component's state, for the `HistoryReady` condition.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryState {
    /// Ready and writing.
    pub ready: bool,
    /// Failing (not merely starting): a full volume, a store error, a crash loop.
    pub failing: bool,
    /// Condition reason.
    pub reason: String,
    /// Condition message.
    pub message: String,
}

/// Read the history StatefulSet's pod: not ready yet (`HistoryStarting`),
/// crash-looping (`HistoryCrashLoop`), or what its own `/status` says
/// (`HistoryVolumeFull`, `HistoryStoreFailing`, `HistoryReady`).
pub async fn history_state(
    client: &kube::Client,
    namespace: &str,
    pipeline: &str,
    sts: &k8s_openapi::api::apps::v1::StatefulSet,
) -> HistoryState {
    let state = |ready, failing, reason: &str, message: String| HistoryState {
        ready,
        failing,
        reason: reason.into(),
        message,
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = api.get_opt(&format!("{}-0", super::children::history_name(pipeline))).await.ok().flatten();
    let Some(pod) = pod else {
        let why = sts
            .status
            .as_ref()
            .map(|s| format!("{} of 1 history pod created", s.replicas))
            .unwrap_or_default();
        return state(false, false, "HistoryStarting", format!("the history component is starting ({why})"));
    };
    let container = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()).and_then(|c| c.first());
    if let Some(c) = container {
        let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
        if waiting.is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff")) {
            let last = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.message.clone())
                .unwrap_or_default();
            return state(
                false,
                true,
                "HistoryCrashLoop",
                format!("the history pod restarts ({} restarts): {}", c.restart_count, last.trim()),
            );
        }
    }
    let doc = fetch_status(&pod).await;
    let writer =
        doc.as_ref().and_then(|d| d.get("state")).and_then(|s| s.as_str()).unwrap_or_default().to_string();
    let message =
        doc.as_ref().and_then(|d| d.get("message")).and_then(|m| m.as_str()).unwrap_or_default().to_string();
    match writer.as_str() {
        "Running" => {
            let records = doc.as_ref().and_then(|d| d.get("records")).and_then(|r| r.as_u64()).unwrap_or(0);
            state(
                true,
                false,
                "HistoryReady",
                format!("storing history and serving the Data API ({records} records stored since start)"),
            )
        }
        "VolumeFull" => state(false, true, "HistoryVolumeFull", message),
        "Failing" => state(false, true, "HistoryStoreFailing", message),
        "Starting" => state(false, false, "HistoryStarting", message),
        _ => state(false, false, "HistoryStarting", "the history component is starting".into()),
    }
}
