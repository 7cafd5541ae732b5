//! What every reconcile shares: the API client, settings, metrics, the Event
//! recorder, Kafka admin connections (one per cluster and credentials), and
//! per-object bookkeeping for backoff, cleanup attempts and lag refreshes.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::core::PartialObjectMeta;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource};
use rdkafka::ClientConfig;

use crate::kafka::{Kafka, KafkaError};
use crate::lock;
use crate::metrics::Metrics;
use crate::pipeline::children;
use crate::pipeline::recheck::Recheck;

/// Operator settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What the child builders need.
    pub children: children::Settings,
    /// How often a Ready pipeline is re-checked (lag, topic drift); `None`
    /// only on changes.
    pub refresh_interval: Option<Duration>,
}

/// What the controller's watches of the Pipelines' children have seen: the
/// Deployments in full (their status says whether the runners are ready),
/// the rest as metadata.
#[derive(Clone)]
pub struct ChildStores {
    /// Runner Deployments.
    pub deployments: Store<Deployment>,
    /// Config, dashboard and Loki-rule ConfigMaps.
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    /// Services.
    pub services: Store<PartialObjectMeta<Service>>,
    /// History StatefulSets.
    pub statefulsets: Store<PartialObjectMeta<k8s_openapi::api::apps::v1::StatefulSet>>,
    /// Runner pods (why runners are not ready, which model version they serve).
    pub pods: Store<k8s_openapi::api::core::v1::Pod>,
}

impl ChildStores {
    /// Whether the watch has seen a child of this kind and name (only
    /// children labelled as the operator's are watched). Waits for the
    /// watch's first listing.
    pub async fn has<K>(store: &Store<PartialObjectMeta<K>>, namespace: &str, name: &str) -> bool
    where
        K: Resource<DynamicType = ()> + Clone,
    {
        // The writer lives as long as the controller; if it is gone, say
        // "present" so the caller asks the API server itself.
        if store.wait_until_ready().await.is_err() {
            return true;
        }
        store.get(&ObjectRef::new(name).within(namespace)).is_some()
    }
}

/// A child as the last apply of this operator left it.
struct Applied {
    /// Hash of the applied body.
    body: u64,
    /// What changes when anyone else changes the object (see `Child`).
    version: Option<String>,
}

/// Shared reconcile state.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Settings.
    pub settings: Settings,
    /// Reconcile metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Admin clients per cluster and credentials, with when each was made.
    kafka: Mutex<HashMap<String, (Arc<Kafka>, Instant)>>,
    failures: Mutex<HashMap<String, u32>>,
    cleanups: Mutex<HashMap<String, (u32, Instant)>>,
    lags: Mutex<HashMap<String, (Instant, i64)>>,
    rechecks: Mutex<HashMap<String, Recheck>>,
    scaling: Mutex<HashMap<String, crate::pipeline::scaling::History>>,
    /// The children's watches.
    pub children: ChildStores,
    /// Per Pipeline, per child (kind/name): the last body applied.
    applied: Mutex<HashMap<String, HashMap<String, Applied>>>,
    /// Lag queries may open a Kafka client each (until the offsets reader
    /// has caught up); a few at a time is plenty.
    lag_permits: tokio::sync::Semaphore,
}

/// Which cached admin client serves a cluster and credentials.
fn kafka_key(bootstrap: &str, props: &BTreeMap<String, String>) -> String {
    format!("{bootstrap}|{props:?}")
}

