//! `GET /v1/privacy/subjects/{id}/export`: everything the platform holds about a data subject,
//! in clear, as one JSON document (the right of access and to portability; docs/privacy.md).
//!
//! Read from the read models, which hold what they show in clear (the projector opened it),
//! and from the command side's record of phone users (`phone_users`, whose comment names
//! this read): no key is needed here, and after an erasure the same reads give what is left
//! — ids, times and `[erased]` in place of every personal field.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use events::access::{Principal, Role};
use events::http::{AuthUser, Json, Problem};
use serde::Serialize;
use sqlx::FromRow;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;

/// The context has no settings of its own.
pub use crate::context::NoSettings as Settings;

/// The privacy context (its routes).
pub struct Context;

impl crate::context::BoundedContext for Context {
    type Settings = Settings;

    async fn build(
        _setup: &crate::context::Setup<'_>,
        _settings: &Settings,
    ) -> Result<Self, crate::StartError> {
        Ok(Self)
    }

    fn routes() -> OpenApiRouter<AppState> {
        OpenApiRouter::new().routes(routes!(export))
    }
}

/// Who the export is about.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct SubjectView {
    id: Uuid,
    /// `phone_user`, `contact`, `admin_user` or `customer`.
    kind: String,
    tenant_id: String,
    /// Whether the subject was erased: then nothing personal is left to export.
    erased: bool,
    /// When.
    erased_at: Option<DateTime<Utc>>,
    /// When the platform first held data about them.
    known_since: DateTime<Utc>,
}

/// A phone user's profile, as they gave it.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct PhoneProfile {
    /// E.164 number.
    phone: String,
    display_name: Option<String>,
    email: Option<String>,
    /// BCP 47 language tag.
    locale: Option<String>,
    /// First sign-in.
    created_at: DateTime<Utc>,
}

/// A staff member's account.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct StaffProfile {
    email: String,
    role: String,
    department: Option<String>,
    active: bool,
    last_login_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

/// A thread of the subject: one they are the customer of (all of it), or, for a staff
/// member, one without a customer they wrote in (their own messages).
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct ThreadExport {
    id: Uuid,
    /// `web`, `whatsapp` or `sms`.
    channel: String,
    /// `open` or `closed`.
    status: String,
    subject: Option<String>,
    /// The number the thread's contact was reached at (null for other customers).
    customer_address: Option<String>,
    /// The staff's tags (empty in a phone user's own export, as the thread shows them).
    tags: Vec<String>,
    opened_at: DateTime<Utc>,
    /// The messages, in order.
    #[sqlx(skip)]
    messages: Vec<MessageExport>,
    /// Messages scheduled in it (the staff's: not in a phone user's own export).
    #[sqlx(skip)]
    scheduled: Vec<ScheduledExport>,
}

/// A message.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct MessageExport {
    #[serde(skip)]
    thread_id: Uuid,
    message_id: String,
    /// Its number in the thread (1-based).
    number: i64,
    author_id: String,
    /// `phone`, `agent`, `bot`, `system` or `contact`.
    author_kind: String,
    /// Null once deleted.
    text: Option<String>,
    /// A file sent with it (`{object_key, content_type, name, size_bytes}`).
    attachment: Option<serde_json::Value>,
    sent_at: DateTime<Utc>,
    edited_at: Option<DateTime<Utc>>,
    deleted_at: Option<DateTime<Utc>>,
    /// A file the contact sent over WhatsApp: `{content_type, size_bytes, url}`, `url`
    /// serving it for 5 minutes without a token.
    media: Option<serde_json::Value>,
}

/// A scheduled message.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct ScheduledExport {
    #[serde(skip)]
    thread_id: Uuid,
    id: String,
    author_id: String,
    text: String,
    due_at: DateTime<Utc>,
    /// `pending`, `delivered`, `cancelled` or `failed`.
    status: String,
}

