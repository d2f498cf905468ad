//! WhatsApp, as the dashboard reads it: sessions with their health, a session's messages
//! either way (with their delivery status and failures), one message, and the tenant's
//! contacts (linked to the phone user with the same number).
//!
//! The tenant's staff read their tenant's; a super admin any (all, or one `tenant_id`);
//! customers none. What one may not see answers 404, as if it did not exist. Credentials
//! never leave the command side sealed or not.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use events::http::{AuthUser, Json, Problem, Query};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use uuid::Uuid;

use crate::http::freshness;
use crate::http::scope::staff_scope;
use crate::AppState;

/// Most rows a list returns.
const MAX_LIMIT: i64 = 200;

/// The context has no settings of its own.
pub use crate::context::NoSettings as Settings;

/// The WhatsApp context (its routes).
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
        router()
    }
}

/// The routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sessions))
        .routes(routes!(session))
        .routes(routes!(messages))
        .routes(routes!(analytics))
        .routes(routes!(message))
        .routes(routes!(media))
        .routes(routes!(contacts))
}

/// A session row.
#[derive(Debug, FromRow)]
struct SessionRow {
    id: Uuid,
    tenant_id: String,
    transport: String,
    phone_number_id: String,
    business_account_id: Option<String>,
    display_phone_number: Option<String>,
    verified_name: Option<String>,
    status: String,
    connected_at: DateTime<Utc>,
    disconnected_at: Option<DateTime<Utc>>,
    last_inbound_at: Option<DateTime<Utc>>,
    last_outbound_at: Option<DateTime<Utc>>,
    inbound_count: i64,
    outbound_count: i64,
    failed_count: i64,
    last_error_code: Option<String>,
    last_error: Option<String>,
    last_error_at: Option<DateTime<Utc>>,
    version: i64,
}

/// A session with its health over the last [`HEALTH_DAYS`] days, read from its messages
/// (the tenant's only: a number connected again by another tenant starts afresh).
const SESSION_SELECT: &str = "SELECT s.id, s.tenant_id, s.transport, s.phone_number_id,
        s.business_account_id, s.display_phone_number, s.verified_name, s.status,
        s.connected_at, s.disconnected_at, h.last_inbound_at, h.last_outbound_at,
        h.inbound_count, h.outbound_count, h.failed_count, e.error_code AS last_error_code,
        e.error AS last_error, e.updated_at AS last_error_at, s.version
   FROM whatsapp_sessions s
   CROSS JOIN LATERAL (
        SELECT max(created_at) FILTER (WHERE direction = 'in') AS last_inbound_at,
               max(created_at) FILTER (WHERE direction = 'out') AS last_outbound_at,
               count(*) FILTER (WHERE direction = 'in') AS inbound_count,
               count(*) FILTER (WHERE direction = 'out') AS outbound_count,
               count(*) FILTER (WHERE direction = 'out' AND status = 'failed') AS failed_count
          FROM whatsapp_messages m
         WHERE m.session_id = s.id AND m.tenant_id = s.tenant_id
           AND m.created_at > now() - make_interval(days => 7)) h
   LEFT JOIN LATERAL (
        SELECT error_code, error, updated_at FROM whatsapp_messages m
         WHERE m.session_id = s.id AND m.tenant_id = s.tenant_id AND m.status = 'failed'
           AND m.updated_at > now() - make_interval(days => 7)
         ORDER BY m.updated_at DESC LIMIT 1) e ON true";

/// The days a session's health looks back (the `7` of [`SESSION_SELECT`]).
const HEALTH_DAYS: i64 = 7;

/// A session with its health. Credentials, the verify token and its hash are never
/// returned.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = WhatsAppSession)]
pub struct SessionView {
    id: Uuid,
    /// The tenant that connected it last (kept after a disconnect).
    tenant_id: String,
    /// `cloud` (the Cloud API) or `bridge` (the tenant's bridge worker).
    transport: String,
    /// The provider's phone number id; `bridge:{digits}` for a bridge session.
    phone_number_id: String,
    business_account_id: Option<String>,
    /// The number as the provider shows it.
    display_phone_number: Option<String>,
    /// The business name the provider verified.
    verified_name: Option<String>,
    /// `connected` or `disconnected`.
    status: String,
    connected_at: DateTime<Utc>,
    disconnected_at: Option<DateTime<Utc>>,
    /// Computed at read time from the session's messages of its current tenant created in
    /// the last `days` days.
    health: SessionHealth,
    version: i64,
}

