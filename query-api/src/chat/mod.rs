//! Chat reads: the inbox (a tenant's threads, or a phone user's own), a thread with its
//! participants and how far each has read, message history (newest first), unread counts and
//! scheduled messages. Only the tenant's staff and the thread's participants can read a
//! thread; anyone else gets 404, as if it did not exist.

use std::sync::LazyLock;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use events::access::Principal;
use events::http::{AuthUser, Json, Problem, Query};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::http::filters::{one_of, plain};
use crate::http::{freshness, page};
use crate::AppState;

/// The context has no settings of its own.
pub use crate::context::NoSettings as Settings;

/// The chat context (its routes).
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
        .routes(routes!(list))
        .routes(routes!(detail))
        .routes(routes!(messages))
        .routes(routes!(scheduled))
        .routes(routes!(unread))
}

/// A thread as the inbox shows it, with the caller's unread count.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = Thread)]
pub struct ThreadView {
    id: Uuid,
    tenant_id: String,
    /// `web`, `whatsapp` or `sms`.
    channel: String,
    /// `open` or `closed`.
    status: String,
    subject: Option<String>,
    /// The customer's id: a phone user's id, or a contact's data subject id (docs/privacy.md;
    /// a contact's number in threads opened before those were kept).
    customer_id: Option<String>,
    /// The number a customer of kind contact (an SMS sender, a WhatsApp contact) is reached
    /// at; `[erased]` once they are erased; null for other customers.
    customer_address: Option<String>,
    opened_by: String,
    agent_id: Option<String>,
    department: Option<String>,
    /// Why the platform last changed the assignment (`agent_unavailable`,
    /// `department_removed`); null when staff assigned it. Not shown to customers.
    assignment_reason: Option<String>,
    bot_enabled: bool,
    /// The staff's tags (empty for customers).
    tags: Vec<String>,
    message_count: i64,
    /// The newest message that is not deleted (preview of ≤ 200 characters).
    last_message: Option<serde_json::Value>,
    last_activity_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i64,
    /// Messages after the caller's read position.
    unread: i64,
    /// Whether the caller takes part (customers see only such threads).
    #[serde(skip)]
    participant: bool,
}

impl ThreadView {
    /// What a customer sees of a thread: not the staff's own notes (tags) nor who on the
    /// staff side handles it.
    fn seen_by(mut self, who: &Principal) -> Self {
        if matches!(who, Principal::Phone { .. }) {
            self.tags.clear();
            self.agent_id = None;
            self.department = None;
            self.assignment_reason = None;
        }
        self
    }
}

/// The caller's unread count of thread `t` read up to `r.last_read`: the messages after it,
/// less those deleted (one expression for the inbox, its filter and the badge totals).
macro_rules! unread {
    () => {
        "greatest(t.message_count - coalesce(r.last_read, 0) \
         - (SELECT count(*) FROM unnest(t.deleted_numbers) d WHERE d > coalesce(r.last_read, 0)), 0)"
    };
}

/// The thread columns, with the caller (`$1`) as reader and participant.
const THREAD_COLUMNS: &str = concat!(
    "t.id, t.tenant_id, t.channel, t.status, t.subject, t.customer_id, t.customer_address, \
     t.opened_by, t.agent_id, t.department, t.assignment_reason, t.bot_enabled, t.tags, \
     t.message_count, t.last_message, t.last_activity_at, t.created_at, t.updated_at, \
     t.version, ",
    unread!(),
    " AS unread, \
     EXISTS (SELECT 1 FROM chat_participants p WHERE p.thread_id = t.id AND p.user_id = $1) AS participant"
);

/// The thread table joined with the caller's (`$1`) read position.
const THREAD_FROM: &str =
    "chat_threads t LEFT JOIN chat_reads r ON r.thread_id = t.id AND r.reader_id = $1";