/// A contact as WhatsApp knows them at the tenant.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct WhatsAppContactExport {
    /// Their WhatsApp id (their number's digits).
    wa_id: String,
    /// Their number (E.164).
    phone: String,
    /// The profile name they last wrote with.
    profile_name: Option<String>,
    first_seen_at: DateTime<Utc>,
    last_inbound_at: Option<DateTime<Utc>>,
}

/// A WhatsApp message to or from the contact.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct WhatsAppMessageExport {
    id: Uuid,
    conversation_id: Uuid,
    /// `in` (from them) or `out` (to them).
    direction: String,
    /// The provider's type (`text`, `image`, `location`, `template` …).
    kind: String,
    text: Option<String>,
    /// The message as the provider described it (inbound), or what was sent (outbound).
    content: serde_json::Value,
    status: String,
    created_at: DateTime<Utc>,
}

/// A call with the contact.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct CallExport {
    call_sid: String,
    /// `inbound` or `outbound` (null until the provider said).
    direction: Option<String>,
    from_number: Option<String>,
    to_number: Option<String>,
    status: Option<String>,
    duration_secs: Option<i32>,
    recording_url: Option<String>,
    started_at: DateTime<Utc>,
}

/// A recording about the subject (uploaded for their thread, or by them), with its
/// transcript.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct RecordingExport {
    id: Uuid,
    content_type: String,
    size_bytes: i64,
    /// `uploaded`, `requesting`, `retrying`, `requested`, `completed` or `failed`.
    status: String,
    /// The whole transcript, once completed.
    text: Option<String>,
    /// Its words with their timings (`[{text, start_ms, end_ms, confidence}]`).
    words: Option<serde_json::Value>,
    language: Option<String>,
    #[serde(skip)]
    transcript_object_key: Option<String>,
    uploaded_at: DateTime<Utc>,
}

/// Everything held about a data subject.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Export {
    subject: SubjectView,
    exported_at: DateTime<Utc>,
    /// A phone user's profile (null for other kinds, and once erased).
    phone_user: Option<PhoneProfile>,
    /// A staff member's account (null for other kinds).
    admin_user: Option<StaffProfile>,
    /// Their conversations, oldest first.
    threads: Vec<ThreadExport>,
    /// A contact's WhatsApp profile at the tenant (empty for other kinds).
    whatsapp_contacts: Vec<WhatsAppContactExport>,
    /// A contact's WhatsApp messages either way, oldest first (empty for other kinds).
    whatsapp_messages: Vec<WhatsAppMessageExport>,
    /// A contact's calls with the tenant's numbers, oldest first (empty for other kinds).
    calls: Vec<CallExport>,
    /// Recordings about them with their transcripts, oldest first.
    recordings: Vec<RecordingExport>,
}

