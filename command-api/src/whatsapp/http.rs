//! WhatsApp's HTTP layer: sessions (`POST /v1/whatsapp/sessions`, `…/{id}/disconnect`),
//! outbound messages (`POST /v1/whatsapp/sessions/{id}/messages`), forwarded and changed
//! replies, the sender's commands (`…/conversations/{c}/messages/{m}/claim` and
//! `…/outcome`, service tokens only) and the provider's endpoint check (`GET
//! /api/webhooks/whatsapp`). Deliveries come through the webhook layer (`webhooks.rs`) and
//! are processed by the service (`service.rs`).
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use events::access::Principal;
use events::chat::{Channel, Party, PartyKind};
use events::http::{AuthUser, Json, Problem, RequestIds};
use events::whatsapp::MediaKind;
use events::whatsapp::{
    cloud_message, conversation_id, session_id, ConversationEvent, Credentials, Outbound,
    Transport, WHATSAPP_CONVERSATION, WHATSAPP_SESSION,
};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::aggregate::{
    ConversationCommand, ConversationError, Parties, ReplyChange, SendResult, SendState, Session,
    SessionCommand, SessionError,
};
use super::cloud;
use super::service::{check_template, history, upload_file};
use crate::chat::aggregate::ThreadError;
use crate::chat::services::Directory;
use crate::http::error::DomainProblem;
use crate::http::{accepted, administered_tenant, ForTenant};
use crate::identity::phone::PhoneNumber as E164;
use crate::webhooks::verify;
use crate::AppState;