/// A thread as `json_build_object` arguments, in the shape and field order of
/// [`ThreadView`] (times as chrono writes them), with the caller (`$1`) as reader; for a
/// customer, without what [`ThreadView::seen_by`] leaves out.
fn thread_json_fields(customer: bool) -> String {
    let staff = |column: &'static str, hidden: &'static str| if customer { hidden } else { column };
    format!(
        "'id', t.id, 'tenant_id', t.tenant_id, 'channel', t.channel, 'status', t.status, \
         'subject', t.subject, 'customer_id', t.customer_id, \
         'customer_address', t.customer_address, 'opened_by', t.opened_by, \
         'agent_id', {}, 'department', {}, 'assignment_reason', {}, \
         'bot_enabled', t.bot_enabled, 'tags', {}, 'message_count', t.message_count, \
         'last_message', t.last_message, 'last_activity_at', api_time(t.last_activity_at), \
         'created_at', api_time(t.created_at), 'updated_at', api_time(t.updated_at), \
         'version', t.version, 'unread', {}",
        staff("t.agent_id", "NULL::text"),
        staff("t.department", "NULL::text"),
        staff("t.assignment_reason", "NULL::text"),
        staff("t.tags", "'{}'::text[]"),
        unread!(),
    )
}

/// Which threads a caller may see.
enum Scope {
    /// Every tenant's (a super admin without a tenant filter).
    All,
    /// One tenant's, as its staff.
    Tenant(String),
    /// Only those a customer takes part in, in their tenant.
    Participant(String),
}

impl Scope {
    /// The scope of `who`, narrowed to `asked` (a super admin's tenant filter).
    fn of(who: &Principal, asked: Option<String>) -> Result<Self, Problem> {
        match who {
            _ if who.is_super_admin() => Ok(asked.map_or(Scope::All, Scope::Tenant)),
            Principal::Admin {
                tenant_id: Some(home),
                ..
            } => match asked {
                Some(t) if &t != home => Err(Problem::forbidden(
                    "You may only read your own tenant's threads.",
                )),
                _ => Ok(Scope::Tenant(home.clone())),
            },
            Principal::Phone { tenant_id, .. } => Ok(Scope::Participant(tenant_id.clone())),
            _ => Err(Problem::forbidden("Only staff and customers read threads.")),
        }
    }

    /// `(tenant filter, participants only)`.
    fn binds(&self) -> (Option<&str>, bool) {
        match self {
            Scope::All => (None, false),
            Scope::Tenant(t) => (Some(t), false),
            Scope::Participant(t) => (Some(t), true),
        }
    }
}

/// True when `who` may read a thread of `tenant` in which they take part or not.
fn may_read(who: &Principal, tenant: &str, participant: bool) -> bool {
    match who {
        Principal::Phone { tenant_id, .. } => tenant_id == tenant && participant,
        _ => who.is_staff_of(tenant),
    }
}

/// Filters and page of the inbox.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// A super admin may pick a tenant; staff always read their own.
    tenant_id: Option<String>,
    /// `open` or `closed`.
    status: Option<String>,
    /// An agent id, `me`, or `none` (unassigned).
    assignee: Option<String>,
    /// `web`, `whatsapp` or `sms`.
    channel: Option<String>,
    /// A department.
    department: Option<String>,
    /// Only threads with (`true`) or without (`false`) messages the caller has not read.
    unread: Option<bool>,
    /// Only threads with activity after this instant (RFC 3339): pass a pass's first
    /// `as_of` to catch up on the threads that moved while it paged.
    active_after: Option<DateTime<Utc>>,
    /// Page size, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// Opaque cursor from the previous page's `next_cursor`.
    cursor: Option<String>,
}

/// One page of threads, most recent activity first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ThreadPage {
    /// The threads.
    items: Vec<ThreadView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
    /// A pass through the pages is not a snapshot: a thread with new activity moves to the
    /// top and a later page no longer has it. Keep the first page's `as_of` and, once the
    /// pass is done, list `?active_after={as_of}` to get every thread that moved meanwhile
    /// (it is 5 s before the read, so activity the read model was still applying comes too;
    /// a thread may come twice: merge by id).
    as_of: DateTime<Utc>,
}

/// How far before a read its `as_of` is: longer than the read model usually lags.
const AS_OF_MARGIN: chrono::Duration = chrono::Duration::seconds(5);

