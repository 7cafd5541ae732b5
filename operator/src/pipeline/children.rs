//! The Kubernetes objects a Pipeline owns, built as plain values from the
//! Pipeline and the operator's settings: no client, no I/O, so every field
//! is tested from YAML fixtures.
//!
//! - ConfigMap `<name>-pipeline`: the Pipeline as `vigil run` reads it.
//! - Deployment `<name>-runner`: the runners (hardened, probed, scraped).
//! - Service `<name>-runner`: metrics and HTTP endpoints.
//! - When `spec.storage` is set, the history component: StatefulSet
//!   `<name>-history` (one replica, `vigil history-server`, a volume claim
//!   template for its store), its headless Service `<name>-history`, and
//!   the Data API Service `<name>-api`.
//! - ConfigMaps `<name>-dashboard` and `<name>-loki-rules` (see `dashboard.rs`).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use vigil_crds::{Lifecycle, Pipeline};

/// Port of the runner's HTTP server.
pub const HTTP_PORT: i32 = 8080;
/// Where the pipeline ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/vigil";
/// Where the Kafka Secret is mounted.
pub const KAFKA_SECRET_DIR: &str = "/etc/vigil/kafka";
/// Where the history volume is mounted.
pub const HISTORY_DIR: &str = "/var/lib/vigil";
/// Port of the history component's Data API (and its probes and metrics).
pub const API_PORT: i32 = 8081;
/// Where the API token Secret is mounted.
pub const API_TOKEN_DIR: &str = "/etc/vigil/api";
/// The pod annotation whose change rolls the runners when the config changes.
pub const CONFIG_HASH: &str = "vigil.dev/config-hash";
/// UID the runner image runs as (distroless "nonroot").
pub const RUNNER_UID: i64 = 65532;

/// Operator settings the builders need.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Runner image when the Pipeline names none.
    pub runner_image: String,
    /// Kafka bootstrap servers when the Pipeline names none.
    pub kafka_bootstrap: Option<String>,
    /// The model registry topic (trained Models reach the runners there).
    pub model_registry: String,
}

/// Why a Pipeline cannot be built into children.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    /// The object lacks a name, namespace or uid (never true for objects
    /// read from the API server).
    #[error("the Pipeline lacks metadata.{0}")]
    MissingMetadata(&'static str),
    /// Neither the Pipeline nor the operator names a Kafka cluster.
    #[error(
        "no Kafka bootstrap servers: set spec.kafka.bootstrapServers or start the operator with --kafka-bootstrap"
    )]
    NoBootstrap,
    /// The Pipeline could not be serialised for the runner.
    #[error("the Pipeline could not be serialised: {0}")]
    Serialise(String),
}

/// Names of a Pipeline's children.
pub fn config_map_name(p: &str) -> String {
    format!("{p}-pipeline")
}
/// Name of the Deployment and Service.
pub fn runner_name(p: &str) -> String {
    format!("{p}-runner")
}
/// Name of the history StatefulSet and its headless Service.
pub fn history_name(p: &str) -> String {
    format!("{p}-history")
}
/// Name of the Data API Service.
pub fn api_name(p: &str) -> String {
    format!("{p}-api")
}

/// Labels every child carries; Loki's usual collectors index the
/// `app.kubernetes.io/*` ones and `vigil.dev/pipeline`.
pub fn labels(pipeline: &str, component: &str) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", "vigil"),
        ("app.kubernetes.io/instance", pipeline),
        ("app.kubernetes.io/component", component),
        ("app.kubernetes.io/part-of", "vigil"),
        ("app.kubernetes.io/managed-by", "vigil-operator"),
        ("vigil.dev/pipeline", pipeline),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The labels that select a Pipeline's runner pods.
pub fn selector(pipeline: &str) -> BTreeMap<String, String> {
    [("vigil.dev/pipeline", pipeline), ("app.kubernetes.io/component", "runner")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Name, namespace and a controller owner reference for a child.
pub fn child_meta(p: &Pipeline, name: String, component: &str) -> Result<ObjectMeta, BuildError> {
    let pname = p.metadata.name.clone().ok_or(BuildError::MissingMetadata("name"))?;
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(p.metadata.namespace.clone().ok_or(BuildError::MissingMetadata("namespace"))?),
        labels: Some(labels(&pname, component)),
        owner_references: Some(vec![owner_reference(p)?]),
        ..ObjectMeta::default()
    })
}

