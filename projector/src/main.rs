use clap::Parser;
use projector::{Command, Config};

/// mimalloc instead of the system allocator: under load glibc's malloc, free and
/// consolidation were a third of the service's CPU (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_telemetry();
    let config = Config::parse();
    let outcome = match config.command.clone().unwrap_or(Command::Run) {
        Command::Run => projector::run(config, shutdown_signal()).await,
        Command::List => {
            for p in projector::projections(&config, None, None, None) {
                println!("{}", p.name());
            }
            Ok(())
        }
        Command::Rebuild { projection } => rebuild(&config, &projection).await,
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "projector failed");
            eprintln!("projector: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn rebuild(config: &Config, name: &str) -> Result<(), projector::Error> {
    let projection = projector::projections(config, None, None, None)
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| {
            projector::Error::Config(format!(
                "no projection named {name:?}; see `projector list`"
            ))
        })?;
    if projection.effect().is_some() {
        return Err(projector::Error::Config(format!(
            "{name} is a side-effect worker, not a read model: there is nothing to rebuild"
        )));
    }
    let pool = config.pool().await?;
    let started = std::time::Instant::now();
    // Without the master-key settings a rebuild still runs, and fails only if it meets a
    // personal field it cannot open (it never writes such a field as erased).
    let keys = config.keyring(&pool).unwrap_or_else(|_| {
        events::keyring::Keyring::new(pool.clone(), events::personal::MasterKeys::none())
    });
    let report = projector::rebuild::rebuild(&pool, projection.as_ref(), &keys).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "rebuilt {name}: {} events in {secs:.2} s ({:.0} events/s)",
        report.events,
        report.events as f64 / secs.max(1e-9)
    );
    Ok(())
}

fn init_telemetry() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
