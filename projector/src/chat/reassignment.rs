//! The reassignment worker: a process manager that takes open threads from agents who can no
//! longer take conversations and from departments that were removed, so no customer waits
//! for nobody. It asks command-api to release them (`POST /v1/chat/threads/{id}/release`),
//! and the thread aggregate appends `Assigned` with a `reason` only when the thread is open
//! and still theirs: a repeat (after a crash or a restart) appends nothing.
//!
//! What makes it look:
//! - an agent deactivated or given another role: their open threads;
//! - a department removed: its open threads;
//! - a thread assigned, or reopened: its own agent and department, checked now — which
//!   catches an assignment that raced a deactivation, and a closed thread reopened after its
//!   agent left.
//!
//! A sweep over the chat read model, when the projector starts and every minute,
//! releases what no event told the worker about: threads assigned before its consumer
//! first existed (it starts with new events), or departures older than the stream keeps.
//!
//! Whether an agent is available and a department exists is asked of the command side's
//! own state at the moment of the check ([`events::chat::lookups`]), the same question the
//! thread asks when assigned. Which threads an agent or department holds comes from the
//! worker's own table (`reassignment_threads`), kept from the threads' events in the same
//! stream order as the deactivations, so a thread assigned just before is never missed.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use events::chat::lookups::{AVAILABLE_AGENT, DEPARTMENT_EXISTS};
use events::chat::{ThreadEvent, THREAD};
use events::identity::{AdminUserEvent, ADMIN_USER};
use events::tenants::{TenantEvent, AGGREGATE_TYPE as TENANT};
use events::Envelope;
use serde_json::json;
use sqlx::{PgConnection, PgPool};

use crate::command_client::CommandClient;
use crate::projection::{Effect, Projection, ProjectionError, Target};

/// Releases sent to command-api at once.
const PARALLEL: usize = 16;

/// How often the read model is swept for threads the events did not release.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The process manager.
pub struct Reassignment {
    /// Its own table, and the command side's state it checks.
    pool: PgPool,
    /// command-api, as a platform service.
    client: CommandClient,
}

impl Reassignment {
    /// A worker releasing threads through `client`.
    pub fn new(pool: PgPool, client: CommandClient) -> Self {
        Self { pool, client }
    }
}

/// What the worker knows of one thread.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    tenant_id: String,
    agent_id: Option<String>,
    department: Option<String>,
    open: bool,
}

/// A row of `reassignment_threads`.
#[derive(sqlx::FromRow)]
struct Row {
    thread_id: String,
    tenant_id: String,
    agent_id: Option<String>,
    department: Option<String>,
    open: bool,
}

/// Whom a thread may have to be taken from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Suspect {
    Agent(String),
    Department(String),
}

/// What one event tells the worker.
enum Seen {
    /// A thread's assignment or state.
    Thread(Box<ThreadEvent>),
    /// An admin user who may no longer take conversations.
    AgentChanged,
    /// A department removed.
    DepartmentRemoved(String),
    Nothing,
}

fn seen(envelope: &Envelope) -> Result<Seen, ProjectionError> {
    let undecodable = |err: serde_json::Error| ProjectionError::Undecodable {
        event_id: envelope.event_id(),
        reason: err.to_string(),
    };
    let payload = envelope.payload.clone();
    Ok(match envelope.aggregate_type.as_str() {
        THREAD => Seen::Thread(Box::new(
            serde_json::from_value(payload).map_err(undecodable)?,
        )),
        ADMIN_USER => match serde_json::from_value(payload).map_err(undecodable)? {
            AdminUserEvent::Deactivated {} | AdminUserEvent::RoleChanged { .. } => {
                Seen::AgentChanged
            }
            _ => Seen::Nothing,
        },
        TENANT => match serde_json::from_value(payload).map_err(undecodable)? {
            TenantEvent::DepartmentRemoved { name } => Seen::DepartmentRemoved(name),
            _ => Seen::Nothing,
        },
        _ => Seen::Nothing,
    })
}

/// Folds a thread event into what is known of the thread; answers whether the thread's
/// current agent and department must be checked.
fn fold(held: &mut Held, event: &ThreadEvent) -> bool {
    match event {
        ThreadEvent::Assigned {
            agent_id,
            department,
            ..
        } => {
            held.agent_id = agent_id.clone();
            held.department = department.clone();
            true
        }
        ThreadEvent::Closed { .. } => {
            held.open = false;
            false
        }
        ThreadEvent::Reopened { .. } => {
            held.open = true;
            true
        }
        _ => false,
    }
}

