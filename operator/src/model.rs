//! The Model controller: dereference -> validate -> decide -> apply ->
//! status, as for Pipelines.
//!
//! - A version is trained by a Job (`<model>-train-v<N>`) that runs
//!   `vigil train --publish` in the runner image: it reads the training data
//!   (file or topic), fits, writes the artifact and publishes it to the model
//!   registry topic (see `vigil_runner::models::registry`); its termination
//!   message is the training summary, or the error.
//! - A new version is trained when there is none, when the training inputs
//!   of the spec change (a pin or schedule change does not retrain), and when
//!   the schedule comes round; a failed training is not retried for the same
//!   inputs, and leaves the previous version serving.
//! - The serving version is the pin (`spec.version`) or the latest; the
//!   operator writes it to the registry, where runners following the Model
//!   pick it up (hot reload). Changing the pin back is the rollback.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodSpec, PodTemplateSpec, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference, Time};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use tracing::{Instrument, info, info_span, warn};
use vigil_crds::model::{ModelPhase, ModelStatus, TrainingMetrics};
use vigil_crds::{Model, ModelSpec};

use crate::context::Context;
use crate::pipeline::FIELD_MANAGER;

/// The Job annotation with the training inputs' hash it was started for.
const TRAINING_HASH: &str = "vigil.dev/training-hash";
/// Versions kept in the registry and in `status.versions`.
pub const KEEP_VERSIONS: usize = 5;
/// Where the Model manifest is mounted in the training Job.
const MODEL_DIR: &str = "/etc/vigil/model";
/// Where artifacts are written in the training Job.
const ARTIFACT_DIR: &str = "/var/lib/vigil/models";

/// Why a Model reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Kafka could not be reached (the registry).
    #[error("the model registry in Kafka: {0}")]
    Kafka(String),
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

fn key(m: &Model) -> String {
    format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any())
}