/// Threads (the inbox).
///
/// Staff read their tenant's threads (a super admin all, or one with `tenant_id`); a phone user
/// reads only the threads they take part in. Most recent activity first; keyset cursor. Each
/// thread carries the caller's `unread` count: messages after their read position, deleted ones
/// left out. A customer's view leaves out the staff's tags, assignee and department, and the
/// `assignee` and `department` filters are the staff's (403 `forbidden` for a phone token).
#[utoipa::path(
    get,
    path = "/v1/chat/threads",
    operation_id = "list_threads",
    params(ListParams),
    responses(
        (status = 200, description = "A page.", body = ThreadPage)
    ),
    security(("bearer" = []))
)]
async fn list(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Query(params): Query<ListParams>,
) -> Result<Response, Problem> {
    let scope = Scope::of(&who, plain(params.tenant_id, "tenant_id")?)?;
    let limit = page::limit(params.limit)?;
    one_of(&params.status, &["open", "closed"], "status")?;
    one_of(&params.channel, &["web", "whatsapp", "sms"], "channel")?;
    // Who handles a thread is the staff's business: a customer filtering by it would learn
    // what the answer hides (outside probe: `assignee` and `department` as an oracle).
    if matches!(who, Principal::Phone { .. })
        && (params.assignee.is_some() || params.department.is_some())
    {
        return Err(Problem::forbidden(
            "The assignee and department filters are for the tenant's staff.",
        ));
    }
    let department = plain(params.department, "department")?;
    let (agent, unassigned) = match plain(params.assignee, "assignee")?.as_deref() {
        None => (None, false),
        Some("none") => (None, true),
        Some("me") => (Some(who.user_id().to_owned()), false),
        Some(agent) => (Some(agent.to_owned()), false),
    };
    let cursor = page::cursor(params.cursor.as_deref())?;
    let (tenant, participants_only) = scope.binds();
    // Only the filters asked for (see `page::Conditions`). `$1` is the caller (columns, join).
    let mut w = page::Conditions::after(1);
    w.text("t.tenant_id = ?", tenant.map(str::to_owned));
    if participants_only {
        w.and("EXISTS (SELECT 1 FROM chat_participants p WHERE p.thread_id = t.id AND p.user_id = $1)");
    }
    w.text("t.status = ?", params.status);
    w.text("t.channel = ?", params.channel);
    w.text("t.agent_id = ?", agent);
    if unassigned {
        w.and("t.agent_id IS NULL");
    }
    w.text("lower(t.department) = lower(?)", department);
    w.flag(concat!("(", unread!(), " > 0) = ?"), params.unread);
    w.time("t.last_activity_at > ?", params.active_after);
    w.keyset("t.last_activity_at, t.id", cursor);
    let limit_at = w.next_placeholder();
    // Rows decoded and written by serde, not JSON built by PostgreSQL as a thread's detail
    // is: for a 50-row page, PostgreSQL's `json_build_object` cost more of the CPU it shares
    // with every other service than decoding and writing the rows here (1,590 against 2,160
    // pages/s, docs/performance.md, run 10).
    let sql = format!(
        "SELECT {THREAD_COLUMNS} FROM {THREAD_FROM}{} ORDER BY t.last_activity_at DESC, t.id DESC LIMIT {}",
        w.sql(),
        limit_at
    );
    let query = w.bind(sqlx::query_as::<_, ThreadView>(&sql).bind(who.user_id()));
    let as_of = Utc::now() - AS_OF_MARGIN;
    let mut items: Vec<ThreadView> = query
        .bind(limit + 1)
        .fetch_all(&state.pool)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let next_cursor = page::finish(&mut items, limit, |t| {
        page::encode_cursor(t.last_activity_at, t.id)
    });
    let items = items.into_iter().map(|t| t.seen_by(&who)).collect();
    Ok(Json(ThreadPage {
        items,
        next_cursor,
        as_of,
    })
    .into_response())
}

/// Read-your-writes on a thread.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DetailParams {
    /// The version a command answered with.
    min_version: Option<i64>,
}

/// A participant and how far they have read.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = Participant)]
pub struct ParticipantView {
    user_id: String,
    /// `phone` (a customer) or `agent` (staff).
    kind: String,
    joined_at: DateTime<Utc>,
    /// The number of the last message they read (0: none).
    last_read: i64,
    /// Messages after it, deleted ones left out.
    unread: i64,
}

