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

/// For tests: logs only when `TEST_LOG` is set, so a passing suite stays quiet; with
/// `TEST_LOG_DIR` set, into a file of that folder per test process (`test-{pid}.log`, JSON,
/// filtered by `RUST_LOG`), which the test command searches for personal data and secrets
/// after the run (`scripts/check-logs`).
pub fn init_for_tests() {
    if let Some(dir) = std::env::var_os("TEST_LOG_DIR") {
        let path = std::path::Path::new(&dir).join(format!("test-{}.log", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("the test log {} opens: {e}", path.display()));
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let _ = fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::sync::Mutex::new(file))
            .try_init();
    } else if std::env::var_os("TEST_LOG").is_some() {
        init("test");
    }
}
