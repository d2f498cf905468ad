//! HTTP routes of chat under `/v1/chat/threads`. Each turns a request into a
//! [`ThreadCommand`] stamped with the caller and the server's clock; the aggregate decides.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use chrono::{DateTime, Utc};
use events::access::Principal;
use events::chat::{Attachment, Channel, Party, PartyKind, THREAD};
use events::http::{AuthUser, Json, Problem, RequestIds};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::aggregate::ThreadError;
use super::commands::{Action, Release, ThreadCommand};
use super::service::{actor, item_id, tenant_of};
use crate::http::idempotency::KeyedRequest;
use crate::http::{accepted, if_match};
use crate::store::Committed;
use crate::AppState;

/// The routes of the chat context.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(open))
        .routes(routes!(send))
        .routes(routes!(edit))
        .routes(routes!(delete))
        .routes(routes!(mark_read))
        .routes(routes!(assign))
        .routes(routes!(release))
        .routes(routes!(switch_bot))
        .routes(routes!(close))
        .routes(routes!(reopen))
        .routes(routes!(set_tags))
        .routes(routes!(add_participant))
        .routes(routes!(schedule))
        .routes(routes!(reschedule))
        .routes(routes!(cancel_scheduled))
        .routes(routes!(deliver_scheduled))
        .routes(routes!(fail_scheduled))
}

/// Thread ids are UUIDs; anything else names no thread.
fn thread_id(raw: &str) -> Result<String, Problem> {
    Uuid::parse_str(raw)
        .map(|u| u.to_string())
        .map_err(|_| ThreadError::NotFound.into_problem())
}

impl ThreadError {
    fn into_problem(self) -> Problem {
        crate::http::error::DomainProblem::problem(&self)
    }
}

/// What every command on an existing thread takes from the request: the caller, the
/// request's ids and the version `If-Match` expects.
pub struct Caller {
    /// Who asks.
    who: Principal,
    /// Request and correlation ids.
    ids: RequestIds,
    /// `If-Match`.
    expected: Option<u64>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let AuthUser(who) = AuthUser::from_request_parts(parts, state).await?;
        let Ok(ids) = RequestIds::from_request_parts(parts, state).await;
        let expected = if_match(&parts.headers)?;
        Ok(Self { who, ids, expected })
    }
}

impl Caller {
    /// Runs `action` on thread `id` (already parsed).
    async fn run(&self, state: &AppState, id: &str, action: Action) -> Result<Committed, Problem> {
        let who = &self.who;
        let tenant = tenant_of(state, who, id).await?;
        let command = ThreadCommand {
            thread_id: id.to_owned(),
            actor: actor(who),
            at: state.clock.now(),
            action,
        };
        let metadata = self.ids.metadata(&tenant, who.user_id(), who.actor_kind());
        Ok(state
            .ctx
            .chat
            .threads
            .execute(id, self.expected, command, &metadata)
            .await?)
    }

    /// Runs `action` on the thread named by the path's `raw` id; 200 with its new version.
    async fn change(
        &self,
        state: &AppState,
        raw: &str,
        action: Action,
    ) -> Result<Response, Problem> {
        let id = thread_id(raw)?;
        Ok(changed(&self.run(state, &id, action).await?))
    }
}

fn changed(c: &Committed) -> Response {
    accepted(StatusCode::OK, THREAD, &c.aggregate_id, c.version)
}

/// 201 with the thread, its version and the id of what the command created in it.
pub(crate) fn created_item(c: &Committed, field: &'static str, item_id: &str) -> Response {
    crate::http::created_item(&c.aggregate_id, c.version, field, item_id)
}

/// Body of `POST /v1/chat/threads`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenThread {
    /// Optional client-chosen id (a UUID), so a blind retry cannot open two threads.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// The tenant (only a super admin names it; others open in their own).
    #[serde(default)]
    pub tenant_id: Option<Uuid>,
    /// `web` (default). WhatsApp and SMS threads are opened by the platform.
    #[serde(default)]
    pub channel: Option<Channel>,
    /// The phone user the thread is with (staff only).
    #[serde(default)]
    pub customer_id: Option<String>,
    /// A subject line.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub subject: Option<String>,
    /// Initial tags.
    #[serde(default)]
    #[schema(max_items = 20)]
    pub tags: Vec<String>,
    /// Whether the bot answers (default true).
    #[serde(default)]
    pub bot_enabled: Option<bool>,
}

