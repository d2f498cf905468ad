//! The payment-references worker: a provider refund that names only the provider's
//! transaction (a Stripe `charge.refunded` without our `metadata.payment_id`) and arrives
//! before any payment is paid with that transaction is recorded as unmatched
//! (`Processed.unmatched_reference`), not retried for hours. When a payment is then paid, or
//! charged again, with that transaction, the webhook is replayed and applies.
//!
//! Both orders of the two commits are covered: each event is matched against the other in
//! the event store, and whichever of the two this worker handles second finds the first (an
//! event is published only once committed). Replays are idempotent, so a crash that repeats
//! one changes nothing.

use async_trait::async_trait;
use events::payments::lookups::{PAID_WITH, UNMATCHED_WEBHOOKS};
use events::payments::{PaymentEvent, PAYMENT};
use events::webhooks::{WebhookEvent, WEBHOOK};
use events::Envelope;
use sqlx::{PgConnection, PgPool};

use crate::command_client::CommandClient;
use crate::projection::{Effect, Projection, ProjectionError, Target};

/// The worker.
pub struct PaymentReferences {
    /// The event store (which payment was paid with which transaction, which webhooks wait).
    pool: PgPool,
    /// command-api, as a platform service.
    client: CommandClient,
}

impl PaymentReferences {
    /// A worker replaying through `client`.
    pub fn new(pool: PgPool, client: CommandClient) -> Self {
        Self { pool, client }
    }

    /// The webhooks to process again because of `envelope`.
    async fn due(&self, envelope: &Envelope) -> Result<Vec<String>, ProjectionError> {
        let payload = envelope.payload.clone();
        if envelope.aggregate_type == WEBHOOK {
            let Ok(WebhookEvent::Processed {
                unmatched_reference: Some(reference),
                ..
            }) = serde_json::from_value::<WebhookEvent>(payload)
            else {
                return Ok(vec![]);
            };
            // Unless it was processed again since (this event handled once more after a
            // crash, or a replay already under way).
            let later: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM events WHERE aggregate_type = $1
                                   AND aggregate_id = $2 AND sequence > $3)",
            )
            .bind(WEBHOOK)
            .bind(&envelope.aggregate_id)
            .bind(envelope.sequence as i64)
            .fetch_one(&self.pool)
            .await?;
            if later {
                return Ok(vec![]);
            }
            let paid: Option<String> = sqlx::query_scalar(PAID_WITH)
                .bind(&reference)
                .fetch_optional(&self.pool)
                .await?;
            return Ok(paid
                .map(|_| vec![envelope.aggregate_id.clone()])
                .unwrap_or_default());
        }
        let reference = match serde_json::from_value::<PaymentEvent>(payload) {
            Ok(PaymentEvent::Paid {
                provider_reference, ..
            })
            | Ok(PaymentEvent::ChargedAgain {
                provider_reference, ..
            }) => provider_reference,
            _ => return Ok(vec![]),
        };
        Ok(sqlx::query_scalar(UNMATCHED_WEBHOOKS)
            .bind(&reference)
            .fetch_all(&self.pool)
            .await?)
    }
}

#[async_trait]
impl Projection for PaymentReferences {
    fn name(&self) -> &'static str {
        "payment-references"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[WEBHOOK, PAYMENT]
    }

    fn tables(&self) -> &'static [&'static str] {
        &[]
    }

    fn effect(&self) -> Option<&dyn Effect> {
        Some(self)
    }

    /// Nothing to write: the effect happened before; only the checkpoints move.
    async fn apply(
        &self,
        _conn: &mut PgConnection,
        _target: &Target,
        _event: &Envelope,
    ) -> Result<(), ProjectionError> {
        Ok(())
    }
}

#[async_trait]
impl Effect for PaymentReferences {
    async fn perform(&self, events: &[Envelope]) -> Result<(), ProjectionError> {
        for envelope in events {
            for webhook in self.due(envelope).await? {
                tracing::info!(webhook, "refund matched to a payment paid since: replayed");
                crate::command_client::replay_webhook(&self.client, &webhook).await?;
            }
        }
        Ok(())
    }
}
