//! WhatsApp's HTTP layer: sessions (`POST /v1/whatsapp/sessions`, `…/{id}/disconnect`),
//! outbound messages (`POST /v1/whatsapp/sessions/{id}/messages`), forwarded and changed
//! replies, the sender's commands (`…/conversations/{c}/messages/{m}/claim` and
//! `…/outcome`, service tokens only) and the provider's endpoint check (`GET
//! /api/webhooks/whatsapp`). Deliveries come through the webhook layer (`webhooks.rs`) and
//! are processed by the service (`service.rs`).
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use events::access::Principal;
use events::chat::{Channel, Party, PartyKind};
use events::http::{AuthUser, Json, Problem, RequestIds};
use events::whatsapp::MediaKind;
use events::whatsapp::{
    conversation_id, session_id, ConversationEvent, Credentials, Outbound, Transport,
    WHATSAPP_CONVERSATION, WHATSAPP_SESSION,
};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::aggregate::{
    ConversationCommand, ConversationError, Parties, ReplyChange, SendResult, SendState, Session,
    SessionCommand, SessionError,
};
use super::service::{self, check_template, history, upload_for_attempt};
use crate::chat::aggregate::ThreadError;
use crate::chat::services::Directory;
use crate::http::error::DomainProblem;
use crate::http::{accepted, administered_tenant, ForTenant};
use crate::identity::phone::PhoneNumber as E164;
use crate::webhooks::verify;
use crate::AppState;

/// The routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        // Deliveries are posted through the webhook layer (`super::webhooks`).
        .routes(routes!(handshake))
        .routes(routes!(connect))
        .routes(routes!(connect_bridge))
        .routes(routes!(disconnect))
        .routes(routes!(send))
        .routes(routes!(forward))
        .routes(routes!(change_reply))
        .routes(routes!(claim))
        .routes(routes!(outcome))
}

/// The schema of a boolean that is always `true` in its answer (it tells the answers apart).
fn always_true() -> utoipa::openapi::schema::Object {
    boolean_const(true)
}

/// The schema of a boolean that is always `false` in its answer.
fn always_false() -> utoipa::openapi::schema::Object {
    boolean_const(false)
}

fn boolean_const(value: bool) -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Boolean)
        .enum_values(Some([value]))
        .build()
}

impl DomainProblem for SessionError {
    fn problem(&self) -> Problem {
        let detail = self.to_string();
        match self {
            SessionError::Taken => Problem::new(StatusCode::CONFLICT, "number_taken", detail),
            SessionError::NotFound => Problem::not_found(detail),
        }
    }
}

impl DomainProblem for ConversationError {
    fn problem(&self) -> Problem {
        use ConversationError as E;
        let detail = self.to_string();
        match self {
            E::NotFound => Problem::not_found(detail),
            E::SessionDisconnected => Problem::unprocessable("session_disconnected", detail),
            E::OutsideWindow => Problem::unprocessable("outside_service_window", detail),
            E::InvalidMessage(_) => Problem::unprocessable("invalid_message", detail),
            E::MessageExists => Problem::new(StatusCode::CONFLICT, self.code(), detail),
            E::Unavailable(cause) => Problem::unavailable(cause),
            E::ContactErased => Problem::new(StatusCode::GONE, self.code(), detail),
        }
    }
}

/// A numeric provider id (phone number, business account), as the Graph API writes them.
fn provider_id(raw: &str, what: &'static str) -> Result<String, Problem> {
    let ok = !raw.is_empty() && raw.len() <= 32 && raw.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| raw.to_owned()).ok_or_else(|| {
        Problem::unprocessable(
            "invalid_provider_id",
            format!("{what} is a string of digits."),
        )
    })
}

fn secret(raw: &str, what: &'static str, max: usize) -> Result<String, Problem> {
    let ok = !raw.trim().is_empty() && raw.len() <= max && !raw.chars().any(char::is_control);
    ok.then(|| raw.to_owned()).ok_or_else(|| {
        Problem::unprocessable(
            "invalid_credentials",
            format!("{what} is required (at most {max} characters)."),
        )
    })
}

/// A session id from the path (an unknown one is simply not found).
fn session_path(raw: &str) -> Result<String, Problem> {
    Uuid::parse_str(raw)
        .map(|u| u.to_string())
        .map_err(|_| SessionError::NotFound.problem())
}

/// Body of `POST /v1/whatsapp/sessions`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectBody {
    /// The tenant (super admins name it).
    #[serde(default)]
    pub tenant_id: Option<Uuid>,
    /// The Cloud API phone number id.
    #[schema(pattern = r"^[0-9]{1,32}$")]
    pub phone_number_id: String,
    /// The WhatsApp Business Account id.
    #[serde(default)]
    #[schema(pattern = r"^[0-9]{1,32}$")]
    pub business_account_id: Option<String>,
    /// The access token.
    #[schema(min_length = 1, max_length = 2048)]
    pub access_token: String,
    /// The Meta app's secret.
    #[schema(min_length = 1, max_length = 256)]
    pub app_secret: String,
    /// The webhook verify token chosen for this number.
    #[schema(min_length = 1, max_length = 256)]
    pub verify_token: String,
}