/// Open a thread.
///
/// A phone user opens a thread for themselves in their tenant; staff open one in their own
/// tenant, optionally for a phone user (`customer_id`); a super admin names `tenant_id`. Only
/// `web` threads are opened here (WhatsApp and SMS threads are opened by the platform: 422
/// `channel_not_allowed`). When `id` is taken: 409 `already_exists` to those who may see that
/// thread, 404 to anyone else (an id reveals nothing). Event: Opened. Answer 201 with
/// `Location: /v1/chat/threads/{id}`.
#[utoipa::path(
    post,
    path = "/v1/chat/threads",
    request_body = OpenThread,
    responses(
        (status = 201, description = "Created: the thread and its version (also in `ETag`, `Location`).", body = crate::http::Accepted),
        (status = 410, response = events::http::openapi::ProblemAnswer),
        (status = 404, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn open(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    keyed: Option<Extension<KeyedRequest>>,
    Json(body): Json<OpenThread>,
) -> Result<Response, Problem> {
    let tenant = match (&who, body.tenant_id) {
        (Principal::Phone { tenant_id, .. }, None) => tenant_id.clone(),
        (Principal::Admin { tenant_id, .. }, asked) if !who.is_super_admin() => {
            match (tenant_id, asked) {
                (Some(home), None) => home.clone(),
                (Some(home), Some(t)) if t.to_string() == *home => home.clone(),
                _ => {
                    return Err(Problem::forbidden(
                        "Staff open threads in their own tenant only.",
                    ))
                }
            }
        }
        (Principal::Phone { .. }, Some(_)) => {
            return Err(Problem::forbidden(
                "A customer opens threads in their own tenant only.",
            ))
        }
        (_, Some(t)) => {
            let t = t.to_string();
            crate::http::named_tenant(&state, &t).await?;
            t
        }
        (_, None) => {
            return Err(Problem::unprocessable(
                "tenant_required",
                "Name the tenant (tenant_id) the thread belongs to.",
            ))
        }
    };
    let id = crate::http::client_id(body.id)?
        .or_else(|| keyed.as_deref().map(KeyedRequest::derived_id))
        .unwrap_or_else(Uuid::now_v7)
        .to_string();
    let command = ThreadCommand {
        thread_id: id.clone(),
        actor: actor(&who),
        at: state.clock.now(),
        action: Action::Open {
            tenant_id: tenant.clone(),
            channel: body.channel.unwrap_or(Channel::Web),
            customer: body.customer_id.map(|id| Party {
                id,
                kind: PartyKind::Phone,
            }),
            subject: body.subject,
            tags: body.tags,
            bot_enabled: body.bot_enabled,
        },
    };
    let metadata = ids.metadata(&tenant, who.user_id(), who.actor_kind());
    // No expected version: the aggregate tells a taken id (409 to those who may see the
    // thread, 404 to others) and the store's key settles a race between two opens.
    let c = state
        .ctx
        .chat
        .threads
        .execute(&id, None, command, &metadata)
        .await?;
    if c.appended == 0 {
        return Err(ThreadError::AlreadyExists.into_problem());
    }
    Ok(accepted(
        StatusCode::CREATED,
        THREAD,
        &c.aggregate_id,
        c.version,
    ))
}

/// Body of a message.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// The client's id for this message: a retry with the same id appends nothing and
    /// answers the same message id.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100)]
    pub client_message_id: Option<String>,
    /// The text, ≤ 4,096 characters (may be empty with an attachment).
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub text: String,
    /// A file already uploaded.
    #[serde(default)]
    pub attachment: Option<Attachment>,
}

/// What sending a message answers.
// Documents the body `crate::http::created_item` makes.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct MessageCreated {
    /// The thread.
    id: String,
    /// The thread's version after the command (also in `ETag`).
    version: u64,
    /// The message.
    message_id: String,
}

