//! Crash points for the control-plane chaos tests: with
//! `VIGIL_OPERATOR_CRASH_AT=<point>` in its environment the operator aborts
//! (no cleanup, as after a `kill -9`) the first time a reconcile reaches
//! that point. The variable is read once; nothing sets it outside tests.
//!
//! Points: `after-topics` (a Pipeline's topics are created or checked, and
//! neither its children nor its status are written yet).

use std::sync::OnceLock;

/// The environment variable naming the crash point.
pub const CRASH_AT: &str = "VIGIL_OPERATOR_CRASH_AT";

/// Abort here if this is the configured crash point.
pub fn point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    if AT.get_or_init(|| std::env::var(CRASH_AT).ok()).as_deref() == Some(name) {
        eprintln!("{CRASH_AT}={name}: aborting here, as a kill -9 would");
        std::process::abort();
    }
}
