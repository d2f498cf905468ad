//! Phone sign-in's application layer: a code requested (checked against the tenant and the
//! number's limits, recorded as a keyed hash, the SMS captured once per issuing event; the
//! route checks the client address's limit first) and a code verified (the phone user
//! recorded, the chatbot token signed). The routes of `phone_auth.rs` extract, call these,
//! and answer.

use axum::http::{header, HeaderValue, StatusCode};
use chrono::Utc;
use events::access::Claims;
use events::envelope::ActorKind;
use events::http::{Problem, RequestIds};
use events::identity::{PhoneLoginEvent, PHONE_LOGIN};
use events::keyring::{KeyError, Subject, SubjectKind};
use events::Metadata;
use rand_core::{OsRng, RngCore};

use super::phone::{PhoneLoginCommand, PhoneLoginError, PhoneNumber};
use super::phone_users;
use crate::store::CommandError;
use crate::AppState;

/// 429 `rate_limited`: too many codes, or requests from the client address.
pub fn too_many(retry_after: i64) -> Problem {
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("Too many codes requested; retry in {retry_after} s."),
    )
    .with_header(
        header::RETRY_AFTER,
        HeaderValue::from_str(&retry_after.to_string()).unwrap_or(HeaderValue::from_static("60")),
    )
}

/// 401 `invalid_code`.
fn invalid_code() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "invalid_code",
        "The code is wrong or has expired.",
    )
}

/// Metadata for what an anonymous caller records.
fn anonymous(tenant: &str, ids: &RequestIds) -> Metadata {
    ids.metadata(tenant, "anonymous", ActorKind::Anonymous)
}

/// Checks the phone and the tenant: 422 for a number that is not one, 404 for an unknown
/// tenant, 403 for a tenant whose chatbot users may not sign in.
async fn gate(
    state: &AppState,
    tenant: &str,
    phone: &str,
) -> Result<(String, PhoneNumber), Problem> {
    let phone = PhoneNumber::parse(phone).ok_or_else(|| {
        Problem::unprocessable(
            "invalid_phone",
            "The phone number must be international, e.g. +33612345678.",
        )
    })?;
    let tenant = uuid::Uuid::parse_str(tenant)
        .map_err(|_| Problem::not_found("tenant not found"))?
        .to_string();
    let t = state.ctx.tenants.bus.load(&tenant).await?;
    if !t.accepts_phone_logins() {
        return Err(Problem::forbidden(
            "This tenant's chatbot does not accept sign-ins.",
        ));
    }
    Ok((tenant, phone))
}

/// The tenant and number a request names, checked ([`gate`]), and the id of their sign-in.
async fn sign_in_of(
    state: &AppState,
    tenant: &str,
    phone: &str,
) -> Result<(String, PhoneNumber, String), Problem> {
    let (tenant, phone) = gate(state, tenant, phone).await?;
    let login_id = state
        .ctx
        .identity
        .phone_keys
        .login_id(&tenant, phone.as_str());
    Ok((tenant, phone, login_id))
}

/// Issues a sign-in code for `phone` at `tenant` and sends it by SMS (captured until an SMS
/// provider is wired): the number, normalised.
pub async fn issue_code(
    state: &AppState,
    ids: &RequestIds,
    tenant: &str,
    phone: &str,
) -> Result<PhoneNumber, Problem> {
    let (tenant, phone, login_id) = sign_in_of(state, tenant, phone).await?;
    // An erased person's number gets the usual answer, so no one learns of the erasure from
    // it, but no code: nothing is recorded or sent to them (docs/privacy.md).
    let user_id = state
        .ctx
        .identity
        .phone_keys
        .user_id(&tenant, phone.as_str());
    if is_erased(state, &tenant, &user_id).await? {
        return Ok(phone);
    }
    let code = six_digits();
    let command = PhoneLoginCommand::RequestCode {
        code_hash: state.ctx.identity.phone_keys.code_hash(&login_id, &code),
        at: state.clock.now(),
    };
    let committed = match state
        .ctx
        .identity
        .phone_logins
        .execute(&login_id, None, command, &anonymous(&tenant, ids))
        .await
    {
        Ok(c) => c,
        Err(CommandError::Rejected(PhoneLoginError::TooManyCodes { retry_after })) => {
            return Err(too_many(retry_after))
        }
        Err(e) => return Err(e.into()),
    };
    // Keyed by the event that issued the code: a retry of this step cannot send it twice.
    let causation = events::subject::message_id(PHONE_LOGIN, &login_id, committed.version);
    crate::comms::capture_sms(
        &state.pool,
        &tenant,
        phone.as_str(),
        &format!("Your sign-in code is {code}. It works for 5 minutes."),
        &causation,
    )
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    Ok(phone)
}