/// A controller owner reference to the Pipeline: garbage collection deletes
/// children with it, and `.owns()` maps child events back to it.
pub fn owner_reference(p: &Pipeline) -> Result<OwnerReference, BuildError> {
    Ok(OwnerReference {
        api_version: Pipeline::api_version(&()).into_owned(),
        kind: Pipeline::kind(&()).into_owned(),
        name: p.metadata.name.clone().ok_or(BuildError::MissingMetadata("name"))?,
        uid: p.metadata.uid.clone().ok_or(BuildError::MissingMetadata("uid"))?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// What the runner reads: the Pipeline's identity and spec, with the
/// bootstrap servers resolved, as YAML. Status and server-set metadata are
/// left out so they never change the hash.
pub fn runner_config(p: &Pipeline, settings: &Settings) -> Result<String, BuildError> {
    let mut spec = p.spec.clone();
    if spec.kafka.bootstrap_servers.is_none() {
        spec.kafka.bootstrap_servers = Some(settings.kafka_bootstrap.clone().ok_or(BuildError::NoBootstrap)?);
    }
    let doc = serde_json::json!({
        "apiVersion": Pipeline::api_version(&()),
        "kind": "Pipeline",
        "metadata": {"name": p.name_any(), "namespace": p.namespace()},
        "spec": spec,
    });
    serde_yaml::to_string(&doc).map_err(|e| BuildError::Serialise(e.to_string()))
}

/// Hex SHA-256 of the runner config (first 16 characters).
pub fn config_hash(config: &str) -> String {
    let digest = Sha256::digest(config.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The ConfigMap holding the runner config.
pub fn config_map(p: &Pipeline, config: &str) -> Result<ConfigMap, BuildError> {
    Ok(ConfigMap {
        metadata: child_meta(p, config_map_name(&p.name_any()), "config")?,
        data: Some([("pipeline.yaml".to_string(), config.to_string())].into()),
        ..ConfigMap::default()
    })
}

/// Runner pods wanted: zero when paused, and never more than the input
/// topic has partitions (more would idle). Returns (replicas, capped).
pub fn desired_replicas(p: &Pipeline, input_partitions: Option<i32>) -> (i32, bool) {
    if p.spec.lifecycle == Lifecycle::Paused {
        return (0, false);
    }
    let partitions = input_partitions.unwrap_or(p.spec.input.topic.partitions).max(1);
    if p.spec.replicas > partitions { (partitions, true) } else { (p.spec.replicas, false) }
}

fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_string());
    ResourceRequirements {
        requests: Some([("cpu".to_string(), q("100m")), ("memory".to_string(), q("128Mi"))].into()),
        limits: Some([("memory".to_string(), q("512Mi"))].into()),
        ..ResourceRequirements::default()
    }
}

/// `VIGIL_NAMESPACE` from the pod's own namespace.
pub fn namespace_env() -> EnvVar {
    EnvVar {
        name: "VIGIL_NAMESPACE".into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.namespace".into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// The container security context of every Vigil workload (runners,
/// training Jobs): no privilege escalation, a read-only root, no
/// capabilities.
pub fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
        ..SecurityContext::default()
    }
}

/// The pod security context of every Vigil workload: the image's non-root
/// user, the runtime's default seccomp profile.
pub fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUNNER_UID),
        run_as_group: Some(RUNNER_UID),
        fs_group: Some(RUNNER_UID),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
        ..PodSecurityContext::default()
    }
}

