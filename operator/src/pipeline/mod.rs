//! The Pipeline controller. Reconcile is a pipeline of steps:
//! dereference (Secret, Model) -> validate -> build the desired children
//! (pure, `children.rs`, `dashboard.rs`, `topics.rs`) -> apply (Kafka admin,
//! server-side apply) -> status (`status.rs`). Only the first and the last
//! two touch the API server or Kafka.
//!
//! Deletion goes through a finalizer that honours `topicDeletionPolicy` and
//! can never hang namespace deletion: when Kafka stays unreachable past a
//! bounded number of attempts it records why, emits an Event and lets go.

pub mod children;
pub mod dashboard;
pub mod recheck;
pub mod runners;
pub mod scaling;
pub mod status;
pub mod topics;

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tracing::{Instrument, info, info_span, warn};
use vigil_crds::pipeline::{PipelineStatus, TopicRole};
use vigil_crds::{Lifecycle, Model, Pipeline, TopicDeletionPolicy};

use crate::context::{Child, ChildStores, Context};
use crate::kafka::KafkaError;
use children::BuildError;
use status::Observation;

/// The longest wait before retrying a reconcile the API server failed.
pub const API_RETRY_MAX: Duration = Duration::from_secs(10);

/// The finalizer Vigil puts on Pipelines.
pub const FINALIZER: &str = "vigil.dev/topics";
/// Server-side apply field manager.
pub const FIELD_MANAGER: &str = "vigil-operator";
/// Cleanup gives up on an unreachable Kafka after this many attempts...
pub const CLEANUP_ATTEMPTS: u32 = 5;
/// ...or this long, whichever comes first.
pub const CLEANUP_DEADLINE: Duration = Duration::from_secs(60);