/// The data subject phone user `user_id` of `tenant` is (their id is a UUID).
fn subject_of<'a>(tenant: &'a str, user_id: &str) -> Subject<'a> {
    Subject {
        id: events::personal::subject_id(SubjectKind::PhoneUser.as_str(), tenant, user_id),
        kind: SubjectKind::PhoneUser,
        tenant_id: tenant,
    }
}

/// Whether phone user `user_id` of `tenant` was erased.
async fn is_erased(state: &AppState, tenant: &str, user_id: &str) -> Result<bool, Problem> {
    let known = state
        .keyring
        .subject(subject_of(tenant, user_id).id)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    Ok(known.is_some_and(|k| k.erased))
}

/// Six uniformly random digits.
fn six_digits() -> String {
    // Rejection sampling: no modulo bias.
    loop {
        let n = OsRng.next_u32();
        if n < u32::MAX - u32::MAX % 1_000_000 {
            return format!("{:06}", n % 1_000_000);
        }
    }
}

/// Verifies `code` for `phone` at `tenant` and signs the phone user in. 401 `invalid_code`
/// for a wrong, expired, used or exhausted code.
pub async fn verify(
    state: &AppState,
    ids: &RequestIds,
    tenant: &str,
    phone: &str,
    code: &str,
) -> Result<PhoneSignedIn, Problem> {
    let (tenant, phone, login_id) = sign_in_of(state, tenant, phone).await?;
    let user_id = state
        .ctx
        .identity
        .phone_keys
        .user_id(&tenant, phone.as_str());
    // A person whose data was erased is not signed in (and recorded) again: their number
    // fails as a wrong code does, so the answer does not tell of the erasure (no code was
    // issued to it since; docs/privacy.md).
    if is_erased(state, &tenant, &user_id).await? {
        return Err(invalid_code());
    }
    let command = PhoneLoginCommand::Verify {
        code_hash: state
            .ctx
            .identity
            .phone_keys
            .code_hash(&login_id, code.trim()),
        user_id: user_id.clone(),
        at: state.clock.now(),
    };
    let events = match state
        .ctx
        .identity
        .phone_logins
        .execute_with_events(&login_id, None, command, &anonymous(&tenant, ids))
        .await
    {
        Ok((_, events)) => events,
        Err(CommandError::Rejected(PhoneLoginError::NoCode)) => return Err(invalid_code()),
        Err(e) => return Err(e.into()),
    };
    if !events
        .iter()
        .any(|e| matches!(e, PhoneLoginEvent::CodeVerified { .. }))
    {
        return Err(invalid_code());
    }
    // A data subject from the first sign-in: erasable and exportable before they write.
    // The record of their number holds the subject's row, so an erasure in the meantime
    // either comes first (and nothing is recorded) or deletes it.
    match state.keyring.register(subject_of(&tenant, &user_id)).await {
        Ok(()) => {}
        Err(KeyError::Erased) => return Err(invalid_code()),
        Err(e) => return Err(Problem::unavailable(&e)),
    }
    if !phone_users::record(state, &user_id, &tenant, phone.as_str()).await? {
        return Err(invalid_code());
    }
    let now = Utc::now().timestamp();
    let ttl = state.ctx.identity.token_ttl.as_secs();
    let token = state.tokens.sign(&Claims {
        sub: user_id.clone(),
        tenant_id: Some(tenant.clone()),
        role: None,
        kind: Some("phone".into()),
        iat: now,
        exp: now + ttl as i64,
        jti: Some(uuid::Uuid::new_v4().to_string()),
        sid: None,
    });
    Ok(PhoneSignedIn {
        tenant,
        phone,
        user_id,
        token,
        ttl,
    })
}

/// A verified phone sign-in.
pub struct PhoneSignedIn {
    /// The tenant.
    pub tenant: String,
    /// The number, normalised.
    pub phone: PhoneNumber,
    /// The phone user.
    pub user_id: String,
    /// The chatbot JWT.
    pub token: String,
    /// Its lifetime in seconds.
    pub ttl: u64,
}
