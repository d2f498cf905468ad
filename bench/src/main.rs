//! `bench`: measures the services against the targets, injects faults, fuzzes the APIs.
//! Build the services in release mode first (`scripts/bench` does both).

use std::path::PathBuf;
use std::time::Duration;

use bench::chaos::{ChaosConfig, ChaosReport};
use bench::fuzz::{FuzzOptions, FuzzResult};
use bench::report::Report;
use bench::stack::{default_bin_dir, StackConfig};
use bench::{Error, Parts, PerfOptions};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "bench", version, about)]
struct Cli {
    /// Folder of the `command-api`, `projector` and `query-api` binaries (default: beside
    /// this one).
    #[arg(long, env = "BENCH_BIN_DIR", global = true)]
    bin_dir: Option<PathBuf>,
    /// PostgreSQL URL of a user that may create databases; each run makes its own.
    #[arg(
        long,
        env = "BENCH_DATABASE_URL",
        default_value = "postgres://root@127.0.0.1:5432/postgres",
        global = true
    )]
    database_url: String,
    /// NATS server; each run uses a stream of its own.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    nats_url: String,
    /// Concurrent clients (C).
    #[arg(long, default_value_t = 32, global = true)]
    clients: usize,
    /// Seconds each workload runs.
    #[arg(long, default_value_t = 10, global = true)]
    seconds: u64,
    /// The fixed command rate, per second.
    #[arg(long, default_value_t = 1000.0, global = true)]
    rate: f64,
    /// Every k-th command of the lag workload is followed by a read that waits for it.
    #[arg(long, default_value_t = 4, global = true)]
    lag_every: u64,
    /// Messages of the long-thread workload.
    #[arg(long, default_value_t = 10_000, global = true)]
    long_thread_messages: u64,
    /// Events in the store for the rebuild workload.
    #[arg(long, default_value_t = 1_000_000, global = true)]
    rebuild_events: u64,
    /// Faults the chaos harness injects.
    #[arg(long, default_value_t = 20, global = true)]
    faults: usize,
    /// Test cases per operation for the fuzzer.
    #[arg(long, default_value_t = 50, global = true)]
    max_examples: u32,
    /// Where the JSON report goes (`-` for none).
    #[arg(long, default_value = "docs/benchmarks/latest.json", global = true)]
    out: String,
    /// Target already running services instead of starting them (commands, lag, queries).
    #[arg(long, requires = "query_url", global = true)]
    command_url: Option<String>,
    /// The query API of the running services.
    #[arg(long, requires = "command_url", global = true)]
    query_url: Option<String>,
    /// Their token secret (to mint a super-admin token).
    #[arg(long, env = "NEST_AUTH_SECRET", hide_env_values = true, global = true)]
    secret: Option<String>,
    /// Extra environment for the services it starts, `KEY=VALUE`, repeatable (for tuning:
    /// `--service-env SNAPSHOT_EVERY=20`).
    #[arg(long = "service-env", value_parser = parse_key_value, global = true)]
    service_env: Vec<(String, String)>,
    #[command(subcommand)]
    command: Run,
}

#[derive(Debug, Subcommand)]
enum Run {
    /// Every performance workload, then the fault harness and the fuzzer.
    All,
    /// Every performance workload (commands, lag, queries, rebuild, baseline, RSS).
    Perf,
    /// The hot command at full speed (C clients) and at the fixed rate.
    Commands,
    /// The hot command offered, open loop, at twice what the closed loop reached.
    Overload,
    /// Time from a command's 2xx to the change being visible through the query API.
    Lag,
    /// A tenant's inbox page (chat threads) and a thread's detail under C clients.
    Queries,
    /// `projector rebuild` over the seeded store.
    Rebuild,
    /// pgbench's durable single-row appends: the machine's limit.
    Baseline,
    /// One chat thread through a long life: sends early and late, its snapshot, a cold load.
    LongThread,
    /// Faults under load, then the audit: nothing lost, nothing twice.
    Chaos,
    /// Schemathesis against both APIs: no 5xx, answers as documented.
    Fuzz,
}

fn parse_key_value(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{raw}: expected KEY=VALUE"))
}

