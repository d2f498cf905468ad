//! The aggregates of WhatsApp.
//!
//! - [`Session`] (id = [`session_id`] of the provider's phone number id): which tenant has
//!   the number connected, and its sealed credentials. One owner at a time.
//! - [`Conversation`] (id = [`conversation_id`] of tenant, session and contact): decides the
//!   customer-service window and every message's life. An outbound message is sent at most
//!   once: an attempt is recorded before the provider is called, and an attempt left without
//!   an outcome past its lease is failed visibly (`outcome_unknown`), never repeated; a
//!   status webhook naming it (the platform's id travels as the provider's
//!   `biz_opaque_callback_data`) still tells the truth afterwards.
//!
//! [`session_id`]: events::whatsapp::session_id
//! [`conversation_id`]: events::whatsapp::conversation_id

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use events::chat::Party;
use events::whatsapp::{
    attempt_lease, service_window, ConversationEvent, Delivery, Outbound, SessionEvent, Transport,
    MAX_SEND_ATTEMPTS, WHATSAPP_CONVERSATION, WHATSAPP_SESSION,
};
use serde::{Deserialize, Serialize};

/// Longest text of a text message (the provider's limit).
pub const MAX_TEXT_CHARS: usize = 4096;
/// Longest caption.
pub const MAX_CAPTION_CHARS: usize = 1024;
/// Most template parameters.
pub const MAX_TEMPLATE_PARAMETERS: usize = 20;
/// How many received messages, and how many finished (sent or failed) outbound ones, a
/// conversation keeps in its state; messages under way are always kept. An older message a
/// command names is read from the conversation's own events ([`History`]), so decisions do
/// not depend on it.
pub const RECENT_MESSAGES: usize = 256;

/// A conversation's own events, for the messages its state no longer holds, and the keys its
/// contact's personal data is sealed with (docs/privacy.md).
#[async_trait]
pub trait History: Send + Sync {
    /// The events of conversation `conversation` about message `message_id` (received or
    /// outbound), in order.
    async fn message_events(
        &self,
        conversation: &str,
        message_id: &str,
    ) -> Result<Vec<ConversationEvent>, String>;
    /// The outbound message the provider's id `wamid` was last recorded for.
    async fn message_of_wamid(
        &self,
        conversation: &str,
        wamid: &str,
    ) -> Result<Option<String>, String>;
    /// `text` sealed for data subject `subject`, a contact of `tenant_id`
    /// ([`ConversationError::ContactErased`] once they were erased).
    async fn seal(
        &self,
        tenant_id: &str,
        subject: uuid::Uuid,
        text: &str,
    ) -> Result<String, ConversationError>;
    /// The text `text` holds: opened when sealed (`[erased]` once its key is gone).
    async fn open(&self, text: &str) -> Result<String, String>;
    /// True when data subject `subject` was erased.
    async fn is_erased(&self, subject: uuid::Uuid) -> Result<bool, String>;
}

/// The services of the conversation aggregate.
pub type ConversationServices = Arc<dyn History>;

/// A command on a session.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionCommand {
    /// Connect the number for `tenant_id` (its credentials already checked with the
    /// provider); connecting again by the same tenant replaces the credentials.
    Connect {
        /// The tenant.
        tenant_id: String,
        /// How it reaches WhatsApp.
        transport: Transport,
        /// The provider's phone number id.
        phone_number_id: String,
        /// The business account id.
        business_account_id: Option<String>,
        /// The number as the provider shows it.
        display_phone_number: Option<String>,
        /// The verified business name.
        verified_name: Option<String>,
        /// Sealed credentials.
        credentials: String,
        /// Hex SHA-256 of the verify token.
        verify_token_sha256: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Disconnect it.
    Disconnect {
        /// The tenant asking.
        tenant_id: String,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Why a session command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// 409 `number_taken`.
    #[error("the number is connected by another tenant")]
    Taken,
    /// 404.
    #[error("no such WhatsApp session")]
    NotFound,
}

/// A session (also the snapshot form).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Session {
    /// The tenant that connected it last (kept after a disconnect: late inbound messages
    /// still land there).
    tenant_id: Option<String>,
    /// Whether it is connected now.
    connected: bool,
    /// How it reaches WhatsApp.
    transport: Transport,
    /// The provider's phone number id.
    phone_number_id: String,
    /// Sealed credentials.
    credentials: String,
    /// The WhatsApp Business Account (its templates are checked before a send).
    business_account_id: Option<String>,
}

impl Session {
    /// The WhatsApp Business Account, when known.
    pub fn business_account_id(&self) -> Option<&str> {
        self.business_account_id.as_deref()
    }

    /// The tenant that connected it last.
    pub fn tenant_id(&self) -> Option<&str> {
        self.tenant_id.as_deref()
    }

    /// Whether it is connected now.
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// The provider's phone number id.
    pub fn phone_number_id(&self) -> &str {
        &self.phone_number_id
    }

    /// Sealed credentials (JSON `{access_token, app_secret}`).
    pub fn credentials(&self) -> &str {
        &self.credentials
    }

    /// How it reaches WhatsApp.
    pub fn transport(&self) -> Transport {
        self.transport
    }
}

impl Aggregate for Session {
    const TYPE: &'static str = WHATSAPP_SESSION;
    type Command = SessionCommand;
    type Event = SessionEvent;
    type Error = SessionError;
    type Services = ();

    async fn handle(
        &mut self,
        command: SessionCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), SessionError> {
        let event = match command {
            SessionCommand::Connect {
                tenant_id,
                transport,
                phone_number_id,
                business_account_id,
                display_phone_number,
                verified_name,
                credentials,
                verify_token_sha256,
                at,
            } => {
                if self.connected && self.tenant_id.as_deref() != Some(tenant_id.as_str()) {
                    return Err(SessionError::Taken);
                }
                SessionEvent::Connected {
                    tenant_id,
                    transport,
                    phone_number_id,
                    business_account_id,
                    display_phone_number,
                    verified_name,
                    credentials,
                    verify_token_sha256,
                    at,
                }
            }
            SessionCommand::Disconnect { tenant_id, at } => {
                if self.tenant_id.as_deref() != Some(tenant_id.as_str()) {
                    return Err(SessionError::NotFound);
                }
                if !self.connected {
                    return Ok(());
                }
                SessionEvent::Disconnected { at }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Connected {
                tenant_id,
                transport,
                phone_number_id,
                business_account_id,
                credentials,
                ..
            } => {
                self.business_account_id = business_account_id;
                self.tenant_id = Some(tenant_id);
                self.connected = true;
                self.transport = transport;
                self.phone_number_id = phone_number_id;
                self.credentials = credentials;
            }
            SessionEvent::Disconnected { .. } => self.connected = false,
        }
    }
}

/// An inbound message as the webhook described it.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// The platform's id.
    pub message_id: String,
    /// The provider's id.
    pub wamid: String,
    /// The webhook.
    pub webhook_id: String,
    /// The contact's profile name.
    pub profile_name: Option<String>,
    /// The provider's type.
    pub kind: String,
    /// Its type's object.
    pub content: serde_json::Value,
    /// What the thread shows.
    pub text: String,
    /// What it replies or reacts to.
    pub context_wamid: Option<String>,
    /// When the contact sent it.
    pub sent_at: DateTime<Utc>,
}

/// What an attempt at sending came to.
#[derive(Debug, Clone, PartialEq)]
pub enum SendResult {
    /// The provider accepted it under `wamid`.
    Accepted {
        /// The provider's id.
        wamid: String,
    },
    /// The provider refused it (or could not be reached before it got the request).
    Refused {
        /// The provider's error code, or the HTTP status.
        code: Option<String>,
        /// Why.
        reason: String,
        /// Whether trying again may succeed (429, 5xx, throttling codes, no connection).
        retryable: bool,
        /// The provider's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
}

/// A status the provider reported.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusReport {
    /// The platform's id as the provider echoed it (`biz_opaque_callback_data`), if any.
    pub message_id: Option<String>,
    /// The provider's id.
    pub wamid: String,
    /// The status.
    pub status: Delivery,
    /// The provider's error code when failed.
    pub error_code: Option<String>,
    /// The provider's error title when failed.
    pub error_title: Option<String>,
    /// When the provider says it happened.
    pub provider_at: DateTime<Utc>,
    /// The webhook.
    pub webhook_id: String,
}

/// Who a conversation is between (every command that may start one names it).
#[derive(Debug, Clone, PartialEq)]
pub struct Parties {
    /// The tenant.
    pub tenant_id: String,
    /// The session.
    pub session_id: String,
    /// The contact's WhatsApp id.
    pub wa_id: String,
}

/// A command on a conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum ConversationCommand {
    /// Record an inbound message, delivered into `thread_id` unless it was recorded before.
    Receive {
        /// Between whom.
        parties: Parties,
        /// The message.
        message: Inbound,
        /// The thread it goes into if it is new.
        thread_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Queue an outbound message.
    Queue {
        /// Between whom.
        parties: Parties,
        /// Whether the session is connected now.
        session_connected: bool,
        /// The message's id (a retry names the same one).
        message_id: String,
        /// Who writes it.
        author: Party,
        /// What it says.
        content: Outbound,
        /// Its thread, if any.
        thread_id: Option<String>,
        /// Whether a refusal by the rules (window, disconnected session, invalid content) is
        /// recorded as a queued-then-failed message instead of refused: for replies already
        /// posted in a thread, where the agent must see why it did not go out.
        record_refusal: bool,
        /// When.
        at: DateTime<Utc>,
    },
    /// The sender asks to attempt `message_id` now.
    Claim {
        /// Which message.
        message_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The sender reports what attempt `attempt` came to.
    Report {
        /// Which message.
        message_id: String,
        /// Which attempt.
        attempt: u32,
        /// What happened.
        result: SendResult,
        /// When.
        at: DateTime<Utc>,
    },
    /// The provider reported a delivery status.
    Status {
        /// What it said.
        report: StatusReport,
    },
    /// Record what came of fetching an inbound message's file.
    StoreMedia {
        /// Which message.
        message_id: String,
        /// What came of it.
        result: MediaResult,
    },
    /// The agent changed a reply in its thread after it was queued here.
    Change {
        /// Which message.
        message_id: String,
        /// What they did.
        change: ReplyChange,
        /// When.
        at: DateTime<Utc>,
    },
}

/// What an agent did to a reply in its thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyChange {
    /// Deleted it.
    Delete,
    /// Edited its text.
    Edit {
        /// The new text.
        text: String,
    },
}

/// What came of fetching an inbound message's file.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaResult {
    /// Stored in the blob store.
    Stored {
        /// Blob key.
        object_key: String,
        /// Media type.
        content_type: String,
        /// Size in bytes.
        size_bytes: u64,
        /// Hex SHA-256.
        sha256: String,
    },
    /// Not to be had.
    Failed {
        /// Why.
        reason: String,
        /// Whether it may be had later (the session's token was refused).
        retryable: bool,
    },
}

/// Why a conversation command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversationError {
    /// 404.
    #[error("no such WhatsApp message")]
    NotFound,
    /// 422 `session_disconnected`.
    #[error("the WhatsApp session is disconnected")]
    SessionDisconnected,
    /// 422 `outside_service_window`.
    #[error("free-form messages may be sent only within 24 hours of the contact's last message; send a template")]
    OutsideWindow,
    /// 422 `invalid_message`.
    #[error("{0}")]
    InvalidMessage(&'static str),
    /// 409 `message_exists`.
    #[error("a different message with this id was queued before")]
    MessageExists,
    /// 503: the conversation's older messages, or its contact's keys, could not be read.
    #[error("history unavailable: {0}")]
    Unavailable(String),
    /// 410 `subject_erased`: the contact was erased, and nothing new is kept about them.
    #[error("the contact was erased: nothing is kept about them any more")]
    ContactErased,
}

/// Where an outbound message stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendState {
    /// Waiting for an attempt (or for its retry time).
    #[default]
    Queued,
    /// An attempt is under way.
    Attempting,
    /// Accepted by the provider.
    Sent,
    /// Will not be sent.
    Failed,
}

