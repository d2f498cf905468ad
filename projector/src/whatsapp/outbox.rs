//! The WhatsApp outbox: a reply an agent or the bot writes in a thread is forwarded to
//! command-api (`POST /v1/whatsapp/threads/{thread}/messages/{message}/forward`), which
//! queues it in the thread's WhatsApp conversation under the reply's id; the sender then
//! sends it. An edit or a deletion of a message in the thread follows it there (`…/change`):
//! a reply not yet sent goes out as edited or not at all. Each event is acted on as the
//! thread stands now: a reply edited or deleted before the outbox reached it is forwarded
//! with its latest text or not at all (its original is never queued, so the sender cannot
//! send it in between), and an edit followed by another change is left to that change.
//! A side-effect worker: its checkpoint moves only once command-api answered, so no reply
//! is skipped, and a repeat (after a crash) names the same message and appends nothing.
//! Threads the chat read model already knows as not WhatsApp are not asked about, and a
//! thread's channel (fixed when it opens) is remembered, so a web thread's replies cost the
//! outbox no statement after the first.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use events::chat::{PartyKind, ThreadEvent, THREAD};
use events::keyring::Keyring;
use events::Envelope;
use serde_json::json;
use sqlx::{PgConnection, PgPool};

use crate::command_client::CommandClient;
use crate::projection::{Effect, Projection, ProjectionError, Target};

/// The outbox.
pub struct WhatsAppOutbox {
    /// The read models (the chat read model says which threads are WhatsApp's; a reply's
    /// later changes are read from the store), and the keys that open the texts read there;
    /// without them every reply is asked about.
    pool: Option<(PgPool, Keyring)>,
    /// command-api, as a platform service.
    client: CommandClient,
    /// Channels of the threads seen lately, as the chat read model gave them.
    channels: Mutex<HashMap<String, String>>,
}

/// Thread channels remembered at most; past it, an arbitrary one is forgotten.
const REMEMBERED_CHANNELS: usize = 10_000;

