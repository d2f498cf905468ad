//! Events of the chat bounded context (aggregate type `thread`).
//!
//! A thread is one conversation between a tenant and a customer (a chatbot user signed in
//! by phone, later a WhatsApp contact), its agents and its bot. Its messages, read receipts
//! and scheduled messages live in the thread's own stream, so every rule about them (who may
//! edit, what was read, whether a scheduled message is still due) is decided on one
//! aggregate. Version `1.0` of every event; docs/events.md lists every field.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

/// The aggregate type name in the store, subjects and audit URLs.
pub const THREAD: &str = "thread";

/// Where a thread's customer talks to the tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// The web chatbot.
    Web,
    /// WhatsApp.
    Whatsapp,
    /// SMS.
    Sms,
}

impl Channel {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Web => "web",
            Channel::Whatsapp => "whatsapp",
            Channel::Sms => "sms",
        }
    }
}

/// What kind of party a participant or an author is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PartyKind {
    /// A chatbot user signed in by phone (the customer).
    Phone,
    /// A tenant's staff member (admin or agent).
    Agent,
    /// The tenant's bot.
    Bot,
    /// The platform itself (a scheduler, a process manager).
    System,
    /// Someone reached through a channel (SMS, WhatsApp) by their number, without an
    /// account: the customer of such a thread. Their id is their data subject's id (see
    /// [`Party::contact`]); threads opened before it was kept name them by their number
    /// (E.164).
    Contact,
}

impl PartyKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PartyKind::Phone => "phone",
            PartyKind::Agent => "agent",
            PartyKind::Bot => "bot",
            PartyKind::System => "system",
            PartyKind::Contact => "contact",
        }
    }
}

/// Why the platform took a thread from its agent or department.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignmentReason {
    /// The agent can no longer take conversations (deactivated, or given a role that does
    /// not): the thread is back in its department's queue.
    AgentUnavailable,
    /// The department was removed: the thread stays with its agent, in no department.
    DepartmentRemoved,
}

impl AssignmentReason {
    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            AssignmentReason::AgentUnavailable => "agent_unavailable",
            AssignmentReason::DepartmentRemoved => "department_removed",
        }
    }
}

/// Someone taking part in a thread, or writing in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Party {
    /// The user id (a phone user's id, an admin user's id, a contact's subject id, `bot`, a
    /// component name).
    pub id: String,
    /// What kind of party.
    pub kind: PartyKind,
}

impl Party {
    /// The contact `address` (a number, however it is spelled:
    /// [`crate::telephony::party_address`]) is at `tenant`, named by their data subject's
    /// id, so the number itself never names them in an event or a read model; it travels
    /// sealed beside it (`Opened.customer_address`, docs/privacy.md).
    pub fn contact(tenant: &str, address: &str) -> Self {
        let address = crate::telephony::party_address(address);
        Party {
            id: crate::personal::subject_id(PartyKind::Contact.as_str(), tenant, &address)
                .to_string(),
            kind: PartyKind::Contact,
        }
    }
}

/// A file a message refers to, already stored in the blob store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Attachment {
    /// Blob key.
    #[cfg_attr(feature = "http", schema(min_length = 1, max_length = 512))]
    pub object_key: String,
    /// Media type, e.g. `image/png`.
    #[cfg_attr(feature = "http", schema(example = "image/png"))]
    pub content_type: String,
    /// File name to show, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "http", schema(max_length = 255))]
    pub name: Option<String>,
    /// Size in bytes.
    #[cfg_attr(feature = "http", schema(minimum = 1, maximum = 104857600))]
    pub size_bytes: u64,
}