/// An outbound message's state.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Outgoing {
    /// What it says (to tell a retried queue command from another message).
    content: Option<Outbound>,
    /// Where it stands.
    pub state: SendState,
    /// Attempts begun.
    pub attempts: u32,
    /// When the attempt under way began.
    attempt_at: Option<DateTime<Utc>>,
    /// Not to be tried before.
    retry_at: Option<DateTime<Utc>>,
    /// The provider's id, once accepted.
    wamid: Option<String>,
    /// The failure's code.
    failure: Option<String>,
    /// The last delivery status.
    delivery: Option<Delivery>,
    /// Its thread.
    thread_id: Option<String>,
    /// The kinds of change (`edited`, `deleted`) recorded as not reaching the contact, so a
    /// repeated report of one records nothing.
    late_changes: BTreeSet<String>,
    /// A change made while an attempt was under way (or after one whose outcome is
    /// unknown): if that attempt turns out accepted, the contact got the original, and the
    /// agent is told.
    changed_in_flight: Option<String>,
    /// An attempt failed in a way that may hide a message the provider took (a 5xx, the
    /// provider's own trouble), so a later status may show it went out.
    #[serde(default)]
    may_have_gone_out: bool,
}

/// Whether a failed attempt's `code` may hide a message the provider took: an HTTP 5xx (the
/// code is then the status) or a Cloud API code of the provider's own trouble. Throttling
/// (429 and its codes) and no connection say the request was not taken.
fn may_have_gone_out(code: Option<&str>) -> bool {
    code.and_then(|c| c.parse::<u32>().ok()).is_some_and(|c| {
        (500..600).contains(&c) || [1, 2, 131000, 131016, 131057, 133004].contains(&c)
    })
}

/// A conversation (also the snapshot form). Bounded: it holds its last
/// [`RECENT_MESSAGES`] received messages, its outbound messages under way and its last
/// [`RECENT_MESSAGES`] finished ones.
///
/// Unknown fields make a snapshot undecodable, so a snapshot of an older shape (which held
/// every message and no counts) is replaced by a replay rather than read as a young one.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Conversation {
    /// Whether it began.
    started: bool,
    /// Its tenant.
    tenant_id: String,
    /// Its session.
    session_id: String,
    /// The contact's WhatsApp id, sealed for them (in clear in conversations started before
    /// it was sealed).
    wa_id: String,
    /// Its own id (empty in conversations started before it was recorded: then derived).
    id: String,
    /// When the contact last wrote (the provider's time).
    last_inbound_at: Option<DateTime<Utc>>,
    /// The thread the last inbound message went into.
    thread_id: Option<String>,
    /// Inbound messages recorded, and the thread each went into.
    inbound: HashMap<String, String>,
    /// Outbound messages.
    outbound: HashMap<String, Outgoing>,
    /// Outbound messages by the provider's id.
    by_wamid: HashMap<String, String>,
    /// Inbound messages whose file was stored or given up on.
    media_done: std::collections::HashSet<String>,
    /// Messages received in all (`inbound` may hold fewer).
    inbound_count: u64,
    /// The ids in `inbound`, oldest first.
    inbound_order: VecDeque<String>,
    /// Outbound messages queued in all (`outbound` may hold fewer).
    outbound_count: u64,
    /// The finished (sent or failed) messages in `outbound`, in the order they finished.
    finished_order: VecDeque<String>,
}

impl Conversation {
    /// Its tenant, once started.
    pub fn tenant_id(&self) -> Option<&str> {
        Some(self.tenant_id.as_str()).filter(|_| self.started)
    }

    /// Its session.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The contact's WhatsApp id: sealed for them (open it before use), or in clear in a
    /// conversation started before it was sealed.
    pub fn wa_id(&self) -> &str {
        &self.wa_id
    }

    /// Its own id: recorded when it started, or derived in a conversation started before it
    /// was recorded (whose WhatsApp id is in clear).
    pub fn id(&self) -> String {
        match self.id.is_empty() {
            true => {
                events::whatsapp::conversation_id(&self.tenant_id, &self.session_id, &self.wa_id)
            }
            false => self.id.clone(),
        }
    }

    /// The contact as a data subject (`None` once their id reads `[erased]`).
    pub fn contact_subject(&self) -> Option<uuid::Uuid> {
        events::whatsapp::contact_subject(&self.tenant_id, &self.wa_id)
    }

    /// The thread the contact's last message went into.
    pub fn thread_id(&self) -> Option<&str> {
        self.thread_id.as_deref()
    }

    /// This state, with message `message_id` read back from the conversation's events if
    /// the state no longer holds it: for callers that read a message's state through the
    /// accessors below.
    pub async fn with_message(
        mut self,
        message_id: &str,
        history: &ConversationServices,
    ) -> Result<Conversation, ConversationError> {
        let held = self.inbound.contains_key(message_id) || self.outbound.contains_key(message_id);
        if held || !self.started || self.holds_every_message() {
            return Ok(self);
        }
        let id = self.id();
        let past = history
            .message_events(&id, message_id)
            .await
            .map_err(ConversationError::Unavailable)?;
        if !past.is_empty() {
            self.recall(message_id, past);
        }
        Ok(self)
    }

    /// The thread inbound message `message_id` went into, if it was recorded.
    pub fn inbound_thread(&self, message_id: &str) -> Option<&str> {
        self.inbound.get(message_id).map(String::as_str)
    }

    /// Outbound message `message_id`.
    pub fn outgoing(&self, message_id: &str) -> Option<&Outgoing> {
        self.outbound.get(message_id)
    }

    /// Whether the file of inbound message `message_id` was stored or given up on.
    pub fn media_done(&self, message_id: &str) -> bool {
        self.media_done.contains(message_id)
    }

    /// Whether outbound message `message_id` may be attempted at `at` (queued, its retry
    /// time passed): what a claim then does.
    pub fn due(&self, message_id: &str, at: DateTime<Utc>) -> bool {
        self.outbound
            .get(message_id)
            .is_some_and(|o| o.state == SendState::Queued && o.retry_at.is_none_or(|r| at >= r))
    }

    /// The content of outbound message `message_id`.
    pub fn content(&self, message_id: &str) -> Option<&Outbound> {
        self.outbound.get(message_id)?.content.as_ref()
    }
}

/// The events of a thread reply whose contact was erased since it was written: queued with
/// its texts `[erased]` and failed at once (`subject_erased`), so its agent sees it will not
/// go out. Nothing of the contact is in them.
fn withheld_reply(events: Vec<ConversationEvent>, at: DateTime<Utc>) -> Vec<ConversationEvent> {
    let Some(ConversationEvent::MessageQueued {
        message_id,
        author,
        content,
        thread_id,
        at: queued_at,
    }) = events
        .into_iter()
        .find(|e| matches!(e, ConversationEvent::MessageQueued { .. }))
    else {
        return Vec::new();
    };
    let refused = ConversationError::ContactErased;
    vec![
        ConversationEvent::MessageQueued {
            message_id: message_id.clone(),
            author,
            content: super::personal::withheld(&content),
            thread_id: thread_id.clone(),
            at: queued_at,
        },
        ConversationEvent::MessageFailed {
            message_id,
            thread_id,
            code: refused.code().to_owned(),
            reason: refused.to_string(),
            at,
        },
    ]
}

/// The platform's id a status command names, if any.
fn command_callback(command: &ConversationCommand) -> Option<&str> {
    match command {
        ConversationCommand::Status { report } => report.message_id.as_deref(),
        _ => None,
    }
}

/// A queued reply as its agent edited it: a text's body, a file's caption.
fn revised(content: &Outbound, text: String) -> Outbound {
    let mut revised = content.clone();
    match &mut revised {
        Outbound::Text { body, .. } => *body = text,
        Outbound::Media { caption, .. } | Outbound::File { caption, .. } => {
            *caption = Some(text).filter(|t| !t.trim().is_empty());
        }
        Outbound::Template { .. } => {}
    }
    revised
}

/// The wait after failed attempt `attempt`: 2 s, 4 s … at most 5 minutes.
pub fn backoff(attempt: u32) -> Duration {
    crate::values::backoff(attempt, Duration::minutes(5))
}

/// A media message's caption (none for audio and stickers, at most 1024 characters) and
/// file name (1 to 240 characters).
fn media_labels(
    kind: events::whatsapp::MediaKind,
    caption: Option<&str>,
    filename: Option<&str>,
) -> Result<(), ConversationError> {
    use events::whatsapp::MediaKind as K;
    use ConversationError::InvalidMessage as Invalid;
    if let Some(caption) = caption {
        if matches!(kind, K::Audio | K::Sticker) {
            return Err(Invalid("Audio and stickers have no caption."));
        }
        if caption.chars().count() > MAX_CAPTION_CHARS {
            return Err(Invalid("A caption has at most 1024 characters."));
        }
    }
    if filename.is_some_and(|f| f.trim().is_empty() || f.len() > 240) {
        return Err(Invalid("A file name has 1 to 240 characters."));
    }
    Ok(())
}

fn check(content: &Outbound, tenant: &str) -> Result<(), ConversationError> {
    use ConversationError::InvalidMessage as Invalid;
    let blank = |s: &str| s.trim().is_empty();
    // No control characters (line breaks and tabs aside) anywhere: the store refuses NUL,
    // and the provider would refuse the rest.
    let controlled = |s: &str| {
        s.chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    };
    if texts(content).into_iter().any(controlled) {
        return Err(Invalid("A message holds no control characters."));
    }
    match content {
        Outbound::Text { body, .. } => {
            if blank(body) || body.chars().count() > MAX_TEXT_CHARS {
                return Err(Invalid("A text has 1 to 4096 characters."));
            }
        }
        Outbound::Media {
            kind,
            link,
            caption,
            filename,
        } => {
            if !link.starts_with("https://")
                || link.len() > 2048
                || link.contains(char::is_whitespace)
            {
                return Err(Invalid("Media are sent by an https:// link."));
            }
            media_labels(*kind, caption.as_deref(), filename.as_deref())?;
        }
        Outbound::File {
            kind,
            object_key,
            size_bytes,
            filename,
            caption,
            ..
        } => {
            if !object_key.starts_with(&format!("tenants/{tenant}/")) || object_key.contains("..") {
                return Err(Invalid("A file is one of the tenant's own."));
            }
            if *size_bytes == 0 || *size_bytes > kind.max_bytes() {
                return Err(Invalid(
                    "The file is empty or larger than WhatsApp takes for its kind.",
                ));
            }
            media_labels(*kind, caption.as_deref(), filename.as_deref())?;
        }
        Outbound::Template {
            name,
            language,
            parameters,
        } => check_template(name, language, parameters)?,
    }
    Ok(())
}

/// Every text a message carries, which no control character may be in.
fn texts(content: &Outbound) -> Vec<&str> {
    match content {
        Outbound::Text { body, .. } => vec![body],
        Outbound::Media {
            link,
            caption,
            filename,
            ..
        } => [Some(link.as_str()), caption.as_deref(), filename.as_deref()]
            .into_iter()
            .flatten()
            .collect(),
        Outbound::File {
            object_key,
            content_type,
            caption,
            filename,
            ..
        } => [
            Some(object_key.as_str()),
            Some(content_type.as_str()),
            caption.as_deref(),
            filename.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect(),
        Outbound::Template {
            name,
            language,
            parameters,
        } => [name.as_str(), language.as_str()]
            .into_iter()
            .chain(parameters.iter().map(String::as_str))
            .collect(),
    }
}

/// A template's name, language and parameters, as WhatsApp takes them.
fn check_template(
    name: &str,
    language: &str,
    parameters: &[String],
) -> Result<(), ConversationError> {
    use ConversationError::InvalidMessage as Invalid;
    let blank = |s: &str| s.trim().is_empty();
    let name_ok = !name.is_empty()
        && name.len() <= 512
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !name_ok {
        return Err(Invalid(
            "A template name has lowercase letters, digits and underscores.",
        ));
    }
    let language_ok = (2..=10).contains(&language.len())
        && language
            .chars()
            .all(|c| c.is_ascii_alphabetic() || c == '_');
    if !language_ok {
        return Err(Invalid("A template language is a code such as en_US."));
    }
    if parameters.len() > MAX_TEMPLATE_PARAMETERS {
        return Err(Invalid("A template has at most 20 parameters."));
    }
    if parameters
        .iter()
        .any(|p| blank(p) || p.chars().count() > MAX_CAPTION_CHARS)
    {
        return Err(Invalid(
            "Every template parameter has a value (1 to 1024 characters).",
        ));
    }
    Ok(())
}

impl ConversationError {
    /// The stable code (problem+json `code`, and a recorded failure's code).
    pub fn code(&self) -> &'static str {
        match self {
            ConversationError::NotFound => "not_found",
            ConversationError::SessionDisconnected => "session_disconnected",
            ConversationError::OutsideWindow => "outside_service_window",
            ConversationError::InvalidMessage(_) => "invalid_message",
            ConversationError::MessageExists => "message_exists",
            ConversationError::Unavailable(_) => "unavailable",
            ConversationError::ContactErased => "subject_erased",
        }
    }
}

