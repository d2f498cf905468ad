use clap::Parser;
use command_api::config::Config;
use command_api::Application;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    events::http::telemetry::init("command-api");
    let config = Config::parse();
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "command-api could not start");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Ok(addr) = app.local_addr() {
        tracing::info!(%addr, "command-api listening");
    }
    match app.run_until(events::http::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "command-api stopped with an error");
            std::process::ExitCode::FAILURE
        }
    }
}