/// Send a message.
///
/// The thread's participants and the tenant's staff may write. A retry with the same
/// `client_message_id` (per author) appends nothing and answers the same `message_id`. A
/// message in a closed thread reopens it (events Reopened, MessageSent). 422 `message_too_long`
/// (> 4,096 characters), `empty_message`, `invalid_text` (control characters),
/// `invalid_attachment`, `invalid_client_message_id`; 404 when the caller may not see the
/// thread. An attachment must be a blob of the thread's tenant (`object_key` under
/// `tenants/{tenant_id}/`). The text is stored sealed for the thread's customer (or, in a
/// thread without one, for the staff author); once that person was erased, 410
/// `subject_erased` (docs/privacy.md).
#[utoipa::path(
    post,
    path = "/v1/chat/threads/{id}/messages",
    params(("id" = Uuid, Path, description = "The thread."), crate::http::IfMatch),
    request_body = SendMessage,
    responses(
        (status = 201, description = "Created: the thread, its new version and the message's id.", body = MessageCreated),
        (status = 410, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn send(
    State(state): State<AppState>,
    caller: Caller,
    keyed: Option<Extension<KeyedRequest>>,
    Path(id): Path<String>,
    Json(body): Json<SendMessage>,
) -> Result<Response, Problem> {
    let id = thread_id(&id)?;
    let message_id = item_id(
        &id,
        caller.who.user_id(),
        body.client_message_id.as_deref(),
        keyed.as_deref(),
    );
    let action = Action::Send {
        message_id: message_id.clone(),
        client_message_id: body.client_message_id,
        text: body.text,
        attachment: body.attachment,
    };
    let c = caller.run(&state, &id, action).await?;
    Ok(created_item(&c, "message_id", &message_id))
}

/// Body of an edit.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditMessage {
    /// The new text.
    #[schema(max_length = 4096)]
    pub text: String,
}

/// Edit a message.
///
/// Only the author, within 15 minutes of sending: 403 `not_author`, 422 `edit_window_closed`,
/// 422 `message_deleted`, 404 `message_not_found`. Event: MessageEdited.
#[utoipa::path(
    post,
    path = "/v1/chat/threads/{id}/messages/{message}/edit",
    params(("id" = Uuid, Path, description = "The thread."), ("message" = String, Path, description = "The message id."), crate::http::IfMatch),
    request_body = EditMessage,
    responses(
        (status = 200, description = "Accepted: the thread and its new version (also in `ETag`). Pass the version to query-api as `min_version` to read your write.", body = crate::http::Accepted),
        (status = 410, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn edit(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, message_id)): Path<(String, String)>,
    Json(body): Json<EditMessage>,
) -> Result<Response, Problem> {
    let action = Action::Edit {
        message_id,
        text: body.text,
    };
    caller.change(&state, &id, action).await
}

/// Delete a message.
///
/// The author or the tenant's staff (a customer cannot delete an agent's message: 403
/// `not_author`). Deleting twice appends nothing. Event: MessageDeleted (read models drop the
/// text and attachment).
#[utoipa::path(
    post,
    path = "/v1/chat/threads/{id}/messages/{message}/delete",
    params(("id" = Uuid, Path, description = "The thread."), ("message" = String, Path, description = "The message id."), crate::http::IfMatch),
    responses(
        (status = 200, description = "Accepted: the thread and its new version (also in `ETag`). Pass the version to query-api as `min_version` to read your write.", body = crate::http::Accepted),
        (status = 400, response = events::http::openapi::ProblemAnswer),
        (status = 413, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, message_id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let action = Action::Delete { message_id };
    caller.change(&state, &id, action).await
}

/// Body of a read receipt.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    /// The number of the last message read.
    #[schema(minimum = 0)]
    pub number: u64,
}

/// Read receipt.
///
/// The caller has read every message up to `number`. A lower number than already recorded
/// appends nothing; a number the thread has no message for: 422 `unknown_message_number`.
/// Event: Read.
#[utoipa::path(
    post,
    path = "/v1/chat/threads/{id}/read",
    params(("id" = Uuid, Path, description = "The thread."), crate::http::IfMatch),
    request_body = MarkRead,
    responses(
        (status = 200, description = "Accepted: the thread and its new version (also in `ETag`). Pass the version to query-api as `min_version` to read your write.", body = crate::http::Accepted)
    ),
    security(("bearer" = []))
)]
async fn mark_read(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<MarkRead>,
) -> Result<Response, Problem> {
    let action = Action::MarkRead {
        number: body.number,
    };
    caller.change(&state, &id, action).await
}

