//! WhatsApp's application layer: what processing a delivered message or status does (the
//! conversation, the contact's thread, the file fetched into the blob store), the sessions'
//! credentials, and the provider calls the routes make (uploads, template checks).

use events::chat::{Channel, Party, PartyKind};
use events::http::Problem;
use events::webhooks::Outcome;
use events::whatsapp::MediaKind;
use events::whatsapp::{
    conversation_id, inbound_message_id, session_id, Credentials, Delivery, Outbound, Transport,
    WHATSAPP_CONVERSATION,
};
use events::Metadata;
use serde_json::Value;
use uuid::Uuid;

use super::aggregate::{
    Conversation, ConversationCommand, ConversationError, ConversationServices, Inbound,
    MediaResult, Parties, SendResult, Session, StatusReport,
};
use super::aggregate::{SessionCommand, SessionError};
use super::{cloud, inbound};
use crate::chat::aggregate::ThreadError;
use crate::chat::commands::{Action, Actor, ThreadCommand};
use crate::http::error::DomainProblem;
use crate::store::CommandError;
use crate::webhooks::service::{Attributed, Processing};
use crate::AppState;
use axum::http::StatusCode;

/// The conversation's events, for messages its state no longer holds.
pub(crate) fn history(state: &AppState) -> ConversationServices {
    std::sync::Arc::new(super::history::PgHistory {
        pool: state.pool.clone(),
        keyring: state.keyring.clone(),
    })
}

/// The tenant of the session a kept WhatsApp item names, if any.
pub(crate) async fn owner_of_item(
    state: &AppState,
    payload: &Value,
) -> Result<Option<String>, Problem> {
    let Some(number) = payload.get("phone_number_id").and_then(Value::as_str) else {
        return Ok(None);
    };
    Ok(state
        .ctx
        .whatsapp
        .sessions
        .load(&session_id(number))
        .await?
        .tenant_id()
        .map(str::to_owned))
}

/// Processes one kept WhatsApp item: a message lands in the conversation and its thread; a
/// status moves an outbound message forward. An item for a number no session had when it
/// arrived is recorded (its webhook) and can be replayed once the number is connected.
///
/// An item belongs to the tenant whose session held the number when it **arrived**
/// (`received_by`, the webhook's own tenant): processed later — after a backlog, a
/// suspension, a retry — it still lands with that tenant, even if the number has since been
/// disconnected and connected by another.
pub(crate) async fn process_webhook(
    state: &AppState,
    webhook_id: &str,
    payload: &Value,
    received_by: Option<&str>,
    metadata: impl Fn(&str) -> Metadata,
) -> Processing {
    let ignored = |detail: String| Processing::Done(Outcome::Ignored, None, detail);
    let unavailable = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, webhook_id, "WhatsApp processing failed");
        Processing::Retry("event store unavailable".into())
    };
    let Some(number) = payload.get("phone_number_id").and_then(Value::as_str) else {
        return ignored("names no phone number id".into());
    };
    let session = session_id(number);
    let tenant = match received_by {
        Some(tenant) => tenant.to_owned(),
        // No session had the number when the item arrived: its owner now, if any (a
        // replay after the number was connected).
        None => match state.ctx.whatsapp.sessions.load(&session).await {
            Ok(s) => match s.tenant_id() {
                Some(t) => t.to_owned(),
                None => return ignored(format!("no session has phone number id {number}")),
            },
            Err(e) => return unavailable(&e),
        },
    };
    // Nothing of a suspended tenant is processed: the delivery waits for its reactivation.
    if state.access.is_suspended(&tenant) {
        return Processing::Held(tenant);
    }
    let metadata = metadata(&tenant);
    let item = Item {
        state,
        tenant: &tenant,
        session: &session,
        webhook_id,
        metadata: &metadata,
    };
    match payload.get("message") {
        Some(message) => item.message(payload, message).await,
        None => item.status(payload).await,
    }
}

/// One item of a WhatsApp delivery (a message or a status), for the tenant whose session has
/// the number.
struct Item<'a> {
    state: &'a AppState,
    tenant: &'a str,
    session: &'a str,
    webhook_id: &'a str,
    metadata: &'a Metadata,
}