/// A session's health over the last 7 days (`days`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = WhatsAppSessionHealth)]
pub struct SessionHealth {
    /// The newest inbound message in the window (the contact's time).
    last_inbound_at: Option<DateTime<Utc>>,
    /// The newest outbound message in the window (when it was queued).
    last_outbound_at: Option<DateTime<Utc>>,
    /// Inbound messages in the window.
    inbound_messages: i64,
    /// Outbound messages in the window.
    outbound_messages: i64,
    /// The window the figures cover, in days (7).
    days: i64,
    /// Outbound messages of the window now `failed`.
    failed_messages: i64,
    /// `failed_messages / outbound_messages`; null when nothing went out.
    failure_rate: Option<f64>,
    /// The most recent failure in the window (by its message's last change), or null.
    last_error: Option<SessionError>,
}

/// The most recent failure of a session's messages.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = WhatsAppSessionError)]
pub struct SessionError {
    /// The error code.
    code: String,
    /// Why, for people.
    message: Option<String>,
    /// When its message last changed.
    at: Option<DateTime<Utc>>,
}

impl SessionRow {
    fn view(self) -> SessionView {
        let failure_rate = match self.outbound_count {
            0 => None,
            n => Some(self.failed_count as f64 / n as f64),
        };
        SessionView {
            id: self.id,
            tenant_id: self.tenant_id,
            transport: self.transport,
            phone_number_id: self.phone_number_id,
            business_account_id: self.business_account_id,
            display_phone_number: self.display_phone_number,
            verified_name: self.verified_name,
            status: self.status,
            connected_at: self.connected_at,
            disconnected_at: self.disconnected_at,
            health: SessionHealth {
                last_inbound_at: self.last_inbound_at,
                last_outbound_at: self.last_outbound_at,
                inbound_messages: self.inbound_count,
                outbound_messages: self.outbound_count,
                days: HEALTH_DAYS,
                failed_messages: self.failed_count,
                failure_rate,
                last_error: self.last_error_code.map(|code| SessionError {
                    code,
                    message: self.last_error,
                    at: self.last_error_at,
                }),
            },
            version: self.version,
        }
    }
}

/// The sessions.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = WhatsAppSessionList)]
pub struct SessionList {
    /// Newest connection first.
    items: Vec<SessionView>,
}

/// Query of the session list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SessionsParams {
    /// A super admin's choice of tenant.
    tenant_id: Option<Uuid>,
}

/// WhatsApp sessions.
///
/// The connected and disconnected numbers with their health, newest connection first, at most
/// 1,000 (no cursor). The tenant's staff (agents included) read their tenant's; a super admin
/// every tenant's or one; phone users and service tokens 403.
#[utoipa::path(
    get,
    path = "/v1/whatsapp/sessions",
    params(SessionsParams),
    responses(
        (status = 200, description = "The sessions.", body = SessionList)
    ),
    security(("bearer" = []))
)]
async fn sessions(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Query(params): Query<SessionsParams>,
) -> Result<Response, Problem> {
    let tenant = staff_scope(&who, params.tenant_id, "WhatsApp")?;
    let rows: Vec<SessionRow> = sqlx::query_as(&format!(
        "{SESSION_SELECT}
          WHERE ($1::text IS NULL OR s.tenant_id = $1)
          ORDER BY s.connected_at DESC, s.id LIMIT 1000"
    ))
    .bind(tenant)
    .fetch_all(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    let items = rows.into_iter().map(SessionRow::view).collect();
    Ok(Json(SessionList { items }).into_response())
}

/// Read-your-writes on one row.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DetailParams {
    /// The version a command answered with.
    min_version: Option<i64>,
}

