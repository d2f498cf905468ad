//! The benchmark, fault and bad-input harness.
//!
//! # Layout
//! - [`stack`]: the three services as child processes on a database and stream of their own.
//! - [`load`]: closed- and open-loop load generators and latency percentiles.
//! - [`workloads`]: seeding, the command, lag, query and rebuild workloads, the pgbench baseline.
//! - [`report`]: the figures of a run against the targets, as a table and as JSON.
//! - [`chaos`]: faults under load on a PostgreSQL and NATS of the harness's own, and the audit.
//! - [`fuzz`]: schemathesis against both APIs' OpenAPI documents.
//!
//! docs/performance.md explains the figures and keeps the history of runs.

/// Faults under load, then an audit of store, stream and read model.
pub mod chaos;
/// Schemathesis against both `/openapi.json` documents.
pub mod fuzz;
/// Load generators and latency summaries.
pub mod load;
/// A run's figures, targets, table and JSON.
pub mod report;
/// The three services as child processes.
pub mod stack;
/// Seeding and workloads.
pub mod workloads;

use std::path::PathBuf;
use std::time::Duration;

use report::{Failure, Overload, Report, RunInfo};
use stack::{Service, Stack, StackConfig};
use workloads::Api;

/// Errors of the harness: it is a tool, so they are reported, not matched on.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Which performance workloads to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// Commands at full speed and at the fixed rate.
    pub commands: bool,
    /// Lag at the fixed rate.
    pub lag: bool,
    /// List and detail reads.
    pub queries: bool,
    /// `projector rebuild` over the seeded store.
    pub rebuild: bool,
    /// pgbench's single-row appends.
    pub baseline: bool,
    /// One thread through a long life.
    pub long_thread: bool,
    /// The hot command offered at twice the closed-loop maximum.
    pub overload: bool,
}

impl Parts {
    /// Every performance workload.
    pub const ALL: Parts = Parts {
        commands: true,
        lag: true,
        queries: true,
        rebuild: true,
        baseline: true,
        long_thread: true,
        overload: true,
    };
    /// None (set the ones wanted).
    pub const NONE: Parts = Parts {
        commands: false,
        lag: false,
        queries: false,
        rebuild: false,
        baseline: false,
        long_thread: false,
        overload: false,
    };
}

/// How the performance workloads run.
#[derive(Debug, Clone)]
pub struct PerfOptions {
    /// Where the stack's servers and binaries are.
    pub stack: StackConfig,
    /// Concurrent clients (C).
    pub clients: usize,
    /// Seconds each workload runs.
    pub seconds: u64,
    /// The fixed command rate.
    pub rate: f64,
    /// Events in the store for the rebuild.
    pub rebuild_events: u64,
    /// Every k-th command at the rate is followed by a lag probe.
    pub lag_every: u64,
    /// Messages the long thread is sent.
    pub long_thread_messages: u64,
    /// Running services to target instead of starting a stack: (command URL, query URL, secret).
    pub target: Option<(String, String, String)>,
}

