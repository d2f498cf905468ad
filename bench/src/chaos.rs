//! The fault harness: a steady command load while processes die and servers restart, then an
//! audit of the event store, the stream and the read model against what the clients were told.
//!
//! Faults hit a PostgreSQL cluster and a NATS server of the harness's own (a `Sandbox`), never
//! the machine's shared ones, so restarting them disturbs nothing else. The faults, in a cycle:
//!
//! - kill -9 command-api under load;
//! - kill -9 the projector under load (mid-batch, as the load keeps it busy);
//! - restart NATS (graceful stop, start on the same store);
//! - restart PostgreSQL (immediate stop, i.e. crash recovery from the WAL on start);
//! - kill -9 command-api *between commit and publish*: NATS is stopped first so commands keep
//!   committing while the relay cannot publish, and command-api dies holding unpublished
//!   events; then NATS and command-api start again.
//!
//! Every command carries a unique operation id in its body and the same id as its
//! `Idempotency-Key`; a client retries an unanswered or 5xx command with the same key until it
//! gets a 2xx. The audit then checks that every acknowledged operation is in the store exactly
//! once at the version the client was told, that no operation is in the store twice, that the
//! stream holds every event once, and that the read model reflects every event.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use sqlx::{Connection, PgConnection, Row};

use crate::stack::{free_port, Service, Stack, StackConfig};
use crate::workloads::{Api, Outcome};
use crate::Error;

/// A PostgreSQL cluster and a NATS server that only the harness uses.
pub struct Sandbox {
    dir: PathBuf,
    pg_bin: PathBuf,
    pg_data: PathBuf,
    pg_port: u16,
    /// Run PostgreSQL's tools as `postgres` (they refuse to run as root).
    as_postgres: bool,
    nats_port: u16,
    nats: Option<Child>,
}

/// PostgreSQL's server binaries: `PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`.
fn pg_bin() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| "no PostgreSQL server binaries (set PG_BIN)".into())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn run_tool(mut command: Command, what: &str) -> Result<(), Error> {
    let output = command.output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .into())
    }
}