/// Body of an assignment (`null` or absent clears).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Assign {
    /// The agent.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// The department.
    #[serde(default)]
    pub department: Option<String>,
}

/// Assign.
///
/// Staff only. `agent_id` must be staff of the tenant (422 `unknown_agent`) who can take
/// conversations now — active, a tenant admin or an agent (422 `agent_unavailable`);
/// `department` one of its departments now, as the tenant's own events say (422
/// `unknown_department`); null clears. Event: Assigned. Ids with control characters are refused
/// with the same 422 code before any look-up.
#[utoipa::path(
    post,
    path = "/v1/chat/threads/{id}/assign",
    params(("id" = Uuid, Path, description = "The thread."), crate::http::IfMatch),
    request_body = Assign,
    responses(
        (status = 200, description = "Accepted: the thread and its new version (also in `ETag`). Pass the version to query-api as `min_version` to read your write.", body = crate::http::Accepted)
    ),
    security(("bearer" = []))
)]
async fn assign(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<Assign>,
) -> Result<Response, Problem> {
    let action = Action::Assign {
        agent_id: body.agent_id,
        department: body.department,
    };
    caller.change(&state, &id, action).await
}

/// Body of a release (the platform's reassignment worker; exactly one of the two).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    /// The agent who can no longer take conversations.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// The department that was removed.
    #[serde(default)]
    pub department: Option<String>,
}

/// Release (platform).
///
/// Platform service tokens only (the projector's reassignment worker; 403 otherwise). Takes an
/// open thread from an agent who can no longer take conversations (`{"agent_id"}`: the thread
/// stays in its department's queue) or from a removed department (`{"department"}`: it keeps
/// its agent). Appends `Assigned` with `reason` (`agent_unavailable`, `department_removed`)
/// only when the thread is open and still theirs; otherwise nothing (200, same version). 422
/// `invalid_release` unless exactly one is named.
#[utoipa::path(
    post,
    path = "/v1/chat/threads/{id}/release",
    params(("id" = Uuid, Path, description = "The thread."), crate::http::IfMatch),
    request_body = ReleaseBody,
    responses(
        (status = 200, description = "Accepted: the thread and its new version (also in `ETag`). Pass the version to query-api as `min_version` to read your write.", body = crate::http::Accepted)
    ),
    security(("bearer" = []))
)]
async fn release(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<ReleaseBody>,
) -> Result<Response, Problem> {
    let what = match (body.agent_id, body.department) {
        (Some(agent), None) => Release::Agent(agent),
        (None, Some(department)) => Release::Department(department),
        _ => {
            return Err(Problem::unprocessable(
                "invalid_release",
                "Name exactly one of agent_id and department.",
            ))
        }
    };
    caller.change(&state, &id, Action::Release { what }).await
}

/// Body of a bot switch.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchBot {
    /// Whether the bot answers.
    pub enabled: bool,
}

/// Switch the bot.
///
/// Staff only. Off means a human has taken over. Event: BotSwitched (none when unchanged).
#[utoipa::path(
    post,
    path = "/v1/chat/threads/{id}/bot",
    params(("id" = Uuid, Path, description = "The thread."), crate::http::IfMatch),
    request_body = SwitchBot,
    responses(
        (status = 200, description = "Accepted: the thread and its new version (also in `ETag`). Pass the version to query-api as `min_version` to read your write.", body = crate::http::Accepted)
    ),
    security(("bearer" = []))
)]
async fn switch_bot(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<SwitchBot>,
) -> Result<Response, Problem> {
    let action = Action::SwitchBot {
        enabled: body.enabled,
    };
    caller.change(&state, &id, action).await
}