/// A WhatsApp session.
///
/// With its health. Read-your-writes with `min_version`/`X-Min-Version` (the `version` a
/// session command answered) as for tenants. Anyone who is not the session's tenant's staff (or
/// a super admin) gets 404, as for an unknown id.
#[utoipa::path(
    get,
    path = "/v1/whatsapp/sessions/{id}",
    params(("id" = Uuid, Path), ("X-Min-Version" = Option<i64>, Header), DetailParams),
    responses(
        (status = 200, description = "The session.", body = SessionView, headers(
            ("X-Read-Version" = i64, description = "The version the row reflects."),
            ("X-Read-Stale" = String, description = "`true` when the read gave up waiting for `min_version`.")
        ))
    ),
    security(("bearer" = []))
)]
async fn session(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<DetailParams>,
) -> Result<Response, Problem> {
    let not_found = || Problem::not_found("no such WhatsApp session");
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let min_version = freshness::min_version(&headers, params.min_version)?;
    let sql = format!("{SESSION_SELECT} WHERE s.id = $1");
    let (row, stale) = freshness::read_at_least(
        state.read_wait,
        min_version,
        |s: &SessionRow| s.version,
        || sqlx::query_as(&sql).bind(id).fetch_optional(&state.pool),
    )
    .await?;
    match row {
        Some(s) if who.is_staff_of(&s.tenant_id) => {
            let version = s.version;
            let mut response = Json(s.view()).into_response();
            freshness::version_headers(response.headers_mut(), Some(version), stale);
            Ok(response)
        }
        _ => Err(not_found()),
    }
}

/// A message either way.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = WhatsAppMessage)]
pub struct MessageView {
    id: Uuid,
    conversation_id: Uuid,
    tenant_id: String,
    session_id: Uuid,
    /// The contact's WhatsApp id.
    wa_id: String,
    /// `in` or `out`.
    direction: String,
    /// The provider's type.
    kind: String,
    /// What a thread shows (inbound), or text, caption or template name (outbound).
    text: Option<String>,
    /// The message as the provider described it (inbound) or as queued (outbound).
    content: serde_json::Value,
    /// The provider's id.
    wamid: Option<String>,
    thread_id: Option<Uuid>,
    /// The agent who wrote it (outbound).
    author_id: Option<String>,
    /// in: `received`; out: `queued`, `attempting`, `retrying`, `sent`, `delivered`, `read`
    /// or `failed`.
    status: String,
    /// Attempts at sending.
    attempts: i32,
    /// The provider's (or the platform's) error code, when failed or retrying.
    error_code: Option<String>,
    /// Why, for the agent.
    error: Option<String>,
    /// When it is tried again, while queued or retrying.
    next_attempt_at: Option<DateTime<Utc>>,
    /// An inbound message's file: `stored` or `failed` (null while fetching or when none).
    media_status: Option<String>,
    /// Its media type.
    media_type: Option<String>,
    /// Its size in bytes.
    media_size: Option<i64>,
    /// Why it could not be had.
    media_error: Option<String>,
    /// A path serving the stored file for 5 minutes without a token; only in
    /// `GET /v1/whatsapp/messages/{id}`, for a stored file (null otherwise and in lists).
    #[sqlx(skip)]
    media_url: Option<String>,
    created_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    /// The conversation's version at its last change.
    version: i64,
}

const MESSAGE_COLUMNS: &str = "id, conversation_id, tenant_id, session_id, wa_id, direction,
    kind, text, content, wamid, thread_id, author_id, status, attempts, error_code, error,
    next_attempt_at, media_status, media_type, media_size, media_error, created_at, sent_at,
    updated_at, version";

/// A session's messages.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = WhatsAppMessageList)]
pub struct MessageList {
    /// Newest first.
    items: Vec<MessageView>,
}

/// Query of a session's messages.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MessagesParams {
    /// `in` or `out`.
    direction: Option<String>,
    /// One status.
    status: Option<String>,
    /// One contact.
    wa_id: Option<String>,
    /// At most this many, newest first (default 50, at most 200).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// A WhatsApp session's messages.
