use tracing_subscriber::{fmt, EnvFilter};

/// JSON logs on stderr, filtered by `RUST_LOG` (default `info`). Safe to call twice: the
/// second call is a no-op, which tests rely on.
pub fn init(service: &'static str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    tracing::debug!(service, "telemetry ready");
}

/// For tests: logs only when `TEST_LOG` is set, so a passing suite stays quiet.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        init("test");
    }
}