impl Item<'_> {
    /// Who the outcome belongs to.
    fn attributed(&self) -> Option<Attributed> {
        Some(Attributed {
            payment_id: None,
            tenant_id: self.tenant.to_owned(),
        })
    }

    /// The event store could not be read or written: retried.
    fn unavailable(&self, e: &dyn std::fmt::Display) -> Processing {
        tracing::warn!(error = %e, webhook_id = self.webhook_id, "WhatsApp processing failed");
        Processing::Retry("event store unavailable".into())
    }

    /// A contact's message: recorded in its conversation and thread, then its file fetched.
    async fn message(&self, payload: &Value, message: &Value) -> Processing {
        let (state, tenant, session, webhook_id, metadata) = (
            self.state,
            self.tenant,
            self.session,
            self.webhook_id,
            self.metadata,
        );
        let attributed = || self.attributed();
        let Some(m) = inbound::message(message) else {
            return Processing::Done(
                Outcome::Ignored,
                attributed(),
                "an unreadable message".into(),
            );
        };
        let profile_name = payload
            .pointer("/contact/name")
            .and_then(Value::as_str)
            .map(|n| n.chars().take(256).collect());
        let media = MediaKind::parse(&m.kind).map(|kind| {
            let conversation = conversation_id(tenant, session, &m.from);
            (
                kind,
                conversation,
                inbound_message_id(session, &m.wamid),
                m.content.clone(),
            )
        });
        let detail = match receive_message(
            state,
            tenant,
            session,
            webhook_id,
            m,
            profile_name,
            metadata,
        )
        .await
        {
            Ok(detail) => detail,
            Err(p) => return p,
        };
        // The message has landed; its file follows (a failure to fetch it is retried with
        // the webhook, and never holds the message back).
        if let Some((kind, conversation, message_id, content)) = media {
            let fetched = store_media(
                state,
                tenant,
                session,
                &conversation,
                &message_id,
                kind,
                &content,
                metadata,
            )
            .await;
            return match fetched {
                Ok(media) => {
                    Processing::Done(Outcome::Applied, attributed(), format!("{detail}; {media}"))
                }
                Err(p) => p,
            };
        }
        Processing::Done(Outcome::Applied, attributed(), detail)
    }

    /// The conversation a status is for. The message the platform sent names its
    /// conversation (the contact's id in a status may differ from the number dialled), if it
    /// is of this session and tenant (a status cannot reach another's); otherwise the
    /// recipient does.
    async fn conversation_of(
        &self,
        callback: Option<&str>,
        recipient: &str,
    ) -> Result<String, Processing> {
        let by_callback = match callback {
            Some(message) => conversation_of_message(self.state, message)
                .await
                .map_err(|_| Processing::Retry("event store unavailable".into()))?,
            None => None,
        };
        if let Some(c) = by_callback {
            match self.state.ctx.whatsapp.conversations.load(&c).await {
                Ok(conv)
                    if conv.tenant_id() == Some(self.tenant)
                        && conv.session_id() == self.session =>
                {
                    return Ok(c);
                }
                Ok(_) => {}
                Err(e) => return Err(self.unavailable(&e)),
            }
        }
        Ok(conversation_id(self.tenant, self.session, recipient))
    }

    /// A status of a message the platform sent: moves it forward in its conversation.
    async fn status(&self, payload: &Value) -> Processing {
        let (state, webhook_id, metadata) = (self.state, self.webhook_id, self.metadata);
        let attributed = || self.attributed();
        let unavailable = |e: &dyn std::fmt::Display| self.unavailable(e);
        let Some(s) = payload.get("status").and_then(inbound::status) else {
            return Processing::Done(
                Outcome::Ignored,
                attributed(),
                "neither a message nor a status".into(),
            );
        };
        let Some(status) = Delivery::parse(&s.status) else {
            return Processing::Done(
                Outcome::Ignored,
                attributed(),
                format!("status `{}` is not tracked", s.status),
            );
        };
        let conversation = match self
            .conversation_of(s.callback.as_deref(), &s.recipient)
            .await
        {
            Ok(conversation) => conversation,
            Err(retry) => return retry,
        };
        let command = ConversationCommand::Status {
            report: StatusReport {
                message_id: s.callback,
                wamid: s.wamid,
                status,
                error_code: s.error_code,
                error_title: s.error_title,
                provider_at: s.at.unwrap_or_else(|| state.clock.now()),
                webhook_id: webhook_id.to_owned(),
            },
        };
        match state
            .ctx
            .whatsapp
            .conversations
            .execute_with_events(&conversation, None, command, metadata)
            .await
        {
            Ok((_, events)) if events.is_empty() => Processing::Done(
                Outcome::Recorded,
                attributed(),
                "an earlier or repeated status".into(),
            ),
            Ok((_, events)) => {
                let names: Vec<String> = events
                    .iter()
                    .map(cqrs_es::DomainEvent::event_type)
                    .collect();
                Processing::Done(Outcome::Applied, attributed(), names.join(", "))
            }
            // The conversation's older messages could not be read: not a verdict, try again.
            Err(CommandError::Rejected(e @ ConversationError::Unavailable(_))) => unavailable(&e),
            Err(CommandError::Rejected(e)) => Processing::Done(
                Outcome::Ignored,
                attributed(),
                format!("{e} (a message the platform did not send)"),
            ),
            Err(e) => unavailable(&e),
        }
    }
}