/// Everything a run produced, as written to the JSON report.
#[derive(Debug, serde::Serialize)]
struct Output {
    #[serde(flatten)]
    perf: Option<Report>,
    chaos: Option<ChaosReport>,
    fuzz: Option<Vec<FuzzResult>>,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match go(cli).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    }
}

/// The report a previous run wrote to `out`, if there is one to read.
fn previous_report(out: &str) -> Option<serde_json::Value> {
    if out == "-" {
        return None;
    }
    let text = std::fs::read_to_string(out).ok()?;
    serde_json::from_str(&text).ok()
}

/// Runs the command; false when a workload, a fault or a fuzz check failed.
async fn go(cli: Cli) -> Result<bool, Error> {
    let bin_dir = cli.bin_dir.clone().unwrap_or_else(default_bin_dir);
    let work_dir = bench::default_work_dir(&bin_dir);
    let stack = StackConfig {
        bin_dir: bin_dir.clone(),
        admin_url: cli.database_url.clone(),
        nats_url: cli.nats_url.clone(),
        work_dir: work_dir.clone(),
        env: cli.service_env.clone(),
    };
    let target = match (&cli.command_url, &cli.query_url) {
        (Some(c), Some(q)) => Some((
            c.clone(),
            q.clone(),
            cli.secret
                .clone()
                .ok_or("--secret (or NEST_AUTH_SECRET) is needed with --command-url")?,
        )),
        _ => None,
    };
    let perf_options = PerfOptions {
        stack: stack.clone(),
        clients: cli.clients,
        seconds: cli.seconds,
        rate: cli.rate,
        rebuild_events: cli.rebuild_events,
        lag_every: cli.lag_every,
        long_thread_messages: cli.long_thread_messages,
        target,
    };
    let parts = match cli.command {
        Run::All | Run::Perf => Some(Parts::ALL),
        Run::Commands => Some(Parts {
            commands: true,
            ..Parts::NONE
        }),
        Run::Overload => Some(Parts {
            overload: true,
            ..Parts::NONE
        }),
        Run::Lag => Some(Parts {
            lag: true,
            ..Parts::NONE
        }),
        Run::Queries => Some(Parts {
            queries: true,
            ..Parts::NONE
        }),
        Run::Rebuild => Some(Parts {
            rebuild: true,
            ..Parts::NONE
        }),
        Run::Baseline => Some(Parts {
            baseline: true,
            ..Parts::NONE
        }),
        Run::LongThread => Some(Parts {
            long_thread: true,
            ..Parts::NONE
        }),
        Run::Chaos | Run::Fuzz => None,
    };
    let mut output = Output {
        perf: None,
        chaos: None,
        fuzz: None,
    };
    let mut passed = true;
    if let Some(parts) = parts {
        let report = bench::perf(&perf_options, parts).await?;
        println!("{}", report.table());
        if let Some(previous) = previous_report(&cli.out) {
            print!("{}", bench::report::compare(&report, &previous));
        }
        passed &= report.failures.is_empty();
        output.perf = Some(report);
    }
    if matches!(cli.command, Run::All | Run::Chaos) {
        eprintln!("bench: chaos ({} faults)", cli.faults);
        let report = bench::chaos::run(ChaosConfig {
            bin_dir: bin_dir.clone(),
            work_dir: work_dir.clone(),
            faults: cli.faults,
            clients: 8,
            think: Duration::from_millis(10),
            between: Duration::from_secs(2),
            settle_within: Duration::from_secs(120),
        })
        .await?;
        println!("{}", report.table());
        passed &= report.passed();
        output.chaos = Some(report);
    }
    if matches!(cli.command, Run::All | Run::Fuzz) {
        eprintln!("bench: fuzz (schemathesis)");
        let results = bench::fuzz::run(&FuzzOptions {
            stack,
            max_examples: cli.max_examples,
            seed: 1,
            exclude_paths: Vec::new(),
        })
        .await?;
        for r in &results {
            println!(
                "{}: {} ({} operations)\n{}",
                r.api,
                if r.passed { "passed" } else { "FAILED" },
                r.operations.len(),
                r.summary
            );
            passed &= r.passed;
        }
        output.fuzz = Some(results);
    }
    if cli.out != "-" {
        let path = PathBuf::from(&cli.out);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, serde_json::to_string_pretty(&output)? + "\n")?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(passed)
}
