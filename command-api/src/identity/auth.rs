//! `/auth/admin/*` and `/auth/introspect`: signing admins in and out, and telling the
//! Next.js app whether a token is live.
//!
//! Login answers alike for an unknown e-mail, a wrong password, a locked and a deactivated
//! account (401 `invalid_credentials`), and takes alike long: an unknown e-mail still runs
//! one argon2 verification, against a hash made at start-up.

use std::net::SocketAddr;
use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use events::access::{Principal, Role};
use events::envelope::ActorKind;
use events::http::{AuthUser, Json, Problem, RequestIds};
use events::identity::{SessionEnd, PLATFORM_TENANT};
use events::Metadata;
use serde::{Deserialize, Serialize};

use super::aggregate::{AdminUser, AdminUserCommand};
use super::signin;
use crate::AppState;

/// The routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(profile))
        .routes(routes!(change_password))
        .routes(routes!(complete_password_reset))
        .routes(routes!(introspect))
}

/// Metadata for events about admin user `user_id` of `tenant`.
pub fn user_metadata(tenant: Option<&str>, actor: (&str, ActorKind), ids: &RequestIds) -> Metadata {
    ids.metadata(tenant.unwrap_or(PLATFORM_TENANT), actor.0, actor.1)
}

/// Login body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    email: String,
    password: String,
}

/// What a login or refresh answers.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenAnswer {
    /// The access JWT (HS256): sub, tenant_id, role, iat, exp, jti, sid (the session).
    pub access_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// The next refresh token of the session (shown once).
    pub refresh_token: String,
    /// Who signed in.
    pub user: Profile,
}

/// An admin user as they see themselves.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Profile {
    /// User id.
    pub id: String,
    /// Login e-mail.
    pub email: String,
    /// Home tenant.
    pub tenant_id: Option<String>,
    /// Role.
    pub role: Option<Role>,
    /// Department.
    pub department: Option<String>,
    /// False once deactivated.
    pub active: bool,
}

/// The profile of admin user `id`, their e-mail opened (it is sealed for them in their
/// `Created` event, docs/privacy.md).
async fn profile_of(state: &AppState, id: &str, user: &AdminUser) -> Result<Profile, Problem> {
    Ok(Profile {
        id: id.to_owned(),
        email: super::service::email_of(state, user).await?,
        tenant_id: user.tenant_id.clone(),
        role: user.role,
        department: user.department.clone(),
        active: user.active,
    })
}

/// The hourly count of a client's refused logins.
fn login_failures(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> String {
    let ip = crate::http::limits::client_ip(state, peer, headers);
    format!("login-failures-ip:{ip}")
}

/// Sign an admin in.
///
/// Unknown e-mail, wrong password, locked (5 failures in 15 minutes lock for 15 minutes) and
/// deactivated accounts all answer 401 `invalid_credentials`, in similar time. The right
/// password of a suspended tenant's user answers 403 `tenant_suspended` (LoginFailed
/// `tenant_suspended`, not counted toward the lock). Every attempt on a known account is an
/// event (LoginSucceeded, LoginFailed, LockedOut). Answered with `Cache-Control: no-store`;
/// `Idempotency-Key` is ignored on sign-in routes (token answers are never stored or replayed).
/// A client address refused LOGIN_FAILURES_PER_IP_PER_HOUR times (100) in an hour gets 429
/// `rate_limited` with `Retry-After` until the hour ends. Attempts on a locked or deactivated
/// account are recorded once per lock (or deactivation).
#[utoipa::path(
    post,
    path = "/auth/admin/login",
    request_body = Login,
    responses(
        (status = 200, description = "Signed in.", body = TokenAnswer),
        (status = 401, response = events::http::openapi::ProblemAnswer),
        (status = 403, response = events::http::openapi::ProblemAnswer),
        (status = 429, response = events::http::openapi::ProblemAnswer)
    )
)]
async fn login(
    State(state): State<AppState>,
    ids: RequestIds,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<Login>,
) -> Result<Response, Problem> {
    // A client refused too often this hour is refused before anything is looked up or
    // recorded: guessing at speed, or growing an account's history, stops here.
    let bucket = login_failures(&state, peer, &headers);
    if let Some(retry_after) = crate::http::limits::spend(
        &state,
        &bucket,
        crate::http::limits::Window::Hour,
        0,
        state.ctx.identity.login_failures_per_ip - 1,
    )
    .await
    .map_err(|e| Problem::unavailable(&e))?
    {
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("Too many refused logins from this address; retry in {retry_after} s."),
        )
        .with_header(
            header::RETRY_AFTER,
            HeaderValue::from_str(&retry_after.to_string())
                .unwrap_or(HeaderValue::from_static("3600")),
        ));
    }
    let refused = |problem: Problem| {
        let (state, bucket) = (state.clone(), bucket.clone());
        async move {
            if let Err(e) = crate::http::limits::spend(
                &state,
                &bucket,
                crate::http::limits::Window::Hour,
                1,
                i64::MAX,
            )
            .await
            {
                tracing::warn!(error = %e, "could not count a refused login");
            }
            problem
        }
    };
    match signin::login(&state, &ids, &body.email, body.password).await {
        Ok(signed_in) => Ok(Json(TokenAnswer {
            access_token: signed_in.access_token,
            token_type: "Bearer".into(),
            expires_in: signed_in.expires_in,
            refresh_token: signed_in.refresh_token,
            user: profile_of(&state, &signed_in.user_id, &signed_in.user).await?,
        })
        .into_response()),
        Err(problem)
            if problem.status == StatusCode::UNAUTHORIZED
                || problem.status == StatusCode::FORBIDDEN =>
        {
            Err(refused(problem).await)
        }
        Err(problem) => Err(problem),
    }
}