impl Conversation {
    /// Outbound message `message_id` finished: it joins the finished ones, and the oldest
    /// finished one beyond [`RECENT_MESSAGES`] leaves the state.
    fn finished(&mut self, message_id: String) {
        self.finished_order.push_back(message_id);
        while self.finished_order.len() > RECENT_MESSAGES {
            let Some(old) = self.finished_order.pop_front() else {
                break;
            };
            if let Some(out) = self.outbound.remove(&old) {
                if let Some(wamid) = out.wamid {
                    if self.by_wamid.get(&wamid) == Some(&old) {
                        self.by_wamid.remove(&wamid);
                    }
                }
            }
        }
    }

    /// Whether every message the conversation has had is in its state.
    fn holds_every_message(&self) -> bool {
        self.inbound_order.len() as u64 == self.inbound_count
            && self.outbound.len() as u64 == self.outbound_count
    }

    /// When `command` names a message the state no longer holds, a copy of the state with
    /// that message read back from the conversation's events (folded by the same `apply`),
    /// so the command is decided as a state holding every message would decide it.
    async fn recalled(
        &self,
        command: &ConversationCommand,
        history: &ConversationServices,
    ) -> Result<Option<Conversation>, ConversationError> {
        use ConversationCommand as C;
        if !self.started || self.holds_every_message() {
            return Ok(None);
        }
        let (ids, wamid): (Vec<&str>, Option<&str>) = match command {
            C::Receive { message, .. } => (vec![message.message_id.as_str()], None),
            C::Queue { message_id, .. }
            | C::Change { message_id, .. }
            | C::Claim { message_id, .. }
            | C::Report { message_id, .. }
            | C::StoreMedia { message_id, .. } => (vec![message_id.as_str()], None),
            C::Status { report } => (
                report.message_id.as_deref().into_iter().collect(),
                Some(report.wamid.as_str()),
            ),
        };
        let id = self.id();
        let unavailable = ConversationError::Unavailable;
        let mut view: Option<Conversation> = None;
        let held =
            |c: &Conversation, m: &str| c.inbound.contains_key(m) || c.outbound.contains_key(m);
        for m in ids {
            if held(self, m) {
                continue;
            }
            let past = history.message_events(&id, m).await.map_err(unavailable)?;
            if past.is_empty() {
                continue;
            }
            view.get_or_insert_with(|| self.clone()).recall(m, past);
        }
        if let Some(wamid) = wamid {
            let state = view.as_ref().unwrap_or(self);
            let by_callback =
                command_callback(command).is_some_and(|m| state.outbound.contains_key(m));
            if !by_callback && !state.by_wamid.contains_key(wamid) {
                if let Some(m) = history
                    .message_of_wamid(&id, wamid)
                    .await
                    .map_err(unavailable)?
                {
                    let past = history.message_events(&id, &m).await.map_err(unavailable)?;
                    let view = view.get_or_insert_with(|| self.clone());
                    if !held(view, &m) {
                        view.recall(&m, past);
                    }
                    view.by_wamid.insert(wamid.to_owned(), m);
                }
            }
        }
        Ok(view)
    }

    /// Puts message `message_id`, as its `events` tell, back into this (copied) state.
    fn recall(&mut self, message_id: &str, events: Vec<ConversationEvent>) {
        let mut alone = Conversation::default();
        for event in events {
            alone.apply(event);
        }
        if let Some(thread) = alone.inbound.remove(message_id) {
            self.inbound.insert(message_id.to_owned(), thread);
        }
        if alone.media_done.contains(message_id) {
            self.media_done.insert(message_id.to_owned());
        }
        if let Some(out) = alone.outbound.remove(message_id) {
            self.outbound.insert(message_id.to_owned(), out);
        }
    }

    /// When `command` compares with an outbound message's content (a queue command naming it
    /// again, an edit), a copy of the state (or of `view`) with that content opened, so the
    /// rules compare plain text with plain text.
    async fn opened(
        &self,
        view: Option<Conversation>,
        command: &ConversationCommand,
        services: &ConversationServices,
    ) -> Result<Option<Conversation>, ConversationError> {
        use ConversationCommand as C;
        let message_id = match command {
            C::Queue { message_id, .. }
            | C::Change {
                message_id,
                change: ReplyChange::Edit { .. },
                ..
            } => message_id,
            _ => return Ok(view),
        };
        let state = view.as_ref().unwrap_or(self);
        let Some(content) = state.content(message_id) else {
            return Ok(view);
        };
        // Its contact was erased: nothing about them is decided any more.
        if !super::personal::outbound_sealed(content) {
            return match self.erased_in(content, services).await? {
                true => Err(ConversationError::ContactErased),
                false => Ok(view),
            };
        }
        let opened = super::personal::open_outbound(content, services).await?;
        if self.erased_in(&opened, services).await? {
            return Err(ConversationError::ContactErased);
        }
        let mut view = view.unwrap_or_else(|| self.clone());
        if let Some(out) = view.outbound.get_mut(message_id) {
            out.content = Some(opened);
        }
        Ok(Some(view))
    }

    /// Whether `content` (opened) reads `[erased]` because its contact was erased (a reply
    /// recorded as never sent, a text whose key is gone), not because someone wrote that.
    async fn erased_in(
        &self,
        content: &Outbound,
        services: &ConversationServices,
    ) -> Result<bool, ConversationError> {
        if !super::personal::outbound_erased(content) {
            return Ok(false);
        }
        match self.contact_subject() {
            Some(contact) => services
                .is_erased(contact)
                .await
                .map_err(ConversationError::Unavailable),
            None => Ok(true),
        }
    }

    /// Why the rules refuse sending `content` now, if they do.
    fn refusal(
        &self,
        tenant: &str,
        session_connected: bool,
        content: &Outbound,
        at: DateTime<Utc>,
    ) -> Option<ConversationError> {
        if !session_connected {
            return Some(ConversationError::SessionDisconnected);
        }
        if let Err(e) = check(content, tenant) {
            return Some(e);
        }
        let open = self
            .last_inbound_at
            .is_some_and(|last| at < last + service_window());
        (content.free_form() && !open).then_some(ConversationError::OutsideWindow)
    }

    fn start(&self, parties: &Parties) -> Option<ConversationEvent> {
        (!self.started).then(|| ConversationEvent::Started {
            tenant_id: parties.tenant_id.clone(),
            session_id: parties.session_id.clone(),
            wa_id: parties.wa_id.clone(),
            conversation_id: Some(events::whatsapp::conversation_id(
                &parties.tenant_id,
                &parties.session_id,
                &parties.wa_id,
            )),
        })
    }

    fn decide(
        &self,
        command: ConversationCommand,
    ) -> Result<Vec<ConversationEvent>, ConversationError> {
        Ok(match command {
            ConversationCommand::Receive {
                parties,
                message,
                thread_id,
                at,
            } => self.received(parties, message, thread_id, at)?,
            ConversationCommand::Queue {
                parties,
                session_connected,
                message_id,
                author,
                content,
                thread_id,
                record_refusal,
                at,
            } => self.queue(
                parties,
                session_connected,
                message_id,
                author,
                content,
                thread_id,
                record_refusal,
                at,
            )?,
            ConversationCommand::Change {
                message_id,
                change,
                at,
            } => self.change(message_id, change, at)?,
            ConversationCommand::Claim { message_id, at } => self.claim(message_id, at)?,
            ConversationCommand::Report {
                message_id,
                attempt,
                result,
                at,
            } => self.report(message_id, attempt, result, at)?,
            ConversationCommand::StoreMedia { message_id, result } => {
                self.store_media(message_id, result)?
            }
            ConversationCommand::Status { report } => self.status(report)?,
        })
    }

    /// Records an inbound message, once.
    fn received(
        &self,
        parties: Parties,
        message: Inbound,
        thread_id: String,
        at: DateTime<Utc>,
    ) -> Result<Vec<ConversationEvent>, ConversationError> {
        use ConversationEvent as E;
        if self.inbound.contains_key(&message.message_id) {
            return Ok(vec![]);
        }
        let mut events: Vec<_> = self.start(&parties).into_iter().collect();
        events.push(E::MessageReceived {
            message_id: message.message_id,
            wamid: message.wamid,
            webhook_id: message.webhook_id,
            profile_name: message.profile_name,
            kind: message.kind,
            content: message.content,
            text: message.text,
            context_wamid: message.context_wamid,
            sent_at: message.sent_at,
            thread_id,
            at,
        });
        Ok(events)
    }

    /// Queues an outbound message, or records why it is refused. (Its arguments are the
    /// command's fields, taken apart where the command is matched.)
    #[allow(clippy::too_many_arguments)]
    fn queue(
        &self,
        parties: Parties,
        session_connected: bool,
        message_id: String,
        author: Party,
        content: Outbound,
        thread_id: Option<String>,
        record_refusal: bool,
        at: DateTime<Utc>,
    ) -> Result<Vec<ConversationEvent>, ConversationError> {
        use ConversationEvent as E;
        if let Some(queued) = self.outbound.get(&message_id) {
            return match queued.content.as_ref() == Some(&content) {
                true => Ok(vec![]),
                false => Err(ConversationError::MessageExists),
            };
        }
        if self.inbound.contains_key(&message_id) {
            return Err(ConversationError::MessageExists);
        }
        let refusal = self.refusal(&parties.tenant_id, session_connected, &content, at);
        let mut events: Vec<_> = match (&refusal, record_refusal) {
            (Some(e), false) => return Err(e.clone()),
            _ => self.start(&parties).into_iter().collect(),
        };
        events.push(E::MessageQueued {
            message_id: message_id.clone(),
            author,
            content,
            thread_id: thread_id.clone(),
            at,
        });
        if let Some(refused) = refusal {
            events.push(E::MessageFailed {
                message_id,
                thread_id,
                code: refused.code().to_owned(),
                reason: refused.to_string(),
                at,
            });
        }
        Ok(events)
    }

    /// Changes (edits or deletes) a reply before or after it is sent.
    fn change(
        &self,
        message_id: String,
        change: ReplyChange,
        at: DateTime<Utc>,
    ) -> Result<Vec<ConversationEvent>, ConversationError> {
        use ConversationEvent as E;
        let out = self
            .outbound
            .get(&message_id)
            .ok_or(ConversationError::NotFound)?;
        let thread_id = out.thread_id.clone();
        Ok(match out.state {
            // It never went out: nothing to change.
            SendState::Failed => vec![],
            // Not yet accepted (queued, waiting for a retry, or an attempt under way
            // whose outcome decides: accepted, the agent is told the contact has the
            // original; refused, the change holds).
            SendState::Queued | SendState::Attempting => match change {
                ReplyChange::Delete => vec![E::MessageFailed {
                    message_id,
                    thread_id,
                    code: "withdrawn".into(),
                    reason: if out.state == SendState::Attempting || out.may_have_gone_out {
                        // Not known yet: said plainly, corrected by
                        // `ChangeNotDelivered` if the provider turns out to have it.
                        "The agent deleted it while it was being sent: it is not sent again, but WhatsApp may already have taken it."
                    } else {
                        "The agent deleted it before it went out."
                    }
                    .into(),
                    at,
                }],
                ReplyChange::Edit { text } => {
                    let Some(content) = out.content.as_ref() else {
                        return Ok(vec![]);
                    };
                    let revised = revised(content, text);
                    if &revised == content {
                        return Ok(vec![]);
                    }
                    check(&revised, &self.tenant_id)?;
                    vec![E::MessageRevised {
                        message_id,
                        thread_id,
                        content: revised,
                        at,
                    }]
                }
            },
            // Told once per kind of change: the contact has the original.
            SendState::Sent => {
                let kind = match &change {
                    ReplyChange::Delete => "deleted",
                    ReplyChange::Edit { .. } => "edited",
                };
                if out.late_changes.contains(kind) {
                    return Ok(vec![]);
                }
                vec![E::ChangeNotDelivered {
                    message_id,
                    thread_id,
                    change: kind.into(),
                    delivery: out.delivery.filter(|d| *d != Delivery::Sent),
                    at,
                }]
            }
        })
    }

