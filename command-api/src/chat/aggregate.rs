//! The thread aggregate: every rule about a conversation, its messages, receipts and
//! scheduled messages is decided here.
//!
//! Access is a rule too: a command from someone who may not see the thread (another
//! tenant's staff, a phone user who does not take part) is answered as if the thread did not
//! exist, so ids of other tenants' threads reveal nothing.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use events::chat::{AssignmentReason, Attachment, Channel, Party, PartyKind, ThreadEvent, THREAD};
use serde::{Deserialize, Serialize};

use super::commands::{Action, Actor, Release, ThreadCommand};
use super::services::{subject_of, ChatServices, PastMessage, SealError};
use super::values::{self, MessageText};

/// How long an author may edit a message after sending it.
pub const EDIT_WINDOW: Duration = Duration::minutes(15);
/// How far ahead a message may be scheduled.
pub const SCHEDULE_HORIZON: Duration = Duration::days(90);
/// How many of its latest messages a thread keeps in its state. Older ones are read from the
/// thread's own events when a command names them (an edit, a deletion, a late retry), so
/// decisions do not depend on it. A retry is recognised by its message id at any age, and
/// also by its client id among these.
pub const RECENT_MESSAGES: usize = 256;

/// A message as the rules need it (its text lives in events and read models only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct MessageState {
    /// Its id.
    id: String,
    /// Its number.
    number: u64,
    /// Who wrote it.
    author: Party,
    /// The id its client gave it, if any (retries are recognised by it, per author).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    /// When it was sent.
    at: DateTime<Utc>,
    /// Whether it has an attachment (an edit may then leave the text empty).
    has_attachment: bool,
    /// Tombstoned.
    deleted: bool,
}

impl From<PastMessage> for MessageState {
    fn from(m: PastMessage) -> Self {
        MessageState {
            id: m.id,
            number: m.number,
            author: m.author,
            client_id: None,
            at: m.at,
            has_attachment: m.has_attachment,
            deleted: m.deleted,
        }
    }
}

/// Where a scheduled message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum ScheduleState {
    /// Waiting for its due time.
    Pending,
    /// Sent as a message.
    Delivered,
    /// Cancelled; never sent.
    Cancelled,
    /// Not delivered when due (its author gone, or delivery kept failing); sent only if
    /// rescheduled.
    Failed,
}

/// A scheduled message (kept whole: its delivery writes the message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Scheduled {
    /// Who scheduled it; the author of the delivered message.
    author: Party,
    /// Its text.
    text: String,
    /// Its attachment.
    attachment: Option<Attachment>,
    /// When it is due.
    due_at: DateTime<Utc>,
    /// Pending, delivered or cancelled.
    state: ScheduleState,
}

/// The state the rules need (also the snapshot form). Bounded: however long the thread, it
/// holds its last [`RECENT_MESSAGES`] messages, its participants' read positions and its
/// scheduled messages (finished ones without their text).
///
/// Unknown fields make a snapshot undecodable, so a snapshot of an older shape (which held
/// every message) is replaced by a replay rather than read as an empty thread.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thread {
    /// The owning tenant; `None` until opened.
    tenant_id: Option<String>,
    /// Closed threads reopen on a new message.
    closed: bool,
    /// Who takes part (customer, agents who joined).
    participants: Vec<Party>,
    /// The assigned agent.
    agent_id: Option<String>,
    /// The assigned department.
    department: Option<String>,
    /// Whether the bot answers.
    bot_enabled: bool,
    /// The tags, sorted.
    tags: Vec<String>,
    /// How many messages it has had: the last one's number.
    message_count: u64,
    /// Its last [`RECENT_MESSAGES`] messages, oldest first.
    recent: VecDeque<MessageState>,
    /// Reader id → the last message number they read.
    reads: BTreeMap<String, u64>,
    /// Scheduled messages by id.
    scheduled: BTreeMap<String, Scheduled>,
    /// The customer the thread is with, if any.
    customer: Option<Party>,
    /// Where the customer talks (`None` in snapshots taken before it was kept: read as web).
    channel: Option<Channel>,
}

/// Why a thread command was refused. Each variant's doc names its HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThreadError {
    /// 404: no such thread, or the caller may not see it.
    #[error("thread not found")]
    NotFound,
    /// 409: a thread with this id already exists.
    #[error("a thread with this id already exists")]
    AlreadyExists,
    /// 403: the caller sees the thread but may not do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// 422: this caller may not open a thread on this channel.
    #[error("threads on this channel are opened by the platform")]
    ChannelNotAllowed,
    /// 409: a message from a channel names a thread that is not its sender's conversation
    /// on that channel (another channel's, or another customer's).
    #[error("the thread is not this sender's conversation on this channel")]
    NotTheSendersThread,
    /// 422: the subject is not 1–200 characters without control characters.
    #[error("the subject must be 1 to 200 characters without control characters")]
    InvalidSubject,
    /// 422: a tag is not 1–40 characters, or there are more than 20.
    #[error("tags must be 1 to 40 characters without control characters, at most 20")]
    InvalidTags,
    /// 422: the text is over 4,096 characters.
    #[error("a message must not exceed 4096 characters")]
    TextTooLong,
    /// 422: the text holds control characters other than line breaks and tabs.
    #[error("a message must not contain control characters other than line breaks and tabs")]
    InvalidText,
    /// 422: neither text nor attachment.
    #[error("a message needs a text or an attachment")]
    EmptyMessage,
    /// 422: the attachment reference is malformed.
    #[error(
        "the attachment needs a plain object key, a media type and a size of 1 byte to 100 MiB"
    )]
    InvalidAttachment,
    /// 422: the client message id is not 1–100 characters without control characters and
    /// without leading or trailing spaces.
    #[error(
        "client_message_id must be 1 to 100 characters without control characters or surrounding spaces"
    )]
    InvalidClientMessageId,
    /// 422: the customer is not a phone user of the tenant.
    #[error("the customer is not a phone user of this tenant")]
    UnknownCustomer,
    /// 422: the agent is not staff of the tenant.
    #[error("the agent is not staff of this tenant")]
    UnknownAgent,
    /// 422: the agent is staff of the tenant but cannot take conversations now
    /// (deactivated, or in a role that does not).
    #[error("the agent is deactivated or cannot take conversations")]
    AgentUnavailable,
    /// 422: the tenant has no such department.
    #[error("the tenant has no such department")]
    UnknownDepartment,
    /// 422: only phone users and agents can be added as participants.
    #[error("only phone users and agents can take part in a thread")]
    InvalidParticipant,
    /// 404: the thread has no message with this id.
    #[error("message not found")]
    MessageNotFound,
    /// 422: a receipt names a message number the thread does not have.
    #[error("the thread has no message with this number")]
    UnknownMessageNumber,
    /// 403: only the author may edit a message (or, for a customer, delete it).
    #[error("only the author may change this message")]
    NotAuthor,
    /// 422: the 15-minute edit window is over.
    #[error("a message can be edited only within 15 minutes of sending it")]
    EditWindowClosed,
    /// 422: the message was deleted.
    #[error("the message was deleted")]
    MessageDeleted,
    /// 422: the due time is not in the future.
    #[error("a message must be scheduled for a time in the future")]
    DueInPast,
    /// 422: the due time is more than 90 days ahead.
    #[error("a message can be scheduled at most 90 days ahead")]
    DueTooFar,
    /// 404: the thread has no scheduled message with this id.
    #[error("scheduled message not found")]
    ScheduledNotFound,
    /// 422: the scheduled message was already delivered or cancelled.
    #[error("the scheduled message was already delivered or cancelled")]
    ScheduleNotPending,
    /// 409: the scheduled message is not due yet (it was rescheduled).
    #[error("the scheduled message is not due yet")]
    NotDue,
    /// 410: the person the text would be sealed for (the thread's customer, or the staff
    /// author of a note in a thread without one) was erased (docs/privacy.md): nothing new
    /// is kept about them.
    #[error("the person this text is about was erased: nothing new is kept about them")]
    SubjectErased,
    /// 503: a look-up in another context failed.
    #[error("directory unavailable: {0}")]
    Unavailable(String),
}

impl Scheduled {
    /// Delivered or cancelled: what it would have sent is no longer needed.
    fn finish(&mut self, state: ScheduleState) {
        self.state = state;
        self.text = String::new();
        self.attachment = None;
    }
}

/// What the caller is to this thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// The tenant's staff (or a super admin).
    Staff,
    /// A customer taking part.
    Participant,
    /// The platform.
    System,
}

/// What every rule of a thread command decides with: the command's thread, caller and
/// time, the caller's access, the thread's tenant, and the aggregate's services.
#[derive(Clone, Copy)]
struct Decision<'a> {
    /// The thread the command names.
    thread_id: &'a str,
    /// Who asks.
    actor: &'a Actor,
    /// What the caller is to the thread.
    access: Access,
    /// The thread's tenant.
    tenant: &'a str,
    /// When.
    at: DateTime<Utc>,
    /// Lookups of the command side.
    services: &'a ChatServices,
}

/// The party an actor writes as.
fn party(actor: &Actor) -> Party {
    match actor {
        Actor::Staff { user_id, .. } => Party {
            id: user_id.clone(),
            kind: PartyKind::Agent,
        },
        Actor::Phone { user_id, .. } => Party {
            id: user_id.clone(),
            kind: PartyKind::Phone,
        },
        Actor::System { component } => Party {
            id: component.clone(),
            kind: PartyKind::System,
        },
    }
}

/// Whether `id` could be a message's id: what the look-up of an older message may be asked.
fn plausible_id(id: &str) -> bool {
    values::label(id, values::MAX_ID_CHARS).as_deref() == Some(id)
}

/// A message text as the rules accept it.
fn text(raw: &str, attachment: bool) -> Result<String, ThreadError> {
    let parsed = MessageText::parse(raw).ok_or_else(|| {
        if raw.chars().count() > values::MAX_TEXT_CHARS {
            ThreadError::TextTooLong
        } else {
            ThreadError::InvalidText
        }
    })?;
    if parsed.is_blank() && !attachment {
        return Err(ThreadError::EmptyMessage);
    }
    Ok(parsed.into_inner())
}

/// An attachment reference: well-formed, and a blob of the thread's own tenant
/// (`tenants/{tenant_id}/…`), so a message cannot point at another tenant's files.
fn attachment(raw: Option<Attachment>, tenant: &str) -> Result<Option<Attachment>, ThreadError> {
    raw.map(|a| {
        values::attachment(a)
            .filter(|a| a.object_key.starts_with(&format!("tenants/{tenant}/")))
            .ok_or(ThreadError::InvalidAttachment)
    })
    .transpose()
}

impl From<SealError> for ThreadError {
    fn from(e: SealError) -> Self {
        match e {
            SealError::Erased => ThreadError::SubjectErased,
            SealError::Unavailable(cause) => ThreadError::Unavailable(cause),
        }
    }
}

/// A thread's subject line, checked, and sealed for its customer: it is theirs, as the
/// conversation is (docs/privacy.md). Without a customer it stays as it is.
async fn subject_line(
    subject: Option<String>,
    tenant_id: &str,
    customer: Option<&Party>,
    services: &ChatServices,
) -> Result<Option<String>, ThreadError> {
    let Some(line) = subject else {
        return Ok(None);
    };
    let line =
        values::label(&line, values::MAX_SUBJECT_CHARS).ok_or(ThreadError::InvalidSubject)?;
    match customer {
        Some(person) => Ok(Some(services.seal(tenant_id, person, &line).await?)),
        None => Ok(Some(line)),
    }
}

/// A new thread's customer as its `Opened` records them, with a contact's number sealed
/// for them: a contact is named by their subject id, and their number travels sealed beside
/// it (docs/privacy.md). Refused for an erased person.
async fn on_record(
    tenant_id: &str,
    customer: Option<Party>,
    services: &ChatServices,
) -> Result<(Option<Party>, Option<String>), ThreadError> {
    let (customer, address) = match customer {
        Some(c) if c.kind == PartyKind::Contact => (
            Some(Party::contact(tenant_id, &c.id)),
            Some(events::telephony::party_address(&c.id)),
        ),
        other => (other, None),
    };
    not_erased(tenant_id, customer.as_ref(), services).await?;
    let address = match (&customer, address) {
        (Some(person), Some(address)) => Some(services.seal(tenant_id, person, &address).await?),
        _ => None,
    };
    Ok((customer, address))
}

/// Refuses a thread with an erased person: nothing new is kept about them, not even that.
async fn not_erased(
    tenant_id: &str,
    customer: Option<&Party>,
    services: &ChatServices,
) -> Result<(), ThreadError> {
    let Some((subject, _)) = customer.and_then(|c| subject_of(tenant_id, c)) else {
        return Ok(());
    };
    match services.is_erased(subject).await {
        Ok(true) => Err(ThreadError::SubjectErased),
        Ok(false) => Ok(()),
        Err(e) => Err(ThreadError::Unavailable(e)),
    }
}

/// True when `text` is sealed for a data subject who was erased since (the text names its
/// subject: docs/privacy.md).
async fn sealed_for_erased(text: &str, services: &ChatServices) -> Result<bool, ThreadError> {
    match events::personal::SealedField::parse(text) {
        Some(field) => services
            .is_erased(field.subject)
            .await
            .map_err(ThreadError::Unavailable),
        None => Ok(false),
    }
}

/// A due time: after `now`, at most 90 days ahead.
fn due(now: DateTime<Utc>, due_at: DateTime<Utc>) -> Result<(), ThreadError> {
    if due_at <= now {
        Err(ThreadError::DueInPast)
    } else if due_at > now + SCHEDULE_HORIZON {
        Err(ThreadError::DueTooFar)
    } else {
        Ok(())
    }
}

impl Thread {
    /// The owning tenant, once opened.
    pub fn tenant_id(&self) -> Option<&str> {
        self.tenant_id.as_deref()
    }

    /// Whether it is closed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Where the customer talks, once opened.
    pub fn channel(&self) -> Option<Channel> {
        self.channel
    }

    /// The customer, if any.
    pub fn customer(&self) -> Option<&Party> {
        self.customer.as_ref()
    }

