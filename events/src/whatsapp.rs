//! Events of WhatsApp: tenants' sessions (aggregate type `whatsapp_session`) and their
//! conversations with contacts (aggregate type `whatsapp_conversation`).
//!
//! - A **session** is one WhatsApp Business number connected by a tenant. Its id derives
//!   from the provider's phone number id ([`session_id`]), so a number has one session and
//!   one owner, and an inbound webhook finds its session without a lookup table. Its
//!   credentials are in events only sealed ([`crate::sealed`]).
//! - A **conversation** is one session's exchange with one contact (their WhatsApp id,
//!   [`conversation_id`]). It holds what the customer-service window is decided by (the
//!   contact's last inbound message) and the life of every message: inbound ones received
//!   once (their id derives from the provider's), outbound ones queued, attempted, accepted
//!   by the provider or failed, then delivered and read. Version `1.0` of every event.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::chat::Party;

/// The aggregate type of sessions.
pub const WHATSAPP_SESSION: &str = "whatsapp_session";
/// The aggregate type of conversations.
pub const WHATSAPP_CONVERSATION: &str = "whatsapp_conversation";

/// Attempts at sending a message before it fails for good (with the back-off, 2 s … 128 s
/// apart, about four minutes of trying; a provider's `Retry-After` may stretch it).
pub const MAX_SEND_ATTEMPTS: u32 = 8;

/// How long an attempt may stay without an outcome before it is in doubt: the sender
/// reports within its HTTP timeout, so past this it died or lost the answer.
pub fn attempt_lease() -> Duration {
    Duration::minutes(2)
}

/// The customer-service window: free-form messages only this long after the contact's
/// last message; templates otherwise.
pub fn service_window() -> Duration {
    Duration::hours(24)
}

/// The session of the provider's phone number id `phone_number_id`.
pub fn session_id(phone_number_id: &str) -> String {
    let name = format!("whatsapp-session\0{phone_number_id}");
    Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes()).to_string()
}

/// The conversation of tenant `tenant_id`'s session `session_id` with WhatsApp id `wa_id`
/// (the tenant is part of it: a number connected later by another tenant starts afresh).
pub fn conversation_id(tenant_id: &str, session_id: &str, wa_id: &str) -> String {
    let name = format!("whatsapp-conversation\0{tenant_id}\0{session_id}\0{wa_id}");
    Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes()).to_string()
}

/// The platform's id of the inbound message the provider calls `wamid` on session
/// `session_id` (scoped by the session: a message id is the provider's, or a bridge's, and
/// one number's cannot stand for another's).
pub fn inbound_message_id(session_id: &str, wamid: &str) -> String {
    let name = format!("whatsapp-message\0{session_id}\0{wamid}");
    Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes()).to_string()
}

/// The contact of tenant `tenant_id` with WhatsApp id `wa_id`, as a data subject: the
/// subject of their number (`+{wa_id}`, the same as a thread's contact customer), or the one
/// a sealed id names. `None` once the id reads `[erased]`: nothing is kept about them.
pub fn contact_subject(tenant_id: &str, wa_id: &str) -> Option<Uuid> {
    if let Some(field) = crate::personal::SealedField::parse(wa_id) {
        return Some(field.subject);
    }
    (!wa_id.is_empty() && wa_id != crate::personal::ERASED)
        .then(|| crate::personal::subject_id("contact", tenant_id, &format!("+{wa_id}")))
}

/// A received message's content as it was before sealing: the provider's object, from the
/// JSON text it was sealed as (opened); `[erased]` (a string) once the contact's keys are
/// gone; an object as it is (written before sealing).
pub fn received_content(content: serde_json::Value) -> serde_json::Value {
    match content {
        serde_json::Value::String(json) => {
            serde_json::from_str(&json).unwrap_or(serde_json::Value::String(json))
        }
        other => other,
    }
}

