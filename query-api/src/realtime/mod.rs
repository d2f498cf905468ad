//! Realtime for the frontend: the Pusher channel authorizer (`POST /realtime/auth`), the
//! user authenticator (`POST /realtime/user-auth`, pusher-js `signin()`) and the client
//! configuration (`GET /realtime/config`), each also under `/chat/realtime/…` as the
//! existing frontend calls them. Soketi (the Pusher-protocol server) asks nothing of us: a
//! client subscribes to a private or presence channel with the signature this authorizer
//! gives, and Soketi checks it with the shared app secret.
//!
//! Events are not delivered on channels: the projector's realtime worker sends each one to
//! the connections signed in as the members who may see it now. Every connection signs in
//! (pusher-js `signin()`; Soketi is run with user authentication on, and closes a connection
//! that does not within its timeout) as its [`ConnectionUser`]: the admin's session, or the
//! chatbot user. When a session ends, a user is deactivated or demoted or a tenant
//! suspended, the worker stops delivering to them, the projector's eviction worker has
//! Soketi terminate exactly those connections, and these endpoints refuse the token from
//! then on.
//!
//! The channels a client may still join carry what members send each other and who is
//! online (docs/realtime.md):
//! - `presence-tenant-{tenant}`: the tenant's staff;
//! - `private-thread-{thread}` (typing, as client events): the thread's tenant's staff and
//!   its participants.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use events::access::{Principal, Role};
use events::http::{AuthUser, Json, Problem};
use events::realtime::{channel_auth, user_auth, valid_socket_id, Channel, ConnectionUser};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;

/// Pusher app credentials and where clients reach Soketi.
#[derive(Debug, Clone)]
pub struct RealtimeSettings {
    /// The app key (public: clients connect with it).
    pub key: Option<String>,
    /// The app secret (signs subscriptions).
    pub secret: Option<String>,
    /// Host clients connect to.
    pub host: String,
    /// Port clients connect to.
    pub port: u16,
    /// Whether clients connect with TLS.
    pub tls: bool,
    /// The authorizer URL clients are told to use.
    pub auth_endpoint: String,
    /// The user-authentication URL clients are told to use.
    pub user_auth_endpoint: String,
}

/// The context's settings.
pub mod settings;
/// `GET /v1/stream`: realtime events as Server-Sent Events (from core NATS).
pub mod stream;

pub use settings::Settings;

/// The realtime context: the Pusher channel authorizer and client configuration, and the
/// server-sent events of `/v1/stream`.
pub struct Context {
    /// What clients are told and what signs their subscriptions.
    pub settings: std::sync::Arc<RealtimeSettings>,
    /// The streams open in this process and the NATS subscription that feeds them.
    pub hub: std::sync::Arc<stream::Hub>,
}

impl crate::context::BoundedContext for Context {
    type Settings = Settings;

    async fn build(
        setup: &crate::context::Setup<'_>,
        settings: &Settings,
    ) -> Result<Self, crate::StartError> {
        let hub = stream::Hub::new(settings.streams_per_user);
        hub.follow(
            setup.config.nats_url.clone(),
            settings.realtime_subject_prefix.clone(),
        );
        Ok(Self {
            settings: std::sync::Arc::new(RealtimeSettings {
                key: settings.soketi_app_key.clone().filter(|k| !k.is_empty()),
                secret: settings.soketi_app_secret.clone().filter(|s| !s.is_empty()),
                host: settings.soketi_public_host.clone(),
                port: settings.soketi_public_port,
                tls: settings.soketi_public_tls,
                auth_endpoint: settings.realtime_auth_endpoint.clone(),
                user_auth_endpoint: settings.realtime_user_auth_endpoint.clone(),
            }),
            hub,
        })
    }

    fn routes() -> OpenApiRouter<AppState> {
        router().merge(stream::router())
    }

    fn secrets(settings: &Settings) -> Vec<(&'static str, Option<&str>)> {
        vec![("SOKETI_APP_SECRET", settings.soketi_app_secret.as_deref())]
    }

    fn shutting_down(&self) {
        self.hub.close();
    }
}