impl WhatsAppOutbox {
    /// An outbox forwarding through `client`.
    pub fn new(pool: Option<(PgPool, Keyring)>, client: CommandClient) -> Self {
        Self {
            pool,
            client,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// The channel of `thread` as the chat read model knows it (`None`: not yet, or no read
    /// models to ask).
    async fn channel_of(&self, thread: &str) -> Result<Option<String>, ProjectionError> {
        let Some((pool, _)) = &self.pool else {
            return Ok(None);
        };
        let remembered = |channels: &Mutex<HashMap<String, String>>| {
            channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(thread)
                .cloned()
        };
        if let Some(channel) = remembered(&self.channels) {
            return Ok(Some(channel));
        }
        let channel: Option<String> =
            sqlx::query_scalar("SELECT channel FROM chat_threads WHERE id = $1::uuid")
                .bind(thread)
                .fetch_optional(pool)
                .await?;
        if let Some(channel) = &channel {
            let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
            if channels.len() >= REMEMBERED_CHANNELS {
                if let Some(victim) = channels.keys().next().cloned() {
                    channels.remove(&victim);
                }
            }
            channels.insert(thread.to_owned(), channel.clone());
        }
        Ok(channel)
    }

    /// The latest change of message `message` of `thread` committed after `sequence`: its
    /// event type and, for an edit, the new text.
    async fn later_change(
        &self,
        thread: &str,
        sequence: u64,
        message: &str,
    ) -> Result<Option<(String, Option<String>)>, ProjectionError> {
        let Some((pool, keyring)) = &self.pool else {
            return Ok(None);
        };
        let change: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT event_type, payload->'MessageEdited'->>'text' FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
                AND event_type IN ('MessageEdited', 'MessageDeleted')
                AND payload->event_type->>'message_id' = $4
              ORDER BY sequence DESC LIMIT 1",
        )
        .bind(THREAD)
        .bind(thread)
        .bind(sequence as i64)
        .bind(message)
        .fetch_optional(pool)
        .await?;
        Ok(match change {
            Some((kind, Some(text))) => Some((kind, Some(keyring.open(&text).await?))),
            other => other,
        })
    }

    /// What a thread event asks of the WhatsApp context: the message, the path to post to
    /// and the body. `None`: nothing (not an agent's or the bot's reply, or a change that a
    /// later one supersedes).
    async fn request_of(
        &self,
        envelope: &Envelope,
    ) -> Result<Option<(String, String, serde_json::Value)>, ProjectionError> {
        let thread = envelope.aggregate_id.as_str();
        let request = match serde_json::from_value::<ThreadEvent>(envelope.payload.clone()) {
            Ok(ThreadEvent::MessageSent {
                message_id,
                author,
                text,
                attachment,
                ..
            }) if matches!(author.kind, PartyKind::Agent | PartyKind::Bot) => {
                let text = match self
                    .later_change(thread, envelope.sequence, &message_id)
                    .await?
                {
                    // Deleted before it was forwarded: it never leaves.
                    Some((kind, _)) if kind == "MessageDeleted" => return Ok(None),
                    Some((_, Some(edited))) => edited,
                    _ => text,
                };
                let path = format!("/v1/whatsapp/threads/{thread}/messages/{message_id}/forward");
                let body = json!({"text": text, "attachment": attachment});
                (message_id, path, body)
            }
            // A reply changed in its thread: withdrawn or revised if it has not gone
            // out, else the agent is told the contact has the original. An edit
            // changed again since is left to the latest change.
            Ok(ThreadEvent::MessageEdited {
                message_id, text, ..
            }) => {
                if self
                    .later_change(thread, envelope.sequence, &message_id)
                    .await?
                    .is_some()
                {
                    return Ok(None);
                }
                let path = format!("/v1/whatsapp/threads/{thread}/messages/{message_id}/change");
                (message_id, path, json!({"change": "edit", "text": text}))
            }
            Ok(ThreadEvent::MessageDeleted { message_id, .. }) => {
                let path = format!("/v1/whatsapp/threads/{thread}/messages/{message_id}/change");
                (message_id, path, json!({"change": "delete"}))
            }
            _ => return Ok(None),
        };
        Ok(Some(request))
    }

    /// Posts a forward or a change to command-api. A refusal for good is logged and passed
    /// over; a busy conversation or an unavailable command-api is tried again.
    async fn post(
        &self,
        thread: &str,
        message_id: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(), ProjectionError> {
        match self.client.post_json(path, body).await {
            Ok(r) if r.status().is_success() => {}
            // Refused for good (an unknown thread or message): nothing to retry. A busy
            // conversation (409 `contention`, 429) is tried again.
            Ok(r) if r.status().is_client_error() => {
                let status = r.status();
                if crate::whatsapp::sender::busy(r).await {
                    return Err(ProjectionError::Unavailable(format!(
                        "command-api answered {status}"
                    )));
                }
                // A change of a reply deleted before it was forwarded finds nothing to
                // change: expected.
                if status.as_u16() == 404 && path.ends_with("/change") {
                    tracing::debug!(thread, message_id, "change of a reply never forwarded");
                } else {
                    tracing::warn!(thread, message_id, %status, "reply not forwarded");
                }
            }
            Ok(r) => {
                return Err(ProjectionError::Unavailable(format!(
                    "command-api answered {}",
                    r.status()
                )))
            }
            Err(e) => return Err(ProjectionError::Unavailable(e.to_string())),
        }
        Ok(())
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
        let changes = ["MessageSent", "MessageEdited", "MessageDeleted"];
        for envelope in events
            .iter()
            .filter(|e| e.aggregate_type == THREAD && changes.contains(&e.event_type.as_str()))
        {
            let thread = envelope.aggregate_id.as_str();
            let channel = self.channel_of(thread).await?;
            if channel.as_deref().is_some_and(|c| c != "whatsapp") {
                continue;
            }
            let Some((message_id, path, body)) = self.request_of(envelope).await? else {
                continue;
            };
            self.post(thread, &message_id, &path, &body).await?;
        }
        Ok(())
    }
}
