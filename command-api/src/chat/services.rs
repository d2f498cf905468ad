//! What the thread aggregate needs beyond the state it keeps: whether an agent, a
//! department or a phone user exists in the tenant (look-ups in other contexts' tables, read
//! at the moment of the command), and its own older messages (read from its events).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use events::chat::lookups::{ACTIVE_STAFF, AVAILABLE_AGENT, DEPARTMENT_NAME};
use events::chat::{Party, PartyKind, ThreadEvent};
use events::keyring::{KeyError, Keyring, Subject, SubjectKind};
use sqlx::PgPool;

/// The message id a thread's `MessageSent` or `MessageDeleted` event is about, as SQL: the
/// expression of the index `events_thread_message_ids` (migration 0018), so the planner uses
/// it.
const MESSAGE_ID: &str = "coalesce(payload->'MessageSent'->>'message_id',
                                   payload->'MessageDeleted'->>'message_id')";

/// A message older than those a thread keeps in its state, as the thread's events tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PastMessage {
    /// Its id.
    pub id: String,
    /// Its number.
    pub number: u64,
    /// Who wrote it.
    pub author: Party,
    /// When it was sent.
    pub at: DateTime<Utc>,
    /// Whether it has an attachment.
    pub has_attachment: bool,
    /// Whether it was deleted since.
    pub deleted: bool,
}

impl PastMessage {
    /// Folds the `MessageSent` and `MessageDeleted` events of one message, in order.
    pub fn from_events(events: impl IntoIterator<Item = ThreadEvent>) -> Option<Self> {
        let mut message: Option<PastMessage> = None;
        for event in events {
            match event {
                ThreadEvent::MessageSent {
                    message_id,
                    number,
                    author,
                    attachment,
                    at,
                    ..
                } if message.is_none() => {
                    message = Some(PastMessage {
                        id: message_id,
                        number,
                        author,
                        at,
                        has_attachment: attachment.is_some(),
                        deleted: false,
                    });
                }
                ThreadEvent::MessageDeleted { .. } => {
                    if let Some(m) = message.as_mut() {
                        m.deleted = true;
                    }
                }
                _ => {}
            }
        }
        message
    }
}

/// Who and what exists in a tenant.
#[async_trait]
pub trait Directory: Send + Sync {
    /// True when `user_id` is an admin user (any role) of `tenant_id`.
    async fn is_staff(&self, tenant_id: &str, user_id: &str) -> Result<bool, String>;
    /// True when `user_id` can take conversations of `tenant_id` now: an active admin user
    /// of the tenant whose role handles conversations (a tenant admin or an agent).
    async fn is_available(&self, tenant_id: &str, user_id: &str) -> Result<bool, String>;
    /// True when `user_id` may still write in `tenant_id`'s threads: an active admin user
    /// of the tenant (any role), or an active super admin.
    async fn is_active_staff(&self, tenant_id: &str, user_id: &str) -> Result<bool, String>;
    /// The tenant's department `name` as the tenant spells it, if it has it (names compare
    /// without regard to case).
    async fn department(&self, tenant_id: &str, name: &str) -> Result<Option<String>, String>;
    /// True when `user_id` is a phone user of `tenant_id`.
    async fn is_phone_user(&self, tenant_id: &str, user_id: &str) -> Result<bool, String>;
    /// Message `message_id` of thread `thread_id`, from the thread's own events (the
    /// command side's own state, not a read model).
    async fn past_message(
        &self,
        thread_id: &str,
        message_id: &str,
    ) -> Result<Option<PastMessage>, String>;
    /// `text` sealed for `person`, a data subject of `tenant_id` (docs/privacy.md).
    async fn seal(&self, tenant_id: &str, person: &Party, text: &str) -> Result<String, SealError>;
    /// True when data subject `subject` was erased.
    async fn is_erased(&self, subject: uuid::Uuid) -> Result<bool, String>;
}

/// The data subject `person` of `tenant_id` is: `None` for the bot and the platform, who are
/// no one.
pub fn subject_of(tenant_id: &str, person: &Party) -> Option<(uuid::Uuid, SubjectKind)> {
    let kind = match person.kind {
        PartyKind::Phone => SubjectKind::PhoneUser,
        PartyKind::Contact => SubjectKind::Contact,
        PartyKind::Agent => SubjectKind::AdminUser,
        PartyKind::Bot | PartyKind::System => return None,
    };
    Some((
        events::personal::subject_id(kind.as_str(), tenant_id, &person.id),
        kind,
    ))
}