/// The routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(auth))
        .routes(routes!(auth_alias))
        .routes(routes!(user_auth_answer))
        .routes(routes!(user_auth_alias))
        .routes(routes!(config))
        .routes(routes!(config_alias))
        .routes(routes!(watch))
}

/// A page a person can open to watch a thread live (history, then the SSE stream).
const WATCH_PAGE: &str = include_str!("watch.html");

/// Watch a thread live (a page).
///
/// A small HTML page: paste a token and a thread id; it shows the thread's history and follows
/// `/v1/stream`.
#[utoipa::path(
    get,
    path = "/realtime/watch",
    responses(
        (status = 200, description = "The page.", body = String, content_type = "text/html")
    )
)]
async fn watch() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, watch_policy()),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        WATCH_PAGE,
    )
        .into_response()
}

/// The page's content security policy: its own inline script and style (by their SHA-256,
/// so no injected script runs), requests to this origin only, never inside a frame.
fn watch_policy() -> &'static str {
    static POLICY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    POLICY.get_or_init(|| {
        use base64::Engine;
        use sha2::{Digest, Sha256};
        let inline = |tag: &str| -> String {
            let open = format!("<{tag}>");
            let close = format!("</{tag}>");
            let body = WATCH_PAGE
                .split_once(open.as_str())
                .and_then(|(_, rest)| rest.split_once(close.as_str()))
                .map_or("", |(body, _)| body);
            let digest = Sha256::digest(body.as_bytes());
            format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        };
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            inline("script"),
            inline("style")
        )
    })
}

/// What pusher-js needs to connect.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = RealtimeConfig)]
struct ClientConfig<'a> {
    /// Whether realtime is configured at all.
    enabled: bool,
    /// App key; null when realtime is not configured.
    key: Option<&'a str>,
    /// `wsHost`.
    host: &'a str,
    /// `wsPort` (and `wssPort`).
    port: u16,
    /// `forceTLS`.
    tls: bool,
    /// pusher-js requires a cluster; Soketi ignores it.
    cluster: &'static str,
    /// `channelAuthorization.endpoint`.
    auth_endpoint: &'a str,
    /// `userAuthentication.endpoint` (call `signin()` after connecting: connections that do
    /// not sign in are closed).
    user_auth_endpoint: &'a str,
    /// `enabledTransports`: `wss` with TLS, else `ws`.
    #[schema(value_type = Vec<String>)]
    transports: [&'static str; 1],
}

/// Realtime client configuration.
///
/// What pusher-js needs: `new Pusher(key, {wsHost: host, wsPort: port, wssPort: port, forceTLS:
/// tls, cluster, enabledTransports: transports, channelAuthorization: {endpoint: auth_endpoint,
/// transport: 'ajax', headers: {Authorization: 'Bearer …'}}, userAuthentication: {endpoint:
/// user_auth_endpoint, transport: 'ajax', headers: {Authorization: 'Bearer …'}}})`, then
/// `pusher.signin()` (a connection that does not sign in is closed). Public: no secret in it.
#[utoipa::path(
    get,
    path = "/realtime/config",
    responses(
        (status = 200, description = "The configuration.", body = ClientConfig)
    )
)]
async fn config(State(state): State<AppState>) -> Response {
    let r = &state.ctx.realtime.settings;
    let config = ClientConfig {
        enabled: r.key.is_some() && r.secret.is_some(),
        key: r.key.as_deref(),
        host: &r.host,
        port: r.port,
        tls: r.tls,
        cluster: "mt1",
        auth_endpoint: &r.auth_endpoint,
        user_auth_endpoint: &r.user_auth_endpoint,
        transports: [if r.tls { "wss" } else { "ws" }],
    };
    Json(config).into_response()
}

