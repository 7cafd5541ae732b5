//! The Data API: publish records, read what was flagged, each key's
//! minutes, dead letters, and the live results; HTTP/JSON with an OpenAPI
//! document generated from this code (`/openapi.json`).
//!
//! Every request is logged (method, path, status, bytes, milliseconds, peer)
//! as a JSON line; bodies are limited (413), requests are rate-limited (429)
//! and time-limited (503); with a token, `/v1/*` needs
//! `Authorization: Bearer <token>` (401 without, 403 wrong), compared in
//! constant time.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::info;
use utoipa::OpenApi;

use super::server::{Shared, WriterStatus};
use super::store::{
    AnomalyRow, Cursor, DeadLetterRow, MAX_LIMIT, Query as StoreQuery, RollupRow, Stats, Store,
};

/// Every metric the history component exports, as Prometheus names them.
pub const NAMES: &[&str] = &[
    "vigil_history_records_total",
    "vigil_history_writes_total",
    "vigil_history_write_failures_total",
    "vigil_history_write_microseconds_total",
    "vigil_history_lag_records",
    "vigil_history_store_bytes",
    "vigil_history_api_requests_total",
];

/// The history component's metrics.
pub struct Metrics {
    registry: Registry,
    records: Counter,
    writes: Counter,
    write_failures: Counter,
    write_micros: Counter,
    lag: Gauge,
    bytes: Gauge,
    requests: Family<Vec<(String, String)>, Counter>,
}

impl Metrics {
    /// Registered, labelled with the pipeline's namespace and name (as the
    /// runners' are, so the Pipeline's dashboard selects both).
    pub fn new(namespace: &str, pipeline: &str) -> Metrics {
        let mut registry = crate::metrics::pipeline_registry(namespace, pipeline);
        let m = Metrics {
            records: Counter::default(),
            writes: Counter::default(),
            write_failures: Counter::default(),
            write_micros: Counter::default(),
            lag: Gauge::default(),
            bytes: Gauge::default(),
            requests: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "vigil_history_records",
            "Records stored (outputs and dead letters)",
            m.records.clone(),
        );
        registry.register("vigil_history_writes", "Store transactions committed", m.writes.clone());
        registry.register(
            "vigil_history_write_failures",
            "Store transactions that failed",
            m.write_failures.clone(),
        );
        registry.register(
            "vigil_history_write_microseconds",
            "Time spent writing the store",
            m.write_micros.clone(),
        );
        registry.register("vigil_history_lag_records", "Records on the topics not yet stored", m.lag.clone());
        registry.register(
            "vigil_history_store_bytes",
            "Size of the history database and its log",
            m.bytes.clone(),
        );
        registry.register(
            "vigil_history_api_requests",
            "Data API requests by route and status code",
            m.requests.clone(),
        );
        Metrics { registry, ..m }
    }
    /// A committed write of `records`.
    pub fn record_write(&self, records: u64, took: Duration) {
        self.records.inc_by(records);
        self.writes.inc();
        self.write_micros.inc_by(took.as_micros() as u64);
    }
    /// A failed write.
    pub fn write_failed(&self) {
        self.write_failures.inc();
    }
    /// Current lag.
    pub fn set_lag(&self, lag: i64) {
        self.lag.set(lag);
    }
    /// Current store size.
    pub fn set_bytes(&self, bytes: u64) {
        self.bytes.set(bytes as i64);
    }
    /// The text exposition.
    pub fn encode(&self) -> String {
        crate::metrics::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_lists_every_exported_metric() {
        let m = super::Metrics::new("ns", "p");
        m.record_write(3, std::time::Duration::from_millis(2));
        m.requests
            .get_or_create(&vec![("route".into(), "/v1/anomalies".into()), ("code".into(), "200".into())])
            .inc();
        let text = m.encode();
        let exported: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let listed: std::collections::BTreeSet<&str> = super::NAMES.iter().copied().collect();
        assert_eq!(exported, listed);
        assert!(text.contains(r#"vigil_history_records_total{namespace="ns",pipeline="p"} 3"#), "{text}");
    }
}

/// An error answer: `{"error": "..."}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    /// What is wrong, naming the parameter, record or field.
    pub error: String,
}

fn fail(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, axum::Json(ApiError { error: msg.into() })).into_response()
}

/// Routes' shared state.
#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    producer: FutureProducer,
    limiter: Arc<Mutex<Bucket>>,
    token: Arc<Mutex<TokenCache>>,
    openapi: Arc<String>,
}