/// Records an inbound message in its conversation and delivers it into the contact's open
/// WhatsApp thread (a new one when none is open). Every step is idempotent, so an attempt
/// that failed half-way is completed by the next.
pub(crate) async fn receive_message(
    state: &AppState,
    tenant: &str,
    session: &str,
    webhook_id: &str,
    m: inbound::Message,
    profile_name: Option<String>,
    metadata: &Metadata,
) -> Result<String, Processing> {
    let retry = |e: &dyn std::fmt::Display| not_recorded(webhook_id, e);
    let conversation = conversation_id(tenant, session, &m.from);
    let message_id = inbound_message_id(session, &m.wamid);
    let conversations = &state.ctx.whatsapp.conversations;
    let current = conversations
        .load(&conversation)
        .await
        .map_err(|e| retry(&e))?
        .with_message(&message_id, &history(state))
        .await
        .map_err(|e| retry(&e))?;
    let thread = match current.inbound_thread(&message_id) {
        Some(thread) => thread.to_owned(),
        None => open_thread_or_new(state, &current, &conversation, &m.wamid)
            .await
            .map_err(|e| retry(&e))?,
    };
    let at = state.clock.now();
    let contact = Party {
        id: format!("+{}", m.from),
        kind: PartyKind::Contact,
    };
    let text = shown_text(&m.text);
    let parties = Parties {
        tenant_id: tenant.to_owned(),
        session_id: session.to_owned(),
        wa_id: m.from.clone(),
    };
    let command = ConversationCommand::Receive {
        parties,
        message: inbound_of(m, &message_id, webhook_id, profile_name, at),
        thread_id: thread.clone(),
        at,
    };
    match conversations
        .execute(&conversation, None, command, metadata)
        .await
    {
        Ok(_) => {}
        // Nothing new is kept about an erased contact: neither the message nor its file.
        Err(CommandError::Rejected(ConversationError::ContactErased)) => {
            let attributed = Attributed {
                payment_id: None,
                tenant_id: tenant.to_owned(),
            };
            let why = "a message from an erased contact: not recorded".to_owned();
            return Err(Processing::Done(Outcome::Ignored, Some(attributed), why));
        }
        Err(e) => return Err(retry(&e)),
    }
    let delivery = IntoThread {
        state,
        tenant,
        thread,
        contact,
        message_id,
        text,
        at,
        metadata,
    };
    delivery.deliver(webhook_id).await
}

/// A WhatsApp message that could not be recorded for now: retried.
fn not_recorded(webhook_id: &str, e: &dyn std::fmt::Display) -> Processing {
    tracing::warn!(error = %e, webhook_id, "could not record a WhatsApp message");
    Processing::Retry("event store unavailable".into())
}

/// A contact's message, recorded in its conversation, on its way into their thread.
struct IntoThread<'a> {
    state: &'a AppState,
    tenant: &'a str,
    /// The thread (opened if new).
    thread: String,
    /// The contact, its customer.
    contact: Party,
    message_id: String,
    /// What the thread shows.
    text: String,
    at: chrono::DateTime<chrono::Utc>,
    metadata: &'a Metadata,
}