/// Why a text could not be sealed for its person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealError {
    /// The person was erased: nothing new is kept about them.
    Erased,
    /// The key table could not be read or written.
    Unavailable(String),
}

/// The services of the thread aggregate.
pub type ChatServices = std::sync::Arc<dyn Directory>;

/// Look-ups in PostgreSQL, all on the command side: admin users by their login e-mail
/// reservation (so a user is known the moment it is created) and their state as the
/// transaction of each change records it (`access_changes`, migration 0022), departments
/// from the tenant's own events, phone users in `phone_users`.
pub struct PgDirectory {
    /// The command-side pool.
    pub pool: PgPool,
    /// The data keys personal data is sealed with.
    pub keyring: Keyring,
}

#[async_trait]
impl Directory for PgDirectory {
    async fn is_staff(&self, tenant_id: &str, user_id: &str) -> Result<bool, String> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM admin_emails e
                             JOIN events v ON v.aggregate_type = 'admin_user'
                                          AND v.aggregate_id = e.user_id AND v.sequence = 1
                            WHERE e.user_id = $2 AND e.tenant_id = $1)",
        )
        .bind(tenant_id)
        .bind(user_id)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| e.to_string())
    }

    async fn is_available(&self, tenant_id: &str, user_id: &str) -> Result<bool, String> {
        let available: Option<bool> = sqlx::query_scalar(AVAILABLE_AGENT)
            .bind(tenant_id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        Ok(available.unwrap_or(false))
    }

    async fn department(&self, tenant_id: &str, name: &str) -> Result<Option<String>, String> {
        let found: Option<Option<String>> = sqlx::query_scalar(DEPARTMENT_NAME)
            .bind(tenant_id)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        Ok(found.flatten())
    }

    async fn is_active_staff(&self, tenant_id: &str, user_id: &str) -> Result<bool, String> {
        let active: Option<bool> = sqlx::query_scalar(ACTIVE_STAFF)
            .bind(tenant_id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        Ok(active.unwrap_or(false))
    }

    async fn is_phone_user(&self, tenant_id: &str, user_id: &str) -> Result<bool, String> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM phone_users WHERE user_id = $2 AND tenant_id = $1)",
        )
        .bind(tenant_id)
        .bind(user_id)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| e.to_string())
    }

    /// By the index `events_thread_message_ids` (migration 0018): the literals match its
    /// predicate, so the planner can use it for every call.
    async fn past_message(
        &self,
        thread_id: &str,
        message_id: &str,
    ) -> Result<Option<PastMessage>, String> {
        let payloads: Vec<serde_json::Value> = sqlx::query_scalar(&format!(
            "SELECT payload FROM events
              WHERE aggregate_type = 'thread'
                AND event_type IN ('MessageSent', 'MessageDeleted')
                AND aggregate_id = $1 AND {MESSAGE_ID} = $2
              ORDER BY sequence"
        ))
        .bind(thread_id)
        .bind(message_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| e.to_string())?;
        let events = payloads
            .into_iter()
            .map(serde_json::from_value::<ThreadEvent>)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        Ok(PastMessage::from_events(events))
    }

    async fn seal(&self, tenant_id: &str, person: &Party, text: &str) -> Result<String, SealError> {
        let Some((id, kind)) = subject_of(tenant_id, person) else {
            return Ok(text.to_owned());
        };
        let subject = Subject {
            id,
            kind,
            tenant_id,
        };
        self.keyring.seal(subject, text).await.map_err(|e| match e {
            KeyError::Erased => SealError::Erased,
            other => SealError::Unavailable(other.to_string()),
        })
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

    /// The look-up's expression is the index's, or the planner cannot use the index and
    /// every look-up reads the thread's whole history.
    #[test]
    fn the_message_id_expression_is_the_indexed_one() {
        let squeezed =
            |sql: &str| -> String { sql.chars().filter(|c| !c.is_whitespace()).collect() };
        let migration = include_str!("../../../migrations/0018_thread_message_ids.sql");
        assert!(squeezed(migration).contains(&squeezed(MESSAGE_ID)));
    }
}