/// How a session reaches WhatsApp.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// The WhatsApp Business Cloud API, spoken by the platform.
    #[default]
    Cloud,
    /// A tenant's own bridge worker (Baileys).
    Bridge,
}

impl Transport {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Cloud => "cloud",
            Transport::Bridge => "bridge",
        }
    }
}

/// Something that happened to a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum SessionEvent {
    /// The number was connected, after the provider accepted its credentials.
    Connected {
        /// Its tenant.
        tenant_id: String,
        /// How it reaches WhatsApp.
        transport: Transport,
        /// The provider's phone number id.
        phone_number_id: String,
        /// The WhatsApp Business Account id.
        #[serde(default)]
        business_account_id: Option<String>,
        /// The number as the provider shows it.
        #[serde(default)]
        display_phone_number: Option<String>,
        /// The business name the provider verified.
        #[serde(default)]
        verified_name: Option<String>,
        /// The access token and app secret, sealed (JSON `{access_token, app_secret}`).
        credentials: String,
        /// Hex SHA-256 of the webhook verify token.
        verify_token_sha256: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The number was disconnected: nothing is sent through it any more (inbound messages
    /// still land, so none is lost).
    Disconnected {
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for SessionEvent {
    fn event_type(&self) -> String {
        match self {
            SessionEvent::Connected { .. } => "Connected",
            SessionEvent::Disconnected { .. } => "Disconnected",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Media kinds WhatsApp carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    /// A picture.
    Image,
    /// A sound or voice note.
    Audio,
    /// A film.
    Video,
    /// A file.
    Document,
    /// A sticker.
    Sticker,
}

impl MediaKind {
    /// The kind a file of media type `content_type` is sent as: pictures WhatsApp shows as
    /// images (JPEG, PNG), sound, film; anything else as a document.
    pub fn of_content_type(content_type: &str) -> Self {
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        match essence {
            "image/jpeg" | "image/png" => MediaKind::Image,
            "image/webp" => MediaKind::Sticker,
            t if t.starts_with("audio/") => MediaKind::Audio,
            "video/mp4" | "video/3gpp" => MediaKind::Video,
            _ => MediaKind::Document,
        }
    }

    /// The kind called `raw` by the provider.
    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "image" => MediaKind::Image,
            "audio" => MediaKind::Audio,
            "video" => MediaKind::Video,
            "document" => MediaKind::Document,
            "sticker" => MediaKind::Sticker,
            _ => return None,
        })
    }

    /// The largest file WhatsApp carries of this kind (its documented limits).
    pub fn max_bytes(self) -> u64 {
        const MB: u64 = 1024 * 1024;
        match self {
            MediaKind::Image => 5 * MB,
            MediaKind::Audio | MediaKind::Video => 16 * MB,
            MediaKind::Document => 100 * MB,
            MediaKind::Sticker => 500 * 1024,
        }
    }

    /// The wire name (the Cloud API's message type).
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
            MediaKind::Document => "document",
            MediaKind::Sticker => "sticker",
        }
    }
}