    /// The author of message `message_id` if it is among the thread's recent messages and
    /// was not deleted; `None` says nothing of older messages (see
    /// [`super::services::Directory::past_message`]).
    pub fn recent_author(&self, message_id: &str) -> Option<&Party> {
        self.recent_message(message_id)
            .filter(|m| !m.deleted)
            .map(|m| &m.author)
    }

    fn recent_message(&self, id: &str) -> Option<&MessageState> {
        self.recent.iter().rev().find(|m| m.id == id)
    }

    /// The customer, for an `actor` who may see the thread (`NotFound` otherwise).
    pub fn customer_seen_by(&self, actor: &Actor) -> Result<Option<&Party>, ThreadError> {
        self.access(actor)?;
        Ok(self.customer.as_ref())
    }

    /// What `actor` is to this thread; `NotFound` when it may not see it.
    fn access(&self, actor: &Actor) -> Result<Access, ThreadError> {
        let Some(tenant) = self.tenant_id.as_deref() else {
            return Err(ThreadError::NotFound);
        };
        match actor {
            Actor::Staff {
                tenant_id: None, ..
            } => Ok(Access::Staff),
            Actor::Staff {
                tenant_id: Some(home),
                ..
            } if home == tenant => Ok(Access::Staff),
            Actor::Phone { user_id, tenant_id }
                if tenant_id == tenant
                    && self
                        .participants
                        .iter()
                        .any(|p| p.kind == PartyKind::Phone && &p.id == user_id) =>
            {
                Ok(Access::Participant)
            }
            Actor::System { .. } => Ok(Access::System),
            _ => Err(ThreadError::NotFound),
        }
    }

    /// Like [`Thread::access`], and refuses customers.
    fn staff_only(&self, actor: &Actor) -> Result<(), ThreadError> {
        match self.access(actor)? {
            Access::Participant => Err(ThreadError::Forbidden(
                "Only the tenant's staff may do this.",
            )),
            Access::Staff | Access::System => Ok(()),
        }
    }

    /// Message `id`: from the recent ones, else from the thread's events.
    async fn message(
        &self,
        thread_id: &str,
        id: &str,
        services: &ChatServices,
    ) -> Result<MessageState, ThreadError> {
        if let Some(m) = self.recent_message(id) {
            return Ok(m.clone());
        }
        // An id no message can have (a NUL, control characters: PostgreSQL would refuse the
        // look-up, and retrying would not help) names no message.
        if self.holds_every_message() || !plausible_id(id) {
            return Err(ThreadError::MessageNotFound);
        }
        services
            .past_message(thread_id, id)
            .await
            .map_err(ThreadError::Unavailable)?
            .map(MessageState::from)
            .ok_or(ThreadError::MessageNotFound)
    }

    /// Whether every message the thread has had is in [`Thread::recent`].
    fn holds_every_message(&self) -> bool {
        self.recent.front().is_none_or(|m| m.number <= 1)
    }

    /// Whether the thread has a message with this id, or among its recent ones one by this
    /// author with this client id: the command is a retry.
    async fn seen(
        &self,
        thread_id: &str,
        message_id: &str,
        author: &str,
        client_id: Option<&str>,
        services: &ChatServices,
    ) -> Result<bool, ThreadError> {
        let recent = self.recent.iter().any(|m| {
            m.id == message_id
                || client_id
                    .is_some_and(|c| m.author.id == author && m.client_id.as_deref() == Some(c))
        });
        if recent || self.holds_every_message() || !plausible_id(message_id) {
            return Ok(recent);
        }
        Ok(services
            .past_message(thread_id, message_id)
            .await
            .map_err(ThreadError::Unavailable)?
            .is_some())
    }

    fn schedule(&self, id: &str) -> Result<&Scheduled, ThreadError> {
        self.scheduled.get(id).ok_or(ThreadError::ScheduledNotFound)
    }

    /// `Reopened` first when a message arrives in a closed thread.
    fn reopening(&self, at: DateTime<Utc>) -> Vec<ThreadEvent> {
        if self.closed {
            vec![ThreadEvent::Reopened { at }]
        } else {
            vec![]
        }
    }

    async fn open(
        &self,
        actor: &Actor,
        at: DateTime<Utc>,
        action: Action,
        services: &ChatServices,
    ) -> Result<Vec<ThreadEvent>, ThreadError> {
        let Action::Open {
            tenant_id,
            channel,
            customer,
            subject,
            tags,
            bot_enabled,
        } = action
        else {
            return Ok(vec![]);
        };
        if self.tenant_id.is_some() {
            // Whether an id is taken is nobody's business but those who may see the thread.
            return Err(match self.access(actor) {
                Ok(_) => ThreadError::AlreadyExists,
                Err(e) => e,
            });
        }
        let customer = match actor {
            Actor::Phone {
                tenant_id: home, ..
            } => {
                if home != &tenant_id || customer.is_some_and(|c| c != party(actor)) {
                    return Err(ThreadError::Forbidden(
                        "A customer opens threads for themselves only.",
                    ));
                }
                // Tags and the bot switch are the staff's, when opening as later.
                if !tags.is_empty() || bot_enabled.is_some() {
                    return Err(ThreadError::Forbidden(
                        "Only the tenant's staff may do this.",
                    ));
                }
                Some(party(actor))
            }
            Actor::Staff {
                tenant_id: Some(home),
                ..
            } if home != &tenant_id => {
                return Err(ThreadError::Forbidden(
                    "Staff open threads in their own tenant only.",
                ));
            }
            _ => named_customer(actor, customer, channel, &tenant_id, services).await?,
        };
        if channel != Channel::Web && !matches!(actor, Actor::System { .. }) {
            return Err(ThreadError::ChannelNotAllowed);
        }
        let (customer, customer_address) = on_record(&tenant_id, customer, services).await?;
        let subject = subject_line(subject, &tenant_id, customer.as_ref(), services).await?;
        let tags = values::tags(&tags).ok_or(ThreadError::InvalidTags)?;
        Ok(vec![ThreadEvent::Opened {
            tenant_id,
            channel,
            opened_by: party(actor),
            customer,
            customer_address,
            subject,
            bot_enabled: bot_enabled.unwrap_or(true),
            tags,
            at,
        }])
    }

    async fn decide(
        &self,
        command: ThreadCommand,
        services: &ChatServices,
    ) -> Result<Vec<ThreadEvent>, ThreadError> {
        let ThreadCommand {
            thread_id,
            actor,
            at,
            action,
        } = command;
        if matches!(action, Action::Open { .. }) {
            return self.open(&actor, at, action, services).await;
        }
        let access = self.access(&actor)?;
        let tenant = self.tenant_id.clone().unwrap_or_default();
        let d = Decision {
            thread_id: &thread_id,
            actor: &actor,
            access,
            tenant: &tenant,
            at,
            services,
        };
        self.act(&d, action).await
    }

    /// What `action` appends, decided with `d`: one method per action.
    async fn act(&self, d: &Decision<'_>, action: Action) -> Result<Vec<ThreadEvent>, ThreadError> {
        let at = d.at;
        Ok(match action {
            Action::Open { .. } => vec![],
            Action::AddParticipant { participant } => self.add_participant(d, participant).await?,
            Action::Assign {
                agent_id,
                department,
            } => self.assign(d, agent_id, department).await?,
            Action::Release { what } => self.release(d, what).await?,
            Action::SwitchBot { enabled } => self.switch_bot(d, enabled).await?,
            Action::Close if self.closed => vec![],
            Action::Close => vec![ThreadEvent::Closed { at }],
            Action::Reopen => self.reopening(at),
            Action::SetTags { tags } => self.set_tags(d, tags).await?,
            Action::Receive {
                message_id,
                text: raw,
                from,
                channel,
                attachment: raw_attachment,
            } => {
                self.receive(d, message_id, raw, from, channel, raw_attachment)
                    .await?
            }
            Action::Send {
                message_id,
                client_message_id,
                text: raw,
                attachment: raw_attachment,
            } => {
                self.send(d, message_id, client_message_id, raw, raw_attachment)
                    .await?
            }
            Action::Edit {
                message_id,
                text: raw,
            } => self.edit(d, message_id, raw).await?,
            Action::Delete { message_id } => self.delete(d, message_id).await?,
            Action::MarkRead { number } => self.mark_read(d, number).await?,
            Action::Schedule {
                scheduled_id,
                text: raw,
                attachment: raw_attachment,
                due_at,
            } => {
                self.schedule_message(d, scheduled_id, raw, raw_attachment, due_at)
                    .await?
            }
            Action::Reschedule {
                scheduled_id,
                due_at,
            } => self.reschedule(d, scheduled_id, due_at).await?,
            Action::CancelScheduled { scheduled_id } => {
                self.cancel_scheduled(d, scheduled_id).await?
            }
            Action::DeliverScheduled {
                scheduled_id,
                message_id,
            } => self.deliver_scheduled(d, scheduled_id, message_id).await?,
            Action::FailScheduled {
                scheduled_id,
                reason,
            } => self.fail_scheduled(d, scheduled_id, reason).await?,
        })
    }

    /// Switches the bot on or off (staff only).
    async fn switch_bot(
        &self,
        d: &Decision<'_>,
        enabled: bool,
    ) -> Result<Vec<ThreadEvent>, ThreadError> {
        let Decision { actor, .. } = *d;
        self.staff_only(actor)?;
        Ok(if enabled == self.bot_enabled {
            vec![]
        } else {
            vec![ThreadEvent::BotSwitched { enabled }]
        })
    }

    /// Replaces the tags (staff only).
    async fn set_tags(
        &self,
        d: &Decision<'_>,
        tags: Vec<String>,
    ) -> Result<Vec<ThreadEvent>, ThreadError> {
        let Decision { actor, .. } = *d;
        self.staff_only(actor)?;
        let tags = values::tags(&tags).ok_or(ThreadError::InvalidTags)?;
        Ok(if tags == self.tags {
            vec![]
        } else {
            vec![ThreadEvent::Tagged { tags }]
        })
    }

    /// Records that the caller read up to message `number`.
    async fn mark_read(
        &self,
        d: &Decision<'_>,
        number: u64,
    ) -> Result<Vec<ThreadEvent>, ThreadError> {
        let Decision { actor, at, .. } = *d;
        if number == 0 || number > self.message_count {
            return Err(ThreadError::UnknownMessageNumber);
        }
        let reader = party(actor);
        Ok(
            if self.reads.get(&reader.id).is_some_and(|n| *n >= number) {
                vec![]
            } else {
                vec![ThreadEvent::Read { reader, number, at }]
            },
        )
    }

    /// Cancels a pending (or failed) scheduled message (staff only).
    async fn cancel_scheduled(
        &self,
        d: &Decision<'_>,
        scheduled_id: String,
    ) -> Result<Vec<ThreadEvent>, ThreadError> {
        let Decision { actor, .. } = *d;
        self.staff_only(actor)?;
        Ok(match self.schedule(&scheduled_id)?.state {
            ScheduleState::Pending | ScheduleState::Failed => {
                vec![ThreadEvent::ScheduleCancelled { scheduled_id }]
            }
            ScheduleState::Cancelled => vec![],
            ScheduleState::Delivered => return Err(ThreadError::ScheduleNotPending),
        })
    }

    /// Adds a participant: a phone user or an agent of the tenant.
    async fn add_participant(
        &self,
        d: &Decision<'_>,
        participant: Party,
    ) -> Result<Vec<ThreadEvent>, ThreadError> {
        let Decision {
            actor,
            tenant,
            services,
            ..
        } = *d;
        self.staff_only(actor)?;
        if values::label(&participant.id, values::MAX_ID_CHARS).as_deref()
            != Some(participant.id.as_str())
        {
            return Err(ThreadError::InvalidParticipant);
        }
        let known = match participant.kind {
            PartyKind::Phone => services.is_phone_user(tenant, &participant.id).await,
            PartyKind::Agent => services.is_staff(tenant, &participant.id).await,
            PartyKind::Bot | PartyKind::System | PartyKind::Contact => {
                return Err(ThreadError::InvalidParticipant)
            }
        }
        .map_err(ThreadError::Unavailable)?;
        if !known {
            return Err(ThreadError::InvalidParticipant);
        }
        Ok(if self.participants.contains(&participant) {
            vec![]
        } else {
            vec![ThreadEvent::ParticipantAdded { participant }]
        })
    }

    /// Assigns the thread to an agent and/or a department of the tenant.
    async fn assign(
        &self,
        d: &Decision<'_>,
        agent_id: Option<String>,
        department: Option<String>,
    ) -> Result<Vec<ThreadEvent>, ThreadError> {
        let Decision {
            actor,
            tenant,
            services,
            ..
        } = *d;
        self.staff_only(actor)?;
        // A department as the tenant spells it ("sales" is "Sales").
        let department = match department {
            Some(name) => {
                if values::label(&name, values::MAX_ID_CHARS).as_deref() != Some(name.as_str()) {
                    return Err(ThreadError::UnknownDepartment);
                }
                Some(
                    services
                        .department(tenant, &name)
                        .await
                        .map_err(ThreadError::Unavailable)?
                        .ok_or(ThreadError::UnknownDepartment)?,
                )
            }
            None => None,
        };
        if agent_id == self.agent_id && department == self.department {
            return Ok(vec![]);
        }
        if let Some(agent) = &agent_id {
            if values::label(agent, values::MAX_ID_CHARS).as_deref() != Some(agent) {
                return Err(ThreadError::UnknownAgent);
            }
            if !services
                .is_staff(tenant, agent)
                .await
                .map_err(ThreadError::Unavailable)?
            {
                return Err(ThreadError::UnknownAgent);
            }
            // Also when the thread already has them: staff choosing (again) an
            // agent who left would record a choice no one can act on.
            if !services
                .is_available(tenant, agent)
                .await
                .map_err(ThreadError::Unavailable)?
            {
                return Err(ThreadError::AgentUnavailable);
            }
        }
        Ok(vec![ThreadEvent::Assigned {
            agent_id,
            department,
            reason: None,
        }])
    }

