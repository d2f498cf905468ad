//! The webhook process manager: has every received webhook processed, by asking command-api
//! (`POST /v1/webhooks/{id}/process`, as the platform service `webhooks`) to turn it into
//! the payment command it stands for and record the outcome on the webhook (causation: the
//! webhook's `Received` event).
//!
//! Its queue is the `webhooks` read model: rows with a `next_attempt_at` at or before now —
//! just received, due for a retry after a failed attempt (2 s, 4 s … 5 min apart), or
//! replayed by an admin. After the last attempt a webhook is dead-lettered (`status =
//! dead`) and waits for a replay. Nothing is lost across restarts: a row stays due until
//! its outcome is projected, and the aggregates make a repeated request change nothing.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use events::access::TokenKeys;
use events::clock::Clock;
use sqlx::PgPool;
use uuid::Uuid;

use crate::command_client::{CommandClient, Quiet};

/// The longest sleep between steps.
const MAX_IDLE: Duration = Duration::from_millis(500);
/// How long a webhook sent for processing is not sent again at the same version (while the
/// read model catches up, or while command-api is unreachable).
const QUIET: Duration = Duration::from_secs(10);
/// Most webhooks per step.
const BATCH: i64 = 100;

/// What one step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StepReport {
    /// Webhooks command-api processed (an outcome or a failed attempt was recorded).
    pub processed: usize,
    /// Refused (an unknown webhook): not sent again at this version.
    pub refused: usize,
    /// command-api unreachable or failing: sent again after a pause.
    pub failed: usize,
}

/// Has due webhooks processed.
pub struct WebhookProcessor {
    /// The read models.
    pool: PgPool,
    /// command-api, as the service `webhooks`.
    client: CommandClient,
    /// What "now" is.
    clock: Arc<dyn Clock>,
    /// Webhooks sent recently, by `(id, version)`: a new version (a failure recorded, a
    /// replay) makes a webhook eligible again.
    quiet: Quiet<(Uuid, i64)>,
}

impl WebhookProcessor {
    /// A processor using command-api at `command_api`, with tokens signed by `keys`, on
    /// `clock`'s time.
    pub fn new(pool: PgPool, command_api: &str, keys: TokenKeys, clock: Arc<dyn Clock>) -> Self {
        Self {
            pool,
            client: CommandClient::new(command_api, keys, "webhooks"),
            clock,
            quiet: Quiet::new(QUIET),
        }
    }

    /// Runs for ever.
    pub async fn run(self) {
        loop {
            match self.step().await {
                Ok(report) if report != StepReport::default() => {
                    tracing::info!(?report, "webhook processor step");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "webhook processor step failed"),
            }
            let pause = match self.next_due().await {
                Ok(Some(due)) => (due - self.clock.now())
                    .to_std()
                    .unwrap_or(Duration::from_millis(50))
                    .min(MAX_IDLE),
                _ => MAX_IDLE,
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// The earliest time a webhook not sent a moment ago is due.
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let (ids, versions): (Vec<Uuid>, Vec<i64>) = self.quiet.keys().into_iter().unzip();
        sqlx::query_scalar(
            "SELECT min(next_attempt_at) FROM webhooks
              WHERE next_attempt_at IS NOT NULL
                AND (id, version) NOT IN (SELECT * FROM unnest($1::uuid[], $2::bigint[]))",
        )
        .bind(&ids)
        .bind(&versions)
        .fetch_one(&self.pool)
        .await
    }

    /// Sends every webhook due by the clock's now for processing: the unit the loop repeats,
    /// and what tests drive.
    pub async fn step(&self) -> Result<StepReport, sqlx::Error> {
        let (quiet_ids, quiet_versions): (Vec<Uuid>, Vec<i64>) =
            self.quiet.keys().into_iter().unzip();
        let due: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT id, version FROM webhooks
              WHERE next_attempt_at <= $1
                AND (id, version) NOT IN (SELECT * FROM unnest($3::uuid[], $4::bigint[]))
              ORDER BY next_attempt_at, id LIMIT $2",
        )
        .bind(self.clock.now())
        .bind(BATCH)
        .bind(&quiet_ids)
        .bind(&quiet_versions)
        .fetch_all(&self.pool)
        .await?;
        let mut report = StepReport::default();
        for key in due {
            let outcome = self
                .client
                .post(&format!("/v1/webhooks/{}/process", key.0))
                .await;
            match outcome {
                Ok(r) if r.status().is_success() => report.processed += 1,
                Ok(r) if r.status().is_client_error() => {
                    tracing::warn!(webhook = %key.0, status = %r.status(), "processing refused");
                    report.refused += 1;
                }
                Ok(r) => {
                    tracing::warn!(webhook = %key.0, status = %r.status(), "processing failed; will retry");
                    report.failed += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "command-api unreachable; will retry");
                    report.failed += 1;
                }
            }
            self.quiet.hush(key);
        }
        Ok(report)
    }
}