/// Connect a WhatsApp number (Cloud API).
///
/// Connects a WhatsApp Business Cloud API number to the tenant. In order: the body (422
/// `invalid_provider_id`: `phone_number_id` and `business_account_id` are 1 to 32 digits; 422
/// `invalid_credentials`: `access_token` (at most 2,048 bytes), `app_secret` and `verify_token`
/// (at most 256 bytes each) not blank and without control characters); 409 `number_taken` when
/// another tenant has the number connected (before the provider is asked; the aggregate checks
/// again); then the credentials are checked with the provider: `GET
/// {WHATSAPP_API_URL}/{WHATSAPP_API_VERSION}/{phone_number_id}` with the token as bearer and
/// `appsecret_proof` (hex HMAC-SHA256 of the token keyed by the app secret), which proves
/// token, app secret and access to the number in one call. A refusal (a 4xx other than 429) is
/// 422 `credentials_rejected` (the provider's message in `detail`); no answer, a 429 or a 5xx
/// is 503 `provider_unavailable`; neither appends anything. The credentials are sealed (events
/// and read models hold only the sealed form; the verify token only as its hex SHA-256) and no
/// endpoint returns them. The session's id is a UUID v5 of the phone number id, so a number has
/// one session and one owner at a time. Connecting again by the same tenant replaces
/// credentials and verify token (how a token is rotated); after a disconnect any tenant may
/// connect the number, and its conversations start afresh. Meta is not configured by this call:
/// the app's webhook (callback `{BACKEND_URL}/api/webhooks/whatsapp`, field `messages`, the
/// verify token given here) is set in Meta's dashboard. Event: Connected (aggregate
/// `whatsapp_session`, transport `cloud`). Allowed: the tenant's admin (in their own tenant;
/// naming another `tenant_id`: 403), or a super admin naming `tenant_id` (422 `tenant_required`
/// without); agents, phone users and service tokens: 403. The caller is checked before the
/// body.
#[utoipa::path(
    post,
    path = "/v1/whatsapp/sessions",
    request_body = ConnectBody,
    responses(
        (status = 201, description = "Connected: the session and its new version (also in `ETag`). Pass the version to query-api's `GET /v1/whatsapp/sessions/{id}` as `min_version` to read your write.", body = crate::http::Accepted),
        (status = 404, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn connect(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Json(body): Json<ConnectBody>,
) -> Result<Response, Problem> {
    let tenant = administered_tenant(&state, &who, body.tenant_id).await?;
    let phone_number_id = provider_id(&body.phone_number_id, "phone_number_id")?;
    let business_account_id = body
        .business_account_id
        .as_deref()
        .map(|b| provider_id(b, "business_account_id"))
        .transpose()?;
    let credentials = Credentials {
        access_token: secret(&body.access_token, "access_token", 2048)?,
        app_secret: secret(&body.app_secret, "app_secret", 256)?,
    };
    let verify_token = secret(&body.verify_token, "verify_token", 256)?;
    let connect = service::CloudConnection {
        tenant,
        phone_number_id,
        business_account_id,
        credentials,
        verify_token,
    };
    let c = service::connect_cloud(&state, &who, &ids, connect).await?;
    Ok(accepted(
        StatusCode::CREATED,
        WHATSAPP_SESSION,
        &c.aggregate_id,
        c.version,
    ))
}

/// Body of `POST /v1/whatsapp/sessions/bridge`: a number served by the tenant's own bridge
/// worker (Baileys) instead of the Cloud API.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BridgeBody {
    /// The tenant (super admins name it).
    #[serde(default)]
    pub tenant_id: Option<Uuid>,
    /// The number, in E.164.
    pub phone_number: String,
    /// The secret the bridge signs its posts with (at least 32 characters).
    #[schema(min_length = 32, max_length = 256)]
    pub bridge_secret: String,
}

/// The phone number id of a bridge session: its number's digits, marked as a bridge's so it
/// never meets a Cloud API id.
pub fn bridge_number_id(digits: &str) -> String {
    format!("bridge:{digits}")
}

/// Connect a WhatsApp number served by a bridge worker.
///
/// Connects a number the tenant's own bridge worker (Baileys) serves instead of the Cloud API.
/// The number is in E.164 (`+` and 8 to 15 digits, not starting with 0; spaces, dots, dashes,
/// brackets and a `00` prefix are accepted and normalized; 422 `invalid_phone` otherwise);
/// `bridge_secret` has 32 to 256 bytes, is not blank and has no control characters (422
/// `invalid_credentials`). The session's phone number id is `bridge:{digits}` (its id a UUID v5
/// of that), its `display_phone_number` the digits, its transport `bridge`; the provider is not
/// asked, and the session has no verify token (no handshake). A number another tenant has
/// connected: 409 `number_taken`; connecting again by the same tenant replaces the secret. The
/// secret is sealed like Cloud API credentials and never returned. The worker signs its posts
/// to `POST /api/webhooks/whatsapp/bridge` with it, and takes the session's sends from the
/// JetStream subject `{WHATSAPP_BRIDGE_SUBJECT_PREFIX}.{session id}.send` (default prefix
/// `whatsapp.bridge`; `Nats-Msg-Id` is the message id). Event: Connected (aggregate
/// `whatsapp_session`, transport `bridge`). Allowed: the tenant's admin (in their own tenant;
/// naming another `tenant_id`: 403), or a super admin naming `tenant_id` (422 `tenant_required`
/// without); agents, phone users and service tokens: 403. The caller is checked before the
/// body.
#[utoipa::path(
    post,
    path = "/v1/whatsapp/sessions/bridge",
    request_body = BridgeBody,
    responses(
        (status = 201, description = "Connected: the session and its new version (also in `ETag`). Pass the version to query-api's `GET /v1/whatsapp/sessions/{id}` as `min_version` to read your write.", body = crate::http::Accepted),
        (status = 404, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn connect_bridge(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Json(body): Json<BridgeBody>,
) -> Result<Response, Problem> {
    let tenant = administered_tenant(&state, &who, body.tenant_id).await?;
    let number = E164::parse(&body.phone_number).ok_or_else(|| {
        Problem::unprocessable(
            "invalid_phone",
            "phone_number is in E.164 (+ and 8 to 15 digits).",
        )
    })?;
    let bridge_secret = secret(&body.bridge_secret, "bridge_secret", 256)?;
    if bridge_secret.len() < 32 {
        return Err(Problem::unprocessable(
            "invalid_credentials",
            "bridge_secret has at least 32 characters.",
        ));
    }
    let digits = number.as_str().trim_start_matches('+');
    let phone_number_id = bridge_number_id(digits);
    let id = session_id(&phone_number_id);
    let credentials = Credentials {
        access_token: String::new(),
        app_secret: bridge_secret,
    };
    let command = SessionCommand::Connect {
        tenant_id: tenant.clone(),
        transport: Transport::Bridge,
        phone_number_id,
        business_account_id: None,
        display_phone_number: Some(digits.to_owned()),
        verified_name: None,
        credentials: state
            .sealing
            .seal(&serde_json::to_string(&credentials).unwrap_or_default()),
        // A bridge needs no handshake: no verify token matches it.
        verify_token_sha256: String::new(),
        at: state.clock.now(),
    };
    let metadata = ids.metadata(&tenant, who.user_id(), who.actor_kind());
    let c = state
        .ctx
        .whatsapp
        .sessions
        .execute(&id, None, command, &metadata)
        .await?;
    Ok(accepted(
        StatusCode::CREATED,
        WHATSAPP_SESSION,
        &c.aggregate_id,
        c.version,
    ))
}

/// Disconnect a WhatsApp number.
///
/// Nothing is sent through the number any more: new sends answer 422 `session_disconnected`,
/// and a message queued earlier fails with that code when the sender claims it. Inbound
/// messages and statuses still land in the last owner's conversations (its app secret still
/// verifies deliveries naming the number), so none is lost; its verify token no longer passes
/// the handshake. The sealed credentials stay in the session's events. Disconnecting a
/// disconnected session appends nothing; another tenant's session, or an unknown id, answers
/// 404. Event: Disconnected (aggregate `whatsapp_session`). Allowed: the tenant's admin (in
/// their own tenant; naming another `tenant_id`: 403), or a super admin naming `tenant_id` (422
/// `tenant_required` without); agents, phone users and service tokens: 403. The caller is
/// checked before the session.
#[utoipa::path(
    post,
    path = "/v1/whatsapp/sessions/{id}/disconnect",
    params(("id" = Uuid, Path, description = "The session.")),
    request_body = ForTenant,
    responses(
        (status = 200, description = "Accepted: the session and its new version (also in `ETag`). Pass the version to query-api as `min_version` to read your write.", body = crate::http::Accepted),
        (status = 404, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn disconnect(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(raw): Path<String>,
    Json(body): Json<ForTenant>,
) -> Result<Response, Problem> {
    let tenant = administered_tenant(&state, &who, body.tenant_id).await?;
    let id = session_path(&raw)?;
    let command = SessionCommand::Disconnect {
        tenant_id: tenant.clone(),
        at: state.clock.now(),
    };
    let metadata = ids.metadata(&tenant, who.user_id(), who.actor_kind());
    let c = state
        .ctx
        .whatsapp
        .sessions
        .execute(&id, None, command, &metadata)
        .await?;
    Ok(accepted(
        StatusCode::OK,
        WHATSAPP_SESSION,
        &c.aggregate_id,
        c.version,
    ))
}

/// Body of `POST /v1/whatsapp/sessions/{id}/messages`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    /// The contact: their number in E.164 (`+16505551234`) or their WhatsApp id (digits).
    pub to: String,
    /// What to send.
    pub message: Outbound,
    /// The client's id for the message: a retry with the same id names the same message.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    pub client_message_id: Option<String>,
}

/// The answer of a send: the message is queued, not sent yet.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = WhatsAppQueued)]
pub struct SendAnswer {
    /// The message.
    #[schema(format = Uuid)]
    pub id: String,
    /// The conversation of tenant, session and contact.
    #[schema(format = Uuid)]
    pub conversation_id: String,
    /// The conversation's version after the command: pass it as `min_version` to query-api's
    /// `GET /v1/whatsapp/messages/{id}`.
    pub version: u64,
    /// Always `queued`.
    #[schema(inline)]
    pub status: QueuedStatus,
}

/// Where a message just sent stands.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueuedStatus {
    /// Queued for the sender.
    Queued,
}

/// The staff member's session: theirs to send through, or not found.
async fn staff_session(
    state: &AppState,
    who: &Principal,
    id: &str,
) -> Result<(Session, String), Problem> {
    let session = state.ctx.whatsapp.sessions.load(id).await?;
    let tenant = session
        .tenant_id()
        .filter(|t| who.is_super_admin() || who.is_staff_of(t))
        .map(str::to_owned)
        .ok_or_else(|| SessionError::NotFound.problem())?;
    Ok((session, tenant))
}

/// Send a WhatsApp message.
///
/// Queues a message to a contact; the projector's sender sends it afterwards. Refused at once,
/// in order: the session's tenant's staff only (agents included; super admins any; phone users
/// and service tokens 403), another tenant's or an unknown session 404; `to` not a number (422
/// `invalid_phone`); `client_message_id` not 1 to 128 characters (422
/// `invalid_client_message_id`); a `template` the session's business account has not approved
/// in that language (422 `template_unknown`) or given another number of body parameters than
/// its text has placeholders (422 `template_parameters_mismatch`), when the provider's template
/// list can be read (otherwise the provider decides when it is sent: error 132000); the same
/// `client_message_id` with another message, or colliding with an inbound message's id (409
/// `message_exists`); the session disconnected (422 `session_disconnected`); content outside
/// its limits (422 `invalid_message`, see `WhatsAppOutbound`); a free-form message (`text`,
/// `media`, `file`) outside the customer-service window (422 `outside_service_window`). The
/// window is open while now (when the message is queued) is less than 24 hours after the
/// contact's last message the platform received (by the provider's timestamp); a contact who
/// never wrote has none; a `template` may be sent at any time. Sent at most once: the sender records each attempt (SendAttempted) before calling the provider,
/// and never repeats an attempt whose outcome it did not learn: when its 2-minute lease runs
/// out the message fails with `outcome_unknown` (a later status from the provider still marks
/// it sent). Retryable refusals (no connection, 429, 5xx, throttling codes) are tried again
/// after 2 s, 4 s … 128 s (or the provider's `Retry-After`; at least 30 s after a 5xx, which
/// may hide a message the provider took: its status webhook settles it first), 8 attempts in
/// all, then fail with `attempts_exhausted`; any other refusal fails the message with the
/// provider's error code. A `bridge` session hands the message to its worker instead. Follow it
/// on query-api (`GET /v1/whatsapp/messages/{id}`) or live (`message.delivery`). The message is
/// tied to the contact's open thread, if any, so its delivery events reach that thread's
/// channel; it is not posted in the thread. Events: Started (first message of the
/// conversation), MessageQueued (aggregate `whatsapp_conversation`).
#[utoipa::path(
    post,
    path = "/v1/whatsapp/sessions/{id}/messages",
    params(("id" = Uuid, Path, description = "The session.")),
    request_body = SendBody,
    responses(
        (status = 202, description = "Queued, not sent yet.", body = SendAnswer)
    ),
    security(("bearer" = []))
)]
async fn send(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(raw): Path<String>,
    Json(body): Json<SendBody>,
) -> Result<Response, Problem> {
    if !matches!(who, Principal::Admin { .. }) {
        return Err(Problem::forbidden(
            "Messages are sent by the tenant's staff.",
        ));
    }
    let id = session_path(&raw)?;
    let (session, tenant) = staff_session(&state, &who, &id).await?;
    let (wa_id, message_id) = recipient_and_id(&id, &body.to, body.client_message_id.as_deref())?;
    check_template(&state, &session, &body.message).await?;
    let conversation = conversation_id(&tenant, &id, &wa_id);
    let thread_id = open_thread_of(&state, &conversation).await?;
    let command = ConversationCommand::Queue {
        parties: Parties {
            tenant_id: tenant.clone(),
            session_id: id.clone(),
            wa_id,
        },
        session_connected: session.connected(),
        message_id: message_id.clone(),
        author: Party {
            id: who.user_id().to_owned(),
            kind: PartyKind::Agent,
        },
        content: body.message,
        thread_id,
        record_refusal: false,
        at: state.clock.now(),
    };
    let metadata = ids.metadata(&tenant, who.user_id(), who.actor_kind());
    let c = state
        .ctx
        .whatsapp
        .conversations
        .execute(&conversation, None, command, &metadata)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SendAnswer {
            id: message_id,
            conversation_id: conversation,
            version: c.version,
            status: QueuedStatus::Queued,
        }),
    )
        .into_response())
}

