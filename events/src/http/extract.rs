use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use serde::de::DeserializeOwned;

use super::access::{Access, AccessError};
use super::Problem;
use crate::access::{Principal, TokenError, TokenKeys};
use crate::revocation::Refusal;

/// A request whose bearer token verified and still works (its session, user and tenant
/// were not revoked since it was issued). Rejects with 401 otherwise (403 for a suspended
/// tenant, 503 while revocations cannot be vouched for).
#[derive(Debug, Clone)]
pub struct AuthUser(pub Principal);

/// A request that may carry a bearer token; a token that is sent must verify and still work.
#[derive(Debug, Clone)]
pub struct MaybeAuthUser(pub Option<Principal>);

fn bearer(parts: &Parts) -> Result<Option<&str>, TokenError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| TokenError::Invalid)?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(token.trim())),
        _ => Err(TokenError::Invalid),
    }
}

fn unauthorized(e: TokenError) -> Problem {
    let code = match e {
        TokenError::Missing => "unauthenticated",
        TokenError::Expired => "token_expired",
        TokenError::Invalid => "token_invalid",
    };
    Problem::new(StatusCode::UNAUTHORIZED, code, e.to_string())
        .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
}

/// The answer to a token that verified but no longer works.
pub fn refused(e: AccessError) -> Problem {
    match e {
        AccessError::Refused(Refusal::TenantSuspended) => Problem::new(
            StatusCode::FORBIDDEN,
            "tenant_suspended",
            Refusal::TenantSuspended.to_string(),
        ),
        AccessError::Refused(Refusal::ChatbotDisabled) => Problem::new(
            StatusCode::FORBIDDEN,
            "chatbot_disabled",
            Refusal::ChatbotDisabled.to_string(),
        ),
        AccessError::Refused(why) => {
            Problem::new(StatusCode::UNAUTHORIZED, "token_revoked", why.to_string()).with_header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            )
        }
        AccessError::Unavailable => Problem::unavailable(&e),
    }
}

/// Verifies `token` and checks it against the revocations: who it speaks for.
pub fn authenticate(keys: &TokenKeys, access: &Access, token: &str) -> Result<Principal, Problem> {
    let (claims, principal) = keys.verify_claims(token).map_err(unauthorized)?;
    access.check(&claims).map_err(refused)?;
    Ok(principal)
}

/// A request's bearer token as an earlier layer already verified it (the in-flight limiter,
/// which must know who calls before the route runs), so the extractors do not verify the
/// signature a second time.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The claims as signed.
    pub claims: crate::access::Claims,
    /// Who they speak for.
    pub principal: Principal,
}

/// [`authenticate`], reusing a [`Verified`] token of the request when a layer left one.
fn authenticate_parts(
    parts: &Parts,
    keys: &TokenKeys,
    access: &Access,
    token: &str,
) -> Result<Principal, Problem> {
    match parts.extensions.get::<Verified>() {
        Some(verified) => {
            access.check(&verified.claims).map_err(refused)?;
            Ok(verified.principal.clone())
        }
        None => authenticate(keys, access, token),
    }
}

impl<S> FromRequestParts<S> for AuthUser
where
    TokenKeys: FromRef<S>,
    Access: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)
            .map_err(unauthorized)?
            .ok_or(unauthorized(TokenError::Missing))?;
        authenticate_parts(
            parts,
            &TokenKeys::from_ref(state),
            &Access::from_ref(state),
            token,
        )
        .map(AuthUser)
    }
}

impl<S> FromRequestParts<S> for MaybeAuthUser
where
    TokenKeys: FromRef<S>,
    Access: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match bearer(parts).map_err(unauthorized)? {
            None => Ok(MaybeAuthUser(None)),
            Some(token) => authenticate_parts(
                parts,
                &TokenKeys::from_ref(state),
                &Access::from_ref(state),
                token,
            )
            .map(|p| MaybeAuthUser(Some(p))),
        }
    }
}