/// Realtime client configuration (alias).
///
/// What pusher-js needs: `new Pusher(key, {wsHost: host, wsPort: port, wssPort: port, forceTLS:
/// tls, cluster, enabledTransports: transports, channelAuthorization: {endpoint: auth_endpoint,
/// transport: 'ajax', headers: {Authorization: 'Bearer …'}}, userAuthentication: {endpoint:
/// user_auth_endpoint, transport: 'ajax', headers: {Authorization: 'Bearer …'}}})`, then
/// `pusher.signin()` (a connection that does not sign in is closed). Public: no secret in it.
#[utoipa::path(
    get,
    path = "/chat/realtime/config",
    responses(
        (status = 200, description = "The configuration.", body = ClientConfig)
    )
)]
async fn config_alias(state: State<AppState>) -> Response {
    config(state).await
}

/// What a client sends to be let into a channel (form-encoded as pusher-js does, or JSON).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = ChannelAuthRequest)]
pub struct AuthRequest {
    /// The socket's id, as the server gave it.
    socket_id: String,
    /// The channel it wants to join.
    channel_name: String,
}

/// The authorizer's answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = ChannelAuth)]
struct AuthAnswer {
    /// `key:signature`.
    auth: String,
    /// For presence channels: the member's data, exactly as signed (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    channel_data: Option<String>,
}

/// A body form-encoded (as pusher-js sends it) or JSON; `fields` names what to send.
fn parse_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
    fields: &str,
) -> Result<T, Problem> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    let parsed = if json {
        serde_json::from_slice::<T>(body).map_err(|e| e.to_string())
    } else {
        serde_urlencoded::from_bytes::<T>(body).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| {
        Problem::bad_request(
            "invalid_body",
            format!("Send {fields}, form-encoded or as JSON: {e}"),
        )
    })
}

fn invalid_socket_id() -> Problem {
    Problem::bad_request(
        "invalid_socket_id",
        "socket_id must be the id the realtime server gave the connection (digits.digits).",
    )
}

fn forbidden() -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "channel_forbidden",
        "This token may not join this channel.",
    )
}

/// Pusher channel authorizer.
///
/// pusher-js's `channelAuthorization` endpoint (form-encoded, as pusher-js sends it, or JSON),
/// with the admin or phone bearer token. Events are not delivered on channels: they reach the
/// connection once it has signed in (`/realtime/user-auth`; pusher-js `pusher.user.bind`). The
/// channels a client may join carry what members send each other and who is online:
/// `presence-tenant-{tenant}` (the tenant's staff; `channel_data` = `{"user_id", "user_info":
/// {"role"}}`, signed as `socket_id:channel_name:channel_data`) and `private-thread-{thread}`
/// (typing as client events; the tenant's staff and the thread's participants; `auth` =
/// `key:HMAC-SHA256(secret, "socket_id:channel_name")`). 403 `channel_forbidden` for a channel
/// of ours the token may not join; 400 `invalid_channel` for other names (`private-tenant-…`
/// and `private-user-…` included), `invalid_socket_id` for a socket id not of the form
/// digits.digits; 503 `realtime_not_configured` without SOKETI_APP_KEY/SECRET.
#[utoipa::path(
    post,
    path = "/realtime/auth",
    request_body(content(
        (AuthRequest = "application/x-www-form-urlencoded"),
        (AuthRequest = "application/json")
    )),
    responses(
        (status = 200, description = "The signature.", body = AuthAnswer)
    ),
    security(("bearer" = []))
)]
async fn auth(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let request: AuthRequest = parse_body(&headers, &body, "socket_id and channel_name")?;
    if !valid_socket_id(&request.socket_id) {
        return Err(invalid_socket_id());
    }
    let channel = Channel::parse(&request.channel_name)
        .filter(Channel::joinable)
        .ok_or_else(|| {
            Problem::bad_request(
                "invalid_channel",
                "channel_name is not a channel of this platform (events arrive on the \
                 signed-in connection: pusher.user.bind).",
            )
        })?;
    let (Some(key), Some(secret)) = (
        &state.ctx.realtime.settings.key,
        &state.ctx.realtime.settings.secret,
    ) else {
        return Err(not_configured());
    };
    let channel_data = match &channel {
        Channel::TenantPresence(tenant) if who.is_staff_of(tenant) => {
            Some(presence_data(&who).to_string())
        }
        Channel::Thread(thread) if may_join_thread(&state, &who, thread).await? => None,
        _ => return Err(forbidden()),
    };
    let auth = channel_auth(
        key,
        secret,
        &request.socket_id,
        &request.channel_name,
        channel_data.as_deref(),
    );
    Ok(Json(AuthAnswer { auth, channel_data }).into_response())
}