impl Reassignment {
    /// What the worker's table holds for the threads of `events` and for the agents and
    /// departments they name.
    async fn known(
        &self,
        events: &[(&Envelope, Seen)],
    ) -> Result<BTreeMap<String, Held>, ProjectionError> {
        let mut threads = Vec::new();
        let mut agents = Vec::new();
        let mut departments: Vec<(String, String)> = Vec::new();
        for (envelope, seen) in events {
            match seen {
                Seen::Thread(_) => threads.push(envelope.aggregate_id.clone()),
                Seen::AgentChanged => agents.push(envelope.aggregate_id.clone()),
                Seen::DepartmentRemoved(name) => {
                    departments.push((envelope.aggregate_id.clone(), name.clone()))
                }
                Seen::Nothing => {}
            }
        }
        let (tenants, names): (Vec<String>, Vec<String>) = departments.into_iter().unzip();
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT thread_id, tenant_id, agent_id, department, open FROM reassignment_threads
              WHERE thread_id = ANY($1)
                 OR (open AND agent_id = ANY($2))
                 OR (open AND (tenant_id, department) IN (SELECT * FROM unnest($3::text[], $4::text[])))",
        )
        .bind(&threads)
        .bind(&agents)
        .bind(&tenants)
        .bind(&names)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                (
                    row.thread_id,
                    Held {
                        tenant_id: row.tenant_id,
                        agent_id: row.agent_id,
                        department: row.department,
                        open: row.open,
                    },
                )
            })
            .collect())
    }

    /// True when `suspect` is gone from `tenant` now.
    async fn gone(&self, tenant: &str, suspect: &Suspect) -> Result<bool, ProjectionError> {
        let (sql, name) = match suspect {
            Suspect::Agent(agent) => (AVAILABLE_AGENT, agent),
            Suspect::Department(department) => (DEPARTMENT_EXISTS, department),
        };
        let present: Option<bool> = sqlx::query_scalar(sql)
            .bind(tenant)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(!present.unwrap_or(false))
    }

    /// Asks command-api to take `thread` from `suspect`.
    async fn release(&self, thread: &str, suspect: &Suspect) -> Result<(), ProjectionError> {
        let body = match suspect {
            Suspect::Agent(agent) => json!({ "agent_id": agent }),
            Suspect::Department(department) => json!({ "department": department }),
        };
        let path = format!("/v1/chat/threads/{thread}/release");
        match self.client.post_json(&path, &body).await {
            Ok(r) if r.status().is_success() => Ok(()),
            // A busy thread (409 `contention`, 429) is tried again; any other refusal is
            // final (a thread that is not there).
            Ok(r) if r.status().is_client_error() => {
                let status = r.status();
                if crate::whatsapp::sender::busy(r).await {
                    return Err(ProjectionError::Unavailable(format!(
                        "command-api answered {status}"
                    )));
                }
                tracing::warn!(thread, ?suspect, %status, "assignment not released");
                Ok(())
            }
            Ok(r) => Err(ProjectionError::Unavailable(format!(
                "command-api answered {}",
                r.status()
            ))),
            Err(e) => Err(ProjectionError::Unavailable(e.to_string())),
        }
    }
}

#[async_trait]
impl Projection for Reassignment {
    fn name(&self) -> &'static str {
        "reassignment"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[THREAD, ADMIN_USER, TENANT]
    }

    fn tables(&self) -> &'static [&'static str] {
        &[]
    }

    fn effect(&self) -> Option<&dyn Effect> {
        Some(self)
    }

    /// The effect happened before; besides the checkpoints, what a thread event tells of its
    /// agent, department and state is recorded (`reassignment_threads`, the worker's own).
    async fn apply(
        &self,
        conn: &mut PgConnection,
        _target: &Target,
        event: &Envelope,
    ) -> Result<(), ProjectionError> {
        let Seen::Thread(thread_event) = seen(event)? else {
            return Ok(());
        };
        let tenant = event.tenant_id();
        let thread = event.aggregate_id.as_str();
        match *thread_event {
            ThreadEvent::Assigned {
                agent_id,
                department,
                ..
            } => {
                sqlx::query(
                    "INSERT INTO reassignment_threads (thread_id, tenant_id, agent_id, department, open)
                     VALUES ($1, $2, $3, $4, true)
                     ON CONFLICT (thread_id) DO UPDATE
                        SET agent_id = excluded.agent_id, department = excluded.department",
                )
                .bind(thread)
                .bind(tenant)
                .bind(agent_id)
                .bind(department)
                .execute(conn)
                .await?;
            }
            // Recorded even before the thread has an assignment, so one assigned after it
            // was closed is known as closed.
            ThreadEvent::Closed { .. } | ThreadEvent::Reopened { .. } => {
                let open = matches!(*thread_event, ThreadEvent::Reopened { .. });
                sqlx::query(
                    "INSERT INTO reassignment_threads (thread_id, tenant_id, open)
                     VALUES ($1, $2, $3)
                     ON CONFLICT (thread_id) DO UPDATE SET open = excluded.open",
                )
                .bind(thread)
                .bind(tenant)
                .bind(open)
                .execute(conn)
                .await?;
            }
            _ => {}
        }
        Ok(())
    }
}

