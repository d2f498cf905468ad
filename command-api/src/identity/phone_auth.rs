//! `/auth/phone/*`: chatbot users sign in with their phone number and a one-time code.
//!
//! The code goes out as an SMS through the outbound capture sink (`outbound_messages`;
//! query-api's dev inbox shows it) until an SMS provider is wired. Only a keyed hash of it
//! is ever in an event; phone numbers live in `phone_users`, never in events.

use std::net::SocketAddr;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use events::access::Principal;
use events::envelope::ActorKind;
use events::http::{AuthUser, Json, Problem, RequestIds};
use events::identity::PhoneLoginEvent;
use events::Metadata;
use serde::{Deserialize, Serialize};

use super::phone::{PhoneLoginCommand, PhoneNumber, CODE_TTL, COOLDOWN};
use super::phone_signin::{self, too_many};
use super::phone_users::{self, Profile, ProfileUpdate};
use crate::http::limits;
use crate::AppState;

/// The routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(request_code))
        .routes(routes!(verify))
        .routes(routes!(session))
        .routes(routes!(profile, update_profile))
        .routes(routes!(sync))
}

/// Body of a code request.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestCode {
    #[schema(format = Uuid)]
    tenant_id: String,
    #[schema(example = "+33 6 12 34 56 78")]
    phone: String,
}

/// What a code request answers (never the code).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CodeSent {
    /// The E.164 number the code went to.
    pub phone: String,
    /// Seconds the code works.
    pub expires_in: i64,
    /// Seconds before another code may be requested.
    pub resend_after: i64,
}

/// Send a sign-in code by SMS.
///
/// The number must be international (`+` or `00`), normalised to E.164 (422 `invalid_phone`).
/// The tenant must be approved, not suspended, with its chatbot enabled (403); unknown tenants
/// answer 403 too. A 6-digit code valid 5 minutes, 5 tries; 429 `rate_limited` with
/// `Retry-After` within 60 s of the last code, after 5 codes an hour for the number, or after
/// OTP_REQUESTS_PER_IP_PER_HOUR (20) requests an hour from the client IP. Without an SMS
/// provider the message is captured and shown by query-api's `/v1/dev/inbox`. Event: CodeIssued
/// (only a keyed hash of the code). Answered with `Cache-Control: no-store`; `Idempotency-Key`
/// is ignored on sign-in routes (token answers are never stored or replayed).
#[utoipa::path(
    post,
    path = "/auth/phone/request",
    request_body = RequestCode,
    responses(
        (status = 202, description = "Sent.", body = CodeSent),
        (status = 403, response = events::http::openapi::ProblemAnswer),
        (status = 404, response = events::http::openapi::ProblemAnswer),
        (status = 429, response = events::http::openapi::ProblemAnswer)
    )
)]
async fn request_code(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ids: RequestIds,
    Json(body): Json<RequestCode>,
) -> Result<Response, Problem> {
    let ip = limits::client_ip(&state, peer, &headers);
    if let Some(retry_after) = limits::over_limit(
        &state,
        &format!("otp-ip:{ip}"),
        state.ctx.identity.otp_per_ip,
    )
    .await
    .map_err(|e| Problem::unavailable(&e))?
    {
        return Err(too_many(retry_after));
    }
    let phone = phone_signin::issue_code(&state, &ids, &body.tenant_id, &body.phone).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(CodeSent {
            phone: phone.as_str().to_owned(),
            expires_in: CODE_TTL.num_seconds(),
            resend_after: COOLDOWN.num_seconds(),
        }),
    )
        .into_response())
}

/// Body of a verification.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    #[schema(format = Uuid)]
    tenant_id: String,
    phone: String,
    #[schema(pattern = r"^[0-9]{6}$")]
    code: String,
}

/// A phone user.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PhoneUser {
    /// Stable id of the phone user at this tenant.
    pub id: String,
    /// Tenant.
    pub tenant_id: String,
    /// E.164 number.
    pub phone: String,
}

/// What a verification answers.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PhoneSession {
    /// The chatbot JWT (`kind = phone`).
    pub access_token: String,
    /// `Bearer`.
    pub token_type: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// Who.
    pub user: PhoneUser,
}

/// Sign in with the code.
///
/// 401 `invalid_code` for a wrong, expired, used or exhausted code, and for every code of a
/// number whose phone user at this tenant was erased (no code is issued to it; the answer
/// does not tell of the erasure; docs/privacy.md). Answers a chatbot JWT (`kind = phone`,
/// `sub` = the phone user, `tenant_id`); the phone user is a data subject from then on.
/// Events: CodeVerified or CodeRejected.
/// Answered with `Cache-Control: no-store`; `Idempotency-Key` is ignored on sign-in routes
/// (token answers are never stored or replayed).
#[utoipa::path(
    post,
    path = "/auth/phone/verify",
    request_body = Verify,
    responses(
        (status = 200, description = "Signed in.", body = PhoneSession),
        (status = 401, response = events::http::openapi::ProblemAnswer),
        (status = 403, response = events::http::openapi::ProblemAnswer),
        (status = 404, response = events::http::openapi::ProblemAnswer)
    )
)]
async fn verify(
    State(state): State<AppState>,
    ids: RequestIds,
    Json(body): Json<Verify>,
) -> Result<Response, Problem> {
    let signed_in =
        phone_signin::verify(&state, &ids, &body.tenant_id, &body.phone, &body.code).await?;
    Ok(Json(PhoneSession {
        access_token: signed_in.token,
        token_type: "Bearer".into(),
        expires_in: signed_in.ttl,
        user: PhoneUser {
            id: signed_in.user_id,
            tenant_id: signed_in.tenant,
            phone: signed_in.phone.as_str().to_owned(),
        },
    })
    .into_response())
}