/// Pusher channel authorizer (alias).
///
/// pusher-js's `channelAuthorization` endpoint (form-encoded, as pusher-js sends it, or JSON),
/// with the admin or phone bearer token. Events are not delivered on channels: they reach the
/// connection once it has signed in (`/realtime/user-auth`; pusher-js `pusher.user.bind`). The
/// channels a client may join carry what members send each other and who is online:
/// `presence-tenant-{tenant}` (the tenant's staff; `channel_data` = `{"user_id", "user_info":
/// {"role"}}`, signed as `socket_id:channel_name:channel_data`) and `private-thread-{thread}`
/// (typing as client events; the tenant's staff and the thread's participants; `auth` =
/// `key:HMAC-SHA256(secret, "socket_id:channel_name")`). 403 `channel_forbidden` for a channel
/// of ours the token may not join; 400 `invalid_channel` for other names (`private-tenant-…`
/// and `private-user-…` included), `invalid_socket_id` for a socket id not of the form
/// digits.digits; 503 `realtime_not_configured` without SOKETI_APP_KEY/SECRET.
#[utoipa::path(
    post,
    path = "/chat/realtime/auth",
    request_body(content(
        (AuthRequest = "application/x-www-form-urlencoded"),
        (AuthRequest = "application/json")
    )),
    responses(
        (status = 200, description = "The signature.", body = AuthAnswer)
    ),
    security(("bearer" = []))
)]
async fn auth_alias(
    state: State<AppState>,
    who: AuthUser,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    auth(state, who, headers, body).await
}

/// What a connection sends to sign in (form-encoded as pusher-js does, or JSON).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct UserAuthRequest {
    /// The socket's id, as the server gave it.
    socket_id: String,
}

/// The user authenticator's answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = UserAuth)]
struct UserAuthAnswer {
    /// `key:signature`.
    auth: String,
    /// The user, exactly as signed.
    user_data: String,
}

/// Pusher user authenticator (sign-in).
///
/// pusher-js's `userAuthentication` endpoint (`pusher.signin()`), form-encoded or JSON, with
/// the bearer token of an admin's session or of a chatbot user. Every connection must sign in
/// (Soketi closes one that does not within its timeout): events are delivered to the signed-in
/// connections of the members who may see them now (`#server-to-user-{id}`; pusher-js
/// `pusher.user.bind`), and a revoked session's connections are terminated. Answers `auth` =
/// `key:HMAC-SHA256(secret, "socket_id::user::user_data")` and `user_data` = `{"id",
/// "user_info": {"role"}}`, where `id` is `session-{sid}` (an admin's session) or
/// `phone-{user_id}` (a chatbot user). 400 `invalid_body`, `invalid_socket_id`; 401
/// `token_revoked` once the token's access was revoked; 403 `session_required` for an admin
/// token without a session, 403 for service tokens; 503 `realtime_not_configured`.
///
/// Signs a connection in as the token's connection user. An admin token without a session
/// (one a platform operator minted) is refused: delivery follows sessions, which such a token
/// has none of.
#[utoipa::path(
    post,
    path = "/realtime/user-auth",
    request_body(content(
        (UserAuthRequest = "application/x-www-form-urlencoded"),
        (UserAuthRequest = "application/json")
    )),
    responses(
        (status = 200, description = "The signature.", body = UserAuthAnswer)
    ),
    security(("bearer" = []))
)]
async fn user_auth_answer(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let request: UserAuthRequest = parse_body(&headers, &body, "socket_id")?;
    if !valid_socket_id(&request.socket_id) {
        return Err(invalid_socket_id());
    }
    let user =
        match &who {
            Principal::Admin { .. } => match session_of(&state, &headers) {
                Some(sid) => ConnectionUser::Session(sid),
                None => return Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "session_required",
                    "Realtime connections sign in with a session's token (POST /auth/admin/login).",
                )),
            },
            Principal::Phone { user_id, .. } => ConnectionUser::Phone(user_id.clone()),
            Principal::Service { .. } => {
                return Err(Problem::forbidden(
                    "Realtime connections are for staff and customers.",
                ))
            }
        };
    let (Some(key), Some(secret)) = (
        &state.ctx.realtime.settings.key,
        &state.ctx.realtime.settings.secret,
    ) else {
        return Err(not_configured());
    };
    let user_data =
        serde_json::json!({"id": user.id(), "user_info": presence_data(&who)["user_info"]})
            .to_string();
    let auth = user_auth(key, secret, &request.socket_id, &user_data);
    Ok(Json(UserAuthAnswer { auth, user_data }).into_response())
}

