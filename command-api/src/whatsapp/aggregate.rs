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

use std::collections::HashMap;

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
}

/// A conversation (also the snapshot form).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Conversation {
    /// Whether it began.
    started: bool,
    /// Its tenant.
    tenant_id: String,
    /// Its session.
    session_id: String,
    /// The contact's WhatsApp id.
    wa_id: String,
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

    /// The contact's WhatsApp id.
    pub fn wa_id(&self) -> &str {
        &self.wa_id
    }

    /// The thread the contact's last message went into.
    pub fn thread_id(&self) -> Option<&str> {
        self.thread_id.as_deref()
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
    let strings: Vec<&str> = match content {
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
    };
    if strings.into_iter().any(controlled) {
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
        } => {
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
        }
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
        }
    }
}

impl Conversation {
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
        })
    }

    fn decide(
        &self,
        command: ConversationCommand,
    ) -> Result<Vec<ConversationEvent>, ConversationError> {
        use ConversationEvent as E;
        Ok(match command {
            ConversationCommand::Receive {
                parties,
                message,
                thread_id,
                at,
            } => {
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
                events
            }
            ConversationCommand::Queue {
                parties,
                session_connected,
                message_id,
                author,
                content,
                thread_id,
                record_refusal,
                at,
            } => {
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
                events
            }
            ConversationCommand::Claim { message_id, at } => {
                let out = self
                    .outbound
                    .get(&message_id)
                    .ok_or(ConversationError::NotFound)?;
                match out.state {
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
                }
            }
            ConversationCommand::Report {
                message_id,
                attempt,
                result,
                at,
            } => {
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
                match result {
                    // Accepted is the truth even after an in-doubt failure was recorded.
                    SendResult::Accepted { wamid } => vec![E::MessageSent {
                        message_id,
                        wamid,
                        thread_id: out.thread_id.clone(),
                        at,
                    }],
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
                }
            }
            ConversationCommand::StoreMedia { message_id, result } => {
                if !self.inbound.contains_key(&message_id) {
                    return Err(ConversationError::NotFound);
                }
                if self.media_done.contains(&message_id) {
                    return Ok(vec![]);
                }
                vec![match result {
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
                    MediaResult::Failed { reason } => E::MediaFailed { message_id, reason },
                }]
            }
            ConversationCommand::Status { report } => {
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
                    _ => events.push(E::MessageSent {
                        message_id: message_id.clone(),
                        wamid: report.wamid.clone(),
                        thread_id: out.thread_id.clone(),
                        at: report.provider_at,
                    }),
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
                events
            }
        })
    }
}