/// A token bucket for all clients together.
struct Bucket {
    tokens: f64,
    rate: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate.max(1.0));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The token file, re-read when it changes (a rotated Secret).
#[derive(Default)]
struct TokenCache {
    modified: Option<SystemTime>,
    checked: Option<Instant>,
    digest: Option<[u8; 32]>,
}

impl TokenCache {
    fn digest(&mut self, path: &std::path::Path) -> Option<[u8; 32]> {
        if self.checked.is_some_and(|c| c.elapsed() < Duration::from_secs(2)) {
            return self.digest;
        }
        self.checked = Some(Instant::now());
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified != self.modified || self.digest.is_none() {
            self.modified = modified;
            self.digest = std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .map(|t| Sha256::digest(t.as_bytes()).into());
        }
        self.digest
    }
}

/// Equal in time independent of where they differ (both are digests, so
/// their lengths are equal and say nothing about the token).
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Vigil Data API", description = "One Pipeline's records in and out: publish, flagged records, per-key history, dead letters, live results."),
    paths(publish, anomalies, history, dead_letters, results, pipeline),
    components(schemas(ApiError, AnomalyRow, DeadLetterRow, RollupRow, Published, PipelineInfo, WriterStatus, Stats, AnomalyPage, HistoryPage, DeadLetterPage)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;
impl utoipa::Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        api.security =
            Some(vec![utoipa::openapi::security::SecurityRequirement::new("bearer", Vec::<String>::new())]);
    }
}

/// The OpenAPI document.
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

/// The routes.
pub fn router(shared: Arc<Shared>) -> Result<Router> {
    let producer: FutureProducer = shared
        .kafka
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()?;
    let o = &shared.options;
    let app = App {
        limiter: Arc::new(Mutex::new(Bucket {
            tokens: f64::from(o.rate_per_second.max(1)),
            rate: f64::from(o.rate_per_second.max(1)),
            at: Instant::now(),
        })),
        token: Arc::new(Mutex::new(TokenCache::default())),
        openapi: Arc::new(openapi_json()),
        producer,
        shared: shared.clone(),
    };
    let v1 = Router::new()
        .route("/v1/records", post(publish))
        .route("/v1/anomalies", get(anomalies))
        .route("/v1/history", get(history))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/results", get(results))
        .route("/v1/pipeline", get(pipeline))
        .layer(middleware::from_fn_with_state(app.clone(), timeout))
        .layer(middleware::from_fn_with_state(app.clone(), auth));
    Ok(Router::new()
        .merge(v1)
        .route("/openapi.json", get(openapi))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .fallback(|| async { fail(StatusCode::NOT_FOUND, "no such endpoint; see /openapi.json") })
        .layer(DefaultBodyLimit::max(o.max_body_bytes))
        .layer(middleware::from_fn_with_state(app.clone(), rate_limit))
        .layer(middleware::from_fn_with_state(app.clone(), access_log))
        .with_state(app))
}

async fn access_log(State(app): State<App>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.to_string()).unwrap_or_default();
    let resp = next.run(req).await;
    let code = resp.status().as_u16();
    let route = match path.as_str() {
        "/v1/records" | "/v1/anomalies" | "/v1/history" | "/v1/dead-letters" | "/v1/results"
        | "/v1/pipeline" | "/openapi.json" | "/healthz" | "/readyz" | "/status" | "/metrics" => path.clone(),
        _ => "other".into(),
    };
    app.shared
        .metrics
        .requests
        .get_or_create(&vec![("route".into(), route), ("code".into(), code.to_string())])
        .inc();
    if !matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics" | "/status") {
        info!(
            target: "access",
            method = %method,
            path = %path,
            status = code,
            ms = started.elapsed().as_millis() as u64,
            peer = %peer,
            "request"
        );
    }
    resp
}

