//! The webhook aggregate: one per provider event. Receiving it again appends nothing (the
//! de-duplication), processing records one outcome, failures count towards the dead-letter
//! state, and a replay makes it pending again.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use events::webhooks::{Outcome, Provider, WebhookEvent, MAX_ATTEMPTS, WEBHOOK};
use serde::{Deserialize, Serialize};

/// A command on a webhook.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookCommand {
    /// A verified delivery arrived.
    Receive {
        /// Who sent it.
        provider: Provider,
        /// The provider's event id.
        provider_event_id: String,
        /// The provider's event type.
        event_type: String,
        /// The payment it names, if any.
        payment_id: Option<String>,
        /// What of the body is kept.
        payload: serde_json::Value,
        /// Hex SHA-256 of the whole body.
        body_sha256: Option<String>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Processing finished.
    RecordOutcome {
        /// What it did.
        outcome: Outcome,
        /// The payment concerned.
        payment_id: Option<String>,
        /// The payment's tenant.
        tenant_id: Option<String>,
        /// Why.
        detail: String,
        /// The provider's reference it named, when no payment was known for it.
        unmatched_reference: Option<String>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Processing failed for now.
    RecordFailure {
        /// Why.
        error: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// An admin asks for it to be processed again.
    Replay {
        /// When.
        at: DateTime<Utc>,
    },
    /// It concerns a suspended tenant: it waits for the tenant's reactivation.
    Hold {
        /// The tenant.
        tenant_id: String,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Why a webhook command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// 404.
    #[error("no such webhook")]
    NotFound,
}

/// Where a webhook is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not received.
    #[default]
    None,
    /// Waiting to be processed (first time, after a failure, or after a replay).
    Pending,
    /// Done.
    Processed,
    /// Failed [`MAX_ATTEMPTS`] times.
    Dead,
}

/// What was received (kept whole: processing reads it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Received {
    /// Who sent it.
    pub provider: Provider,
    /// The provider's event type.
    pub event_type: String,
    /// The payment it names, if any.
    pub payment_id: Option<String>,
    /// The parsed body.
    pub payload: serde_json::Value,
}

/// The state the rules need (also the snapshot form).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Webhook {
    /// What arrived.
    received: Option<Received>,
    /// Where it is.
    status: Status,
    /// Failed attempts since it last became pending.
    attempts: u32,
    /// When the next attempt is due, after a failed one.
    retry_at: Option<DateTime<Utc>>,
    /// The suspended tenant it was last held for.
    held_for: Option<String>,
}

/// The pause before attempt `attempt + 1`: 2, 4, 8 … seconds, at most an hour.
pub fn retry_delay(attempt: u32) -> Duration {
    crate::values::backoff(attempt, Duration::hours(1))
}

impl Webhook {
    /// What was received, if it was.
    pub fn received(&self) -> Option<&Received> {
        self.received.as_ref()
    }

    /// Where it is.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Whether it may be processed at `now`: pending, and past the retry time of its last
    /// failed attempt.
    pub fn due(&self, now: DateTime<Utc>) -> bool {
        self.status == Status::Pending && self.retry_at.is_none_or(|r| r <= now)
    }

    fn decide(&self, command: WebhookCommand) -> Result<Option<WebhookEvent>, WebhookError> {
        if self.received.is_none() && !matches!(command, WebhookCommand::Receive { .. }) {
            return Err(WebhookError::NotFound);
        }
        Ok(match command {
            WebhookCommand::Receive {
                provider,
                provider_event_id,
                event_type,
                payment_id,
                payload,
                body_sha256,
                at,
            } => self.received.is_none().then_some(WebhookEvent::Received {
                provider,
                provider_event_id,
                event_type,
                payment_id,
                payload,
                body_sha256,
                received_at: at,
            }),
            WebhookCommand::RecordOutcome {
                outcome,
                payment_id,
                tenant_id,
                detail,
                unmatched_reference,
                at,
            } => (self.status == Status::Pending).then_some(WebhookEvent::Processed {
                outcome,
                payment_id,
                tenant_id,
                detail,
                unmatched_reference,
                at,
            }),
            WebhookCommand::RecordFailure { error, at } => {
                // An attempt before the retry time does not count: the backoff holds even
                // when a caller retries early.
                if !self.due(at) {
                    return Ok(None);
                }
                let attempt = self.attempts + 1;
                let error: String = error.chars().take(500).collect();
                Some(if attempt >= MAX_ATTEMPTS {
                    WebhookEvent::DeadLettered {
                        attempts: attempt,
                        error,
                    }
                } else {
                    WebhookEvent::AttemptFailed {
                        attempt,
                        error,
                        retry_at: at + retry_delay(attempt),
                    }
                })
            }
            // A processed or dead webhook is processed again; one waiting out its back-off
            // is processed now (its attempts count from the first again); one already due
            // needs nothing.
            WebhookCommand::Replay { at } => (self.status != Status::Pending
                || self.retry_at.is_some_and(|r| r > at))
            .then_some(WebhookEvent::ReplayRequested { at }),
            // Held once per tenant: the processor asks again after every wake-up, and only
            // a pending webhook waits.
            WebhookCommand::Hold { tenant_id, at } => (self.status == Status::Pending
                && self.held_for.as_deref() != Some(tenant_id.as_str()))
            .then_some(WebhookEvent::HeldForTenant { tenant_id, at }),
        })
    }
}

