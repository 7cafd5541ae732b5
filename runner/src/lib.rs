//! Vigil's data plane and the `vigil` command line.

pub mod cli;
pub mod validate;
