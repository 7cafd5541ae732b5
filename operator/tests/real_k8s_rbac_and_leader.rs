//! The operator under exactly the ClusterRole of `rbac.rs`, authenticated
//! as a ServiceAccount, and two replicas sharing a leader Lease.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use support::*;
use vigil_crds::Pipeline;
use vigil_e2e::{TestNamespace, install_crds, kafka, kube_client, kubectl, unique_name};

/// A client that authenticates as `namespace/sa` with a bound token.
async fn client_as(namespace: &str, sa: &str) -> Client {
    let out = kubectl(&["create", "token", sa, "-n", namespace, "--duration", "1h"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut kc = Kubeconfig::read_from(vigil_e2e::kubeconfig()).unwrap();
    for user in &mut kc.auth_infos {
        user.auth_info = Some(AuthInfo { token: Some(token.clone().into()), ..AuthInfo::default() });
    }
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn real_k8s_the_operator_works_under_its_cluster_role_as_a_service_account() {
    let admin = kube_client().await.unwrap();
    install_crds(&admin).await.unwrap();
    let ns = TestNamespace::create(&admin, "op-rbac").await.unwrap();
    let role_name = unique_name("vigil-operator");
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(admin.clone());
    roles.create(&PostParams::default(), &vigil_operator::rbac::cluster_role(&role_name)).await.unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns.name);
    let mut sa = ServiceAccount::default();
    sa.metadata.name = Some("vigil-operator".into());
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
    let binding = ClusterRoleBinding {
        metadata: kube::api::ObjectMeta { name: Some(role_name.clone()), ..Default::default() },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: role_name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "vigil-operator".into(),
            namespace: Some(ns.name.clone()),
            api_group: None,
        }]),
    };
    bindings.create(&PostParams::default(), &binding).await.unwrap();

    // The rules grant nothing beyond named verbs on named resources.
    for r in vigil_operator::rbac::rules() {
        assert!(!r.verbs.iter().any(|v| v == "*"), "{r:?}");
        assert!(!r.resources.iter().flatten().any(|x| x == "*"), "{r:?}");
    }

    let as_operator = client_as(&ns.name, "vigil-operator").await;
    let op = Operator::start_with(as_operator, &ns.name, Some((ns.name.clone(), "vigil-operator".into())));
    let api: Api<Pipeline> = Api::namespaced(admin.clone(), &ns.name);
    let t = unique_name("op-rbac");
    create(&api, &pipeline_yaml("rb", &t, "  topicDeletionPolicy: Delete\n  storage: {size: 1Gi}\n")).await;
    let _kubelet = keep_ready(admin.clone(), ns.name.clone(), "rb-runner".into());
    wait_condition(&api, "rb", "Ready", "True", Duration::from_secs(60)).await;
    api.delete("rb", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(30), "deleted through the finalizer", || async {
        api.get_opt("rb").await.ok()?.is_none().then_some(())
    })
    .await;
    assert_eq!(kafka::partitions(&format!("{t}-in")).unwrap(), None, "topics deleted under the role");

    let metrics = metrics_text(op.port).await;
    assert!(
        !metrics.contains("vigil_operator_reconcile_failures_total{"),
        "no reconcile failed under the role:\n{metrics}"
    );
    assert!(metrics.lines().any(|l| l == "vigil_operator_leader 1"), "{metrics}");

    drop(op);
    let _ = bindings.delete(&role_name, &DeleteParams::default()).await;
    let _ = roles.delete(&role_name, &DeleteParams::default()).await;
    ns.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn real_k8s_two_replicas_share_a_lease_and_the_standby_takes_over() {
    let client = kube_client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "op-leader").await.unwrap();
    let lease = Some((ns.name.clone(), "vigil-operator".to_string()));
    let a = Operator::start_with(client.clone(), &ns.name, lease.clone());
    let b = Operator::start_with(client.clone(), &ns.name, lease);
    let leader_of =
        |port: u16| async move { metrics_text(port).await.lines().any(|l| l == "vigil_operator_leader 1") };
    let (first, second) = eventually(Duration::from_secs(30), "one leader", || async {
        match (leader_of(a.port).await, leader_of(b.port).await) {
            (true, false) => Some((a.port, b.port)),
            (false, true) => Some((b.port, a.port)),
            _ => None,
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), &ns.name);
    let l = leases.get("vigil-operator").await.unwrap();
    assert!(
        !leader_of(second).await,
        "only one replica leads: lease {:?}\n{}\n{}",
        l.spec,
        metrics_text(first).await,
        metrics_text(second).await
    );

    let api: Api<Pipeline> = Api::namespaced(client.clone(), &ns.name);
    let t = unique_name("op-leader");
    create(&api, &pipeline_yaml("one", &t, "")).await;
    wait_condition(&api, "one", "TopicsReady", "True", Duration::from_secs(30)).await;

    // The leader goes away without releasing the Lease (a crash).
    let (leader, standby) = if first == a.port { (a, b) } else { (b, a) };
    drop(leader);
    let t2 = format!("{t}b");
    create(&api, &pipeline_yaml("two", &t2, "")).await;
    wait_condition(&api, "two", "TopicsReady", "True", Duration::from_secs(60)).await;
    assert!(leader_of(standby.port).await, "the standby took the Lease");

    for (name, prefix) in [("one", &t), ("two", &t2)] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
        let _ = kafka::delete_topics(&[
            &format!("{prefix}-in"),
            &format!("{prefix}-out"),
            &format!("{prefix}-dlq"),
        ])
        .await;
    }
    drop(standby);
    ns.cleanup().await.unwrap();
}