impl Context {
    /// A context for `client`.
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Arc<Metrics>,
        recorder: Recorder,
        children: ChildStores,
    ) -> Self {
        Context {
            client,
            settings,
            metrics,
            recorder,
            kafka: Mutex::default(),
            failures: Mutex::default(),
            cleanups: Mutex::default(),
            lags: Mutex::default(),
            rechecks: Mutex::default(),
            scaling: Mutex::default(),
            children,
            applied: Mutex::default(),
            lag_permits: tokio::sync::Semaphore::new(2),
        }
    }

    /// The admin connection for a cluster and credentials (created once).
    pub fn kafka(&self, bootstrap: &str, props: &BTreeMap<String, String>) -> Result<Arc<Kafka>, KafkaError> {
        let key = kafka_key(bootstrap, props);
        if let Some((k, _)) = lock(&self.kafka).get(&key) {
            return Ok(k.clone());
        }
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap);
        // When no known broker answers metadata, re-bootstrap after 10 s
        // rather than five minutes (a client left with no broker at all is
        // replaced instead: `kafka_failed`).
        config.set("metadata.recovery.rebootstrap.trigger.ms", "10000");
        for (k, v) in props {
            config.set(k, v);
        }
        let k = Arc::new(Kafka::new(config)?);
        lock(&self.kafka).insert(key, (k.clone(), Instant::now()));
        Ok(k)
    }

    /// A request through the admin client for this cluster failed: make a
    /// new client next time, unless this one is younger than 30 s. A client
    /// that saw the cluster restart can be left with no broker to talk to
    /// (librdkafka drops brokers a metadata response leaves out), and would
    /// fail every request from then on.
    pub fn kafka_failed(&self, bootstrap: &str, props: &BTreeMap<String, String>) {
        let key = kafka_key(bootstrap, props);
        let mut clients = lock(&self.kafka);
        if clients.get(&key).is_some_and(|(_, made)| made.elapsed() >= Duration::from_secs(30)) {
            let old = clients.remove(&key);
            drop(clients);
            // Closing librdkafka clients blocks; not on an async thread.
            tokio::task::spawn_blocking(move || drop(old));
        }
    }

    /// The next retry delay for an object: 1 s doubling to 5 minutes.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut f = lock(&self.failures);
        let n = f.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }

    /// The object reconciled successfully: start its backoff afresh.
    pub fn forget_failures(&self, key: &str) {
        lock(&self.failures).remove(key);
    }

    /// Count a failed cleanup: (attempts so far, time since the first).
    pub fn cleanup_attempt(&self, key: &str) -> (u32, Duration) {
        let mut c = lock(&self.cleanups);
        let e = c.entry(key.to_string()).or_insert((0, Instant::now()));
        e.0 += 1;
        (e.0, e.1.elapsed())
    }

    /// Cleanup finished (or was abandoned).
    pub fn forget_cleanup(&self, key: &str) {
        lock(&self.cleanups).remove(key);
        lock(&self.lags).remove(key);
        self.forget_scaling(key);
        self.forget_recheck(key);
        lock(&self.applied).remove(key);
    }

    /// The child `name` of the Pipeline `owner` as the watch last saw it,
    /// if this operator applied `body_hash` to it before and nobody changed
    /// it since: applying it again would change nothing.
    pub fn unchanged_child<K: Child>(
        &self,
        owner: &str,
        namespace: &str,
        name: &str,
        body_hash: u64,
    ) -> Option<K> {
        let current = K::observed(&self.children, namespace, name)?;
        let applied = lock(&self.applied);
        let last = applied.get(owner)?.get(&child_key::<K>(name))?;
        (last.body == body_hash && last.version.is_some() && last.version == current.version())
            .then_some(current)
    }

    /// Remember what an apply of `body_hash` left.
    pub fn applied_child<K: Child>(&self, owner: &str, applied: &K, body_hash: u64) {
        let name = applied.meta().name.clone().unwrap_or_default();
        lock(&self.applied)
            .entry(owner.to_string())
            .or_default()
            .insert(child_key::<K>(&name), Applied { body: body_hash, version: applied.version() });
    }

    /// Decide with the autoscaling recommendations of an object.
    pub fn with_scaling_history<T>(
        &self,
        key: &str,
        decide: impl FnOnce(&mut crate::pipeline::scaling::History) -> T,
    ) -> T {
        decide(lock(&self.scaling).entry(key.to_string()).or_default())
    }

    /// The object no longer autoscales (or is gone).
    pub fn forget_scaling(&self, key: &str) {
        lock(&self.scaling).remove(key);
    }

    /// A Ready Pipeline was reconciled: re-check it after an interval.
    pub fn record_recheck(&self, key: &str, r: Recheck) {
        lock(&self.rechecks).insert(key.to_string(), r);
    }

    /// Stop re-checking a Pipeline (it is not Ready, is being reconciled,
    /// or is gone).
    pub fn forget_recheck(&self, key: &str) {
        lock(&self.rechecks).remove(key);
    }

    /// The re-checks last done `interval` or longer ago.
    pub fn rechecks_due(&self, interval: Duration) -> Vec<(String, Recheck)> {
        lock(&self.rechecks)
            .iter()
            .filter(|(_, r)| r.checked.elapsed() >= interval)
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect()
    }

    /// A re-check found nothing to do.
    pub fn rechecked(&self, key: &str) {
        if let Some(r) = lock(&self.rechecks).get_mut(key) {
            r.checked = Instant::now();
            r.checks += 1;
        }
    }

    /// A lag measured outside a reconcile; the next reconcile reports it.
    pub fn set_lag(&self, key: &str, lag: i64) {
        lock(&self.lags).insert(key.to_string(), (Instant::now(), lag));
    }

    /// The consumer lag of an object, measured with `measure` unless a
    /// measurement younger than `max_age` exists (`None`: never measured);
    /// a failed measurement keeps the last value. Returns the lag and when
    /// it was measured.
    pub async fn cached_lag<F: Future<Output = Result<i64, KafkaError>>>(
        &self,
        key: &str,
        max_age: Option<Duration>,
        measure: F,
    ) -> Option<(i64, Instant)> {
        let max_age = max_age?;
        if let Some((at, lag)) = lock(&self.lags).get(key) {
            if at.elapsed() < max_age {
                return Some((*lag, *at));
            }
        }
        let _permit = self.lag_permits.acquire().await.ok()?;
        match measure.await {
            Ok(lag) => {
                let now = Instant::now();
                lock(&self.lags).insert(key.to_string(), (now, lag));
                Some((lag, now))
            }
            Err(e) => {
                tracing::debug!(error = %e, "Could not measure consumer lag");
                lock(&self.lags).get(key).map(|(at, l)| (*l, *at))
            }
        }
    }

    /// Emit an Event about `reference`; failures are logged, never fatal.
    pub async fn event(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        type_: kube::runtime::events::EventType,
        reason: &str,
        note: &str,
        action: &str,
    ) {
        let ev = kube::runtime::events::Event {
            type_,
            reason: reason.chars().take(128).collect(),
            note: Some(note.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, reference).await {
            tracing::warn!(error = %e, "Could not publish an Event");
        }
    }

    /// Apply an object the operator owns with server-side apply, as its
    /// field manager (forcing conflicts: the operator's fields are its own).
    pub async fn apply<K>(&self, namespace: &str, obj: &K) -> Result<K, kube::Error>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: kube::Api<K> = kube::Api::namespaced(self.client.clone(), namespace);
        let name = obj.meta().name.clone().unwrap_or_default();
        let mut body = serde_json::to_value(obj).map_err(kube::Error::SerdeError)?;
        body["apiVersion"] = K::api_version(&()).into();
        body["kind"] = K::kind(&()).into();
        let pp = kube::api::PatchParams::apply(crate::pipeline::FIELD_MANAGER).force();
        api.patch(&name, &pp, &kube::api::Patch::Apply(&body)).await
    }
}