impl IntoThread<'_> {
    /// Opens the thread if new and delivers the message into it (a repeat names the same).
    async fn deliver(self, webhook_id: &str) -> Result<String, Processing> {
        let retry = |e: &dyn std::fmt::Display| not_recorded(webhook_id, e);
        let (state, thread, at) = (self.state, self.thread, self.at);
        let actor = Actor::System {
            component: "whatsapp".into(),
        };
        let opened = open_whatsapp_thread(
            state,
            &thread,
            self.tenant,
            &self.contact,
            &actor,
            at,
            self.metadata,
        )
        .await;
        match opened {
            Ok(_) | Err(CommandError::Rejected(ThreadError::AlreadyExists)) => {}
            Err(e) => return Err(retry(&e)),
        }
        let receive = ThreadCommand {
            thread_id: thread.clone(),
            actor,
            at,
            action: Action::Receive {
                from: self.contact,
                channel: Channel::Whatsapp,
                message_id: self.message_id,
                text: self.text,
                attachment: None,
            },
        };
        let threads = &state.ctx.chat.threads;
        match threads.execute(&thread, None, receive, self.metadata).await {
            Ok(_) => Ok(format!("MessageReceived in thread {thread}")),
            Err(CommandError::Rejected(e @ ThreadError::Unavailable(_))) => Err(retry(&e)),
            Err(CommandError::Rejected(e)) => Ok(format!(
                "MessageReceived; not shown in thread {thread}: {e}"
            )),
            Err(e) => Err(retry(&e)),
        }
    }
}

/// A contact's message as its conversation records it (the kind cut at 32 characters; sent
/// now when WhatsApp does not say when).
fn inbound_of(
    m: inbound::Message,
    message_id: &str,
    webhook_id: &str,
    profile_name: Option<String>,
    at: chrono::DateTime<chrono::Utc>,
) -> Inbound {
    Inbound {
        message_id: message_id.to_owned(),
        wamid: m.wamid,
        webhook_id: webhook_id.to_owned(),
        profile_name,
        kind: m.kind.chars().take(32).collect(),
        content: m.content,
        text: m.text,
        context_wamid: m.context_wamid,
        sent_at: m.sent_at.unwrap_or(at),
    }
}

/// The contact's open thread of channel `whatsapp`, or the id of a new one (derived from the
/// conversation and the message, so a repeat names the same).
async fn open_thread_or_new(
    state: &AppState,
    current: &Conversation,
    conversation: &str,
    wamid: &str,
) -> Result<String, CommandError<ThreadError>> {
    if let Some(t) = current.thread_id() {
        let thread = state.ctx.chat.threads.load(t).await?;
        if thread.tenant_id().is_some() && !thread.is_closed() {
            return Ok(t.to_owned());
        }
    }
    let name = format!("whatsapp-thread\0{conversation}\0{wamid}");
    Ok(Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes()).to_string())
}

/// Opens a contact's thread of channel `whatsapp` (the bot off).
async fn open_whatsapp_thread(
    state: &AppState,
    thread: &str,
    tenant: &str,
    contact: &Party,
    actor: &Actor,
    at: chrono::DateTime<chrono::Utc>,
    metadata: &Metadata,
) -> Result<crate::store::Committed, CommandError<ThreadError>> {
    let open = ThreadCommand {
        thread_id: thread.to_owned(),
        actor: actor.clone(),
        at,
        action: Action::Open {
            tenant_id: tenant.to_owned(),
            channel: Channel::Whatsapp,
            customer: Some(contact.clone()),
            subject: None,
            tags: Vec::new(),
            bot_enabled: Some(false),
        },
    };
    state
        .ctx
        .chat
        .threads
        .execute(thread, None, open, metadata)
        .await
}

/// A contact's text as a thread shows it: a thread takes no control characters but line
/// breaks and tabs, so they are replaced, never refused; cut at a message's length.
fn shown_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => c,
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .take(crate::chat::values::MAX_TEXT_CHARS)
        .collect()
}

/// Whether session `id` is `tenant`'s now.
pub(crate) async fn session_of(state: &AppState, id: &str, tenant: &str) -> Result<bool, Problem> {
    Ok(state.ctx.whatsapp.sessions.load(id).await?.tenant_id() == Some(tenant))
}

/// The credentials of session `id`, opened (none for a session never connected, or sealed
/// under another key: that is logged).
pub(crate) async fn credentials(
    state: &AppState,
    id: &str,
) -> Result<Option<Credentials>, Problem> {
    let session = state.ctx.whatsapp.sessions.load(id).await?;
    Ok(opened(state, &session, id))
}

pub(crate) fn opened(state: &AppState, session: &Session, id: &str) -> Option<Credentials> {
    if session.credentials().is_empty() {
        return None;
    }
    let opened = state
        .sealing
        .open(session.credentials())
        .ok()
        .and_then(|c| serde_json::from_str::<Credentials>(&c).ok());
    if opened.is_none() {
        tracing::warn!(
            session = id,
            "a session's credentials cannot be opened with this key"
        );
    }
    opened
}