async fn rate_limit(State(app): State<App>, req: Request, next: Next) -> Response {
    let probe = matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics" | "/status");
    let ok = probe || app.limiter.lock().map(|mut b| b.take()).unwrap_or(true);
    if !ok {
        let mut r = fail(StatusCode::TOO_MANY_REQUESTS, "too many requests; retry after a second");
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    next.run(req).await
}

async fn auth(State(app): State<App>, req: Request, next: Next) -> Response {
    let Some(path) = app.shared.options.token_file.as_deref() else {
        return next.run(req).await;
    };
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::trim);
    let Some(given) = given.and_then(|g| g.strip_prefix("Bearer ").or_else(|| g.strip_prefix("bearer ")))
    else {
        let mut r =
            fail(StatusCode::UNAUTHORIZED, "this API needs a token: send Authorization: Bearer <token>");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    };
    let expected = app.token.lock().ok().and_then(|mut t| t.digest(path));
    let Some(expected) = expected else {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "the API's token file cannot be read; no request is accepted",
        );
    };
    let digest: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
    if !same(&digest, &expected) {
        return fail(StatusCode::FORBIDDEN, "the token is not valid for this Pipeline's API");
    }
    next.run(req).await
}

async fn timeout(State(app): State<App>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(app.shared.options.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => fail(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the request took longer than {:?} and was stopped", app.shared.options.request_timeout),
        ),
    }
}

async fn openapi(State(app): State<App>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], app.openapi.as_str().to_string()).into_response()
}

async fn metrics(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        app.shared.metrics.encode(),
    )
        .into_response()
}

async fn readyz(State(app): State<App>) -> Response {
    let s = app.shared.status();
    if s.state == "Running" {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{}: {}\n", s.state, s.message.unwrap_or_default()))
            .into_response()
    }
}

async fn status(State(app): State<App>) -> Response {
    axum::Json(app.shared.status()).into_response()
}

/// What `POST /v1/records` acknowledged.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Published {
    /// Records the broker acknowledged.
    pub accepted: usize,
    /// The input topic.
    pub topic: String,
}

/// Split a body into records: one JSON object, a JSON array of objects, or
/// NDJSON (one object per line). The error names the record.
pub fn split_records(body: &[u8]) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, String> {
    let text = std::str::from_utf8(body)
        .map_err(|e| format!("the body is not UTF-8 (at byte {})", e.valid_up_to()))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("the body is empty: send a JSON object, an array of objects, or NDJSON".into());
    }
    let object = |v: serde_json::Value, at: String| match v {
        serde_json::Value::Object(m) => Ok(m),
        other => Err(format!("{at}: expected a JSON object, found {}", json_type(&other))),
    };
    match serde_json::from_str::<serde_json::Value>(trimmed) {
        Ok(serde_json::Value::Array(items)) => {
            if items.is_empty() {
                return Err("the array is empty".into());
            }
            items.into_iter().enumerate().map(|(i, v)| object(v, format!("record {}", i + 1))).collect()
        }
        Ok(v) => Ok(vec![object(v, "record 1".into())?]),
        Err(whole) => {
            let lines: Vec<(usize, &str)> =
                trimmed.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).collect();
            if lines.len() <= 1 {
                return Err(format!("record 1: not JSON: {whole}"));
            }
            lines
                .into_iter()
                .map(|(i, l)| {
                    serde_json::from_str(l)
                        .map_err(|e| format!("line {}: not JSON: {e}", i + 1))
                        .and_then(|v| object(v, format!("line {}", i + 1)))
                })
                .collect()
        }
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Publish records to the Pipeline's input topic.
#[utoipa::path(
    post,
    path = "/v1/records",
    request_body(content = Object, description = "A JSON object, an array of objects, or NDJSON (application/x-ndjson)"),
    responses(
        (status = 200, description = "Every record acknowledged by the broker", body = Published),
        (status = 400, description = "A record is not a JSON object (the record is named)", body = ApiError),
        (status = 401, body = ApiError), (status = 403, body = ApiError),
        (status = 413, description = "The body is over the limit"),
        (status = 415, description = "The Pipeline's input is CSV", body = ApiError),
        (status = 503, description = "The broker did not acknowledge every record", body = ApiError),
    )
)]
async fn publish(State(app): State<App>, body: Bytes) -> Response {
    if app.shared.pipeline.spec.input.encoding.format != vigil_crds::RecordFormat::Json {
        return fail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "this Pipeline reads CSV (spec.input.format); POST /v1/records publishes JSON records, for JSON pipelines",
        );
    }
    let records = match split_records(&body) {
        Ok(r) => r,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e),
    };
    let spec = &app.shared.pipeline.spec;
    let topic = spec.input.topic.name.clone();
    let key_field = spec.input.encoding.key_field.clone();
    let mut pending = Vec::with_capacity(records.len());
    for r in &records {
        let payload = serde_json::to_vec(r).unwrap_or_default();
        let key = key_field.as_deref().and_then(|f| r.get(f)).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        let producer = app.producer.clone();
        let topic = topic.clone();
        pending.push(async move {
            let mut rec = FutureRecord::<String, Vec<u8>>::to(&topic).payload(&payload);
            if let Some(k) = &key {
                rec = rec.key(k);
            }
            producer.send(rec, Duration::from_secs(10)).await.map(|_| ()).map_err(|(e, _)| e.to_string())
        });
    }
    let results = futures::future::join_all(pending).await;
    let failed: Vec<String> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("record {}: {e}", i + 1)))
        .collect();
    if !failed.is_empty() {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} of {} records were not acknowledged by the broker (the others were; resend the failed ones): {}",
                failed.len(),
                records.len(),
                failed.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
            ),
        );
    }
    axum::Json(Published { accepted: records.len(), topic }).into_response()
}