/// A reader who is not a participant (staff reading the thread).
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = Reader)]
pub struct ReaderView {
    reader_id: String,
    reader_kind: String,
    /// The number of the last message they read.
    last_read: i64,
    /// Messages after it, deleted ones left out.
    unread: i64,
    read_at: DateTime<Utc>,
}

/// A thread with its participants and readers. PostgreSQL writes this answer
/// ([`detail_sql`]); the type documents it (OpenAPI), and a test holds the answer to it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ThreadDetail {
    /// The thread.
    #[serde(flatten)]
    thread: ThreadView,
    /// Its participants (for a customer, only the customers among them).
    participants: Vec<ParticipantView>,
    /// The staff who read it without taking part (empty for a customer).
    readers: Vec<ReaderView>,
}

fn thread_uuid(raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| Problem::not_found("thread not found"))
}

/// The thread as `who` may see it, waiting (bounded) for `min_version`; 404 when it does not
/// exist or `who` may not read it.
async fn visible(
    state: &AppState,
    who: &Principal,
    id: Uuid,
    min_version: Option<i64>,
) -> Result<(ThreadView, bool), Problem> {
    let sql = format!("SELECT {THREAD_COLUMNS} FROM {THREAD_FROM} WHERE t.id = $2");
    visible_row(state, who, &sql, id, min_version).await
}

/// A row of one thread (`sql`, with the caller as `$1` and the thread as `$2`) that says
/// whose it is.
trait ThreadRow: for<'r> FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin {
    fn version(&self) -> i64;
    fn tenant_id(&self) -> &str;
    fn participant(&self) -> bool;
}

/// Both rows carry the fields under the same names.
macro_rules! thread_row {
    ($($row:ty),*) => {$(
        impl ThreadRow for $row {
            fn version(&self) -> i64 {
                self.version
            }
            fn tenant_id(&self) -> &str {
                &self.tenant_id
            }
            fn participant(&self) -> bool {
                self.participant
            }
        }
    )*};
}

thread_row!(ThreadView, DetailRow);

/// Thread row `sql` as `who` may see it, waiting (bounded) for `min_version`, and whether it
/// gave up waiting; 404 when the thread does not exist or `who` may not read it. A thread the
/// caller may not read is one that does not exist, waited for as long: an answer that came
/// sooner would tell another tenant it exists, and its version (outside probe:
/// `min_version` as a timing oracle).
async fn visible_row<T: ThreadRow>(
    state: &AppState,
    who: &Principal,
    sql: &str,
    id: Uuid,
    min_version: Option<i64>,
) -> Result<(T, bool), Problem> {
    let (row, stale) =
        freshness::read_at_least(state.read_wait, min_version, T::version, || async {
            let row: Option<T> = sqlx::query_as(sql)
                .bind(who.user_id())
                .bind(id)
                .fetch_optional(&state.pool)
                .await?;
            Ok(row.filter(|t| may_read(who, t.tenant_id(), t.participant())))
        })
        .await?;
    match row {
        Some(row) => Ok((row, stale)),
        None => Err(Problem::not_found("thread not found")),
    }
}

/// A thread.
///
/// With its participants (and each one's `last_read` and `unread`) and the staff who read it
/// without taking part (`readers`). Read-your-writes with `min_version`/`X-Min-Version` as for
/// tenants. Anyone but the tenant's staff and the thread's participants gets 404. A customer's
/// view lists only the customers among the participants (no staff, no `readers`: which staff
/// take part and what they read is the staff's business, as on the live stream), and leaves out
/// tags, assignee and department. Unread counts leave deleted messages out.
#[utoipa::path(
    get,
    path = "/v1/chat/threads/{id}",
    operation_id = "thread",
    params(("id" = Uuid, Path), ("X-Min-Version" = Option<i64>, Header), DetailParams),
    responses(
        (status = 200, description = "The thread.", body = ThreadDetail, headers(
            ("X-Read-Version" = i64, description = "The version the thread reflects."),
            ("X-Read-Stale" = String, description = "`true` when the read gave up waiting for `min_version`.")
        ))
    ),
    security(("bearer" = []))
)]
async fn detail(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<DetailParams>,
) -> Result<Response, Problem> {
    let id = thread_uuid(&id)?;
    let min_version = freshness::min_version(&headers, params.min_version)?;
    let sql = &DETAIL_SQL[usize::from(matches!(who, Principal::Phone { .. }))];
    let (row, stale) = visible_row::<DetailRow>(&state, &who, sql, id, min_version).await?;
    let mut response = crate::http::prepared_json(row.json);
    freshness::version_headers(response.headers_mut(), Some(row.version), stale);
    Ok(response)
}

