//! The WhatsApp media re-fetch worker: when a tenant connects a session again (a fresh
//! access token after one expired), the inbound files the provider refused under the old
//! token (`MediaFailed` with `retryable`) are fetched again, by replaying the deliveries that
//! brought them (`POST /v1/webhooks/{id}/replay`; the webhook processor then processes
//! them, and the conversation stores each file once). Only the connecting tenant's own
//! messages: another tenant taking the number over gets nothing of the earlier owner's.
//!
//! A side-effect worker: its checkpoint moves once command-api accepted every replay, so a
//! crash repeats them, which is harmless (a replay of a webhook already re-processed finds
//! the file stored).

use async_trait::async_trait;
use events::whatsapp::{SessionEvent, WHATSAPP_SESSION};
use events::Envelope;
use sqlx::{PgConnection, PgPool};

use crate::command_client::CommandClient;
use crate::projection::{Effect, Projection, ProjectionError, Target};

/// The worker.
pub struct MediaRefetch {
    /// The event store: which files wait, and which delivery brought each.
    pool: PgPool,
    /// command-api, as a platform service.
    client: CommandClient,
}

impl MediaRefetch {
    /// A worker replaying through `client`.
    pub fn new(pool: PgPool, client: CommandClient) -> Self {
        Self { pool, client }
    }

    /// The deliveries of the files of `tenant`'s conversations on `session` that wait for
    /// working credentials: refused for the token and not stored since. Read from the
    /// conversations' events (migration 0033's index), which hold every failure committed
    /// before the session's `Connected`; the read model may not show them yet.
    async fn waiting(&self, tenant: &str, session: &str) -> Result<Vec<String>, ProjectionError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT r.payload->'MessageReceived'->>'webhook_id'
               FROM events f
               JOIN events s ON s.aggregate_type = 'whatsapp_conversation'
                            AND s.aggregate_id = f.aggregate_id AND s.sequence = 1
               JOIN events r ON r.aggregate_type = 'whatsapp_conversation'
                            AND r.aggregate_id = f.aggregate_id
                            AND r.event_type = 'MessageReceived'
                            AND r.payload->'MessageReceived'->>'message_id'
                                = f.payload->'MediaFailed'->>'message_id'
              WHERE f.aggregate_type = 'whatsapp_conversation' AND f.event_type = 'MediaFailed'
                AND (f.payload->'MediaFailed'->>'retryable')::boolean
                AND s.payload->'Started'->>'session_id' = $1
                AND s.payload->'Started'->>'tenant_id' = $2
                AND NOT EXISTS (
                    SELECT 1 FROM events m
                     WHERE m.aggregate_type = 'whatsapp_conversation'
                       AND m.aggregate_id = f.aggregate_id AND m.sequence > f.sequence
                       AND m.event_type = 'MediaStored'
                       AND m.payload->'MediaStored'->>'message_id'
                           = f.payload->'MediaFailed'->>'message_id')",
        )
        .bind(session)
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?)
    }
}

#[async_trait]
impl Projection for MediaRefetch {
    fn name(&self) -> &'static str {
        "whatsapp-media-refetch"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[WHATSAPP_SESSION]
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
impl Effect for MediaRefetch {
    async fn perform(&self, events: &[Envelope]) -> Result<(), ProjectionError> {
        for envelope in events {
            let Ok(SessionEvent::Connected { tenant_id, .. }) =
                serde_json::from_value::<SessionEvent>(envelope.payload.clone())
            else {
                continue;
            };
            for webhook in self.waiting(&tenant_id, &envelope.aggregate_id).await? {
                crate::command_client::replay_webhook(&self.client, &webhook).await?;
            }
        }
        Ok(())
    }
}