    /// Takes the thread from an agent or a department that went away (the platform only).
    async fn release(
        &self,
        d: &Decision<'_>,
        what: Release,
    ) -> Result<Vec<ThreadEvent>, ThreadError> {
        let Decision {
            actor,
            tenant,
            services,
            ..
        } = *d;
        if !matches!(self.access(actor)?, Access::System) {
            return Err(ThreadError::Forbidden(
                "Only the platform releases an assignment.",
            ));
        }
        // Only an open thread goes back to the queue: a closed one keeps who
        // handled it, and is released if it is reopened.
        if self.closed {
            return Ok(vec![]);
        }
        // A release that arrives late (a retry, a repeat) must not take the thread
        // from an agent who is back, or out of a department that was added again.
        let still_gone = match &what {
            Release::Agent(agent) => !services
                .is_available(tenant, agent)
                .await
                .map_err(ThreadError::Unavailable)?,
            Release::Department(name) => services
                .department(tenant, name)
                .await
                .map_err(ThreadError::Unavailable)?
                .is_none(),
        };
        if !still_gone {
            return Ok(vec![]);
        }
        Ok(match what {
            Release::Agent(agent) if self.agent_id.as_ref() == Some(&agent) => {
                vec![ThreadEvent::Assigned {
                    agent_id: None,
                    department: self.department.clone(),
                    reason: Some(AssignmentReason::AgentUnavailable),
                }]
            }
            Release::Department(name)
                if self
                    .department
                    .as_ref()
                    .is_some_and(|d| d.to_lowercase() == name.to_lowercase()) =>
            {
                vec![ThreadEvent::Assigned {
                    agent_id: self.agent_id.clone(),
                    department: None,
                    reason: Some(AssignmentReason::DepartmentRemoved),
                }]
            }
            // Already elsewhere: nothing to release (a repeat, or a later choice).
            _ => vec![],
        })
    }

    /// Records a message a channel delivered, in its sender's thread.
    async fn receive(
        &self,
        d: &Decision<'_>,
        message_id: String,
        raw: String,
        from: Party,
        channel: Channel,
        raw_attachment: Option<Attachment>,
    ) -> Result<Vec<ThreadEvent>, ThreadError> {
        let Decision {
            thread_id,
            access,
            tenant,
            at,
            services,
            ..
        } = *d;
        if access != Access::System {
            return Err(ThreadError::Forbidden(
                "Messages from a channel are delivered by the platform.",
            ));
        }
        // Only into the sender's own conversation on that channel: never credited to
        // another customer, nor appended to a thread of another channel. The sender comes
        // by number; the thread names its contact by subject id (or, opened before it did,
        // by the number too): the same person when both are the same subject.
        let customer = match &self.customer {
            Some(c)
                if c.kind == from.kind && subject_of(tenant, c) == subject_of(tenant, &from) =>
            {
                c
            }
            _ => return Err(ThreadError::NotTheSendersThread),
        };
        if self.channel.unwrap_or(Channel::Web) != channel {
            return Err(ThreadError::NotTheSendersThread);
        }
        let author = customer.clone();
        if self
            .seen(thread_id, &message_id, &author.id, None, services)
            .await?
        {
            return Ok(vec![]);
        }
        let attachment = attachment(raw_attachment, tenant)?;
        let attachment = self
            .sealed_attachment(d, &author, attachment, false)
            .await?;
        // What a contact sent arrives as sent, even blank (an SMS of spaces): the
        // provider delivered it, and staff should see that it came.
        let text = self.sealed(d, &author, text(&raw, true)?).await?;
        let mut events = self.reopening(at);
        events.push(ThreadEvent::MessageSent {
            message_id,
            number: self.message_count + 1,
            author,
            client_message_id: None,
            text,
            attachment,
            scheduled_id: None,
            at,
        });
        Ok(events)
    }

    /// `text` sealed for the person it is about (docs/privacy.md): the thread's customer (the
    /// conversation is theirs, whoever writes in it), or, in a thread without one, a staff
    /// author (their own words, under their own tenant). The bot's and the platform's words
    /// in such a thread, and an empty text, stay as they are.
    async fn sealed(
        &self,
        d: &Decision<'_>,
        author: &Party,
        text: String,
    ) -> Result<String, ThreadError> {
        if text.is_empty() {
            return Ok(text);
        }
        let (person, tenant) = match (&self.customer, d.actor) {
            (Some(customer), _) => (customer, d.tenant),
            (None, Actor::Staff { tenant_id, .. }) if author.kind == PartyKind::Agent => (
                author,
                tenant_id
                    .as_deref()
                    .unwrap_or(events::identity::PLATFORM_TENANT),
            ),
            _ => return Ok(text),
        };
        d.services
            .seal(tenant, person, &text)
            .await
            .map_err(ThreadError::from)
    }

    /// `attachment` with its file name sealed as a text is ([`Thread::sealed`]): a file's
    /// name says something about the person too. With `keep_sealed`, a name sealed already
    /// (a scheduled message's, as it is delivered) stays; a name a caller gives is always
    /// sealed, whatever it looks like.
    async fn sealed_attachment(
        &self,
        d: &Decision<'_>,
        author: &Party,
        attachment: Option<Attachment>,
        keep_sealed: bool,
    ) -> Result<Option<Attachment>, ThreadError> {
        let Some(mut attachment) = attachment else {
            return Ok(None);
        };
        attachment.name = match attachment.name.take() {
            Some(name) if keep_sealed && events::personal::is_sealed(&name) => Some(name),
            Some(name) => Some(self.sealed(d, author, name).await?),
            None => None,
        };
        Ok(Some(attachment))
    }

    /// Records a message a participant or staff member sent.
    async fn send(
        &self,
        d: &Decision<'_>,
        message_id: String,
        client_message_id: Option<String>,
        raw: String,
        raw_attachment: Option<Attachment>,
    ) -> Result<Vec<ThreadEvent>, ThreadError> {
        let Decision {
            thread_id,
            actor,
            tenant,
            at,
            services,
            ..
        } = *d;
        let author = party(actor);
        let client_message_id = client_message_id
            .map(|c| {
                values::label(&c, values::MAX_CLIENT_ID_CHARS)
                    .filter(|l| *l == c)
                    .ok_or(ThreadError::InvalidClientMessageId)
            })
            .transpose()?;
        let client_id = client_message_id.as_deref();
        if self
            .seen(thread_id, &message_id, &author.id, client_id, services)
            .await?
        {
            return Ok(vec![]);
        }
        let attachment = attachment(raw_attachment, tenant)?;
        let text = self
            .sealed(d, &author, text(&raw, attachment.is_some())?)
            .await?;
        let attachment = self
            .sealed_attachment(d, &author, attachment, false)
            .await?;
        let mut events = self.reopening(at);
        events.push(ThreadEvent::MessageSent {
            message_id,
            number: self.message_count + 1,
            author,
            client_message_id,
            text,
            attachment,
            scheduled_id: None,
            at,
        });
        Ok(events)
    }

    /// Edits the caller's own message within the edit window.
    async fn edit(
        &self,
        d: &Decision<'_>,
        message_id: String,
        raw: String,
    ) -> Result<Vec<ThreadEvent>, ThreadError> {
        let Decision {
            thread_id,
            actor,
            at,
            services,
            ..
        } = *d;
        let message = self.message(thread_id, &message_id, services).await?;
        if message.deleted {
            return Err(ThreadError::MessageDeleted);
        }
        if message.author != party(actor) {
            return Err(ThreadError::NotAuthor);
        }
        if at - message.at > EDIT_WINDOW {
            return Err(ThreadError::EditWindowClosed);
        }
        let text = self
            .sealed(d, &message.author, text(&raw, message.has_attachment)?)
            .await?;
        Ok(vec![ThreadEvent::MessageEdited {
            message_id,
            text,
            at,
        }])
    }

    /// Deletes a message (a tombstone).
    async fn delete(
        &self,
        d: &Decision<'_>,
        message_id: String,
    ) -> Result<Vec<ThreadEvent>, ThreadError> {
        let Decision {
            thread_id,
            actor,
            access,
            at,
            services,
            ..
        } = *d;
        let message = self.message(thread_id, &message_id, services).await?;
        if access == Access::Participant && message.author != party(actor) {
            return Err(ThreadError::NotAuthor);
        }
        Ok(if message.deleted {
            vec![]
        } else {
            vec![ThreadEvent::MessageDeleted {
                message_id,
                by: party(actor),
                at,
            }]
        })
    }

    /// Schedules a message for later.
    async fn schedule_message(
        &self,
        d: &Decision<'_>,
        scheduled_id: String,
        raw: String,
        raw_attachment: Option<Attachment>,
        due_at: DateTime<Utc>,
    ) -> Result<Vec<ThreadEvent>, ThreadError> {
        let Decision {
            actor, tenant, at, ..
        } = *d;
        self.staff_only(actor)?;
        if self.scheduled.contains_key(&scheduled_id) {
            return Ok(vec![]);
        }
        due(at, due_at)?;
        let attachment = attachment(raw_attachment, tenant)?;
        let author = party(actor);
        let text = self
            .sealed(d, &author, text(&raw, attachment.is_some())?)
            .await?;
        let attachment = self
            .sealed_attachment(d, &author, attachment, false)
            .await?;
        Ok(vec![ThreadEvent::MessageScheduled {
            scheduled_id,
            author,
            text,
            attachment,
            due_at,
        }])
    }

    /// Moves a pending (or failed) scheduled message to another time.
    async fn reschedule(
        &self,
        d: &Decision<'_>,
        scheduled_id: String,
        due_at: DateTime<Utc>,
    ) -> Result<Vec<ThreadEvent>, ThreadError> {
        let Decision { actor, at, .. } = *d;
        self.staff_only(actor)?;
        let scheduled = self.schedule(&scheduled_id)?;
        // A failed one is tried again at its new time.
        if !matches!(
            scheduled.state,
            ScheduleState::Pending | ScheduleState::Failed
        ) {
            return Err(ThreadError::ScheduleNotPending);
        }
        if scheduled.due_at == due_at && scheduled.state == ScheduleState::Pending {
            return Ok(vec![]);
        }
        due(at, due_at)?;
        if sealed_for_erased(&scheduled.text, d.services).await? {
            return Err(ThreadError::SubjectErased);
        }
        Ok(vec![ThreadEvent::MessageRescheduled {
            scheduled_id,
            due_at,
        }])
    }

    /// Delivers a due scheduled message (the scheduler only).
    async fn deliver_scheduled(
        &self,
        d: &Decision<'_>,
        scheduled_id: String,
        message_id: String,
    ) -> Result<Vec<ThreadEvent>, ThreadError> {
        let Decision {
            access,
            tenant,
            at,
            services,
            ..
        } = *d;
        if access != Access::System {
            return Err(ThreadError::Forbidden(
                "Scheduled messages are delivered by the scheduler.",
            ));
        }
        let scheduled = self.schedule(&scheduled_id)?;
        if scheduled.state != ScheduleState::Pending {
            // Delivered once, or cancelled: never (again).
            return Ok(vec![]);
        }
        if scheduled.due_at > at {
            return Err(ThreadError::NotDue);
        }
        // Never in the name of someone who can no longer write here.
        if scheduled.author.kind == PartyKind::Agent
            && !services
                .is_active_staff(tenant, &scheduled.author.id)
                .await
                .map_err(ThreadError::Unavailable)?
        {
            return Ok(vec![ThreadEvent::ScheduleFailed {
            scheduled_id,
            code: "author_unavailable".into(),
            reason: "Its author can no longer write in this thread (deactivated, or no longer the tenant's staff).".into(),
            at,
        }]);
        }
        // The person it is about (the customer, else its staff author) erased, or its text
        // sealed for someone erased since: never sent. Asked of the person too, so a text
        // scheduled before sealing (in clear, or `[erased]` after the store's transform)
        // is not sent to someone erased either.
        let person = self.customer.as_ref().unwrap_or(&scheduled.author);
        let person_erased = match subject_of(tenant, person) {
            Some((subject, _)) => services
                .is_erased(subject)
                .await
                .map_err(ThreadError::Unavailable)?,
            None => false,
        };
        if person_erased || sealed_for_erased(&scheduled.text, services).await? {
            return Ok(vec![ThreadEvent::ScheduleFailed {
                scheduled_id,
                code: "subject_erased".into(),
                reason: "The person this message is about was erased: it is never sent.".into(),
                at,
            }]);
        }
        let (text, attachment) = self.sealed_scheduled(d, scheduled).await?;
        let mut events = self.reopening(at);
        events.push(ThreadEvent::MessageSent {
            message_id,
            number: self.message_count + 1,
            author: scheduled.author.clone(),
            client_message_id: None,
            text,
            attachment,
            scheduled_id: Some(scheduled_id),
            at,
        });
        Ok(events)
    }

    /// The text and file of `scheduled` as it is delivered: sealed as any message is (one
    /// scheduled before sealing is sealed now; one sealed then stays as it is).
    async fn sealed_scheduled(
        &self,
        d: &Decision<'_>,
        scheduled: &Scheduled,
    ) -> Result<(String, Option<Attachment>), ThreadError> {
        let text = match &scheduled.text {
            text if text.is_empty() || events::personal::is_sealed(text) => text.clone(),
            text => self.sealed(d, &scheduled.author, text.clone()).await?,
        };
        let attachment = self
            .sealed_attachment(d, &scheduled.author, scheduled.attachment.clone(), true)
            .await?;
        Ok((text, attachment))
    }

    /// Records that a scheduled message could not be delivered (the scheduler only).
    async fn fail_scheduled(
        &self,
        d: &Decision<'_>,
        scheduled_id: String,
        reason: String,
    ) -> Result<Vec<ThreadEvent>, ThreadError> {
        let Decision { access, at, .. } = *d;
        if access != Access::System {
            return Err(ThreadError::Forbidden(
                "Scheduled messages are delivered by the scheduler.",
            ));
        }
        Ok(match self.schedule(&scheduled_id)?.state {
            ScheduleState::Pending => vec![ThreadEvent::ScheduleFailed {
                scheduled_id,
                code: "delivery_failed".into(),
                reason: reason.chars().take(500).collect(),
                at,
            }],
            _ => vec![],
        })
    }

