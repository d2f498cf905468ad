//! The WhatsApp outbox: a reply an agent or the bot writes in a thread is forwarded to
//! command-api (`POST /v1/whatsapp/threads/{thread}/messages/{message}/forward`), which
//! queues it in the thread's WhatsApp conversation under the reply's id; the sender then
//! sends it. An edit or a deletion of a message in the thread follows it there (`…/change`):
//! a reply not yet sent goes out as edited or not at all. A side-effect worker: its checkpoint moves only once command-api answered, so
//! no reply is skipped, and a repeat (after a crash) names the same message and appends
//! nothing. Threads the chat read model already knows as not WhatsApp are not asked about.

use async_trait::async_trait;
use events::chat::{PartyKind, ThreadEvent, THREAD};
use events::Envelope;
use serde_json::json;
use sqlx::{PgConnection, PgPool};

use crate::command_client::CommandClient;
use crate::projection::{Effect, Projection, ProjectionError, Target};

/// The outbox.
pub struct WhatsAppOutbox {
    /// The read models (the chat read model says which threads are WhatsApp's); without
    /// them every reply is asked about.
    pool: Option<PgPool>,
    /// command-api, as a platform service.
    client: CommandClient,
}

impl WhatsAppOutbox {
    /// An outbox forwarding through `client`.
    pub fn new(pool: Option<PgPool>, client: CommandClient) -> Self {
        Self { pool, client }
    }
}

#[async_trait]
impl Projection for WhatsAppOutbox {
    fn name(&self) -> &'static str {
        "whatsapp-outbox"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[THREAD]
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
impl Effect for WhatsAppOutbox {
    async fn perform(&self, events: &[Envelope]) -> Result<(), ProjectionError> {
        for envelope in events.iter().filter(|e| e.aggregate_type == THREAD) {
            let thread = envelope.aggregate_id.as_str();
            let (message_id, path, body) =
                match serde_json::from_value::<ThreadEvent>(envelope.payload.clone()) {
                    Ok(ThreadEvent::MessageSent {
                        message_id,
                        author,
                        text,
                        attachment,
                        ..
                    }) if matches!(author.kind, PartyKind::Agent | PartyKind::Bot) => {
                        let path =
                            format!("/v1/whatsapp/threads/{thread}/messages/{message_id}/forward");
                        let body = json!({"text": text, "attachment": attachment});
                        (message_id, path, body)
                    }
                    // A reply changed in its thread: withdrawn or revised if it has not gone
                    // out, else the agent is told the contact has the original.
                    Ok(ThreadEvent::MessageEdited {
                        message_id, text, ..
                    }) => {
                        let path =
                            format!("/v1/whatsapp/threads/{thread}/messages/{message_id}/change");
                        (message_id, path, json!({"change": "edit", "text": text}))
                    }
                    Ok(ThreadEvent::MessageDeleted { message_id, .. }) => {
                        let path =
                            format!("/v1/whatsapp/threads/{thread}/messages/{message_id}/change");
                        (message_id, path, json!({"change": "delete"}))
                    }
                    _ => continue,
                };
            let channel: Option<String> = match &self.pool {
                Some(pool) => {
                    sqlx::query_scalar("SELECT channel FROM chat_threads WHERE id = $1::uuid")
                        .bind(thread)
                        .fetch_optional(pool)
                        .await?
                }
                None => None,
            };
            if channel.as_deref().is_some_and(|c| c != "whatsapp") {
                continue;
            }
            match self.client.post_json(&path, &body).await {
                Ok(r) if r.status().is_success() => {}
                // Refused for good (an unknown thread or message): nothing to retry. A busy
                // conversation (409 `contention`, 429) is tried again.
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    if crate::sender::busy(r).await {
                        return Err(ProjectionError::Unavailable(format!(
                            "command-api answered {status}"
                        )));
                    }
                    tracing::warn!(thread, message_id, %status, "reply not forwarded");
                }
                Ok(r) => {
                    return Err(ProjectionError::Unavailable(format!(
                        "command-api answered {}",
                        r.status()
                    )))
                }
                Err(e) => return Err(ProjectionError::Unavailable(e.to_string())),
            }
        }
        Ok(())
    }
}