/// Mount the Kafka Secret `name` where `vigil` reads its client settings.
pub fn mount_kafka_secret(
    name: &str,
    env: &mut Vec<EnvVar>,
    mounts: &mut Vec<VolumeMount>,
    volumes: &mut Vec<Volume>,
) {
    env.push(EnvVar {
        name: "VIGIL_KAFKA_SECRET_DIR".into(),
        value: Some(KAFKA_SECRET_DIR.into()),
        value_from: None,
    });
    mounts.push(VolumeMount {
        name: "kafka".into(),
        mount_path: KAFKA_SECRET_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    volumes.push(Volume {
        name: "kafka".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(name.to_string()),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
}

/// Pod annotations: scraped on `port`, and the config hash whose change
/// rolls the pods.
fn pod_annotations(port: i32, hash: &str) -> BTreeMap<String, String> {
    [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", port.to_string()),
        ("prometheus.io/path", "/metrics".to_string()),
        (CONFIG_HASH, hash.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// An HTTP probe on the container port named `http`.
fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// A container (`name`) of the runner image running `vigil <command>`: its HTTP
/// server on `port` (named `http`, probed at /healthz and /readyz),
/// hardened, the termination log quoted on errors.
fn vigil_container(
    p: &Pipeline,
    settings: &Settings,
    (name, command): (&str, &str),
    port: i32,
    env: Vec<EnvVar>,
    mounts: Vec<VolumeMount>,
    resources: ResourceRequirements,
) -> Container {
    Container {
        name: name.into(),
        image: Some(p.spec.image.clone().unwrap_or_else(|| settings.runner_image.clone())),
        args: Some(vec![command.into()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(probe("/healthz", 10, 6)),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        resources: Some(resources),
        security_context: Some(container_security()),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

/// The ConfigMap volume with the pipeline manifest, and its mount.
fn pipeline_volume(name: &str) -> (Volume, VolumeMount) {
    (
        Volume {
            name: "pipeline".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: "pipeline".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    )
}

/// The runner Deployment.
pub fn deployment(
    p: &Pipeline,
    settings: &Settings,
    hash: &str,
    replicas: i32,
) -> Result<Deployment, BuildError> {
    let name = p.name_any();
    let namespace = p.namespace().ok_or(BuildError::MissingMetadata("namespace"))?;
    let mut meta = child_meta(p, runner_name(&name), "runner")?;
    let mut pod_labels = labels(&name, "runner");
    pod_labels.extend(selector(&name));
    let annotations = pod_annotations(HTTP_PORT, hash);

    let mut env_vars = vec![
        namespace_env(),
        env("VIGIL_PIPELINE_FILE", &format!("{CONFIG_DIR}/pipeline.yaml")),
        env("VIGIL_CONSUMER_GROUP", &Pipeline::consumer_group(&namespace, &name)),
        env("VIGIL_LISTEN", &format!("0.0.0.0:{HTTP_PORT}")),
    ];
    if p.spec.detector.model_ref.is_some() {
        env_vars.push(env("VIGIL_MODEL_REGISTRY", &settings.model_registry));
    }
    let (config_volume, config_mount) = pipeline_volume(&name);
    let mut mounts = vec![
        config_mount,
        VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..VolumeMount::default() },
    ];
    let mut volumes = vec![
        config_volume,
        Volume { name: "tmp".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() },
    ];
    if let Some(secret) = &p.spec.kafka.secret_ref {
        mount_kafka_secret(&secret.name, &mut env_vars, &mut mounts, &mut volumes);
    }
    // Runners keep no state on disk: history is the history component's
    // (a StatefulSet), so any number of runners work with ReadWriteOnce.
    // The runner writes the error that ends it to the termination log; a
    // panic leaves the last log lines instead. The operator quotes either
    // on the Pipeline (`runners.rs`).
    let resources = p.spec.resources.clone().unwrap_or_else(default_resources);
    let container = vigil_container(p, settings, ("runner", "run"), HTTP_PORT, env_vars, mounts, resources);
    meta.annotations = Some([(CONFIG_HASH.to_string(), hash.to_string())].into());
    Ok(Deployment {
        metadata: meta,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector { match_labels: Some(selector(&name)), match_expressions: None },
            // One runner at a time: the consumer group hands partitions over
            // cooperatively instead of all at once.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    // SIGTERM drains and commits; give it time.
                    termination_grace_period_seconds: Some(60),
                    automount_service_account_token: Some(false),
                    security_context: Some(pod_security()),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

/// The Service in front of the runners.
pub fn service(p: &Pipeline) -> Result<Service, BuildError> {
    let name = p.name_any();
    let mut meta = child_meta(p, runner_name(&name), "runner")?;
    meta.annotations = Some(
        [("prometheus.io/scrape", "true"), ("prometheus.io/port", "8080")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    Ok(Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            selector: Some(selector(&name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// The labels that select a Pipeline's history pod.
pub fn history_selector(pipeline: &str) -> BTreeMap<String, String> {
    [("vigil.dev/pipeline", pipeline), ("app.kubernetes.io/component", "history")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The history component, when `spec.storage` is set: one pod running
/// `vigil history-server` with the store on a volume of its own (a claim
/// template, ReadWriteOnce), the Data API on port 8081. The claim goes with
/// the StatefulSet (and so with the Pipeline).
pub fn history_statefulset(
    p: &Pipeline,
    settings: &Settings,
    hash: &str,
) -> Result<Option<StatefulSet>, BuildError> {
    let Some(storage) = &p.spec.storage else { return Ok(None) };
    let name = p.name_any();
    let mut pod_labels = labels(&name, "history");
    pod_labels.extend(history_selector(&name));
    let (config_volume, config_mount) = pipeline_volume(&name);
    let mut env_vars = vec![
        namespace_env(),
        env("VIGIL_PIPELINE_FILE", &format!("{CONFIG_DIR}/pipeline.yaml")),
        env("VIGIL_HISTORY_DIR", &format!("{HISTORY_DIR}/history")),
        env("VIGIL_API_LISTEN", &format!("0.0.0.0:{API_PORT}")),
    ];
    let mut mounts = vec![
        config_mount,
        VolumeMount { name: "history".into(), mount_path: HISTORY_DIR.into(), ..VolumeMount::default() },
        VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..VolumeMount::default() },
    ];
    let mut volumes = vec![
        config_volume,
        Volume { name: "tmp".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() },
    ];
    if let Some(secret) = &p.spec.kafka.secret_ref {
        mount_kafka_secret(&secret.name, &mut env_vars, &mut mounts, &mut volumes);
    }
    if let Some(token) = p.spec.api.as_ref().and_then(|a| a.token_secret_ref.as_ref()) {
        env_vars.push(env("VIGIL_API_TOKEN_FILE", &format!("{API_TOKEN_DIR}/token")));
        mounts.push(VolumeMount {
            name: "api-token".into(),
            mount_path: API_TOKEN_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "api-token".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(token.name.clone()),
                items: Some(vec![KeyToPath { key: "token".into(), path: "token".into(), mode: None }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let container = vigil_container(
        p,
        settings,
        ("history", "history-server"),
        API_PORT,
        env_vars,
        mounts,
        default_resources(),
    );
    let annotations = pod_annotations(API_PORT, hash);
    Ok(Some(StatefulSet {
        metadata: child_meta(p, history_name(&name), "history")?,
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(history_name(&name)),
            selector: LabelSelector { match_labels: Some(history_selector(&name)), match_expressions: None },
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some("Delete".into()),
                when_scaled: Some("Retain".into()),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    termination_grace_period_seconds: Some(30),
                    automount_service_account_token: Some(false),
                    security_context: Some(pod_security()),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("history".into()),
                    labels: Some(labels(&name, "history")),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some([("storage".to_string(), storage.size.clone())].into()),
                        limits: None,
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                status: None,
            }]),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }))
}

/// The history component's Services, when `spec.storage` is set: the
/// headless one its StatefulSet names, and `<name>-api` for the Data API
/// (cluster-internal; no Ingress is made).
pub fn history_services(p: &Pipeline) -> Result<Vec<Service>, BuildError> {
    if p.spec.storage.is_none() {
        return Ok(Vec::new());
    }
    let name = p.name_any();
    let port = || ServicePort {
        name: Some("http".into()),
        port: API_PORT,
        target_port: Some(IntOrString::String("http".into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    };
    let headless = Service {
        metadata: child_meta(p, history_name(&name), "history")?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(history_selector(&name)),
            ports: Some(vec![port()]),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    let mut api_meta = child_meta(p, api_name(&name), "history")?;
    api_meta.annotations = Some(
        [("prometheus.io/scrape", "true".to_string()), ("prometheus.io/port", API_PORT.to_string())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    );
    let api = Service {
        metadata: api_meta,
        spec: Some(ServiceSpec {
            selector: Some(history_selector(&name)),
            ports: Some(vec![port()]),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    Ok(vec![headless, api])
}