/// What an outbound message says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[cfg_attr(
    feature = "http",
    derive(utoipa::ToSchema),
    schema(as = WhatsAppOutbound, description = OUTBOUND_DESCRIPTION)
)]
pub enum Outbound {
    /// Text.
    #[cfg_attr(feature = "http", schema(title = "text"))]
    Text {
        /// The text: 1 to 4,096 characters, not blank.
        #[cfg_attr(
            feature = "http",
            schema(min_length = 1, max_length = 4096, example = "Your order is ready")
        )]
        body: String,
        /// Whether WhatsApp shows a preview of the first link.
        #[serde(default)]
        #[cfg_attr(feature = "http", schema(default = false))]
        preview_url: bool,
    },
    /// A file by its public link.
    #[cfg_attr(feature = "http", schema(title = "media"))]
    Media {
        /// Which kind.
        kind: MediaKind,
        /// Its HTTPS link, which the provider fetches the file from: `https://`, at most 2,048
        /// bytes, no whitespace.
        #[cfg_attr(
            feature = "http",
            schema(
                format = "uri",
                max_length = 2048,
                pattern = r"^https://\S+$",
                example = "https://example.com/invoices/42.pdf"
            )
        )]
        link: String,
        /// A caption (not for audio and stickers): at most 1,024 characters.
        #[serde(default)]
        #[cfg_attr(feature = "http", schema(max_length = 1024))]
        caption: Option<String>,
        /// The file name shown (documents): 1 to 240 bytes, not blank.
        #[serde(default)]
        #[cfg_attr(
            feature = "http",
            schema(min_length = 1, max_length = 240, example = "invoice-42.pdf")
        )]
        filename: Option<String>,
    },
    /// A file of the platform's blob store (a reply's attachment), uploaded to the provider
    /// when it is sent.
    #[cfg_attr(feature = "http", schema(title = "file"))]
    File {
        /// Which kind WhatsApp sends it as.
        kind: MediaKind,
        /// Blob key (under the tenant's `tenants/{tenant_id}/`, without `..`).
        #[cfg_attr(
            feature = "http",
            schema(
                min_length = 1,
                example = "tenants/7d1c0a52-3f4e-4b8a-9c61-2e5f0b9d8a13/files/menu.pdf"
            )
        )]
        object_key: String,
        /// Its media type.
        #[cfg_attr(feature = "http", schema(example = "application/pdf"))]
        content_type: String,
        /// Its size in bytes: at most the kind's limit (image 5 MiB, audio and video 16 MiB,
        /// document 100 MiB, sticker 500 KiB).
        #[cfg_attr(feature = "http", schema(minimum = 1, maximum = 104857600))]
        size_bytes: u64,
        /// The file name shown (documents): 1 to 240 bytes, not blank.
        #[serde(default)]
        #[cfg_attr(feature = "http", schema(min_length = 1, max_length = 240))]
        filename: Option<String>,
        /// A caption (not for audio and stickers): at most 1,024 characters.
        #[serde(default)]
        #[cfg_attr(feature = "http", schema(max_length = 1024))]
        caption: Option<String>,
    },
    /// An approved template (the only kind allowed outside the service window).
    #[cfg_attr(feature = "http", schema(title = "template"))]
    Template {
        /// Its name: lowercase letters, digits and `_`.
        #[cfg_attr(
            feature = "http",
            schema(pattern = "^[a-z0-9_]{1,512}$", example = "order_ready")
        )]
        name: String,
        /// Its language code (`en_US`).
        #[cfg_attr(
            feature = "http",
            schema(pattern = "^[A-Za-z_]{2,10}$", example = "en_US")
        )]
        language: String,
        /// The values of its body's `{{1}}`, `{{2}}` … in order (at most 20, each 1 to 1,024
        /// characters, not blank).
        #[serde(default)]
        #[cfg_attr(feature = "http", schema(max_items = 20, example = json!(["42"])))]
        parameters: Vec<String>,
    },
}

/// What the API documents of [`Outbound`] as a whole.
#[cfg(feature = "http")]
const OUTBOUND_DESCRIPTION: &str = "What to send, by `type`. Free-form messages (`text`, \
`media`, `file`) are sent only within the customer-service window (24 hours after the \
contact's last message); a `template` at any time. No string holds control characters (line \
breaks and tabs aside). An unknown `type` or field: 400 `invalid_body`; content outside the \
limits below: 422 `invalid_message` (`detail` says which). A `file` is one of the tenant's \
stored files, uploaded to the provider when the sender claims the message and sent by media id \
(Cloud API sessions only: a `bridge` session fails it with `unsupported_on_bridge`; a file no \
longer stored fails with `file_missing`, an upload the provider refuses with \
`media_upload_refused`, and a failed upload, `media_upload_failed`, is retried like a send).";