#[async_trait]
impl Effect for Reassignment {
    async fn perform(&self, events: &[Envelope]) -> Result<(), ProjectionError> {
        let mut decoded = Vec::with_capacity(events.len());
        for envelope in events {
            decoded.push((envelope, seen(envelope)?));
        }
        if decoded.iter().all(|(_, s)| matches!(s, Seen::Nothing)) {
            return Ok(());
        }
        // What the table knows, brought up to each event in stream order: a batch may hold a
        // thread's assignment and its agent's deactivation.
        let mut known = self.known(&decoded).await?;
        let mut suspects: BTreeSet<(String, Suspect)> = BTreeSet::new();
        for (envelope, seen) in &decoded {
            match seen {
                Seen::Thread(event) => {
                    let held = known
                        .entry(envelope.aggregate_id.clone())
                        .or_insert_with(|| Held {
                            tenant_id: envelope.tenant_id().to_owned(),
                            agent_id: None,
                            department: None,
                            open: true,
                        });
                    if fold(held, event) && held.open {
                        let thread = envelope.aggregate_id.clone();
                        if let Some(agent) = &held.agent_id {
                            suspects.insert((thread.clone(), Suspect::Agent(agent.clone())));
                        }
                        if let Some(department) = &held.department {
                            suspects.insert((thread, Suspect::Department(department.clone())));
                        }
                    }
                }
                Seen::AgentChanged => {
                    for (thread, held) in &known {
                        if held.open && held.agent_id.as_ref() == Some(&envelope.aggregate_id) {
                            let agent = envelope.aggregate_id.clone();
                            suspects.insert((thread.clone(), Suspect::Agent(agent)));
                        }
                    }
                }
                Seen::DepartmentRemoved(name) => {
                    for (thread, held) in &known {
                        if held.open
                            && held.tenant_id == envelope.aggregate_id
                            && held.department.as_ref() == Some(name)
                        {
                            suspects.insert((thread.clone(), Suspect::Department(name.clone())));
                        }
                    }
                }
                Seen::Nothing => {}
            }
        }
        let mut gone = Vec::new();
        for (thread, suspect) in &suspects {
            let Some(held) = known.get(thread) else {
                continue;
            };
            if self.gone(&held.tenant_id, suspect).await? {
                gone.push((thread.clone(), suspect.clone()));
            }
        }
        self.release_all(&gone).await
    }
}

impl Reassignment {
    /// Releases `threads`, [`PARALLEL`] at a time: threads are independent, and an agent with
    /// thousands of them must not hold the worker (and other tenants) for minutes.
    async fn release_all(&self, threads: &[(String, Suspect)]) -> Result<(), ProjectionError> {
        for chunk in threads.chunks(PARALLEL) {
            let calls = chunk
                .iter()
                .map(|(thread, suspect)| self.release(thread, suspect));
            for outcome in futures::future::join_all(calls).await {
                outcome?;
            }
        }
        Ok(())
    }

    /// Releases every open thread, as the chat read model lists them, whose agent or
    /// department is gone: what the events alone cannot catch — assignments and departures
    /// from before the worker's consumer existed (it starts with new events) or older than
    /// the stream keeps. Run when the projector starts and every [`SWEEP_EVERY`]; answers how
    /// many threads it released.
    pub async fn sweep(&self) -> Result<usize, ProjectionError> {
        let mut gone = Vec::new();
        let agents: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT tenant_id, agent_id FROM chat_threads
              WHERE status = 'open' AND agent_id IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        for (tenant, agent) in agents {
            let suspect = Suspect::Agent(agent.clone());
            if !self.gone(&tenant, &suspect).await? {
                continue;
            }
            let threads: Vec<String> = sqlx::query_scalar(
                "SELECT id::text FROM chat_threads
                  WHERE tenant_id = $1 AND agent_id = $2 AND status = 'open'",
            )
            .bind(&tenant)
            .bind(&agent)
            .fetch_all(&self.pool)
            .await?;
            gone.extend(threads.into_iter().map(|t| (t, suspect.clone())));
        }
        let departments: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT tenant_id, department FROM chat_threads
              WHERE status = 'open' AND department IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        for (tenant, department) in departments {
            let suspect = Suspect::Department(department.clone());
            if !self.gone(&tenant, &suspect).await? {
                continue;
            }
            let threads: Vec<String> = sqlx::query_scalar(
                "SELECT id::text FROM chat_threads
                  WHERE tenant_id = $1 AND department = $2 AND status = 'open'",
            )
            .bind(&tenant)
            .bind(&department)
            .fetch_all(&self.pool)
            .await?;
            gone.extend(threads.into_iter().map(|t| (t, suspect.clone())));
        }
        self.release_all(&gone).await?;
        Ok(gone.len())
    }

    /// Sweeps now and every [`SWEEP_EVERY`], for as long as the projector runs.
    pub async fn run_sweeps(self: std::sync::Arc<Self>) {
        loop {
            match self.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(released = n, "reassignment sweep released threads"),
                Err(e) => tracing::warn!(error = %e, "reassignment sweep failed; will retry"),
            }
            tokio::time::sleep(SWEEP_EVERY).await;
        }
    }
}