///
/// The session's messages either way, of its current tenant only, newest first (`created_at`),
/// at most `limit` (no cursor). `media_url` is null here: read one message for it. Anyone who
/// is not the session's tenant's staff (or a super admin) gets 404, as for an unknown id.
#[utoipa::path(
    get,
    path = "/v1/whatsapp/sessions/{id}/messages",
    operation_id = "session_messages",
    params(("id" = Uuid, Path), MessagesParams),
    responses(
        (status = 200, description = "The messages.", body = MessageList)
    ),
    security(("bearer" = []))
)]
async fn messages(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
    Query(params): Query<MessagesParams>,
) -> Result<Response, Problem> {
    let not_found = || Problem::not_found("no such WhatsApp session");
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let tenant: Option<String> =
        sqlx::query_scalar("SELECT tenant_id FROM whatsapp_sessions WHERE id = $1")
            .bind(id)
            .fetch_optional(&state.pool)
            .await
            .map_err(|e| Problem::unavailable(&e))?;
    let Some(tenant) = tenant.filter(|t| who.is_staff_of(t)) else {
        return Err(not_found());
    };
    if let Some(d) = params
        .direction
        .as_deref()
        .filter(|d| !["in", "out"].contains(d))
    {
        return Err(Problem::bad_request(
            "invalid_direction",
            format!("direction is `in` or `out`, not `{d}`."),
        ));
    }
    let limit = params.limit.unwrap_or(50);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::bad_request(
            "invalid_limit",
            "limit is from 1 to 200.",
        ));
    }
    let rows: Vec<MessageView> = sqlx::query_as(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM whatsapp_messages
          WHERE session_id = $1 AND tenant_id = $2
            AND ($3::text IS NULL OR direction = $3)
            AND ($4::text IS NULL OR status = $4)
            AND ($5::text IS NULL OR wa_id = $5)
          ORDER BY created_at DESC, id DESC LIMIT $6"
    ))
    .bind(id)
    .bind(tenant)
    .bind(params.direction)
    .bind(params.status)
    .bind(params.wa_id.map(|w| w.trim_start_matches('+').to_owned()))
    .bind(limit)
    .fetch_all(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    Ok(Json(MessageList { items: rows }).into_response())
}

/// A WhatsApp message.
///
/// With its delivery status and, for an inbound message whose file is stored, `media_url`.
/// Read-your-writes with `min_version`/`X-Min-Version` (the conversation `version` a send
/// answered) as for tenants. Anyone who is not the message's tenant's staff (or a super admin)
/// gets 404, as for an unknown id.
#[utoipa::path(
    get,
    path = "/v1/whatsapp/messages/{id}",
    params(("id" = Uuid, Path), ("X-Min-Version" = Option<i64>, Header), DetailParams),
    responses(
        (status = 200, description = "The message.", body = MessageView, headers(
            ("X-Read-Version" = i64, description = "The conversation's version the row reflects."),
            ("X-Read-Stale" = String, description = "`true` when the read gave up waiting for `min_version`.")
        ))
    ),
    security(("bearer" = []))
)]
async fn message(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<DetailParams>,
) -> Result<Response, Problem> {
    let not_found = || Problem::not_found("no such WhatsApp message");
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let min_version = freshness::min_version(&headers, params.min_version)?;
    let sql = format!("SELECT {MESSAGE_COLUMNS} FROM whatsapp_messages WHERE id = $1");
    let (row, stale) = freshness::read_at_least(
        state.read_wait,
        min_version,
        |m: &MessageView| m.version,
        || sqlx::query_as(&sql).bind(id).fetch_optional(&state.pool),
    )
    .await?;
    match row {
        Some(mut m) if who.is_staff_of(&m.tenant_id) => {
            let version = m.version;
            if m.media_status.as_deref() == Some("stored") {
                m.media_url = Some(state.file_urls.url(m.id, Utc::now()));
            }
            let mut response = Json(m).into_response();
            freshness::version_headers(response.headers_mut(), Some(version), stale);
            Ok(response)
        }
        _ => Err(not_found()),
    }
}

/// A contact who wrote to one of the tenant's numbers (contacts are made by inbound messages
/// only).
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = WhatsAppContact)]
pub struct ContactView {
    tenant_id: String,
    /// Their WhatsApp id (their number's digits).
    wa_id: String,
    /// Their number in E.164.
    phone: String,
    /// The profile name they last wrote with.
    profile_name: Option<String>,
    /// The chatbot user with the same number, if any.
    phone_user_id: Option<String>,
    /// The contact as a data subject: what their export and erasure name
    /// (`/v1/privacy/subjects/{id}/…`, docs/privacy.md); the same person as the SMS sender
    /// with this number.
    #[sqlx(skip)]
    #[schema(value_type = Uuid)]
    subject_id: Option<Uuid>,
    first_seen_at: DateTime<Utc>,
    last_inbound_at: Option<DateTime<Utc>>,
}