impl Outbound {
    /// The Cloud API's message type.
    pub fn kind(&self) -> &'static str {
        match self {
            Outbound::Text { .. } => "text",
            Outbound::Media { kind, .. } | Outbound::File { kind, .. } => kind.as_str(),
            Outbound::Template { .. } => "template",
        }
    }

    /// Whether the customer-service window limits it (everything but templates).
    pub fn free_form(&self) -> bool {
        !matches!(self, Outbound::Template { .. })
    }
}

/// A Cloud API session's credentials: what its sealed `credentials` hold.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The (system user's) access token the API is called with.
    pub access_token: String,
    /// The Meta app's secret: it signs the app's webhooks.
    pub app_secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(…)")
    }
}

/// The Cloud API request body (`POST /{phone_number_id}/messages`) that sends `content` to
/// `to`, carrying the platform's message id as `biz_opaque_callback_data` so the provider's
/// statuses name it.
pub fn cloud_message(to: &str, content: &Outbound, message_id: &str) -> serde_json::Value {
    use serde_json::json;
    let mut body = json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "biz_opaque_callback_data": message_id,
    });
    let (kind, object) = match content {
        Outbound::Text { body, preview_url } => {
            ("text", json!({"preview_url": preview_url, "body": body}))
        }
        Outbound::Media {
            kind,
            link,
            caption,
            filename,
        } => {
            let mut media = json!({"link": link});
            if let Some(caption) = caption {
                media["caption"] = json!(caption);
            }
            if let Some(filename) = filename {
                media["filename"] = json!(filename);
            }
            (kind.as_str(), media)
        }
        // The provider's media id is added once the file is uploaded.
        Outbound::File {
            kind,
            caption,
            filename,
            ..
        } => {
            let mut media = json!({});
            if let Some(caption) = caption {
                media["caption"] = json!(caption);
            }
            if let Some(filename) = filename {
                media["filename"] = json!(filename);
            }
            (kind.as_str(), media)
        }
        Outbound::Template {
            name,
            language,
            parameters,
        } => {
            let mut template = json!({"name": name, "language": {"code": language}});
            if !parameters.is_empty() {
                let parameters: Vec<_> = parameters
                    .iter()
                    .map(|p| json!({"type": "text", "text": p}))
                    .collect();
                template["components"] = json!([{"type": "body", "parameters": parameters}]);
            }
            ("template", template)
        }
    };
    body["type"] = json!(kind);
    body[kind] = object;
    body
}

/// A delivery status the provider reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// On WhatsApp's servers.
    Sent,
    /// On the contact's phone.
    Delivered,
    /// Read by the contact.
    Read,
    /// Not deliverable (the provider's error says why).
    Failed,
}

impl Delivery {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Sent => "sent",
            Delivery::Delivered => "delivered",
            Delivery::Read => "read",
            Delivery::Failed => "failed",
        }
    }

    /// The status called `raw` by the provider.
    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "sent" => Delivery::Sent,
            "delivered" => Delivery::Delivered,
            "read" => Delivery::Read,
            "failed" => Delivery::Failed,
            _ => return None,
        })
    }
}