/// Refresh or logout body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    refresh_token: String,
}

/// Rotate a refresh token.
///
/// Spends the refresh token and answers a new access and refresh token. A spent token presented
/// again answers 401 `refresh_token_reused` and revokes the whole session (event
/// SessionRevoked). While the user's tenant is suspended it answers 403 `tenant_suspended` and
/// spends nothing (the session works again on reactivation). Answered with `Cache-Control:
/// no-store`; `Idempotency-Key` is ignored on sign-in routes (token answers are never stored or
/// replayed).
#[utoipa::path(
    post,
    path = "/auth/admin/refresh",
    request_body = RefreshBody,
    responses(
        (status = 200, description = "Signed in.", body = TokenAnswer),
        (status = 401, response = events::http::openapi::ProblemAnswer),
        (status = 403, response = events::http::openapi::ProblemAnswer)
    )
)]
async fn refresh(
    State(state): State<AppState>,
    ids: RequestIds,
    Json(body): Json<RefreshBody>,
) -> Result<Response, Problem> {
    let signed_in = signin::refresh(&state, &ids, &body.refresh_token).await?;
    Ok(Json(TokenAnswer {
        access_token: signed_in.access_token,
        token_type: "Bearer".into(),
        expires_in: signed_in.expires_in,
        refresh_token: signed_in.refresh_token,
        user: profile_of(&state, &signed_in.user_id, &signed_in.user).await?,
    })
    .into_response())
}

/// End the bearer token's session.
///
/// Revokes the session's refresh tokens; introspection then answers inactive for its access
/// tokens. Event: SessionRevoked. Answered with `Cache-Control: no-store`; `Idempotency-Key` is
/// ignored on sign-in routes (token answers are never stored or replayed).
///
/// Ends the session of the bearer token (its `sid`), recorded on the user's stream.
#[utoipa::path(
    post,
    path = "/auth/admin/logout",
    responses(
        (status = 204, description = "Signed out."),
        (status = 400, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn logout(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    headers: axum::http::HeaderMap,
) -> Result<Response, Problem> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' ').map(|(_, t)| t.trim().to_owned()))
        .unwrap_or_default();
    let sid = state.tokens.claims(&token).ok().and_then(|c| c.sid);
    let (
        Principal::Admin {
            user_id, tenant_id, ..
        },
        Some(session_id),
    ) = (&who, sid)
    else {
        return Err(Problem::bad_request(
            "not_a_session",
            "This token does not belong to an admin session.",
        ));
    };
    state
        .ctx
        .identity
        .sessions
        .revoke(&session_id)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let metadata = user_metadata(tenant_id.as_deref(), (user_id, ActorKind::Admin), &ids);
    let revoke = AdminUserCommand::RevokeSession {
        session_id,
        reason: SessionEnd::Logout,
    };
    state
        .ctx
        .identity
        .admins
        .execute(user_id, None, revoke, &metadata)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The signed-in admin.
#[utoipa::path(
    get,
    path = "/auth/admin/profile",
    responses(
        (status = 200, description = "Profile.", body = Profile),
        (status = 404, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn profile(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
) -> Result<Response, Problem> {
    let Principal::Admin { user_id, .. } = &who else {
        return Err(Problem::forbidden("Only admins have an admin profile."));
    };
    let user = state.ctx.identity.admins.load(user_id).await?;
    if !user.exists() {
        return Err(Problem::not_found("admin user not found"));
    }
    Ok(Json(profile_of(&state, user_id, &user).await?).into_response())
}

/// Body of a password change.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    current_password: String,
    new_password: String,
}

/// Change one's own password.
///
/// 403 when the current password is wrong (recorded as `LoginFailed`, counting toward the
/// lockout like a failed login: five wrong within the window lock the account); 403
/// `account_locked` while locked (no password is checked); 422 `weak_password` (10 to 128
/// characters, not a well-known password, at least 4 different characters). Every other session
/// of the user ends (its refresh token stops working and its access tokens introspect
/// inactive); reset links sent before no longer work. Event: PasswordChanged (never the hash).
/// Answered with `Cache-Control: no-store`; `Idempotency-Key` is ignored on sign-in routes
/// (token answers are never stored or replayed).
#[utoipa::path(
    post,
    path = "/auth/admin/password",
    request_body = ChangePassword,
    responses(
        (status = 204, description = "Changed.")
    ),
    security(("bearer" = []))
)]
async fn change_password(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    headers: axum::http::HeaderMap,
    ids: RequestIds,
    Json(body): Json<ChangePassword>,
) -> Result<Response, Problem> {
    // The session this request comes from stays; every other one ends with the change.
    let own_session = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' ').map(|(_, t)| t.trim()))
        .and_then(|token| state.tokens.claims(token).ok())
        .and_then(|claims| claims.sid);
    let Principal::Admin {
        user_id, tenant_id, ..
    } = &who
    else {
        return Err(Problem::forbidden("Only admins have a password here."));
    };
    let change = signin::PasswordChange {
        current: body.current_password,
        new: body.new_password,
        kept_session: own_session,
    };
    signin::change_password(&state, &ids, user_id, tenant_id.as_deref(), change).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// RFC 7662 request: `token` (form-encoded, as the RFC says, or JSON).