/// The contacts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = WhatsAppContactList)]
pub struct ContactList {
    /// Most recent inbound message first.
    items: Vec<ContactView>,
}

/// Query of the contact list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ContactsParams {
    /// A super admin's choice of tenant.
    tenant_id: Option<Uuid>,
    /// At most this many, most recent first (default 50, at most 200).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// WhatsApp contacts.
///
/// The contacts who wrote to the tenant's numbers, most recent inbound message first, at most
/// `limit` (no cursor). The tenant's staff (agents included) read their tenant's; a super admin
/// every tenant's or one; phone users and service tokens 403.
#[utoipa::path(
    get,
    path = "/v1/whatsapp/contacts",
    params(ContactsParams),
    responses(
        (status = 200, description = "The contacts.", body = ContactList)
    ),
    security(("bearer" = []))
)]
async fn contacts(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Query(params): Query<ContactsParams>,
) -> Result<Response, Problem> {
    let tenant = staff_scope(&who, params.tenant_id, "WhatsApp")?;
    let limit = params.limit.unwrap_or(50);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::bad_request(
            "invalid_limit",
            "limit is from 1 to 200.",
        ));
    }
    let mut rows: Vec<ContactView> = sqlx::query_as(
        "SELECT c.tenant_id, c.wa_id, c.phone, c.profile_name, NULL::text AS phone_user_id,
                c.first_seen_at, c.last_inbound_at
           FROM whatsapp_contacts c
          WHERE ($1::text IS NULL OR c.tenant_id = $1)
          ORDER BY c.last_inbound_at DESC NULLS LAST, c.wa_id LIMIT $2",
    )
    .bind(tenant)
    .bind(limit)
    .fetch_all(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    link_phone_users(&state, &mut rows).await?;
    for row in &mut rows {
        row.subject_id = events::whatsapp::contact_subject(&row.tenant_id, &row.wa_id);
    }
    Ok(Json(ContactList { items: rows }).into_response())
}

/// Names the chatbot user each contact is: the phone user the contact's number would sign in
/// as at its tenant (the same keyed id command-api derives), if that user has signed in.
async fn link_phone_users(state: &AppState, rows: &mut [ContactView]) -> Result<(), Problem> {
    let candidates: Vec<String> = rows
        .iter()
        .map(|c| state.phone_keys.user_id(&c.tenant_id, &c.phone))
        .collect();
    let known: std::collections::HashSet<String> =
        sqlx::query_scalar("SELECT user_id FROM phone_user_directory WHERE user_id = ANY($1)")
            .bind(&candidates)
            .fetch_all(&state.pool)
            .await
            .map_err(|e| Problem::unavailable(&e))?
            .into_iter()
            .collect();
    for (row, candidate) in rows.iter_mut().zip(candidates) {
        if known.contains(&candidate) {
            row.phone_user_id = Some(candidate);
        }
    }
    Ok(())
}

/// How long a signed file URL works.
const FILE_URL_SECS: i64 = 300;

/// Signs file URLs: `…/media?expires={unix}&signature={hex HMAC-SHA256}` over the message id
/// and the expiry, under a key derived from the token secret. An `<img src>` or a download
/// link works without a bearer token for a few minutes, and for that file only.
#[derive(Clone)]
pub struct FileUrls(Arc<[u8; 32]>);

impl FileUrls {
    /// The signer for token secret `secret`.
    pub fn new(secret: &str) -> Self {
        use sha2::Digest;
        let key = sha2::Sha256::new()
            .chain_update(b"whatsapp-file-urls\0")
            .chain_update(secret.as_bytes())
            .finalize();
        Self(Arc::new(key.into()))
    }

    /// The MAC over message `id` and `expires`.
    fn mac(&self, id: Uuid, expires: i64) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.0.as_slice())
            .expect("HMAC takes any key length");
        mac.update(format!("{id}\0{expires}").as_bytes());
        mac
    }

    /// A URL (path and query) serving message `id`'s file until `now` + 5 minutes.
    pub fn url(&self, id: Uuid, now: DateTime<Utc>) -> String {
        let expires = now.timestamp() + FILE_URL_SECS;
        format!(
            "/v1/whatsapp/messages/{id}/media?expires={expires}&signature={}",
            events::hex::encode(&hmac::Mac::finalize(self.mac(id, expires)).into_bytes())
        )
    }

    /// Whether `signature` signs message `id` until `expires`, and that is not past.
    fn valid(&self, id: Uuid, expires: i64, signature: &str, now: DateTime<Utc>) -> bool {
        use hmac::Mac;
        expires >= now.timestamp()
            && events::hex::decode(signature)
                .is_some_and(|given| self.mac(id, expires).verify_slice(&given).is_ok())
    }
}