/// Fetches the file of inbound media message `message_id` from the provider into the blob
/// store and records the outcome in its conversation: stored, or given up on for a reason
/// that will not change (a malformed or unknown media id, a file over its kind's limit).
/// Anything that may pass soon (the provider or the store failing) is retried with the
/// webhook; a refused access token is recorded as a failure that a replay of the delivery
/// (after the session's credentials changed) fetches again.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn store_media(
    state: &AppState,
    tenant: &str,
    session: &str,
    conversation: &str,
    message_id: &str,
    kind: MediaKind,
    content: &Value,
    metadata: &Metadata,
) -> Result<String, Processing> {
    let retry = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, message_id, "could not fetch a WhatsApp file");
        Processing::Retry(format!("file not fetched: {e}"))
    };
    let current = state
        .ctx
        .whatsapp
        .conversations
        .load(conversation)
        .await
        .map_err(|e| retry(&e))?
        .with_message(message_id, &history(state))
        .await
        .map_err(|e| retry(&e))?;
    if current.media_done(message_id) {
        return Ok("file recorded before".into());
    }
    let media_id = content.get("id").and_then(Value::as_str).filter(|id| {
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    let result = match media_id {
        None => MediaResult::Failed {
            reason: "the message names no well-formed media id".into(),
            retryable: false,
        },
        // The number now belongs to another tenant: its token is not this tenant's to use.
        Some(_)
            if !session_of(state, session, tenant)
                .await
                .map_err(|_| retry(&"event store unavailable"))? =>
        {
            MediaResult::Failed {
                reason: "the number is now connected by another tenant".into(),
                retryable: false,
            }
        }
        Some(media_id) => {
            let fetch = MediaFetch {
                state,
                tenant,
                session,
                message_id,
                kind,
                content,
            };
            fetch.store(media_id).await?
        }
    };
    let stored = matches!(result, MediaResult::Stored { .. });
    let command = ConversationCommand::StoreMedia {
        message_id: message_id.to_owned(),
        result,
    };
    state
        .ctx
        .whatsapp
        .conversations
        .execute(conversation, None, command, metadata)
        .await
        .map_err(|e| retry(&e))?;
    Ok(if stored { "MediaStored" } else { "MediaFailed" }.into())
}

/// A WhatsApp file to fetch into the blob store, for a message of `tenant`'s session.
struct MediaFetch<'a> {
    state: &'a AppState,
    tenant: &'a str,
    session: &'a str,
    message_id: &'a str,
    kind: MediaKind,
    /// The message's content (its `mime_type`, when the provider does not say).
    content: &'a Value,
}

impl MediaFetch<'_> {
    /// Fetches media `media_id` with the session's token (its size checked against
    /// WhatsApp's limit for its kind first) and stores it: what became of it, or a retry
    /// when trying again may help.
    async fn store(&self, media_id: &str) -> Result<MediaResult, Processing> {
        let (state, tenant, session, message_id, kind, content) = (
            self.state,
            self.tenant,
            self.session,
            self.message_id,
            self.kind,
            self.content,
        );
        let retry = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, message_id, "could not fetch a WhatsApp file");
            Processing::Retry(format!("file not fetched: {e}"))
        };
        let creds = credentials(state, session)
            .await
            .map_err(|_| retry(&"event store unavailable"))?
            .ok_or_else(|| retry(&"the session's credentials cannot be opened"))?;
        let key = format!("tenants/{tenant}/whatsapp/{message_id}");
        let fetched = async {
            let info =
                cloud::media_info(&state.ctx.whatsapp.settings, media_id, &creds.access_token)
                    .await?;
            if info.file_size.is_some_and(|s| s > kind.max_bytes()) {
                return Err(cloud::MediaError::Permanent(format!(
                    "the file is larger than WhatsApp's limit of {} bytes for its kind",
                    kind.max_bytes()
                )));
            }
            let (size, sha256) = cloud::download(
                &info.url,
                &creds.access_token,
                kind.max_bytes(),
                state.blobs.as_ref(),
                &key,
            )
            .await?;
            Ok((info, size, sha256))
        }
        .await;
        Ok(match fetched {
            Ok((info, size_bytes, sha256)) => MediaResult::Stored {
                object_key: key,
                content_type: info
                    .mime_type
                    .or_else(|| {
                        content
                            .get("mime_type")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                    .unwrap_or_else(|| "application/octet-stream".into()),
                size_bytes,
                sha256,
            },
            Err(cloud::MediaError::Permanent(reason)) => MediaResult::Failed {
                reason,
                retryable: false,
            },
            // The tenant reconnected while this fetch used the old token: try again
            // with the new one rather than wait for a reconnection that came already.
            Err(cloud::MediaError::Unauthorized(_))
                if credentials(state, session)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|now| now.access_token != creds.access_token) =>
            {
                return Err(retry(&"the session's credentials changed meanwhile"));
            }
            // Shown as failed now, and fetched again when the delivery is replayed once
            // the session has working credentials (the provider keeps files for weeks).
            Err(cloud::MediaError::Unauthorized(reason)) => MediaResult::Failed {
                reason: format!("{reason}; fetched again when the session is reconnected"),
                retryable: true,
            },
            Err(e @ cloud::MediaError::Transient(_)) => return Err(retry(&e)),
        })
    }
}