/// A thread's detail as one row: who may read it, and its JSON.
#[derive(FromRow)]
struct DetailRow {
    version: i64,
    tenant_id: String,
    participant: bool,
    /// The thread as [`ThreadDetail`] writes it.
    json: String,
}

/// The detail's statement for staff (`[0]`) and for a customer (`[1]`), written once rather
/// than on every read.
static DETAIL_SQL: LazyLock<[String; 2]> = LazyLock::new(|| [detail_sql(false), detail_sql(true)]);

/// One statement for thread `$2` read by `$1`, with its participants and readers, in the
/// shape of [`ThreadDetail`]. A customer's view lists only the customers among the
/// participants and no readers: which staff take part, and what they read, is the staff's
/// business (the same rule as the live events: docs/realtime.md, "What customers see").
fn detail_sql(customer: bool) -> String {
    let unread_after = |last_read: &str| {
        format!(
            "greatest(t.message_count - {last_read} \
             - (SELECT count(*) FROM unnest(t.deleted_numbers) d WHERE d > {last_read}), 0)"
        )
    };
    let participants = format!(
        "coalesce((SELECT json_agg(json_build_object('user_id', p.user_id, 'kind', p.kind, \
                   'joined_at', api_time(p.joined_at), 'last_read', coalesce(pr.last_read, 0), \
                   'unread', {}) ORDER BY p.joined_at, p.user_id) \
           FROM chat_participants p \
           LEFT JOIN chat_reads pr ON pr.thread_id = p.thread_id AND pr.reader_id = p.user_id \
          WHERE p.thread_id = t.id{}), '[]'::json)",
        unread_after("coalesce(pr.last_read, 0)"),
        if customer {
            " AND p.kind = 'phone'"
        } else {
            ""
        },
    );
    let readers = if customer {
        "'[]'::json".to_owned()
    } else {
        format!(
            "coalesce((SELECT json_agg(json_build_object('reader_id', sr.reader_id, \
                       'reader_kind', sr.reader_kind, 'last_read', sr.last_read, \
                       'unread', {}, 'read_at', api_time(sr.read_at)) \
                       ORDER BY sr.read_at DESC, sr.reader_id) \
               FROM chat_reads sr \
              WHERE sr.thread_id = t.id \
                AND NOT EXISTS (SELECT 1 FROM chat_participants p \
                                 WHERE p.thread_id = sr.thread_id AND p.user_id = sr.reader_id)), \
             '[]'::json)",
            unread_after("sr.last_read")
        )
    };
    format!(
        "SELECT t.version, t.tenant_id, \
                EXISTS (SELECT 1 FROM chat_participants p WHERE p.thread_id = t.id AND p.user_id = $1) \
                  AS participant, \
                json_build_object({}, 'participants', {participants}, 'readers', {readers})::text AS json \
           FROM {THREAD_FROM} WHERE t.id = $2",
        thread_json_fields(customer)
    )
}

/// A page of history.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MessageParams {
    /// Only messages numbered below this (the previous page's `next_before`).
    #[param(minimum = 1)]
    before: Option<i64>,
    /// Page size, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// Wait until the thread reflects this version (a send's answer).
    min_version: Option<i64>,
}

