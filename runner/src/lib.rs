//! Vigil's data plane and the `vigil` command line.

pub mod cli;
pub mod codec;
pub mod expr;
pub mod keyed;
pub mod record;
pub mod transforms;
pub mod validate;