    /// Claims a queued message for one send attempt.
    fn claim(
        &self,
        message_id: String,
        at: DateTime<Utc>,
    ) -> Result<Vec<ConversationEvent>, ConversationError> {
        use ConversationEvent as E;
        let out = self
            .outbound
            .get(&message_id)
            .ok_or(ConversationError::NotFound)?;
        Ok(match out.state {
            SendState::Sent | SendState::Failed => vec![],
            SendState::Attempting => match out.attempt_at {
                Some(began) if at < began + attempt_lease() => vec![],
                _ => vec![E::MessageFailed {
                    message_id,
                    thread_id: out.thread_id.clone(),
                    code: "outcome_unknown".into(),
                    reason: "The sender stopped before it learnt whether WhatsApp took the message; it was not sent again, so it may not have reached the contact.".into(),
                    at,
                }],
            },
            SendState::Queued if out.retry_at.is_some_and(|r| at < r) => vec![],
            SendState::Queued => vec![E::SendAttempted {
                message_id,
                attempt: out.attempts + 1,
                at,
            }],
        })
    }

    /// Records the outcome of a send attempt.
    fn report(
        &self,
        message_id: String,
        attempt: u32,
        result: SendResult,
        at: DateTime<Utc>,
    ) -> Result<Vec<ConversationEvent>, ConversationError> {
        use ConversationEvent as E;
        let out = self
            .outbound
            .get(&message_id)
            .ok_or(ConversationError::NotFound)?;
        // A provider's `failed` status is the last word: a late acceptance report
        // does not turn the message back into sent.
        if attempt != out.attempts
            || out.state == SendState::Sent
            || out.delivery == Some(Delivery::Failed)
        {
            return Ok(vec![]);
        }
        Ok(match result {
            // Accepted is the truth even after an in-doubt failure was recorded (or
            // a withdrawal made while the attempt was under way).
            SendResult::Accepted { wamid } => {
                let mut events = vec![E::MessageSent {
                    message_id: message_id.clone(),
                    wamid,
                    thread_id: out.thread_id.clone(),
                    at,
                }];
                if let Some(change) = out
                    .changed_in_flight
                    .as_ref()
                    .filter(|c| !out.late_changes.contains(c.as_str()))
                {
                    events.push(E::ChangeNotDelivered {
                        message_id,
                        thread_id: out.thread_id.clone(),
                        change: change.clone(),
                        delivery: None,
                        at,
                    });
                }
                events
            }
            SendResult::Refused { .. } if out.state != SendState::Attempting => vec![],
            SendResult::Refused {
                code,
                reason,
                retryable,
                retry_after,
            } => {
                if retryable && attempt < MAX_SEND_ATTEMPTS {
                    let wait = backoff(attempt).max(retry_after.unwrap_or_default());
                    vec![E::SendAttemptFailed {
                        message_id,
                        thread_id: out.thread_id.clone(),
                        attempt,
                        code,
                        reason,
                        retry_at: at + wait,
                    }]
                } else {
                    let code = match (retryable, code) {
                        (false, Some(code)) => code,
                        (false, None) => "refused".into(),
                        (true, _) => "attempts_exhausted".into(),
                    };
                    vec![E::MessageFailed {
                        message_id,
                        thread_id: out.thread_id.clone(),
                        code,
                        reason,
                        at,
                    }]
                }
            }
        })
    }

    /// Records the file of an inbound message, or why it could not be stored.
    fn store_media(
        &self,
        message_id: String,
        result: MediaResult,
    ) -> Result<Vec<ConversationEvent>, ConversationError> {
        use ConversationEvent as E;
        if !self.inbound.contains_key(&message_id) {
            return Err(ConversationError::NotFound);
        }
        if self.media_done.contains(&message_id) {
            return Ok(vec![]);
        }
        Ok(vec![match result {
            MediaResult::Stored {
                object_key,
                content_type,
                size_bytes,
                sha256,
            } => E::MediaStored {
                message_id,
                object_key,
                content_type,
                size_bytes,
                sha256,
            },
            MediaResult::Failed { reason, retryable } => E::MediaFailed {
                message_id,
                reason,
                retryable,
            },
        }])
    }

    /// Records a status the provider reported for an outbound message.
    fn status(&self, report: StatusReport) -> Result<Vec<ConversationEvent>, ConversationError> {
        use ConversationEvent as E;
        let message_id = report
            .message_id
            .clone()
            .filter(|m| self.outbound.contains_key(m))
            .or_else(|| self.by_wamid.get(&report.wamid).cloned())
            .ok_or(ConversationError::NotFound)?;
        let Some(out) = self.outbound.get(&message_id) else {
            return Err(ConversationError::NotFound);
        };
        let mut events = Vec::new();
        // A status for a message without a recorded acceptance (its sender died after
        // the provider answered, or a bridge took it) is how the platform learns what
        // became of it.
        match (out.state, report.status) {
            (SendState::Sent, _) => {}
            (SendState::Failed, Delivery::Failed) => {}
            (_, Delivery::Failed) => events.push(E::MessageFailed {
                message_id: message_id.clone(),
                thread_id: out.thread_id.clone(),
                code: report.error_code.clone().unwrap_or_else(|| "failed".into()),
                reason: report
                    .error_title
                    .clone()
                    .unwrap_or_else(|| "WhatsApp could not deliver it.".into()),
                at: report.provider_at,
            }),
            _ => {
                events.push(E::MessageSent {
                    message_id: message_id.clone(),
                    wamid: report.wamid.clone(),
                    thread_id: out.thread_id.clone(),
                    at: report.provider_at,
                });
                // Sent after all (an attempt in doubt, or one a change was made
                // during): a change made meanwhile did not reach the contact.
                if let Some(change) = out
                    .changed_in_flight
                    .as_ref()
                    .filter(|c| !out.late_changes.contains(c.as_str()))
                {
                    events.push(E::ChangeNotDelivered {
                        message_id: message_id.clone(),
                        thread_id: out.thread_id.clone(),
                        change: change.clone(),
                        // The status this report brings (it follows).
                        delivery: Some(report.status).filter(|d| *d != Delivery::Sent),
                        at: report.provider_at,
                    });
                }
            }
        }
        let forward = match out.delivery {
            None => true,
            Some(Delivery::Failed) => false,
            Some(_) if report.status == Delivery::Failed => true,
            Some(current) => report.status > current,
        };
        if forward {
            events.push(E::StatusUpdated {
                message_id,
                thread_id: out.thread_id.clone(),
                status: report.status,
                error_code: report.error_code,
                error_title: report.error_title,
                provider_at: report.provider_at,
                webhook_id: report.webhook_id,
            });
        }
        Ok(events)
    }

    /// What became of a reply on its way out: attempts, acceptance, failure, changes,
    /// delivery statuses.
    fn apply_outgoing(&mut self, event: ConversationEvent) {
        use ConversationEvent as E;
        match event {
            E::SendAttempted {
                message_id,
                attempt,
                at,
            } => {
                if let Some(out) = self.outbound.get_mut(&message_id) {
                    out.state = SendState::Attempting;
                    out.attempts = attempt;
                    out.attempt_at = Some(at);
                    // This attempt sends what the reply says now, changes included.
                    out.changed_in_flight = None;
                }
            }
            E::SendAttemptFailed {
                message_id,
                retry_at,
                code,
                ..
            } => {
                if let Some(out) = self.outbound.get_mut(&message_id) {
                    out.state = SendState::Queued;
                    out.attempt_at = None;
                    out.retry_at = Some(retry_at);
                    out.may_have_gone_out |= may_have_gone_out(code.as_deref());
                }
            }
            E::MessageSent {
                message_id, wamid, ..
            } => {
                if let Some(out) = self.outbound.get_mut(&message_id) {
                    let first_finish = !matches!(out.state, SendState::Sent | SendState::Failed);
                    out.state = SendState::Sent;
                    out.failure = None;
                    out.wamid = Some(wamid.clone());
                    self.by_wamid.insert(wamid, message_id.clone());
                    if first_finish {
                        self.finished(message_id);
                    }
                }
            }
            E::MessageFailed {
                message_id, code, ..
            } => {
                if let Some(out) = self.outbound.get_mut(&message_id) {
                    // Should the provider yet report it went out (an attempt taken after
                    // all), the agent is told the contact has it.
                    if code == "withdrawn" {
                        out.changed_in_flight = Some("deleted".into());
                    }
                    let first_finish = !matches!(out.state, SendState::Sent | SendState::Failed);
                    out.state = SendState::Failed;
                    out.failure = Some(code);
                    if first_finish {
                        self.finished(message_id);
                    }
                }
            }
            change @ (E::MessageRevised { .. }
            | E::ChangeNotDelivered { .. }
            | E::StatusUpdated { .. }) => self.apply_reply_change(change),
            _ => {}
        }
    }

    /// A reply revised, a change that did not reach the contact, a delivery status.
    fn apply_reply_change(&mut self, event: ConversationEvent) {
        use ConversationEvent as E;
        match event {
            E::MessageRevised {
                message_id,
                content,
                ..
            } => {
                if let Some(out) = self.outbound.get_mut(&message_id) {
                    out.content = Some(content);
                    // Until an attempt carries the edit (`SendAttempted` clears it), a
                    // report that an earlier one went out means the contact has the
                    // original.
                    out.changed_in_flight = Some("edited".into());
                }
            }
            E::ChangeNotDelivered {
                message_id, change, ..
            } => {
                if let Some(out) = self.outbound.get_mut(&message_id) {
                    out.late_changes.insert(change);
                }
            }
            E::StatusUpdated {
                message_id, status, ..
            } => {
                if let Some(out) = self.outbound.get_mut(&message_id) {
                    out.delivery = Some(status);
                }
            }
            _ => {}
        }
    }
}

impl Aggregate for Conversation {
    const TYPE: &'static str = WHATSAPP_CONVERSATION;
    type Command = ConversationCommand;
    type Event = ConversationEvent;
    type Error = ConversationError;
    type Services = ConversationServices;

