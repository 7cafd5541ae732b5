//! `vigil-operator run`: connect, serve metrics, win the leader lease, then
//! run the Pipeline controller until SIGTERM or the lease is lost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{Controller, Predicate, WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client};
use tracing::{debug, error, info};
use vigil_crds::{Model, Pipeline};

use crate::context::{ChildStores, Context, Settings};
use crate::leader::Elector;
use crate::metrics::Metrics;
use crate::pipeline;

/// The label selector of runner pods.
const RUNNER_PODS: &str = "app.kubernetes.io/managed-by=vigil-operator,app.kubernetes.io/component=runner";

/// Reconciles that run at once.
pub const RECONCILE_CONCURRENCY: u16 = 32;

/// How `run` was started.
#[derive(Debug, Clone)]
pub struct Options {
    /// Operator settings.
    pub settings: Settings,
    /// Watch only this namespace; all when `None`.
    pub namespace: Option<String>,
    /// Address of `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
    /// (namespace, name) of the leader Lease; no election when `None`.
    pub lease: Option<(String, String)>,
    /// This replica's name (the pod name).
    pub identity: String,
    /// Serve the admission webhook (on every replica, leader or not).
    pub webhook: Option<crate::webhook::Options>,
}

/// How long one watch request lasts before it is made again (from the
/// last resource version seen, so nothing is listed again). Shorter than
/// kube's 290 s: a watch sent while etcd was down was seen to hang, events
/// undelivered, until its timeout; the Pipelines created meanwhile waited
/// that long for their first reconcile.
const WATCH_TIMEOUT_S: u32 = 60;

fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_S)
}

/// How a failed watch retries: 0.5 s doubling to 5 s, with jitter. kube's
/// default (client-go's) goes to 30 s, doubled by jitter; after an API
/// server or etcd outage, the Pipelines created during it waited that long
/// once the API server could answer again. One operator's few watches
/// retrying every 5 s is no load for an API server.
fn watch_backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .into()
}