    /// A message sent: the latest messages, the author's read position, a scheduled
    /// message delivered.
    fn apply_sent(&mut self, event: ThreadEvent) {
        let ThreadEvent::MessageSent {
            message_id,
            number,
            author,
            client_message_id,
            attachment,
            scheduled_id,
            at,
            ..
        } = event
        else {
            return;
        };
        if let Some(s) = scheduled_id.and_then(|id| self.scheduled.get_mut(&id)) {
            s.finish(ScheduleState::Delivered);
        }
        // An author has read what they wrote (the read model counts it so too).
        let read = self.reads.entry(author.id.clone()).or_insert(0);
        *read = (*read).max(number);
        self.message_count = self.message_count.max(number);
        self.recent.push_back(MessageState {
            id: message_id,
            number,
            author,
            client_id: client_message_id,
            at,
            has_attachment: attachment.is_some(),
            deleted: false,
        });
        while self.recent.len() > RECENT_MESSAGES {
            self.recent.pop_front();
        }
    }

    /// Scheduled messages: scheduled, moved, cancelled, failed.
    fn apply_schedule(&mut self, event: ThreadEvent) {
        match event {
            ThreadEvent::MessageScheduled {
                scheduled_id,
                author,
                text,
                attachment,
                due_at,
            } => {
                self.scheduled.insert(
                    scheduled_id,
                    Scheduled {
                        author,
                        text,
                        attachment,
                        due_at,
                        state: ScheduleState::Pending,
                    },
                );
            }
            ThreadEvent::MessageRescheduled {
                scheduled_id,
                due_at,
            } => {
                if let Some(s) = self.scheduled.get_mut(&scheduled_id) {
                    s.due_at = due_at;
                    s.state = ScheduleState::Pending;
                }
            }
            ThreadEvent::ScheduleCancelled { scheduled_id } => {
                if let Some(s) = self.scheduled.get_mut(&scheduled_id) {
                    s.finish(ScheduleState::Cancelled);
                }
            }
            // Kept whole: staff may reschedule it.
            ThreadEvent::ScheduleFailed { scheduled_id, .. } => {
                if let Some(s) = self.scheduled.get_mut(&scheduled_id) {
                    s.state = ScheduleState::Failed;
                }
            }
            _ => {}
        }
    }
}

/// The customer staff or the platform name for a thread they open: someone reached by number
/// on a channel the platform runs (an SMS sender; the platform only), or a phone user of the
/// tenant.
async fn named_customer(
    actor: &Actor,
    customer: Option<Party>,
    channel: Channel,
    tenant_id: &str,
    services: &ChatServices,
) -> Result<Option<Party>, ThreadError> {
    Ok(match customer {
        None => None,
        // Someone reached by number on a channel the platform runs (an SMS sender).
        Some(c) if c.kind == PartyKind::Contact => {
            if !matches!(actor, Actor::System { .. })
                || channel == Channel::Web
                || !values::contact(&c.id, channel)
            {
                return Err(ThreadError::UnknownCustomer);
            }
            Some(c)
        }
        Some(c) if c.kind == PartyKind::Phone => {
            if values::label(&c.id, values::MAX_ID_CHARS).as_deref() != Some(c.id.as_str()) {
                return Err(ThreadError::UnknownCustomer);
            }
            if !services
                .is_phone_user(tenant_id, &c.id)
                .await
                .map_err(ThreadError::Unavailable)?
            {
                return Err(ThreadError::UnknownCustomer);
            }
            Some(c)
        }
        Some(_) => return Err(ThreadError::UnknownCustomer),
    })
}

impl Aggregate for Thread {
    const TYPE: &'static str = THREAD;
    type Command = ThreadCommand;
    type Event = ThreadEvent;
    type Error = ThreadError;
    type Services = ChatServices;