impl Aggregate for Webhook {
    const TYPE: &'static str = WEBHOOK;
    type Command = WebhookCommand;
    type Event = WebhookEvent;
    type Error = WebhookError;
    type Services = ();

    async fn handle(
        &mut self,
        command: WebhookCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), WebhookError> {
        if let Some(event) = self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: WebhookEvent) {
        match event {
            WebhookEvent::Received {
                provider,
                event_type,
                payment_id,
                payload,
                ..
            } => {
                self.received = Some(Received {
                    provider,
                    event_type,
                    payment_id,
                    payload,
                });
                self.status = Status::Pending;
            }
            WebhookEvent::AttemptFailed {
                attempt, retry_at, ..
            } => {
                self.attempts = attempt;
                self.retry_at = Some(retry_at);
            }
            WebhookEvent::DeadLettered { attempts, .. } => {
                self.attempts = attempts;
                self.status = Status::Dead;
            }
            WebhookEvent::Processed { .. } => self.status = Status::Processed,
            WebhookEvent::ReplayRequested { .. } => {
                self.status = Status::Pending;
                self.attempts = 0;
                self.retry_at = None;
            }
            WebhookEvent::HeldForTenant { tenant_id, .. } => self.held_for = Some(tenant_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0)
            .single()
            .unwrap_or_default()
    }

    fn receive() -> WebhookCommand {
        WebhookCommand::Receive {
            provider: Provider::Stripe,
            provider_event_id: "evt_1".into(),
            event_type: "payment_intent.succeeded".into(),
            payment_id: None,
            payload: serde_json::json!({"id": "evt_1"}),
            body_sha256: Some("ab".into()),
            at: t0(),
        }
    }

    fn received() -> WebhookEvent {
        WebhookEvent::Received {
            provider: Provider::Stripe,
            provider_event_id: "evt_1".into(),
            event_type: "payment_intent.succeeded".into(),
            payment_id: None,
            payload: serde_json::json!({"id": "evt_1"}),
            body_sha256: Some("ab".into()),
            received_at: t0(),
        }
    }

    fn processed() -> WebhookEvent {
        WebhookEvent::Processed {
            outcome: Outcome::Applied,
            payment_id: Some("p".into()),
            tenant_id: Some("t".into()),
            detail: "paid".into(),
            unmatched_reference: None,
            at: t0(),
        }
    }

    fn outcome() -> WebhookCommand {
        WebhookCommand::RecordOutcome {
            outcome: Outcome::Applied,
            payment_id: Some("p".into()),
            tenant_id: Some("t".into()),
            detail: "paid".into(),
            unmatched_reference: None,
            at: t0(),
        }
    }

    /// A failure reported at `hours` after t0.
    fn failure_at(hours: i64) -> WebhookCommand {
        WebhookCommand::RecordFailure {
            error: "down".into(),
            at: t0() + Duration::hours(hours),
        }
    }

    fn failure() -> WebhookCommand {
        failure_at(0)
    }

    /// Attempt `attempt` failed at `attempt - 1` hours after t0 (each retry on time).
    fn failed(attempt: u32) -> WebhookEvent {
        let at = t0() + Duration::hours(attempt as i64 - 1);
        WebhookEvent::AttemptFailed {
            attempt,
            error: "down".into(),
            retry_at: at + retry_delay(attempt),
        }
    }

    fn framework() -> TestFramework<Webhook> {
        TestFramework::with(())
    }

    #[test]
    fn receive_records_the_webhook() {
        framework()
            .given_no_previous_events()
            .when(receive())
            .then_expect_events(vec![received()]);
    }

    #[test]
    fn receive_again_appends_nothing() {
        framework()
            .given(vec![received()])
            .when(receive())
            .then_expect_events(vec![]);
        framework()
            .given(vec![received(), processed()])
            .when(receive())
            .then_expect_events(vec![]);
    }

    #[test]
    fn record_outcome_of_a_pending_webhook_processes_it_once() {
        framework()
            .given(vec![received()])
            .when(outcome())
            .then_expect_events(vec![processed()]);
        framework()
            .given(vec![received(), processed()])
            .when(outcome())
            .then_expect_events(vec![]);
    }

    #[test]
    fn record_failure_schedules_a_retry_with_growing_delay() {
        framework()
            .given(vec![received()])
            .when(failure())
            .then_expect_events(vec![failed(1)]);
        framework()
            .given(vec![received(), failed(1)])
            .when(failure_at(1))
            .then_expect_events(vec![failed(2)]);
        assert!(retry_delay(2) > retry_delay(1));
        assert_eq!(retry_delay(30), Duration::hours(1));
    }

    #[test]
    fn record_failure_before_the_retry_time_appends_nothing() {
        framework()
            .given(vec![received(), failed(1)])
            .when(failure())
            .then_expect_events(vec![]);
    }

    #[test]
    fn record_failure_at_the_last_attempt_dead_letters() {
        let given: Vec<WebhookEvent> = std::iter::once(received())
            .chain((1..MAX_ATTEMPTS).map(failed))
            .collect();
        framework()
            .given(given)
            .when(failure_at(MAX_ATTEMPTS as i64 - 1))
            .then_expect_events(vec![WebhookEvent::DeadLettered {
                attempts: MAX_ATTEMPTS,
                error: "down".into(),
            }]);
    }

    #[test]
    fn record_failure_after_processing_appends_nothing() {
        framework()
            .given(vec![received(), processed()])
            .when(failure())
            .then_expect_events(vec![]);
    }

    #[test]
    fn hold_for_a_suspended_tenant_is_recorded_once_and_only_while_pending() {
        let hold = |tenant: &str| WebhookCommand::Hold {
            tenant_id: tenant.into(),
            at: t0(),
        };
        let held = |tenant: &str| WebhookEvent::HeldForTenant {
            tenant_id: tenant.into(),
            at: t0(),
        };
        framework()
            .given(vec![received()])
            .when(hold("t1"))
            .then_expect_events(vec![held("t1")]);
        framework()
            .given(vec![received(), held("t1")])
            .when(hold("t1"))
            .then_expect_events(vec![]);
        framework()
            .given(vec![received(), processed()])
            .when(hold("t1"))
            .then_expect_events(vec![]);
        // Held, then processed once the tenant is back.
        framework()
            .given(vec![received(), held("t1")])
            .when(outcome())
            .then_expect_events(vec![processed()]);
    }

    #[test]
    fn replay_makes_a_processed_or_dead_webhook_pending_again() {
        let replayed = WebhookEvent::ReplayRequested { at: t0() };
        framework()
            .given(vec![received(), processed()])
            .when(WebhookCommand::Replay { at: t0() })
            .then_expect_events(vec![replayed.clone()]);
        framework()
            .given(vec![received(), processed(), replayed.clone()])
            .when(outcome())
            .then_expect_events(vec![processed()]);
        framework()
            .given(vec![received()])
            .when(WebhookCommand::Replay { at: t0() })
            .then_expect_events(vec![]);
    }

    #[test]
    fn replay_of_a_webhook_waiting_out_its_back_off_runs_it_now() {
        let waiting = WebhookEvent::AttemptFailed {
            attempt: 8,
            error: "down".into(),
            retry_at: t0() + chrono::Duration::minutes(30),
        };
        framework()
            .given(vec![received(), waiting.clone()])
            .when(WebhookCommand::Replay { at: t0() })
            .then_expect_events(vec![WebhookEvent::ReplayRequested { at: t0() }]);
        // Its back-off over, it is due anyway.
        framework()
            .given(vec![received(), waiting])
            .when(WebhookCommand::Replay {
                at: t0() + chrono::Duration::minutes(30),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn commands_on_an_unknown_webhook_are_not_found() {
        framework()
            .given_no_previous_events()
            .when(outcome())
            .then_expect_error(WebhookError::NotFound);
    }
}