/// Export a data subject's data.
///
/// Everything the platform holds about the person, in clear, as one JSON document: who they
/// are (a phone user's number and profile, a staff member's account), and their
/// conversations — every thread they are the customer of with its messages (text, files,
/// times; a WhatsApp file with a link that works for 5 minutes) and scheduled messages (the
/// staff's: left out of a phone user's own export), and, for a staff member, the messages
/// they wrote in threads without a customer, in any tenant; for a contact, also their
/// WhatsApp profile and messages either way and their calls (a phone user's export holds
/// those of the contact their number is, too: the same person); and the recordings about
/// them with their transcripts. Allowed: a
/// super admin, the admin of the subject's tenant, and a phone user for themselves; other
/// roles 403. An unknown subject, an id that is not a UUID, or another tenant's subject: 404.
/// After an erasure the answer says so (`subject.erased`) and holds no personal data: the
/// profile is gone and every text reads `[erased]`. Answered with `Cache-Control: no-store`.
#[utoipa::path(
    get,
    path = "/v1/privacy/subjects/{id}/export",
    params(("id" = Uuid, Path, description = "The subject's id (a phone user's id, …).")),
    responses(
        (status = 200, description = "The subject's data.", body = Export),
        (status = 403, response = events::http::openapi::ProblemAnswer),
        (status = 404, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn export(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let not_found = || Problem::not_found("data subject not found");
    let admin = matches!(
        who,
        Principal::Admin {
            role: Role::SuperAdmin | Role::TenantAdmin,
            ..
        }
    );
    if !admin && !matches!(who, Principal::Phone { .. }) {
        return Err(Problem::forbidden(
            "Only a super admin, the tenant's admin or the person themselves may export a data \
             subject's data.",
        ));
    }
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let subject: SubjectView = sqlx::query_as(
        "SELECT subject_id AS id, kind, tenant_id, erased_at IS NOT NULL AS erased, erased_at,
                created_at AS known_since
           FROM data_subjects WHERE subject_id = $1",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?
    .ok_or_else(not_found)?;
    let allowed = match &who {
        Principal::Phone { user_id, tenant_id } => {
            subject.kind == "phone_user"
                && *user_id == id.to_string()
                && *tenant_id == subject.tenant_id
        }
        _ => who.administers(&subject.tenant_id),
    };
    if !allowed {
        return Err(not_found());
    }
    // Scheduled messages are the staff's: a phone user's own export leaves them out, as the
    // thread does.
    let staff = !matches!(who, Principal::Phone { .. });
    let export = gather(&state, subject, staff)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let mut response = Json(export).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Reads everything held about `subject`.
async fn gather(
    state: &AppState,
    subject: SubjectView,
    staff: bool,
) -> Result<Export, sqlx::Error> {
    let id = subject.id.to_string();
    let phone_user: Option<PhoneProfile> = if subject.kind == "phone_user" {
        sqlx::query_as(
            "SELECT phone, display_name, email, locale, created_at
               FROM phone_users WHERE user_id = $1 AND tenant_id = $2",
        )
        .bind(&id)
        .bind(&subject.tenant_id)
        .fetch_optional(&state.pool)
        .await?
    } else {
        None
    };
    let admin_user: Option<StaffProfile> = if subject.kind == "admin_user" {
        sqlx::query_as(
            "SELECT email, role, department, active, last_login_at, created_at
               FROM admin_users WHERE id = $1",
        )
        .bind(&id)
        .fetch_optional(&state.pool)
        .await?
    } else {
        None
    };
    let mut threads = self::threads(state, &subject, staff).await?;
    let (mut whatsapp_contacts, mut whatsapp_messages, mut calls) = match subject.kind.as_str() {
        "contact" => contact_channels(state, &subject).await?,
        _ => Default::default(),
    };
    let mut held = recordings(state, subject.id).await?;
    // A phone user is also the contact of their number at the tenant (their SMS and
    // WhatsApp): the same person, whose export holds both (docs/privacy.md).
    if let Some(profile) = &phone_user {
        let contact = SubjectView {
            id: events::personal::subject_id("contact", &subject.tenant_id, &profile.phone),
            kind: "contact".into(),
            tenant_id: subject.tenant_id.clone(),
            erased: subject.erased,
            erased_at: subject.erased_at,
            known_since: subject.known_since,
        };
        threads.extend(self::threads(state, &contact, staff).await?);
        let (c, m, k) = contact_channels(state, &contact).await?;
        whatsapp_contacts.extend(c);
        whatsapp_messages.extend(m);
        calls.extend(k);
        held.extend(recordings(state, contact.id).await?);
    }
    Ok(Export {
        subject,
        exported_at: Utc::now(),
        phone_user,
        admin_user,
        threads,
        whatsapp_contacts,
        whatsapp_messages,
        calls,
        recordings: held,
    })
}

/// The recordings about `subject`, each with its whole transcript (a stored one read from
/// the blob store; its preview when that cannot be read now).
async fn recordings(state: &AppState, subject: Uuid) -> Result<Vec<RecordingExport>, sqlx::Error> {
    let mut recordings: Vec<RecordingExport> = sqlx::query_as(
        "SELECT id, content_type, size_bytes, status, text, words, language,
                transcript_object_key, created_at AS uploaded_at
           FROM audio_files WHERE subject_id = $1 ORDER BY created_at, id",
    )
    .bind(subject)
    .fetch_all(&state.pool)
    .await?;
    for r in &mut recordings {
        let erased = r.text.as_deref() == Some(events::personal::ERASED);
        if let Some(key) = r.transcript_object_key.take().filter(|_| !erased) {
            if let Ok(whole) = crate::audio::stored_transcript(state, &key).await {
                r.text = whole["text"].as_str().map(str::to_owned).or(r.text.take());
                r.words = Some(whole["words"].clone());
            }
        }
    }
    Ok(recordings)
}

/// What WhatsApp and the calls read models hold of contact `subject`: found as their
/// redactions find them (the tenant's distinct numbers whose subject is theirs).
async fn contact_channels(
    state: &AppState,
    subject: &SubjectView,
) -> Result<
    (
        Vec<WhatsAppContactExport>,
        Vec<WhatsAppMessageExport>,
        Vec<CallExport>,
    ),
    sqlx::Error,
> {
    let tenant = &subject.tenant_id;
    let numbers: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT wa_id FROM whatsapp_conversations WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(&state.pool)
    .await?;
    let wa_ids: Vec<String> = numbers
        .into_iter()
        .filter(|n| events::whatsapp::contact_subject(tenant, n) == Some(subject.id))
        .collect();
    let contacts = sqlx::query_as(
        "SELECT wa_id, phone, profile_name, first_seen_at, last_inbound_at
           FROM whatsapp_contacts WHERE tenant_id = $1 AND wa_id = ANY($2) ORDER BY wa_id",
    )
    .bind(tenant)
    .bind(&wa_ids)
    .fetch_all(&state.pool)
    .await?;
    let messages = sqlx::query_as(
        "SELECT id, conversation_id, direction, kind, text, content, status, created_at
           FROM whatsapp_messages WHERE tenant_id = $1 AND wa_id = ANY($2)
          ORDER BY created_at, id",
    )
    .bind(tenant)
    .bind(&wa_ids)
    .fetch_all(&state.pool)
    .await?;
    let parties: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT CASE direction WHEN 'outbound' THEN to_number ELSE from_number END
           FROM calls WHERE tenant_id = $1 AND direction IS NOT NULL",
    )
    .bind(tenant)
    .fetch_all(&state.pool)
    .await?;
    let parties: Vec<String> = parties
        .into_iter()
        .filter(|n| {
            let address = events::telephony::party_address(n);
            events::personal::subject_id("contact", tenant, &address) == subject.id
        })
        .collect();
    let calls = sqlx::query_as(
        "SELECT call_sid, direction, from_number, to_number, status, duration_secs,
                recording_url, started_at
           FROM calls
          WHERE tenant_id = $1
            AND CASE direction WHEN 'outbound' THEN to_number ELSE from_number END = ANY($2)
          ORDER BY started_at, id",
    )
    .bind(tenant)
    .bind(&parties)
    .fetch_all(&state.pool)
    .await?;
    Ok((contacts, messages, calls))
}

/// The subject's threads with their messages: those whose customer they are (found as the
/// redaction finds them: the tenant's customers whose subject id is theirs), and for a staff
/// member, those without a customer they wrote in (their own messages only).
async fn threads(
    state: &AppState,
    subject: &SubjectView,
    staff: bool,
) -> Result<Vec<ThreadExport>, sqlx::Error> {
    let is_subject = |id: &String| {
        events::personal::subject_id(&subject.kind, &subject.tenant_id, id) == subject.id
    };
    let customers: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT customer_id FROM chat_threads
          WHERE tenant_id = $1 AND customer_id IS NOT NULL",
    )
    .bind(&subject.tenant_id)
    .fetch_all(&state.pool)
    .await?;
    let customers: Vec<String> = customers.into_iter().filter(is_subject).collect();
    // A staff member's notes, in any tenant (a super admin's subject tenant is `platform`,
    // and they write in every tenant), by the ids that are theirs (found as the redaction
    // finds them).
    let authors: Vec<String> = if subject.kind == "admin_user" {
        let authors: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT m.author_id FROM chat_messages m
               JOIN chat_threads t ON t.id = m.thread_id
              WHERE t.customer_id IS NULL AND m.author_kind = 'agent'",
        )
        .fetch_all(&state.pool)
        .await?;
        authors.into_iter().filter(is_subject).collect()
    } else {
        Vec::new()
    };
    let mut threads: Vec<ThreadExport> = sqlx::query_as(
        "SELECT t.id, t.channel, t.status, t.subject, t.customer_address,
                CASE WHEN $4 THEN t.tags ELSE '{}'::text[] END AS tags,
                t.created_at AS opened_at
           FROM chat_threads t
          WHERE (t.tenant_id = $1 AND t.customer_id = ANY($2))
             OR (t.customer_id IS NULL
                 AND EXISTS (SELECT 1 FROM chat_messages m
                              WHERE m.thread_id = t.id AND m.author_kind = 'agent'
                                AND m.author_id = ANY($3)))
          ORDER BY t.created_at, t.id",
    )
    .bind(&subject.tenant_id)
    .bind(&customers)
    .bind(&authors)
    .bind(staff)
    .fetch_all(&state.pool)
    .await?;
    let ids: Vec<Uuid> = threads.iter().map(|t| t.id).collect();
    let (messages, scheduled) = contents(state, &ids, &authors, staff).await?;
    let at: std::collections::HashMap<Uuid, usize> =
        ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let now = Utc::now();
    for mut message in messages {
        if let (Some(media), Ok(id)) = (
            message.media.as_mut().and_then(|m| m.as_object_mut()),
            Uuid::parse_str(&message.message_id),
        ) {
            media.insert("url".into(), state.file_urls.url(id, now).into());
        }
        if let Some(&i) = at.get(&message.thread_id) {
            threads[i].messages.push(message);
        }
    }
    for s in scheduled {
        if let Some(&i) = at.get(&s.thread_id) {
            threads[i].scheduled.push(s);
        }
    }
    Ok(threads)
}

/// The messages and scheduled messages of threads `ids` the export holds: all of a
/// customer's thread, and in a thread without a customer those of staff member `authors` (their ids).
async fn contents(
    state: &AppState,
    ids: &[Uuid],
    authors: &[String],
    staff: bool,
) -> Result<(Vec<MessageExport>, Vec<ScheduledExport>), sqlx::Error> {
    let messages: Vec<MessageExport> = sqlx::query_as(
        "SELECT m.thread_id, m.message_id, m.number, m.author_id, m.author_kind, m.text,
                m.attachment, m.sent_at, m.edited_at, m.deleted_at,
                CASE WHEN w.media_status = 'stored' THEN
                     jsonb_build_object('content_type', w.media_type, 'size_bytes', w.media_size)
                END AS media
           FROM chat_messages m
           JOIN chat_threads t ON t.id = m.thread_id
           LEFT JOIN whatsapp_messages w
                  ON w.direction = 'in'
                 AND w.id = CASE WHEN m.message_id ~ '^[0-9a-fA-F-]{36}$'
                                 THEN m.message_id::uuid END
          WHERE m.thread_id = ANY($1)
            AND (t.customer_id IS NOT NULL
                 OR (m.author_kind = 'agent' AND m.author_id = ANY($2)))
          ORDER BY m.thread_id, m.number",
    )
    .bind(ids)
    .bind(authors)
    .fetch_all(&state.pool)
    .await?;
    let scheduled: Vec<ScheduledExport> = sqlx::query_as(
        "SELECT s.thread_id, s.id, s.author_id, s.text, s.due_at, s.status
           FROM chat_scheduled s
           JOIN chat_threads t ON t.id = s.thread_id
          WHERE $3 AND s.thread_id = ANY($1)
            AND (t.customer_id IS NOT NULL OR s.author_id = ANY($2))
          ORDER BY s.thread_id, s.due_at, s.id",
    )
    .bind(ids)
    .bind(authors)
    .bind(staff)
    .fetch_all(&state.pool)
    .await?;
    Ok((messages, scheduled))
}