/// Query of a file download: a signed URL's, or none with a bearer token.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MediaParams {
    /// Until when the signature works (Unix seconds).
    expires: Option<i64>,
    /// The signature.
    signature: Option<String>,
}

// Documents the answer of `media`, which streams the file: never built.
/// The file's bytes.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
struct FileBytes(Vec<u8>);

/// A stored file: its tenant, blob key, media type and size.
type StoredFile = (String, Option<String>, Option<String>, Option<i64>);

/// An inbound WhatsApp message's file.
///
/// The file the contact sent, streamed from the blob store with its media type. Either a signed
/// URL (`media_url` of `GET /v1/whatsapp/messages/{id}`, or `media.url` of a thread's history),
/// valid 5 minutes, for this file only and without a token: `expires` and `signature` (hex
/// HMAC-SHA256 of the message id and `expires`, under a key derived from the token secret);
/// when both are given they alone decide. Or a bearer token of the message's tenant's staff (or
/// a super admin). A file not stored (still fetched, failed, or none), an expired or wrong
/// signature, no token, or a token of anyone else: 404, as for an unknown id. Served with
/// `Cache-Control: private, max-age=300`, `X-Content-Type-Options: nosniff` and
/// `Content-Security-Policy: sandbox; default-src 'none'` (a contact's file never runs as a
/// page of this origin).
#[utoipa::path(
    get,
    path = "/v1/whatsapp/messages/{id}/media",
    params(("id" = Uuid, Path), MediaParams),
    responses(
        (status = 200, description = "The file, with its media type (`application/octet-stream` when unknown).", body = inline(FileBytes), content_type = "*/*", headers(
            ("Cache-Control" = String, description = "`private, max-age=300`.")
        ))
    ),
    security(("bearer" = []), ())
)]
async fn media(
    State(state): State<AppState>,
    who: events::http::MaybeAuthUser,
    Path(id): Path<String>,
    Query(params): Query<MediaParams>,
) -> Result<Response, Problem> {
    let not_found = || Problem::not_found("no such WhatsApp file");
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let row: Option<StoredFile> = sqlx::query_as(
        "SELECT tenant_id, media_key, media_type, media_size FROM whatsapp_messages
          WHERE id = $1 AND media_status = 'stored'",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    let Some((tenant, Some(key), media_type, size)) = row else {
        return Err(not_found());
    };
    let allowed = match (&who.0, params.expires, params.signature.as_deref()) {
        (_, Some(expires), Some(signature)) => {
            state.file_urls.valid(id, expires, signature, Utc::now())
        }
        (Some(who), _, _) => who.is_staff_of(&tenant),
        _ => false,
    };
    if !allowed {
        return Err(not_found());
    }
    let file = state
        .blobs
        .get(&object_store::path::Path::from(key.as_str()))
        .await
        .map_err(|e| match e {
            object_store::Error::NotFound { .. } => not_found(),
            e => Problem::unavailable(&e),
        })?;
    let mut response = axum::body::Body::from_stream(file.into_stream()).into_response();
    let headers = response.headers_mut();
    let content_type = media_type.unwrap_or_else(|| "application/octet-stream".into());
    if let Ok(v) = axum::http::HeaderValue::from_str(&content_type) {
        headers.insert(axum::http::header::CONTENT_TYPE, v);
    }
    if let Some(size) = size {
        headers.insert(axum::http::header::CONTENT_LENGTH, size.into());
    }
    headers.insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("private, max-age=300"),
    );
    headers.insert(
        axum::http::header::HeaderName::from_static("x-content-type-options"),
        axum::http::HeaderValue::from_static("nosniff"),
    );
    // A contact's file is not trusted: it never runs as a page of this origin.
    headers.insert(
        axum::http::header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    Ok(response)
}

/// Query of a session's analytics.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsParams {
    /// Inclusive start: an RFC 3339 date-time or a date (default: 30 days before `to`).
    from: Option<String>,
    /// Exclusive end: an RFC 3339 date-time or a date (default: the end of today, UTC).
    to: Option<String>,
}