/// The contact's WhatsApp id (`to` in E.164) and the message's id: derived from the
/// client's id for the message (so a retry names the same message), or a new one.
fn recipient_and_id(
    id: &str,
    to: &str,
    client_message_id: Option<&str>,
) -> Result<(String, String), Problem> {
    let digits = to.trim().trim_start_matches('+');
    let wa_id = E164::parse(&format!("+{digits}"))
        .map(|n| n.as_str().trim_start_matches('+').to_owned())
        .ok_or_else(|| {
            Problem::unprocessable(
                "invalid_phone",
                "`to` is a number in E.164 (+ and 8 to 15 digits).",
            )
        })?;
    let message_id = match client_message_id {
        Some(client) if client.is_empty() || client.len() > 128 => {
            return Err(Problem::unprocessable(
                "invalid_client_message_id",
                "A client message id has 1 to 128 characters.",
            ))
        }
        Some(client) => Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("whatsapp-out\0{id}\0{wa_id}\0{client}").as_bytes(),
        ),
        None => Uuid::now_v7(),
    }
    .to_string();
    Ok((wa_id, message_id))
}

/// The contact's thread, while it is open: a message sent shows there (a closed one stays
/// so).
async fn open_thread_of(state: &AppState, conversation: &str) -> Result<Option<String>, Problem> {
    let conversations = &state.ctx.whatsapp.conversations;
    let Some(t) = conversations
        .load(conversation)
        .await?
        .thread_id()
        .map(str::to_owned)
    else {
        return Ok(None);
    };
    let thread = state.ctx.chat.threads.load(&t).await?;
    Ok((!thread.is_closed()).then_some(t))
}

