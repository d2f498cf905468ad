use clap::Parser;
use query_api::config::Config;
use query_api::Application;

/// mimalloc instead of the system allocator: under load glibc's malloc, free and
/// consolidation were a third of the service's CPU (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    events::http::telemetry::init("query-api");
    let config = Config::parse();
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "query-api could not start");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Ok(addr) = app.local_addr() {
        tracing::info!(%addr, "query-api listening");
    }
    match app.run_until(events::http::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "query-api stopped with an error");
            std::process::ExitCode::FAILURE
        }
    }
}