fn api<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Run the operator.
pub async fn run(opts: Options, client: Client) -> Result<()> {
    let metrics = Arc::new(Metrics::default());
    let server = tokio::spawn(crate::metrics::serve(opts.listen, metrics.clone()));
    let webhook = async {
        match opts.webhook.clone() {
            Some(w) => crate::webhook::serve(w, client.clone()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(webhook);
    // A standby replica is healthy and ready; only the leader reconciles.
    metrics.ready.store(true, Ordering::Relaxed);

    let elector =
        opts.lease.as_ref().map(|(ns, name)| Elector::new(client.clone(), ns, name, &opts.identity));
    if let Some(e) = &elector {
        tokio::select! {
            () = e.acquire() => {}
            () = shutdown_signal() => return Ok(()),
            r = &mut webhook => return r.context("admission webhook"),
        }
    }
    metrics.leader.set(1);

    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: "vigil-operator".into(), instance: Some(opts.identity.clone()) },
    );
    let owned = watch_config().labels("app.kubernetes.io/managed-by=vigil-operator");
    let ns = &opts.namespace;
    // The children's watches keep stores the reconciler reads: whether a
    // child is still as the last apply left it (then it is not applied
    // again), and the runner Deployment's status. Metadata is enough for
    // the rest.
    let (deployments, deployments_writer) = reflector::store();
    let (config_maps, config_maps_writer) = reflector::store();
    let (services, services_writer) = reflector::store();
    let (statefulsets, statefulsets_writer) = reflector::store();
    let (pods, pods_writer) = reflector::store();
    let children = ChildStores { deployments, config_maps, services, statefulsets, pods };
    // The stores keep each child's last state; who manages which field is
    // most of an object's size and nothing the reconciler reads.
    fn strip_managed_fields<K: kube::Resource>(k: &mut K) {
        k.meta_mut().managed_fields = None;
    }
    let ctx =
        Arc::new(Context::new(client.clone(), opts.settings.clone(), metrics.clone(), recorder, children));
    info!(namespace = ns.as_deref().unwrap_or("(all)"), identity = %opts.identity, "Starting the Pipeline controller");
    // Bounded concurrency keeps memory flat when hundreds of Pipelines
    // arrive at once (each reconcile may hold Kafka requests in flight).
    let config = kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY);
    // Status writes do not change the generation: filtering on it spares a
    // second, empty reconcile after every status update. Finalizer changes
    // must still pass, as the finalizer helper waits for them.
    let (reader, writer) = reflector::store();
    // Backoff: while the API server is away, the watch retries without
    // spinning (the Controller adds it to the watches it makes itself).
    let pipelines = reflector(writer, watcher(api::<Pipeline>(&client, ns), watch_config()))
        .backoff(watch_backoff())
        .applied_objects()
        .predicate_filter(predicates::generation.combine(predicates::finalizers), Default::default());
    // Re-checks of what no watch reports (Kafka) ask for reconciles here.
    let (recheck_tx, recheck_rx) = futures::channel::mpsc::unbounded();
    // A task of its own: nothing it waits on may hold up the controller or
    // the lease renewal.
    let _rechecks = ctx
        .settings
        .refresh_interval
        .map(|i| AbortOnDrop(tokio::spawn(pipeline::recheck::run(ctx.clone(), i, recheck_tx))));
    let pipelines_store = reader.clone();
    // A changed Kafka Secret reconciles the Pipelines that name it: the
    // operator's client takes the new settings, and the runners roll (the
    // Secret is part of their config hash). Metadata only: the operator
    // keeps no Secret contents in memory, and reads the one it needs.
    let secret_changes = {
        let pipelines = pipelines_store.clone();
        watcher(api::<PartialObjectMeta<Secret>>(&client, ns), watch_config())
            .backoff(watch_backoff())
            .touched_objects()
            .filter_map(|s| async move { s.ok() })
            .flat_map(move |s| {
                let refs: Vec<_> = pipelines
                    .state()
                    .iter()
                    .filter(|p| {
                        p.metadata.namespace == s.metadata.namespace
                            && p.spec.kafka.secret_ref.as_ref().map(|r| Some(&r.name))
                                == Some(s.metadata.name.as_ref())
                    })
                    .map(|p| kube::runtime::reflector::ObjectRef::from_obj(&**p))
                    .collect();
                futures::stream::iter(refs)
            })
    };
    let controller = Controller::for_stream(pipelines, reader)
        .with_config(config)
        .trigger_backoff(watch_backoff())
        .reconcile_on(futures::stream::select(recheck_rx, secret_changes))
        .owns_stream(
            reflector(
                deployments_writer,
                watcher(api::<Deployment>(&client, ns), owned.clone()).modify(strip_managed_fields),
            )
            .backoff(watch_backoff())
            .touched_objects(),
        )
        .owns_stream(
            reflector(
                config_maps_writer,
                watcher(api::<PartialObjectMeta<ConfigMap>>(&client, ns), owned.clone())
                    .modify(strip_managed_fields),
            )
            .backoff(watch_backoff())
            .touched_objects(),
        )
        .owns_stream(
            reflector(
                services_writer,
                watcher(api::<PartialObjectMeta<Service>>(&client, ns), owned.clone())
                    .modify(strip_managed_fields),
            )
            .backoff(watch_backoff())
            .touched_objects(),
        )
        .owns(api::<PersistentVolumeClaim>(&client, ns), owned.clone())
        .owns_stream(
            reflector(
                statefulsets_writer,
                watcher(api::<PartialObjectMeta<StatefulSet>>(&client, ns), owned.clone())
                    .modify(strip_managed_fields),
            )
            .backoff(watch_backoff())
            .touched_objects(),
        )
        // Runner pods are owned by ReplicaSets: mapped to their Pipeline by
        // label, so a crash loop or a readiness change is reported at once.
        // A Model's serving version changes its Pipelines' ModelReady.
        .watches(api::<Model>(&client, ns), watch_config(), {
            let pipelines = pipelines_store.clone();
            move |m: Model| {
                let (name, namespace) = (m.metadata.name.clone(), m.metadata.namespace.clone());
                pipelines
                    .state()
                    .iter()
                    .filter(|p| {
                        p.metadata.namespace == namespace
                            && p.spec.detector.model_ref.as_ref().map(|r| Some(&r.name))
                                == Some(name.as_ref())
                    })
                    .map(|p| kube::runtime::reflector::ObjectRef::from_obj(&**p))
                    .collect::<Vec<_>>()
            }
        })
        .watches_stream(
            reflector(
                pods_writer,
                watcher(api::<Pod>(&client, ns), watch_config().labels(RUNNER_PODS))
                    .modify(strip_managed_fields),
            )
            .backoff(watch_backoff())
            .touched_objects(),
            |pod: Pod| {
                let name = pod.metadata.labels.as_ref()?.get("vigil.dev/pipeline")?.clone();
                let namespace = pod.metadata.namespace.clone()?;
                Some(kube::runtime::reflector::ObjectRef::<Pipeline>::new(&name).within(&namespace))
            },
        )
        .shutdown_on_signal()
        .run(pipeline::reconcile, pipeline::error_policy, ctx.clone())
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(pipeline = %obj.name, "Reconciled"),
                Err(e) => debug!(error = %e, "Reconcile error"),
            }
        });

    // Models: a controller of their own, on the same context.
    let models = Controller::new(api::<Model>(&client, ns), watch_config())
        .with_config(kube::runtime::controller::Config::default().concurrency(4))
        .trigger_backoff(watch_backoff())
        .owns(api::<Job>(&client, ns), watch_config().labels("app.kubernetes.io/component=training"))
        .shutdown_on_signal()
        .run(crate::model::reconcile, crate::model::error_policy, ctx.clone())
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(model = %obj.name, "Reconciled"),
                Err(e) => debug!(error = %e, "Model reconcile error"),
            }
        });
    let controller = async {
        futures::join!(controller, models);
    };

    let lost = async {
        match &elector {
            Some(e) => e.hold().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = controller => {
            info!("Controller stopped");
            if let Some(e) = &elector {
                e.release().await;
            }
        }
        why = lost => {
            metrics.leader.set(0);
            error!(reason = %why, "Lost leadership; stopping so a standby can take over");
            bail!(why);
        }
        r = &mut webhook => return r.context("admission webhook"),
        r = server => {
            r.context("metrics server task")?.context("metrics server")?;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

/// SIGTERM (what the kubelet sends) or Ctrl-C. A standby replica waiting
/// for the lease must stop on it at once, not when the grace period ends.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => return,
                _ = tokio::signal::ctrl_c() => return,
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Aborts a task when dropped (when `run` returns, for any reason).
pub(crate) struct AbortOnDrop<T = ()>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// JSON logs (what log collectors index); `VIGIL_LOG` or `RUST_LOG` filter.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_writer(std::io::stderr)
        .try_init();
}