/// Something that happened to a thread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum ThreadEvent {
    /// The thread was opened.
    Opened {
        /// The tenant it belongs to (also in the metadata; here because the aggregate
        /// decides every later command's access by it).
        tenant_id: String,
        /// Where the customer talks.
        channel: Channel,
        /// Who opened it.
        opened_by: Party,
        /// The customer, when the thread has one yet.
        #[serde(default)]
        customer: Option<Party>,
        /// The number of a customer of kind `contact`, sealed for them (personal): what
        /// staff reach them at. Absent for other customers, and in threads opened before it
        /// was kept (whose contact's id is the number).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        customer_address: Option<String>,
        /// A short subject line, if any.
        #[serde(default)]
        subject: Option<String>,
        /// Whether the bot answers (before a human takes over).
        bot_enabled: bool,
        /// Initial tags.
        #[serde(default)]
        tags: Vec<String>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Someone joined the thread.
    ParticipantAdded {
        /// Who.
        participant: Party,
    },
    /// The thread was assigned to an agent and/or a department (either may be none).
    Assigned {
        /// The agent now responsible.
        #[serde(default)]
        agent_id: Option<String>,
        /// The department now responsible.
        #[serde(default)]
        department: Option<String>,
        /// Why the platform changed it, when no one chose to: its agent or department went
        /// away (absent when staff assigned it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<AssignmentReason>,
    },
    /// The bot was switched on or off (off: a human has taken over).
    BotSwitched {
        /// Whether the bot answers now.
        enabled: bool,
    },
    /// The thread was closed.
    Closed {
        /// When.
        at: DateTime<Utc>,
    },
    /// A closed thread was opened again (by a new message or on request).
    Reopened {
        /// When.
        at: DateTime<Utc>,
    },
    /// The tags changed; `tags` is the whole new set, sorted.
    Tagged {
        /// The tags now.
        tags: Vec<String>,
    },
    /// A message was sent in the thread.
    MessageSent {
        /// Its id.
        message_id: String,
        /// Its 1-based position among the thread's messages (what receipts count).
        number: u64,
        /// Who wrote it.
        author: Party,
        /// The id the client gave it to de-duplicate retries, if any.
        #[serde(default)]
        client_message_id: Option<String>,
        /// The text (may be empty when there is an attachment).
        text: String,
        /// An attached file, if any.
        #[serde(default)]
        attachment: Option<Attachment>,
        /// The scheduled message it delivers, if it was scheduled.
        #[serde(default)]
        scheduled_id: Option<String>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The author changed a message's text.
    MessageEdited {
        /// Which message.
        message_id: String,
        /// The new text.
        text: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// A message was deleted: read models drop its text and attachment, a tombstone stays.
    MessageDeleted {
        /// Which message.
        message_id: String,
        /// Who deleted it.
        by: Party,
        /// When.
        at: DateTime<Utc>,
    },
    /// A participant has read every message up to `number`.
    Read {
        /// Who read.
        reader: Party,
        /// The number of the last message read.
        number: u64,
        /// When.
        at: DateTime<Utc>,
    },
    /// A message was scheduled for later delivery.
    MessageScheduled {
        /// The scheduled message's id.
        scheduled_id: String,
        /// Who scheduled it (and will be its author).
        author: Party,
        /// The text.
        text: String,
        /// An attached file, if any.
        #[serde(default)]
        attachment: Option<Attachment>,
        /// When it is due.
        due_at: DateTime<Utc>,
    },
    /// A scheduled message got a new due time.
    MessageRescheduled {
        /// Which one.
        scheduled_id: String,
        /// The new due time.
        due_at: DateTime<Utc>,
    },
    /// A scheduled message was cancelled; it will never be delivered.
    ScheduleCancelled {
        /// Which one.
        scheduled_id: String,
    },
    /// A due scheduled message was not delivered, and is not tried again unless staff
    /// reschedule it: its author can no longer write in the thread (`author_unavailable`:
    /// deactivated, or no longer the tenant's staff), or its delivery kept failing
    /// (`delivery_failed`).
    ScheduleFailed {
        /// Which one.
        scheduled_id: String,
        /// `author_unavailable` or `delivery_failed`.
        code: String,
        /// Why, for people.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for ThreadEvent {
    fn event_type(&self) -> String {
        match self {
            ThreadEvent::Opened { .. } => "Opened",
            ThreadEvent::ParticipantAdded { .. } => "ParticipantAdded",
            ThreadEvent::Assigned { .. } => "Assigned",
            ThreadEvent::BotSwitched { .. } => "BotSwitched",
            ThreadEvent::Closed { .. } => "Closed",
            ThreadEvent::Reopened { .. } => "Reopened",
            ThreadEvent::Tagged { .. } => "Tagged",
            ThreadEvent::MessageSent { .. } => "MessageSent",
            ThreadEvent::MessageEdited { .. } => "MessageEdited",
            ThreadEvent::MessageDeleted { .. } => "MessageDeleted",
            ThreadEvent::Read { .. } => "Read",
            ThreadEvent::MessageScheduled { .. } => "MessageScheduled",
            ThreadEvent::MessageRescheduled { .. } => "MessageRescheduled",
            ThreadEvent::ScheduleCancelled { .. } => "ScheduleCancelled",
            ThreadEvent::ScheduleFailed { .. } => "ScheduleFailed",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Questions about a thread's assignment that the command side (deciding an assignment) and
/// the projector's reassignment worker (releasing one) ask alike, as SQL over the command
/// side's own tables (migrations 0006 and 0022) and the tenant's events.
pub mod lookups {
    /// Whether admin user `$2` can take conversations of tenant `$1` now (a row only for
    /// staff of the tenant): active, and a tenant admin or an agent. Its role is its last
    /// `RoleChanged` or else its `Created` one; deactivations and role changes are recorded
    /// in `access_changes` in the transaction of their event.
    pub const AVAILABLE_AGENT: &str = "SELECT coalesce((c.state->>'active')::boolean, true)
            AND coalesce(c.state->>'role', v.payload #>> '{Created,role}') IN ('tenant_admin', 'agent')
       FROM admin_emails e
       JOIN events v ON v.aggregate_type = 'admin_user' AND v.aggregate_id = e.user_id
                    AND v.sequence = 1
       LEFT JOIN access_changes c ON c.key = 'user:' || e.user_id
      WHERE e.user_id = $2 AND e.tenant_id = $1";

    /// Whether admin user `$2` may still write in tenant `$1`'s threads (a row only for
    /// the tenant's staff and super admins): active now, as `access_changes` records it.
    pub const ACTIVE_STAFF: &str = "SELECT coalesce((c.state->>'active')::boolean, true)
       FROM admin_emails e
       JOIN events v ON v.aggregate_type = 'admin_user' AND v.aggregate_id = e.user_id
                    AND v.sequence = 1
       LEFT JOIN access_changes c ON c.key = 'user:' || e.user_id
      WHERE e.user_id = $2 AND (e.tenant_id = $1 OR e.tenant_id IS NULL)";

    /// Whether tenant `$1` has department `$2` now, from its own events (its last
    /// `DepartmentAdded` or `DepartmentRemoved` of that name; a tenant has few events).
    /// Department names compare without regard to case: "sales" is "Sales".
    pub const DEPARTMENT_EXISTS: &str = "SELECT event_type = 'DepartmentAdded' FROM events
      WHERE aggregate_type = 'tenant' AND aggregate_id = $1
        AND event_type IN ('DepartmentAdded', 'DepartmentRemoved')
        AND lower(payload -> event_type ->> 'name') = lower($2)
      ORDER BY sequence DESC LIMIT 1";

    /// Department `$2` of tenant `$1` as the tenant spells it (a row with null when it was
    /// removed), found without regard to case.
    pub const DEPARTMENT_NAME: &str = "SELECT CASE WHEN event_type = 'DepartmentAdded'
                     THEN payload -> event_type ->> 'name' END
       FROM events
      WHERE aggregate_type = 'tenant' AND aggregate_id = $1
        AND event_type IN ('DepartmentAdded', 'DepartmentRemoved')
        AND lower(payload -> event_type ->> 'name') = lower($2)
      ORDER BY sequence DESC LIMIT 1";
}
