//! Process managers for work that falls due: rows of a read model with a `next_attempt_at`
//! at or before now are sent to command-api, which does the work and records its outcome
//! as events (docs/architecture.md, invariant 5). The aggregates keep the back-off (they refuse an
//! attempt before its time) and make a repeated request change nothing, so several managers,
//! or one after a restart, are safe. Nothing is lost across restarts: a row stays due until
//! its outcome is projected.
//!
//! - `DueProcessor::webhooks`: received webhooks (`webhooks` read model) →
//!   `POST /v1/webhooks/{id}/process`: the domain command a webhook stands for, with the
//!   webhook's `Received` event as causation; retried 2 s … 1 h apart, dead-lettered after the
//!   12th failure and replayed by an admin.
//! - `DueProcessor::transcriptions`: uploaded audio (`audio_files`) →
//!   `POST /v1/audio/{id}/transcribe`: the file sent to AssemblyAI; retried 2 s … 5 min apart,
//!   given up visibly after the 20th failure (about an hour); a requested transcript no
//!   webhook finished is checked with the service from 10 minutes on.
//!
//! The WhatsApp sender (`crate::whatsapp::sender`) takes its due rows the same way ([`run_forever`],
//! [`earliest_due`]), but does the provider call itself between a claim and a report.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use events::access::TokenKeys;
use events::clock::Clock;
use futures::StreamExt;
use sqlx::PgPool;
use uuid::Uuid;

use crate::command_client::{CommandClient, Quiet};

/// Rows of tenants that are not active wait: nothing is sent, transcribed or processed for a
/// tenant while it is suspended, rejected or awaiting approval, and everything that waited
/// goes out once it is (re)activated (the rows stay due). Every due table has `tenant_id`; webhooks not yet tied to a tenant
/// (`platform`) are not held here.
pub const TENANT_NOT_SUSPENDED: &str = "tenant_id NOT IN (SELECT tenant_id FROM tenants
                   WHERE status IN ('suspended', 'pending', 'rejected'))";

/// The longest sleep between steps.
const MAX_IDLE: Duration = Duration::from_millis(500);
/// How long a row sent is not sent again at the same version (while the read model catches
/// up, or while command-api is unreachable).
const QUIET: Duration = Duration::from_secs(10);
/// Most rows per step.
const BATCH: i64 = 100;

/// Repeats `step` for ever, sleeping until `next_due` says work is due (at most
/// [`MAX_IDLE`]): the loop of every process manager over due rows (`what` names it in logs).
pub async fn run_forever<R, S, N>(
    what: &str,
    clock: &dyn Clock,
    step: impl Fn() -> S,
    next_due: impl Fn() -> N,
) where
    R: std::fmt::Debug + Default + PartialEq,
    S: std::future::Future<Output = Result<R, sqlx::Error>>,
    N: std::future::Future<Output = Result<Option<DateTime<Utc>>, sqlx::Error>>,
{
    loop {
        match step().await {
            Ok(report) if report != R::default() => tracing::info!(what, ?report, "step"),
            Ok(_) => {}
            Err(e) => tracing::warn!(what, error = %e, "step failed"),
        }
        let pause = match next_due().await {
            Ok(Some(due)) => (due - clock.now())
                .to_std()
                .unwrap_or(Duration::from_millis(50))
                .min(MAX_IDLE),
            _ => MAX_IDLE,
        };
        tokio::time::sleep(pause).await;
    }
}

/// The earliest `next_attempt_at` of `table` (with `id uuid`, `version`) among rows not sent
/// a moment ago (`quiet`, by id and version).
pub async fn earliest_due(
    pool: &PgPool,
    table: &str,
    quiet: &Quiet<(Uuid, i64)>,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let (ids, versions): (Vec<Uuid>, Vec<i64>) = quiet.keys().into_iter().unzip();
    sqlx::query_scalar(&format!(
        "SELECT min(next_attempt_at) FROM {table}
          WHERE next_attempt_at IS NOT NULL AND {TENANT_NOT_SUSPENDED}
            AND (id, version) NOT IN (SELECT * FROM unnest($1::uuid[], $2::bigint[]))"
    ))
    .bind(&ids)
    .bind(&versions)
    .fetch_one(pool)
    .await
}

/// How sending one row went.
enum Outcome {
    Processed,
    Refused,
    Failed,
}

/// What one step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StepReport {
    /// Rows command-api worked on (an outcome or a failed attempt was recorded).
    pub processed: usize,
    /// Refused (an unknown id): not sent again at this version.
    pub refused: usize,
    /// command-api unreachable or failing: sent again after a pause.
    pub failed: usize,
}