/// Hash of what a version is trained from.
pub fn training_hash(spec: &ModelSpec) -> String {
    let inputs = serde_json::json!({
        "algorithm": spec.algorithm,
        "params": spec.params,
        "features": spec.features,
        "label": spec.label,
        "transforms": spec.transforms,
        "training": spec.training,
        "calibration": spec.calibration,
    });
    let digest = Sha256::digest(inputs.to_string().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The training Job's name for `version`.
pub fn job_name(model: &str, version: i64) -> String {
    let suffix = format!("-train-v{version}");
    let keep = 63usize.saturating_sub(suffix.len());
    format!("{}{suffix}", model.chars().take(keep).collect::<String>().trim_end_matches('-'))
}

/// What `reconcile` decided and saw, for the status.
#[derive(Debug, Default)]
struct Seen {
    invalid: Option<(String, String)>,
    training: Option<i64>,
    failed: Option<(i64, String)>,
    trained: Option<(i64, TrainingMetrics, String)>,
    /// The training inputs' hash of the Job that failed.
    failed_hash: Option<String>,
}

/// Reconcile one Model.
pub async fn reconcile(m: Arc<Model>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = info_span!("reconcile", model = %key(&m), generation = m.metadata.generation.unwrap_or(0));
    async move {
        ctx.metrics.reconciles.get_or_create(&crate::metrics::KindLabel { kind: "Model".into() }).inc();
        let started = std::time::Instant::now();
        let r = apply(&m, &ctx).await;
        ctx.metrics.observe_duration("Model", started.elapsed());
        r
    }
    .instrument(span)
    .await
}

/// After a failed reconcile: back off.
pub fn error_policy(m: Arc<Model>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .failures
        .get_or_create(&crate::metrics::ErrorLabel { kind: "Model".into(), error: "Reconcile".into() })
        .inc();
    warn!(model = %key(&m), error = %error, "Model reconcile failed");
    Action::requeue(ctx.backoff(&format!("model/{}", key(&m))))
}

async fn apply(m: &Model, ctx: &Context) -> Result<Action, Error> {
    let name = m.name_any();
    let namespace = m.namespace().unwrap_or_default();
    let status = m.status.clone().unwrap_or_default();
    let mut seen = Seen::default();
    let now = chrono::Utc::now();

    // Validate what admission cannot.
    let mut errors = vigil_crds::semantic::check_model(&m.spec);
    let schedule = match &m.spec.schedule {
        Some(s) => match s.parse::<croner::Cron>() {
            Ok(c) => Some(c),
            Err(e) => {
                errors.push(format!("spec.schedule: Invalid value: {s:?}: {e}"));
                None
            }
        },
        None => None,
    };
    let bootstrap = m
        .spec
        .training
        .kafka
        .as_ref()
        .and_then(|k| k.bootstrap_servers.clone())
        .or_else(|| ctx.settings.children.kafka_bootstrap.clone());
    if bootstrap.is_none() {
        errors.push("no Kafka bootstrap servers for the model registry: set spec.training.kafka.bootstrapServers or the operator's default".into());
    }
    if !errors.is_empty() {
        seen.invalid = Some(("InvalidSpec".into(), errors.join("; ")));
        write_status(ctx, m, status, &seen, None).await?;
        return Ok(Action::await_change());
    }
    let bootstrap = bootstrap.unwrap_or_default();
    let registry = ctx.settings.children.model_registry.clone();
    let hash = training_hash(&m.spec);
    let mut status = status;

    // A training in flight: how is it doing?
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Some(v) = status.training_version {
        match jobs.get_opt(&job_name(&name, v)).await.map_err(kube_err("reading the training Job"))? {
            Some(job) => {
                let job_hash = job
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(TRAINING_HASH).cloned())
                    .unwrap_or_else(|| hash.clone());
                let conditions = job.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
                let done = |t: &str| conditions.iter().any(|c| c.type_ == t && c.status == "True");
                if done("Complete") {
                    let message = termination_message(ctx, &namespace, &job).await;
                    let summary: Option<vigil_crds::registry::TrainingSummary> =
                        message.as_deref().and_then(|t| serde_json::from_str(t).ok());
                    let metrics = TrainingMetrics {
                        records: summary.as_ref().map(|s| s.records as i64),
                        seconds: summary.as_ref().map(|s| s.seconds),
                        threshold: summary.as_ref().map(|s| s.threshold),
                        accuracy: summary.as_ref().and_then(|s| s.accuracy),
                    };
                    seen.trained = Some((v, metrics, job_hash));
                } else if done("Failed") {
                    let why = termination_message(ctx, &namespace, &job).await.unwrap_or_else(|| {
                        conditions
                            .iter()
                            .find(|c| c.type_ == "Failed")
                            .and_then(|c| c.message.clone())
                            .unwrap_or_else(|| "the training Job failed".into())
                    });
                    seen.failed = Some((v, why));
                    seen.failed_hash = Some(job_hash);
                } else {
                    seen.training = Some(v);
                }
            }
            None => seen.training = Some(v),
        }
    }

    // Start a training when one is due and none runs.
    let due_by_schedule =
        status.next_training_time.as_ref().is_some_and(|t| t.0.as_millisecond() <= now.timestamp_millis());
    let inputs_changed = status.trained_spec_hash.as_deref() != Some(hash.as_str());
    let failed_before = status.failed_spec_hash.as_deref() == Some(hash.as_str()) && !due_by_schedule;
    let wants_training = status.latest_version.is_none() || inputs_changed || due_by_schedule;
    if seen.training.is_none()
        && seen.trained.is_none()
        && seen.failed.is_none()
        && wants_training
        && !failed_before
    {
        let version = status.latest_version.unwrap_or(0).max(status.training_version.unwrap_or(0)) + 1;
        let settings = &ctx.settings.children;
        let props = kafka_props(ctx, m).await?;
        ensure_registry(ctx, &bootstrap, &props, &registry).await?;
        apply_child(ctx, &namespace, &model_config(m)?).await?;
        if let Some(pvc) = artifact_claim(m)? {
            apply_child(ctx, &namespace, &pvc).await?;
        }
        let job = training_job(m, version, &settings.runner_image, &bootstrap, &registry)?;
        match jobs.create(&PostParams::default(), &job).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(kube_err("creating the training Job")(e)),
        }
        info!(model = %key(m), version, reason = if status.latest_version.is_none() { "first version" } else if inputs_changed { "spec changed" } else { "schedule" }, "Training a new version");
        publish(
            ctx,
            m,
            EventType::Normal,
            "Training",
            &format!("training version {version} (Job {})", job_name(&name, version)),
        )
        .await;
        seen.training = Some(version);
        status.training_version = Some(version);
    }

    // The serving version: the pin, or the latest (after this reconcile).
    let latest = seen.trained.as_ref().map(|(v, _, _)| *v).or(status.latest_version);
    let serving = m.spec.version.or(latest);
    let mut versions = status.versions.clone();
    if let Some((v, _, _)) = &seen.trained {
        versions.push(*v);
        versions.sort_unstable();
        versions.dedup();
        while versions.len() > KEEP_VERSIONS {
            versions.remove(0);
        }
    }
    let pin_missing = m.spec.version.is_some_and(|v| !versions.contains(&v));
    if let (Some(v), false) = (serving, pin_missing) {
        if status.serving_version != Some(v) || seen.trained.is_some() {
            write_serving(ctx, m, &bootstrap, &registry, v).await?;
            info!(model = %key(m), version = v, "Serving version written to the registry");
        }
    }
    let next = schedule.as_ref().and_then(|c| c.find_next_occurrence(&now, false).ok());
    let serving = serving.filter(|_| !pin_missing);
    write_status(ctx, m, status, &seen, Some((serving, versions, next, pin_missing))).await?;
    Ok(match (seen.training, next) {
        // Jobs are watched; this is a safety net for a missed event.
        (Some(_), _) => Action::requeue(Duration::from_secs(30)),
        (None, Some(t)) => {
            Action::requeue((t - now).to_std().unwrap_or(Duration::from_secs(1)).max(Duration::from_secs(1)))
        }
        (None, None) => Action::await_change(),
    })
}