impl Aggregate for Conversation {
    const TYPE: &'static str = WHATSAPP_CONVERSATION;
    type Command = ConversationCommand;
    type Event = ConversationEvent;
    type Error = ConversationError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ConversationCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ConversationError> {
        for event in self.decide(command)? {
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
            } => {
                self.started = true;
                self.tenant_id = tenant_id;
                self.session_id = session_id;
                self.wa_id = wa_id;
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
                self.inbound.insert(message_id, thread_id);
            }
            E::MessageQueued {
                message_id,
                content,
                thread_id,
                ..
            } => {
                self.outbound.insert(
                    message_id,
                    Outgoing {
                        content: Some(content),
                        thread_id,
                        ..Outgoing::default()
                    },
                );
            }
            E::SendAttempted {
                message_id,
                attempt,
                at,
            } => {
                if let Some(out) = self.outbound.get_mut(&message_id) {
                    out.state = SendState::Attempting;
                    out.attempts = attempt;
                    out.attempt_at = Some(at);
                }
            }
            E::SendAttemptFailed {
                message_id,
                retry_at,
                ..
            } => {
                if let Some(out) = self.outbound.get_mut(&message_id) {
                    out.state = SendState::Queued;
                    out.attempt_at = None;
                    out.retry_at = Some(retry_at);
                }
            }
            E::MessageSent {
                message_id, wamid, ..
            } => {
                if let Some(out) = self.outbound.get_mut(&message_id) {
                    out.state = SendState::Sent;
                    out.failure = None;
                    out.wamid = Some(wamid.clone());
                    self.by_wamid.insert(wamid, message_id);
                }
            }
            E::MessageFailed {
                message_id, code, ..
            } => {
                if let Some(out) = self.outbound.get_mut(&message_id) {
                    out.state = SendState::Failed;
                    out.failure = Some(code);
                }
            }
            E::MediaStored { message_id, .. } | E::MediaFailed { message_id, .. } => {
                self.media_done.insert(message_id);
            }
            E::StatusUpdated {
                message_id, status, ..
            } => {
                if let Some(out) = self.outbound.get_mut(&message_id) {
                    out.delivery = Some(status);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;
    use events::chat::PartyKind;

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
        TestFramework::<Conversation>::with(())
            .given_no_previous_events()
            .when(receive("m1"))
            .then_expect_events(vec![started(), received("m1", t0())]);
    }

    #[test]
    fn receive_a_message_again_appends_nothing() {
        TestFramework::<Conversation>::with(())
            .given(vec![started(), received("m1", t0())])
            .when(receive("m1"))
            .then_expect_events(vec![]);
    }

    #[test]
    fn queue_text_within_the_window_is_queued() {
        let at = t0() + Duration::hours(23);
        TestFramework::<Conversation>::with(())
            .given(vec![started(), received("m1", t0())])
            .when(queue(text("Hello"), at))
            .then_expect_events(vec![queued(text("Hello"), at)]);
    }

    #[test]
    fn queue_text_after_the_window_is_refused() {
        TestFramework::<Conversation>::with(())
            .given(vec![started(), received("m1", t0())])
            .when(queue(text("Hello"), t0() + Duration::hours(24)))
            .then_expect_error(ConversationError::OutsideWindow);
    }

    #[test]
    fn queue_text_to_a_contact_who_never_wrote_is_refused() {
        TestFramework::<Conversation>::with(())
            .given_no_previous_events()
            .when(queue(text("Hello"), t0()))
            .then_expect_error(ConversationError::OutsideWindow);
    }

    #[test]
    fn queue_a_template_outside_the_window_starts_the_conversation() {
        TestFramework::<Conversation>::with(())
            .given_no_previous_events()
            .when(queue(template(&["42"]), t0()))
            .then_expect_events(vec![started(), queued(template(&["42"]), t0())]);
    }

    #[test]
    fn queue_a_template_with_an_empty_parameter_is_refused() {
        TestFramework::<Conversation>::with(())
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
        TestFramework::<Conversation>::with(())
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
        TestFramework::<Conversation>::with(())
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
        TestFramework::<Conversation>::with(())
            .given(vec![started(), queued(template(&[]), t0())])
            .when(queue(template(&[]), t0()))
            .then_expect_events(vec![]);
        TestFramework::<Conversation>::with(())
            .given(vec![started(), queued(template(&[]), t0())])
            .when(queue(template(&["other"]), t0()))
            .then_expect_error(ConversationError::MessageExists);
    }

    #[test]
    fn claim_a_queued_message_begins_an_attempt() {
        TestFramework::<Conversation>::with(())
            .given(vec![started(), queued(template(&[]), t0())])
            .when(claim(t0()))
            .then_expect_events(vec![attempted(1, t0())]);
    }

    #[test]
    fn claim_an_attempt_under_way_appends_nothing() {
        TestFramework::<Conversation>::with(())
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
        TestFramework::<Conversation>::with(())
            .given(vec![
                started(),
                queued(template(&[]), t0()),
                attempted(1, t0()),
                failed.clone(),
            ])
            .when(claim(t0() + Duration::seconds(1)))
            .then_expect_events(vec![]);
        TestFramework::<Conversation>::with(())
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
        TestFramework::<Conversation>::with(())
            .given(vec![started()])
            .when(claim(t0()))
            .then_expect_error(ConversationError::NotFound);
        TestFramework::<Conversation>::with(())
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
        TestFramework::<Conversation>::with(())
            .given(vec![
                started(),
                queued(template(&[]), t0()),
                attempted(1, t0()),
            ])
            .when(accepted())
            .then_expect_events(vec![sent()]);
        TestFramework::<Conversation>::with(())
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
        TestFramework::<Conversation>::with(())
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
        TestFramework::<Conversation>::with(())
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
        TestFramework::<Conversation>::with(())
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
        TestFramework::<Conversation>::with(())
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
        TestFramework::<Conversation>::with(())
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
        TestFramework::<Conversation>::with(())
            .given(given())
            .when(status(Delivery::Delivered, None))
            .then_expect_events(vec![updated(Delivery::Delivered)]);
        let mut read = given();
        read.push(updated(Delivery::Read));
        TestFramework::<Conversation>::with(())
            .given(read)
            .when(status(Delivery::Delivered, None))
            .then_expect_events(vec![]);
    }

    #[test]
    fn status_for_a_message_in_doubt_records_it_as_sent() {
        TestFramework::<Conversation>::with(())
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
        TestFramework::<Conversation>::with(())
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
            },
        };
        let failed = ConversationEvent::MediaFailed {
            message_id: "m1".into(),
            reason: "too large".into(),
        };
        TestFramework::<Conversation>::with(())
            .given(vec![started(), received("m1", t0())])
            .when(stored())
            .then_expect_events(vec![failed.clone()]);
        TestFramework::<Conversation>::with(())
            .given(vec![started(), received("m1", t0()), failed])
            .when(stored())
            .then_expect_events(vec![]);
        TestFramework::<Conversation>::with(())
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