/// A message as history shows it; a deleted one keeps its place without text.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = Message)]
pub struct MessageView {
    message_id: String,
    /// Its number in the thread (1-based).
    number: i64,
    author_id: String,
    /// `phone`, `agent`, `bot`, `system` or `contact`.
    author_kind: String,
    /// Null once deleted.
    text: Option<String>,
    attachment: Option<serde_json::Value>,
    client_message_id: Option<String>,
    scheduled_id: Option<String>,
    sent_at: DateTime<Utc>,
    edited_at: Option<DateTime<Utc>>,
    deleted: bool,
    deleted_at: Option<DateTime<Utc>>,
    /// For a reply sent over a channel (WhatsApp): `{channel, status, error_code, error}`,
    /// status `queued`, `attempting`, `retrying`, `sent`, `delivered`, `read` or `failed`.
    delivery: Option<serde_json::Value>,
    /// For a contact's message that came with a file (WhatsApp): `{status, content_type,
    /// size_bytes, error, url}`; `url` serves the stored file for a few minutes.
    media: Option<serde_json::Value>,
}

/// One page of messages, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessagePage {
    /// The messages.
    items: Vec<MessageView>,
    /// Pass as `before` for older messages; null on the oldest page.
    next_before: Option<i64>,
}

/// Message history.
///
/// Newest first; `before` (the previous page's `next_before`) pages back. Deleted messages keep
/// their place with `deleted: true` and no text. Read-your-writes with `min_version`.
#[utoipa::path(
    get,
    path = "/v1/chat/threads/{id}/messages",
    operation_id = "thread_messages",
    params(("id" = Uuid, Path), ("X-Min-Version" = Option<i64>, Header), MessageParams),
    responses(
        (status = 200, description = "A page.", body = MessagePage, headers(
            ("X-Read-Version" = i64, description = "The version the thread reflects."),
            ("X-Read-Stale" = String, description = "`true` when the read gave up waiting for `min_version`.")
        ))
    ),
    security(("bearer" = []))
)]
async fn messages(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<MessageParams>,
) -> Result<Response, Problem> {
    let id = thread_uuid(&id)?;
    let limit = page::limit(params.limit)?;
    if params.before.is_some_and(|b| b < 1) {
        return Err(Problem::bad_request(
            "invalid_query",
            "before must be a message number (1 or more).",
        ));
    }
    let min_version = freshness::min_version(&headers, params.min_version)?;
    let (thread, stale) = visible(&state, &who, id, min_version).await?;
    let mut items: Vec<MessageView> = sqlx::query_as(
        "SELECT m.message_id, m.number, m.author_id, m.author_kind, m.text, m.attachment,
                m.client_message_id, m.scheduled_id, m.sent_at, m.edited_at,
                m.deleted_at IS NOT NULL AS deleted, m.deleted_at,
                (SELECT jsonb_build_object('channel', 'whatsapp', 'status', w.status,
                                           'error_code', w.error_code, 'error', w.error)
                   FROM whatsapp_messages w
                  WHERE w.direction = 'out'
                    AND w.id = CASE WHEN m.message_id ~ '^[0-9a-fA-F-]{36}$'
                                    THEN m.message_id::uuid END) AS delivery,
                (SELECT jsonb_build_object('status', w.media_status,
                                           'content_type', w.media_type,
                                           'size_bytes', w.media_size, 'error', w.media_error)
                   FROM whatsapp_messages w
                  WHERE w.direction = 'in' AND w.media_status IS NOT NULL
                    AND w.id = CASE WHEN m.message_id ~ '^[0-9a-fA-F-]{36}$'
                                    THEN m.message_id::uuid END) AS media
           FROM chat_messages m
          WHERE m.thread_id = $1 AND ($2::bigint IS NULL OR m.number < $2)
          ORDER BY m.number DESC
          LIMIT $3",
    )
    .bind(id)
    .bind(params.before)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    let next_before = page::finish(&mut items, limit, |m| m.number);
    let now = chrono::Utc::now();
    for m in &mut items {
        let stored = m.media.as_ref().is_some_and(|x| x["status"] == "stored");
        if let (true, Ok(id)) = (stored, Uuid::parse_str(&m.message_id)) {
            if let Some(media) = m.media.as_mut().and_then(|x| x.as_object_mut()) {
                media.insert("url".into(), state.file_urls.url(id, now).into());
            }
        }
    }
    let mut response = Json(MessagePage { items, next_before }).into_response();
    freshness::version_headers(response.headers_mut(), Some(thread.version), stale);
    Ok(response)
}