    async fn handle(
        &mut self,
        command: ThreadCommand,
        services: &ChatServices,
        sink: &EventSink<Self>,
    ) -> Result<(), ThreadError> {
        let events = self.decide(command, services).await?;
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: ThreadEvent) {
        match event {
            ThreadEvent::Opened {
                tenant_id,
                channel,
                opened_by,
                customer,
                bot_enabled,
                tags,
                ..
            } => {
                self.tenant_id = Some(tenant_id);
                self.channel = Some(channel);
                self.bot_enabled = bot_enabled;
                self.tags = tags;
                self.customer = customer.clone();
                for p in [Some(opened_by), customer].into_iter().flatten() {
                    if matches!(p.kind, PartyKind::Phone | PartyKind::Agent)
                        && !self.participants.contains(&p)
                    {
                        self.participants.push(p);
                    }
                }
            }
            ThreadEvent::ParticipantAdded { participant } => {
                if !self.participants.contains(&participant) {
                    self.participants.push(participant);
                }
            }
            ThreadEvent::Assigned {
                agent_id,
                department,
                ..
            } => {
                self.agent_id = agent_id;
                self.department = department;
            }
            ThreadEvent::BotSwitched { enabled } => self.bot_enabled = enabled,
            ThreadEvent::Closed { .. } => self.closed = true,
            ThreadEvent::Reopened { .. } => self.closed = false,
            ThreadEvent::Tagged { tags } => self.tags = tags,
            sent @ ThreadEvent::MessageSent { .. } => self.apply_sent(sent),
            ThreadEvent::MessageEdited { .. } => {}
            ThreadEvent::MessageDeleted { message_id, .. } => {
                // An older message's deletion is in the events its look-up reads.
                if let Some(m) = self.recent.iter_mut().find(|m| m.id == message_id) {
                    m.deleted = true;
                }
            }
            ThreadEvent::Read { reader, number, .. } => {
                self.reads.insert(reader.id, number);
            }
            scheduled @ (ThreadEvent::MessageScheduled { .. }
            | ThreadEvent::MessageRescheduled { .. }
            | ThreadEvent::ScheduleCancelled { .. }
            | ThreadEvent::ScheduleFailed { .. }) => self.apply_schedule(scheduled),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::chat::services::Directory;

    const TENANT: &str = "t1";
    const THREAD_ID: &str = "thread-1";

    /// Tenant `t1` has agents `agent-1`, `agent-2`, department `sales`, phone users
    /// `phone-1`, `phone-2`; thread `thread-1`'s events are `history` (what the event store
    /// holds for the given events).
    #[derive(Default)]
    struct Fixed {
        history: Vec<ThreadEvent>,
        /// Texts are sealed as `sealed[{tenant}/{kind}:{id}]{text}`; without it, left as
        /// they are (what the other rules' tests compare).
        sealing: bool,
        /// Persons (ids) who were erased.
        erased: Vec<String>,
    }

    #[async_trait]
    impl Directory for Fixed {
        async fn is_erased(&self, subject: uuid::Uuid) -> Result<bool, String> {
            Ok(self.erased.iter().any(|id| {
                [PartyKind::Phone, PartyKind::Agent]
                    .into_iter()
                    .any(|kind| {
                        subject_of(
                            TENANT,
                            &Party {
                                id: id.clone(),
                                kind,
                            },
                        )
                        .map(|(s, _)| s)
                            == Some(subject)
                    })
            }))
        }
        async fn seal(
            &self,
            tenant: &str,
            person: &Party,
            text: &str,
        ) -> Result<String, SealError> {
            if self.erased.contains(&person.id) {
                return Err(SealError::Erased);
            }
            Ok(if self.sealing {
                format!(
                    "sealed[{tenant}/{}:{}]{text}",
                    person.kind.as_str(),
                    person.id
                )
            } else {
                text.to_owned()
            })
        }
        async fn is_staff(&self, tenant: &str, user: &str) -> Result<bool, String> {
            Ok(tenant == TENANT && user.starts_with("agent-"))
        }
        /// `agent-0` is staff but deactivated.
        async fn is_available(&self, tenant: &str, user: &str) -> Result<bool, String> {
            Ok(tenant == TENANT && user.starts_with("agent-") && user != "agent-0")
        }
        async fn department(&self, tenant: &str, name: &str) -> Result<Option<String>, String> {
            Ok((tenant == TENANT && name.to_lowercase() == "sales").then(|| "sales".into()))
        }
        async fn is_active_staff(&self, tenant: &str, user: &str) -> Result<bool, String> {
            Ok(tenant == TENANT && user.starts_with("agent-") && user != "agent-0")
        }
        async fn is_phone_user(&self, tenant: &str, user: &str) -> Result<bool, String> {
            Ok(tenant == TENANT && user.starts_with("phone-"))
        }
        async fn past_message(
            &self,
            thread: &str,
            message: &str,
        ) -> Result<Option<PastMessage>, String> {
            if thread != THREAD_ID {
                return Ok(None);
            }
            Ok(PastMessage::from_events(
                self.history
                    .iter()
                    .filter(|e| match e {
                        ThreadEvent::MessageSent { message_id, .. }
                        | ThreadEvent::MessageDeleted { message_id, .. } => message_id == message,
                        _ => false,
                    })
                    .cloned(),
            ))
        }
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0)
            .single()
            .unwrap_or_default()
    }

    fn minutes(m: i64) -> DateTime<Utc> {
        t0() + Duration::minutes(m)
    }

    fn agent() -> Actor {
        Actor::Staff {
            user_id: "agent-1".into(),
            tenant_id: Some(TENANT.into()),
        }
    }

    fn other_agent() -> Actor {
        Actor::Staff {
            user_id: "agent-2".into(),
            tenant_id: Some(TENANT.into()),
        }
    }

    fn foreign_agent() -> Actor {
        Actor::Staff {
            user_id: "agent-9".into(),
            tenant_id: Some("t2".into()),
        }
    }

    fn super_admin() -> Actor {
        Actor::Staff {
            user_id: "root".into(),
            tenant_id: None,
        }
    }

    fn customer() -> Actor {
        Actor::Phone {
            user_id: "phone-1".into(),
            tenant_id: TENANT.into(),
        }
    }

    fn stranger() -> Actor {
        Actor::Phone {
            user_id: "phone-2".into(),
            tenant_id: TENANT.into(),
        }
    }

    fn scheduler() -> Actor {
        Actor::System {
            component: "scheduler".into(),
        }
    }

    fn customer_party() -> Party {
        Party {
            id: "phone-1".into(),
            kind: PartyKind::Phone,
        }
    }

    fn agent_party() -> Party {
        Party {
            id: "agent-1".into(),
            kind: PartyKind::Agent,
        }
    }

    fn cmd(actor: Actor, at: DateTime<Utc>, action: Action) -> ThreadCommand {
        ThreadCommand {
            thread_id: THREAD_ID.into(),
            actor,
            at,
            action,
        }
    }

    fn open_action() -> Action {
        Action::Open {
            tenant_id: TENANT.into(),
            channel: Channel::Web,
            customer: None,
            subject: None,
            tags: vec![],
            bot_enabled: None,
        }
    }

    /// The customer opened the thread at t0.
    fn opened() -> ThreadEvent {
        ThreadEvent::Opened {
            tenant_id: TENANT.into(),
            channel: Channel::Web,
            opened_by: customer_party(),
            customer: Some(customer_party()),
            customer_address: None,
            subject: None,
            bot_enabled: true,
            tags: vec![],
            at: t0(),
        }
    }

    fn send(id: &str, text: &str) -> Action {
        Action::Send {
            message_id: id.into(),
            client_message_id: None,
            text: text.into(),
            attachment: None,
        }
    }

    fn sent(id: &str, number: u64, author: Party, at: DateTime<Utc>) -> ThreadEvent {
        ThreadEvent::MessageSent {
            message_id: id.into(),
            number,
            author,
            client_message_id: None,
            text: "hello".into(),
            attachment: None,
            scheduled_id: None,
            at,
        }
    }

    fn scheduled(id: &str, due_at: DateTime<Utc>) -> ThreadEvent {
        ThreadEvent::MessageScheduled {
            scheduled_id: id.into(),
            author: agent_party(),
            text: "reminder".into(),
            attachment: None,
            due_at,
        }
    }

    fn framework() -> TestFramework<Thread> {
        TestFramework::with(Arc::new(Fixed::default()) as ChatServices)
    }

    /// The framework over `given`, whose events the thread's look-ups read too.
    fn framework_over(given: &[ThreadEvent]) -> TestFramework<Thread> {
        TestFramework::with(Arc::new(Fixed {
            history: given.to_vec(),
            ..Fixed::default()
        }) as ChatServices)
    }

    async fn expect_events(given: Vec<ThreadEvent>, when: ThreadCommand, then: Vec<ThreadEvent>) {
        framework_over(&given)
            .given(given)
            .when_async(when)
            .await
            .then_expect_events(then);
    }

    async fn expect_error(given: Vec<ThreadEvent>, when: ThreadCommand, error: ThreadError) {
        framework_over(&given)
            .given(given)
            .when_async(when)
            .await
            .then_expect_error(error);
    }

    /// The framework over `given`, sealing texts as [`Fixed`] marks them, with `erased`
    /// erased.
    fn sealing_over(given: &[ThreadEvent], erased: &[&str]) -> TestFramework<Thread> {
        TestFramework::with(Arc::new(Fixed {
            history: given.to_vec(),
            sealing: true,
            erased: erased.iter().map(|e| (*e).to_owned()).collect(),
        }) as ChatServices)
    }

    /// The events `when` appends over `given`, texts sealed as [`Fixed`] marks them.
    async fn sealed_events(given: &[ThreadEvent], when: ThreadCommand) -> Vec<ThreadEvent> {
        sealing_over(given, &[])
            .given(given.to_vec())
            .when_async(when)
            .await
            .inspect_result()
            .expect("accepted")
    }

    #[tokio::test]
    async fn texts_in_a_customers_thread_are_sealed_for_the_customer_whoever_writes_them() {
        let given = vec![opened(), sent("m1", 1, agent_party(), minutes(1))];
        let for_customer = |text: &str| format!("sealed[{TENANT}/phone:phone-1]{text}");
        let events = |when| sealed_events(&given, when);
        let by_customer = events(cmd(customer(), minutes(2), send("m2", "hola"))).await;
        assert!(
            matches!(&by_customer[..], [ThreadEvent::MessageSent { text, .. }] if *text == for_customer("hola"))
        );
        let by_agent = events(cmd(agent(), minutes(2), send("m2", "hi"))).await;
        assert!(
            matches!(&by_agent[..], [ThreadEvent::MessageSent { text, .. }] if *text == for_customer("hi"))
        );
        let edited = events(cmd(
            agent(),
            minutes(3),
            Action::Edit {
                message_id: "m1".into(),
                text: "fixed".into(),
            },
        ))
        .await;
        assert!(
            matches!(&edited[..], [ThreadEvent::MessageEdited { text, .. }] if *text == for_customer("fixed"))
        );
        let later = events(cmd(
            agent(),
            minutes(3),
            Action::Schedule {
                scheduled_id: "s1".into(),
                text: "reminder".into(),
                attachment: None,
                due_at: minutes(60),
            },
        ))
        .await;
        assert!(
            matches!(&later[..], [ThreadEvent::MessageScheduled { text, .. }] if *text == for_customer("reminder"))
        );
    }

    #[tokio::test]
    async fn an_attachments_file_name_is_sealed_as_its_text_is_whatever_it_looks_like() {
        let given = vec![opened()];
        let for_customer = |text: &str| format!("sealed[{TENANT}/phone:phone-1]{text}");
        let file = |name: &str| Attachment {
            object_key: format!("tenants/{TENANT}/media/scan.pdf"),
            content_type: "application/pdf".into(),
            name: Some(name.into()),
            size_bytes: 10,
        };
        // A name that looks sealed is a name like any other: sealed too.
        let lookalike = format!("pii1.{}.{}.AAAA", uuid::Uuid::nil(), uuid::Uuid::nil());
        for name in ["passport-ana.pdf", lookalike.as_str()] {
            let events = sealed_events(
                &given,
                cmd(
                    customer(),
                    minutes(1),
                    Action::Send {
                        message_id: "m1".into(),
                        client_message_id: None,
                        text: String::new(),
                        attachment: Some(file(name)),
                    },
                ),
            )
            .await;
            let [ThreadEvent::MessageSent {
                attachment: Some(sent),
                ..
            }] = &events[..]
            else {
                panic!("sent: {events:?}");
            };
            assert_eq!(sent.name, Some(for_customer(name)));
            assert_eq!(
                sent.object_key,
                file(name).object_key,
                "the key stays in clear"
            );
        }
        let later = sealed_events(
            &given,
            cmd(
                agent(),
                minutes(1),
                Action::Schedule {
                    scheduled_id: "s1".into(),
                    text: "see attached".into(),
                    attachment: Some(file("invoice.pdf")),
                    due_at: minutes(60),
                },
            ),
        )
        .await;
        assert!(
            matches!(&later[..], [ThreadEvent::MessageScheduled { attachment: Some(a), .. }]
            if a.name == Some(for_customer("invoice.pdf")))
        );
    }

    #[tokio::test]
    async fn open_with_a_subject_line_seals_it_for_the_customer_and_without_one_keeps_it() {
        let open = |customer: Option<Party>| Action::Open {
            tenant_id: TENANT.into(),
            channel: Channel::Web,
            customer,
            subject: Some("Refund".into()),
            tags: vec![],
            bot_enabled: None,
        };
        let with = sealed_events(&[], cmd(agent(), t0(), open(Some(customer_party())))).await;
        assert!(
            matches!(&with[..], [ThreadEvent::Opened { subject: Some(line), .. }]
                if *line == format!("sealed[{TENANT}/phone:phone-1]Refund")),
            "{with:?}"
        );
        let without = sealed_events(&[], cmd(agent(), t0(), open(None))).await;
        assert!(
            matches!(&without[..], [ThreadEvent::Opened { subject: Some(line), .. }] if line == "Refund"),
            "{without:?}"
        );
    }

    #[tokio::test]
    async fn in_a_thread_without_a_customer_staff_texts_are_sealed_for_their_author_and_the_platforms_are_not(
    ) {
        let given = vec![ThreadEvent::Opened {
            tenant_id: TENANT.into(),
            channel: Channel::Web,
            opened_by: agent_party(),
            customer: None,
            customer_address: None,
            subject: None,
            bot_enabled: false,
            tags: vec![],
            at: t0(),
        }];
        let given = &given;
        let texts = |when| async move {
            sealed_events(given, when)
                .await
                .into_iter()
                .filter_map(|e| match e {
                    ThreadEvent::MessageSent { text, .. } => Some(text),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            texts(cmd(agent(), minutes(1), send("m1", "note"))).await,
            [format!("sealed[{TENANT}/agent:agent-1]note")]
        );
        assert_eq!(
            texts(cmd(super_admin(), minutes(1), send("m1", "note"))).await,
            ["sealed[platform/agent:root]note".to_owned()],
            "a super admin's words are sealed under the platform, whose admin they are"
        );
        assert_eq!(
            texts(cmd(scheduler(), minutes(1), send("m1", "reminder"))).await,
            ["reminder".to_owned()]
        );
    }

    #[tokio::test]
    async fn nothing_new_is_written_about_an_erased_customer() {
        let given = vec![opened()];
        for actor in [customer(), agent()] {
            sealing_over(&given, &["phone-1"])
                .given(given.clone())
                .when_async(cmd(actor, minutes(1), send("m1", "hola")))
                .await
                .then_expect_error(ThreadError::SubjectErased);
        }
        // An attachment without a text needs no key.
        let attachment = Attachment {
            object_key: format!("tenants/{TENANT}/media/photo.png"),
            content_type: "image/png".into(),
            name: None,
            size_bytes: 10,
        };
        let accepted = sealing_over(&given, &["phone-1"])
            .given(given.clone())
            .when_async(cmd(
                customer(),
                minutes(1),
                Action::Send {
                    message_id: "m1".into(),
                    client_message_id: None,
                    text: String::new(),
                    attachment: Some(attachment),
                },
            ))
            .await
            .inspect_result();
        assert!(accepted.is_ok(), "{accepted:?}");
    }

    #[tokio::test]
    async fn open_a_thread_with_an_erased_customer_is_refused_whoever_opens_it() {
        let with_them = Action::Open {
            tenant_id: TENANT.into(),
            channel: Channel::Web,
            customer: Some(customer_party()),
            subject: Some("again".into()),
            tags: vec![],
            bot_enabled: None,
        };
        for (actor, action) in [(customer(), open_action()), (agent(), with_them)] {
            sealing_over(&[], &["phone-1"])
                .given_no_previous_events()
                .when_async(cmd(actor, t0(), action))
                .await
                .then_expect_error(ThreadError::SubjectErased);
        }
    }

    /// A scheduled text sealed for the thread's customer, as a real key seals it.
    fn scheduled_sealed(id: &str, due_at: DateTime<Utc>) -> ThreadEvent {
        let (subject, _) = subject_of(TENANT, &customer_party()).expect("a person");
        ThreadEvent::MessageScheduled {
            scheduled_id: id.into(),
            author: agent_party(),
            text: format!("pii1.{subject}.{}.c2VhbGVk", uuid::Uuid::nil()),
            attachment: None,
            due_at,
        }
    }

    /// What delivering scheduled message `id` records when its person was erased.
    fn failed_as_erased(id: &str, at: DateTime<Utc>) -> ThreadEvent {
        ThreadEvent::ScheduleFailed {
            scheduled_id: id.into(),
            code: "subject_erased".into(),
            reason: "The person this message is about was erased: it is never sent.".into(),
            at,
        }
    }

    #[tokio::test]
    async fn deliver_a_message_sealed_for_an_erased_customer_records_it_failed_and_never_sends_it()
    {
        let given = vec![opened(), scheduled_sealed("s1", minutes(60))];
        sealing_over(&given, &["phone-1"])
            .given(given.clone())
            .when_async(cmd(scheduler(), minutes(61), deliver("s1")))
            .await
            .then_expect_events(vec![failed_as_erased("s1", minutes(61))]);
        sealing_over(&given, &["phone-1"])
            .given(given.clone())
            .when_async(cmd(
                agent(),
                minutes(1),
                Action::Reschedule {
                    scheduled_id: "s1".into(),
                    due_at: minutes(30),
                },
            ))
            .await
            .then_expect_error(ThreadError::SubjectErased);
        // While they are not erased, it goes out as sealed.
        let delivered = sealing_over(&given, &[])
            .given(given.clone())
            .when_async(cmd(scheduler(), minutes(61), deliver("s1")))
            .await
            .inspect_result()
            .expect("delivered");
        assert!(matches!(&delivered[..], [ThreadEvent::MessageSent { .. }]));
    }

    #[tokio::test]
    async fn deliver_a_text_scheduled_before_sealing_seals_it_and_never_sends_it_to_an_erased_customer(
    ) {
        let given = vec![opened(), scheduled("s1", minutes(60))];
        let delivered = sealed_events(&given, cmd(scheduler(), minutes(61), deliver("s1"))).await;
        assert!(
            matches!(&delivered[..], [ThreadEvent::MessageSent { text, .. }]
                if *text == format!("sealed[{TENANT}/phone:phone-1]reminder")),
            "{delivered:?}"
        );
        sealing_over(&given, &["phone-1"])
            .given(given.clone())
            .when_async(cmd(scheduler(), minutes(61), deliver("s1")))
            .await
            .then_expect_events(vec![failed_as_erased("s1", minutes(61))]);
    }

    #[tokio::test]
    async fn open_by_customer_makes_them_the_customer_with_the_bot_on() {
        expect_events(vec![], cmd(customer(), t0(), open_action()), vec![opened()]).await;
    }

    #[tokio::test]
    async fn open_by_agent_for_a_known_customer_records_both() {
        let when = Action::Open {
            tenant_id: TENANT.into(),
            channel: Channel::Web,
            customer: Some(customer_party()),
            subject: Some(" Refund ".into()),
            tags: vec!["VIP".into(), "billing".into()],
            bot_enabled: Some(false),
        };
        expect_events(
            vec![],
            cmd(agent(), t0(), when),
            vec![ThreadEvent::Opened {
                tenant_id: TENANT.into(),
                channel: Channel::Web,
                opened_by: agent_party(),
                customer: Some(customer_party()),
                customer_address: None,
                subject: Some("Refund".into()),
                bot_enabled: false,
                tags: vec!["billing".into(), "vip".into()],
                at: t0(),
            }],
        )
        .await;
    }

    #[tokio::test]
    async fn open_twice_is_refused() {
        expect_error(
            vec![opened()],
            cmd(customer(), t0(), open_action()),
            ThreadError::AlreadyExists,
        )
        .await;
    }

    #[tokio::test]
    async fn open_for_an_unknown_customer_or_in_another_tenant_is_refused() {
        let for_customer = |id: &str| Action::Open {
            tenant_id: TENANT.into(),
            channel: Channel::Web,
            customer: Some(Party {
                id: id.into(),
                kind: PartyKind::Phone,
            }),
            subject: None,
            tags: vec![],
            bot_enabled: None,
        };
        expect_error(
            vec![],
            cmd(agent(), t0(), for_customer("nobody")),
            ThreadError::UnknownCustomer,
        )
        .await;
        expect_error(
            vec![],
            cmd(foreign_agent(), t0(), open_action()),
            ThreadError::Forbidden("Staff open threads in their own tenant only."),
        )
        .await;
        // A customer cannot open a thread on somebody else's behalf.
        expect_error(
            vec![],
            cmd(customer(), t0(), for_customer("phone-2")),
            ThreadError::Forbidden("A customer opens threads for themselves only."),
        )
        .await;
    }

    #[tokio::test]
    async fn open_on_whatsapp_or_with_bad_subject_or_tags_is_refused() {
        let with = |channel, subject: Option<String>, tags: Vec<String>| Action::Open {
            tenant_id: TENANT.into(),
            channel,
            customer: None,
            subject,
            tags,
            bot_enabled: None,
        };
        expect_error(
            vec![],
            cmd(agent(), t0(), with(Channel::Whatsapp, None, vec![])),
            ThreadError::ChannelNotAllowed,
        )
        .await;
        expect_error(
            vec![],
            cmd(
                agent(),
                t0(),
                with(Channel::Web, Some("x".repeat(201)), vec![]),
            ),
            ThreadError::InvalidSubject,
        )
        .await;
        expect_error(
            vec![],
            cmd(
                agent(),
                t0(),
                with(Channel::Web, None, vec!["a\u{0}".into()]),
            ),
            ThreadError::InvalidTags,
        )
        .await;
        // The platform opens WhatsApp threads.
        let opened = framework()
            .given(vec![])
            .when_async(cmd(
                scheduler(),
                t0(),
                with(Channel::Whatsapp, None, vec![]),
            ))
            .await
            .inspect_result();
        assert!(matches!(
            opened.as_deref(),
            Ok([ThreadEvent::Opened { .. }])
        ));
    }

    #[tokio::test]
    async fn any_command_on_a_missing_thread_or_from_outsiders_is_not_found() {
        expect_error(
            vec![],
            cmd(agent(), t0(), send("m1", "hi")),
            ThreadError::NotFound,
        )
        .await;
        for outsider in [foreign_agent(), stranger()] {
            expect_error(
                vec![opened()],
                cmd(outsider, t0(), send("m1", "hi")),
                ThreadError::NotFound,
            )
            .await;
        }
        // Phone users of another tenant are outsiders even with a matching id.
        let twin = Actor::Phone {
            user_id: "phone-1".into(),
            tenant_id: "t2".into(),
        };
        expect_error(
            vec![opened()],
            cmd(twin, t0(), Action::Close),
            ThreadError::NotFound,
        )
        .await;
    }

    #[tokio::test]
    async fn send_by_customer_staff_or_super_admin_numbers_messages_in_order() {
        expect_events(
            vec![opened()],
            cmd(customer(), minutes(1), send("m1", "hello")),
            vec![sent("m1", 1, customer_party(), minutes(1))],
        )
        .await;
        expect_events(
            vec![opened(), sent("m1", 1, customer_party(), minutes(1))],
            cmd(other_agent(), minutes(2), send("m2", "hello")),
            vec![sent(
                "m2",
                2,
                Party {
                    id: "agent-2".into(),
                    kind: PartyKind::Agent,
                },
                minutes(2),
            )],
        )
        .await;
        let by_root = framework()
            .given(vec![opened()])
            .when_async(cmd(super_admin(), minutes(1), send("m1", "hello")))
            .await
            .inspect_result();
        assert!(matches!(
            by_root.as_deref(),
            Ok([ThreadEvent::MessageSent { .. }])
        ));
    }

    #[tokio::test]
    async fn send_with_a_known_client_message_id_or_message_id_appends_nothing() {
        let with_client_id = |message_id: &str| Action::Send {
            message_id: message_id.into(),
            client_message_id: Some("c-1".into()),
            text: "hello".into(),
            attachment: None,
        };
        let first = ThreadEvent::MessageSent {
            message_id: "m1".into(),
            number: 1,
            author: customer_party(),
            client_message_id: Some("c-1".into()),
            text: "hello".into(),
            attachment: None,
            scheduled_id: None,
            at: minutes(1),
        };
        expect_events(
            vec![opened()],
            cmd(customer(), minutes(1), with_client_id("m1")),
            vec![first.clone()],
        )
        .await;
        expect_events(
            vec![opened(), first.clone()],
            cmd(customer(), minutes(2), with_client_id("m-other")),
            vec![],
        )
        .await;
        expect_events(
            vec![opened(), first],
            cmd(customer(), minutes(2), send("m1", "hello again")),
            vec![],
        )
        .await;
    }

    #[tokio::test]
    async fn send_over_4096_characters_empty_or_with_control_characters_is_refused() {
        for (text, error) in [
            ("x".repeat(4097), ThreadError::TextTooLong),
            ("   ".to_owned(), ThreadError::EmptyMessage),
            ("bad\u{0}".to_owned(), ThreadError::InvalidText),
        ] {
            expect_error(
                vec![opened()],
                cmd(customer(), minutes(1), send("m1", &text)),
                error,
            )
            .await;
        }
        let bad_client_id = Action::Send {
            message_id: "m1".into(),
            client_message_id: Some("x".repeat(101)),
            text: "hi".into(),
            attachment: None,
        };
        expect_error(
            vec![opened()],
            cmd(customer(), minutes(1), bad_client_id),
            ThreadError::InvalidClientMessageId,
        )
        .await;
    }

    #[tokio::test]
    async fn send_with_only_an_attachment_is_accepted_and_a_bad_one_refused() {
        let file = Attachment {
            object_key: "tenants/t1/media/photo.jpg".into(),
            content_type: "image/jpeg".into(),
            name: None,
            size_bytes: 2048,
        };
        let with = |attachment: Attachment| Action::Send {
            message_id: "m1".into(),
            client_message_id: None,
            text: String::new(),
            attachment: Some(attachment),
        };
        expect_events(
            vec![opened()],
            cmd(customer(), minutes(1), with(file.clone())),
            vec![ThreadEvent::MessageSent {
                message_id: "m1".into(),
                number: 1,
                author: customer_party(),
                client_message_id: None,
                text: String::new(),
                attachment: Some(file.clone()),
                scheduled_id: None,
                at: minutes(1),
            }],
        )
        .await;
        expect_error(
            vec![opened()],
            cmd(
                customer(),
                minutes(1),
                with(Attachment {
                    object_key: "../../secret".into(),
                    ..file
                }),
            ),
            ThreadError::InvalidAttachment,
        )
        .await;
    }

    #[tokio::test]
    async fn send_in_a_closed_thread_reopens_it() {
        expect_events(
            vec![opened(), ThreadEvent::Closed { at: minutes(1) }],
            cmd(customer(), minutes(2), send("m1", "hello")),
            vec![
                ThreadEvent::Reopened { at: minutes(2) },
                sent("m1", 1, customer_party(), minutes(2)),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn edit_by_the_author_within_15_minutes_records_the_new_text() {
        expect_events(
            vec![opened(), sent("m1", 1, customer_party(), minutes(1))],
            cmd(
                customer(),
                minutes(16),
                Action::Edit {
                    message_id: "m1".into(),
                    text: "hello, fixed".into(),
                },
            ),
            vec![ThreadEvent::MessageEdited {
                message_id: "m1".into(),
                text: "hello, fixed".into(),
                at: minutes(16),
            }],
        )
        .await;
    }

    #[tokio::test]
    async fn edit_after_the_window_by_others_of_deleted_or_unknown_messages_is_refused() {
        let given = vec![opened(), sent("m1", 1, customer_party(), minutes(1))];
        let edit = |id: &str| Action::Edit {
            message_id: id.into(),
            text: "changed".into(),
        };
        expect_error(
            given.clone(),
            cmd(customer(), minutes(17), edit("m1")),
            ThreadError::EditWindowClosed,
        )
        .await;
        expect_error(
            given.clone(),
            cmd(agent(), minutes(2), edit("m1")),
            ThreadError::NotAuthor,
        )
        .await;
        expect_error(
            given.clone(),
            cmd(customer(), minutes(2), edit("m9")),
            ThreadError::MessageNotFound,
        )
        .await;
        let mut deleted = given;
        deleted.push(ThreadEvent::MessageDeleted {
            message_id: "m1".into(),
            by: customer_party(),
            at: minutes(2),
        });
        expect_error(
            deleted,
            cmd(customer(), minutes(3), edit("m1")),
            ThreadError::MessageDeleted,
        )
        .await;
    }

    #[tokio::test]
    async fn delete_by_author_or_staff_tombstones_once() {
        let given = vec![opened(), sent("m1", 1, customer_party(), minutes(1))];
        let delete = Action::Delete {
            message_id: "m1".into(),
        };
        let tombstone = |by: Party| ThreadEvent::MessageDeleted {
            message_id: "m1".into(),
            by,
            at: minutes(30),
        };
        expect_events(
            given.clone(),
            cmd(customer(), minutes(30), delete.clone()),
            vec![tombstone(customer_party())],
        )
        .await;
        expect_events(
            given.clone(),
            cmd(agent(), minutes(30), delete.clone()),
            vec![tombstone(agent_party())],
        )
        .await;
        let mut again = given;
        again.push(tombstone(agent_party()));
        expect_events(again, cmd(customer(), minutes(31), delete), vec![]).await;
    }

    /// The thread opened, `m1` by the customer and `m2` by the agent, then enough messages
    /// (by the agent) to push both out of the recent window.
    fn long_history() -> Vec<ThreadEvent> {
        let mut given = vec![
            opened(),
            sent("m1", 1, customer_party(), minutes(1)),
            sent("m2", 2, agent_party(), minutes(1)),
        ];
        for n in 3..=(RECENT_MESSAGES as u64 + 10) {
            given.push(sent(&format!("m{n}"), n, agent_party(), minutes(2)));
        }
        given
    }

    #[tokio::test]
    async fn edit_and_delete_of_messages_older_than_the_state_keeps_decide_from_their_events() {
        let given = long_history();
        let edit = |id: &str| Action::Edit {
            message_id: id.into(),
            text: "changed".into(),
        };
        expect_events(
            given.clone(),
            cmd(customer(), minutes(10), edit("m1")),
            vec![ThreadEvent::MessageEdited {
                message_id: "m1".into(),
                text: "changed".into(),
                at: minutes(10),
            }],
        )
        .await;
        expect_error(
            given.clone(),
            cmd(customer(), minutes(17), edit("m1")),
            ThreadError::EditWindowClosed,
        )
        .await;
        expect_error(
            given.clone(),
            cmd(customer(), minutes(10), edit("m2")),
            ThreadError::NotAuthor,
        )
        .await;
        expect_error(
            given.clone(),
            cmd(customer(), minutes(10), edit("nowhere")),
            ThreadError::MessageNotFound,
        )
        .await;
        let delete = |id: &str| Action::Delete {
            message_id: id.into(),
        };
        expect_error(
            given.clone(),
            cmd(customer(), minutes(30), delete("m2")),
            ThreadError::NotAuthor,
        )
        .await;
        let tombstone = ThreadEvent::MessageDeleted {
            message_id: "m1".into(),
            by: customer_party(),
            at: minutes(30),
        };
        expect_events(
            given.clone(),
            cmd(customer(), minutes(30), delete("m1")),
            vec![tombstone.clone()],
        )
        .await;
        let mut deleted = given;
        deleted.push(tombstone);
        expect_events(
            deleted.clone(),
            cmd(customer(), minutes(31), delete("m1")),
            vec![],
        )
        .await;
        expect_error(
            deleted,
            cmd(customer(), minutes(11), edit("m1")),
            ThreadError::MessageDeleted,
        )
        .await;
    }

    #[tokio::test]
    async fn edit_or_delete_of_an_impossible_message_id_in_a_long_thread_is_not_found() {
        for id in ["ab\u{0}cd", "", " m1", "m\u{1b}1"] {
            expect_error(
                long_history(),
                cmd(
                    customer(),
                    minutes(3),
                    Action::Edit {
                        message_id: id.into(),
                        text: "x".into(),
                    },
                ),
                ThreadError::MessageNotFound,
            )
            .await;
            expect_error(
                long_history(),
                cmd(
                    agent(),
                    minutes(3),
                    Action::Delete {
                        message_id: id.into(),
                    },
                ),
                ThreadError::MessageNotFound,
            )
            .await;
        }
    }

    #[tokio::test]
    async fn mark_read_of_the_latest_of_a_long_thread_is_recorded() {
        let given = long_history();
        let last = RECENT_MESSAGES as u64 + 10;
        expect_events(
            given.clone(),
            cmd(customer(), minutes(3), Action::MarkRead { number: last }),
            vec![ThreadEvent::Read {
                reader: customer_party(),
                number: last,
                at: minutes(3),
            }],
        )
        .await;
        expect_error(
            given,
            cmd(
                customer(),
                minutes(3),
                Action::MarkRead { number: last + 1 },
            ),
            ThreadError::UnknownMessageNumber,
        )
        .await;
    }

    #[test]
    fn the_state_of_a_thread_of_ten_thousand_messages_is_bounded() {
        let mut thread = Thread::default();
        thread.apply(opened());
        let one = serde_json::to_vec(&thread).map_or(0, |v| v.len());
        let mut at_recent = 0;
        for n in 1..=10_000u64 {
            thread.apply(ThreadEvent::MessageSent {
                message_id: format!("01a24ac7-a321-7156-bf39-{n:012}"),
                number: n,
                author: customer_party(),
                client_message_id: Some(format!("client-{n}")),
                text: "hello".into(),
                attachment: None,
                scheduled_id: None,
                at: minutes(1),
            });
            if n == RECENT_MESSAGES as u64 {
                at_recent = serde_json::to_vec(&thread).map_or(0, |v| v.len());
            }
        }
        let size = serde_json::to_vec(&thread).map_or(0, |v| v.len());
        assert_eq!(thread.message_count, 10_000);
        assert_eq!(thread.recent.len(), RECENT_MESSAGES);
        // As large as with 256 messages, give or take the longer numbers in the ids.
        assert!(
            size > one && size <= at_recent * 11 / 10,
            "{one} → {at_recent} → {size}"
        );
        // The latest messages are the ones kept.
        assert_eq!(thread.recent.back().map(|m| m.number), Some(10_000));
    }

    #[tokio::test]
    async fn a_late_retry_of_a_message_older_than_the_recent_ones_appends_nothing() {
        expect_events(
            long_history(),
            cmd(customer(), minutes(60), send("m1", "hello")),
            vec![],
        )
        .await;
    }

    #[tokio::test]
    async fn a_retry_of_a_message_among_the_recent_ones_appends_nothing() {
        let mut given = long_history();
        given.push(ThreadEvent::MessageSent {
            message_id: "c-msg".into(),
            number: RECENT_MESSAGES as u64 + 11,
            author: customer_party(),
            client_message_id: Some("c-1".into()),
            text: "hello".into(),
            attachment: None,
            scheduled_id: None,
            at: minutes(3),
        });
        let retry = |message_id: &str| Action::Send {
            message_id: message_id.into(),
            client_message_id: Some("c-1".into()),
            text: "hello".into(),
            attachment: None,
        };
        expect_events(
            given.clone(),
            cmd(customer(), minutes(4), retry("c-msg")),
            vec![],
        )
        .await;
        // The same client id from another author is another message.
        expect_events(
            given,
            cmd(agent(), minutes(4), retry("a-msg")),
            vec![ThreadEvent::MessageSent {
                message_id: "a-msg".into(),
                number: RECENT_MESSAGES as u64 + 12,
                author: agent_party(),
                client_message_id: Some("c-1".into()),
                text: "hello".into(),
                attachment: None,
                scheduled_id: None,
                at: minutes(4),
            }],
        )
        .await;
    }

    #[tokio::test]
    async fn delete_of_an_agents_message_by_the_customer_is_refused() {
        expect_error(
            vec![opened(), sent("m1", 1, agent_party(), minutes(1))],
            cmd(
                customer(),
                minutes(2),
                Action::Delete {
                    message_id: "m1".into(),
                },
            ),
            ThreadError::NotAuthor,
        )
        .await;
    }

    #[tokio::test]
    async fn mark_read_moves_forward_only_and_needs_an_existing_message() {
        let given = vec![
            opened(),
            sent("m1", 1, agent_party(), minutes(1)),
            sent("m2", 2, agent_party(), minutes(2)),
        ];
        let read = |number| Action::MarkRead { number };
        expect_events(
            given.clone(),
            cmd(customer(), minutes(3), read(2)),
            vec![ThreadEvent::Read {
                reader: customer_party(),
                number: 2,
                at: minutes(3),
            }],
        )
        .await;
        let mut later = given.clone();
        later.push(ThreadEvent::Read {
            reader: customer_party(),
            number: 2,
            at: minutes(3),
        });
        expect_events(later, cmd(customer(), minutes(4), read(1)), vec![]).await;
        for number in [0, 3] {
            expect_error(
                given.clone(),
                cmd(customer(), minutes(3), read(number)),
                ThreadError::UnknownMessageNumber,
            )
            .await;
        }
    }

    #[tokio::test]
    async fn assign_to_a_known_agent_and_department_records_it_once() {
        let assign = Action::Assign {
            agent_id: Some("agent-2".into()),
            department: Some("sales".into()),
        };
        let assigned = ThreadEvent::Assigned {
            agent_id: Some("agent-2".into()),
            department: Some("sales".into()),
            reason: None,
        };
        expect_events(
            vec![opened()],
            cmd(agent(), t0(), assign.clone()),
            vec![assigned.clone()],
        )
        .await;
        expect_events(
            vec![opened(), assigned.clone()],
            cmd(agent(), t0(), assign),
            vec![],
        )
        .await;
        // A department named in another case is the tenant's own: recorded as it spells it,
        // and the same assignment again.
        let shouting = Action::Assign {
            agent_id: Some("agent-2".into()),
            department: Some("SALES".into()),
        };
        expect_events(
            vec![opened(), assigned],
            cmd(agent(), t0(), shouting),
            vec![],
        )
        .await;
    }

    #[tokio::test]
    async fn assign_to_unknown_agent_or_department_or_by_the_customer_is_refused() {
        let assign = |agent: Option<&str>, department: Option<&str>| Action::Assign {
            agent_id: agent.map(Into::into),
            department: department.map(Into::into),
        };
        expect_error(
            vec![opened()],
            cmd(agent(), t0(), assign(Some("someone"), None)),
            ThreadError::UnknownAgent,
        )
        .await;
        expect_error(
            vec![opened()],
            cmd(agent(), t0(), assign(None, Some("legal"))),
            ThreadError::UnknownDepartment,
        )
        .await;
        expect_error(
            vec![opened()],
            cmd(customer(), t0(), assign(Some("agent-1"), None)),
            ThreadError::Forbidden("Only the tenant's staff may do this."),
        )
        .await;
    }

    #[tokio::test]
    async fn assign_to_an_agent_who_cannot_take_conversations_is_refused() {
        let assign = |agent: &str, department: Option<&str>| Action::Assign {
            agent_id: Some(agent.into()),
            department: department.map(Into::into),
        };
        expect_error(
            vec![opened()],
            cmd(agent(), t0(), assign("agent-0", None)),
            ThreadError::AgentUnavailable,
        )
        .await;
        // Also when the thread still has them (the worker has not released it yet).
        let with_agent_0 = ThreadEvent::Assigned {
            agent_id: Some("agent-0".into()),
            department: None,
            reason: None,
        };
        expect_error(
            vec![opened(), with_agent_0],
            cmd(agent(), t0(), assign("agent-0", Some("sales"))),
            ThreadError::AgentUnavailable,
        )
        .await;
    }

    fn release(what: Release) -> ThreadCommand {
        cmd(
            Actor::System {
                component: "reassignment".into(),
            },
            t0(),
            Action::Release { what },
        )
    }

    fn assigned_to(agent: &str, department: &str) -> ThreadEvent {
        ThreadEvent::Assigned {
            agent_id: Some(agent.into()),
            department: Some(department.into()),
            reason: None,
        }
    }

    // In the fixed directory `agent-0` is deactivated and `legal` is not a department.

    #[tokio::test]
    async fn release_of_the_agent_puts_an_open_thread_back_in_its_departments_queue() {
        expect_events(
            vec![opened(), assigned_to("agent-0", "legal")],
            release(Release::Agent("agent-0".into())),
            vec![ThreadEvent::Assigned {
                agent_id: None,
                department: Some("legal".into()),
                reason: Some(AssignmentReason::AgentUnavailable),
            }],
        )
        .await;
    }

    #[tokio::test]
    async fn release_of_the_department_keeps_the_agent() {
        expect_events(
            vec![opened(), assigned_to("agent-1", "legal")],
            release(Release::Department("legal".into())),
            vec![ThreadEvent::Assigned {
                agent_id: Some("agent-1".into()),
                department: None,
                reason: Some(AssignmentReason::DepartmentRemoved),
            }],
        )
        .await;
    }

    #[tokio::test]
    async fn release_of_someone_the_thread_no_longer_has_or_of_a_closed_thread_appends_nothing() {
        let history = vec![opened(), assigned_to("agent-2", "sales")];
        expect_events(
            history.clone(),
            release(Release::Agent("agent-0".into())),
            vec![],
        )
        .await;
        expect_events(
            history,
            release(Release::Department("legal".into())),
            vec![],
        )
        .await;
        let closed = vec![
            opened(),
            assigned_to("agent-0", "legal"),
            ThreadEvent::Closed { at: t0() },
        ];
        expect_events(closed, release(Release::Agent("agent-0".into())), vec![]).await;
    }

    #[tokio::test]
    async fn a_late_release_of_an_agent_who_is_back_or_a_department_added_again_appends_nothing() {
        let history = vec![opened(), assigned_to("agent-1", "sales")];
        expect_events(
            history.clone(),
            release(Release::Agent("agent-1".into())),
            vec![],
        )
        .await;
        expect_events(
            history,
            release(Release::Department("sales".into())),
            vec![],
        )
        .await;
    }

    #[tokio::test]
    async fn release_is_the_platforms_alone() {
        expect_error(
            vec![opened(), assigned_to("agent-1", "sales")],
            cmd(
                agent(),
                t0(),
                Action::Release {
                    what: Release::Agent("agent-1".into()),
                },
            ),
            ThreadError::Forbidden("Only the platform releases an assignment."),
        )
        .await;
    }

    #[tokio::test]
    async fn switch_bot_records_changes_only_and_is_staff_only() {
        let off = Action::SwitchBot { enabled: false };
        expect_events(
            vec![opened()],
            cmd(agent(), t0(), off.clone()),
            vec![ThreadEvent::BotSwitched { enabled: false }],
        )
        .await;
        expect_events(
            vec![opened()],
            cmd(agent(), t0(), Action::SwitchBot { enabled: true }),
            vec![],
        )
        .await;
        expect_error(
            vec![opened()],
            cmd(customer(), t0(), off),
            ThreadError::Forbidden("Only the tenant's staff may do this."),
        )
        .await;
    }

    #[tokio::test]
    async fn close_and_reopen_change_state_once() {
        let closed = ThreadEvent::Closed { at: minutes(1) };
        expect_events(
            vec![opened()],
            cmd(customer(), minutes(1), Action::Close),
            vec![closed.clone()],
        )
        .await;
        expect_events(
            vec![opened(), closed.clone()],
            cmd(agent(), minutes(2), Action::Close),
            vec![],
        )
        .await;
        expect_events(
            vec![opened(), closed],
            cmd(agent(), minutes(2), Action::Reopen),
            vec![ThreadEvent::Reopened { at: minutes(2) }],
        )
        .await;
        expect_events(
            vec![opened()],
            cmd(agent(), minutes(2), Action::Reopen),
            vec![],
        )
        .await;
    }

    #[tokio::test]
    async fn set_tags_normalises_and_records_changes_only() {
        let tag = |tags: &[&str]| Action::SetTags {
            tags: tags.iter().map(|t| t.to_string()).collect(),
        };
        expect_events(
            vec![opened()],
            cmd(agent(), t0(), tag(&["Urgent", "billing"])),
            vec![ThreadEvent::Tagged {
                tags: vec!["billing".into(), "urgent".into()],
            }],
        )
        .await;
        expect_events(vec![opened()], cmd(agent(), t0(), tag(&[])), vec![]).await;
        expect_error(
            vec![opened()],
            cmd(customer(), t0(), tag(&["x"])),
            ThreadError::Forbidden("Only the tenant's staff may do this."),
        )
        .await;
    }

    #[tokio::test]
    async fn add_participant_accepts_known_people_once() {
        let add = |id: &str, kind| Action::AddParticipant {
            participant: Party {
                id: id.into(),
                kind,
            },
        };
        let agent2 = Party {
            id: "agent-2".into(),
            kind: PartyKind::Agent,
        };
        expect_events(
            vec![opened()],
            cmd(agent(), t0(), add("agent-2", PartyKind::Agent)),
            vec![ThreadEvent::ParticipantAdded {
                participant: agent2,
            }],
        )
        .await;
        expect_events(
            vec![opened()],
            cmd(agent(), t0(), add("phone-1", PartyKind::Phone)),
            vec![],
        )
        .await;
        for (id, kind) in [("ghost", PartyKind::Phone), ("bot", PartyKind::Bot)] {
            expect_error(
                vec![opened()],
                cmd(agent(), t0(), add(id, kind)),
                ThreadError::InvalidParticipant,
            )
            .await;
        }
    }

    #[tokio::test]
    async fn an_added_customer_may_then_write() {
        let added = ThreadEvent::ParticipantAdded {
            participant: Party {
                id: "phone-2".into(),
                kind: PartyKind::Phone,
            },
        };
        let result = framework()
            .given(vec![opened(), added])
            .when_async(cmd(stranger(), minutes(1), send("m1", "me too")))
            .await
            .inspect_result();
        assert!(matches!(
            result.as_deref(),
            Ok([ThreadEvent::MessageSent { number: 1, .. }])
        ));
    }

    fn schedule(id: &str, due_at: DateTime<Utc>) -> Action {
        Action::Schedule {
            scheduled_id: id.into(),
            text: "reminder".into(),
            attachment: None,
            due_at,
        }
    }

    #[tokio::test]
    async fn schedule_in_the_next_90_days_records_it_once() {
        expect_events(
            vec![opened()],
            cmd(agent(), t0(), schedule("s1", minutes(60))),
            vec![scheduled("s1", minutes(60))],
        )
        .await;
        expect_events(
            vec![opened(), scheduled("s1", minutes(60))],
            cmd(agent(), t0(), schedule("s1", minutes(60))),
            vec![],
        )
        .await;
        expect_events(
            vec![opened()],
            cmd(agent(), t0(), schedule("s1", t0() + SCHEDULE_HORIZON)),
            vec![scheduled("s1", t0() + SCHEDULE_HORIZON)],
        )
        .await;
    }

    #[tokio::test]
    async fn schedule_in_the_past_beyond_90_days_or_by_a_customer_is_refused() {
        expect_error(
            vec![opened()],
            cmd(agent(), t0(), schedule("s1", t0())),
            ThreadError::DueInPast,
        )
        .await;
        expect_error(
            vec![opened()],
            cmd(
                agent(),
                t0(),
                schedule("s1", t0() + SCHEDULE_HORIZON + Duration::seconds(1)),
            ),
            ThreadError::DueTooFar,
        )
        .await;
        expect_error(
            vec![opened()],
            cmd(customer(), t0(), schedule("s1", minutes(5))),
            ThreadError::Forbidden("Only the tenant's staff may do this."),
        )
        .await;
    }

    #[tokio::test]
    async fn reschedule_a_pending_message_moves_it() {
        expect_events(
            vec![opened(), scheduled("s1", minutes(60))],
            cmd(
                agent(),
                minutes(1),
                Action::Reschedule {
                    scheduled_id: "s1".into(),
                    due_at: minutes(120),
                },
            ),
            vec![ThreadEvent::MessageRescheduled {
                scheduled_id: "s1".into(),
                due_at: minutes(120),
            }],
        )
        .await;
    }

    #[tokio::test]
    async fn reschedule_into_the_past_unknown_or_delivered_is_refused() {
        let given = vec![opened(), scheduled("s1", minutes(60))];
        let reschedule = |id: &str, due_at| Action::Reschedule {
            scheduled_id: id.into(),
            due_at,
        };
        expect_error(
            given.clone(),
            cmd(agent(), minutes(10), reschedule("s1", minutes(5))),
            ThreadError::DueInPast,
        )
        .await;
        expect_error(
            given.clone(),
            cmd(agent(), minutes(10), reschedule("s9", minutes(90))),
            ThreadError::ScheduledNotFound,
        )
        .await;
        let mut cancelled = given;
        cancelled.push(ThreadEvent::ScheduleCancelled {
            scheduled_id: "s1".into(),
        });
        expect_error(
            cancelled,
            cmd(agent(), minutes(10), reschedule("s1", minutes(90))),
            ThreadError::ScheduleNotPending,
        )
        .await;
    }

    #[tokio::test]
    async fn cancel_is_recorded_once_and_refused_after_delivery() {
        let cancel = Action::CancelScheduled {
            scheduled_id: "s1".into(),
        };
        let cancelled = ThreadEvent::ScheduleCancelled {
            scheduled_id: "s1".into(),
        };
        let given = vec![opened(), scheduled("s1", minutes(60))];
        expect_events(
            given.clone(),
            cmd(agent(), minutes(1), cancel.clone()),
            vec![cancelled.clone()],
        )
        .await;
        let mut twice = given.clone();
        twice.push(cancelled);
        expect_events(twice, cmd(agent(), minutes(2), cancel.clone()), vec![]).await;
        let mut delivered = given;
        delivered.push(delivery("s1", 1, minutes(60)));
        expect_error(
            delivered,
            cmd(agent(), minutes(61), cancel),
            ThreadError::ScheduleNotPending,
        )
        .await;
    }

    fn delivery(id: &str, number: u64, at: DateTime<Utc>) -> ThreadEvent {
        ThreadEvent::MessageSent {
            message_id: format!("msg-{id}"),
            number,
            author: agent_party(),
            client_message_id: None,
            text: "reminder".into(),
            attachment: None,
            scheduled_id: Some(id.into()),
            at,
        }
    }

    fn deliver(id: &str) -> Action {
        Action::DeliverScheduled {
            scheduled_id: id.into(),
            message_id: format!("msg-{id}"),
        }
    }

    fn failed(id: &str, code: &str, reason: &str, at: DateTime<Utc>) -> ThreadEvent {
        ThreadEvent::ScheduleFailed {
            scheduled_id: id.into(),
            code: code.into(),
            reason: reason.into(),
            at,
        }
    }

    #[tokio::test]
    async fn deliver_of_a_message_whose_author_was_deactivated_records_it_failed() {
        let by_leaver = ThreadEvent::MessageScheduled {
            scheduled_id: "s1".into(),
            author: Party {
                id: "agent-0".into(),
                kind: PartyKind::Agent,
            },
            text: "reminder".into(),
            attachment: None,
            due_at: minutes(60),
        };
        expect_events(
            vec![opened(), by_leaver],
            cmd(scheduler(), minutes(60), deliver("s1")),
            vec![failed(
                "s1",
                "author_unavailable",
                "Its author can no longer write in this thread (deactivated, or no longer the tenant's staff).",
                minutes(60),
            )],
        )
        .await;
    }

    #[tokio::test]
    async fn fail_of_a_pending_message_by_the_scheduler_records_it_once() {
        let given = vec![opened(), scheduled("s1", minutes(60))];
        let give_up = || Action::FailScheduled {
            scheduled_id: "s1".into(),
            reason: "Not delivered after 8 tries".into(),
        };
        let gave_up = failed(
            "s1",
            "delivery_failed",
            "Not delivered after 8 tries",
            minutes(65),
        );
        expect_events(
            given.clone(),
            cmd(scheduler(), minutes(65), give_up()),
            vec![gave_up.clone()],
        )
        .await;
        let mut after = given.clone();
        after.push(gave_up.clone());
        expect_events(
            after.clone(),
            cmd(scheduler(), minutes(66), give_up()),
            vec![],
        )
        .await;
        // Nor a delivery afterwards.
        expect_events(after, cmd(scheduler(), minutes(66), deliver("s1")), vec![]).await;
        expect_error(
            given,
            cmd(agent(), minutes(65), give_up()),
            ThreadError::Forbidden("Scheduled messages are delivered by the scheduler."),
        )
        .await;
    }

    #[tokio::test]
    async fn reschedule_or_cancel_of_a_failed_message_brings_it_back_or_ends_it() {
        let given = vec![
            opened(),
            scheduled("s1", minutes(60)),
            failed("s1", "delivery_failed", "down", minutes(65)),
        ];
        let rescheduled = ThreadEvent::MessageRescheduled {
            scheduled_id: "s1".into(),
            due_at: minutes(90),
        };
        expect_events(
            given.clone(),
            cmd(
                agent(),
                minutes(70),
                Action::Reschedule {
                    scheduled_id: "s1".into(),
                    due_at: minutes(90),
                },
            ),
            vec![rescheduled.clone()],
        )
        .await;
        let mut again = given.clone();
        again.push(rescheduled);
        expect_events(
            again,
            cmd(scheduler(), minutes(90), deliver("s1")),
            vec![delivery("s1", 1, minutes(90))],
        )
        .await;
        expect_events(
            given,
            cmd(
                agent(),
                minutes(70),
                Action::CancelScheduled {
                    scheduled_id: "s1".into(),
                },
            ),
            vec![ThreadEvent::ScheduleCancelled {
                scheduled_id: "s1".into(),
            }],
        )
        .await;
    }

    #[tokio::test]
    async fn deliver_when_due_sends_the_message_as_its_author() {
        expect_events(
            vec![opened(), scheduled("s1", minutes(60))],
            cmd(scheduler(), minutes(60), deliver("s1")),
            vec![delivery("s1", 1, minutes(60))],
        )
        .await;
    }

    #[tokio::test]
    async fn deliver_twice_or_after_cancel_sends_nothing() {
        let given = vec![opened(), scheduled("s1", minutes(60))];
        let mut delivered = given.clone();
        delivered.push(delivery("s1", 1, minutes(60)));
        expect_events(
            delivered,
            cmd(scheduler(), minutes(61), deliver("s1")),
            vec![],
        )
        .await;
        let mut cancelled = given;
        cancelled.push(ThreadEvent::ScheduleCancelled {
            scheduled_id: "s1".into(),
        });
        expect_events(
            cancelled,
            cmd(scheduler(), minutes(61), deliver("s1")),
            vec![],
        )
        .await;
    }

    #[tokio::test]
    async fn deliver_before_due_or_by_anyone_but_the_platform_is_refused() {
        let given = vec![opened(), scheduled("s1", minutes(60))];
        expect_error(
            given.clone(),
            cmd(scheduler(), minutes(59), deliver("s1")),
            ThreadError::NotDue,
        )
        .await;
        expect_error(
            given,
            cmd(agent(), minutes(60), deliver("s1")),
            ThreadError::Forbidden("Scheduled messages are delivered by the scheduler."),
        )
        .await;
    }

    #[tokio::test]
    async fn deliver_into_a_closed_thread_reopens_it() {
        expect_events(
            vec![
                opened(),
                scheduled("s1", minutes(60)),
                ThreadEvent::Closed { at: minutes(5) },
            ],
            cmd(scheduler(), minutes(60), deliver("s1")),
            vec![
                ThreadEvent::Reopened { at: minutes(60) },
                delivery("s1", 1, minutes(60)),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn mark_read_below_what_the_reader_wrote_records_nothing() {
        expect_events(
            vec![
                opened(),
                sent("m1", 1, agent_party(), minutes(1)),
                sent("m2", 2, agent_party(), minutes(2)),
            ],
            cmd(agent(), minutes(3), Action::MarkRead { number: 1 }),
            vec![],
        )
        .await;
    }

    #[tokio::test]
    async fn send_with_an_attachment_of_another_tenant_is_refused() {
        let foreign = Action::Send {
            message_id: "m1".into(),
            client_message_id: None,
            text: "look".into(),
            attachment: Some(Attachment {
                object_key: "tenants/t2/logo/x.png".into(),
                content_type: "image/png".into(),
                name: None,
                size_bytes: 10,
            }),
        };
        expect_error(
            vec![opened()],
            cmd(customer(), minutes(1), foreign),
            ThreadError::InvalidAttachment,
        )
        .await;
    }

    #[tokio::test]
    async fn ids_with_control_characters_are_refused_before_any_look_up() {
        let assign = |agent: &str, department: Option<&str>| Action::Assign {
            agent_id: Some(agent.into()),
            department: department.map(Into::into),
        };
        expect_error(
            vec![opened()],
            cmd(agent(), t0(), assign("agent-\u{0}", None)),
            ThreadError::UnknownAgent,
        )
        .await;
        expect_error(
            vec![opened()],
            cmd(agent(), t0(), assign("agent-1", Some("sa\u{0}les"))),
            ThreadError::UnknownDepartment,
        )
        .await;
        expect_error(
            vec![opened()],
            cmd(
                agent(),
                t0(),
                Action::AddParticipant {
                    participant: Party {
                        id: "phone-\u{0}".into(),
                        kind: PartyKind::Phone,
                    },
                },
            ),
            ThreadError::InvalidParticipant,
        )
        .await;
    }

    #[tokio::test]
    async fn open_of_a_taken_id_is_a_conflict_only_for_those_who_may_see_it() {
        expect_error(
            vec![opened()],
            cmd(agent(), t0(), open_action()),
            ThreadError::AlreadyExists,
        )
        .await;
        expect_error(
            vec![opened()],
            cmd(stranger(), t0(), open_action()),
            ThreadError::NotFound,
        )
        .await;
    }

    #[tokio::test]
    async fn a_snapshot_round_trips_the_state() {
        let mut thread = Thread::default();
        for e in [
            opened(),
            sent("m1", 1, customer_party(), minutes(1)),
            scheduled("s1", minutes(60)),
        ] {
            thread.apply(e);
        }
        let json = serde_json::to_value(&thread).unwrap_or_default();
        let back: Thread = serde_json::from_value(json).unwrap_or_default();
        assert_eq!(back, thread);
        assert_eq!(back.tenant_id(), Some(TENANT));
    }

    fn telephony() -> Actor {
        Actor::System {
            component: "webhooks".into(),
        }
    }

    fn contact() -> Party {
        Party {
            id: "+15551230001".into(),
            kind: PartyKind::Contact,
        }
    }

    /// The platform opening a thread on `channel` for the contact.
    fn open_for_contact(channel: Channel) -> Action {
        Action::Open {
            tenant_id: TENANT.into(),
            channel,
            customer: Some(contact()),
            subject: None,
            tags: vec![],
            bot_enabled: None,
        }
    }

    /// The contact as a thread names them: by their subject id.
    fn contact_party() -> Party {
        Party::contact(TENANT, "+15551230001")
    }

    fn sms_thread() -> ThreadEvent {
        ThreadEvent::Opened {
            tenant_id: TENANT.into(),
            channel: Channel::Sms,
            opened_by: Party {
                id: "webhooks".into(),
                kind: PartyKind::System,
            },
            customer: Some(contact_party()),
            customer_address: Some("+15551230001".into()),
            subject: None,
            bot_enabled: true,
            tags: vec![],
            at: t0(),
        }
    }

    #[tokio::test]
    async fn open_for_a_contact_by_the_platform_on_sms_records_the_contact() {
        let when = open_for_contact(Channel::Sms);
        expect_events(vec![], cmd(telephony(), t0(), when), vec![sms_thread()]).await;
    }

    #[tokio::test]
    async fn open_by_a_customer_with_tags_or_the_bot_switch_is_refused() {
        let open = |tags: Vec<String>, bot_enabled| Action::Open {
            tenant_id: TENANT.into(),
            channel: Channel::Web,
            customer: None,
            subject: None,
            tags,
            bot_enabled,
        };
        for action in [open(vec!["vip".into()], None), open(vec![], Some(false))] {
            expect_error(
                vec![],
                cmd(customer(), t0(), action),
                ThreadError::Forbidden("Only the tenant's staff may do this."),
            )
            .await;
        }
        expect_events(
            vec![],
            cmd(customer(), t0(), open(vec![], None)),
            vec![opened()],
        )
        .await;
    }

    #[tokio::test]
    async fn open_for_a_contact_by_staff_or_on_the_web_is_refused() {
        let on = open_for_contact;
        expect_error(
            vec![],
            cmd(agent(), t0(), on(Channel::Web)),
            ThreadError::UnknownCustomer,
        )
        .await;
        expect_error(
            vec![],
            cmd(telephony(), t0(), on(Channel::Web)),
            ThreadError::UnknownCustomer,
        )
        .await;
    }

    #[tokio::test]
    async fn receive_by_the_platform_is_a_message_of_the_contact_once() {
        let receive = || Action::Receive {
            message_id: "m-sms".into(),
            text: "Is the shop open?".into(),
            from: contact(),
            channel: Channel::Sms,
            attachment: None,
        };
        let sent = ThreadEvent::MessageSent {
            message_id: "m-sms".into(),
            number: 1,
            author: contact_party(),
            client_message_id: None,
            text: "Is the shop open?".into(),
            attachment: None,
            scheduled_id: None,
            at: t0(),
        };
        expect_events(
            vec![sms_thread()],
            cmd(telephony(), t0(), receive()),
            vec![sent.clone()],
        )
        .await;
        expect_events(
            vec![sms_thread(), sent],
            cmd(telephony(), t0(), receive()),
            vec![],
        )
        .await;
    }

    #[tokio::test]
    async fn open_for_a_contact_names_them_by_subject_id_with_their_number_sealed_for_them() {
        let when = open_for_contact(Channel::Whatsapp);
        let opened = sealed_events(&[], cmd(telephony(), t0(), when)).await;
        let person = contact_party();
        assert!(uuid::Uuid::try_parse(&person.id).is_ok(), "{person:?}");
        let sealed = format!("sealed[{TENANT}/contact:{}]+15551230001", person.id);
        assert!(
            matches!(&opened[..], [ThreadEvent::Opened { customer: Some(c), customer_address: Some(a), .. }]
                if *c == person && *a == sealed),
            "{opened:?}"
        );
    }

    #[tokio::test]
    async fn receive_in_a_thread_that_names_its_contact_by_number_credits_them_as_it_names_them() {
        // Opened before contacts were named by subject id: the number is the id.
        let mut old = sms_thread();
        if let ThreadEvent::Opened {
            customer,
            customer_address,
            ..
        } = &mut old
        {
            *customer = Some(contact());
            *customer_address = None;
        }
        let receive = Action::Receive {
            message_id: "m-sms".into(),
            text: "Still open?".into(),
            from: contact(),
            channel: Channel::Sms,
            attachment: None,
        };
        expect_events(
            vec![old],
            cmd(telephony(), t0(), receive),
            vec![ThreadEvent::MessageSent {
                message_id: "m-sms".into(),
                number: 1,
                author: contact(),
                client_message_id: None,
                text: "Still open?".into(),
                attachment: None,
                scheduled_id: None,
                at: t0(),
            }],
        )
        .await;
    }

    #[tokio::test]
    async fn receive_into_a_thread_of_another_channel_or_customer_is_refused() {
        let from = |id: &str, channel| Action::Receive {
            message_id: "m-sms".into(),
            text: "Is the shop open?".into(),
            from: Party {
                id: id.into(),
                kind: PartyKind::Contact,
            },
            channel,
            attachment: None,
        };
        // A customer's web thread under the id the platform derives for a sender.
        expect_error(
            vec![opened()],
            cmd(telephony(), t0(), from("+15551230001", Channel::Sms)),
            ThreadError::NotTheSendersThread,
        )
        .await;
        expect_error(
            vec![sms_thread()],
            cmd(telephony(), t0(), from("+15551230002", Channel::Sms)),
            ThreadError::NotTheSendersThread,
        )
        .await;
        expect_error(
            vec![sms_thread()],
            cmd(telephony(), t0(), from("+15551230001", Channel::Whatsapp)),
            ThreadError::NotTheSendersThread,
        )
        .await;
    }

    #[tokio::test]
    async fn receive_by_staff_is_refused() {
        expect_error(
            vec![sms_thread()],
            cmd(
                agent(),
                t0(),
                Action::Receive {
                    message_id: "m".into(),
                    text: "forged".into(),
                    from: contact(),
                    channel: Channel::Sms,
                    attachment: None,
                },
            ),
            ThreadError::Forbidden("Messages from a channel are delivered by the platform."),
        )
        .await;
    }

    #[tokio::test]
    async fn receive_in_a_closed_thread_reopens_it() {
        let receive = Action::Receive {
            message_id: "m-sms".into(),
            text: "Hello again".into(),
            from: contact(),
            channel: Channel::Sms,
            attachment: None,
        };
        framework()
            .given(vec![sms_thread(), ThreadEvent::Closed { at: t0() }])
            .when_async(cmd(telephony(), minutes(1), receive))
            .await
            .then_expect_events(vec![
                ThreadEvent::Reopened { at: minutes(1) },
                ThreadEvent::MessageSent {
                    message_id: "m-sms".into(),
                    number: 1,
                    author: contact_party(),
                    client_message_id: None,
                    text: "Hello again".into(),
                    attachment: None,
                    scheduled_id: None,
                    at: minutes(1),
                },
            ]);
    }
}
