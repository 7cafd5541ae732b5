//! The operator killed between creating a Pipeline's topics and writing
//! anything else (its children, its status): the `vigil-operator` binary
//! aborts at that point (`VIGIL_OPERATOR_CRASH_AT=after-topics`, as a
//! `kill -9` there would), and started again it finishes the work: the
//! topics it made are adopted as they are, not made twice or failed on,
//! and the status converges, with no reconcile failing.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use support::*;
use vigil_crds::Pipeline;
use vigil_e2e::{TestNamespace, install_crds, kafka, kube_client, kubeconfig, unique_name};
use vigil_operator::chaos::CRASH_AT;

fn operator_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|d| d.parent()).unwrap().join("vigil-operator");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status =
            Command::new(cargo).args(["build", "-p", "vigil-operator", "--bin", "vigil-operator"]).status();
        assert!(status.unwrap().success(), "building the operator");
    }
    bin
}

fn start_operator(ns: &str, port: u16, crash_at: Option<&str>, log: &std::path::Path) -> std::process::Child {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut cmd = Command::new(operator_binary());
    cmd.args(["run", "--namespace", ns, "--kafka-bootstrap", kafka(), "--refresh-interval", "2"])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--model-registry", &format!("vigil-models-{ns}")])
        .env("KUBECONFIG", kubeconfig())
        .env("VIGIL_LOG", "vigil_operator=info")
        .env_remove(CRASH_AT)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    if let Some(point) = crash_at {
        cmd.env(CRASH_AT, point);
    }
    cmd.spawn().expect("vigil-operator starts")
}

#[tokio::test(flavor = "multi_thread")]
async fn real_k8s_an_operator_killed_between_topic_creation_and_status_write_finishes_on_restart() {
    let client = kube_client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "op-crash-at").await.unwrap();
    let api: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("operator.log");
    let t = unique_name("op-crash-at");

    let mut first = start_operator(&ns.name, free_port(), Some("after-topics"), &log);
    create(&api, &pipeline_yaml("k", &t, "")).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = first.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the operator did not reach the crash point; log:\n{}",
            read(&log)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "aborted, not exited cleanly: {status:?}");
    // The state the crash left: topics made, nothing else.
    assert_eq!(kafka::partitions(&format!("{t}-in")).unwrap(), Some(3));
    assert_eq!(kafka::partitions(&format!("{t}-out")).unwrap(), Some(2));
    assert!(
        deployments.get_opt("k-runner").await.unwrap().is_none(),
        "no children were written; log:\n{}",
        read(&log)
    );
    let p = api.get("k").await.unwrap();
    assert!(
        condition(&p, "TopicsReady").is_none_or(|c| c.0 != "True"),
        "no status was written after the topics: {:?}",
        p.status
    );

    // Started again (no crash point), it finishes.
    let port = free_port();
    let mut second = start_operator(&ns.name, port, None, &log);
    let p = wait_condition(&api, "k", "TopicsReady", "True", Duration::from_secs(60)).await;
    let topics = &p.status.as_ref().unwrap().topics;
    assert_eq!(topics.len(), 3, "{topics:?}");
    eventually(Duration::from_secs(30), "the runner Deployment", || async {
        deployments.get_opt("k-runner").await.ok()?
    })
    .await;
    assert_eq!(kafka::partitions(&format!("{t}-in")).unwrap(), Some(3), "the topic is unchanged");
    let metrics = metrics_text(port).await;
    assert!(metrics.contains("vigil_operator_reconciles_total"), "{metrics}");
    assert!(
        !metrics.contains("vigil_operator_reconcile_failures_total{"),
        "no reconcile failed on what the crash left:\n{metrics}\nlog:\n{}",
        read(&log)
    );
    assert!(second.try_wait().unwrap().is_none(), "the restarted operator runs on");
    let _ = second.kill();
    let _ = second.wait();

    let _ = kafka::delete_topics(&[&format!("{t}-in"), &format!("{t}-out"), &format!("{t}-dlq")]).await;
    ns.cleanup().await.unwrap();
}

fn read(p: &std::path::Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}