/// Uploads a file of the blob store to the provider (`POST /{phone_number_id}/media`,
/// streamed): its media id, or the failed attempt's report.
pub(crate) async fn upload_file(
    state: &AppState,
    session: &str,
    phone_number_id: &str,
    object_key: &str,
    content_type: &str,
    size_bytes: u64,
    filename: Option<&str>,
) -> Result<String, SendResult> {
    let refused = |code: &str, reason: String, retryable: bool| SendResult::Refused {
        code: Some(code.to_owned()),
        reason,
        retryable,
        retry_after: None,
    };
    let creds = credentials(state, session)
        .await
        .ok()
        .flatten()
        .ok_or_else(|| {
            refused(
                "credentials_unreadable",
                "The session's credentials cannot be opened.".into(),
                false,
            )
        })?;
    let file = match state
        .blobs
        .get(&object_store::path::Path::from(object_key))
        .await
    {
        Ok(file) => file,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(refused(
                "file_missing",
                "The file is no longer stored.".into(),
                false,
            ))
        }
        Err(e) => return Err(refused("media_upload_failed", e.to_string(), true)),
    };
    cloud::upload_media(
        &state.ctx.whatsapp.settings,
        phone_number_id,
        &creds.access_token,
        file.into_stream(),
        size_bytes,
        content_type,
        filename.unwrap_or("file"),
    )
    .await
    .map_err(|e| match e {
        cloud::MediaError::Permanent(reason) | cloud::MediaError::Unauthorized(reason) => {
            refused("media_upload_refused", reason, false)
        }
        cloud::MediaError::Transient(reason) => refused("media_upload_failed", reason, true),
    })
}

/// Checks a template against the account's approved templates before it is queued: an
/// unknown template (422 `template_unknown`) or a wrong number of parameters (422
/// `template_parameters_mismatch`) is refused at once instead of failing later. When the
/// provider cannot tell, the message is queued and the provider decides (error 132000).
pub(crate) async fn check_template(
    state: &AppState,
    session: &Session,
    content: &Outbound,
) -> Result<(), Problem> {
    let Outbound::Template {
        name,
        language,
        parameters,
    } = content
    else {
        return Ok(());
    };
    let Some(account) = session.business_account_id() else {
        return Ok(());
    };
    if session.transport() != Transport::Cloud {
        return Ok(());
    }
    let Ok(Some(creds)) = credentials(state, &session_id(session.phone_number_id())).await else {
        return Ok(());
    };
    match cloud::template_parameters(
        &state.ctx.whatsapp.settings,
        account,
        &creds.access_token,
        name,
        language,
    )
    .await
    {
        Ok(Some(expected)) if expected != parameters.len() => Err(Problem::unprocessable(
            "template_parameters_mismatch",
            format!(
                "The template {name} ({language}) takes {expected} parameter(s); {} given.",
                parameters.len()
            ),
        )),
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Problem::unprocessable(
            "template_unknown",
            format!("The account has no approved template {name} in {language}."),
        )),
        Err(e) => {
            tracing::info!(error = %e, "templates could not be checked; the provider will");
            Ok(())
        }
    }
}

/// The conversation outbound message `message_id` was queued in, from the store itself.
pub(crate) async fn conversation_of_message(
    state: &AppState,
    message_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    if message_id.len() > 64 {
        return Ok(None);
    }
    sqlx::query_scalar(
        "SELECT aggregate_id FROM events
          WHERE aggregate_type = $1 AND event_type = 'MessageQueued'
            AND payload->'MessageQueued'->>'message_id' = $2
          LIMIT 1",
    )
    .bind(WHATSAPP_CONVERSATION)
    .bind(message_id)
    .fetch_optional(&state.pool)
    .await
}