/// What the session of a phone user answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PhoneSessionState {
    /// Always true: without a signed-in phone user there is no session to answer.
    pub authenticated: bool,
    /// Who.
    pub user: PhoneUser,
}

/// The signed-in phone user.
#[utoipa::path(
    get,
    path = "/auth/phone/session",
    responses(
        (status = 200, description = "The session.", body = PhoneSessionState),
        (status = 404, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn session(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
) -> Result<Response, Problem> {
    let Principal::Phone { user_id, tenant_id } = &who else {
        return Err(Problem::forbidden("This is the session of phone users."));
    };
    let phone = phone_users::phone_of(&state, user_id, tenant_id).await?;
    let phone = phone.ok_or_else(|| Problem::not_found("phone user not found"))?;
    // Through a JSON value, so its keys (the user's too) come in the order they always did.
    Ok(Json(serde_json::json!(PhoneSessionState {
        authenticated: true,
        user: PhoneUser {
            id: user_id.clone(),
            tenant_id: tenant_id.clone(),
            phone,
        },
    }))
    .into_response())
}

/// The signed-in phone user and their number, or 403/404.
async fn signed_in(
    state: &AppState,
    who: &Principal,
) -> Result<(String, String, PhoneNumber), Problem> {
    let Principal::Phone { user_id, tenant_id } = who else {
        return Err(Problem::forbidden("This is for phone users."));
    };
    let phone = phone_users::phone_of(state, user_id, tenant_id).await?;
    let phone = phone
        .and_then(|p| PhoneNumber::parse(&p))
        .ok_or_else(|| Problem::not_found("phone user not found"))?;
    Ok((user_id.clone(), tenant_id.clone(), phone))
}

fn as_phone_user(user_id: &str, tenant: &str, ids: &RequestIds) -> Metadata {
    ids.metadata(tenant, user_id, ActorKind::Phone)
}

/// The phone user's profile.
#[utoipa::path(
    get,
    operation_id = "phone_profile",
    path = "/auth/phone/profile",
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
    let (user_id, _, _) = signed_in(&state, &who).await?;
    Ok(Json(phone_users::profile(&state, &user_id).await?).into_response())
}

/// A profile change: absent fields stay, `null` clears.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileChange {
    #[serde(default, with = "serde_with_null")]
    display_name: Option<Option<String>>,
    #[serde(default, with = "serde_with_null")]
    email: Option<Option<String>>,
    #[serde(default, with = "serde_with_null")]
    locale: Option<Option<String>>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
mod serde_with_null {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

/// A BCP 47 tag as browsers send them: `en`, `fr-FR`, `zh-Hant-TW`.
fn valid_locale(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let language = parts.next().unwrap_or_default();
    tag.len() <= 35
        && (2..=3).contains(&language.len())
        && language.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Change the phone user's profile.
///
/// Absent fields stay, `null` clears. 422 `invalid_display_name` (1–80), `invalid_email`,
/// `invalid_locale` (BCP 47). The values are personal data kept outside events; the event
/// ProfileUpdated names the fields only. Answered with `Cache-Control: no-store`;
/// `Idempotency-Key` is ignored on sign-in routes (token answers are never stored or replayed).
#[utoipa::path(
    put,
    path = "/auth/phone/profile",
    request_body = ProfileChange,
    responses(
        (status = 200, description = "The profile after the change.", body = Profile),
        (status = 404, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn update_profile(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Json(change): Json<ProfileChange>,
) -> Result<Response, Problem> {
    let (user_id, tenant, phone) = signed_in(&state, &who).await?;
    let (display_name, email) = checked_profile(&change)?;
    let fields: Vec<String> = [
        ("display_name", display_name.is_some()),
        ("email", email.is_some()),
        ("locale", change.locale.is_some()),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(f, _)| f.to_owned())
    .collect();
    let update = ProfileUpdate {
        display_name,
        email,
        locale: change.locale,
    };
    phone_users::update(&state, &user_id, update).await?;
    let login_id = state
        .ctx
        .identity
        .phone_keys
        .login_id(&tenant, phone.as_str());
    let command = PhoneLoginCommand::RecordProfileChange { fields };
    state
        .ctx
        .identity
        .phone_logins
        .execute(
            &login_id,
            None,
            command,
            &as_phone_user(&user_id, &tenant, &ids),
        )
        .await?;
    Ok(Json(phone_users::profile(&state, &user_id).await?).into_response())
}

/// A field of a profile change: `None` not changed, `Some(None)` cleared.
type Change = Option<Option<String>>;

/// A profile change's display name and e-mail as they will be kept: 422 for a display name,
/// e-mail or locale that is not one.
fn checked_profile(change: &ProfileChange) -> Result<(Change, Change), Problem> {
    let display_name = match &change.display_name {
        Some(Some(name)) => {
            let name = name.trim().to_owned();
            let ok =
                (1..=80).contains(&name.chars().count()) && !name.chars().any(char::is_control);
            if !ok {
                return Err(Problem::unprocessable(
                    "invalid_display_name",
                    "display_name must be 1 to 80 characters without control characters.",
                ));
            }
            Some(Some(name))
        }
        other => other.clone(),
    };
    let email = match &change.email {
        Some(Some(raw)) => Some(Some(
            crate::values::Email::parse(raw)
                .ok_or_else(|| {
                    Problem::unprocessable("invalid_email", "email is not an e-mail address.")
                })?
                .into_inner(),
        )),
        other => other.clone(),
    };
    if let Some(Some(tag)) = &change.locale {
        if !valid_locale(tag) {
            return Err(Problem::unprocessable(
                "invalid_locale",
                "locale must be a language tag such as en or fr-FR.",
            ));
        }
    }
    Ok((display_name, email))
}

/// Anonymous sessions to link.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Sync {
    #[schema(max_items = 50)]
    anonymous_ids: Vec<String>,
}

/// What linking anonymous sessions answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SyncAnswer {
    /// The ids linked now.
    pub linked: Vec<String>,
    /// Ids not linked: no anonymous session the platform issued to the caller.
    pub refused: Vec<String>,
    /// The signed-in phone user.
    pub user_id: String,
}

/// Link earlier anonymous chatbot sessions to the signed-in user.
///
/// Links anonymous chatbot sessions to the signed-in phone user — only sessions the platform
/// issued and the caller proves it held: a bare id proves nothing (two customers could both
/// claim one). The platform issues no anonymous sessions yet (anonymous visitors, with their
/// tokens as proof, come with the chatbot), so every id is answered under `refused` and nothing
/// is recorded; `linked` lists the ids linked now (none). 422 `invalid_anonymous_ids` unless
/// 1–50 ids of 1–128 visible ASCII characters. Event: AnonymousLinked (for linked ids only).
/// Answered with `Cache-Control: no-store`; `Idempotency-Key` is ignored on sign-in routes
/// (token answers are never stored or replayed).
#[utoipa::path(
    post,
    path = "/auth/phone/sync",
    request_body = Sync,
    responses(
        (status = 200, description = "Linked.", body = SyncAnswer),
        (status = 404, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn sync(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Json(body): Json<Sync>,
) -> Result<Response, Problem> {
    let (user_id, tenant, phone) = signed_in(&state, &who).await?;
    let login_id = state
        .ctx
        .identity
        .phone_keys
        .login_id(&tenant, phone.as_str());
    // Only anonymous sessions the platform issued, and that the caller proves it held, are
    // linked: a bare id proves nothing (two customers could both claim one). The platform
    // issues none yet — anonymous chatbot visitors come with their tokens as proof — so
    // every id is refused for now, and nothing is recorded for it.
    let issued = std::collections::BTreeSet::new();
    let refused: Vec<String> = body
        .anonymous_ids
        .iter()
        .filter(|id| !issued.contains(*id))
        .cloned()
        .collect();
    let command = PhoneLoginCommand::LinkAnonymous {
        anonymous_ids: body.anonymous_ids,
        issued,
    };
    let (_, events) = state
        .ctx
        .identity
        .phone_logins
        .execute_with_events(
            &login_id,
            None,
            command,
            &as_phone_user(&user_id, &tenant, &ids),
        )
        .await?;
    let linked: Vec<String> = events
        .into_iter()
        .flat_map(|e| match e {
            PhoneLoginEvent::AnonymousLinked { anonymous_ids } => anonymous_ids,
            _ => Vec::new(),
        })
        .collect();
    Ok(Json(SyncAnswer {
        linked,
        refused,
        user_id,
    })
    .into_response())
}

impl crate::http::error::DomainProblem for crate::identity::phone::PhoneLoginError {
    fn problem(&self) -> Problem {
        use crate::identity::phone::PhoneLoginError as E;
        match self {
            E::TooManyCodes { retry_after } => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                self.to_string(),
            )
            .with_header(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_str(&retry_after.to_string())
                    .unwrap_or(axum::http::HeaderValue::from_static("60")),
            ),
            E::NoCode => Problem::new(StatusCode::UNAUTHORIZED, "invalid_code", self.to_string()),
            E::NotSignedIn => Problem::not_found(self.to_string()),
            E::InvalidAnonymousIds => {
                Problem::unprocessable("invalid_anonymous_ids", self.to_string())
            }
        }
    }
}