/// A JSON body whose every rejection is a problem: 400 `malformed_json` for bad syntax,
/// 400 `invalid_body` for unknown fields, wrong types or missing fields, 413
/// `payload_too_large`, 415 `unsupported_media_type`, 422 `json_too_deep` for arrays and
/// objects nested more than [`crate::jsonb::MAX_REQUEST_DEPTH`] levels (checked on the raw
/// bytes before they are parsed, so no event can carry what a reader cannot decode).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Expected a body with Content-Type: application/json.",
            ));
        }
        let body = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| status_problem(rejection.status(), rejection.body_text()))?;
        bounded(&body)?;
        match axum::Json::<T>::from_bytes(&body) {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_problem(&rejection)),
        }
    }
}

/// Refuses JSON text nested deeper than [`crate::jsonb::MAX_REQUEST_DEPTH`]: 422
/// `json_too_deep`. For bodies read raw and parsed by the route (webhooks).
pub fn bounded(body: &[u8]) -> Result<(), Problem> {
    if crate::jsonb::nesting_exceeds(body, crate::jsonb::MAX_REQUEST_DEPTH) {
        return Err(Problem::unprocessable(
            "json_too_deep",
            format!(
                "Arrays and objects may nest at most {} levels deep.",
                crate::jsonb::MAX_REQUEST_DEPTH
            ),
        ));
    }
    Ok(())
}

/// Whether the request says its body is JSON (`application/json` or a `+json` type), as
/// axum's own extractor requires.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json") || sub.to_ascii_lowercase().ends_with("+json"))
}

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

fn json_problem(rejection: &JsonRejection) -> Problem {
    match rejection {
        JsonRejection::JsonDataError(e) => Problem::bad_request("invalid_body", e.body_text()),
        JsonRejection::JsonSyntaxError(e) => Problem::bad_request("malformed_json", e.body_text()),
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Expected a body with Content-Type: application/json.",
        ),
        other => status_problem(other.status(), other.body_text()),
    }
}

/// A problem for a rejection known only by its status (body limits, unreadable bodies).
pub fn status_problem(status: StatusCode, detail: String) -> Problem {
    // The server's body timeout (tower-http's `TimeoutBody`) surfaces as an unreadable body;
    // so does a body the client stopped sending (a multipart stream that broke off): the
    // client's doing, never a server error.
    if detail.contains("not received within the designated timeout")
        || (status.is_server_error() && detail.to_ascii_lowercase().contains("stream"))
    {
        return Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "The request body did not arrive in time, or was cut off.",
        );
    }
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => Problem::new(status, "payload_too_large", detail),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            Problem::new(status, "unsupported_media_type", detail)
        }
        s if s.is_client_error() => Problem::new(s, "bad_request", detail),
        _ => Problem::internal(&detail),
    }
}

/// A body read as raw bytes (a webhook's, whose signature covers the bytes as sent), whose
/// every rejection is a problem: 413 `payload_too_large` past the route's limit, 422
/// `json_too_deep` when it is JSON (it opens with `{` or `[`) nested deeper than
/// [`crate::jsonb::MAX_REQUEST_DEPTH`]: providers' payloads end up in events too.
#[derive(Debug, Clone, Default)]
pub struct RawBody(pub axum::body::Bytes);

impl<S> FromRequest<S> for RawBody
where
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| status_problem(rejection.status(), rejection.body_text()))?;
        if matches!(
            body.iter().find(|b| !b.is_ascii_whitespace()),
            Some(b'{' | b'[')
        ) {
            bounded(&body)?;
        }
        Ok(RawBody(body))
    }
}

/// A query string whose rejection is a 400 `invalid_query` problem.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // PostgreSQL text cannot hold NUL: a parameter carrying one names nothing any query
        // could match, and would otherwise reach the database as an error.
        let query = parts.uri.query().unwrap_or_default();
        if query.contains('\0') || query.to_ascii_lowercase().contains("%00") {
            return Err(Problem::bad_request(
                "invalid_query",
                "A query parameter holds a NUL character.",
            ));
        }
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(Problem::bad_request("invalid_query", e.body_text()))
            }
            Err(other) => Err(status_problem(other.status(), other.body_text())),
        }
    }
}