fn service_only(who: &Principal) -> Result<(), Problem> {
    match who {
        Principal::Service { .. } => Ok(()),
        _ => Err(Problem::forbidden(
            "Messages are sent by the platform's sender.",
        )),
    }
}

fn conversation_path(conversation: &str, message: &str) -> Result<(String, String), Problem> {
    let parse = |raw: &str| Uuid::parse_str(raw).map(|u| u.to_string());
    match (parse(conversation), parse(message)) {
        (Ok(c), Ok(m)) => Ok((c, m)),
        _ => Err(ConversationError::NotFound.problem()),
    }
}

impl ClaimAnswer {
    /// Nothing to send now; the message stands at `state`.
    fn wait(version: u64, state: Option<ClaimState>) -> Self {
        Self::Wait {
            send: false,
            version,
            state,
        }
    }
}

/// The sender's claim answer: send now, or nothing to do.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[schema(as = WhatsAppClaim)]
pub enum ClaimAnswer {
    /// An attempt began: send `request`, then report its outcome.
    Send {
        /// `true`.
        #[schema(schema_with = always_true)]
        send: bool,
        /// The conversation's version after the command.
        version: u64,
        /// The attempt to report the outcome of (1-based).
        #[schema(minimum = 1)]
        attempt: u32,
        /// `cloud`: post `request` to the Cloud API; `bridge`: hand it to the session's bridge
        /// worker.
        transport: Transport,
        /// The session.
        #[schema(format = Uuid)]
        session_id: String,
        /// The provider's phone number id (`bridge:{digits}` for a bridge session).
        #[schema(example = "106540352242922")]
        phone_number_id: String,
        /// The session's credentials, sealed (`v1.` + URL-safe base64): opened only with
        /// CREDENTIALS_KEY.
        credentials: String,
        /// The Cloud API body for `POST /{WHATSAPP_API_VERSION}/{phone_number_id}/messages`,
        /// carrying the platform's message id as `biz_opaque_callback_data` (echoed in the
        /// provider's statuses); a file names the provider's media id.
        #[schema(value_type = Object)]
        request: serde_json::Value,
    },
    /// Nothing to send now.
    Wait {
        /// `false`.
        #[schema(schema_with = always_false)]
        send: bool,
        /// The conversation's version after the command.
        version: u64,
        /// Where the message stands (`retrying`: an upload failed and was reported).
        #[schema(required = true, inline)]
        state: Option<ClaimState>,
    },
}

impl ClaimState {
    /// Where a message stands once its file's upload was refused: retrying, or failed when
    /// no retry can help.
    fn after_refused_upload(retrying: bool) -> Self {
        if retrying {
            Self::Retrying
        } else {
            Self::Failed
        }
    }
}

/// Where a message the sender need not send now stands.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClaimState {
    /// Waiting for its retry time.
    Queued,
    /// An attempt is under way.
    Attempting,
    /// An upload failed and was reported; tried again later.
    Retrying,
    /// Sent.
    Sent,
    /// Failed for good.
    Failed,
}