/// Kafka client properties of the Model's training connection.
async fn kafka_props(ctx: &Context, m: &Model) -> Result<std::collections::BTreeMap<String, String>, Error> {
    match m.spec.training.kafka.as_ref().and_then(|k| k.secret_ref.as_ref()) {
        Some(r) => crate::pipeline::read_secret(ctx, &m.namespace().unwrap_or_default(), &r.name)
            .await
            .map_err(|e| Error::Kafka(e.to_string()))?
            .ok_or_else(|| Error::Kafka(format!("Kafka Secret {} does not exist", r.name))),
        None => Ok(Default::default()),
    }
}

/// Make sure the registry topic exists (compacted, one partition), then
/// point the Model's followers at `version`.
async fn write_serving(
    ctx: &Context,
    m: &Model,
    bootstrap: &str,
    topic: &str,
    version: i64,
) -> Result<(), Error> {
    let props = kafka_props(ctx, m).await?;
    ensure_registry(ctx, bootstrap, &props, topic).await?;
    let key = vigil_crds::registry::serving_key(&m.namespace().unwrap_or_default(), &m.name_any());
    let value = serde_json::to_vec(&vigil_crds::registry::Serving { version }).unwrap_or_default();
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", bootstrap).set("acks", "all").set("enable.idempotence", "true");
    for (k, v) in &props {
        config.set(k, v);
    }
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let p: BaseProducer = config.create().map_err(|e| e.to_string())?;
        p.send(BaseRecord::to(&topic).key(&key).payload(&value)).map_err(|(e, _)| e.to_string())?;
        p.flush(Duration::from_secs(30)).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| Error::Kafka(e.to_string()))?
    .map_err(Error::Kafka)
}

/// Create the registry topic when it is missing.
pub async fn ensure_registry(
    ctx: &Context,
    bootstrap: &str,
    props: &std::collections::BTreeMap<String, String>,
    topic: &str,
) -> Result<(), Error> {
    let kafka = ctx.kafka(bootstrap, props).map_err(|e| Error::Kafka(e.to_string()))?;
    let mut spec = vigil_crds::TopicSpec::named(topic);
    spec.config.insert("cleanup.policy".into(), "compact".into());
    spec.config.insert("max.message.bytes".into(), "1048576".into());
    kafka.create(&spec).await.map_err(|e| {
        ctx.kafka_failed(bootstrap, props);
        Error::Kafka(e.to_string())
    })
}