/// Close.
///
/// Participants or staff. Closing a closed thread appends nothing. Event: Closed.
#[utoipa::path(
    post,
    path = "/v1/chat/threads/{id}/close",
    params(("id" = Uuid, Path, description = "The thread."), crate::http::IfMatch),
    responses(
        (status = 200, description = "Accepted: the thread and its new version (also in `ETag`). Pass the version to query-api as `min_version` to read your write.", body = crate::http::Accepted),
        (status = 400, response = events::http::openapi::ProblemAnswer),
        (status = 413, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn close(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    caller.change(&state, &id, Action::Close).await
}

/// Reopen.
///
/// Participants or staff. Reopening an open thread appends nothing. Event: Reopened.
#[utoipa::path(
    post,
    path = "/v1/chat/threads/{id}/reopen",
    params(("id" = Uuid, Path, description = "The thread."), crate::http::IfMatch),
    responses(
        (status = 200, description = "Accepted: the thread and its new version (also in `ETag`). Pass the version to query-api as `min_version` to read your write.", body = crate::http::Accepted),
        (status = 400, response = events::http::openapi::ProblemAnswer),
        (status = 413, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn reopen(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    caller.change(&state, &id, Action::Reopen).await
}

/// Body of a tag change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTags {
    /// The whole new set.
    #[schema(max_items = 20)]
    pub tags: Vec<String>,
}

/// Set tags.
///
/// Staff only. The whole set; lower-cased, de-duplicated; at most 20 of 1–40 characters (422
/// `invalid_tags`). Event: Tagged.
#[utoipa::path(
    post,
    path = "/v1/chat/threads/{id}/tags",
    params(("id" = Uuid, Path, description = "The thread."), crate::http::IfMatch),
    request_body = SetTags,
    responses(
        (status = 200, description = "Accepted: the thread and its new version (also in `ETag`). Pass the version to query-api as `min_version` to read your write.", body = crate::http::Accepted)
    ),
    security(("bearer" = []))
)]
async fn set_tags(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<SetTags>,
) -> Result<Response, Problem> {
    let action = Action::SetTags { tags: body.tags };
    caller.change(&state, &id, action).await
}

/// Body naming a participant.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddParticipant {
    /// The user id.
    pub user_id: String,
    /// `phone` (a chatbot user) or `agent` (staff).
    pub kind: PartyKind,
}

/// Add a participant.
///
/// Staff only. A phone user or an agent of the tenant (422 `invalid_participant` otherwise).
/// Adding twice appends nothing. Event: ParticipantAdded. Ids with control characters are
/// refused with the same 422 code before any look-up.
#[utoipa::path(
    post,
    path = "/v1/chat/threads/{id}/participants",
    params(("id" = Uuid, Path, description = "The thread."), crate::http::IfMatch),
    request_body = AddParticipant,
    responses(
        (status = 200, description = "Accepted: the thread and its new version (also in `ETag`). Pass the version to query-api as `min_version` to read your write.", body = crate::http::Accepted)
    ),
    security(("bearer" = []))
)]
async fn add_participant(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<AddParticipant>,
) -> Result<Response, Problem> {
    let action = Action::AddParticipant {
        participant: Party {
            id: body.user_id,
            kind: body.kind,
        },
    };
    caller.change(&state, &id, action).await
}

/// Body of a scheduled message.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleMessage {
    /// The client's id for it (de-duplicates retries like a message's).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100)]
    pub client_message_id: Option<String>,
    /// The text.
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub text: String,
    /// A file already uploaded.
    #[serde(default)]
    pub attachment: Option<Attachment>,
    /// When to deliver it (RFC 3339), within 90 days.
    pub due_at: DateTime<Utc>,
}

/// What scheduling a message answers.
// Documents the body `crate::http::created_item` makes.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ScheduledCreated {
    /// The thread.
    id: String,
    /// The thread's version after the command (also in `ETag`).
    version: u64,
    /// The scheduled message.
    scheduled_id: String,
}

