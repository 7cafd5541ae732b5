//! The Vigil operator: reconciles `Pipeline` resources into Kafka topics and
//! Kubernetes workloads, and reports status you can trust.

pub mod context;
pub mod controller;
pub mod crdgen;
pub mod kafka;
pub mod leader;
pub mod metrics;
pub mod offsets;
pub mod pipeline;
pub mod rbac;

/// Lock a mutex, taking over one a panicking thread left poisoned: the
/// operator's shared maps stay usable (each update is a single insert or
/// remove, never left half done).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