/// The termination message of the Job's (last) pod.
async fn termination_message(ctx: &Context, namespace: &str, job: &Job) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let name = job.metadata.name.clone()?;
    let list = pods.list(&ListParams::default().labels(&format!("job-name={name}"))).await.ok()?;
    list.items.iter().rev().find_map(|p| {
        p.status.as_ref()?.container_statuses.as_ref()?.iter().find_map(|c| {
            let t = c.state.as_ref()?.terminated.as_ref()?;
            t.message.clone().filter(|m| !m.trim().is_empty())
        })
    })
}

type Decided = (Option<i64>, Vec<i64>, Option<chrono::DateTime<chrono::Utc>>, bool);

async fn write_status(
    ctx: &Context,
    m: &Model,
    mut st: ModelStatus,
    seen: &Seen,
    decided: Option<Decided>,
) -> Result<(), Error> {
    let old = m.status.clone().unwrap_or_default();
    let g = m.metadata.generation;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let cond = |type_: &str, ok: bool, reason: &str, message: String| Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: g,
        last_transition_time: now.clone(),
    };
    st.observed_generation = g;
    if let Some((v, metrics, hash)) = &seen.trained {
        st.latest_version = Some(*v);
        st.metrics = Some(metrics.clone());
        st.last_trained_time = Some(now.clone());
        st.trained_spec_hash = Some(hash.clone());
        st.failed_spec_hash = None;
        st.training_version = None;
    }
    if let Some((_, _)) = &seen.failed {
        st.failed_spec_hash = seen.failed_hash.clone();
        st.training_version = None;
    }
    if let Some(v) = seen.training {
        st.training_version = Some(v);
    }
    let mut pin_missing = false;
    if let Some((serving, versions, next, missing)) = decided {
        st.serving_version = serving.or(if missing { None } else { st.serving_version });
        st.versions = versions;
        st.next_training_time = next.and_then(|t| t.to_rfc3339().parse().ok()).map(Time);
        pin_missing = missing;
    }
    let serving = st.serving_version;
    let (trained, ready, phase);
    if let Some((reason, message)) = &seen.invalid {
        trained = cond("Trained", false, reason, message.clone());
        ready = cond("Ready", serving.is_some(), reason, message.clone());
        phase = ModelPhase::Failed;
    } else if let Some((v, why)) = &seen.failed {
        let keeps = serving.map(|s| format!("; version {s} keeps serving")).unwrap_or_default();
        trained =
            cond("Trained", false, "TrainingFailed", format!("training version {v} failed: {why}{keeps}"));
        ready = cond(
            "Ready",
            serving.is_some(),
            if serving.is_some() { "Serving" } else { "NoVersion" },
            serving
                .map(|s| format!("serving version {s}"))
                .unwrap_or_else(|| "no version trained yet".into()),
        );
        phase = ModelPhase::Failed;
    } else {
        let training = st.training_version;
        trained = match (training, st.latest_version) {
            (Some(v), _) => cond("Trained", false, "Training", format!("training version {v}")),
            (None, Some(v)) => cond("Trained", true, "Trained", trained_message(v, st.metrics.as_ref())),
            (None, None) => cond("Trained", false, "Pending", "no version trained yet".into()),
        };
        let failed_before =
            st.failed_spec_hash.is_some() && st.failed_spec_hash == Some(training_hash(&m.spec));
        ready = if pin_missing {
            cond(
                "Ready",
                false,
                "VersionNotFound",
                format!(
                    "spec.version {} is not among the kept versions {:?}",
                    m.spec.version.unwrap_or(0),
                    st.versions
                ),
            )
        } else {
            match serving {
                Some(s) => cond("Ready", true, "Serving", format!("serving version {s}")),
                None => cond("Ready", false, "NoVersion", "no version trained yet".into()),
            }
        };
        phase = if training.is_some() {
            ModelPhase::Training
        } else if failed_before {
            ModelPhase::Failed
        } else if serving.is_some() && !pin_missing {
            ModelPhase::Ready
        } else {
            ModelPhase::Pending
        };
        if failed_before && training.is_none() {
            // Keep the failure's condition until the spec changes.
            if let Some(c) =
                old.conditions.iter().find(|c| c.type_ == "Trained" && c.reason == "TrainingFailed")
            {
                st.conditions = vec![c.clone(), keep_time(&old, ready)];
                st.phase = Some(phase);
                return patch_status(ctx, m, &old, st).await;
            }
        }
    }
    st.phase = Some(phase);
    st.conditions = vec![keep_time(&old, trained), keep_time(&old, ready)];
    patch_status(ctx, m, &old, st).await
}