/// Messages of one day counted by direction, type and status.
#[derive(Debug, FromRow)]
struct Counted {
    day: chrono::NaiveDate,
    direction: String,
    kind: String,
    status: String,
    count: i64,
}

/// The first responses of one day.
#[derive(Debug, FromRow)]
struct Responses {
    day: chrono::NaiveDate,
    /// Customer messages that began a wait.
    waits: i64,
    /// Of them, those answered.
    answered: i64,
    /// Median seconds to the answer.
    median_secs: Option<f64>,
}

/// Failed messages of one day by error code.
#[derive(Debug, FromRow)]
struct Failures {
    day: chrono::NaiveDate,
    code: String,
    count: i64,
}

/// A session's analytics over `[from, to)`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = WhatsAppAnalytics)]
pub struct Analytics {
    /// The session.
    session_id: Uuid,
    /// Inclusive start.
    from: DateTime<Utc>,
    /// Exclusive end.
    to: DateTime<Utc>,
    /// Each UTC day with something to count, in order.
    days: Vec<AnalyticsDay>,
    /// Failures of the whole range by error code, ordered by code.
    failures: Vec<FailureCount>,
}

/// One UTC day of a session's analytics.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = WhatsAppAnalyticsDay)]
pub struct AnalyticsDay {
    /// The day (`YYYY-MM-DD`).
    day: chrono::NaiveDate,
    /// Messages created that day by direction, type and status (the status now).
    messages: Vec<MessageCount>,
    /// The waits that began that day; null on a day no wait began.
    first_response: Option<FirstResponse>,
    /// Outbound messages queued that day and now failed, by error code.
    failures: Vec<FailureCount>,
}

/// Messages of one day with the same direction, type and status.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = WhatsAppMessageCount)]
pub struct MessageCount {
    /// `in` or `out`.
    direction: String,
    /// The provider's message type.
    kind: String,
    /// The status now.
    status: String,
    /// How many.
    count: i64,
}

/// The first responses to the waits that began one day.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = WhatsAppFirstResponse)]
pub struct FirstResponse {
    /// Contact messages that began a wait.
    waits: i64,
    /// Of them, those answered (by now, even after `to`).
    answered: i64,
    /// Median seconds to the answer, over the answered ones; null when none was.
    median_secs: Option<f64>,
}

/// Failed outbound messages with one error code.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = WhatsAppFailureCount)]
pub struct FailureCount {
    /// The failure's error code (`unknown` when it has none).
    code: String,
    /// How many.
    count: i64,
}

/// A WhatsApp session's analytics.
///
/// Per UTC day of `[from, to)` (at most 366 days; 400 `invalid_query` otherwise), of the
/// session's messages of its current tenant: counts by direction, type and status (the status
/// now); the first-response time, from a contact's message that began a wait (their first since
/// the business last wrote in that conversation) to the next outbound message queued in that
/// conversation, counted on the day of the contact's message; and failed outbound messages by
/// error code, on the day they were queued. Only days with something to count are listed, in
/// order. Anyone who is not the session's tenant's staff (or a super admin) gets 404, as for an
/// unknown id.
#[utoipa::path(
    get,
    path = "/v1/whatsapp/sessions/{id}/analytics",
    params(("id" = Uuid, Path), AnalyticsParams),
    responses(
        (status = 200, description = "The analytics.", body = Analytics)
    ),
    security(("bearer" = []))
)]
async fn analytics(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
    Query(params): Query<AnalyticsParams>,
) -> Result<Response, Problem> {
    let not_found = || Problem::not_found("no such WhatsApp session");
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let (from, to) =
        crate::http::filters::range(params.from.as_deref(), params.to.as_deref(), Utc::now())?;
    if to - from > chrono::Duration::days(366) {
        return Err(Problem::bad_request(
            "invalid_query",
            "A range spans at most 366 days.",
        ));
    }
    let tenant: Option<String> =
        sqlx::query_scalar("SELECT tenant_id FROM whatsapp_sessions WHERE id = $1")
            .bind(id)
            .fetch_optional(&state.pool)
            .await
            .map_err(|e| Problem::unavailable(&e))?;
    let Some(tenant) = tenant.filter(|t| who.is_staff_of(t)) else {
        return Err(not_found());
    };
    let (counted, responses, failures) = rows(&state.pool, id, &tenant, from, to).await?;
    let (days, failures) = by_day(counted, responses, failures);
    Ok(Json(Analytics {
        session_id: id,
        from,
        to,
        days,
        failures,
    })
    .into_response())
}