#[derive(Deserialize, utoipa::ToSchema)]
pub struct IntrospectBody {
    /// The token asked about.
    token: String,
}

/// RFC 7662 answer: only `active` (false) when the token is not active.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Introspection {
    /// True while the token verifies, has not expired, and its session is not revoked.
    pub active: bool,
    /// Subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry (seconds since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Issued at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Token id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// `access_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    /// Tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Admin role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// `phone` for chatbot users.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// Token introspection (RFC 7662).
///
/// Form-encoded `token=…` (or JSON). Only an authorised caller may ask (RFC 7662 §2.1): a
/// platform service token or a super admin (401 without a token, 403 for anyone else). Active
/// while the token verifies, has not expired, and its session, user and tenant were not
/// revoked. Answered with `Cache-Control: no-store`; `Idempotency-Key` is ignored on sign-in
/// routes (token answers are never stored or replayed).
///
/// RFC 7662 §2.1: only an authorised caller may ask — a platform component (service token)
/// or a super admin; anyone else could use the endpoint to test stolen tokens.
#[utoipa::path(
    post,
    path = "/auth/introspect",
    request_body(content(
        (IntrospectBody = "application/x-www-form-urlencoded"),
        (IntrospectBody = "application/json")
    )),
    responses(
        (status = 200, description = "The answer.", body = Introspection)
    ),
    security(("bearer" = []))
)]
async fn introspect(
    State(state): State<AppState>,
    AuthUser(caller): AuthUser,
    request: Request,
) -> Result<Response, Problem> {
    if !matches!(caller, Principal::Service { .. }) && !caller.is_super_admin() {
        return Err(Problem::forbidden(
            "Introspection is for the platform's services and super admins.",
        ));
    }
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let body: IntrospectBody = if is_json {
        Json::<IntrospectBody>::from_request(request, &state)
            .await?
            .0
    } else {
        Form::<IntrospectBody>::from_request(request, &state)
            .await
            .map_err(|e| Problem::bad_request("invalid_body", e.body_text()))?
            .0
    };
    let Ok(claims) = state.tokens.claims(&body.token) else {
        return Ok(Json(Introspection::default()).into_response());
    };
    // Active exactly when the APIs would accept it: not revoked (session, user, role,
    // tenant), and revocations are known.
    match state.access.check(&claims) {
        Ok(()) => {}
        Err(events::http::access::AccessError::Refused(_)) => {
            return Ok(Json(Introspection::default()).into_response())
        }
        Err(e) => return Err(Problem::unavailable(&e)),
    }
    if let Some(sid) = &claims.sid {
        let live = tokio::time::timeout(
            Duration::from_secs(2),
            state.ctx.identity.sessions.is_active(sid),
        )
        .await
        .map_err(|_| Problem::unavailable(&"session store did not answer"))?
        .map_err(|e| Problem::unavailable(&e))?;
        if !live {
            return Ok(Json(Introspection::default()).into_response());
        }
    }
    Ok(Json(Introspection {
        active: true,
        sub: Some(claims.sub),
        exp: Some(claims.exp),
        iat: Some(claims.iat),
        jti: claims.jti,
        token_type: Some("access_token".into()),
        tenant_id: claims.tenant_id,
        role: claims.role,
        kind: claims.kind,
    })
    .into_response())
}

/// Body of a reset.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteReset {
    token: String,
    #[schema(min_length = 10, max_length = 128)]
    new_password: String,
}

/// Set a new password with a reset token.
///
/// The token works once, within the hour (401 `invalid_reset_token`). A weak password (422
/// `weak_password`) does not spend it. The user's sessions end and a lock is lifted. Event:
/// PasswordReset. Answered with `Cache-Control: no-store`; `Idempotency-Key` is ignored on
/// sign-in routes (token answers are never stored or replayed).
///
/// Sets a new password with a reset token: the token works once, for an hour; the user's
/// sessions end, and a lock is lifted.
#[utoipa::path(
    post,
    path = "/auth/admin/password-reset",
    request_body = CompleteReset,
    responses(
        (status = 204, description = "Changed."),
        (status = 401, response = events::http::openapi::ProblemAnswer)
    )
)]
async fn complete_password_reset(
    State(state): State<AppState>,
    ids: RequestIds,
    Json(body): Json<CompleteReset>,
) -> Result<Response, Problem> {
    signin::complete_password_reset(&state, &ids, &body.token, body.new_password).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