/// Sends due rows of one read model to one command of command-api.
pub struct DueProcessor {
    /// The read models.
    pool: PgPool,
    /// command-api, as a platform service.
    client: CommandClient,
    /// What "now" is.
    clock: Arc<dyn Clock>,
    /// The read model (with `id uuid`, `version`, `next_attempt_at`).
    table: &'static str,
    /// The command's path, `{id}` standing for the row's id.
    path: &'static str,
    /// Rows sent recently, by `(id, version)`: a new version (a failure recorded, a replay)
    /// makes a row eligible again.
    quiet: Quiet<(Uuid, i64)>,
    /// Rows sent at once: webhooks one at a time (two messages of one contact, two statuses
    /// of one payment, are processed in the order they came); audio files several.
    concurrency: usize,
}

impl DueProcessor {
    /// Has received webhooks processed, through command-api at `command_api`, with tokens
    /// signed by `keys`, on `clock`'s time.
    pub fn webhooks(
        pool: PgPool,
        command_api: &str,
        keys: TokenKeys,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            pool,
            // Processing a WhatsApp message fetches its file (up to 100 MiB).
            client: CommandClient::new(command_api, keys, "webhooks")
                .with_timeout(Duration::from_secs(600)),
            clock,
            table: "webhooks",
            path: "/v1/webhooks/{id}/process",
            quiet: Quiet::new(QUIET),
            concurrency: 1,
        }
    }

    /// Has uploaded audio transcribed.
    pub fn transcriptions(
        pool: PgPool,
        command_api: &str,
        keys: TokenKeys,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            pool,
            // command-api claims a request and sends the file in the background, answering
            // at once; a check of a transcript asks the service (2 minutes at most).
            client: CommandClient::new(command_api, keys, "transcriber")
                .with_timeout(Duration::from_secs(150)),
            clock,
            table: "audio_files",
            path: "/v1/audio/{id}/transcribe",
            quiet: Quiet::new(QUIET),
            concurrency: 8,
        }
    }

    /// Runs for ever.
    pub async fn run(self) {
        run_forever(
            self.table,
            self.clock.as_ref(),
            || self.step(),
            || self.next_due(),
        )
        .await
    }

    /// The earliest time a row not sent a moment ago is due.
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        earliest_due(&self.pool, self.table, &self.quiet).await
    }

    /// Sends every row due by the clock's now: the unit the loop repeats, and what tests
    /// drive.
    pub async fn step(&self) -> Result<StepReport, sqlx::Error> {
        let (quiet_ids, quiet_versions): (Vec<Uuid>, Vec<i64>) =
            self.quiet.keys().into_iter().unzip();
        let due: Vec<(Uuid, i64)> = sqlx::query_as(&format!(
            "SELECT id, version FROM {}
              WHERE next_attempt_at <= $1 AND {TENANT_NOT_SUSPENDED}
                AND (id, version) NOT IN (SELECT * FROM unnest($3::uuid[], $4::bigint[]))
              ORDER BY next_attempt_at, id LIMIT $2",
            self.table
        ))
        .bind(self.clock.now())
        .bind(BATCH)
        .bind(&quiet_ids)
        .bind(&quiet_versions)
        .fetch_all(&self.pool)
        .await?;
        // Several rows at once where order does not matter: one slow check does not hold
        // up the others. The aggregates keep each row's work to one caller at a time.
        let outcomes: Vec<((Uuid, i64), Outcome)> = futures::stream::iter(due)
            .map(|key| async move {
                let outcome = self
                    .client
                    .post(&self.path.replace("{id}", &key.0.to_string()))
                    .await;
                let outcome = match outcome {
                    Ok(r) if r.status().is_success() => Outcome::Processed,
                    Ok(r) if r.status().is_client_error() => {
                        tracing::warn!(table = self.table, id = %key.0, status = %r.status(), "refused");
                        Outcome::Refused
                    }
                    Ok(r) => {
                        tracing::warn!(table = self.table, id = %key.0, status = %r.status(), "failed; will retry");
                        Outcome::Failed
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "command-api unreachable; will retry");
                        Outcome::Failed
                    }
                };
                (key, outcome)
            })
            .buffered(self.concurrency)
            .collect()
            .await;
        let mut report = StepReport::default();
        for (key, outcome) in outcomes {
            match outcome {
                Outcome::Processed => report.processed += 1,
                Outcome::Refused => report.refused += 1,
                Outcome::Failed => report.failed += 1,
            }
            self.quiet.hush(key);
        }
        Ok(report)
    }
}