/// A session's messages by day, direction, kind and status; its first responses by day; its
/// failures by day and code — over `[from, to)`.
async fn rows(
    pool: &sqlx::PgPool,
    id: Uuid,
    tenant: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(Vec<Counted>, Vec<Responses>, Vec<Failures>), Problem> {
    let unavailable = |e: sqlx::Error| Problem::unavailable(&e);
    let counted: Vec<Counted> = sqlx::query_as(
        "SELECT (created_at AT TIME ZONE 'UTC')::date AS day, direction, kind, status,
                count(*) AS count
           FROM whatsapp_messages
          WHERE session_id = $1 AND tenant_id = $2 AND created_at >= $3 AND created_at < $4
          GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
    )
    .bind(id)
    .bind(tenant)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    let responses: Vec<Responses> = sqlx::query_as(
        "WITH ordered AS (
             SELECT id, conversation_id, direction, created_at,
                    lag(direction) OVER (PARTITION BY conversation_id
                                         ORDER BY created_at, id) AS previous
               FROM whatsapp_messages
              WHERE session_id = $1 AND tenant_id = $2 AND created_at < $4),
         waits AS (
             SELECT o.created_at AS asked_at,
                    (SELECT min(r.created_at) FROM whatsapp_messages r
                      WHERE r.conversation_id = o.conversation_id AND r.direction = 'out'
                        AND r.created_at >= o.created_at) AS answered_at
               FROM ordered o
              WHERE o.direction = 'in' AND o.previous IS DISTINCT FROM 'in'
                AND o.created_at >= $3)
         SELECT (asked_at AT TIME ZONE 'UTC')::date AS day, count(*) AS waits,
                count(answered_at) AS answered,
                percentile_cont(0.5) WITHIN GROUP (
                    ORDER BY extract(epoch FROM answered_at - asked_at))::float8 AS median_secs
           FROM waits GROUP BY 1 ORDER BY 1",
    )
    .bind(id)
    .bind(tenant)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    let failures: Vec<Failures> = sqlx::query_as(
        "SELECT (created_at AT TIME ZONE 'UTC')::date AS day,
                COALESCE(error_code, 'unknown') AS code, count(*) AS count
           FROM whatsapp_messages
          WHERE session_id = $1 AND tenant_id = $2 AND created_at >= $3 AND created_at < $4
            AND direction = 'out' AND status = 'failed'
          GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(id)
    .bind(tenant)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    Ok((counted, responses, failures))
}

/// One entry per day that saw anything, in order, and the failures' totals by code.
fn by_day(
    counted: Vec<Counted>,
    responses: Vec<Responses>,
    failures: Vec<Failures>,
) -> (Vec<AnalyticsDay>, Vec<FailureCount>) {
    let mut days = std::collections::BTreeMap::new();
    for c in counted {
        day_entry(&mut days, c.day).messages.push(MessageCount {
            direction: c.direction,
            kind: c.kind,
            status: c.status,
            count: c.count,
        });
    }
    for r in responses {
        day_entry(&mut days, r.day).first_response = Some(FirstResponse {
            waits: r.waits,
            answered: r.answered,
            median_secs: r.median_secs,
        });
    }
    let mut totals: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    for f in failures {
        *totals.entry(f.code.clone()).or_default() += f.count;
        day_entry(&mut days, f.day).failures.push(FailureCount {
            code: f.code,
            count: f.count,
        });
    }
    let totals = totals
        .into_iter()
        .map(|(code, count)| FailureCount { code, count })
        .collect();
    (days.into_values().collect(), totals)
}

/// The analytics entry of day `d`, made empty when new.
fn day_entry(
    days: &mut std::collections::BTreeMap<chrono::NaiveDate, AnalyticsDay>,
    d: chrono::NaiveDate,
) -> &mut AnalyticsDay {
    days.entry(d).or_insert_with(|| AnalyticsDay {
        day: d,
        messages: Vec::new(),
        first_response: None,
        failures: Vec::new(),
    })
}