/// Pusher user authenticator (sign-in) (alias).
///
/// pusher-js's `userAuthentication` endpoint (`pusher.signin()`), form-encoded or JSON, with
/// the bearer token of an admin's session or of a chatbot user. Every connection must sign in
/// (Soketi closes one that does not within its timeout): events are delivered to the signed-in
/// connections of the members who may see them now (`#server-to-user-{id}`; pusher-js
/// `pusher.user.bind`), and a revoked session's connections are terminated. Answers `auth` =
/// `key:HMAC-SHA256(secret, "socket_id::user::user_data")` and `user_data` = `{"id",
/// "user_info": {"role"}}`, where `id` is `session-{sid}` (an admin's session) or
/// `phone-{user_id}` (a chatbot user). 400 `invalid_body`, `invalid_socket_id`; 401
/// `token_revoked` once the token's access was revoked; 403 `session_required` for an admin
/// token without a session, 403 for service tokens; 503 `realtime_not_configured`.
#[utoipa::path(
    post,
    path = "/chat/realtime/user-auth",
    request_body(content(
        (UserAuthRequest = "application/x-www-form-urlencoded"),
        (UserAuthRequest = "application/json")
    )),
    responses(
        (status = 200, description = "The signature.", body = UserAuthAnswer)
    ),
    security(("bearer" = []))
)]
async fn user_auth_alias(
    state: State<AppState>,
    who: AuthUser,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    user_auth_answer(state, who, headers, body).await
}

/// The session (`sid`) of the request's bearer token, which the extractor verified.
fn session_of(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (_, token) = value.split_once(' ')?;
    state.tokens.claims(token.trim()).ok()?.sid
}

fn not_configured() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "realtime_not_configured",
        "Realtime is not configured (SOKETI_APP_KEY, SOKETI_APP_SECRET).",
    )
}

/// A presence member: the user id and what other members see of them.
fn presence_data(who: &Principal) -> serde_json::Value {
    let role = match who {
        Principal::Admin { role, .. } => match role {
            Role::SuperAdmin => "super_admin",
            Role::TenantAdmin => "tenant_admin",
            Role::Agent => "agent",
        },
        Principal::Phone { .. } => "customer",
        Principal::Service { .. } => "service",
    };
    serde_json::json!({"user_id": who.user_id(), "user_info": {"role": role}})
}

/// True when `who` is staff of the thread's tenant or takes part in it. A thread not (yet)
/// in the read model is refused like one the caller may not see.
async fn may_join_thread(state: &AppState, who: &Principal, thread: &str) -> Result<bool, Problem> {
    let Ok(id) = Uuid::parse_str(thread) else {
        return Ok(false);
    };
    let row: Option<(String, bool)> = sqlx::query_as(
        "SELECT t.tenant_id,
                EXISTS (SELECT 1 FROM chat_participants p WHERE p.thread_id = t.id AND p.user_id = $2)
           FROM chat_threads t WHERE t.id = $1",
    )
    .bind(id)
    .bind(who.user_id())
    .fetch_optional(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    Ok(match (row, who) {
        (None, _) => false,
        (Some((tenant, participant)), Principal::Phone { tenant_id, .. }) => {
            participant && &tenant == tenant_id
        }
        (Some((tenant, _)), _) => who.is_staff_of(&tenant),
    })
}