/// Runs the chosen performance workloads and returns their report (judged against targets).
pub async fn perf(options: &PerfOptions, parts: Parts) -> Result<Report, Error> {
    let duration = Duration::from_secs(options.seconds);
    let clients = options.clients.max(1);
    let mut report = Report {
        run: RunInfo {
            started_at: chrono::Utc::now().to_rfc3339(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            clients,
            seconds_per_workload: options.seconds,
            rate: options.rate,
            binaries: options.stack.bin_dir.display().to_string(),
        },
        ..Report::default()
    };
    let mut stack = None;
    let api = match &options.target {
        Some((command_url, query_url, secret)) => {
            let keys = events::access::TokenKeys::new(secret);
            let token = keys.admin_token(
                "bench-super-admin",
                None,
                events::access::Role::SuperAdmin,
                86_400,
            );
            Api::new(command_url, query_url, token, clients * 2)
        }
        None => {
            let s = Stack::start(options.stack.clone()).await?;
            let api = Api::new(&s.command_url, &s.query_url, s.super_admin(), clients * 2);
            stack = Some(s);
            api
        }
    };
    run_parts(options, parts, &api, stack.as_mut(), &mut report, duration).await;
    if let Some(s) = stack {
        s.teardown().await?;
    }
    report.judge();
    Ok(report)
}

/// Records that `workload` failed, and why: the run goes on, and the figures of the other
/// workloads stand.
fn failed(report: &mut Report, workload: &str, error: impl std::fmt::Display) {
    eprintln!("bench: {workload} failed: {error}");
    report.failures.push(Failure {
        workload: workload.to_owned(),
        error: error.to_string(),
    });
}

async fn run_parts(
    options: &PerfOptions,
    parts: Parts,
    api: &Api,
    stack: Option<&mut Stack>,
    report: &mut Report,
    duration: Duration,
) {
    let clients = options.clients.max(1);
    if parts.commands || parts.overload || parts.lag || parts.queries || parts.rebuild {
        eprintln!("bench: seeding");
        match workloads::seed(api, clients * 2, 256.max(clients * 2), 100, clients).await {
            Ok(seed) => seeded_parts(options, parts, api, &seed, report, duration).await,
            Err(e) => {
                let seeded = [
                    ("commands", parts.commands),
                    ("overload", parts.overload),
                    ("lag", parts.lag),
                    ("queries", parts.queries),
                ];
                for (workload, _) in seeded.iter().filter(|(_, wanted)| *wanted) {
                    failed(report, workload, format!("not run: seeding failed: {e}"));
                }
            }
        }
    }
    let Some(stack) = stack else {
        return;
    };
    for service in Service::ALL {
        if let Some(bytes) = stack.rss_bytes(service) {
            report
                .rss_mib
                .insert(service.binary().to_owned(), bytes as f64 / 1_048_576.0);
        }
    }
    if parts.long_thread {
        long_thread(options, api, stack, report).await;
    }
    if parts.baseline {
        eprintln!("bench: baseline (pgbench)");
        match workloads::baseline(&stack.database_url, clients, duration).await {
            Ok((baseline, cost)) => {
                eprintln!("bench:   {cost:?}");
                report.baseline = Some(baseline);
                report.writer_cost = Some(cost);
            }
            Err(e) => failed(report, "baseline", e),
        }
    }
    if parts.rebuild {
        if let Err(e) = rebuild(options, stack, report).await {
            failed(report, "rebuild", e);
        }
    }
    if let (Some(c), Some(b)) = (&report.commands_full_speed, &report.baseline) {
        report.baseline_ratio = Some(c.per_sec / b.inserts_per_sec.max(1e-9));
    }
    if let (Some(c), Some(r)) = (&report.writer_cost, report.relay_reads_per_command) {
        report.horizon_cost_per_command_us = Some(c.announce_us + c.horizon_us * r);
    }
}

/// The workloads on the seeded tenants and threads: commands (full speed, at the rate),
/// overload, lag and queries.
async fn seeded_parts(
    options: &PerfOptions,
    parts: Parts,
    api: &Api,
    seed: &workloads::Seed,
    report: &mut Report,
    duration: Duration,
) {
    let clients = options.clients.max(1);
    if parts.commands || parts.overload {
        eprintln!("bench: commands at full speed");
        let before = api.snapshots_written().await;
        let reads_before = api.relay_reads().await;
        let full = workloads::commands_full_speed(api, seed, clients, duration).await;
        eprintln!("bench:   {full:?}");
        if let (Some(b), Some(a)) = (reads_before, api.relay_reads().await) {
            report.relay_reads_per_command = Some((a - b) / full.ok.max(1) as f64);
        }
        report.commands_full_speed = Some(full);
        count_snapshots(api, report, "commands full speed", before).await;
    }
    if parts.commands {
        eprintln!("bench: commands at {}/s", options.rate);
        let before = api.snapshots_written().await;
        let (at_rate, _) =
            workloads::commands_at_rate(api, seed, options.rate, duration, None).await;
        report.commands_at_rate = Some(at_rate);
        count_snapshots(api, report, "commands at rate", before).await;
    }
    if let (true, Some(full)) = (parts.overload, report.commands_full_speed) {
        let offered = 2.0 * full.per_sec.max(1.0);
        eprintln!("bench: overload, {offered:.0}/s offered");
        let (admitted, _) = workloads::commands_at_rate(api, seed, offered, duration, None).await;
        eprintln!("bench:   {admitted:?}");
        report.overload = Some(Overload {
            closed_loop_per_sec: full.per_sec,
            offered_per_sec: offered,
            admitted,
        });
    }
    if parts.lag {
        eprintln!("bench: lag at {}/s", options.rate);
        let before = api.snapshots_written().await;
        report.lag = workloads::commands_at_rate(
            api,
            seed,
            options.rate,
            duration,
            Some(options.lag_every.max(1)),
        )
        .await
        .1;
        count_snapshots(api, report, "lag", before).await;
    }
    if parts.queries {
        eprintln!("bench: queries");
        match workloads::queries(api, seed, clients, duration).await {
            Ok(queries) => report.queries = Some(queries),
            Err(e) => failed(report, "queries", e),
        }
    }
}

/// One thread through a long life, with a restart of command-api.
async fn long_thread(options: &PerfOptions, api: &Api, stack: &mut Stack, report: &mut Report) {
    eprintln!(
        "bench: one thread of {} messages",
        options.long_thread_messages
    );
    let database_url = stack.database_url.clone();
    let services: &mut Stack = &mut *stack;
    let restart = move || async move {
        services.kill(Service::CommandApi);
        services.spawn(Service::CommandApi)?;
        services
            .wait_ready(Service::CommandApi, Duration::from_secs(30))
            .await
    };
    match workloads::long_thread(api, &database_url, options.long_thread_messages, restart).await {
        Ok(long) => {
            eprintln!("bench:   {long:?}");
            report.long_thread = Some(long);
        }
        Err(e) => failed(report, "long thread", e),
    }
}

/// `projector rebuild` over a seeded store: the live services stop first (the relay would
/// otherwise publish the seeded million).
async fn rebuild(
    options: &PerfOptions,
    stack: &mut Stack,
    report: &mut Report,
) -> Result<(), Error> {
    for service in Service::ALL {
        stack.kill(service);
    }
    let per_tenant = 100;
    eprintln!(
        "bench: writing {} events for the rebuild",
        options.rebuild_events
    );
    workloads::seed_events(
        &stack.database_url,
        options.rebuild_events / per_tenant,
        per_tenant,
    )
    .await?;
    eprintln!("bench: rebuild");
    report.rebuild = Some(workloads::rebuild(&options.stack.bin_dir, &stack.database_url).await?);
    eprintln!("bench: chat rebuild, texts in clear and sealed");
    let chat = workloads::chat_rebuild(
        &options.stack.bin_dir,
        &stack.database_url,
        options.rebuild_events / 10,
    )
    .await?;
    eprintln!("bench:   {chat:?}");
    report.chat_rebuild = Some(chat);
    Ok(())
}

/// Records the snapshots command-api wrote since `before` under `workload`.
async fn count_snapshots(api: &Api, report: &mut Report, workload: &str, before: Option<f64>) {
    if let (Some(before), Some(after)) = (before, api.snapshots_written().await) {
        eprintln!("bench:   {} snapshots written", after - before);
        report
            .snapshots_written
            .insert(workload.to_owned(), after - before);
    }
}

/// The default scratch folder: `target/bench` beside the binaries' profile folder.
pub fn default_work_dir(bin_dir: &std::path::Path) -> PathBuf {
    bin_dir
        .parent()
        .map_or_else(std::env::temp_dir, |target| target.join("bench"))
}
