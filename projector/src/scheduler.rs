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
//!
//! No message, and no tenant, holds the others back: a step takes the due messages in turns
//! across tenants (each tenant's oldest first, then each one's second, …), and a delivery
//! that fails waits before its next try (1 s, 2 s, 4 s … per message), while the others go
//! on. After [`MAX_FAILURES`] failed tries the scheduler gives up on it: the message shows
//! `failed` with the last error (`ScheduleFailed`, `delivery_failed`) until staff reschedule
//! or cancel it. The count of tries lives in this process: a restart starts it afresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
/// Failed tries after which a delivery is given up (about four minutes of trying).
pub const MAX_FAILURES: u32 = 8;
/// The longest wait between two tries of one delivery.
const MAX_BACKOFF: chrono::Duration = chrono::Duration::minutes(5);

/// The wait after a delivery's `failures`-th failed try: 1 s, 2 s, 4 s … at most
/// [`MAX_BACKOFF`].
pub fn backoff(failures: u32) -> chrono::Duration {
    chrono::Duration::seconds(1_i64 << failures.saturating_sub(1).min(20)).min(MAX_BACKOFF)
}

/// A delivery that failed: how often, and when it may be tried again.
#[derive(Debug, Clone, Copy)]
struct Failing {
    /// Failed tries in a row.
    failures: u32,
    /// Not tried before.
    retry_at: DateTime<Utc>,
}

/// What one step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StepReport {
    /// Delivery commands command-api accepted.
    pub delivered: usize,
    /// Refused as not due yet (a reschedule moved them).
    pub not_due: usize,
    /// Refused for good (thread gone, schedule unknown); not retried for a while.
    pub refused: usize,
    /// Failed for now (command-api unreachable, busy or failing); retried after a wait.
    pub failed: usize,
    /// Given up after [`MAX_FAILURES`] failed tries (shown as failed).
    pub given_up: usize,
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
    /// Deliveries that failed, by `(thread, scheduled id)`.
    failing: Mutex<HashMap<(Uuid, String), Failing>>,
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
            failing: Mutex::new(HashMap::new()),
        }
    }

    /// The deliveries not to try now: sent a moment ago, or waiting after a failure.
    fn held_back(&self, now: DateTime<Utc>) -> (Vec<Uuid>, Vec<String>) {
        let mut keys = self.quiet.keys();
        if let Ok(mut failing) = self.failing.lock() {
            // A delivery long past its retry time was not seen again: it is no longer due
            // (delivered, cancelled, rescheduled); forget it.
            failing.retain(|_, f| f.retry_at + MAX_BACKOFF > now);
            keys.extend(
                failing
                    .iter()
                    .filter(|(_, f)| f.retry_at > now)
                    .map(|(k, _)| k.clone()),
            );
        }
        keys.into_iter().unzip()
    }

    /// Records a failed try of `key`; the number of failed tries in a row.
    fn failed(&self, key: &(Uuid, String), now: DateTime<Utc>) -> u32 {
        let Ok(mut failing) = self.failing.lock() else {
            return 1;
        };
        let entry = failing.entry(key.clone()).or_insert(Failing {
            failures: 0,
            retry_at: now,
        });
        entry.failures += 1;
        entry.retry_at = now + backoff(entry.failures);
        entry.failures
    }

    /// Forgets the failures of `key`.
    fn settled(&self, key: &(Uuid, String)) {
        if let Ok(mut failing) = self.failing.lock() {
            failing.remove(key);
        }
    }

    /// Gives up on `key`'s delivery after its last failure `error`: true once command-api
    /// recorded it.
    async fn give_up(&self, key: &(Uuid, String), error: &str, now: DateTime<Utc>) -> bool {
        let (thread, id) = key;
        let body = serde_json::json!({
            "reason": format!("Not delivered after {MAX_FAILURES} tries: {error}"),
        });
        match self
            .client
            .post_json(
                &format!("/v1/chat/threads/{thread}/scheduled/{id}/fail"),
                &body,
            )
            .await
        {
            Ok(r) if r.status().is_success() => {
                tracing::warn!(thread = %thread, scheduled_id = %id, error, "delivery given up");
                // Not sent again while the read model catches up; counted afresh if staff
                // reschedule it.
                if let Ok(mut failing) = self.failing.lock() {
                    failing.insert(
                        key.clone(),
                        Failing {
                            failures: 0,
                            retry_at: now + MAX_BACKOFF,
                        },
                    );
                }
                true
            }
            Ok(r) => {
                tracing::warn!(status = %r.status(), "could not record a delivery given up");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not record a delivery given up");
                false
            }
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

    /// The earliest due time of a pending scheduled message not sent a moment ago, nor
    /// waiting after a failure.
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let (threads, ids) = self.held_back(self.clock.now());
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
        // What was sent a moment ago, or waits after a failure, is left out in the query, so
        // rows that wait for the read model (or were refused, or keep failing) never crowd
        // later due messages out of the batch.
        let (quiet_threads, quiet_ids) = self.held_back(now);
        // A suspended tenant's due messages wait for its reactivation. Tenants take turns:
        // each one's oldest due message, then each one's second, and so on.
        let due: Vec<(Uuid, String)> = sqlx::query_as(&format!(
            "SELECT thread_id, id FROM (
                SELECT thread_id, id, due_at,
                       row_number() OVER (PARTITION BY tenant_id
                                          ORDER BY due_at, thread_id, id) AS turn
                  FROM chat_scheduled
                 WHERE status = 'pending' AND due_at <= $1 AND {}
                   AND (thread_id, id) NOT IN (SELECT * FROM unnest($3::uuid[], $4::text[]))
             ) due
              ORDER BY turn, due_at, thread_id, id LIMIT $2",
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
            let error = match outcome {
                Ok(r) if r.status().is_success() => {
                    report.delivered += 1;
                    self.settled(&key);
                    self.quiet.hush(key);
                    continue;
                }
                Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => {
                    let status = r.status();
                    let code = r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|b| b["code"].as_str().map(str::to_owned));
                    if code.as_deref() == Some("not_due") {
                        report.not_due += 1;
                        continue;
                    }
                    // Contention or a claim in progress: after a wait.
                    format!("command-api answered {status} {}", code.unwrap_or_default())
                }
                Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                    tracing::warn!(thread = %thread, scheduled_id = %id, status = %r.status(), "delivery refused");
                    report.refused += 1;
                    self.settled(&key);
                    self.quiet.hush(key);
                    continue;
                }
                Ok(r) => format!("command-api answered {}", r.status()),
                Err(e) => format!("command-api unreachable: {e}"),
            };
            let failures = self.failed(&key, now);
            tracing::warn!(thread = %thread, scheduled_id = %id, failures, error, "delivery failed; tried again later");
            if failures >= MAX_FAILURES && self.give_up(&key, &error, now).await {
                report.given_up += 1;
            } else {
                report.failed += 1;
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_delivery_waits_longer_after_each_try_up_to_five_minutes() {
        let waits: Vec<i64> = (1..=10).map(|n| backoff(n).num_seconds()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

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
