//! The runner's HTTP server: `/metrics` (Prometheus), `/healthz` (the
//! processing loop is turning), `/readyz` (joined the consumer group and not
//! shutting down or stalled; a failing answer says why), `/status` (JSON:
//! state, message, the last error and the record it was on; what the
//! operator reads). Runs on its own thread so a busy processing loop never
//! delays a probe.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// What the endpoints report.
#[derive(Clone)]
pub struct Health {
    /// Exposed on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// `/healthz` answers 200 while this returns true.
    pub live: Arc<dyn Fn() -> bool + Send + Sync>,
    /// `/readyz` answers 200 while this returns true.
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
    /// The `/status` document (`run::status::RunnerStatus`).
    pub status: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
}

/// The running server; dropping it stops it.
pub struct Server {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The bound address (useful when port 0 was asked for).
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The routes, for tests.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(health)
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        h.metrics.encode(),
    )
}

async fn healthz(State(h): State<Health>) -> impl IntoResponse {
    if (h.live)() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "processing loop stalled\n")
    }
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    if (h.ready)() {
        return (StatusCode::OK, "ready\n".to_string());
    }
    let status = (h.status)();
    let why = status["message"].as_str().unwrap_or("starting");
    (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n"))
}

async fn status(State(h): State<Health>) -> impl IntoResponse {
    axum::Json((h.status)())
}

/// Bind `addr` and serve on a thread of its own.
pub fn serve(addr: SocketAddr, health: Health) -> Result<Server> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new().name("http".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return tracing::error!(error = %e, "Cannot start the HTTP server"),
        };
        rt.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => return tracing::error!(error = %e, "Cannot start the HTTP server"),
            };
            let server = axum::serve(listener, router(health)).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(e) = server.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
    })?;
    Ok(Server { stop: Some(tx), thread: Some(thread), addr: bound })
}
