use std::io::BufRead;

use clap::Parser;
use command_api::config::{AdminAction, Command, Config, PrivacyAction, SnapshotAction};
use command_api::identity::bootstrap::Bootstrapped;
use command_api::Application;

/// mimalloc instead of the system allocator: under load glibc's malloc, free and
/// consolidation were a third of the service's CPU (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    events::http::telemetry::init("command-api");
    let config = Config::parse();
    match config.command.clone() {
        None | Some(Command::Serve) => serve(config).await,
        Some(Command::Admin {
            action: AdminAction::Create { email, .. },
        }) => create_admin(&config, &email).await,
        Some(Command::Snapshots {
            action: SnapshotAction::Verify,
        }) => verify_snapshots(&config).await,
        Some(Command::Privacy {
            action: PrivacyAction::SealStore { batch },
        }) => seal_store(&config, batch).await,
    }
}

async fn seal_store(config: &Config, batch: i64) -> std::process::ExitCode {
    match command_api::seal_store(config, batch).await {
        Ok(done) => {
            println!(
                "sealed {} events and {} snapshots; {} fields of erased subjects written as [erased]; {} left in clear (subject id of another tenant)",
                done.events, done.snapshots, done.erased, done.refused
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("command-api: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn verify_snapshots(config: &Config) -> std::process::ExitCode {
    match command_api::verify_snapshots(config).await {
        Ok(audit) => {
            for (aggregate_type, t) in &audit.types {
                println!(
                    "{aggregate_type}: {} snapshots, up to {} rewrites, histories up to {} events",
                    t.snapshots, t.most_rewrites, t.longest
                );
            }
            for aggregate_type in &audit.unknown_types {
                println!("{aggregate_type}: not an aggregate type of this version; not checked");
            }
            for finding in &audit.findings {
                println!("UNSOUND {finding}");
            }
            if audit.is_sound() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("command-api: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> std::process::ExitCode {
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

async fn create_admin(config: &Config, email: &str) -> std::process::ExitCode {
    let mut password = String::new();
    if std::io::stdin().lock().read_line(&mut password).is_err() {
        eprintln!("command-api: could not read the password from standard input");
        return std::process::ExitCode::FAILURE;
    }
    let password = password.trim_end_matches(['\r', '\n']);
    match command_api::create_super_admin(config, email, password).await {
        Ok(Bootstrapped::Created(id)) => {
            println!("created super admin {id}");
            std::process::ExitCode::SUCCESS
        }
        Ok(Bootstrapped::Existed(id)) => {
            println!("an admin user with this e-mail exists already: {id}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("command-api: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
