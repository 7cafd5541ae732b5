//! Log output: JSON lines for `vigil run` (what Loki and other collectors
//! index), readable text for the interactive commands. `VIGIL_LOG` (or
//! `RUST_LOG`) sets the filter, `info` by default.

use tracing_subscriber::EnvFilter;

/// Install the global subscriber.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_env("VIGIL_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
    } else {
        builder.compact().without_time().with_target(false).try_init()
    };
}