/// The routes.
pub fn router() -> Router<AppState> {
    Router::new()
        // Deliveries are posted through the webhook layer (`super::webhooks`).
        .route("/api/webhooks/whatsapp", get(handshake))
        .route("/v1/whatsapp/sessions", post(connect))
        .route("/v1/whatsapp/sessions/bridge", post(connect_bridge))
        .route("/v1/whatsapp/sessions/{id}/disconnect", post(disconnect))
        .route("/v1/whatsapp/sessions/{id}/messages", post(send))
        .route(
            "/v1/whatsapp/threads/{thread}/messages/{message}/forward",
            post(forward),
        )
        .route(
            "/v1/whatsapp/threads/{thread}/messages/{message}/change",
            post(change_reply),
        )
        .route(
            "/v1/whatsapp/conversations/{conversation}/messages/{message}/claim",
            post(claim),
        )
        .route(
            "/v1/whatsapp/conversations/{conversation}/messages/{message}/outcome",
            post(outcome),
        )
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectBody {
    /// The tenant (super admins name it).
    #[serde(default)]
    pub tenant_id: Option<Uuid>,
    /// The Cloud API phone number id.
    pub phone_number_id: String,
    /// The WhatsApp Business Account id.
    #[serde(default)]
    pub business_account_id: Option<String>,
    /// The access token.
    pub access_token: String,
    /// The Meta app's secret.
    pub app_secret: String,
    /// The webhook verify token chosen for this number.
    pub verify_token: String,
}

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
    let id = session_id(&phone_number_id);
    // Refused before the provider is asked when another tenant has the number.
    let current = state.ctx.whatsapp.sessions.load(&id).await?;
    if current.connected() && current.tenant_id() != Some(tenant.as_str()) {
        return Err(SessionError::Taken.problem());
    }
    let info = cloud::check_number(
        &state.ctx.whatsapp.settings,
        &phone_number_id,
        &credentials.access_token,
        &credentials.app_secret,
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
        .seal(&serde_json::to_string(&credentials).unwrap_or_default());
    let command = SessionCommand::Connect {
        tenant_id: tenant.clone(),
        transport: Transport::Cloud,
        phone_number_id,
        business_account_id,
        display_phone_number: info.display_phone_number,
        verified_name: info.verified_name,
        credentials: sealed,
        verify_token_sha256: verify::hex_sha256(verify_token.as_bytes()),
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

/// Body of `POST /v1/whatsapp/sessions/bridge`: a number served by the tenant's own bridge
/// worker (Baileys) instead of the Cloud API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeBody {
    /// The tenant (super admins name it).
    #[serde(default)]
    pub tenant_id: Option<Uuid>,
    /// The number, in E.164.
    pub phone_number: String,
    /// The secret the bridge signs its posts with (at least 32 characters).
    pub bridge_secret: String,
}

/// The phone number id of a bridge session: its number's digits, marked as a bridge's so it
/// never meets a Cloud API id.
pub fn bridge_number_id(digits: &str) -> String {
    format!("bridge:{digits}")
}

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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    /// The contact: their number in E.164 (`+16505551234`) or their WhatsApp id (digits).
    pub to: String,
    /// What to send.
    pub message: Outbound,
    /// The client's id for the message: a retry with the same id names the same message.
    #[serde(default)]
    pub client_message_id: Option<String>,
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
    let digits = body.to.trim().trim_start_matches('+');
    let wa_id = E164::parse(&format!("+{digits}"))
        .map(|n| n.as_str().trim_start_matches('+').to_owned())
        .ok_or_else(|| {
            Problem::unprocessable(
                "invalid_phone",
                "`to` is a number in E.164 (+ and 8 to 15 digits).",
            )
        })?;
    let message_id = match body.client_message_id.as_deref() {
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
    check_template(&state, &session, &body.message).await?;
    let conversation = conversation_id(&tenant, &id, &wa_id);
    // The message shows in the contact's thread while it is open (a closed one stays so).
    let thread_id = match state
        .ctx
        .whatsapp
        .conversations
        .load(&conversation)
        .await?
        .thread_id()
    {
        Some(t) => {
            let thread = state.ctx.chat.threads.load(t).await?;
            (!thread.is_closed()).then(|| t.to_owned())
        }
        None => None,
    };
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
        Json(json!({
            "id": message_id,
            "conversation_id": conversation,
            "version": c.version,
            "status": "queued",
        })),
    )
        .into_response())
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

/// The sender's claim of a due message: whether to send it now, and what to send.
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
    let session = state
        .ctx
        .whatsapp
        .sessions
        .load(current.session_id())
        .await?;
    // Disconnected, or connected since by another tenant: not this conversation's to use.
    let usable = session.connected() && session.tenant_id() == Some(tenant.as_str());
    // A file of the platform's store is uploaded to the provider before the attempt is
    // recorded (an upload sends nothing; repeating it is harmless), so the attempt's lease
    // covers only the send itself. The request names the provider's media id.
    let upload = match current.content(&message) {
        Some(Outbound::File {
            object_key,
            content_type,
            size_bytes,
            filename,
            ..
        }) if usable && current.due(&message, at) => Some(match session.transport() {
            Transport::Bridge => Err(SendResult::Refused {
                code: Some("unsupported_on_bridge".into()),
                reason: "Files of the platform are not sent through a bridge.".into(),
                retryable: false,
                retry_after: None,
            }),
            Transport::Cloud => {
                upload_file(
                    &state,
                    current.session_id(),
                    session.phone_number_id(),
                    object_key,
                    content_type,
                    *size_bytes,
                    filename.as_deref(),
                )
                .await
            }
        }),
        _ => None,
    };
    // The lease begins now, after the upload. (A message that stopped being due meanwhile
    // is not attempted; one that became due is attempted without its file and reported
    // below for a retry.)
    let at = state.clock.now();
    let claim = ConversationCommand::Claim {
        message_id: message.clone(),
        at,
    };
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
        let state_now = state
            .ctx
            .whatsapp
            .conversations
            .load(&conversation)
            .await?
            .with_message(&message, &history(&state))
            .await
            .map_err(|e| e.problem())?;
        let status = state_now.outgoing(&message).map(|o| o.state);
        return Ok(Json(json!({
            "send": false,
            "version": c.version,
            "state": status.map(send_state),
        }))
        .into_response());
    };
    let (media_id, upload_refused) = match upload {
        Some(Ok(id)) => (Some(id), None),
        Some(Err(result)) => (None, Some(result)),
        None => (None, None),
    };
    let is_file = matches!(current.content(&message), Some(Outbound::File { .. }));
    let refused = match usable {
        false => Some(SendResult::Refused {
            code: Some("session_disconnected".into()),
            reason: "The WhatsApp session was disconnected before the message could be sent."
                .into(),
            retryable: false,
            retry_after: None,
        }),
        true if upload_refused.is_some() => upload_refused,
        // (Another claimer changed the message between the check and the claim.)
        true if is_file && media_id.is_none() => Some(SendResult::Refused {
            code: Some("media_upload_failed".into()),
            reason: "The file was not uploaded for this attempt.".into(),
            retryable: true,
            retry_after: None,
        }),
        true => None,
    };
    if let Some(result) = refused {
        let retrying = matches!(
            result,
            SendResult::Refused {
                retryable: true,
                ..
            }
        );
        let report = ConversationCommand::Report {
            message_id: message,
            attempt,
            result,
            at,
        };
        let c = state
            .ctx
            .whatsapp
            .conversations
            .execute(&conversation, None, report, &metadata)
            .await?;
        let state_now = if retrying { "retrying" } else { "failed" };
        return Ok(
            Json(json!({"send": false, "version": c.version, "state": state_now})).into_response(),
        );
    }
    let content = current
        .content(&message)
        .ok_or_else(|| ConversationError::NotFound.problem())?;
    let mut request = cloud_message(current.wa_id(), content, &message);
    if let (Outbound::File { kind, .. }, Some(media_id)) = (content, media_id) {
        request[kind.as_str()]["id"] = json!(media_id);
    }
    Ok(Json(json!({
        "send": true,
        "version": c.version,
        "attempt": attempt,
        "transport": session.transport(),
        "session_id": current.session_id(),
        "phone_number_id": session.phone_number_id(),
        "credentials": session.credentials(),
        "request": request,
    }))
    .into_response())
}