/// Query parameters, checked: unknown names and bad values are 400s.
fn parse_query(raw: &HashMap<String, String>, allowed: &[&str]) -> Result<StoreQuery, String> {
    for k in raw.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(format!("unknown parameter {k:?}; this endpoint takes {}", allowed.join(", ")));
        }
    }
    let time = |name: &str| -> Result<Option<i64>, String> {
        raw.get(name)
            .map(|v| {
                v.parse::<i64>().ok().or_else(|| crate::codec::time::parse_datetime(v)).ok_or_else(|| {
                    format!("{name}: {v:?} is not a time (RFC 3339, or milliseconds since the epoch)")
                })
            })
            .transpose()
    };
    let limit = match raw.get("limit") {
        None => 100,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => return Err(format!("limit: {v:?} is not a number from 1 to {MAX_LIMIT}")),
        },
    };
    let min_score = raw
        .get("minScore")
        .map(|v| {
            v.parse::<f64>()
                .ok()
                .filter(|x| (0.0..=1.0).contains(x))
                .ok_or_else(|| format!("minScore: {v:?} is not a number from 0 to 1"))
        })
        .transpose()?;
    let cursor =
        raw.get("cursor").map(|c| Cursor::decode(c).map_err(|e| format!("cursor: {e}"))).transpose()?;
    let key = raw.get("key").cloned();
    if key.as_ref().is_some_and(|k| k.len() > 1024) {
        return Err("key: longer than 1024 bytes".into());
    }
    let (from, to) = (time("from")?, time("to")?);
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err("from is after to".into());
        }
    }
    Ok(StoreQuery { from, to, key, min_score, limit, cursor })
}

async fn with_store<T: Serialize + Send + 'static>(
    app: &App,
    f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
) -> Response {
    let dir = app.shared.options.data_dir.clone();
    match tokio::task::spawn_blocking(move || Store::open_read_only(&dir).and_then(|s| f(&s))).await {
        Ok(Ok(v)) => axum::Json(v).into_response(),
        Ok(Err(e)) => fail(StatusCode::SERVICE_UNAVAILABLE, format!("the history store: {e:#}")),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct AnomalyPage {
    items: Vec<AnomalyRow>,
    next_cursor: Option<String>,
}
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct HistoryPage {
    items: Vec<RollupRow>,
    next_cursor: Option<String>,
}
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct DeadLetterPage {
    items: Vec<DeadLetterRow>,
    next_cursor: Option<String>,
}

/// Flagged records, oldest first.
#[utoipa::path(
    get,
    path = "/v1/anomalies",
    params(
        ("from" = Option<String>, Query, description = "From this time (RFC 3339 or epoch ms), inclusive"),
        ("to" = Option<String>, Query, description = "Before this time, exclusive"),
        ("key" = Option<String>, Query, description = "Only this key"),
        ("minScore" = Option<f64>, Query, description = "Only scores at or above (0-1)"),
        ("limit" = Option<usize>, Query, description = "Rows per page, 1-1000 (100)"),
        ("cursor" = Option<String>, Query, description = "nextCursor of the previous page"),
    ),
    responses((status = 200, body = AnomalyPage), (status = 400, body = ApiError))
)]
async fn anomalies(State(app): State<App>, Query(raw): Query<HashMap<String, String>>) -> Response {
    match parse_query(&raw, &["from", "to", "key", "minScore", "limit", "cursor"]) {
        Ok(q) => with_store(&app, move |s| s.anomalies(&q)).await,
        Err(e) => fail(StatusCode::BAD_REQUEST, e),
    }
}