/// Claim a due WhatsApp message (sender).
///
/// The platform's command (the projector, with a platform service token; any other caller: 403
/// `forbidden`). The projector's sender asks whether to attempt the message now. A queued
/// message past its retry time appends SendAttempted (attempt n) before anything is sent, and
/// the answer carries what to send (`send: true`); the sender then reports with `POST
/// …/outcome`. Nothing to do (`send: false`, nothing appended): the message is sent or failed,
/// before its retry time, or an attempt is under way within its 2-minute lease. An attempt
/// whose lease ran out without an outcome is never repeated: the claim appends
/// WhatsAppMessageFailed with code `outcome_unknown` instead. A session disconnected (or
/// connected by another tenant) since the message was queued fails it here with
/// `session_disconnected` (`send: false`, `state: failed`). A `file` is uploaded to the
/// provider here, before the answer, and `request` names the provider's media id; a failed
/// upload is reported at once (SendAttemptFailed when retryable, else WhatsAppMessageFailed:
/// `credentials_unreadable`, `file_missing`, `media_upload_refused`, `unsupported_on_bridge`)
/// and answers `send: false` with `state: retrying` (`failed` when it was not retryable). 404
/// for an unknown conversation or message.
///
/// The sender's claim of a due message: whether to send it now, and what to send.
#[utoipa::path(
    post,
    path = "/v1/whatsapp/conversations/{conversation}/messages/{message}/claim",
    params(("conversation" = Uuid, Path, description = "The conversation (anything else than a UUID: 404)."), ("message" = Uuid, Path, description = "The outbound message (anything else than a UUID: 404).")),
    responses(
        (status = 200, description = "Send now, or nothing to do.", body = ClaimAnswer),
        (status = 400, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn claim(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path((conversation, message)): Path<(String, String)>,
) -> Result<Response, Problem> {
    service_only(&who)?;
    let (conversation, message) = conversation_path(&conversation, &message)?;
    let current = state.ctx.whatsapp.conversations.load(&conversation).await?;
    let tenant = current
        .tenant_id()
        .map(str::to_owned)
        .ok_or_else(|| ConversationError::NotFound.problem())?;
    let metadata = ids.metadata(&tenant, who.user_id(), who.actor_kind());
    let at = state.clock.now();
    let sessions = &state.ctx.whatsapp.sessions;
    let session = sessions.load(current.session_id()).await?;
    // Disconnected, or connected since by another tenant: not this conversation's to use.
    let usable = session.connected() && session.tenant_id() == Some(tenant.as_str());
    // A file of the platform's store is uploaded to the provider before the attempt is
    // recorded (an upload sends nothing; repeating it is harmless), so the attempt's lease
    // covers only the send itself. The request names the provider's media id.
    let upload = match usable && current.due(&message, at) {
        true => upload_for_attempt(&state, &current, &session, &message).await,
        false => None,
    };
    // The lease begins now, after the upload. (A message that stopped being due meanwhile
    // is not attempted; one that became due is attempted without its file and reported
    // below for a retry.)
    let at = state.clock.now();
    let message_id = message.clone();
    let claim = ConversationCommand::Claim { message_id, at };
    let (c, events) = state
        .ctx
        .whatsapp
        .conversations
        .execute_with_events(&conversation, None, claim, &metadata)
        .await?;
    let attempt = events.iter().find_map(|e| match e {
        ConversationEvent::SendAttempted { attempt, .. } => Some(*attempt),
        _ => None,
    });
    let Some(attempt) = attempt else {
        let stands = where_it_stands(&state, &conversation, &message).await?;
        return Ok(Json(ClaimAnswer::wait(c.version, stands)).into_response());
    };
    let request = service::provider_request(&state, &current, &message, usable, upload).await?;
    let request = match request {
        Ok(request) => request,
        Err(result) => {
            let report = Refused {
                conversation: &conversation,
                message,
                attempt,
                at,
            };
            let answer = report.record(&state, result, &metadata).await?;
            return Ok(Json(answer).into_response());
        }
    };
    Ok(Json(ClaimAnswer::Send {
        send: true,
        version: c.version,
        attempt,
        transport: session.transport(),
        session_id: current.session_id().to_owned(),
        phone_number_id: session.phone_number_id().to_owned(),
        credentials: session.credentials().to_owned(),
        request,
    })
    .into_response())
}

/// An attempt just claimed that cannot be sent, reported as refused at once.
struct Refused<'a> {
    conversation: &'a str,
    message: String,
    attempt: u32,
    at: chrono::DateTime<chrono::Utc>,
}

impl Refused<'_> {
    /// Records the refusal; the sender is told where the message stands.
    async fn record(
        self,
        state: &AppState,
        result: SendResult,
        metadata: &events::Metadata,
    ) -> Result<ClaimAnswer, Problem> {
        let retrying = matches!(
            result,
            SendResult::Refused {
                retryable: true,
                ..
            }
        );
        let report = ConversationCommand::Report {
            message_id: self.message,
            attempt: self.attempt,
            result,
            at: self.at,
        };
        let c = state
            .ctx
            .whatsapp
            .conversations
            .execute(self.conversation, None, report, metadata)
            .await?;
        let state_now = ClaimState::after_refused_upload(retrying);
        Ok(ClaimAnswer::wait(c.version, Some(state_now)))
    }
}

/// Where a reply the sender need not send now stands, read again after the claim.
async fn where_it_stands(
    state: &AppState,
    conversation: &str,
    message: &str,
) -> Result<Option<ClaimState>, Problem> {
    let now = state
        .ctx
        .whatsapp
        .conversations
        .load(conversation)
        .await?
        .with_message(message, &history(state))
        .await
        .map_err(|e| e.problem())?;
    Ok(now.outgoing(message).map(|o| send_state(o.state)))
}

fn send_state(s: SendState) -> ClaimState {
    match s {
        SendState::Queued => ClaimState::Queued,
        SendState::Attempting => ClaimState::Attempting,
        SendState::Sent => ClaimState::Sent,
        SendState::Failed => ClaimState::Failed,
    }
}