fn send_state(s: SendState) -> &'static str {
    match s {
        SendState::Queued => "queued",
        SendState::Attempting => "attempting",
        SendState::Sent => "sent",
        SendState::Failed => "failed",
    }
}

/// Body of the sender's report.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "result", rename_all = "snake_case")]
pub enum OutcomeBody {
    /// The provider accepted it.
    Accepted {
        /// Which attempt.
        attempt: u32,
        /// The provider's id.
        wamid: String,
    },
    /// The provider refused it, or could not be reached.
    Refused {
        /// Which attempt.
        attempt: u32,
        /// The provider's error code or HTTP status.
        #[serde(default)]
        code: Option<String>,
        /// Why.
        reason: String,
        /// Whether a retry may succeed.
        retryable: bool,
        /// The provider's `Retry-After`, in seconds.
        #[serde(default)]
        retry_after_secs: Option<u32>,
    },
}

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
#[derive(Debug, Default, Deserialize)]
pub struct Handshake {
    /// Always `subscribe`.
    #[serde(rename = "hub.mode", default)]
    pub mode: Option<String>,
    /// The verify token configured at Meta.
    #[serde(rename = "hub.verify_token", default)]
    pub verify_token: Option<String>,
    /// What to echo.
    #[serde(rename = "hub.challenge", default)]
    pub challenge: Option<String>,
}

/// `GET /api/webhooks/whatsapp`: Meta checks the endpoint by asking it to echo a challenge
/// with a verify token it was given: the platform's, or a connected session's.
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
    let matches_session = matches_platform
        // A session connected with this token and not disconnected (nor connected again)
        // since, from the event store: the command side decides from its own state, never
        // from a read model.
        || sqlx::query_scalar::<_, bool>(
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
        .bind(verify::hex_sha256(token.as_bytes()))
        .fetch_one(&state.pool)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    if !matches_session {
        return Err(refused());
    }
    Ok(([(header::CONTENT_TYPE, "text/plain")], challenge).into_response())
}

/// Body of the outbox's forward of a thread reply.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardBody {
    /// The reply's text.
    pub text: String,
    /// The file it carries, if any.
    #[serde(default)]
    pub attachment: Option<events::chat::Attachment>,
}

/// The conversation whose messages went into `thread`, from the store itself.
async fn conversation_of_thread(state: &AppState, thread: &str) -> Result<Option<String>, Problem> {
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

/// The outbox's forward of a reply an agent (or the bot) wrote in a WhatsApp thread: queued
/// in the thread's conversation under the reply's id (a repeat names the same message). A
/// reply the rules refuse (window closed, session disconnected, a file) is recorded as
/// failed, so the agent sees why in the thread.
async fn forward(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path((thread, message)): Path<(String, String)>,
    Json(body): Json<ForwardBody>,
) -> Result<Response, Problem> {
    service_only(&who)?;
    let not_forwarded =
        |reason: &str| Ok(Json(json!({"forwarded": false, "reason": reason})).into_response());
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
    let Some(conversation) = conversation_of_thread(&state, &thread).await? else {
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
        content: match body.attachment {
            // A file goes as media, the reply's text as its caption.
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
        },
        thread_id: Some(thread),
        record_refusal: true,
        at: state.clock.now(),
    };
    let metadata = ids.metadata(&tenant, who.user_id(), who.actor_kind());
    let c = state
        .ctx
        .whatsapp
        .conversations
        .execute(&conversation, None, command, &metadata)
        .await?;
    Ok(Json(json!({
        "forwarded": true, "id": message_id, "conversation_id": conversation, "version": c.version,
    }))
    .into_response())
}

/// Body of a change to a thread reply (the WhatsApp outbox).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "change", rename_all = "snake_case")]
pub enum ChangeBody {
    /// The agent deleted the reply.
    Delete,
    /// The agent edited its text.
    Edit {
        /// The new text.
        text: String,
    },
}

/// A reply the agent deleted or edited in its WhatsApp thread: not yet sent, it is withdrawn
/// or goes out as edited; already sent, the conversation records that the change did not
/// reach the contact. A change made while an attempt is under way holds if the attempt is
/// refused; if it is accepted, the agent is told the contact has the original.
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
    let Some(conversation) = conversation_of_thread(&state, &thread).await? else {
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
    Ok(Json(json!({
        "id": message_id, "conversation_id": conversation, "version": c.version,
    }))
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
