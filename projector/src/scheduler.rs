//! The scheduler: delivers scheduled messages when they fall due, by sending the delivery
//! command back to command-api (ARCHITECTURE.md invariant 5), as the platform service
//! `scheduler`.
//!
//! It reads what is due from the `chat_scheduled` read model, so nothing is lost across
//! restarts of any process: a message stays `pending` there until its delivery is projected.
//! The thread aggregate makes delivery happen once (a second delivery, or one after a cancel,
//! appends nothing) and never early (`409 not_due` when a reschedule moved it). Several
//! schedulers may run; the aggregate keeps them from delivering twice.
//!
//! Between steps it sleeps until the next due time, at most a second, so a message scheduled
//! a moment ago is seen within a second and delivered at its due time.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use events::access::TokenKeys;
use events::clock::Clock;
use sqlx::PgPool;
use uuid::Uuid;

use crate::command_client::{CommandClient, Quiet};

/// The longest sleep between steps.
const MAX_IDLE: Duration = Duration::from_secs(1);
/// How long a delivery that command-api accepted (or refused for good) is not sent again
/// while the read model catches up.
const QUIET: Duration = Duration::from_secs(30);
/// Most deliveries per step.
const BATCH: i64 = 100;

/// What one step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StepReport {
    /// Delivery commands command-api accepted.
    pub delivered: usize,
    /// Refused as not due yet (a reschedule moved them).
    pub not_due: usize,
    /// Refused for good (thread gone, schedule unknown); not retried for a while.
    pub refused: usize,
    /// Failed for now (command-api unreachable or busy); retried next step.
    pub failed: usize,
}

/// Delivers due scheduled messages.
pub struct Scheduler {
    /// The read models.
    pool: PgPool,
    /// command-api, as the service `scheduler`.
    client: CommandClient,
    /// What "now" is.
    clock: Arc<dyn Clock>,
    /// Deliveries sent recently, by `(thread, scheduled id)`.
    quiet: Quiet<(Uuid, String)>,
}

/// How long to sleep before the next step, given the next due time.
pub fn next_wake(now: DateTime<Utc>, next_due: Option<DateTime<Utc>>) -> Duration {
    match next_due {
        Some(due) if due > now => (due - now).to_std().unwrap_or(MAX_IDLE).min(MAX_IDLE),
        // Due but held back (sent, waiting for the read model): look again shortly.
        Some(_) => Duration::from_millis(200),
        None => MAX_IDLE,
    }
}

impl Scheduler {
    /// A scheduler delivering through command-api at `command_api`, with tokens signed by
    /// `keys`, on `clock`'s time.
    pub fn new(pool: PgPool, command_api: String, keys: TokenKeys, clock: Arc<dyn Clock>) -> Self {
        Self {
            pool,
            client: CommandClient::new(&command_api, keys, "scheduler"),
            clock,
            quiet: Quiet::new(QUIET),
        }
    }

    /// Runs for ever.
    pub async fn run(self) {
        loop {
            match self.step().await {
                Ok(report) if report != StepReport::default() => {
                    tracing::info!(?report, "scheduler step");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "scheduler step failed"),
            }
            let next = self.next_due().await.unwrap_or(None);
            tokio::time::sleep(next_wake(self.clock.now(), next)).await;
        }
    }

    /// The earliest due time of a pending scheduled message not sent a moment ago.
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let (threads, ids): (Vec<Uuid>, Vec<String>) = self.quiet.keys().into_iter().unzip();
        sqlx::query_scalar(&format!(
            "SELECT min(due_at) FROM chat_scheduled
              WHERE status = 'pending' AND {}
                AND (thread_id, id) NOT IN (SELECT * FROM unnest($1::uuid[], $2::text[]))",
            crate::due::TENANT_NOT_SUSPENDED
        ))
        .bind(&threads)
        .bind(&ids)
        .fetch_one(&self.pool)
        .await
    }

    /// Sends the delivery command of every pending message due by the clock's now: the unit
    /// the loop repeats, and what tests drive.
    pub async fn step(&self) -> Result<StepReport, sqlx::Error> {
        let now = self.clock.now();
        // What was sent a moment ago is left out in the query, so rows that wait for the read
        // model (or were refused) never crowd later due messages out of the batch.
        let (quiet_threads, quiet_ids): (Vec<Uuid>, Vec<String>) =
            self.quiet.keys().into_iter().unzip();
        // A suspended tenant's due messages wait for its reactivation.
        let due: Vec<(Uuid, String)> = sqlx::query_as(&format!(
            "SELECT thread_id, id FROM chat_scheduled
              WHERE status = 'pending' AND due_at <= $1 AND {}
                AND (thread_id, id) NOT IN (SELECT * FROM unnest($3::uuid[], $4::text[]))
              ORDER BY due_at, thread_id, id LIMIT $2",
            crate::due::TENANT_NOT_SUSPENDED
        ))
        .bind(now)
        .bind(BATCH)
        .bind(&quiet_threads)
        .bind(&quiet_ids)
        .fetch_all(&self.pool)
        .await?;
        let mut report = StepReport::default();
        for key in due {
            let (thread, id) = &key;
            let outcome = self
                .client
                .post(&format!("/v1/chat/threads/{thread}/scheduled/{id}/deliver"))
                .await;
            match outcome {
                Ok(r) if r.status().is_success() => {
                    report.delivered += 1;
                    self.quiet.hush(key);
                }
                Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => {
                    let code = r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|b| b["code"].as_str().map(str::to_owned));
                    if code.as_deref() == Some("not_due") {
                        report.not_due += 1;
                    } else {
                        // Contention or a claim in progress: next step.
                        report.failed += 1;
                    }
                }
                Ok(r) if r.status().is_client_error() => {
                    tracing::warn!(thread = %thread, scheduled_id = %id, status = %r.status(), "delivery refused");
                    report.refused += 1;
                    self.quiet.hush(key);
                }
                Ok(r) => {
                    tracing::warn!(status = %r.status(), "delivery failed; retrying");
                    report.failed += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "command-api unreachable; retrying");
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_sleeps_until_the_next_due_time_but_never_more_than_a_second() {
        let now = Utc::now();
        assert_eq!(
            next_wake(now, Some(now + chrono::Duration::milliseconds(300))),
            Duration::from_millis(300)
        );
        assert_eq!(
            next_wake(now, Some(now + chrono::Duration::hours(3))),
            MAX_IDLE
        );
        assert_eq!(next_wake(now, None), MAX_IDLE);
        assert_eq!(
            next_wake(now, Some(now - chrono::Duration::seconds(1))),
            Duration::from_millis(200)
        );
    }
}