/// Per-key minutes (count, mean and max score, anomalies, feature means),
/// by minute then key.
#[utoipa::path(
    get,
    path = "/v1/history",
    params(
        ("from" = Option<String>, Query, description = "From this time (RFC 3339 or epoch ms)"),
        ("to" = Option<String>, Query, description = "Before this time"),
        ("key" = Option<String>, Query, description = "Only this key"),
        ("limit" = Option<usize>, Query, description = "Rows per page, 1-1000 (100)"),
        ("cursor" = Option<String>, Query, description = "nextCursor of the previous page"),
    ),
    responses((status = 200, body = HistoryPage), (status = 400, body = ApiError))
)]
async fn history(State(app): State<App>, Query(raw): Query<HashMap<String, String>>) -> Response {
    match parse_query(&raw, &["from", "to", "key", "limit", "cursor"]) {
        Ok(q) => with_store(&app, move |s| s.history(&q)).await,
        Err(e) => fail(StatusCode::BAD_REQUEST, e),
    }
}

/// Records that could not be processed, with stage and reason.
#[utoipa::path(
    get,
    path = "/v1/dead-letters",
    params(
        ("from" = Option<String>, Query, description = "From this time (RFC 3339 or epoch ms)"),
        ("to" = Option<String>, Query, description = "Before this time"),
        ("limit" = Option<usize>, Query, description = "Rows per page, 1-1000 (100)"),
        ("cursor" = Option<String>, Query, description = "nextCursor of the previous page"),
    ),
    responses((status = 200, body = DeadLetterPage), (status = 400, body = ApiError))
)]
async fn dead_letters(State(app): State<App>, Query(raw): Query<HashMap<String, String>>) -> Response {
    match parse_query(&raw, &["from", "to", "limit", "cursor"]) {
        Ok(q) => with_store(&app, move |s| s.dead_letters(&q)).await,
        Err(e) => fail(StatusCode::BAD_REQUEST, e),
    }
}

/// The Pipeline: spec, the history writer's state, what the store holds.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineInfo {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// The spec the component was started with.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    /// The writer.
    pub history: WriterStatus,
    /// The store.
    pub store: Stats,
}

#[utoipa::path(get, path = "/v1/pipeline", responses((status = 200, body = PipelineInfo)))]
async fn pipeline(State(app): State<App>) -> Response {
    let info = PipelineInfo {
        name: app.shared.pipeline.metadata.name.clone().unwrap_or_default(),
        namespace: app.shared.namespace.clone(),
        spec: serde_json::to_value(&app.shared.pipeline.spec).unwrap_or_default(),
        history: app.shared.status(),
        store: Stats::default(),
    };
    with_store(&app, move |s| Ok(PipelineInfo { store: s.stats()?, ..info })).await
}

/// Scored records from the output topic as NDJSON: from `from` (default:
/// now) to the end as it is when asked, or, with `follow=true`, live until
/// the client goes away.
#[utoipa::path(
    get,
    path = "/v1/results",
    params(
        ("from" = Option<String>, Query, description = "Start at this time (RFC 3339 or epoch ms); default now"),
        ("follow" = Option<bool>, Query, description = "Keep the response open and stream new records"),
        ("limit" = Option<usize>, Query, description = "Without follow: most records (1000, at most 100000)"),
    ),
    responses((status = 200, description = "NDJSON, one scored record per line", content_type = "application/x-ndjson"), (status = 400, body = ApiError))
)]
async fn results(State(app): State<App>, Query(raw): Query<HashMap<String, String>>) -> Response {
    for k in raw.keys() {
        if !["from", "follow", "limit"].contains(&k.as_str()) {
            return fail(
                StatusCode::BAD_REQUEST,
                format!("unknown parameter {k:?}; this endpoint takes from, follow, limit"),
            );
        }
    }
    let follow = match raw.get("follow").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => return fail(StatusCode::BAD_REQUEST, format!("follow: {v:?} is not true or false")),
    };
    let from = match raw.get("from") {
        None => None,
        Some(v) => match v.parse::<i64>().ok().or_else(|| crate::codec::time::parse_datetime(v)) {
            Some(t) => Some(t),
            None => {
                return fail(
                    StatusCode::BAD_REQUEST,
                    format!("from: {v:?} is not a time (RFC 3339, or milliseconds since the epoch)"),
                );
            }
        },
    };
    let limit = match raw.get("limit").map(|v| v.parse::<usize>()) {
        None => 1000,
        Some(Ok(n)) if (1..=100_000).contains(&n) => n,
        Some(_) => return fail(StatusCode::BAD_REQUEST, "limit: not a number from 1 to 100000"),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let shared = app.shared.clone();
    // The reader runs on a blocking thread and ends when the client goes
    // away (the channel closes); an error after the answer has started is
    // the stream's last line, as {"error": ...}.
    tokio::task::spawn_blocking(move || stream_results(&shared, from, follow, limit, &tx));
    let stream =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx)) },
        );
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