/// The upload of a reply's file to the provider ahead of its attempt (none for another kind
/// of message; the caller asks only for a due reply of a usable session): its media id, or
/// the refusal to report. A bridge does not carry the platform's files.
pub(crate) async fn upload_for_attempt(
    state: &AppState,
    conversation: &Conversation,
    session: &Session,
    message: &str,
) -> Option<Result<String, SendResult>> {
    let Some(Outbound::File {
        object_key,
        content_type,
        size_bytes,
        filename,
        ..
    }) = conversation.content(message)
    else {
        return None;
    };
    let filename = match filename {
        Some(name) => match state.keyring.open(name).await {
            Ok(name) => Some(name),
            Err(e) => {
                return Some(Err(SendResult::Refused {
                    code: Some("unavailable".into()),
                    reason: format!("The file's name could not be opened: {e}"),
                    retryable: true,
                    retry_after: None,
                }))
            }
        },
        None => None,
    };
    Some(match session.transport() {
        Transport::Bridge => Err(SendResult::Refused {
            code: Some("unsupported_on_bridge".into()),
            reason: "Files of the platform are not sent through a bridge.".into(),
            retryable: false,
            retry_after: None,
        }),
        Transport::Cloud => {
            upload_file(
                state,
                conversation.session_id(),
                session.phone_number_id(),
                object_key,
                content_type,
                *size_bytes,
                filename.as_deref(),
            )
            .await
        }
    })
}

/// The Cloud API request that sends outbound message `message` of `conversation` just
/// claimed (to the contact's number, its texts opened, a file by the media id `upload`
/// gave), or what the attempt is refused with: a session no longer `usable`, an upload
/// refused or missing, a contact erased since.
pub(crate) async fn provider_request(
    state: &AppState,
    conversation: &Conversation,
    message: &str,
    usable: bool,
    upload: Option<Result<String, SendResult>>,
) -> Result<Result<Value, SendResult>, Problem> {
    let is_file = matches!(conversation.content(message), Some(Outbound::File { .. }));
    let (media_id, refused) = refusal(usable, upload, is_file);
    if let Some(result) = refused {
        return Ok(Err(result));
    }
    let (to, content) = match opened_message(state, conversation, message).await? {
        Ok(opened) => opened,
        Err(result) => return Ok(Err(result)),
    };
    let mut request = events::whatsapp::cloud_message(&to, &content, message);
    if let (Outbound::File { kind, .. }, Some(media_id)) = (&content, media_id) {
        request[kind.as_str()]["id"] = serde_json::json!(media_id);
    }
    Ok(Ok(request))
}

/// Outbound message `message` of `conversation` as it is sent: to the contact's number,
/// with its texts, opened (docs/privacy.md). A contact erased since it was queued is not
/// written to: the attempt is refused for good (`subject_erased`).
pub(crate) async fn opened_message(
    state: &AppState,
    conversation: &Conversation,
    message: &str,
) -> Result<Result<(String, Outbound), SendResult>, Problem> {
    let content = conversation
        .content(message)
        .ok_or_else(|| ConversationError::NotFound.problem())?;
    let unavailable = |e: &dyn std::fmt::Display| Problem::unavailable(e);
    let to = state
        .keyring
        .open(conversation.wa_id())
        .await
        .map_err(|e| unavailable(&e))?;
    let content = super::personal::open_outbound(content, &history(state))
        .await
        .map_err(|e| unavailable(&e))?;
    if to == events::personal::ERASED {
        return Ok(Err(SendResult::Refused {
            code: Some("subject_erased".into()),
            reason: "The contact was erased: nothing is sent to them.".into(),
            retryable: false,
            retry_after: None,
        }));
    }
    Ok(Ok((to, content)))
}

/// What an attempt just claimed cannot carry, if anything, with the file's media id: a
/// disconnected session (not this conversation's to use), a refused upload, or a file
/// without one (another claimer changed the message between the check and the claim).
pub(crate) fn refusal(
    usable: bool,
    upload: Option<Result<String, SendResult>>,
    is_file: bool,
) -> (Option<String>, Option<SendResult>) {
    let (media_id, upload_refused) = match upload {
        Some(Ok(id)) => (Some(id), None),
        Some(Err(result)) => (None, Some(result)),
        None => (None, None),
    };
    let refused = match usable {
        false => Some(SendResult::Refused {
            code: Some("session_disconnected".into()),
            reason: "The WhatsApp session was disconnected before the message could be sent."
                .into(),
            retryable: false,
            retry_after: None,
        }),
        true if upload_refused.is_some() => upload_refused,
        true if is_file && media_id.is_none() => Some(SendResult::Refused {
            code: Some("media_upload_failed".into()),
            reason: "The file was not uploaded for this attempt.".into(),
            retryable: true,
            retry_after: None,
        }),
        true => None,
    };
    (media_id, refused)
}