    async fn handle(
        &mut self,
        command: ConversationCommand,
        history: &ConversationServices,
        sink: &EventSink<Self>,
    ) -> Result<(), ConversationError> {
        let recalled = self.recalled(&command, history).await?;
        let view = self.opened(recalled, &command, history).await?;
        let state = view.as_ref().unwrap_or(self);
        // A thread reply (recorded even when refused) whose contact was erased since it was
        // written is recorded as never sent, its texts `[erased]`, so its agent sees why.
        let reply = match &command {
            ConversationCommand::Queue {
                record_refusal: true,
                at,
                ..
            } => Some(*at),
            _ => None,
        };
        let events = state.decide(command)?;
        // The contact: the conversation's, or, for its first event, the one it starts with.
        let (tenant, subject) = match events.first() {
            Some(ConversationEvent::Started {
                tenant_id, wa_id, ..
            }) => (
                tenant_id.clone(),
                events::whatsapp::contact_subject(tenant_id, wa_id),
            ),
            _ => (self.tenant_id.clone(), self.contact_subject()),
        };
        let events = match super::personal::seal(events.clone(), &tenant, subject, history).await {
            Err(ConversationError::ContactErased) if self.started && reply.is_some() => {
                withheld_reply(events, reply.unwrap_or_default())
            }
            sealed => sealed?,
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: ConversationEvent) {
        use ConversationEvent as E;
        match event {
            E::Started {
                tenant_id,
                session_id,
                wa_id,
                conversation_id,
            } => {
                self.started = true;
                self.tenant_id = tenant_id;
                self.session_id = session_id;
                self.wa_id = wa_id;
                self.id = conversation_id.unwrap_or_default();
            }
            E::MessageReceived {
                message_id,
                sent_at,
                thread_id,
                ..
            } => {
                self.last_inbound_at =
                    Some(self.last_inbound_at.map_or(sent_at, |l| l.max(sent_at)));
                self.thread_id = Some(thread_id.clone());
                if self.inbound.insert(message_id.clone(), thread_id).is_none() {
                    self.inbound_count += 1;
                    self.inbound_order.push_back(message_id);
                }
                while self.inbound_order.len() > RECENT_MESSAGES {
                    if let Some(old) = self.inbound_order.pop_front() {
                        self.inbound.remove(&old);
                        self.media_done.remove(&old);
                    }
                }
            }
            E::MessageQueued {
                message_id,
                content,
                thread_id,
                ..
            } => {
                let queued = Outgoing {
                    content: Some(content),
                    thread_id,
                    ..Outgoing::default()
                };
                if self.outbound.insert(message_id, queued).is_none() {
                    self.outbound_count += 1;
                }
            }
            outgoing @ (E::SendAttempted { .. }
            | E::SendAttemptFailed { .. }
            | E::MessageSent { .. }
            | E::MessageFailed { .. }
            | E::MessageRevised { .. }
            | E::ChangeNotDelivered { .. }
            | E::StatusUpdated { .. }) => self.apply_outgoing(outgoing),
            // A failure that may pass (the session's token refused) leaves the file to be
            // fetched again.
            E::MediaStored { message_id, .. }
            | E::MediaFailed {
                message_id,
                retryable: false,
                ..
            } => {
                // An evicted message's file is in the events its look-up reads.
                if self.inbound.contains_key(&message_id) {
                    self.media_done.insert(message_id);
                }
            }
            E::MediaFailed { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;
    use events::chat::PartyKind;
    use events::personal::ERASED;

    use super::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0)
            .single()
            .unwrap_or_default()
    }

    fn connect(tenant: &str) -> SessionCommand {
        SessionCommand::Connect {
            tenant_id: tenant.into(),
            transport: Transport::Cloud,
            phone_number_id: "106540352242922".into(),
            business_account_id: Some("102290129340398".into()),
            display_phone_number: Some("15550783881".into()),
            verified_name: Some("Shop".into()),
            credentials: "v1.sealed".into(),
            verify_token_sha256: "ab".into(),
            at: t0(),
        }
    }

    fn connected(tenant: &str) -> SessionEvent {
        SessionEvent::Connected {
            tenant_id: tenant.into(),
            transport: Transport::Cloud,
            phone_number_id: "106540352242922".into(),
            business_account_id: Some("102290129340398".into()),
            display_phone_number: Some("15550783881".into()),
            verified_name: Some("Shop".into()),
            credentials: "v1.sealed".into(),
            verify_token_sha256: "ab".into(),
            at: t0(),
        }
    }

    #[test]
    fn connect_a_free_number_connects_it() {
        TestFramework::<Session>::with(())
            .given_no_previous_events()
            .when(connect("t1"))
            .then_expect_events(vec![connected("t1")]);
    }

    #[test]
    fn connect_a_number_another_tenant_has_connected_is_refused() {
        TestFramework::<Session>::with(())
            .given(vec![connected("t1")])
            .when(connect("t2"))
            .then_expect_error(SessionError::Taken);
    }

    #[test]
    fn connect_again_by_its_tenant_replaces_the_credentials() {
        TestFramework::<Session>::with(())
            .given(vec![connected("t1")])
            .when(connect("t1"))
            .then_expect_events(vec![connected("t1")]);
    }

    #[test]
    fn connect_after_a_disconnect_by_another_tenant_is_allowed() {
        TestFramework::<Session>::with(())
            .given(vec![
                connected("t1"),
                SessionEvent::Disconnected { at: t0() },
            ])
            .when(connect("t2"))
            .then_expect_events(vec![connected("t2")]);
    }

    #[test]
    fn disconnect_by_its_tenant_disconnects_once_and_by_another_is_not_found() {
        let disconnect = |t: &str| SessionCommand::Disconnect {
            tenant_id: t.into(),
            at: t0(),
        };
        TestFramework::<Session>::with(())
            .given(vec![connected("t1")])
            .when(disconnect("t1"))
            .then_expect_events(vec![SessionEvent::Disconnected { at: t0() }]);
        TestFramework::<Session>::with(())
            .given(vec![
                connected("t1"),
                SessionEvent::Disconnected { at: t0() },
            ])
            .when(disconnect("t1"))
            .then_expect_events(vec![]);
        TestFramework::<Session>::with(())
            .given(vec![connected("t1")])
            .when(disconnect("t2"))
            .then_expect_error(SessionError::NotFound);
    }

    /// The conversation's events as the store would hold them (for the look-ups of messages
    /// the state no longer holds).
    struct PastEvents(Vec<ConversationEvent>);

    /// The message an event is about.
    fn about(event: &ConversationEvent) -> Option<&str> {
        use ConversationEvent as E;
        match event {
            E::Started { .. } => None,
            E::MessageReceived { message_id, .. }
            | E::MessageQueued { message_id, .. }
            | E::SendAttempted { message_id, .. }
            | E::SendAttemptFailed { message_id, .. }
            | E::MessageSent { message_id, .. }
            | E::MessageFailed { message_id, .. }
            | E::StatusUpdated { message_id, .. }
            | E::MediaStored { message_id, .. }
            | E::MediaFailed { message_id, .. }
            | E::MessageRevised { message_id, .. }
            | E::ChangeNotDelivered { message_id, .. } => Some(message_id),
        }
    }

    #[async_trait]
    impl History for PastEvents {
        async fn message_events(
            &self,
            _conversation: &str,
            message_id: &str,
        ) -> Result<Vec<ConversationEvent>, String> {
            Ok(self
                .0
                .iter()
                .filter(|e| about(e) == Some(message_id))
                .cloned()
                .collect())
        }

        async fn message_of_wamid(
            &self,
            _conversation: &str,
            wamid: &str,
        ) -> Result<Option<String>, String> {
            Ok(self.0.iter().rev().find_map(|e| match e {
                ConversationEvent::MessageSent {
                    message_id,
                    wamid: w,
                    ..
                } if w == wamid => Some(message_id.clone()),
                _ => None,
            }))
        }

        async fn seal(
            &self,
            _tenant_id: &str,
            _subject: uuid::Uuid,
            text: &str,
        ) -> Result<String, ConversationError> {
            Ok(text.to_owned())
        }

        async fn open(&self, text: &str) -> Result<String, String> {
            Ok(text.to_owned())
        }

        async fn is_erased(&self, _subject: uuid::Uuid) -> Result<bool, String> {
            Ok(false)
        }
    }

    /// [`PastEvents`] that seal as `pii1.{subject}.{nil}.{text}` (and open that again), and
    /// know the contacts in `erased` as erased.
    struct Sealing {
        past: PastEvents,
        erased: Vec<uuid::Uuid>,
    }

    #[async_trait]
    impl History for Sealing {
        async fn message_events(
            &self,
            conversation: &str,
            message_id: &str,
        ) -> Result<Vec<ConversationEvent>, String> {
            self.past.message_events(conversation, message_id).await
        }

        async fn message_of_wamid(
            &self,
            conversation: &str,
            wamid: &str,
        ) -> Result<Option<String>, String> {
            self.past.message_of_wamid(conversation, wamid).await
        }

        async fn seal(
            &self,
            _tenant_id: &str,
            subject: uuid::Uuid,
            text: &str,
        ) -> Result<String, ConversationError> {
            match self.erased.contains(&subject) {
                true => Err(ConversationError::ContactErased),
                false => Ok(format!("pii1.{subject}.{}.{text}", uuid::Uuid::nil())),
            }
        }

        /// A field of an erased contact reads `[erased]`, as once their keys are gone.
        async fn open(&self, text: &str) -> Result<String, String> {
            Ok(match events::personal::SealedField::parse(text) {
                Some(f) if self.erased.contains(&f.subject) => ERASED.to_owned(),
                Some(_) => text.splitn(4, '.').nth(3).unwrap_or_default().to_owned(),
                None => text.to_owned(),
            })
        }

        async fn is_erased(&self, subject: uuid::Uuid) -> Result<bool, String> {
            Ok(self.erased.contains(&subject))
        }
    }

    /// The contact of [`parties`], as a data subject.
    fn contact() -> uuid::Uuid {
        events::personal::subject_id("contact", "t1", "+16505551234")
    }

    /// `text` sealed for [`contact`] as [`Sealing`] seals.
    fn sealed(text: &str) -> String {
        format!("pii1.{}.{}.{text}", contact(), uuid::Uuid::nil())
    }

    /// The framework over `given`, sealing as [`Sealing`] does, with `erased` contacts.
    fn sealing_over(
        given: &[ConversationEvent],
        erased: Vec<uuid::Uuid>,
    ) -> TestFramework<Conversation> {
        let past = PastEvents(given.to_vec());
        TestFramework::<Conversation>::with(Arc::new(Sealing { past, erased }))
    }

    #[test]
    fn receive_seals_the_contacts_number_name_text_and_message_for_them() {
        let events = sealing_over(&[], vec![])
            .given_no_previous_events()
            .when(receive("in1"))
            .inspect_result()
            .expect("recorded");
        let [ConversationEvent::Started {
            wa_id,
            conversation_id,
            ..
        }, ConversationEvent::MessageReceived {
            profile_name,
            content,
            text,
            wamid,
            ..
        }] = events.as_slice()
        else {
            panic!("started and received: {events:?}");
        };
        assert_eq!(wa_id, &sealed("16505551234"));
        assert_eq!(
            conversation_id.as_deref(),
            Some(events::whatsapp::conversation_id("t1", "s1", "16505551234").as_str())
        );
        assert_eq!(profile_name.as_deref(), Some(sealed("Kerry").as_str()));
        assert_eq!(text, &sealed("Hi"));
        assert_eq!(content, &serde_json::json!(sealed(r#"{"body":"Hi"}"#)));
        assert_eq!(wamid, "wamid.in1", "the provider's ids stay in clear");
    }

    #[test]
    fn queue_seals_every_text_of_the_message_for_the_contact_and_not_the_templates_name() {
        let given = [started_sealed(), received("in1", t0())];
        let queued_content = |content: Outbound| {
            let events = sealing_over(&given, vec![])
                .given(given.to_vec())
                .when(queue(content, t0()))
                .inspect_result()
                .expect("queued");
            match events.as_slice() {
                [ConversationEvent::MessageQueued { content, .. }] => content.clone(),
                other => panic!("queued: {other:?}"),
            }
        };
        assert_eq!(
            queued_content(text("Your order")),
            text(&sealed("Your order"))
        );
        assert_eq!(
            queued_content(template(&["Kerry", "42"])),
            Outbound::Template {
                name: "order_update".into(),
                language: "en_US".into(),
                parameters: vec![sealed("Kerry"), sealed("42")],
            }
        );
    }

    #[test]
    fn queue_again_of_a_sealed_message_compares_what_it_says() {
        let given = [started_sealed(), queued(text(&sealed("See you")), t0())];
        sealing_over(&given, vec![])
            .given(given.to_vec())
            .when(queue(text("See you"), t0()))
            .then_expect_events(vec![]);
        sealing_over(&given, vec![])
            .given(given.to_vec())
            .when(queue(text("Something else"), t0()))
            .then_expect_error(ConversationError::MessageExists);
    }

    #[test]
    fn an_edit_of_a_sealed_reply_to_the_same_text_records_nothing_and_another_is_sealed() {
        let given = [started_sealed(), queued(text(&sealed("See you")), t0())];
        let edit = |text: &str| ConversationCommand::Change {
            message_id: "out1".into(),
            change: ReplyChange::Edit { text: text.into() },
            at: t0(),
        };
        sealing_over(&given, vec![])
            .given(given.to_vec())
            .when(edit("See you"))
            .then_expect_events(vec![]);
        sealing_over(&given, vec![])
            .given(given.to_vec())
            .when(edit("See you at 5"))
            .then_expect_events(vec![ConversationEvent::MessageRevised {
                message_id: "out1".into(),
                thread_id: Some("th1".into()),
                content: text(&sealed("See you at 5")),
                at: t0(),
            }]);
    }

    #[test]
    fn nothing_new_is_recorded_about_an_erased_contact() {
        sealing_over(&[], vec![contact()])
            .given_no_previous_events()
            .when(receive("in1"))
            .then_expect_error(ConversationError::ContactErased);
        let given = [started_sealed()];
        sealing_over(&given, vec![contact()])
            .given(given.to_vec())
            .when(queue(template(&["42"]), t0()))
            .then_expect_error(ConversationError::ContactErased);
        // What carries nothing of theirs is still recorded: a report on a message sent.
        let given = [started_sealed(), queued(text(&sealed("Hi")), t0())];
        sealing_over(&given, vec![contact()])
            .given(given.to_vec())
            .when(claim(t0()))
            .then_expect_events(vec![attempted(1, t0())]);
        // The same message again: refused as erased, not as another message.
        sealing_over(&given, vec![contact()])
            .given(given.to_vec())
            .when(queue(text("Hi"), t0()))
            .then_expect_error(ConversationError::ContactErased);
    }

    #[test]
    fn a_thread_reply_forwarded_after_its_contact_was_erased_is_recorded_as_never_sent() {
        let given = [started_sealed(), received("in1", t0())];
        let mut reply = queue(text("See you, Kerry"), t0());
        if let ConversationCommand::Queue { record_refusal, .. } = &mut reply {
            *record_refusal = true;
        }
        let refused = ConversationError::ContactErased;
        sealing_over(&given, vec![contact()])
            .given(given.to_vec())
            .when(reply.clone())
            .then_expect_events(vec![
                queued(text(ERASED), t0()),
                ConversationEvent::MessageFailed {
                    message_id: "out1".into(),
                    thread_id: Some("th1".into()),
                    code: "subject_erased".into(),
                    reason: refused.to_string(),
                    at: t0(),
                },
            ]);
        // Forwarded again: refused, nothing more recorded.
        let given = [
            started_sealed(),
            received("in1", t0()),
            queued(text(ERASED), t0()),
        ];
        sealing_over(&given, vec![contact()])
            .given(given.to_vec())
            .when(reply)
            .then_expect_error(ConversationError::ContactErased);
    }

    /// [`started`] as recorded since the contact's id is sealed.
    fn started_sealed() -> ConversationEvent {
        ConversationEvent::Started {
            tenant_id: "t1".into(),
            session_id: "s1".into(),
            wa_id: sealed("16505551234"),
            conversation_id: Some(events::whatsapp::conversation_id("t1", "s1", "16505551234")),
        }
    }

    #[test]
    fn a_conversation_started_before_sealing_derives_its_id_and_contact_from_the_number() {
        let mut old = Conversation::default();
        old.apply(ConversationEvent::Started {
            tenant_id: "t1".into(),
            session_id: "s1".into(),
            wa_id: "16505551234".into(),
            conversation_id: None,
        });
        let mut new = Conversation::default();
        new.apply(started_sealed());
        assert_eq!(old.id(), new.id());
        assert_eq!(old.contact_subject(), Some(contact()));
        assert_eq!(new.contact_subject(), Some(contact()));
    }

    fn no_history() -> ConversationServices {
        Arc::new(PastEvents(Vec::new()))
    }

    /// `out1` queued, sent (`wamid.OUT`) and `in1` received, then enough other messages both
    /// ways to push both out of the state.
    fn long_conversation() -> Vec<ConversationEvent> {
        let mut given = vec![
            started(),
            queued(text("first"), t0()),
            attempted(1, t0()),
            sent(),
            received("in1", t0()),
        ];
        for n in 0..(RECENT_MESSAGES + 10) {
            let id = format!("o{n}");
            given.push(ConversationEvent::MessageQueued {
                message_id: id.clone(),
                author: agent(),
                content: text("later"),
                thread_id: Some("th1".into()),
                at: t0(),
            });
            given.push(ConversationEvent::MessageSent {
                message_id: id.clone(),
                wamid: format!("wamid.{id}"),
                thread_id: Some("th1".into()),
                at: t0(),
            });
            given.push(received(&format!("i{n}"), t0()));
        }
        given
    }

    fn over(given: &[ConversationEvent]) -> TestFramework<Conversation> {
        TestFramework::<Conversation>::with(Arc::new(PastEvents(given.to_vec())))
    }

    #[test]
    fn a_long_conversation_keeps_a_bounded_state() {
        let mut state = Conversation::default();
        for event in long_conversation() {
            state.apply(event);
        }
        assert_eq!(state.inbound_count, RECENT_MESSAGES as u64 + 11);
        assert_eq!(state.outbound_count, RECENT_MESSAGES as u64 + 11);
        assert_eq!(state.inbound.len(), RECENT_MESSAGES);
        assert_eq!(state.outbound.len(), RECENT_MESSAGES);
        assert_eq!(state.by_wamid.len(), RECENT_MESSAGES);
        assert!(state.inbound_thread("in1").is_none() && state.outgoing("out1").is_none());
        assert!(!state.holds_every_message());
    }

    #[tokio::test]
    async fn commands_on_messages_older_than_the_state_keeps_decide_from_their_events() {
        let given = long_conversation();
        // A redelivered inbound message appends nothing.
        over(&given)
            .given(given.clone())
            .when_async(receive("in1"))
            .await
            .then_expect_events(vec![]);
        // A retried queue command appends nothing; another message under its id is refused,
        // and so is an outbound message under an inbound one's id.
        over(&given)
            .given(given.clone())
            .when_async(queue(text("first"), t0()))
            .await
            .then_expect_events(vec![]);
        over(&given)
            .given(given.clone())
            .when_async(queue(text("other"), t0()))
            .await
            .then_expect_error(ConversationError::MessageExists);
        let mut as_inbound = queue(text("x"), t0());
        if let ConversationCommand::Queue { message_id, .. } = &mut as_inbound {
            *message_id = "in1".into();
        }
        over(&given)
            .given(given.clone())
            .when_async(as_inbound)
            .await
            .then_expect_error(ConversationError::MessageExists);
        // A claim of a sent message appends nothing.
        over(&given)
            .given(given.clone())
            .when_async(claim(t0()))
            .await
            .then_expect_events(vec![]);
        // Late statuses, by the platform's id or by the provider's only.
        over(&given)
            .given(given.clone())
            .when_async(status(Delivery::Read, Some("out1")))
            .await
            .then_expect_events(vec![updated(Delivery::Read)]);
        over(&given)
            .given(given.clone())
            .when_async(status(Delivery::Delivered, None))
            .await
            .then_expect_events(vec![updated(Delivery::Delivered)]);
        // The file of an old inbound message.
        let stored = ConversationEvent::MediaStored {
            message_id: "in1".into(),
            object_key: "tenants/t1/whatsapp/in1".into(),
            content_type: "image/jpeg".into(),
            size_bytes: 3,
            sha256: "ab".into(),
        };
        let store = ConversationCommand::StoreMedia {
            message_id: "in1".into(),
            result: MediaResult::Stored {
                object_key: "tenants/t1/whatsapp/in1".into(),
                content_type: "image/jpeg".into(),
                size_bytes: 3,
                sha256: "ab".into(),
            },
        };
        over(&given)
            .given(given.clone())
            .when_async(store.clone())
            .await
            .then_expect_events(vec![stored.clone()]);
        let mut done = given;
        done.push(stored);
        over(&done)
            .given(done.clone())
            .when_async(store)
            .await
            .then_expect_events(vec![]);
        // A message the conversation never had is still unknown.
        over(&done)
            .given(done.clone())
            .when_async(ConversationCommand::Claim {
                message_id: "nowhere".into(),
                at: t0(),
            })
            .await
            .then_expect_error(ConversationError::NotFound);
    }

    #[tokio::test]
    async fn an_old_message_read_back_for_a_route_has_its_state() {
        let given = long_conversation();
        let mut state = Conversation::default();
        for event in given.clone() {
            state.apply(event);
        }
        let history: ConversationServices = Arc::new(PastEvents(given));
        let state = state
            .with_message("in1", &history)
            .await
            .expect("read back");
        assert_eq!(state.inbound_thread("in1"), Some("th1"));
        let state = state
            .with_message("out1", &history)
            .await
            .expect("read back");
        assert_eq!(
            state.outgoing("out1").map(|o| o.state),
            Some(SendState::Sent)
        );
    }

    fn parties() -> Parties {
        Parties {
            tenant_id: "t1".into(),
            session_id: "s1".into(),
            wa_id: "16505551234".into(),
        }
    }

    fn started() -> ConversationEvent {
        ConversationEvent::Started {
            tenant_id: "t1".into(),
            session_id: "s1".into(),
            wa_id: "16505551234".into(),
            conversation_id: Some(events::whatsapp::conversation_id("t1", "s1", "16505551234")),
        }
    }

    fn inbound(id: &str, sent_at: DateTime<Utc>) -> Inbound {
        Inbound {
            message_id: id.into(),
            wamid: format!("wamid.{id}"),
            webhook_id: "w1".into(),
            profile_name: Some("Kerry".into()),
            kind: "text".into(),
            content: serde_json::json!({"body": "Hi"}),
            text: "Hi".into(),
            context_wamid: None,
            sent_at,
        }
    }

    fn received(id: &str, sent_at: DateTime<Utc>) -> ConversationEvent {
        ConversationEvent::MessageReceived {
            message_id: id.into(),
            wamid: format!("wamid.{id}"),
            webhook_id: "w1".into(),
            profile_name: Some("Kerry".into()),
            kind: "text".into(),
            content: serde_json::json!({"body": "Hi"}),
            text: "Hi".into(),
            context_wamid: None,
            sent_at,
            thread_id: "th1".into(),
            at: t0(),
        }
    }

    fn receive(id: &str) -> ConversationCommand {
        ConversationCommand::Receive {
            parties: parties(),
            message: inbound(id, t0()),
            thread_id: "th1".into(),
            at: t0(),
        }
    }

    fn agent() -> Party {
        Party {
            id: "agent-1".into(),
            kind: PartyKind::Agent,
        }
    }

    fn text(body: &str) -> Outbound {
        Outbound::Text {
            body: body.into(),
            preview_url: false,
        }
    }

    fn template(parameters: &[&str]) -> Outbound {
        Outbound::Template {
            name: "order_update".into(),
            language: "en_US".into(),
            parameters: parameters.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    fn queue(content: Outbound, at: DateTime<Utc>) -> ConversationCommand {
        ConversationCommand::Queue {
            parties: parties(),
            session_connected: true,
            message_id: "out1".into(),
            author: agent(),
            content,
            thread_id: Some("th1".into()),
            record_refusal: false,
            at,
        }
    }

    fn queued(content: Outbound, at: DateTime<Utc>) -> ConversationEvent {
        ConversationEvent::MessageQueued {
            message_id: "out1".into(),
            author: agent(),
            content,
            thread_id: Some("th1".into()),
            at,
        }
    }

    fn attempted(attempt: u32, at: DateTime<Utc>) -> ConversationEvent {
        ConversationEvent::SendAttempted {
            message_id: "out1".into(),
            attempt,
            at,
        }
    }

    fn claim(at: DateTime<Utc>) -> ConversationCommand {
        ConversationCommand::Claim {
            message_id: "out1".into(),
            at,
        }
    }

    fn report(attempt: u32, result: SendResult) -> ConversationCommand {
        ConversationCommand::Report {
            message_id: "out1".into(),
            attempt,
            result,
            at: t0(),
        }
    }

    fn refused(retryable: bool) -> SendResult {
        SendResult::Refused {
            code: Some(if retryable { "130429" } else { "131026" }.into()),
            reason: "nope".into(),
            retryable,
            retry_after: None,
        }
    }

    fn sent() -> ConversationEvent {
        ConversationEvent::MessageSent {
            message_id: "out1".into(),
            wamid: "wamid.OUT".into(),
            thread_id: Some("th1".into()),
            at: t0(),
        }
    }

    fn status(status: Delivery, callback: Option<&str>) -> ConversationCommand {
        ConversationCommand::Status {
            report: StatusReport {
                message_id: callback.map(str::to_owned),
                wamid: "wamid.OUT".into(),
                status,
                error_code: None,
                error_title: None,
                provider_at: t0(),
                webhook_id: "w2".into(),
            },
        }
    }

    fn updated(status: Delivery) -> ConversationEvent {
        ConversationEvent::StatusUpdated {
            message_id: "out1".into(),
            thread_id: Some("th1".into()),
            status,
            error_code: None,
            error_title: None,
            provider_at: t0(),
            webhook_id: "w2".into(),
        }
    }

    #[test]
    fn receive_a_first_message_starts_the_conversation() {
        TestFramework::<Conversation>::with(no_history())
            .given_no_previous_events()
            .when(receive("m1"))
            .then_expect_events(vec![started(), received("m1", t0())]);
    }

    #[test]
    fn receive_a_message_again_appends_nothing() {
        TestFramework::<Conversation>::with(no_history())
            .given(vec![started(), received("m1", t0())])
            .when(receive("m1"))
            .then_expect_events(vec![]);
    }

    #[test]
    fn queue_text_within_the_window_is_queued() {
        let at = t0() + Duration::hours(23);
        TestFramework::<Conversation>::with(no_history())
            .given(vec![started(), received("m1", t0())])
            .when(queue(text("Hello"), at))
            .then_expect_events(vec![queued(text("Hello"), at)]);
    }

    #[test]
    fn queue_text_after_the_window_is_refused() {
        TestFramework::<Conversation>::with(no_history())
            .given(vec![started(), received("m1", t0())])
            .when(queue(text("Hello"), t0() + Duration::hours(24)))
            .then_expect_error(ConversationError::OutsideWindow);
    }

    #[test]
    fn queue_text_to_a_contact_who_never_wrote_is_refused() {
        TestFramework::<Conversation>::with(no_history())
            .given_no_previous_events()
            .when(queue(text("Hello"), t0()))
            .then_expect_error(ConversationError::OutsideWindow);
    }

    #[test]
    fn queue_a_template_outside_the_window_starts_the_conversation() {
        TestFramework::<Conversation>::with(no_history())
            .given_no_previous_events()
            .when(queue(template(&["42"]), t0()))
            .then_expect_events(vec![started(), queued(template(&["42"]), t0())]);
    }

    #[test]
    fn queue_a_template_with_an_empty_parameter_is_refused() {
        TestFramework::<Conversation>::with(no_history())
            .given_no_previous_events()
            .when(queue(template(&["42", " "]), t0()))
            .then_expect_error(ConversationError::InvalidMessage(
                "Every template parameter has a value (1 to 1024 characters).",
            ));
    }

    #[test]
    fn queue_on_a_disconnected_session_is_refused() {
        let mut command = queue(template(&[]), t0());
        if let ConversationCommand::Queue {
            session_connected, ..
        } = &mut command
        {
            *session_connected = false;
        }
        TestFramework::<Conversation>::with(no_history())
            .given_no_previous_events()
            .when(command)
            .then_expect_error(ConversationError::SessionDisconnected);
    }

    #[test]
    fn queue_a_thread_reply_outside_the_window_records_it_as_failed() {
        let mut command = queue(text("Hello"), t0());
        if let ConversationCommand::Queue { record_refusal, .. } = &mut command {
            *record_refusal = true;
        }
        TestFramework::<Conversation>::with(no_history())
            .given(vec![started()])
            .when(command)
            .then_expect_events(vec![
                queued(text("Hello"), t0()),
                ConversationEvent::MessageFailed {
                    message_id: "out1".into(),
                    thread_id: Some("th1".into()),
                    code: "outside_service_window".into(),
                    reason: ConversationError::OutsideWindow.to_string(),
                    at: t0(),
                },
            ]);
    }

    #[test]
    fn queue_invalid_content_is_refused() {
        let media = |link: &str, kind, caption: Option<&str>| Outbound::Media {
            kind,
            link: link.into(),
            caption: caption.map(str::to_owned),
            filename: None,
        };
        for content in [
            text("nul \u{0} inside"),
            text(""),
            text(&"x".repeat(MAX_TEXT_CHARS + 1)),
            media(
                "http://example.com/a.png",
                events::whatsapp::MediaKind::Image,
                None,
            ),
            media(
                "https://example.com/a.ogg",
                events::whatsapp::MediaKind::Audio,
                Some("hi"),
            ),
            Outbound::Template {
                name: "Bad Name".into(),
                language: "en_US".into(),
                parameters: vec![],
            },
            Outbound::File {
                kind: events::whatsapp::MediaKind::Document,
                object_key: "tenants/t2/files/menu.pdf".into(),
                content_type: "application/pdf".into(),
                size_bytes: 10,
                filename: None,
                caption: None,
            },
            Outbound::File {
                kind: events::whatsapp::MediaKind::Image,
                object_key: "tenants/t1/files/big.jpg".into(),
                content_type: "image/jpeg".into(),
                size_bytes: 6 * 1024 * 1024,
                filename: None,
                caption: None,
            },
        ] {
            let refused = Conversation::default().decide(queue(content.clone(), t0()));
            // (Files are the tenant's own, within their kind's limit.)
            assert!(
                matches!(refused, Err(ConversationError::InvalidMessage(_))),
                "{content:?}"
            );
        }
    }

    #[test]
    fn queue_the_same_message_again_appends_nothing_and_another_under_its_id_is_refused() {
        TestFramework::<Conversation>::with(no_history())
            .given(vec![started(), queued(template(&[]), t0())])
            .when(queue(template(&[]), t0()))
            .then_expect_events(vec![]);
        TestFramework::<Conversation>::with(no_history())
            .given(vec![started(), queued(template(&[]), t0())])
            .when(queue(template(&["other"]), t0()))
            .then_expect_error(ConversationError::MessageExists);
    }

    fn change(change: ReplyChange) -> ConversationCommand {
        ConversationCommand::Change {
            message_id: "out1".into(),
            change,
            at: t0(),
        }
    }

    fn edit(text: &str) -> ReplyChange {
        ReplyChange::Edit { text: text.into() }
    }

    /// The agent is told a `change` of reply `out1` did not reach the contact, whose copy is
    /// `delivery` (absent: sent).
    fn not_delivered(change: &str, delivery: Option<Delivery>) -> ConversationEvent {
        ConversationEvent::ChangeNotDelivered {
            message_id: "out1".into(),
            thread_id: Some("th1".into()),
            change: change.into(),
            delivery,
            at: t0(),
        }
    }

    /// The agent deleted reply `out1` before it went out.
    fn withdrawn() -> ConversationEvent {
        ConversationEvent::MessageFailed {
            message_id: "out1".into(),
            thread_id: Some("th1".into()),
            code: "withdrawn".into(),
            reason: "The agent deleted it before it went out.".into(),
            at: t0(),
        }
    }

    /// The agent deleted reply `out1` while an attempt was under way, or after one whose
    /// outcome is unknown.
    fn withdrawn_in_flight() -> ConversationEvent {
        ConversationEvent::MessageFailed {
            message_id: "out1".into(),
            thread_id: Some("th1".into()),
            code: "withdrawn".into(),
            reason: "The agent deleted it while it was being sent: it is not sent again, but WhatsApp may already have taken it.".into(),
            at: t0(),
        }
    }

    /// The provider throttled the first attempt at `out1`; it is tried again at `retry_at`.
    fn throttled(retry_at: DateTime<Utc>) -> ConversationEvent {
        ConversationEvent::SendAttemptFailed {
            message_id: "out1".into(),
            thread_id: Some("th1".into()),
            attempt: 1,
            code: Some("130429".into()),
            reason: "throttled".into(),
            retry_at,
        }
    }

    #[test]
    fn change_delete_of_a_reply_not_sent_yet_withdraws_it() {
        TestFramework::<Conversation>::with(no_history())
            .given(vec![started(), queued(text("card 4242"), t0())])
            .when(change(ReplyChange::Delete))
            .then_expect_events(vec![withdrawn()]);
    }

    #[test]
    fn change_edit_of_a_reply_waiting_for_a_retry_sends_the_edited_text() {
        let failed = throttled(t0() + Duration::seconds(6));
        let history = vec![
            started(),
            queued(text("See you tomorow"), t0()),
            attempted(1, t0()),
            failed,
        ];
        TestFramework::<Conversation>::with(no_history())
            .given(history.clone())
            .when(change(edit("See you tomorrow")))
            .then_expect_events(vec![ConversationEvent::MessageRevised {
                message_id: "out1".into(),
                thread_id: Some("th1".into()),
                content: text("See you tomorrow"),
                at: t0(),
            }]);
        // What the next attempt sends is the edited text.
        let mut state = Conversation::default();
        for event in history {
            state.apply(event);
        }
        state.apply(ConversationEvent::MessageRevised {
            message_id: "out1".into(),
            thread_id: Some("th1".into()),
            content: text("See you tomorrow"),
            at: t0(),
        });
        assert_eq!(state.content("out1"), Some(&text("See you tomorrow")));
    }

    #[test]
    fn change_while_an_attempt_is_under_way_holds_unless_the_attempt_is_accepted() {
        let under_way = vec![started(), queued(text("Hi"), t0()), attempted(1, t0())];
        let withdrawn = withdrawn_in_flight();
        TestFramework::<Conversation>::with(no_history())
            .given(under_way.clone())
            .when(change(ReplyChange::Delete))
            .then_expect_events(vec![withdrawn.clone()]);
        // The attempt was accepted after all: the contact has it, and the agent is told.
        let mut deleted_in_flight = under_way.clone();
        deleted_in_flight.push(withdrawn);
        TestFramework::<Conversation>::with(no_history())
            .given(deleted_in_flight)
            .when(report(
                1,
                SendResult::Accepted {
                    wamid: "wamid.OUT".into(),
                },
            ))
            .then_expect_events(vec![sent(), not_delivered("deleted", None)]);
    }

    #[test]
    fn change_after_a_server_error_is_reported_when_a_status_shows_the_original_went_out() {
        let server_error = ConversationEvent::SendAttemptFailed {
            message_id: "out1".into(),
            thread_id: Some("th1".into()),
            attempt: 1,
            code: Some("500".into()),
            reason: "Internal Server Error".into(),
            retry_at: t0() + Duration::seconds(30),
        };
        let after_error = vec![
            started(),
            queued(text("My card is 4242"), t0()),
            attempted(1, t0()),
            server_error,
        ];
        TestFramework::<Conversation>::with(no_history())
            .given(after_error.clone())
            .when(change(ReplyChange::Delete))
            .then_expect_events(vec![withdrawn_in_flight()]);
        let mut deleted = after_error.clone();
        deleted.push(withdrawn_in_flight());
        TestFramework::<Conversation>::with(no_history())
            .given(deleted)
            .when(status(Delivery::Delivered, Some("out1")))
            .then_expect_events(vec![
                sent(),
                not_delivered("deleted", Some(Delivery::Delivered)),
                updated(Delivery::Delivered),
            ]);
        // After a throttled attempt (never taken) a deletion is plainly a withdrawal; should
        // the provider still report it delivered, the agent is told the contact has it.
        let throttled_then = vec![
            started(),
            queued(text("Hi"), t0()),
            attempted(1, t0()),
            throttled(t0()),
        ];
        TestFramework::<Conversation>::with(no_history())
            .given(throttled_then.clone())
            .when(change(ReplyChange::Delete))
            .then_expect_events(vec![withdrawn()]);
        let mut withdrawn_then = throttled_then;
        withdrawn_then.push(withdrawn());
        TestFramework::<Conversation>::with(no_history())
            .given(withdrawn_then)
            .when(status(Delivery::Delivered, Some("out1")))
            .then_expect_events(vec![
                sent(),
                not_delivered("deleted", Some(Delivery::Delivered)),
                updated(Delivery::Delivered),
            ]);
    }

    #[test]
    fn change_of_a_reply_already_sent_is_recorded_as_not_delivered_once() {
        let history = vec![
            started(),
            queued(text("Hi"), t0()),
            attempted(1, t0()),
            sent(),
        ];
        let told = not_delivered("edited", None);
        TestFramework::<Conversation>::with(no_history())
            .given(history.clone())
            .when(change(edit("Hello")))
            .then_expect_events(vec![told.clone()]);
        let mut read = history.clone();
        read.push(updated(Delivery::Read));
        TestFramework::<Conversation>::with(no_history())
            .given(read)
            .when(change(edit("Hello")))
            .then_expect_events(vec![not_delivered("edited", Some(Delivery::Read))]);
        let mut after = history;
        after.push(told);
        TestFramework::<Conversation>::with(no_history())
            .given(after)
            .when(change(edit("Hello!")))
            .then_expect_events(vec![]);
    }

    #[test]
    fn an_attempt_in_doubt_reported_sent_by_a_status_tells_of_the_change_made_during_it() {
        let revised = ConversationEvent::MessageRevised {
            message_id: "out1".into(),
            thread_id: Some("th1".into()),
            content: text("Edited"),
            at: t0(),
        };
        let in_doubt = ConversationEvent::MessageFailed {
            message_id: "out1".into(),
            thread_id: Some("th1".into()),
            code: "outcome_unknown".into(),
            reason: "unknown".into(),
            at: t0(),
        };
        TestFramework::<Conversation>::with(no_history())
            .given(vec![
                started(),
                queued(text("Original"), t0()),
                attempted(1, t0()),
                revised.clone(),
                in_doubt,
            ])
            .when(status(Delivery::Sent, Some("out1")))
            .then_expect_events(vec![
                sent(),
                not_delivered("edited", None),
                updated(Delivery::Sent),
            ]);
        // A change made before a later attempt went out with it: nothing to tell.
        TestFramework::<Conversation>::with(no_history())
            .given(vec![
                started(),
                queued(text("Original"), t0()),
                attempted(1, t0()),
                revised,
                throttled(t0()),
                attempted(2, t0()),
            ])
            .when(report(
                2,
                SendResult::Accepted {
                    wamid: "wamid.OUT".into(),
                },
            ))
            .then_expect_events(vec![sent()]);
    }

    #[test]
    fn change_of_a_reply_that_failed_appends_nothing() {
        let failed = ConversationEvent::MessageFailed {
            message_id: "out1".into(),
            thread_id: Some("th1".into()),
            code: "131026".into(),
            reason: "undeliverable".into(),
            at: t0(),
        };
        TestFramework::<Conversation>::with(no_history())
            .given(vec![started(), queued(text("Hi"), t0()), failed])
            .when(change(ReplyChange::Delete))
            .then_expect_events(vec![]);
    }

    #[test]
    fn claim_a_queued_message_begins_an_attempt() {
        TestFramework::<Conversation>::with(no_history())
            .given(vec![started(), queued(template(&[]), t0())])
            .when(claim(t0()))
            .then_expect_events(vec![attempted(1, t0())]);
    }

    #[test]
    fn claim_an_attempt_under_way_appends_nothing() {
        TestFramework::<Conversation>::with(no_history())
            .given(vec![
                started(),
                queued(template(&[]), t0()),
                attempted(1, t0()),
            ])
            .when(claim(t0() + Duration::seconds(30)))
            .then_expect_events(vec![]);
    }

    #[test]
    fn claim_an_attempt_past_its_lease_fails_it_without_sending_again() {
        let at = t0() + attempt_lease();
        let events = Conversation::default()
            .decide_given(
                vec![started(), queued(template(&[]), t0()), attempted(1, t0())],
                claim(at),
            )
            .expect("decided");
        assert!(matches!(
            events.as_slice(),
            [ConversationEvent::MessageFailed { code, .. }] if code == "outcome_unknown"
        ));
    }

    #[test]
    fn claim_before_the_retry_time_appends_nothing() {
        let failed = ConversationEvent::SendAttemptFailed {
            message_id: "out1".into(),
            thread_id: Some("th1".into()),
            attempt: 1,
            code: Some("130429".into()),
            reason: "nope".into(),
            retry_at: t0() + Duration::seconds(2),
        };
        TestFramework::<Conversation>::with(no_history())
            .given(vec![
                started(),
                queued(template(&[]), t0()),
                attempted(1, t0()),
                failed.clone(),
            ])
            .when(claim(t0() + Duration::seconds(1)))
            .then_expect_events(vec![]);
        TestFramework::<Conversation>::with(no_history())
            .given(vec![
                started(),
                queued(template(&[]), t0()),
                attempted(1, t0()),
                failed,
            ])
            .when(claim(t0() + Duration::seconds(2)))
            .then_expect_events(vec![attempted(2, t0() + Duration::seconds(2))]);
    }

    #[test]
    fn claim_an_unknown_or_finished_message() {
        TestFramework::<Conversation>::with(no_history())
            .given(vec![started()])
            .when(claim(t0()))
            .then_expect_error(ConversationError::NotFound);
        TestFramework::<Conversation>::with(no_history())
            .given(vec![
                started(),
                queued(template(&[]), t0()),
                attempted(1, t0()),
                sent(),
            ])
            .when(claim(t0()))
            .then_expect_events(vec![]);
    }

    #[test]
    fn report_accepted_records_the_providers_id_once() {
        let accepted = || {
            report(
                1,
                SendResult::Accepted {
                    wamid: "wamid.OUT".into(),
                },
            )
        };
        TestFramework::<Conversation>::with(no_history())
            .given(vec![
                started(),
                queued(template(&[]), t0()),
                attempted(1, t0()),
            ])
            .when(accepted())
            .then_expect_events(vec![sent()]);
        TestFramework::<Conversation>::with(no_history())
            .given(vec![
                started(),
                queued(template(&[]), t0()),
                attempted(1, t0()),
                sent(),
            ])
            .when(accepted())
            .then_expect_events(vec![]);
    }

    #[test]
    fn report_a_retryable_refusal_schedules_a_retry_with_backoff() {
        TestFramework::<Conversation>::with(no_history())
            .given(vec![
                started(),
                queued(template(&[]), t0()),
                attempted(1, t0()),
            ])
            .when(report(1, refused(true)))
            .then_expect_events(vec![ConversationEvent::SendAttemptFailed {
                message_id: "out1".into(),
                thread_id: Some("th1".into()),
                attempt: 1,
                code: Some("130429".into()),
                reason: "nope".into(),
                retry_at: t0() + Duration::seconds(2),
            }]);
    }

    #[test]
    fn report_a_permanent_refusal_fails_the_message_with_the_providers_code() {
        TestFramework::<Conversation>::with(no_history())
            .given(vec![
                started(),
                queued(template(&[]), t0()),
                attempted(1, t0()),
            ])
            .when(report(1, refused(false)))
            .then_expect_events(vec![ConversationEvent::MessageFailed {
                message_id: "out1".into(),
                thread_id: Some("th1".into()),
                code: "131026".into(),
                reason: "nope".into(),
                at: t0(),
            }]);
    }

    #[test]
    fn report_a_retryable_refusal_of_the_last_attempt_fails_the_message() {
        TestFramework::<Conversation>::with(no_history())
            .given(vec![
                started(),
                queued(template(&[]), t0()),
                attempted(MAX_SEND_ATTEMPTS, t0()),
            ])
            .when(report(MAX_SEND_ATTEMPTS, refused(true)))
            .then_expect_events(vec![ConversationEvent::MessageFailed {
                message_id: "out1".into(),
                thread_id: Some("th1".into()),
                code: "attempts_exhausted".into(),
                reason: "nope".into(),
                at: t0(),
            }]);
    }

    #[test]
    fn report_accepted_after_a_failed_status_appends_nothing() {
        let mut failed = updated(Delivery::Failed);
        if let ConversationEvent::StatusUpdated { error_code, .. } = &mut failed {
            *error_code = Some("131026".into());
        }
        TestFramework::<Conversation>::with(no_history())
            .given(vec![
                started(),
                queued(template(&[]), t0()),
                attempted(1, t0()),
                ConversationEvent::MessageFailed {
                    message_id: "out1".into(),
                    thread_id: Some("th1".into()),
                    code: "131026".into(),
                    reason: "undeliverable".into(),
                    at: t0(),
                },
                failed,
            ])
            .when(report(
                1,
                SendResult::Accepted {
                    wamid: "wamid.OUT".into(),
                },
            ))
            .then_expect_events(vec![]);
    }

    #[test]
    fn report_of_a_stale_attempt_appends_nothing() {
        TestFramework::<Conversation>::with(no_history())
            .given(vec![
                started(),
                queued(template(&[]), t0()),
                attempted(1, t0()),
            ])
            .when(report(2, refused(false)))
            .then_expect_events(vec![]);
    }

    #[test]
    fn status_moves_forward_only() {
        let given = || {
            vec![
                started(),
                queued(template(&[]), t0()),
                attempted(1, t0()),
                sent(),
            ]
        };
        TestFramework::<Conversation>::with(no_history())
            .given(given())
            .when(status(Delivery::Delivered, None))
            .then_expect_events(vec![updated(Delivery::Delivered)]);
        let mut read = given();
        read.push(updated(Delivery::Read));
        TestFramework::<Conversation>::with(no_history())
            .given(read)
            .when(status(Delivery::Delivered, None))
            .then_expect_events(vec![]);
    }

    #[test]
    fn status_for_a_message_in_doubt_records_it_as_sent() {
        TestFramework::<Conversation>::with(no_history())
            .given(vec![
                started(),
                queued(template(&[]), t0()),
                attempted(1, t0()),
            ])
            .when(status(Delivery::Sent, Some("out1")))
            .then_expect_events(vec![sent(), updated(Delivery::Sent)]);
    }

    #[test]
    fn status_for_an_unknown_message_is_refused() {
        TestFramework::<Conversation>::with(no_history())
            .given(vec![started()])
            .when(status(Delivery::Read, None))
            .then_expect_error(ConversationError::NotFound);
    }

    #[test]
    fn store_media_of_a_received_message_records_it_once() {
        let stored = || ConversationCommand::StoreMedia {
            message_id: "m1".into(),
            result: MediaResult::Failed {
                reason: "too large".into(),
                retryable: false,
            },
        };
        let failed = ConversationEvent::MediaFailed {
            message_id: "m1".into(),
            reason: "too large".into(),
            retryable: false,
        };
        TestFramework::<Conversation>::with(no_history())
            .given(vec![started(), received("m1", t0())])
            .when(stored())
            .then_expect_events(vec![failed.clone()]);
        TestFramework::<Conversation>::with(no_history())
            .given(vec![started(), received("m1", t0()), failed])
            .when(stored())
            .then_expect_events(vec![]);
        TestFramework::<Conversation>::with(no_history())
            .given(vec![started()])
            .when(stored())
            .then_expect_error(ConversationError::NotFound);
    }

    #[test]
    fn status_failed_for_a_message_under_way_fails_it_with_the_providers_code() {
        let mut command = status(Delivery::Failed, Some("out1"));
        if let ConversationCommand::Status { report } = &mut command {
            report.error_code = Some("131047".into());
            report.error_title = Some("Re-engagement message".into());
        }
        let events = Conversation::default()
            .decide_given(
                vec![started(), queued(template(&[]), t0()), attempted(1, t0())],
                command,
            )
            .expect("decided");
        assert!(matches!(
            events.as_slice(),
            [ConversationEvent::MessageFailed { code, .. }, ConversationEvent::StatusUpdated { .. }]
                if code == "131047"
        ));
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::seconds(2));
        assert_eq!(backoff(2), Duration::seconds(4));
        assert_eq!(backoff(20), Duration::seconds(300));
    }

    impl Conversation {
        fn decide_given(
            mut self,
            given: Vec<ConversationEvent>,
            command: ConversationCommand,
        ) -> Result<Vec<ConversationEvent>, ConversationError> {
            for event in given {
                self.apply(event);
            }
            self.decide(command)
        }
    }
}