static STREAMS: AtomicU64 = AtomicU64::new(0);

fn stream_results(
    shared: &Shared,
    from: Option<i64>,
    follow: bool,
    limit: usize,
    tx: &tokio::sync::mpsc::Sender<Bytes>,
) {
    let send_err = |msg: String| {
        let line = serde_json::json!({ "error": msg }).to_string() + "\n";
        let _ = tx.blocking_send(Bytes::from(line));
    };
    let topic = shared.pipeline.spec.output.name.clone();
    let n = STREAMS.fetch_add(1, Ordering::Relaxed);
    let mut cfg = shared.kafka.client_config();
    cfg.set("group.id", format!("vigil-results-{}-{n}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed");
    let consumer: BaseConsumer = match cfg.create() {
        Ok(c) => c,
        Err(e) => return send_err(format!("cannot read the output topic: {e}")),
    };
    let parts = match consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)) {
        Ok(md) => md
            .topics()
            .first()
            .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
            .unwrap_or_default(),
        Err(e) => return send_err(format!("cannot read the output topic {topic}: {e}")),
    };
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in &parts {
        let (_, high) = consumer.fetch_watermarks(&topic, *p, Duration::from_secs(10)).unwrap_or((0, 0));
        ends.insert(*p, high);
        let _ = tpl.add_partition_offset(
            &topic,
            *p,
            match from {
                Some(t) => Offset::Offset(t),
                None => Offset::Offset(high),
            },
        );
    }
    if from.is_some() {
        match consumer.offsets_for_times(tpl.clone(), Duration::from_secs(10)) {
            Ok(t) => {
                // A time past the end gives -1 (the end).
                let mut fixed = TopicPartitionList::new();
                for e in t.elements() {
                    let at = match e.offset() {
                        Offset::Offset(o) if o >= 0 => Offset::Offset(o),
                        _ => Offset::Offset(ends.get(&e.partition()).copied().unwrap_or(0)),
                    };
                    let _ = fixed.add_partition_offset(e.topic(), e.partition(), at);
                }
                tpl = fixed;
            }
            Err(e) => return send_err(format!("cannot find offsets for the time asked: {e}")),
        }
    }
    if let Err(e) = consumer.assign(&tpl) {
        return send_err(format!("cannot read the output topic: {e}"));
    }
    let mut positions: HashMap<i32, i64> =
        tpl.elements().iter().map(|e| (e.partition(), e.offset().to_raw().unwrap_or(0))).collect();
    let mut sent = 0usize;
    let mut idle_since = Instant::now();
    loop {
        if !follow
            && (sent >= limit || positions.iter().all(|(p, o)| *o >= ends.get(p).copied().unwrap_or(0)))
        {
            return;
        }
        if tx.is_closed() {
            return;
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                positions.insert(m.partition(), m.offset() + 1);
                if !follow && m.offset() >= ends.get(&m.partition()).copied().unwrap_or(0) {
                    continue;
                }
                let mut line = m.payload().unwrap_or_default().to_vec();
                line.push(b'\n');
                if tx.blocking_send(Bytes::from(line)).is_err() {
                    return;
                }
                sent += 1;
                idle_since = Instant::now();
            }
            Some(Err(e)) => return send_err(format!("reading the output topic: {e}")),
            None => {
                // Transaction markers move positions without messages.
                if let Ok(p) = consumer.position() {
                    for e in p.elements() {
                        if let Some(o) = e.offset().to_raw().filter(|o| *o >= 0) {
                            positions.insert(e.partition(), o);
                        }
                    }
                }
                if follow && idle_since.elapsed() > Duration::from_secs(15) {
                    // A keep-alive line so proxies and clients see the
                    // stream is open.
                    if tx.blocking_send(Bytes::from_static(b"\n")).is_err() {
                        return;
                    }
                    idle_since = Instant::now();
                }
            }
        }
    }
}
