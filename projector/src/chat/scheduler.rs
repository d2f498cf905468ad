//! The scheduler: delivers scheduled messages when they fall due, by sending the delivery
//! command back to command-api (docs/architecture.md, invariant 5), as the platform service
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
use futures::StreamExt;
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
/// Deliveries of a step in flight at once: a tenant whose deliveries hang holds a few of
/// these, never the others' turn.
const PARALLEL: usize = 16;
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
    /// Deliveries that failed, by `(thread, scheduled id, due time)`: a reschedule makes a
    /// new delivery, tried at its time with a fresh count.
    failing: Mutex<HashMap<Due, Failing>>,
}

/// A due delivery: `(thread, scheduled id, due time)`.
type Due = (Uuid, String, DateTime<Utc>);

/// What one delivery came to.
enum Outcome {
    Delivered,
    NotDue,
    Refused,
    Failed,
    GivenUp,
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

    /// The deliveries not to try now: sent a moment ago (`(thread, id)`), or waiting after a
    /// failure (`(thread, id, due time)`), as the columns the queries bind.
    #[allow(clippy::type_complexity)]
    fn held_back(
        &self,
        now: DateTime<Utc>,
    ) -> (
        (Vec<Uuid>, Vec<String>),
        (Vec<Uuid>, Vec<String>, Vec<DateTime<Utc>>),
    ) {
        let quiet = self.quiet.keys().into_iter().unzip();
        let mut waiting = (Vec::new(), Vec::new(), Vec::new());
        if let Ok(mut failing) = self.failing.lock() {
            // A delivery long past its retry time was not seen again: it is no longer due
            // (delivered, cancelled, rescheduled); forget it.
            failing.retain(|_, f| f.retry_at + MAX_BACKOFF > now);
            for ((thread, id, due), _) in failing.iter().filter(|(_, f)| f.retry_at > now) {
                waiting.0.push(*thread);
                waiting.1.push(id.clone());
                waiting.2.push(*due);
            }
        }
        (quiet, waiting)
    }

    /// Records a failed try of `key`; the number of failed tries in a row.
    fn failed(&self, key: &Due, now: DateTime<Utc>) -> u32 {
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
    fn settled(&self, key: &Due) {
        if let Ok(mut failing) = self.failing.lock() {
            failing.remove(key);
        }
    }

    /// Gives up on `key`'s delivery after its last failure `error`: true once command-api
    /// recorded it.
    async fn give_up(&self, key: &Due, error: &str, now: DateTime<Utc>) -> bool {
        let (thread, id, _) = key;
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
        let ((threads, ids), waiting) = self.held_back(self.clock.now());
        sqlx::query_scalar(&format!(
            "SELECT min(due_at) FROM chat_scheduled
              WHERE status = 'pending' AND {}
                AND (thread_id, id) NOT IN (SELECT * FROM unnest($1::uuid[], $2::text[]))
                AND (thread_id, id, due_at) NOT IN
                    (SELECT * FROM unnest($3::uuid[], $4::text[], $5::timestamptz[]))",
            crate::due::TENANT_NOT_SUSPENDED
        ))
        .bind(&threads)
        .bind(&ids)
        .bind(&waiting.0)
        .bind(&waiting.1)
        .bind(&waiting.2)
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
        let ((quiet_threads, quiet_ids), waiting) = self.held_back(now);
        // A suspended tenant's due messages wait for its reactivation. Tenants take turns:
        // each one's oldest due message, then each one's second, and so on.
        let due: Vec<Due> = sqlx::query_as(&format!(
            "SELECT thread_id, id, due_at FROM (
                SELECT thread_id, id, due_at,
                       row_number() OVER (PARTITION BY tenant_id
                                          ORDER BY due_at, thread_id, id) AS turn
                  FROM chat_scheduled
                 WHERE status = 'pending' AND due_at <= $1 AND {}
                   AND (thread_id, id) NOT IN (SELECT * FROM unnest($3::uuid[], $4::text[]))
                   AND (thread_id, id, due_at) NOT IN
                       (SELECT * FROM unnest($5::uuid[], $6::text[], $7::timestamptz[]))
             ) due
              ORDER BY turn, due_at, thread_id, id LIMIT $2",
            crate::due::TENANT_NOT_SUSPENDED
        ))
        .bind(now)
        .bind(BATCH)
        .bind(&quiet_threads)
        .bind(&quiet_ids)
        .bind(&waiting.0)
        .bind(&waiting.1)
        .bind(&waiting.2)
        .fetch_all(&self.pool)
        .await?;
        // One thread's deliveries one after another (they append to one stream, and would
        // only contend), threads side by side, in the order of their first turn.
        let mut threads: Vec<Vec<Due>> = Vec::new();
        let mut position: HashMap<Uuid, usize> = HashMap::new();
        for key in due {
            let at = *position.entry(key.0).or_insert_with(|| {
                threads.push(Vec::new());
                threads.len() - 1
            });
            threads[at].push(key);
        }
        let mut report = StepReport::default();
        // A thread whose delivery fails waits for its next step: a chain of deliveries that
        // hang would hold the step (and every message falling due meanwhile) for each of
        // them, where one holds it for one timeout.
        let mut outcomes = futures::stream::iter(threads.into_iter().map(|keys| async move {
            let mut outcomes = Vec::with_capacity(keys.len());
            for key in keys {
                let outcome = self.deliver(key, now).await;
                let failed = matches!(outcome, Outcome::Failed | Outcome::GivenUp);
                outcomes.push(outcome);
                if failed {
                    break;
                }
            }
            outcomes
        }))
        .buffer_unordered(PARALLEL);
        while let Some(done) = outcomes.next().await {
            for outcome in done {
                report.count(outcome);
            }
        }
        Ok(report)
    }
}

impl StepReport {
    /// Counts one delivery's outcome.
    fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Delivered => self.delivered += 1,
            Outcome::NotDue => self.not_due += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::GivenUp => self.given_up += 1,
        }
    }
}

impl Scheduler {
    /// Sends one due delivery and deals with its answer.
    async fn deliver(&self, key: Due, now: DateTime<Utc>) -> Outcome {
        let (thread, id, _) = &key;
        let outcome = self
            .client
            .post(&format!("/v1/chat/threads/{thread}/scheduled/{id}/deliver"))
            .await;
        let error = match outcome {
            Ok(r) if r.status().is_success() => {
                self.settled(&key);
                self.quiet.hush((*thread, id.clone()));
                return Outcome::Delivered;
            }
            Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => {
                let status = r.status();
                let code = r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|b| b["code"].as_str().map(str::to_owned));
                if code.as_deref() == Some("not_due") {
                    return Outcome::NotDue;
                }
                // Contention or a claim in progress: after a wait.
                format!("command-api answered {status} {}", code.unwrap_or_default())
            }
            Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                tracing::warn!(thread = %thread, scheduled_id = %id, status = %r.status(), "delivery refused");
                self.settled(&key);
                self.quiet.hush((*thread, id.clone()));
                return Outcome::Refused;
            }
            Ok(r) => format!("command-api answered {}", r.status()),
            Err(e) => format!("command-api unreachable: {e}"),
        };
        let failures = self.failed(&key, now);
        tracing::warn!(thread = %thread, scheduled_id = %id, failures, error, "delivery failed; tried again later");
        if failures >= MAX_FAILURES && self.give_up(&key, &error, now).await {
            Outcome::GivenUp
        } else {
            Outcome::Failed
        }
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
