//! The Vigil operator: reconciles `Pipeline` and `Model` resources into Kafka
//! topics and Kubernetes workloads.

pub mod crdgen;
