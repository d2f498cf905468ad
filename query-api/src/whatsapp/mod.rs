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
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use events::http::{AuthUser, Json, Problem, Query};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::FromRow;
use std::sync::Arc;

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

    fn routes() -> Router<AppState> {
        router()
    }
}

/// The routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/whatsapp/sessions", get(sessions))
        .route("/v1/whatsapp/sessions/{id}", get(session))
        .route("/v1/whatsapp/sessions/{id}/messages", get(messages))
        .route("/v1/whatsapp/sessions/{id}/analytics", get(analytics))
        .route("/v1/whatsapp/messages/{id}", get(message))
        .route("/v1/whatsapp/messages/{id}/media", get(media))
        .route("/v1/whatsapp/contacts", get(contacts))
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

impl SessionRow {
    fn view(self) -> serde_json::Value {
        let failure_rate = match self.outbound_count {
            0 => None,
            n => Some(self.failed_count as f64 / n as f64),
        };
        json!({
            "id": self.id,
            "tenant_id": self.tenant_id,
            "transport": self.transport,
            "phone_number_id": self.phone_number_id,
            "business_account_id": self.business_account_id,
            "display_phone_number": self.display_phone_number,
            "verified_name": self.verified_name,
            "status": self.status,
            "connected_at": self.connected_at,
            "disconnected_at": self.disconnected_at,
            "health": {
                "last_inbound_at": self.last_inbound_at,
                "last_outbound_at": self.last_outbound_at,
                "inbound_messages": self.inbound_count,
                "outbound_messages": self.outbound_count,
                "days": HEALTH_DAYS,
                "failed_messages": self.failed_count,
                "failure_rate": failure_rate,
                "last_error": self.last_error_code.map(|code| json!({
                    "code": code, "message": self.last_error, "at": self.last_error_at,
                })),
            },
            "version": self.version,
        })
    }
}

/// Query of the session list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsParams {
    /// A super admin's choice of tenant.
    tenant_id: Option<Uuid>,
}

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
    let items: Vec<_> = rows.into_iter().map(SessionRow::view).collect();
    Ok(Json(json!({"items": items})).into_response())
}

/// Read-your-writes on one row.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetailParams {
    /// The version a command answered with.
    min_version: Option<i64>,
}

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
#[derive(Debug, Serialize, FromRow)]
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
    /// An inbound message's file: `stored` or `failed` (absent while fetching or when none).
    media_status: Option<String>,
    /// Its media type.
    media_type: Option<String>,
    /// Its size in bytes.
    media_size: Option<i64>,
    /// Why it could not be had.
    media_error: Option<String>,
    /// A URL serving the stored file for a few minutes without a token.
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

/// Query of a session's messages.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagesParams {
    /// `in` or `out`.
    direction: Option<String>,
    /// One status.
    status: Option<String>,
    /// One contact.
    wa_id: Option<String>,
    /// At most this many, newest first (default 50, at most 200).
    limit: Option<i64>,
}

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
    Ok(Json(json!({"items": rows})).into_response())
}

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

/// A contact.
#[derive(Debug, Serialize, FromRow)]
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
    first_seen_at: DateTime<Utc>,
    last_inbound_at: Option<DateTime<Utc>>,
}

/// Query of the contact list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactsParams {
    /// A super admin's choice of tenant.
    tenant_id: Option<Uuid>,
    /// At most this many, most recent first (default 50, at most 200).
    limit: Option<i64>,
}

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
    let rows: Vec<ContactView> = sqlx::query_as(
        "SELECT c.tenant_id, c.wa_id, c.phone, c.profile_name, p.user_id AS phone_user_id,
                c.first_seen_at, c.last_inbound_at
           FROM whatsapp_contacts c
           LEFT JOIN phone_users p ON p.tenant_id = c.tenant_id AND p.phone = c.phone
          WHERE ($1::text IS NULL OR c.tenant_id = $1)
          ORDER BY c.last_inbound_at DESC NULLS LAST, c.wa_id LIMIT $2",
    )
    .bind(tenant)
    .bind(limit)
    .fetch_all(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    Ok(Json(json!({"items": rows})).into_response())
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
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaParams {
    /// Until when the signature works (Unix seconds).
    expires: Option<i64>,
    /// The signature.
    signature: Option<String>,
}

/// A stored file: its tenant, blob key, media type and size.
type StoredFile = (String, Option<String>, Option<String>, Option<i64>);

/// `GET /v1/whatsapp/messages/{id}/media`: an inbound message's file, streamed from the
/// blob store, to the tenant's staff (bearer token) or to whoever holds a signed URL the
/// message's detail handed out.
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
#[derive(Debug, Deserialize)]
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

/// `GET /v1/whatsapp/sessions/{id}/analytics`: per day (UTC) of `[from, to)`, the
/// session's messages by direction, type and status; the median first-response time (from
/// a contact's message that began a wait — their first since the business last wrote — to
/// the business's next message in that conversation); failures by error code. The tenant's
/// staff read their sessions'.
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
    let unavailable = |e: sqlx::Error| Problem::unavailable(&e);
    let counted: Vec<Counted> = sqlx::query_as(
        "SELECT (created_at AT TIME ZONE 'UTC')::date AS day, direction, kind, status,
                count(*) AS count
           FROM whatsapp_messages
          WHERE session_id = $1 AND tenant_id = $2 AND created_at >= $3 AND created_at < $4
          GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
    )
    .bind(id)
    .bind(&tenant)
    .bind(from)
    .bind(to)
    .fetch_all(&state.pool)
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
    .bind(&tenant)
    .bind(from)
    .bind(to)
    .fetch_all(&state.pool)
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
    .bind(&tenant)
    .bind(from)
    .bind(to)
    .fetch_all(&state.pool)
    .await
    .map_err(unavailable)?;
    // One entry per day that saw anything, in order.
    let mut days = std::collections::BTreeMap::new();
    for c in counted {
        push(
            day_entry(&mut days, c.day),
            "messages",
            json!({"direction": c.direction,
            "kind": c.kind, "status": c.status, "count": c.count}),
        );
    }
    for r in responses {
        day_entry(&mut days, r.day)["first_response"] = json!({"waits": r.waits,
            "answered": r.answered, "median_secs": r.median_secs});
    }
    let mut totals: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    for f in failures {
        *totals.entry(f.code.clone()).or_default() += f.count;
        push(
            day_entry(&mut days, f.day),
            "failures",
            json!({"code": f.code, "count": f.count}),
        );
    }
    let failures: Vec<_> = totals
        .into_iter()
        .map(|(code, count)| json!({"code": code, "count": count}))
        .collect();
    Ok(Json(json!({
        "session_id": id,
        "from": from,
        "to": to,
        "days": days.into_values().collect::<Vec<_>>(),
        "failures": failures,
    }))
    .into_response())
}

/// The analytics entry of day `d`, made empty when new.
fn day_entry(
    days: &mut std::collections::BTreeMap<chrono::NaiveDate, serde_json::Value>,
    d: chrono::NaiveDate,
) -> &mut serde_json::Value {
    days.entry(d).or_insert_with(
        || json!({"day": d, "messages": [], "first_response": null, "failures": []}),
    )
}

/// Appends `item` to the list `key` of `entry`.
fn push(entry: &mut serde_json::Value, key: &str, item: serde_json::Value) {
    if let Some(list) = entry[key].as_array_mut() {
        list.push(item);
    }
}