/// Body of the sender's report.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, tag = "result", rename_all = "snake_case")]
pub enum OutcomeBody {
    /// The provider accepted it.
    #[schema(title = "accepted")]
    Accepted {
        /// Which attempt.
        attempt: u32,
        /// The provider's message id.
        #[schema(example = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA")]
        wamid: String,
    },
    /// The provider refused it, or could not be reached.
    #[schema(title = "refused")]
    Refused {
        /// Which attempt.
        attempt: u32,
        /// The provider's error code or HTTP status.
        #[serde(default)]
        #[schema(example = "131026")]
        code: Option<String>,
        /// Why, for the agent.
        reason: String,
        /// Whether a retry may succeed.
        retryable: bool,
        /// The provider's `Retry-After`, in seconds (capped at 3,600).
        #[serde(default)]
        retry_after_secs: Option<u32>,
    },
}

/// Report a send attempt's outcome (sender).
///
/// The platform's command (the projector, with a platform service token; any other caller: 403
/// `forbidden`). Records what attempt `attempt` came to. `accepted`: MessageSent with the
/// provider's `wamid` (also when reported late, after the message failed as `outcome_unknown`:
/// the provider's word wins). `refused` with `retryable` and fewer than 8 attempts:
/// SendAttemptFailed, tried again after 2 s, 4 s, 8 s … (at most 5 min) or `retry_after_secs`
/// (at most 3,600) when longer; otherwise WhatsAppMessageFailed with `code` (`refused` when
/// none; `attempts_exhausted` for a retryable refusal of the 8th attempt). An outcome for an
/// attempt other than the latest, for a message already sent, or a refusal once the attempt is
/// no longer under way appends nothing. `wamid`, `code` and `reason` are cut at 500 characters.
/// 404 for an unknown conversation or message.
#[utoipa::path(
    post,
    path = "/v1/whatsapp/conversations/{conversation}/messages/{message}/outcome",
    params(("conversation" = Uuid, Path, description = "The conversation (anything else than a UUID: 404)."), ("message" = Uuid, Path, description = "The outbound message (anything else than a UUID: 404).")),
    request_body = OutcomeBody,
    responses(
        (status = 200, description = "Accepted: `id` is the conversation and `version` its new version (also in `ETag`).", body = crate::http::Accepted)
    ),
    security(("bearer" = []))
)]
async fn outcome(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path((conversation, message)): Path<(String, String)>,
    Json(body): Json<OutcomeBody>,
) -> Result<Response, Problem> {
    service_only(&who)?;
    let (conversation, message) = conversation_path(&conversation, &message)?;
    let tenant = state
        .ctx
        .whatsapp
        .conversations
        .load(&conversation)
        .await?
        .tenant_id()
        .map(str::to_owned)
        .ok_or_else(|| ConversationError::NotFound.problem())?;
    let clip = |s: String| s.chars().take(500).collect::<String>();
    let (attempt, result) = match body {
        OutcomeBody::Accepted { attempt, wamid } => {
            (attempt, SendResult::Accepted { wamid: clip(wamid) })
        }
        OutcomeBody::Refused {
            attempt,
            code,
            reason,
            retryable,
            retry_after_secs,
        } => (
            attempt,
            SendResult::Refused {
                code: code.map(clip),
                reason: clip(reason),
                retryable,
                retry_after: retry_after_secs
                    .map(|s| chrono::Duration::seconds(s.min(3600).into())),
            },
        ),
    };
    let command = ConversationCommand::Report {
        message_id: message,
        attempt,
        result,
        at: state.clock.now(),
    };
    let metadata = ids.metadata(&tenant, who.user_id(), who.actor_kind());
    let c = state
        .ctx
        .whatsapp
        .conversations
        .execute(&conversation, None, command, &metadata)
        .await?;
    Ok(accepted(
        StatusCode::OK,
        WHATSAPP_CONVERSATION,
        &c.aggregate_id,
        c.version,
    ))
}

/// Query of Meta's verification request.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Handshake {
    /// Always `subscribe` (400 `invalid_mode` otherwise).
    #[serde(rename = "hub.mode", default)]
    #[param(required = true, pattern = "^subscribe$", example = "subscribe")]
    pub mode: Option<String>,
    /// The verify token configured at Meta: the platform's, or one given when connecting a
    /// session (403 `forbidden` when missing or matching none).
    #[serde(rename = "hub.verify_token", default)]
    #[param(required = true, min_length = 1)]
    pub verify_token: Option<String>,
    /// What to echo as the body (400 `invalid_challenge` when missing or malformed).
    #[serde(rename = "hub.challenge", default)]
    #[param(
        required = true,
        pattern = "^[A-Za-z0-9_-]{1,128}$",
        example = "1158201444"
    )]
    pub challenge: Option<String>,
}

