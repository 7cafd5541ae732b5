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