impl Sandbox {
    /// Makes a fresh cluster and a fresh NATS store under `dir`, and starts both.
    pub async fn start(dir: &Path) -> Result<Self, Error> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir)?;
        // PostgreSQL runs as `postgres` when the harness runs as root: it must reach the folder.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
        let mut sandbox = Sandbox {
            dir: dir.to_path_buf(),
            pg_bin: pg_bin()?,
            pg_data: dir.join("pg"),
            pg_port: free_port()?,
            as_postgres: is_root(),
            nats_port: free_port()?,
            nats: None,
        };
        let mut initdb = sandbox.pg_command("initdb");
        initdb
            .args(["--auth=trust", "--username=postgres", "--no-sync", "-D"])
            .arg(&sandbox.pg_data);
        run_tool(initdb, "initdb")?;
        sandbox.start_postgres()?;
        sandbox.start_nats()?;
        Ok(sandbox)
    }

    fn pg_command(&self, tool: &str) -> Command {
        let program = self.pg_bin.join(tool);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        command.stdin(Stdio::null());
        command
    }

    /// A URL for the cluster's superuser.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.pg_port)
    }

    /// The NATS server's URL.
    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nats_port)
    }

    fn start_postgres(&self) -> Result<(), Error> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} \
             -c max_connections=200",
            self.pg_port,
            self.dir.display()
        );
        let mut start = self.pg_command("pg_ctl");
        start
            .args(["start", "-w", "-t", "60", "-o", &options, "-l"])
            .arg(self.dir.join("postgres.log"))
            .arg("-D")
            .arg(&self.pg_data);
        run_tool(start, "pg_ctl start")
    }

    fn stop_postgres(&self, mode: &str) -> Result<(), Error> {
        let mut stop = self.pg_command("pg_ctl");
        stop.args(["stop", "-w", "-m", mode, "-D"])
            .arg(&self.pg_data);
        run_tool(stop, "pg_ctl stop")
    }

    /// Stops PostgreSQL as a crash would (no shutdown checkpoint) and starts it again.
    pub fn restart_postgres(&self, down_for: Duration) -> Result<(), Error> {
        self.stop_postgres("immediate")?;
        std::thread::sleep(down_for);
        self.start_postgres()
    }

    fn start_nats(&mut self) -> Result<(), Error> {
        let nats = std::env::var_os("NATS_SERVER").unwrap_or_else(|| "nats-server".into());
        let child = Command::new(nats)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.nats_port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.join("nats"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("nats-server does not start ({e}); set NATS_SERVER"))?;
        self.nats = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.nats_port)).is_err() {
            if Instant::now() > deadline {
                return Err("nats-server did not listen".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops NATS gracefully (SIGTERM: it flushes its store) and waits for it to exit.
    pub fn stop_nats(&mut self) -> Result<(), Error> {
        if let Some(mut child) = self.nats.take() {
            run_tool(
                {
                    let mut c = Command::new("kill");
                    c.args(["-TERM", &child.id().to_string()]);
                    c
                },
                "kill -TERM nats-server",
            )?;
            child.wait()?;
        }
        Ok(())
    }

    /// Stops NATS gracefully and starts it again on the same store.
    pub fn restart_nats(&mut self, down_for: Duration) -> Result<(), Error> {
        self.stop_nats()?;
        std::thread::sleep(down_for);
        self.start_nats()
    }

    /// Stops both servers and removes their files.
    pub fn stop(mut self) {
        let _ = self.stop_nats();
        let _ = self.stop_postgres("fast");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// kill -9 command-api.
    KillCommandApi,
    /// kill -9 the projector.
    KillProjector,
    /// Stop and start NATS.
    RestartNats,
    /// Crash-stop and start PostgreSQL.
    RestartPostgres,
    /// kill -9 command-api while it holds committed, unpublished events.
    KillBetweenCommitAndPublish,
    /// A stored event no reader can decode (nested past JSON readers' depth), written into
    /// the store under load: it is quarantined and every other event is still published.
    PoisonEvent,
    /// A stored event larger than the bus takes (as a long transcript once made one),
    /// written into the store under load: quarantined the same way.
    OversizedEvent,
}

impl Fault {
    /// The cycle the harness goes through.
    pub const CYCLE: [Fault; 7] = [
        Fault::KillCommandApi,
        Fault::KillProjector,
        Fault::RestartNats,
        Fault::RestartPostgres,
        Fault::KillBetweenCommitAndPublish,
        Fault::PoisonEvent,
        Fault::OversizedEvent,
    ];
}

/// How a chaos run goes.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Where the service binaries are.
    pub bin_dir: PathBuf,
    /// Scratch folder (the sandbox's servers and the services' logs).
    pub work_dir: PathBuf,
    /// Faults to inject, going round `Fault::CYCLE`.
    pub faults: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Pause of each client between its operations.
    pub think: Duration,
    /// Steady load between two faults.
    pub between: Duration,
    /// Bound on waiting for the system to settle after the last fault.
    pub settle_within: Duration,
}

/// What the audit found.
#[derive(Debug, Default, Serialize)]
pub struct ChaosReport {
    /// Faults injected, by kind.
    pub faults: HashMap<String, usize>,
    /// Operations a client got a 2xx for.
    pub acknowledged: u64,
    /// Operations given up on without a 2xx (may or may not be stored, never twice).
    pub abandoned: u64,
    /// Retries clients made after no answer, a 5xx or a 409.
    pub retries: u64,
    /// Events in the store.
    pub events_stored: u64,
    /// Messages in the stream.
    pub events_published: u64,
    /// Events the read model reflects (sum of the tenants' versions).
    pub events_projected: u64,
    /// Committed events that were still unpublished when command-api was killed.
    pub unpublished_at_kill: u64,
    /// Unpublishable events (unreadable, or too large for the bus) written into the store.
    pub poisoned: u64,
    /// Events the relay quarantined (should be the poisoned ones, and only them).
    pub events_quarantined: u64,
    /// Operations stored more than once, plus stream messages beyond the store's count.
    pub duplicates: u64,
    /// Acknowledged operations missing from the store (or stored at another version than the
    /// client was told), events missing from the stream, and events not in the read model.
    pub losses: u64,
    /// 5xx answers or unanswered requests outside the outage windows.
    pub errors_outside_outages: u64,
    /// Services that exited by themselves (they should recover instead).
    pub services_exited: u64,
    /// Seconds from the last fault until store, stream and read model agreed.
    pub settled_after_s: f64,
}

impl ChaosReport {
    /// Whether the run proves what it must: nothing lost, nothing twice, no stray errors.
    pub fn passed(&self) -> bool {
        self.losses == 0
            && self.duplicates == 0
            && self.errors_outside_outages == 0
            && self.services_exited == 0
            && self.events_quarantined == self.poisoned
            && self.acknowledged > 0
    }

    /// The table.
    pub fn table(&self) -> String {
        let mut faults: Vec<_> = self.faults.iter().collect();
        faults.sort();
        let total: usize = self.faults.values().sum();
        let mut out = format!("{:<44} {:>10}\n", "faults injected", total);
        for (kind, n) in faults {
            out.push_str(&format!("  {kind:<42} {n:>10}\n"));
        }
        for (what, n) in [
            ("commands acknowledged (2xx)", self.acknowledged),
            ("commands abandoned without a 2xx", self.abandoned),
            ("client retries (same Idempotency-Key)", self.retries),
            ("events stored", self.events_stored),
            ("events published (stream messages)", self.events_published),
            ("events projected (read model)", self.events_projected),
            (
                "unpublished events at command-api kills",
                self.unpublished_at_kill,
            ),
            ("unpublishable events written into the store", self.poisoned),
            ("events quarantined by the relay", self.events_quarantined),
            ("duplicates", self.duplicates),
            ("losses", self.losses),
            ("errors outside outage windows", self.errors_outside_outages),
            ("services that exited by themselves", self.services_exited),
        ] {
            out.push_str(&format!("{what:<44} {n:>10}\n"));
        }
        out.push_str(&format!(
            "{:<44} {:>10.1}\n",
            "settled after last fault, s", self.settled_after_s
        ));
        out
    }
}

/// What the clients saw.
#[derive(Default)]
struct Ledger {
    /// (operation, tenant, version told) of every acknowledged operation.
    acked: Vec<(String, String, u64)>,
    abandoned: u64,
    retries: u64,
    /// When each attempt that got a 5xx or no answer began and ended.
    errors: Vec<(Instant, Instant)>,
}

/// Runs the harness.
pub async fn run(config: ChaosConfig) -> Result<ChaosReport, Error> {
    let dir = config.work_dir.join(format!(
        "chaos-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    let mut sandbox = Sandbox::start(&dir.join("servers")).await?;
    let result = run_in(&config, &mut sandbox, &dir).await;
    sandbox.stop();
    result
}

async fn run_in(
    config: &ChaosConfig,
    sandbox: &mut Sandbox,
    dir: &Path,
) -> Result<ChaosReport, Error> {
    let mut stack = Stack::start(StackConfig {
        bin_dir: config.bin_dir.clone(),
        admin_url: sandbox.admin_url(),
        nats_url: sandbox.nats_url(),
        work_dir: dir.to_path_buf(),
        env: vec![
            ("READ_WAIT_MS".into(), "100".into()),
            ("PROJECTOR_BATCH".into(), "64".into()),
        ],
    })
    .await?;
    let api = Api::new(
        &stack.command_url,
        &stack.query_url,
        stack.super_admin(),
        config.clients,
    );
    let mut tenants = Vec::new();
    for i in 0..config.clients * 2 {
        tenants.push(api.create_tenant(&format!("chaos-{i}")).await?);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut clients = Vec::new();
    for client in 0..config.clients {
        let own = [
            tenants[client].clone(),
            tenants[client + config.clients].clone(),
        ];
        let (api, stop, ledger, think) = (api.clone(), stop.clone(), ledger.clone(), config.think);
        clients.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let tenant = &own[n % 2];
                n += 1;
                operate(&api, tenant, &ledger).await;
                tokio::time::sleep(think).await;
            }
        }));
    }

    let mut report = ChaosReport::default();
    let mut outages: Vec<(Instant, Instant)> = Vec::new();
    let mut audit_db = Audit::new(&stack);
    for i in 0..config.faults {
        tokio::time::sleep(config.between).await;
        let fault = Fault::CYCLE[i % Fault::CYCLE.len()];
        let began = Instant::now();
        inject(fault, &mut stack, sandbox, &mut audit_db, &mut report).await?;
        outages.push((began, Instant::now()));
        *report
            .faults
            .entry(
                serde_json::to_value(fault)?
                    .as_str()
                    .unwrap_or("?")
                    .to_owned(),
            )
            .or_default() += 1;
    }
    tokio::time::sleep(config.between).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let last_fault = outages.last().map_or_else(Instant::now, |o| o.1);

    for service in Service::ALL {
        if !stack.running(service) {
            report.services_exited += 1;
            stack.spawn(service)?;
        }
    }
    let settled = audit_db.settle(&stack, config.settle_within).await?;
    report.settled_after_s = last_fault.elapsed().as_secs_f64();
    if !settled {
        report.settled_after_s = f64::NAN;
    }

    let ledger = std::mem::take(&mut *ledger.lock().map_err(|_| "ledger poisoned")?);
    report.acknowledged = ledger.acked.len() as u64;
    report.abandoned = ledger.abandoned;
    report.retries = ledger.retries;
    // An attempt that overlaps a fault, from its start until a few seconds after the service
    // answered ready again (connections the fault broke surface on their next use), may fail.
    let grace = Duration::from_secs(5);
    report.errors_outside_outages = ledger
        .errors
        .iter()
        .filter(|(began, ended)| {
            !outages
                .iter()
                .any(|(a, b)| *ended >= *a && *began <= *b + grace)
        })
        .count() as u64;
    audit_db.audit(&stack, &ledger.acked, &mut report).await?;
    stack.teardown().await?;
    Ok(report)
}

/// One operation: retried with its key until a 2xx, or abandoned after a minute.
async fn operate(api: &Api, tenant: &str, ledger: &Mutex<Ledger>) {
    let op = uuid::Uuid::new_v4().to_string();
    let body = json!({ "bench_op": op });
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let began = Instant::now();
        let outcome = api.update_preferences_keyed(tenant, &body, Some(&op)).await;
        let expired = Instant::now() > give_up;
        let done = match ledger.lock() {
            Ok(mut l) => l.record(&op, tenant, outcome, began, expired),
            Err(_) => true,
        };
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Ledger {
    /// Records one attempt's outcome; true when the operation is over.
    fn record(
        &mut self,
        op: &str,
        tenant: &str,
        outcome: Outcome,
        began: Instant,
        expired: bool,
    ) -> bool {
        let attempt = (began, Instant::now());
        match outcome {
            Outcome::Accepted(version) => {
                self.acked.push((op.to_owned(), tenant.to_owned(), version));
                return true;
            }
            Outcome::Refused(s) if s.is_server_error() => self.errors.push(attempt),
            Outcome::NoAnswer => self.errors.push(attempt),
            // 409: the key is still claimed by an attempt that died, or a version conflict.
            Outcome::Refused(s) if s.as_u16() == 409 => {}
            Outcome::Refused(_) => {
                // A 4xx other than 409 is a bug in the harness or the API: the operation ends.
                self.abandoned += 1;
                self.errors.push(attempt);
                return true;
            }
        }
        if expired {
            self.abandoned += 1;
            return true;
        }
        self.retries += 1;
        false
    }
}

async fn inject(
    fault: Fault,
    stack: &mut Stack,
    sandbox: &mut Sandbox,
    audit: &mut Audit,
    report: &mut ChaosReport,
) -> Result<(), Error> {
    let ready = Duration::from_secs(60);
    match fault {
        Fault::KillCommandApi => {
            stack.kill(Service::CommandApi);
            stack.spawn(Service::CommandApi)?;
            stack.wait_ready(Service::CommandApi, ready).await?;
        }
        Fault::KillProjector => {
            stack.kill(Service::Projector);
            stack.spawn(Service::Projector)?;
            stack.wait_ready(Service::Projector, ready).await?;
        }
        Fault::RestartNats => {
            tokio::task::block_in_place(|| sandbox.restart_nats(Duration::from_millis(500)))?;
            stack.wait_ready(Service::CommandApi, ready).await?;
        }
        Fault::RestartPostgres => {
            tokio::task::block_in_place(|| sandbox.restart_postgres(Duration::from_millis(500)))?;
            stack.wait_ready(Service::CommandApi, ready).await?;
            stack.wait_ready(Service::QueryApi, ready).await?;
        }
        Fault::KillBetweenCommitAndPublish => {
            tokio::task::block_in_place(|| sandbox.stop_nats())?;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            // The fault is a kill *holding* unpublished events: wait (bounded) until some
            // commit lands, since the clients may all be retrying an earlier fault's
            // commands at this moment (a claim left by a PostgreSQL restart is retried for
            // up to a minute).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
            let mut unpublished = audit.unpublished(stack).await?;
            while unpublished == 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
                unpublished = audit.unpublished(stack).await?;
            }
            report.unpublished_at_kill += unpublished;
            stack.kill(Service::CommandApi);
            tokio::task::block_in_place(|| sandbox.start_nats())?;
            stack.spawn(Service::CommandApi)?;
            stack.wait_ready(Service::CommandApi, ready).await?;
        }
        Fault::PoisonEvent => {
            let deep = format!("{}1{}", "[".repeat(130), "]".repeat(130));
            audit.unpublishable(&deep).await?;
            report.poisoned += 1;
        }
        Fault::OversizedEvent => {
            let huge = serde_json::to_string(&"x".repeat(1_100_000))?;
            audit.unpublishable(&huge).await?;
            report.poisoned += 1;
        }
    }
    Ok(())
}

/// The condition on `events` that leaves out what the relay quarantined.
const PUBLISHABLE: &str = "global_position NOT IN (SELECT global_position FROM quarantined_events)";

/// Reads the stack's store, stream and read model.
struct Audit {
    database_url: String,
}

impl Audit {
    fn new(stack: &Stack) -> Self {
        Audit {
            database_url: stack.database_url.clone(),
        }
    }

    /// Committed events the relay has not yet published.
    async fn unpublished(&self, stack: &Stack) -> Result<u64, Error> {
        let mut db = PgConnection::connect(&self.database_url).await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events e
              WHERE NOT EXISTS (SELECT 1 FROM relay_checkpoints c WHERE c.stream = $1
                                   AND (e.transaction_id, e.global_position)
                                       <= (c.transaction_id, c.global_position))",
        )
        .bind(&stack.stream)
        .fetch_one(&mut db)
        .await?;
        Ok(n as u64)
    }

    /// Writes an event of a tenant of its own whose preferences are `preferences` (JSON
    /// text): one no reader can decode, or one larger than the bus takes — the shapes the
    /// limits at the append now refuse — as one stored before those limits would stand.
    async fn unpublishable(&self, preferences: &str) -> Result<(), Error> {
        let mut db = PgConnection::connect(&self.database_url).await?;
        let tenant = uuid::Uuid::new_v4().to_string();
        let payload = format!("{{\"PreferencesUpdated\": {{\"preferences\": {preferences}}}}}");
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             VALUES ('tenant', $1, 1, 'PreferencesUpdated', '1.0', $2::jsonb,
                     jsonb_build_object('tenant_id', $1::text))",
        )
        .bind(&tenant)
        .bind(payload)
        .execute(&mut db)
        .await?;
        Ok(())
    }

    /// `(stored, published, tenant events, projected)`, events the relay quarantined left
    /// out of what is stored.
    async fn counts(&self, stack: &Stack) -> Result<(u64, u64, u64, u64), Error> {
        let mut db = PgConnection::connect(&self.database_url).await?;
        let stored: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM events WHERE {PUBLISHABLE}"))
                .fetch_one(&mut db)
                .await?;
        let tenant_events: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM events WHERE aggregate_type = 'tenant' AND {PUBLISHABLE}"
        ))
        .fetch_one(&mut db)
        .await?;
        let projected: i64 =
            sqlx::query_scalar("SELECT coalesce(sum(version), 0)::bigint FROM tenants")
                .fetch_one(&mut db)
                .await?;
        let client = async_nats::connect(&stack.nats_url).await?;
        let mut stream = async_nats::jetstream::new(client)
            .get_stream(&stack.stream)
            .await?;
        let published = stream.info().await?.state.messages;
        Ok((
            stored as u64,
            published,
            tenant_events as u64,
            projected as u64,
        ))
    }

    /// Waits until the stream and the read model hold everything the store holds.
    async fn settle(&self, stack: &Stack, within: Duration) -> Result<bool, Error> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok((stored, published, tenant_events, projected)) = self.counts(stack).await {
                if published >= stored && projected >= tenant_events {
                    return Ok(true);
                }
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn audit(
        &self,
        stack: &Stack,
        acked: &[(String, String, u64)],
        report: &mut ChaosReport,
    ) -> Result<(), Error> {
        let (stored, published, tenant_events, projected) = self.counts(stack).await?;
        report.events_stored = stored;
        report.events_published = published;
        report.events_projected = projected;
        report.events_quarantined = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM quarantined_events WHERE stream = $1",
        )
        .bind(&stack.stream)
        .fetch_one(&mut PgConnection::connect(&self.database_url).await?)
        .await? as u64;
        report.duplicates += published.saturating_sub(stored);
        report.losses += stored.saturating_sub(published);
        report.losses += tenant_events.abs_diff(projected);

        let mut db = PgConnection::connect(&self.database_url).await?;
        let rows = sqlx::query(
            "SELECT payload->'PreferencesUpdated'->'preferences'->>'bench_op' AS op,
                    aggregate_id, sequence
               FROM events
              WHERE aggregate_type = 'tenant' AND event_type = 'PreferencesUpdated'",
        )
        .fetch_all(&mut db)
        .await?;
        let mut stored_ops: HashMap<String, Vec<(String, u64)>> = HashMap::new();
        for row in rows {
            let op: Option<String> = row.try_get("op")?;
            let at = (
                row.try_get("aggregate_id")?,
                row.try_get::<i64, _>("sequence")? as u64,
            );
            if let Some(op) = op {
                stored_ops.entry(op).or_default().push(at);
            }
        }
        report.duplicates += stored_ops
            .values()
            .map(|at| at.len() as u64 - 1)
            .sum::<u64>();
        for (op, tenant, version) in acked {
            let told = (tenant.clone(), *version);
            if !stored_ops.get(op).is_some_and(|at| at.contains(&told)) {
                report.losses += 1;
            }
        }
        // The read model's every row at the store's version.
        let behind: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM (SELECT aggregate_id, max(sequence) AS v FROM events
                                    WHERE aggregate_type = 'tenant' AND {PUBLISHABLE}
                                    GROUP BY aggregate_id) s
               LEFT JOIN tenants t ON t.id::text = s.aggregate_id
              WHERE t.version IS DISTINCT FROM s.v"
        ))
        .fetch_one(&mut db)
        .await?;
        report.losses += behind as u64;
        Ok(())
    }
}
