//! The operator's own metrics and its HTTP endpoints (`/metrics`,
//! `/healthz`, `/readyz`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label: the resource kind reconciled.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `Pipeline`.
    pub kind: String,
}

/// Labels of the failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    /// `Pipeline`.
    pub kind: String,
    /// The error variant (`KafkaUnavailable`, `ApplyChild`, ...).
    pub error: String,
}

/// Reconcile metrics.
pub struct Metrics {
    registry: Registry,
    /// Reconciles started.
    pub reconciles: Family<KindLabel, Counter>,
    /// Reconciles failed, by error.
    pub failures: Family<ErrorLabel, Counter>,
    /// Reconcile durations.
    pub duration: Family<KindLabel, Histogram>,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    /// Set once the controllers run.
    pub ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<KindLabel, Counter>::default();
        let failures = Family::<ErrorLabel, Counter>::default();
        let duration = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        let leader = Gauge::default();
        registry.register("vigil_operator_reconciles", "Reconciles started", reconciles.clone());
        registry.register(
            "vigil_operator_reconcile_failures",
            "Reconciles failed, by error",
            failures.clone(),
        );
        registry.register(
            "vigil_operator_reconcile_duration_seconds",
            "Reconcile durations",
            duration.clone(),
        );
        registry.register(
            "vigil_operator_leader",
            "Whether this replica holds the leader lease",
            leader.clone(),
        );
        Metrics { registry, reconciles, failures, duration, leader, ready: AtomicBool::new(false) }
    }
}

impl Metrics {
    /// Record how long a reconcile took.
    pub fn observe_duration(&self, kind: &str, d: Duration) {
        self.duration.get_or_create(&KindLabel { kind: kind.into() }).observe(d.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<()> {
    let app = Router::new()
        .route("/metrics", get(|State(m): State<Arc<Metrics>>| async move { m.encode() }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
        .with_state(metrics);
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}