/// Whether a session was connected with verify token `token` and not disconnected (nor
/// connected again) since, from the event store: the command side decides from its own
/// state, never from a read model.
pub(crate) async fn live_verify_token(state: &AppState, token: &str) -> Result<bool, Problem> {
    sqlx::query_scalar(
        // The literals match the index of migration 0049.
        "SELECT EXISTS (SELECT 1 FROM events c
                         WHERE c.aggregate_type = 'whatsapp_session'
                           AND c.event_type = 'Connected'
                           AND c.payload->'Connected'->>'verify_token_sha256' = $1
                           AND NOT EXISTS (SELECT 1 FROM events l
                                            WHERE l.aggregate_type = c.aggregate_type
                                              AND l.aggregate_id = c.aggregate_id
                                              AND l.sequence > c.sequence))",
    )
    .bind(crate::webhooks::verify::hex_sha256(token.as_bytes()))
    .fetch_one(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))
}

/// The conversation whose messages went into `thread`, from the store itself.
pub(crate) async fn conversation_of_thread(
    state: &AppState,
    thread: &str,
) -> Result<Option<String>, Problem> {
    sqlx::query_scalar(
        "SELECT aggregate_id FROM events
          WHERE aggregate_type = $1 AND event_type = 'MessageReceived'
            AND payload->'MessageReceived'->>'thread_id' = $2
          LIMIT 1",
    )
    .bind(WHATSAPP_CONVERSATION)
    .bind(thread)
    .fetch_optional(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))
}

/// A Cloud API number to connect, its fields checked.
pub(crate) struct CloudConnection {
    /// The tenant.
    pub tenant: String,
    /// Meta's id of the number.
    pub phone_number_id: String,
    /// Meta's id of the business account, when given.
    pub business_account_id: Option<String>,
    /// Access token and app secret (sealed before they are recorded).
    pub credentials: Credentials,
    /// The webhook handshake's token (only its hash is recorded).
    pub verify_token: String,
}

/// Connects a Cloud API number to its tenant: refused when another tenant holds it, then
/// checked with the provider (one call proves token, app secret and access to the number),
/// then recorded with the credentials sealed.
pub(crate) async fn connect_cloud(
    state: &AppState,
    who: &events::access::Principal,
    ids: &events::http::RequestIds,
    c: CloudConnection,
) -> Result<crate::store::Committed, Problem> {
    let id = session_id(&c.phone_number_id);
    // Refused before the provider is asked when another tenant has the number.
    let current = state.ctx.whatsapp.sessions.load(&id).await?;
    if current.connected() && current.tenant_id() != Some(c.tenant.as_str()) {
        return Err(SessionError::Taken.problem());
    }
    let info = cloud::check_number(
        &state.ctx.whatsapp.settings,
        &c.phone_number_id,
        &c.credentials.access_token,
        &c.credentials.app_secret,
    )
    .await
    .map_err(|e| match e {
        cloud::CheckError::Refused(_) => {
            Problem::unprocessable("credentials_rejected", e.to_string())
        }
        cloud::CheckError::Unreachable(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "provider_unavailable",
            e.to_string(),
        ),
    })?;
    let sealed = state
        .sealing
        .seal(&serde_json::to_string(&c.credentials).unwrap_or_default());
    let command = SessionCommand::Connect {
        tenant_id: c.tenant.clone(),
        transport: Transport::Cloud,
        phone_number_id: c.phone_number_id,
        business_account_id: c.business_account_id,
        display_phone_number: info.display_phone_number,
        verified_name: info.verified_name,
        credentials: sealed,
        verify_token_sha256: crate::webhooks::verify::hex_sha256(c.verify_token.as_bytes()),
        at: state.clock.now(),
    };
    let metadata = ids.metadata(&c.tenant, who.user_id(), who.actor_kind());
    Ok(state
        .ctx
        .whatsapp
        .sessions
        .execute(&id, None, command, &metadata)
        .await?)
}