/// Why a reconcile failed. The variant name is the metric label and the
/// Event reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Secret named by spec.kafka.secretRef could not be read.
    #[error("failed to read Kafka Secret {name}: {source}")]
    ReadSecret {
        /// Secret name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Kafka could not be reached or refused a request.
    #[error("Kafka is unavailable: {0}")]
    KafkaUnavailable(#[from] KafkaError),
    /// Children could not be built from the spec.
    #[error("failed to build the runner objects: {0}")]
    Build(#[from] BuildError),
    /// A child could not be applied.
    #[error("failed to apply {kind} {name}: {source}")]
    ApplyChild {
        /// Kind of the child.
        kind: &'static str,
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The status could not be written.
    #[error("failed to patch the Pipeline status: {0}")]
    PatchStatus(#[source] kube::Error),
    /// The finalizer machinery failed.
    #[error("finalizer failed: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// The metric label and Event reason.
    pub fn label(&self) -> &'static str {
        match self {
            Error::ReadSecret { .. } => "ReadSecret",
            Error::KafkaUnavailable(_) => "KafkaUnavailable",
            Error::Build(_) => "Build",
            Error::ApplyChild { .. } => "ApplyChild",
            Error::PatchStatus(_) => "PatchStatus",
            Error::Finalizer(inner) => match &**inner {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.label(),
                _ => "Finalizer",
            },
        }
    }

    /// Whether the API server itself could not be reached or answered
    /// with a server error (it restarts, etcd is away): worth retrying
    /// soon, whatever the failures so far.
    pub fn is_api_unavailable(&self) -> bool {
        let unavailable = |e: &kube::Error| match e {
            kube::Error::Api(s) => s.code >= 500,
            kube::Error::Service(_) | kube::Error::HyperError(_) => true,
            _ => false,
        };
        match self {
            Error::ReadSecret { source, .. }
            | Error::ApplyChild { source, .. }
            | Error::PatchStatus(source) => unavailable(source),
            Error::Finalizer(inner) => match &**inner {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.is_api_unavailable(),
                kube::runtime::finalizer::Error::AddFinalizer(e)
                | kube::runtime::finalizer::Error::RemoveFinalizer(e) => unavailable(e),
                _ => false,
            },
            _ => false,
        }
    }

    /// Whether retrying without a spec change can help.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Build(BuildError::NoBootstrap) | Error::Build(BuildError::Serialise(_)) => true,
            Error::Finalizer(inner) => match &**inner {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.is_permanent(),
                _ => false,
            },
            _ => false,
        }
    }
}

fn key(p: &Pipeline) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

/// Reconcile one Pipeline.
pub async fn reconcile(p: Arc<Pipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = info_span!("reconcile", pipeline = %key(&p), generation = p.metadata.generation.unwrap_or(0));
    async move {
        let started = Instant::now();
        ctx.metrics.reconciles.get_or_create(&crate::metrics::KindLabel { kind: "Pipeline".into() }).inc();
        let namespace = p.namespace().unwrap_or_default();
        let api: Api<Pipeline> = Api::namespaced(ctx.client.clone(), &namespace);
        let result = finalizer(&api, FINALIZER, p, |event| async {
            match event {
                Finalizer::Apply(p) => apply(&p, &ctx).await,
                Finalizer::Cleanup(p) => cleanup(&p, &ctx).await,
            }
        })
        .await;
        let result = match result {
            // A second reconcile of a deleted Pipeline, started from a cache
            // that had not yet seen the first one remove the finalizer: the
            // Pipeline is gone, which is what both wanted.
            Err(kube::runtime::finalizer::Error::RemoveFinalizer(kube::Error::Api(s))) if s.code == 404 => {
                Ok(Action::await_change())
            }
            other => other.map_err(|e| Error::Finalizer(Box::new(e))),
        };
        ctx.metrics.observe_duration("Pipeline", started.elapsed());
        result
    }
    .instrument(span)
    .await
}

/// What the controller does after a failed reconcile: wait for a spec
/// change on permanent errors, back off with growing delays otherwise.
pub fn error_policy(p: Arc<Pipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .failures
        .get_or_create(&crate::metrics::ErrorLabel { kind: "Pipeline".into(), error: error.label().into() })
        .inc();
    warn!(pipeline = %key(&p), error = %error, reason = error.label(), "Reconcile failed");
    if error.is_permanent() {
        return Action::await_change();
    }
    let backoff = ctx.backoff(&key(&p));
    if error.is_api_unavailable() {
        // The usual backoff grows to minutes over an outage of the API
        // server; once it is back, every Pipeline would wait that long.
        return Action::requeue(backoff.min(API_RETRY_MAX));
    }
    Action::requeue(backoff)
}

async fn apply(p: &Pipeline, ctx: &Context) -> Result<Action, Error> {
    let name = p.name_any();
    let namespace = p.namespace().unwrap_or_default();
    let api: Api<Pipeline> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut obs = Observation { generation: p.metadata.generation, ..Observation::default() };

    // Validate: what admission cannot check. Permanent until the spec changes.
    let errors = vigil_crds::semantic::check_pipeline(&p.spec);
    if !errors.is_empty() {
        obs.invalid = Some(("InvalidSpec".into(), errors.join("; ")));
        write_status(ctx, &api, p, &obs).await?;
        ctx.forget_failures(&key(p));
        return Ok(Action::await_change());
    }

    // Dereference: the Kafka Secret and the Model.
    let secret_props = match &p.spec.kafka.secret_ref {
        Some(r) => match read_secret(ctx, &namespace, &r.name).await? {
            Some(props) => props,
            None => {
                obs.topics_problem =
                    Some(("SecretNotFound".into(), format!("Kafka Secret {} does not exist", r.name)));
                write_status(ctx, &api, p, &obs).await?;
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
        },
        None => BTreeMap::new(),
    };
    if let Some(model_ref) = &p.spec.detector.model_ref {
        let models: Api<Model> = Api::namespaced(ctx.client.clone(), &namespace);
        obs.model = Some(match models.get_opt(&model_ref.name).await {
            Ok(Some(m)) => match vigil_crds::semantic::check_model_ref(&p.spec, &model_ref.name, &m.spec) {
                errors if !errors.is_empty() => (false, "ModelFeaturesNotProduced".into(), errors.join("; ")),
                _ => model_readiness(&model_ref.name, model_ref.version, m.status.as_ref()),
            },
            Ok(None) => (false, "ModelNotFound".into(), format!("Model {} does not exist", model_ref.name)),
            Err(e) => {
                (false, "ModelUnreadable".into(), format!("Model {} could not be read: {e}", model_ref.name))
            }
        });
    }
    let bootstrap = match p
        .spec
        .kafka
        .bootstrap_servers
        .clone()
        .or_else(|| ctx.settings.children.kafka_bootstrap.clone())
    {
        Some(b) => b,
        None => {
            obs.invalid = Some(("NoKafkaBootstrap".into(), BuildError::NoBootstrap.to_string()));
            write_status(ctx, &api, p, &obs).await?;
            return Ok(Action::await_change());
        }
    };

    // Topics: describe, plan, create / grow / reconfigure.
    let kafka = match ctx.kafka(&bootstrap, &secret_props) {
        Ok(k) => k,
        Err(e) => {
            // Settings the Kafka client refuses (a Secret key it does not
            // know, a bad value): wait for someone to fix the Secret.
            obs.topics_problem =
                Some(("KafkaSettingsInvalid".into(), format!("the Kafka client refuses its settings: {e}")));
            write_status(ctx, &api, p, &obs).await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    };
    let mut input_partitions = None;
    let mut problems = Vec::new();
    let mut checked_topics = Vec::new();
    // The three topics at once: a new Pipeline's creations go in the
    // same CreateTopics request (`Kafka::create`).
    let roles = [
        (TopicRole::Input, &p.spec.input.topic),
        (TopicRole::Output, &p.spec.output),
        (TopicRole::DeadLetter, &p.spec.dead_letter),
    ];
    let outcomes = futures::future::join_all(roles.map(|(role, spec)| {
        let kafka = &kafka;
        let spec = topics::desired(role, spec, &p.spec);
        async move {
            let observed = kafka.describe(&spec.name).await?;
            let plan = topics::plan(role, &spec, observed.as_ref());
            for a in &plan.actions {
                info!(topic = %spec.name, action = ?a, "Changing topic");
            }
            let mut st = topics::execute(kafka, &plan).await?;
            st.partitions = st.partitions.or(observed.as_ref().map(|o| o.partitions));
            Ok::<_, KafkaError>((plan, st))
        }
    }))
    .await;
    for outcome in outcomes {
        match outcome {
            Ok((plan, st)) => {
                if plan.role == TopicRole::Input {
                    input_partitions = st.partitions;
                }
                checked_topics.push((plan.role, plan.spec.clone(), st.clone()));
                problems.extend(plan.problems.iter().map(|pr| (pr.reason.to_string(), pr.message.clone())));
                obs.topics.push(st);
            }
            Err(e) => {
                let e = kafka.explain(e).await;
                ctx.kafka_failed(&bootstrap, &secret_props);
                let message = match e.refusal() {
                    Some(r) => format!("Kafka refuses the operator: {e}; {}", r.hint()),
                    None => e.to_string(),
                };
                obs.topics_problem = Some((e.reason().into(), message));
                obs.topics.clear();
                write_status(ctx, &api, p, &obs).await?;
                return Err(Error::KafkaUnavailable(e));
            }
        }
    }
    if let Some((reason, _)) = problems.first() {
        let message = problems.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; ");
        obs.topics_problem = Some((reason.clone(), message));
    }
    crate::chaos::point("after-topics");

    // No runner can start before its model version exists (it would wait
    // in the registry); the Model's watch reconciles again when it does.
    if obs.model.as_ref().is_some_and(|(ready, _, _)| !ready) {
        write_status(ctx, &api, p, &obs).await?;
        return Ok(Action::await_change());
    }

    // Children: built pure, applied with server-side apply.
    let settings = &ctx.settings.children;
    let config = children::runner_config(p, settings)?;
    // The runners read the Secret when they start: a changed Secret rolls
    // them, as a changed config does.
    let hash = match &p.spec.kafka.secret_ref {
        Some(_) => children::config_hash(&format!("{config}\n{secret_props:?}")),
        None => children::config_hash(&config),
    };
    obs.paused = p.spec.lifecycle == Lifecycle::Paused;
    let autoscaled = p.spec.scaling.as_ref().filter(|_| !obs.paused);

    // Lag: from the broker, at most once per refresh interval, and every
    // scaling interval when the replicas follow it (paused too: resuming
    // then starts from a recent lag).
    let lag_interval = match (p.spec.scaling.as_ref(), ctx.settings.refresh_interval) {
        (Some(_), Some(r)) => Some(r.min(scaling::INTERVAL)),
        (Some(_), None) => Some(scaling::INTERVAL),
        (None, r) => r,
    };
    // Measured before the children only when the replicas depend on it: a
    // lag query can wait on an unreachable or refusing Kafka, and must not
    // hold up a rollout (a rotated Secret, a spec change).
    let measured = match p.spec.scaling {
        Some(_) => measure_lag(ctx, p, &kafka, input_partitions, lag_interval).await,
        None => None,
    };
    let (mut replicas, mut capped) = children::desired_replicas(p, input_partitions);
    match autoscaled {
        Some(spec) => {
            // A lag older than three intervals (Kafka unreachable) is no
            // basis for scaling.
            let fresh = measured
                .filter(|(_, at)| at.elapsed() <= 3 * lag_interval.unwrap_or(scaling::INTERVAL))
                .map(|(lag, _)| lag);
            let current = p.status.as_ref().and_then(|s| s.replicas).filter(|r| *r > 0);
            let partitions = input_partitions.unwrap_or(p.spec.input.topic.partitions);
            let d = ctx.with_scaling_history(&key(p), |h| {
                scaling::decide(spec, partitions, current, fresh, h, Instant::now())
            });
            (replicas, capped) = (d.replicas, d.capped_by_partitions);
            if matches!(d.reason, "ScaledUp" | "ScaledDown") {
                info!(pipeline = %key(p), replicas, reason = d.reason, "{}", d.message);
                publish(ctx, p, EventType::Normal, d.reason, &d.message).await;
                obs.scaled_at = Some(Time(jiff_now()));
            }
            obs.scaling = Some(d);
        }
        None => {
            ctx.forget_scaling(&key(p));
            if p.spec.scaling.is_some() {
                obs.scaling = Some(scaling::paused());
            }
        }
    }
    obs.selector =
        Some(children::selector(&name).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","));
    obs.replicas = replicas;
    obs.capped = capped;
    obs.config_hash = Some(hash.clone());
    apply_child(ctx, p, &namespace, &children::config_map(p, &config)?).await?;
    apply_child(ctx, p, &namespace, &children::service(p)?).await?;
    match children::history_statefulset(p, settings, &hash)? {
        Some(sts) => {
            for svc in children::history_services(p)? {
                apply_child(ctx, p, &namespace, &svc).await?;
            }
            let sts = apply_child(ctx, p, &namespace, &sts).await?;
            obs.history = Some(runners::history_state(&ctx.client, &namespace, &name, &sts).await);
        }
        None => remove_history(ctx, &namespace, &name).await?,
    }
    apply_child(ctx, p, &namespace, &dashboard::dashboard(p)?).await?;
    apply_child(ctx, p, &namespace, &dashboard::loki_rules(p)?).await?;
    let deployment =
        apply_child(ctx, p, &namespace, &children::deployment(p, settings, &hash, replicas)?).await?;
    let ds = deployment.status.unwrap_or_default();
    let generation_seen = ds.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0);
    let updated = ds.updated_replicas.unwrap_or(0);
    // The autoscaler changing the replicas of a template already rolled out
    // is not a rollout: every pod, old or new, runs the current config.
    let scaled_only = obs.scaling.as_ref().is_some_and(|d| d.ok)
        && p.status.as_ref().and_then(|s| s.config_hash.as_deref()) == Some(hash.as_str())
        && ds.updated_replicas.is_some();
    obs.rollout_current = scaled_only || (generation_seen && (replicas == 0 || updated >= replicas));
    obs.ready_replicas =
        Some(ds.ready_replicas.unwrap_or(0).min(if obs.rollout_current { i32::MAX } else { updated }));
    if !obs.paused && obs.ready_replicas.unwrap_or(0) < replicas {
        // Pods are watched: a restart or a readiness change reconciles.
        obs.runner_problem =
            runners::inspect(&ctx.children.pods, &namespace, &name, Some(&ds)).await.unwrap_or_else(|e| {
                warn!(pipeline = %key(p), error = %e, "Cannot list the runner pods");
                None
            });
    }

    let measured = match measured {
        Some(m) => Some(m),
        None if p.spec.scaling.is_none() => measure_lag(ctx, p, &kafka, input_partitions, lag_interval).await,
        None => None,
    };
    obs.lag = measured.map(|(lag, _)| lag);

    // What the runners actually serve (hot reloads included).
    if p.spec.detector.model_ref.is_some() {
        obs.model_version = runners::served_model_version(&ctx.children.pods, &namespace, &name).await;
    }

    let st = write_status(ctx, &api, p, &obs).await?;
    ctx.forget_failures(&key(p));
    let ready = st.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    if ready && ctx.settings.refresh_interval.is_some() {
        ctx.record_recheck(
            &key(p),
            recheck::Recheck {
                pipeline: ObjectRef::from_obj(p),
                kafka: kafka.clone(),
                topics: checked_topics,
                group: Pipeline::consumer_group(&namespace, &name),
                lag: st.consumer_lag,
                checked: Instant::now(),
                checks: 0,
            },
        );
    } else {
        ctx.forget_recheck(&key(p));
    }
    // Changes arrive through the watches; what they cannot see (Kafka) is
    // re-checked by `recheck::run`, and an autoscaled Pipeline's lag every
    // scaling interval.
    match lag_interval.filter(|_| p.spec.scaling.is_some()) {
        Some(every) => Ok(Action::requeue(every)),
        None => Ok(Action::await_change()),
    }
}

/// The consumer lag of the Pipeline's runners, from the broker at most once
/// per `interval` (a failed measurement keeps the last one), with when it
/// was measured.
async fn measure_lag(
    ctx: &Context,
    p: &Pipeline,
    kafka: &crate::kafka::Kafka,
    input_partitions: Option<i32>,
    interval: Option<Duration>,
) -> Option<(i64, Instant)> {
    let group = Pipeline::consumer_group(&p.namespace().unwrap_or_default(), &p.name_any());
    let partitions = input_partitions.unwrap_or(p.spec.input.topic.partitions);
    ctx.cached_lag(&key(p), interval, kafka.lag(&group, &p.spec.input.topic.name, partitions)).await
}

/// ModelReady for a Pipeline following (or pinned to a version of) a Model.
fn model_readiness(
    name: &str,
    pin: Option<i64>,
    status: Option<&vigil_crds::ModelStatus>,
) -> (bool, String, String) {
    let versions = status.map(|s| s.versions.clone()).unwrap_or_default();
    match (pin, status.and_then(|s| s.serving_version)) {
        (Some(v), _) if versions.contains(&v) => {
            (true, "ModelReady".into(), format!("serving version {v} of Model {name} (pinned)"))
        }
        (Some(v), _) => (
            false,
            "ModelVersionNotFound".into(),
            format!("modelRef.version {v} is not among the versions Model {name} keeps ({versions:?})"),
        ),
        (None, Some(v)) => {
            (true, "ModelReady".into(), format!("following Model {name}, serving version {v}"))
        }
        (None, None) => {
            let why = status
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Trained"))
                .map(|c| format!(" ({})", c.message))
                .unwrap_or_default();
            (false, "ModelNotTrained".into(), format!("Model {name} has no trained version yet{why}"))
        }
    }
}

/// Delete the history component of a Pipeline whose `spec.storage` was
/// removed (its volume goes with the StatefulSet); nothing if none exists.
async fn remove_history(ctx: &Context, namespace: &str, name: &str) -> Result<(), Error> {
    let gone = |r: Result<(), kube::Error>| match r {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(source),
    };
    let sts: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let svc: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
    let dp = kube::api::DeleteParams::default();
    let history = children::history_name(name);
    // Only what this operator made (a same-named object of the user's stays).
    // The watches say whether there is anything to look at: most Pipelines
    // never had a history, and three reads per reconcile added up.
    let stores = &ctx.children;
    if ChildStores::has(&stores.statefulsets, namespace, &history).await
        && sts.get_opt(&history).await.ok().flatten().is_some_and(|s| managed(&s.metadata))
    {
        gone(sts.delete(&history, &dp).await.map(|_| ())).map_err(|source| Error::ApplyChild {
            kind: "StatefulSet",
            name: history.clone(),
            source,
        })?;
    }
    for n in [history, children::api_name(name)] {
        if ChildStores::has(&stores.services, namespace, &n).await
            && svc.get_opt(&n).await.ok().flatten().is_some_and(|s| managed(&s.metadata))
        {
            gone(svc.delete(&n, &dp).await.map(|_| ())).map_err(|source| Error::ApplyChild {
                kind: "Service",
                name: n.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

fn managed(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/managed-by"))
        .is_some_and(|v| v == "vigil-operator")
}

/// Apply one child with server-side apply, as the operator's field manager,
/// unless the same body was applied before and the object has not changed
/// since (the watch's copy is returned then): most reconciles are started
/// by a child's or a pod's status, and applying five unchanged children
/// each time made the API server the bound of a burst of Pipelines.
async fn apply_child<K: Child>(ctx: &Context, p: &Pipeline, namespace: &str, obj: &K) -> Result<K, Error> {
    let name = obj.meta().name.clone().unwrap_or_default();
    let owner = key(p);
    let body = serde_json::to_vec(obj)
        .map(|b| std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(b))
        .ok();
    if let Some(current) = body.and_then(|b| ctx.unchanged_child(&owner, namespace, &name, b)) {
        return Ok(current);
    }
    let applied = ctx.apply(namespace, obj).await.map_err(|source| Error::ApplyChild {
        kind: kind_name::<K>(),
        name,
        source,
    })?;
    if let Some(b) = body {
        ctx.applied_child(&owner, &applied, b);
    }
    Ok(applied)
}

fn kind_name<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "Deployment" => "Deployment",
        "ConfigMap" => "ConfigMap",
        "Service" => "Service",
        "PersistentVolumeClaim" => "PersistentVolumeClaim",
        "StatefulSet" => "StatefulSet",
        _ => "object",
    }
}

/// Kafka client properties from a Secret (`None` when it does not exist).
pub(crate) async fn read_secret(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret = api.get_opt(name).await.map_err(|source| Error::ReadSecret { name: name.into(), source })?;
    Ok(secret.map(|s| {
        let mut props = BTreeMap::new();
        for (k, v) in s.data.unwrap_or_default() {
            // The runner gets certificates as files (`kafka_config`); the
            // operator passes their contents as librdkafka's PEM settings.
            let key = match k.as_str() {
                "ca.crt" => "ssl.ca.pem".to_string(),
                "tls.crt" => "ssl.certificate.pem".to_string(),
                "tls.key" => "ssl.key.pem".to_string(),
                _ => k,
            };
            props.insert(key, String::from_utf8_lossy(&v.0).trim().to_string());
        }
        props
    }))
}

/// Compute and write the status if it changed; emit Events for conditions
/// that changed.
async fn write_status(
    ctx: &Context,
    api: &Api<Pipeline>,
    p: &Pipeline,
    obs: &Observation,
) -> Result<PipelineStatus, Error> {
    let now = Time(jiff_now());
    let old = p.status.as_ref();
    let new = status::compute(obs, old, now);
    if old == Some(&new) {
        return Ok(new);
    }
    let body = serde_json::json!({
        "apiVersion": Pipeline::api_version(&()),
        "kind": "Pipeline",
        "status": new,
    });
    api.patch_status(&p.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await
        .map_err(Error::PatchStatus)?;
    // Scaling has Events of its own, one per change of the replicas.
    for c in status::eventful(old, &new) {
        let type_ =
            if c.status == "True" || c.reason == "Paused" { EventType::Normal } else { EventType::Warning };
        publish(ctx, p, type_, &c.reason, &format!("{} is {}: {}", c.type_, c.status, c.message)).await;
    }
    Ok(new)
}

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

/// Emit an Event about the Pipeline; failures are logged, never fatal.
pub async fn publish(ctx: &Context, p: &Pipeline, type_: EventType, reason: &str, note: &str) {
    ctx.event(&p.object_ref(&()), type_, reason, note, "Reconcile").await;
}

/// The finalizer: delete topics when the policy says so. Children go with
/// the Pipeline through their owner references.
async fn cleanup(p: &Pipeline, ctx: &Context) -> Result<Action, Error> {
    if p.spec.topic_deletion_policy == TopicDeletionPolicy::Retain {
        info!(pipeline = %key(p), "Pipeline deleted; topics retained");
        return Ok(Action::await_change());
    }
    let names =
        [p.spec.input.topic.name.as_str(), p.spec.output.name.as_str(), p.spec.dead_letter.name.as_str()];
    let bootstrap =
        p.spec.kafka.bootstrap_servers.clone().or_else(|| ctx.settings.children.kafka_bootstrap.clone());
    let props = match &p.spec.kafka.secret_ref {
        Some(r) => read_secret(ctx, &p.namespace().unwrap_or_default(), &r.name)
            .await
            .ok()
            .flatten()
            .unwrap_or_default(),
        None => BTreeMap::new(),
    };
    // Stop the runners first, so their producers are not writing while the
    // topics go. Their garbage collection would come after the Pipeline is
    // gone, which is too late.
    let deployments: Api<Deployment> =
        Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default());
    match deployments.delete(&children::runner_name(&p.name_any()), &Default::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => warn!(error = %e, "Could not delete the runners before the topics"),
    }
    let group = Pipeline::consumer_group(&p.namespace().unwrap_or_default(), &p.name_any());
    let result = match bootstrap {
        Some(b) => match ctx.kafka(&b, &props) {
            Ok(k) => match k.delete(&names).await {
                Ok(()) => {
                    // The group's committed offsets mean nothing without the topics.
                    if let Err(e) = k.delete_group(&group).await {
                        warn!(group = %group, error = %e, "Could not delete the consumer group");
                    }
                    Ok(())
                }
                Err(e) => {
                    ctx.kafka_failed(&b, &props);
                    Err(e)
                }
            },
            Err(e) => Err(e),
        },
        None => Err(KafkaError("no Kafka bootstrap servers known".into())),
    };
    match result {
        Ok(()) => {
            info!(pipeline = %key(p), topics = ?names, "Pipeline deleted; topics deleted");
            ctx.forget_cleanup(&key(p));
            Ok(Action::await_change())
        }
        Err(e) => {
            let (attempts, since) = ctx.cleanup_attempt(&key(p));
            if attempts >= CLEANUP_ATTEMPTS || since >= CLEANUP_DEADLINE {
                let note = format!(
                    "gave up deleting topics {} after {attempts} attempts over {}s: {e}; they must be deleted by hand",
                    names.join(", "),
                    since.as_secs()
                );
                warn!(pipeline = %key(p), "{note}");
                publish(ctx, p, EventType::Warning, "TopicDeletionAbandoned", &note).await;
                ctx.forget_cleanup(&key(p));
                // Released: the finalizer helper removes the finalizer on Ok.
                return Ok(Action::await_change());
            }
            Err(Error::KafkaUnavailable(e))
        }
    }
}

/// The owned kinds the controller watches (for `.owns()`).
pub type Owned = (ConfigMap, Deployment, Service, PersistentVolumeClaim, StatefulSet);