/// Something that happened in a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum ConversationEvent {
    /// The conversation began (with its first message, either way).
    Started {
        /// Its tenant.
        tenant_id: String,
        /// The session.
        session_id: String,
        /// The contact's WhatsApp id (their number's digits), sealed for the contact.
        wa_id: String,
        /// The conversation's id ([`conversation_id`] of tenant, session and the id in clear),
        /// so the sealed id is never needed to name it. Absent in conversations started
        /// before the id was sealed (their id is then derived from `wa_id`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conversation_id: Option<String>,
    },
    /// A message from the contact arrived.
    MessageReceived {
        /// The platform's id ([`inbound_message_id`]).
        message_id: String,
        /// The provider's id (`wamid.…`).
        wamid: String,
        /// The webhook it came in.
        webhook_id: String,
        /// The contact's profile name, as WhatsApp reported it with the message (sealed).
        #[serde(default)]
        profile_name: Option<String>,
        /// The provider's message type (`text`, `image`, `location`, `reaction` …).
        kind: String,
        /// The message as the provider described it (its type's object), sealed whole as its
        /// JSON text: read it through [`received_content`].
        content: serde_json::Value,
        /// What the thread shows of it (sealed).
        text: String,
        /// The message it replies or reacts to, if any.
        #[serde(default)]
        context_wamid: Option<String>,
        /// When the contact sent it (the provider's timestamp).
        sent_at: DateTime<Utc>,
        /// The thread it was delivered into.
        thread_id: String,
        /// When it was recorded.
        at: DateTime<Utc>,
    },
    /// An outbound message was accepted for sending.
    MessageQueued {
        /// Its id.
        message_id: String,
        /// Who wrote it.
        author: Party,
        /// What it says (its texts, links, file names and template parameters sealed).
        content: Outbound,
        /// The thread it belongs to, if any.
        #[serde(default)]
        thread_id: Option<String>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The sender began an attempt (before calling the provider: an attempt left without an
    /// outcome is in doubt and never repeated).
    SendAttempted {
        /// Which message.
        message_id: String,
        /// Which attempt (1-based).
        attempt: u32,
        /// When.
        at: DateTime<Utc>,
    },
    /// An attempt failed in a way that is safe to retry (the provider refused it for now).
    SendAttemptFailed {
        /// Which message.
        message_id: String,
        /// The thread it belongs to, if any (for the realtime worker).
        #[serde(default)]
        thread_id: Option<String>,
        /// Which attempt.
        attempt: u32,
        /// The provider's error code (or the HTTP status), if it answered.
        #[serde(default)]
        code: Option<String>,
        /// Why.
        reason: String,
        /// When it is tried again.
        retry_at: DateTime<Utc>,
    },
    /// The provider accepted the message.
    MessageSent {
        /// Which message.
        message_id: String,
        /// The provider's id for it.
        wamid: String,
        /// The thread it belongs to, if any (for the realtime worker).
        #[serde(default)]
        thread_id: Option<String>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The message will not be sent (`WhatsAppMessageFailed`): a permanent refusal, the last
    /// attempt failed, or an attempt whose outcome could not be learnt.
    MessageFailed {
        /// Which message.
        message_id: String,
        /// The thread it belongs to, if any (for the realtime worker).
        #[serde(default)]
        thread_id: Option<String>,
        /// The provider's error code, or the platform's (`outcome_unknown`,
        /// `attempts_exhausted`).
        code: String,
        /// Why, for the agent.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The file of an inbound media message was downloaded from the provider into the blob
    /// store.
    MediaStored {
        /// Which message.
        message_id: String,
        /// Blob key (`tenants/{tenant_id}/whatsapp/{message_id}`).
        object_key: String,
        /// Its media type, as the provider said.
        content_type: String,
        /// Size in bytes.
        size_bytes: u64,
        /// Hex SHA-256 of the bytes stored.
        sha256: String,
    },
    /// The file of an inbound media message could not be had (the message itself landed):
    /// a malformed or unknown media id, a file over the limit of its kind.
    MediaFailed {
        /// Which message.
        message_id: String,
        /// Why.
        reason: String,
        /// Whether it may be had later: the provider refused the session's access token
        /// (expired, revoked). Fetched again when the delivery is replayed — after the
        /// session's credentials changed — while the provider keeps the file (weeks).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        retryable: bool,
    },
    /// The provider reported a delivery status of an outbound message (only forward:
    /// sent → delivered → read; failed from any of them).
    StatusUpdated {
        /// Which message.
        message_id: String,
        /// The thread it belongs to, if any (for the realtime worker).
        #[serde(default)]
        thread_id: Option<String>,
        /// The status.
        status: Delivery,
        /// The provider's error code when failed.
        #[serde(default)]
        error_code: Option<String>,
        /// The provider's error title when failed.
        #[serde(default)]
        error_title: Option<String>,
        /// When the provider says it happened.
        provider_at: DateTime<Utc>,
        /// The webhook that reported it.
        webhook_id: String,
    },
    /// The agent edited a reply that had not gone out yet: it goes out as edited.
    MessageRevised {
        /// Which message.
        message_id: String,
        /// The thread it belongs to, if any.
        #[serde(default)]
        thread_id: Option<String>,
        /// What it says now (sealed as in `MessageQueued`).
        content: Outbound,
        /// When.
        at: DateTime<Utc>,
    },
    /// The agent edited or deleted a reply the provider had already accepted: the contact
    /// has the original, and the agent is told so.
    ChangeNotDelivered {
        /// Which message.
        message_id: String,
        /// The thread it belongs to, if any (for the realtime worker).
        #[serde(default)]
        thread_id: Option<String>,
        /// `edited` or `deleted`.
        change: String,
        /// The reply's delivery status at that point (`delivered`, `read`); absent: `sent`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delivery: Option<Delivery>,
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for ConversationEvent {
    fn event_type(&self) -> String {
        match self {
            ConversationEvent::Started { .. } => "Started",
            ConversationEvent::MessageReceived { .. } => "MessageReceived",
            ConversationEvent::MessageQueued { .. } => "MessageQueued",
            ConversationEvent::SendAttempted { .. } => "SendAttempted",
            ConversationEvent::SendAttemptFailed { .. } => "SendAttemptFailed",
            ConversationEvent::MessageSent { .. } => "MessageSent",
            ConversationEvent::MessageFailed { .. } => "WhatsAppMessageFailed",
            ConversationEvent::StatusUpdated { .. } => "StatusUpdated",
            ConversationEvent::MediaStored { .. } => "MediaStored",
            ConversationEvent::MediaFailed { .. } => "MediaFailed",
            ConversationEvent::MessageRevised { .. } => "MessageRevised",
            ConversationEvent::ChangeNotDelivered { .. } => "ChangeNotDelivered",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let s = session_id("106540352242922");
        assert_eq!(s, session_id("106540352242922"));
        assert_ne!(s, session_id("106540352242923"));
        let c = conversation_id("t1", &s, "16505551234");
        assert_ne!(c, conversation_id("t1", &s, "16505551235"));
        assert_ne!(c, conversation_id("t2", &s, "16505551234"));
        assert_eq!(
            inbound_message_id(&s, "wamid.A"),
            inbound_message_id(&s, "wamid.A")
        );
        assert_ne!(
            inbound_message_id(&s, "wamid.A"),
            inbound_message_id("other", "wamid.A")
        );
    }

    #[test]
    fn statuses_order_forward() {
        assert!(Delivery::Sent < Delivery::Delivered);
        assert!(Delivery::Delivered < Delivery::Read);
        assert_eq!(Delivery::parse("read"), Some(Delivery::Read));
        assert_eq!(Delivery::parse("deleted"), None);
    }

    #[test]
    fn a_contacts_subject_is_their_numbers_and_a_sealed_id_names_it() {
        let plain = contact_subject("t1", "16505551234").expect("a subject");
        assert_eq!(
            plain,
            crate::personal::subject_id("contact", "t1", "+16505551234")
        );
        assert_ne!(contact_subject("t2", "16505551234"), Some(plain));
        let sealed = format!("pii1.{plain}.{}.AAAA", Uuid::nil());
        assert_eq!(contact_subject("t2", &sealed), Some(plain));
        assert_eq!(contact_subject("t1", crate::personal::ERASED), None);
    }

    #[test]
    fn received_content_reads_back_the_object_it_was_sealed_from() {
        let object = serde_json::json!({"latitude": 48.85, "name": "Home"});
        let text = serde_json::Value::String(object.to_string());
        assert_eq!(received_content(text), object);
        assert_eq!(received_content(object.clone()), object);
        let erased = serde_json::json!(crate::personal::ERASED);
        assert_eq!(received_content(erased.clone()), erased);
    }
}