/// Schedule a message.
///
/// Staff only. `due_at` in the future (422 `due_in_past`) and at most 90 days ahead (422
/// `due_too_far`). The scheduler delivers it at the due time as a message of its author. Event:
/// MessageScheduled.
#[utoipa::path(
    post,
    path = "/v1/chat/threads/{id}/scheduled",
    params(("id" = Uuid, Path, description = "The thread."), crate::http::IfMatch),
    request_body = ScheduleMessage,
    responses(
        (status = 201, description = "Created: the thread, its new version and the scheduled message's id.", body = ScheduledCreated),
        (status = 410, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn schedule(
    State(state): State<AppState>,
    caller: Caller,
    keyed: Option<Extension<KeyedRequest>>,
    Path(id): Path<String>,
    Json(body): Json<ScheduleMessage>,
) -> Result<Response, Problem> {
    let id = thread_id(&id)?;
    if body
        .client_message_id
        .as_deref()
        // As a message's client id: taken as sent, so ` a ` and `a` are not one id here and
        // two there.
        .is_some_and(|c| {
            super::values::label(c, super::values::MAX_CLIENT_ID_CHARS).as_deref() != Some(c)
        })
    {
        return Err(ThreadError::InvalidClientMessageId.into_problem());
    }
    let scheduled_id = item_id(
        &id,
        caller.who.user_id(),
        body.client_message_id
            .as_deref()
            .map(|c| format!("scheduled\u{0}{c}"))
            .as_deref(),
        keyed.as_deref(),
    );
    let action = Action::Schedule {
        scheduled_id: scheduled_id.clone(),
        text: body.text,
        attachment: body.attachment,
        due_at: body.due_at,
    };
    let c = caller.run(&state, &id, action).await?;
    Ok(created_item(&c, "scheduled_id", &scheduled_id))
}

/// Body of a reschedule.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reschedule {
    /// The new due time (RFC 3339).
    pub due_at: DateTime<Utc>,
}

/// Reschedule.
///
/// Staff only; pending messages, or failed ones (which become pending again, to be tried at the
/// new time); others: 422 `schedule_not_pending`; same due rules. Event: MessageRescheduled.
#[utoipa::path(
    post,
    path = "/v1/chat/threads/{id}/scheduled/{scheduled}/reschedule",
    params(("id" = Uuid, Path, description = "The thread."), ("scheduled" = String, Path, description = "The scheduled message id."), crate::http::IfMatch),
    request_body = Reschedule,
    responses(
        (status = 200, description = "Accepted: the thread and its new version (also in `ETag`). Pass the version to query-api as `min_version` to read your write.", body = crate::http::Accepted),
        (status = 410, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn reschedule(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, scheduled_id)): Path<(String, String)>,
    Json(body): Json<Reschedule>,
) -> Result<Response, Problem> {
    let action = Action::Reschedule {
        scheduled_id,
        due_at: body.due_at,
    };
    caller.change(&state, &id, action).await
}

/// Cancel a scheduled message.
///
/// Staff only. A cancelled message is never delivered; a pending or failed one can be
/// cancelled; cancelling twice appends nothing; after delivery: 422 `schedule_not_pending`.
/// Event: ScheduleCancelled.
#[utoipa::path(
    post,
    path = "/v1/chat/threads/{id}/scheduled/{scheduled}/cancel",
    params(("id" = Uuid, Path, description = "The thread."), ("scheduled" = String, Path, description = "The scheduled message id."), crate::http::IfMatch),
    responses(
        (status = 200, description = "Accepted: the thread and its new version (also in `ETag`). Pass the version to query-api as `min_version` to read your write.", body = crate::http::Accepted),
        (status = 400, response = events::http::openapi::ProblemAnswer),
        (status = 413, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn cancel_scheduled(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, scheduled_id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let action = Action::CancelScheduled { scheduled_id };
    caller.change(&state, &id, action).await
}

/// Deliver a due scheduled message.
///
/// The scheduler's command (a platform service token; others: 403). Delivers once: again, after
/// a cancel or after it failed, appends nothing; before the due time: 409 `not_due`. Never in
/// the name of someone who can no longer write in the thread: when its author is deactivated
/// (or no longer the tenant's staff), it is recorded failed instead (ScheduleFailed
/// `author_unavailable`). Events: MessageSent with `scheduled_id`, or ScheduleFailed.
///
/// The scheduler's delivery of a due message. The delivered message's id is derived from
/// the scheduled message's, so every retry names the same message.
#[utoipa::path(
    post,
    path = "/v1/chat/threads/{id}/scheduled/{scheduled}/deliver",
    params(("id" = Uuid, Path, description = "The thread."), ("scheduled" = String, Path, description = "The scheduled message id."), crate::http::IfMatch),
    responses(
        (status = 200, description = "Accepted: the thread and its new version (also in `ETag`). Pass the version to query-api as `min_version` to read your write.", body = crate::http::Accepted),
        (status = 400, response = events::http::openapi::ProblemAnswer),
        (status = 413, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn deliver_scheduled(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, scheduled_id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let id = thread_id(&id)?;
    let message_id = item_id(&id, "scheduler", Some(&scheduled_id), None);
    let action = Action::DeliverScheduled {
        scheduled_id,
        message_id,
    };
    caller.change(&state, &id, action).await
}

/// Body of the scheduler's giving up on a delivery.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailScheduled {
    /// Why (the last failure), for people.
    pub reason: String,
}

/// Give up a scheduled message's delivery.
///
/// The scheduler's command (a platform service token; others: 403), after a delivery failed 8
/// times in a row (waiting 1 s, 2 s, 4 s … between tries): the message shows `failed` with
/// `failure_code` `delivery_failed` and the reason until staff reschedule or cancel it. A
/// message that is not pending appends nothing. Event: ScheduleFailed.
///
/// The scheduler gives up on a delivery that kept failing: the scheduled message shows
/// `failed` with the reason until staff reschedule or cancel it.
#[utoipa::path(
    post,
    path = "/v1/chat/threads/{id}/scheduled/{scheduled}/fail",
    params(("id" = Uuid, Path, description = "The thread."), ("scheduled" = String, Path, description = "The scheduled message id."), crate::http::IfMatch),
    request_body = FailScheduled,
    responses(
        (status = 200, description = "Accepted: the thread and its new version (also in `ETag`). Pass the version to query-api as `min_version` to read your write.", body = crate::http::Accepted)
    ),
    security(("bearer" = []))
)]
async fn fail_scheduled(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, scheduled_id)): Path<(String, String)>,
    Json(body): Json<FailScheduled>,
) -> Result<Response, Problem> {
    let action = Action::FailScheduled {
        scheduled_id,
        reason: body.reason,
    };
    caller.change(&state, &id, action).await
}

