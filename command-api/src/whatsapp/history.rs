//! A conversation's own events, read back for the messages its state no longer holds, and
//! its contact's data keys ([`History`]): the command side's own store, not a read model.

use async_trait::async_trait;
use events::whatsapp::ConversationEvent;
use sqlx::PgPool;

use events::keyring::{KeyError, Keyring, Subject, SubjectKind};

use super::aggregate::{ConversationError, History};

/// The platform's message id an event of a conversation is about, as SQL: every event but
/// `Started` names one, under its variant's key (`MessageFailed`'s event type differs from
/// its key, so the type column cannot stand in). The same expression as the index
/// `events_whatsapp_message_ids_2` (migration 0027), so the planner uses it.
const MESSAGE_ID: &str = "coalesce(payload->'MessageReceived'->>'message_id',
                                   payload->'MessageQueued'->>'message_id',
                                   payload->'SendAttempted'->>'message_id',
                                   payload->'SendAttemptFailed'->>'message_id',
                                   payload->'MessageSent'->>'message_id',
                                   payload->'MessageFailed'->>'message_id',
                                   payload->'StatusUpdated'->>'message_id',
                                   payload->'MediaStored'->>'message_id',
                                   payload->'MediaFailed'->>'message_id',
                                   payload->'MessageRevised'->>'message_id',
                                   payload->'ChangeNotDelivered'->>'message_id')";

/// Look-ups in the event store, and the key table.
pub struct PgHistory {
    /// The command-side pool.
    pub pool: PgPool,
    /// The data keys contacts' personal data is sealed with.
    pub keyring: Keyring,
}

#[async_trait]
impl History for PgHistory {
    async fn message_events(
        &self,
        conversation: &str,
        message_id: &str,
    ) -> Result<Vec<ConversationEvent>, String> {
        let payloads: Vec<serde_json::Value> = sqlx::query_scalar(&format!(
            "SELECT payload FROM events
              WHERE aggregate_type = 'whatsapp_conversation' AND aggregate_id = $1
                AND {MESSAGE_ID} = $2
              ORDER BY sequence"
        ))
        .bind(conversation)
        .bind(message_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| e.to_string())?;
        payloads
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
    }

    async fn message_of_wamid(
        &self,
        conversation: &str,
        wamid: &str,
    ) -> Result<Option<String>, String> {
        sqlx::query_scalar(
            "SELECT payload->'MessageSent'->>'message_id' FROM events
              WHERE aggregate_type = 'whatsapp_conversation' AND event_type = 'MessageSent'
                AND aggregate_id = $1 AND payload->'MessageSent'->>'wamid' = $2
              ORDER BY sequence DESC LIMIT 1",
        )
        .bind(conversation)
        .bind(wamid)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| e.to_string())
    }

    async fn seal(
        &self,
        tenant_id: &str,
        subject: uuid::Uuid,
        text: &str,
    ) -> Result<String, ConversationError> {
        let contact = Subject {
            id: subject,
            kind: SubjectKind::Contact,
            tenant_id,
        };
        self.keyring.seal(contact, text).await.map_err(|e| match e {
            KeyError::Erased => ConversationError::ContactErased,
            other => ConversationError::Unavailable(other.to_string()),
        })
    }

    async fn open(&self, text: &str) -> Result<String, String> {
        self.keyring.open(text).await.map_err(|e| e.to_string())
    }

    async fn is_erased(&self, subject: uuid::Uuid) -> Result<bool, String> {
        Ok(self
            .keyring
            .subject(subject)
            .await
            .map_err(|e| e.to_string())?
            .is_some_and(|known| known.erased))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn squeezed(sql: &str) -> String {
        sql.chars().filter(|c| !c.is_whitespace()).collect()
    }

    /// The look-up's expression is the index's, or the planner cannot use the index and
    /// every look-up reads the conversation's whole history.
    #[test]
    fn the_message_id_expression_is_the_indexed_one() {
        let ids = include_str!("../../../migrations/0027_whatsapp_message_ids_with_changes.sql");
        assert!(squeezed(ids).contains(&squeezed(MESSAGE_ID)));
        let wamids = include_str!("../../../migrations/0019_whatsapp_message_ids.sql");
        assert!(squeezed(wamids).contains(&squeezed("(payload->'MessageSent'->>'wamid')")));
    }
}