fn trained_message(v: i64, metrics: Option<&TrainingMetrics>) -> String {
    let mut s = format!("version {v} trained");
    if let Some(m) = metrics {
        if let Some(r) = m.records {
            s.push_str(&format!(" on {r} records"));
        }
        if let Some(t) = m.seconds {
            s.push_str(&format!(" in {t:.1} s"));
        }
        if let Some(t) = m.threshold {
            s.push_str(&format!(", threshold {t:.4}"));
        }
        if let Some(a) = m.accuracy {
            s.push_str(&format!(", training accuracy {a:.3}"));
        }
    }
    s
}

/// A condition keeps its transition time while its status stays.
fn keep_time(old: &ModelStatus, mut c: Condition) -> Condition {
    if let Some(o) = old.conditions.iter().find(|o| o.type_ == c.type_) {
        if o.status == c.status {
            c.last_transition_time = o.last_transition_time.clone();
        }
    }
    c
}

async fn patch_status(ctx: &Context, m: &Model, old: &ModelStatus, new: ModelStatus) -> Result<(), Error> {
    let same =
        |a: &ModelStatus, b: &ModelStatus| serde_json::to_value(a).ok() == serde_json::to_value(b).ok();
    if same(old, &new) {
        return Ok(());
    }
    let api: Api<Model> = Api::namespaced(ctx.client.clone(), &m.namespace().unwrap_or_default());
    let body = serde_json::json!({"apiVersion": Model::api_version(&()), "kind": "Model", "status": new});
    api.patch_status(&m.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await
        .map_err(kube_err("writing the Model status"))?;
    for c in &new.conditions {
        let before = old.conditions.iter().find(|o| o.type_ == c.type_);
        if before.is_none_or(|o| o.status != c.status || o.reason != c.reason) {
            let type_ = if c.status == "True" || c.reason == "Training" {
                EventType::Normal
            } else {
                EventType::Warning
            };
            publish(ctx, m, type_, &c.reason, &format!("{} is {}: {}", c.type_, c.status, c.message)).await;
        }
    }
    Ok(())
}

/// Emit an Event about the Model; failures are logged, never fatal.
async fn publish(ctx: &Context, m: &Model, type_: EventType, reason: &str, note: &str) {
    ctx.event(&m.object_ref(&()), type_, reason, note, "Train").await;
}

async fn apply_child<K>(ctx: &Context, namespace: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let what = format!("applying {} {}", K::kind(&()), obj.meta().name.as_deref().unwrap_or_default());
    ctx.apply(namespace, obj).await.map_err(kube_err(what))
}

/// Labels of a Model's training objects.
fn model_labels(model: &str) -> std::collections::BTreeMap<String, String> {
    let mut labels = crate::pipeline::children::labels(model, "training");
    labels.remove("vigil.dev/pipeline");
    labels.insert("vigil.dev/model".into(), model.to_string());
    labels
}

fn owner(m: &Model) -> Result<OwnerReference, Error> {
    Ok(OwnerReference {
        api_version: Model::api_version(&()).into_owned(),
        kind: "Model".into(),
        name: m.name_any(),
        uid: m.metadata.uid.clone().ok_or_else(|| Error::Kafka("the Model has no uid".into()))?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

fn meta(m: &Model, name: String) -> Result<ObjectMeta, Error> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: m.namespace(),
        labels: Some(model_labels(&m.name_any())),
        owner_references: Some(vec![owner(m)?]),
        ..ObjectMeta::default()
    })
}

/// The ConfigMap with the Model manifest `vigil train` reads.
pub fn model_config(m: &Model) -> Result<ConfigMap, Error> {
    let doc = serde_json::json!({
        "apiVersion": Model::api_version(&()),
        "kind": "Model",
        "metadata": {"name": m.name_any(), "namespace": m.namespace()},
        "spec": m.spec,
    });
    let yaml = serde_yaml::to_string(&doc).map_err(|e| Error::Kafka(e.to_string()))?;
    Ok(ConfigMap {
        metadata: meta(m, format!("{}-model", m.name_any()))?,
        data: Some([("model.yaml".to_string(), yaml)].into()),
        ..ConfigMap::default()
    })
}

/// The artifact volume claim, when `spec.storage` is set.
pub fn artifact_claim(m: &Model) -> Result<Option<PersistentVolumeClaim>, Error> {
    let Some(storage) = &m.spec.storage else { return Ok(None) };
    Ok(Some(PersistentVolumeClaim {
        metadata: meta(m, format!("{}-models", m.name_any()))?,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some([("storage".to_string(), storage.size.clone())].into()),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }))
}

/// The training Job of `version`.
pub fn training_job(
    m: &Model,
    version: i64,
    default_image: &str,
    bootstrap: &str,
    registry: &str,
) -> Result<Job, Error> {
    let name = m.name_any();
    let env = |n: &str, v: &str| EnvVar { name: n.into(), value: Some(v.into()), value_from: None };
    let mut envs = vec![
        crate::pipeline::children::namespace_env(),
        env("VIGIL_KAFKA_BOOTSTRAP", bootstrap),
        env("VIGIL_MODEL_REGISTRY", registry),
        env("VIGIL_LOG", "info"),
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "model".into(),
            mount_path: MODEL_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount { name: "artifacts".into(), mount_path: ARTIFACT_DIR.into(), ..VolumeMount::default() },
        VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..VolumeMount::default() },
    ];
    let mut volumes = vec![
        Volume {
            name: "model".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: format!("{name}-model"),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        match &m.spec.storage {
            Some(_) => Volume {
                name: "artifacts".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: format!("{name}-models"),
                    read_only: None,
                }),
                ..Volume::default()
            },
            None => Volume {
                name: "artifacts".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
        },
        Volume { name: "tmp".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() },
    ];
    if let Some(secret) = m.spec.training.kafka.as_ref().and_then(|k| k.secret_ref.as_ref()) {
        crate::pipeline::children::mount_kafka_secret(&secret.name, &mut envs, &mut mounts, &mut volumes);
    }
    let container = Container {
        name: "train".into(),
        image: Some(m.spec.image.clone().unwrap_or_else(|| default_image.to_string())),
        args: Some(vec![
            "train".into(),
            format!("{MODEL_DIR}/model.yaml"),
            "--output".into(),
            ARTIFACT_DIR.into(),
            "--version".into(),
            version.to_string(),
            "--publish".into(),
            "--keep".into(),
            KEEP_VERSIONS.to_string(),
        ]),
        env: Some(envs),
        volume_mounts: Some(mounts),
        resources: m.spec.resources.clone(),
        security_context: Some(crate::pipeline::children::container_security()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    let mut metadata = meta(m, job_name(&name, version))?;
    metadata.annotations = Some([(TRAINING_HASH.to_string(), training_hash(&m.spec))].into());
    Ok(Job {
        metadata,
        spec: Some(JobSpec {
            // One attempt per version: a failure is reported, not retried
            // (the same data would fail the same way).
            backoff_limit: Some(0),
            active_deadline_seconds: Some(6 * 3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(model_labels(&name)), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    containers: vec![container],
                    volumes: Some(volumes),
                    security_context: Some(crate::pipeline::children::pod_security()),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    })
}
