//! The operator's permissions, in one place: the Helm chart's ClusterRole
//! is generated from this (`vigil-operator rbac`), and a test runs the
//! operator under exactly these rules against a real API server.

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..PolicyRule::default()
    }
}

/// Exactly the verbs the operator uses, and what for.
pub fn rules() -> Vec<PolicyRule> {
    vec![
        // Watch Pipelines; the finalizer is added and removed with patches.
        rule("vigil.dev", &["pipelines"], &["get", "list", "watch", "patch"]),
        rule("vigil.dev", &["pipelines/status"], &["patch"]),
        // Owner references with blockOwnerDeletion need update on finalizers.
        rule("vigil.dev", &["pipelines/finalizers"], &["update"]),
        // Models are watched (and a Pipeline's modelRef dereferenced); their
        // status is written.
        rule("vigil.dev", &["models"], &["get", "list", "watch"]),
        rule("vigil.dev", &["models/status"], &["patch"]),
        // Owner references with blockOwnerDeletion need update on finalizers.
        rule("vigil.dev", &["models/finalizers"], &["update"]),
        // A training Job per Model version.
        rule("batch", &["jobs"], &["get", "list", "watch", "create"]),
        // Children, applied server-side and watched for drift; the runners
        // are deleted before the topics when a Pipeline goes.
        // The history component (a StatefulSet and its Services) is deleted
        // when spec.storage is removed.
        rule(
            "apps",
            &["deployments", "statefulsets"],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        rule("", &["services"], &["get", "list", "watch", "create", "patch", "delete"]),
        rule("", &["configmaps", "persistentvolumeclaims"], &["get", "list", "watch", "create", "patch"]),
        // Runner pods are watched and read to say why runners are not
        // ready (crash loops, the runners' own /status).
        rule("", &["pods"], &["get", "list", "watch"]),
        // spec.kafka.secretRef is read for the operator's own Kafka
        // connection, and watched (metadata only) so a rotation is applied.
        rule("", &["secrets"], &["get", "list", "watch"]),
        // Events on Pipelines.
        rule("events.k8s.io", &["events"], &["create", "patch"]),
        // The admission webhook's caBundle is kept current.
        rule("admissionregistration.k8s.io", &["validatingwebhookconfigurations"], &["get", "update"]),
        // Leader election.
        rule("coordination.k8s.io", &["leases"], &["get", "create", "update"]),
    ]
}

/// What the operator needs in its own namespace only: the admission
/// webhook's certificate Secret is issued and renewed there.
pub fn namespace_rules() -> Vec<PolicyRule> {
    vec![rule("", &["secrets"], &["get", "create", "update"])]
}

/// The ClusterRole named `name`.
pub fn cluster_role(name: &str) -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta { name: Some(name.to_string()), ..ObjectMeta::default() },
        rules: Some(rules()),
        aggregation_rule: None,
    }
}