/// WhatsApp webhook verification (handshake).
///
/// Meta checks the callback URL by asking it to echo `hub.challenge`. In order: `hub.challenge`
/// missing, empty, over 128 characters or not made of letters, digits, `-` and `_`: 400
/// `invalid_challenge`; `hub.mode` other than `subscribe`: 400 `invalid_mode`;
/// `hub.verify_token` equal to WHATSAPP_VERIFY_TOKEN (constant-time comparison) or to the
/// verify token of a connected session (compared by SHA-256 with the sessions' Connected events
/// in the event store, so a number passes as soon as it is connected): 200 with the challenge;
/// anything else (no token, or one matching nothing): 403 `forbidden`. The request names no
/// number, so any connected session's token passes. Allowed: anyone (no bearer token).
///
/// `GET /api/webhooks/whatsapp`: Meta checks the endpoint by asking it to echo a challenge
/// with a verify token it was given: the platform's, or a connected session's.
#[utoipa::path(
    get,
    path = "/api/webhooks/whatsapp",
    params(Handshake),
    responses(
        (status = 200, description = "The challenge, echoed.", body = String, content_type = "text/plain", example = "1158201444"),
        (status = 403, response = events::http::openapi::ProblemAnswer)
    )
)]
async fn handshake(
    State(state): State<AppState>,
    events::http::Query(q): events::http::Query<Handshake>,
) -> Result<Response, Problem> {
    let refused = || Problem::forbidden("The verify token matches no WhatsApp session.");
    let challenge = q
        .challenge
        .filter(|c| {
            !c.is_empty()
                && c.len() <= 128
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .ok_or_else(|| {
            Problem::bad_request(
                "invalid_challenge",
                "hub.challenge is missing or malformed.",
            )
        })?;
    if q.mode.as_deref() != Some("subscribe") {
        return Err(Problem::bad_request(
            "invalid_mode",
            "hub.mode is `subscribe`.",
        ));
    }
    let token = q
        .verify_token
        .filter(|t| !t.is_empty())
        .ok_or_else(refused)?;
    let platform = state.ctx.whatsapp.settings.verify_token.as_deref();
    let matches_platform =
        platform.is_some_and(|p| verify::secret_header(Some(&token), &[p.to_owned()]).is_ok());
    let matches_session = matches_platform || service::live_verify_token(&state, &token).await?;
    if !matches_session {
        return Err(refused());
    }
    Ok(([(header::CONTENT_TYPE, "text/plain")], challenge).into_response())
}

/// Body of the outbox's forward of a thread reply.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardBody {
    /// The reply's text.
    pub text: String,
    /// The file it carries, if any.
    #[serde(default)]
    pub attachment: Option<events::chat::Attachment>,
}

/// The answer of a forward: forwarded, or not WhatsApp's to send.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[schema(as = WhatsAppForwardAnswer)]
pub enum ForwardAnswer {
    /// Forwarded: queued in the conversation, or recorded there as failed.
    Forwarded {
        /// `true`.
        #[schema(schema_with = always_true)]
        forwarded: bool,
        /// The WhatsApp message.
        #[schema(format = Uuid)]
        id: String,
        /// Its conversation.
        #[schema(format = Uuid)]
        conversation_id: String,
        /// The conversation's version after the command.
        version: u64,
    },
    /// Not WhatsApp's to send: nothing appended.
    NotForwarded {
        /// `false`.
        #[schema(schema_with = always_false)]
        forwarded: bool,
        /// Why.
        #[schema(example = "not a WhatsApp thread")]
        reason: String,
    },
}

impl ForwardAnswer {
    /// Queued (or recorded as failed) in `conversation` at `version`.
    fn forwarded(id: String, conversation_id: String, version: u64) -> Self {
        Self::Forwarded {
            forwarded: true,
            id,
            conversation_id,
            version,
        }
    }

    /// Not WhatsApp's to send, and why.
    fn not(reason: &str) -> Self {
        Self::NotForwarded {
            forwarded: false,
            reason: reason.to_owned(),
        }
    }
}

/// Forward a thread reply over WhatsApp.
///
/// The platform's command (the projector, with a platform service token; any other caller: 403
/// `forbidden`). The projector's `whatsapp-outbox` calls it for every message an agent or the
/// bot writes in a thread. The thread's conversation is found in the event store (the
/// conversation whose MessageReceived went into the thread), and the reply is queued there
/// under the reply's id when it is a UUID (else a UUID v5 of thread and reply), so a repeat
/// names the same message and appends nothing: as text without link preview, or, with an
/// attachment, as a `file` (kind from its media type: `image/jpeg` and `image/png` image,
/// `image/webp` sticker, `audio/*` audio, `video/mp4` and `video/3gpp` video, anything else
/// document) captioned with the reply's text (not for audio and stickers; a document keeps its
/// name). A reply the rules refuse (session disconnected or connected by another tenant,
/// content outside its limits, such as a file over its kind's limit or not the tenant's, or a
/// free-form message outside the customer-service window) cannot be refused after the fact: it
/// is recorded as queued and failed at once (MessageQueued, WhatsAppMessageFailed with
/// `session_disconnected`, `invalid_message` or `outside_service_window`) and answers
/// `forwarded: true`, so the agent sees why in the thread. A thread that is not WhatsApp's (or
/// unknown), a message not written by an agent or the bot, or a thread no conversation goes
/// into answers `forwarded: false` with the reason and appends nothing. 404 for a thread id
/// that is not a UUID or a message the thread does not have; 409 `message_exists` when the id
/// names another message.
///
/// The outbox's forward of a reply an agent (or the bot) wrote in a WhatsApp thread: queued
/// in the thread's conversation under the reply's id (a repeat names the same message). A
/// reply the rules refuse (window closed, session disconnected, a file) is recorded as
/// failed, so the agent sees why in the thread.
#[utoipa::path(
    post,
    path = "/v1/whatsapp/threads/{thread}/messages/{message}/forward",
    params(("thread" = Uuid, Path, description = "The thread."), ("message" = String, Path, description = "The reply's message id in the thread.")),
    request_body = ForwardBody,
    responses(
        (status = 200, description = "Forwarded (queued, or recorded as failed), or not WhatsApp's to send.", body = ForwardAnswer)
    ),
    security(("bearer" = []))
)]
async fn forward(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path((thread, message)): Path<(String, String)>,
    Json(body): Json<ForwardBody>,
) -> Result<Response, Problem> {
    service_only(&who)?;
    let not_forwarded = |reason: &str| Ok(Json(ForwardAnswer::not(reason)).into_response());
    let thread = Uuid::parse_str(&thread)
        .map(|u| u.to_string())
        .map_err(|_| ThreadError::NotFound.problem())?;
    let current = state.ctx.chat.threads.load(&thread).await?;
    if current.channel() != Some(Channel::Whatsapp) {
        return not_forwarded("not a WhatsApp thread");
    }
    let author = match current.recent_author(&message) {
        Some(author) => author.clone(),
        // A reply older than those the thread keeps (a long backlog): its events tell.
        None => crate::chat::services::PgDirectory {
            pool: state.pool.clone(),
            keyring: state.keyring.clone(),
        }
        .past_message(&thread, &message)
        .await
        .map_err(|e| Problem::unavailable(&e))?
        .filter(|m| !m.deleted)
        .map(|m| m.author)
        .ok_or_else(|| ThreadError::NotFound.problem())?,
    };
    if !matches!(author.kind, PartyKind::Agent | PartyKind::Bot) {
        return not_forwarded("not written by an agent or the bot");
    }
    let Some(conversation) = service::conversation_of_thread(&state, &thread).await? else {
        tracing::warn!(
            thread,
            "a WhatsApp thread without a conversation: reply not sent"
        );
        return not_forwarded("no WhatsApp conversation goes into this thread");
    };
    let conv = state.ctx.whatsapp.conversations.load(&conversation).await?;
    let Some(tenant) = conv.tenant_id().map(str::to_owned) else {
        return Err(ConversationError::NotFound.problem());
    };
    let session = state.ctx.whatsapp.sessions.load(conv.session_id()).await?;
    let message_id = reply_id(&thread, &message);
    let command = ConversationCommand::Queue {
        parties: Parties {
            tenant_id: tenant.clone(),
            session_id: conv.session_id().to_owned(),
            wa_id: conv.wa_id().to_owned(),
        },
        session_connected: session.connected() && session.tenant_id() == Some(tenant.as_str()),
        message_id: message_id.clone(),
        author,
        content: outbound_of(body),
        thread_id: Some(thread),
        record_refusal: true,
        at: state.clock.now(),
    };
    let metadata = ids.metadata(&tenant, who.user_id(), who.actor_kind());
    let conversations = &state.ctx.whatsapp.conversations;
    let c = conversations
        .execute(&conversation, None, command, &metadata)
        .await?;
    let forwarded = ForwardAnswer::forwarded(message_id, conversation, c.version);
    Ok(Json(forwarded).into_response())
}