fn child_key<K: kube::Resource<DynamicType = ()>>(name: &str) -> String {
    format!("{}/{name}", K::kind(&()))
}

/// A kind of child the operator applies, and how it tells whether the
/// object is still as its last apply left it.
pub trait Child:
    kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::Serialize
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
    /// The object as the controller's watch last saw it; `None` when the
    /// kind is not watched into a store (it is then always applied).
    fn observed(_stores: &ChildStores, _namespace: &str, _name: &str) -> Option<Self> {
        None
    }
    /// What changes when anyone else changes the object: the resource
    /// version, or for kinds whose status others write all the time, the
    /// generation (which only a change of the spec moves).
    fn version(&self) -> Option<String> {
        self.meta().resource_version.clone()
    }
}

fn observed_meta<K>(store: &Store<PartialObjectMeta<K>>, namespace: &str, name: &str) -> Option<K>
where
    K: Resource<DynamicType = ()> + Clone + Default,
{
    let meta = store.get(&ObjectRef::new(name).within(namespace))?;
    let mut k = K::default();
    *k.meta_mut() = meta.metadata.clone();
    Some(k)
}

impl Child for ConfigMap {
    fn observed(stores: &ChildStores, namespace: &str, name: &str) -> Option<Self> {
        observed_meta(&stores.config_maps, namespace, name)
    }
}

impl Child for Service {
    fn observed(stores: &ChildStores, namespace: &str, name: &str) -> Option<Self> {
        observed_meta(&stores.services, namespace, name)
    }
}

impl Child for Deployment {
    fn observed(stores: &ChildStores, namespace: &str, name: &str) -> Option<Self> {
        stores.deployments.get(&ObjectRef::new(name).within(namespace)).map(|d| (*d).clone())
    }
    fn version(&self) -> Option<String> {
        self.meta().generation.map(|g| g.to_string())
    }
}

impl Child for k8s_openapi::api::apps::v1::StatefulSet {}