impl crate::http::error::DomainProblem for crate::chat::aggregate::ThreadError {
    fn problem(&self) -> Problem {
        use crate::chat::aggregate::ThreadError as E;
        let detail = self.to_string();
        let unprocessable = |code| Problem::unprocessable(code, detail.clone());
        match self {
            E::NotFound => Problem::not_found(detail),
            E::AlreadyExists => Problem::new(StatusCode::CONFLICT, "already_exists", detail),
            E::Forbidden(why) => Problem::forbidden(*why),
            E::ChannelNotAllowed => unprocessable("channel_not_allowed"),
            E::NotTheSendersThread => {
                Problem::new(StatusCode::CONFLICT, "not_the_senders_thread", detail)
            }
            E::InvalidSubject => unprocessable("invalid_subject"),
            E::InvalidTags => unprocessable("invalid_tags"),
            E::TextTooLong => unprocessable("message_too_long"),
            E::InvalidText => unprocessable("invalid_text"),
            E::EmptyMessage => unprocessable("empty_message"),
            E::InvalidAttachment => unprocessable("invalid_attachment"),
            E::InvalidClientMessageId => unprocessable("invalid_client_message_id"),
            E::UnknownCustomer => unprocessable("unknown_customer"),
            E::UnknownAgent => unprocessable("unknown_agent"),
            E::AgentUnavailable => unprocessable("agent_unavailable"),
            E::UnknownDepartment => unprocessable("unknown_department"),
            E::InvalidParticipant => unprocessable("invalid_participant"),
            E::MessageNotFound => Problem::new(StatusCode::NOT_FOUND, "message_not_found", detail),
            E::UnknownMessageNumber => unprocessable("unknown_message_number"),
            E::NotAuthor => Problem::new(StatusCode::FORBIDDEN, "not_author", detail),
            E::EditWindowClosed => unprocessable("edit_window_closed"),
            E::MessageDeleted => unprocessable("message_deleted"),
            E::DueInPast => unprocessable("due_in_past"),
            E::DueTooFar => unprocessable("due_too_far"),
            E::ScheduledNotFound => {
                Problem::new(StatusCode::NOT_FOUND, "scheduled_message_not_found", detail)
            }
            E::ScheduleNotPending => unprocessable("schedule_not_pending"),
            E::NotDue => Problem::new(StatusCode::CONFLICT, "not_due", detail),
            E::SubjectErased => Problem::new(StatusCode::GONE, "subject_erased", detail),
            E::Unavailable(cause) => Problem::unavailable(cause),
        }
    }
}
