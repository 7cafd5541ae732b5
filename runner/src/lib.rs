//! Vigil's data plane and the `vigil` command line.

pub mod cli;
pub mod codec;
pub mod detectors;
pub mod engine;
pub mod eval;
pub mod expr;
pub mod history;
pub mod http;
pub mod keyed;
pub mod local;
pub mod logging;
pub mod metrics;
pub mod models;
pub mod record;
pub mod run;
pub mod transforms;
pub mod validate;
