//! History: what a Pipeline flagged, what every key looked like minute by
//! minute, and what was dead-lettered, kept in an embedded store and served
//! by the Data API.
//!
//! The history component (`vigil history-server`, one per Pipeline, a
//! single-replica StatefulSet) consumes the output and dead-letter topics
//! and writes [`store::Store`]; runners stay stateless, so any number of
//! them on any nodes work with a ReadWriteOnce volume. `vigil local
//! --history DIR` writes the same store from a local run.

pub mod api;
pub mod cli;
pub mod ingest;
pub mod server;
pub mod store;

#[cfg(test)]
mod tests;