/// A scheduled message.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = ScheduledMessage)]
pub struct ScheduledView {
    id: String,
    author_id: String,
    text: String,
    attachment: Option<serde_json::Value>,
    due_at: DateTime<Utc>,
    /// `pending`, `delivered`, `cancelled` or `failed`.
    status: String,
    /// The message it became, once delivered.
    message_id: Option<String>,
    /// Why it was not delivered, when `failed`: `author_unavailable` (its author can no
    /// longer write here) or `delivery_failed` (delivery kept failing).
    failure_code: Option<String>,
    /// The same, for people (for `delivery_failed`, the last error).
    failure: Option<String>,
    /// When it was given up.
    failed_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Scheduled messages of a thread.
///
/// Staff only (a participating customer gets 403). By due time; `status` is pending, delivered
/// (with `message_id`), cancelled, or failed (not delivered when due, and not tried again
/// unless rescheduled: `failure_code` `author_unavailable` — its author can no longer write in
/// the thread — or `delivery_failed` — its delivery failed 8 times in a row — with `failure`,
/// the reason, and `failed_at`).
#[utoipa::path(
    get,
    path = "/v1/chat/threads/{id}/scheduled",
    params(("id" = Uuid, Path), ("X-Min-Version" = Option<i64>, Header), DetailParams),
    responses(
        (status = 200, description = "The scheduled messages.", body = ScheduledList, headers(
            ("X-Read-Version" = i64, description = "The version the thread reflects."),
            ("X-Read-Stale" = String, description = "`true` when the read gave up waiting for `min_version`.")
        ))
    ),
    security(("bearer" = []))
)]
async fn scheduled(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<DetailParams>,
) -> Result<Response, Problem> {
    let id = thread_uuid(&id)?;
    let min_version = freshness::min_version(&headers, params.min_version)?;
    let (thread, stale) = visible(&state, &who, id, min_version).await?;
    if !who.is_staff_of(&thread.tenant_id) {
        return Err(Problem::forbidden(
            "Only the tenant's staff see scheduled messages.",
        ));
    }
    let items: Vec<ScheduledView> = sqlx::query_as(
        "SELECT id, author_id, text, attachment, due_at, status, message_id, failure_code,
                failure, failed_at, created_at, updated_at
           FROM chat_scheduled WHERE thread_id = $1 ORDER BY due_at, id",
    )
    .bind(id)
    .fetch_all(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    let mut response = Json(ScheduledList { items }).into_response();
    freshness::version_headers(response.headers_mut(), Some(thread.version), stale);
    Ok(response)
}

/// A thread's scheduled messages.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduledList {
    /// By due time.
    items: Vec<ScheduledView>,
}

/// Filter of the unread summary.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UnreadParams {
    /// A super admin's tenant.
    tenant_id: Option<String>,
}

/// The caller's unread totals over the threads they see (badge counts).
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = Unread)]
pub struct UnreadView {
    /// Threads with at least one unread message.
    threads: i64,
    /// Unread messages in all.
    messages: i64,
}

/// Unread totals.
///
/// The caller's unread totals over the threads they may see (badge counts); deleted messages
/// are not counted.
#[utoipa::path(
    get,
    path = "/v1/chat/unread",
    params(UnreadParams),
    responses(
        (status = 200, description = "Totals.", body = UnreadView)
    ),
    security(("bearer" = []))
)]
async fn unread(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Query(params): Query<UnreadParams>,
) -> Result<Response, Problem> {
    let scope = Scope::of(&who, plain(params.tenant_id, "tenant_id")?)?;
    let (tenant, participants_only) = scope.binds();
    let view: UnreadView = sqlx::query_as(&format!(
        "SELECT count(*) FILTER (WHERE u > 0) AS threads, coalesce(sum(u), 0)::bigint AS messages
           FROM (SELECT {} AS u
                   FROM {THREAD_FROM}
                  WHERE ($2::text IS NULL OR t.tenant_id = $2)
                    AND (NOT $3 OR EXISTS (SELECT 1 FROM chat_participants p
                                            WHERE p.thread_id = t.id AND p.user_id = $1))) AS x",
        unread!()
    ))
    .bind(who.user_id())
    .bind(tenant)
    .bind(participants_only)
    .fetch_one(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    Ok(Json(view).into_response())
}