/// What WhatsApp is sent for a thread reply: a file as media, the reply's text as its
/// caption (audio and stickers take none), or the text alone.
fn outbound_of(body: ForwardBody) -> Outbound {
    match body.attachment {
        Some(file) => {
            let kind = MediaKind::of_content_type(&file.content_type);
            let caption = Some(body.text).filter(|t| {
                !t.trim().is_empty() && !matches!(kind, MediaKind::Audio | MediaKind::Sticker)
            });
            Outbound::File {
                kind,
                object_key: file.object_key,
                content_type: file.content_type,
                size_bytes: file.size_bytes,
                filename: file.name.filter(|_| kind == MediaKind::Document),
                caption,
            }
        }
        None => Outbound::Text {
            body: body.text,
            preview_url: false,
        },
    }
}

/// Body of a change to a thread reply (the WhatsApp outbox).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, tag = "change", rename_all = "snake_case")]
pub enum ChangeBody {
    /// The agent deleted the reply.
    #[schema(title = "delete")]
    Delete,
    /// The agent edited its text.
    #[schema(title = "edit")]
    Edit {
        /// The new text.
        text: String,
    },
}

/// The answer of a change to a thread reply.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = WhatsAppReplyChanged)]
pub struct ChangeAnswer {
    /// The WhatsApp message.
    #[schema(format = Uuid)]
    pub id: String,
    /// Its conversation.
    #[schema(format = Uuid)]
    pub conversation_id: String,
    /// The conversation's version after the command.
    pub version: u64,
}

/// Follow a thread reply's edit or deletion over WhatsApp.
///
/// The platform's command (the projector's `whatsapp-outbox`, with a platform service token;
/// any other caller: 403 `forbidden`), called when a message of a WhatsApp thread is edited or
/// deleted. A reply not yet accepted by the provider is withdrawn (`WhatsAppMessageFailed` with
/// code `withdrawn`: it never goes out) or revised (`MessageRevised`: the next attempt sends
/// the edited text, or a file's edited caption). A reply already accepted gets
/// `ChangeNotDelivered` (`edited` or `deleted`, once each): its delivery shows `error_code`
/// `edit_not_delivered` / `delete_not_delivered`, because the contact has the original. A reply
/// failed for good: nothing. A change made while an attempt is under way is recorded at once;
/// if that attempt is accepted after all, `ChangeNotDelivered` follows. 404 for a thread no
/// conversation goes into or a message it does not have.
///
/// A reply the agent deleted or edited in its WhatsApp thread: not yet sent, it is withdrawn
/// or goes out as edited; already sent, the conversation records that the change did not
/// reach the contact. A change made while an attempt is under way holds if the attempt is
/// refused; if it is accepted, the agent is told the contact has the original.
#[utoipa::path(
    post,
    path = "/v1/whatsapp/threads/{thread}/messages/{message}/change",
    params(("thread" = Uuid, Path, description = "The thread."), ("message" = String, Path, description = "The reply's message id in the thread.")),
    request_body = ChangeBody,
    responses(
        (status = 200, description = "Recorded (or nothing to do): the message id, its conversation and the conversation's version.", body = ChangeAnswer)
    ),
    security(("bearer" = []))
)]
async fn change_reply(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path((thread, message)): Path<(String, String)>,
    Json(body): Json<ChangeBody>,
) -> Result<Response, Problem> {
    service_only(&who)?;
    let thread = Uuid::parse_str(&thread)
        .map(|u| u.to_string())
        .map_err(|_| ThreadError::NotFound.problem())?;
    let Some(conversation) = service::conversation_of_thread(&state, &thread).await? else {
        return Err(ConversationError::NotFound.problem());
    };
    let conv = state.ctx.whatsapp.conversations.load(&conversation).await?;
    let Some(tenant) = conv.tenant_id().map(str::to_owned) else {
        return Err(ConversationError::NotFound.problem());
    };
    let message_id = reply_id(&thread, &message);
    let command = ConversationCommand::Change {
        message_id: message_id.clone(),
        change: match body {
            ChangeBody::Delete => ReplyChange::Delete,
            ChangeBody::Edit { text } => ReplyChange::Edit { text },
        },
        at: state.clock.now(),
    };
    let metadata = ids.metadata(&tenant, who.user_id(), who.actor_kind());
    let c = state
        .ctx
        .whatsapp
        .conversations
        .execute(&conversation, None, command, &metadata)
        .await?;
    Ok(Json(ChangeAnswer {
        id: message_id,
        conversation_id: conversation,
        version: c.version,
    })
    .into_response())
}

/// The conversation's id of thread reply `message`: the reply's own id when it is a UUID.
fn reply_id(thread: &str, message: &str) -> String {
    Uuid::parse_str(message)
        .unwrap_or_else(|_| {
            Uuid::new_v5(
                &Uuid::NAMESPACE_OID,
                format!("{thread}\0{message}").as_bytes(),
            )
        })
        .to_string()
}
