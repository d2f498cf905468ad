//! Admins' credentials: the application layer of `/auth/admin/*`. A login stages its session,
//! runs the password check one at a time per user, records the outcome on the user's stream,
//! ends sessions beyond the limit and signs the tokens; every refusal of a login answers
//! alike, in similar time (an unknown e-mail still runs one argon2 check, against a hash made
//! at start-up). Also: refresh-token rotation (a reused token revokes its session), password
//! changes and password resets. The routes of `auth.rs` extract, call these, and answer.

use axum::http::StatusCode;
use chrono::Utc;
use events::access::Claims;
use events::envelope::ActorKind;
use events::http::{Problem, RequestIds};
use events::identity::{AdminUserEvent, LoginFailure, SessionEnd};
use events::Metadata;
use sha2::Digest;

use super::aggregate::{AdminUser, AdminUserCommand, AdminUserError};
use super::auth::user_metadata;
use super::service::admin_of_email;
use super::sessions::Refresh;
use crate::http::error::DomainProblem;
use crate::AppState;

/// A signed-in session: its user and tokens.
pub struct SignedIn {
    /// The user.
    pub user_id: String,
    /// Their state after the login.
    pub user: AdminUser,
    /// The access JWT.
    pub access_token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// The session's first refresh token.
    pub refresh_token: String,
}

/// 401 `invalid_credentials`: the one answer to every refused login.
fn invalid_credentials() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "The e-mail or password is wrong, or the account cannot sign in now.",
    )
}

/// Counts a refused login. `/metrics` answers anyone, so the count says nothing of why
/// (unknown address, wrong password, locked, deactivated): a reason per attempt would tell
/// an outsider which addresses have accounts. Why is in the account's events and the logs.
fn failed_login(state: &AppState) {
    state.metrics.count(
        "auth_login_failures_total",
        "Refused admin logins (every reason).",
        &[],
        1.0,
    );
}

/// Spends the time of a real password check on a login that is refused without one (no
/// such account, locked, deactivated), so that neither the answer's timing nor the count
/// of checks tells an outsider which it was.
async fn decoy_check(state: &AppState, password: &str) {
    let _ = super::services::verify_password(&state.ctx.identity.dummy_hash, password).await;
    super::services::count_password_check(&state.metrics);
}

/// The first bytes of a digest, in hex: enough to tell attempts apart in logs.
fn hex_prefix(bytes: &[u8]) -> String {
    crate::values::hex(&bytes[..bytes.len().min(8)])
}

/// Signs an access token for `user` in session `session_id`.
fn access_token(state: &AppState, id: &str, user: &AdminUser, session_id: &str) -> (String, u64) {
    let now = Utc::now().timestamp();
    let ttl = state.ctx.identity.token_ttl.as_secs();
    let claims = Claims {
        sub: id.to_owned(),
        tenant_id: user.tenant_id.clone(),
        role: user.role,
        kind: None,
        iat: now,
        exp: now + ttl as i64,
        jti: Some(uuid::Uuid::new_v4().to_string()),
        sid: Some(session_id.to_owned()),
    };
    (state.tokens.sign(&claims), ttl)
}

/// The answer to a suspended tenant's staff signing in or refreshing.
fn tenant_suspended() -> Problem {
    events::http::extract::refused(events::http::access::AccessError::Refused(
        events::revocation::Refusal::TenantSuspended,
    ))
}

/// Signs the admin with login e-mail `email` in with `password`: a new session and its
/// tokens. Every refusal is 401 `invalid_credentials` (403 `tenant_suspended` for the right
/// password of a suspended tenant's user), in similar time.
pub async fn login(
    state: &AppState,
    ids: &RequestIds,
    email: &str,
    password: String,
) -> Result<SignedIn, Problem> {
    let state = state.clone();
    let email = crate::values::Email::lookup_form(email);
    let found = admin_of_email(&state, &email).await?;
    let Some((user_id, tenant)) = found else {
        decoy_check(&state, &password).await;
        // No account, so no stream to record it on: operators see such attempts (credential
        // stuffing) in metrics and logs, the address only as a hash.
        failed_login(&state);
        let digest = sha2::Sha256::digest(email.as_bytes());
        tracing::warn!(email_sha256 = %hex_prefix(&digest), "login for an unknown e-mail");
        return Err(invalid_credentials());
    };
    let session_id = uuid::Uuid::now_v7().to_string();
    let command = AdminUserCommand::Login {
        user_id: user_id.clone(),
        password: password.clone(),
        session_id: session_id.clone(),
        at: Utc::now(),
        tenant_suspended: tenant
            .as_deref()
            .is_some_and(|t| state.access.is_suspended(t)),
    };
    let metadata = user_metadata(tenant.as_deref(), (&user_id, ActorKind::Admin), ids);
    let refresh_token = state
        .ctx
        .identity
        .sessions
        .stage(&user_id, &session_id)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let outcome = state
        .ctx
        .identity
        .password_attempts
        .one_at_a_time(
            &user_id,
            state
                .ctx
                .identity
                .admins
                .execute_with_events(&user_id, None, command, &metadata),
        )
        .await;
    let opened = matches!(&outcome, Ok(Ok((_, events))) if events
        .iter()
        .any(|e| matches!(e, AdminUserEvent::LoginSucceeded { .. })));
    if !opened {
        if let Err(e) = state.ctx.identity.sessions.discard(&session_id).await {
            tracing::warn!(error = %e, "could not discard a staged session");
        }
    }
    let outcome = outcome.map_err(|e| Problem::unavailable(&e))?;
    let (_, events) = match outcome {
        Ok(outcome) => outcome,
        // An e-mail reserved for a user whose creation never completed.
        Err(crate::store::CommandError::Rejected(super::aggregate::AdminUserError::NotFound)) => {
            return Err(invalid_credentials())
        }
        Err(e) => return Err(e.into()),
    };
    refuse_unless_opened(&state, &events, &password).await?;
    let user = state.ctx.identity.admins.load(&user_id).await?;
    end_sessions_over_the_limit(&state, &user_id, &metadata).await?;
    let (access_token, expires_in) = access_token(&state, &user_id, &user, &session_id);
    Ok(SignedIn {
        user_id,
        user,
        access_token,
        expires_in,
        refresh_token,
    })
}

/// Refuses a login whose events opened no session: 403 when the tenant is suspended,
/// otherwise 401 `invalid_credentials`, as for a wrong password (a password the aggregate
/// did not check is checked against a decoy, so every refusal takes as long).
async fn refuse_unless_opened(
    state: &AppState,
    events: &[AdminUserEvent],
    password: &str,
) -> Result<(), Problem> {
    if events.iter().any(|e| {
        matches!(
            e,
            AdminUserEvent::LoginFailed {
                reason: LoginFailure::TenantSuspended,
                ..
            }
        )
    }) {
        return Err(tenant_suspended());
    }
    if !events
        .iter()
        .any(|e| matches!(e, AdminUserEvent::LoginSucceeded { .. }))
    {
        let checked = events.iter().any(|e| {
            matches!(
                e,
                AdminUserEvent::LoginFailed {
                    reason: LoginFailure::WrongPassword,
                    ..
                }
            )
        });
        if !checked {
            decoy_check(state, password).await;
        }
        failed_login(state);
        return Err(invalid_credentials());
    }
    Ok(())
}

/// Ends the user's sessions beyond the limit (those used least recently), each recorded, so the
/// audit trail shows it and the session's realtime connections close.
async fn end_sessions_over_the_limit(
    state: &AppState,
    user_id: &str,
    metadata: &Metadata,
) -> Result<(), Problem> {
    let ended = state
        .ctx
        .identity
        .sessions
        .opened(user_id)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    for session_id in ended {
        let revoke = AdminUserCommand::RevokeSession {
            session_id,
            reason: SessionEnd::SessionLimit,
        };
        if let Err(e) = state
            .ctx
            .identity
            .admins
            .execute(user_id, None, revoke, metadata)
            .await
        {
            tracing::warn!(error = ?e, "could not record a session ended by the limit");
        }
    }
    Ok(())
}

/// A refresh token used twice: someone else may hold it, so its session ends (recorded by
/// the session guard). The refusal to answer.
async fn revoke_reused(
    state: &AppState,
    ids: &RequestIds,
    user_id: &str,
    session_id: String,
) -> Result<Problem, Problem> {
    let user = state.ctx.identity.admins.load(user_id).await?;
    let metadata = user_metadata(
        user.tenant_id.as_deref(),
        ("session-guard", ActorKind::System),
        ids,
    );
    let revoke = AdminUserCommand::RevokeSession {
        session_id,
        reason: SessionEnd::RefreshReuse,
    };
    let admins = &state.ctx.identity.admins;
    admins.execute(user_id, None, revoke, &metadata).await?;
    Ok(Problem::new(
        StatusCode::UNAUTHORIZED,
        "refresh_token_reused",
        "This refresh token was already used; the session has been revoked. Sign in again.",
    ))
}

/// Rotates the refresh token `token`: the session's new tokens. 403 while the user's tenant is
/// suspended (nothing spent), 401 `invalid_refresh_token`, or 401 `refresh_token_reused` (the
/// session revoked) for a token used before.
pub async fn refresh(state: &AppState, ids: &RequestIds, token: &str) -> Result<SignedIn, Problem> {
    // The session outlives a suspension of its tenant (which may be reactivated) but issues
    // no access token while it lasts; asked before the token is spent, so it still works
    // afterwards.
    let tenant = state
        .ctx
        .identity
        .sessions
        .tenant_of(token)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    if tenant
        .flatten()
        .is_some_and(|t| state.access.is_suspended(&t))
    {
        return Err(tenant_suspended());
    }
    let outcome = state
        .ctx
        .identity
        .sessions
        .refresh(token)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    match outcome {
        Refresh::Invalid => Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "invalid_refresh_token",
            "The refresh token is unknown, expired or revoked.",
        )),
        Refresh::Reused {
            user_id,
            session_id,
        } => Err(revoke_reused(state, ids, &user_id, session_id).await?),
        Refresh::Rotated {
            user_id,
            session_id,
            token,
        } => {
            let user = state.ctx.identity.admins.load(&user_id).await?;
            if !user.active {
                state
                    .ctx
                    .identity
                    .sessions
                    .revoke(&session_id)
                    .await
                    .map_err(|e| Problem::unavailable(&e))?;
                return Err(invalid_credentials());
            }

            let (access_token, expires_in) = access_token(state, &user_id, &user, &session_id);
            Ok(SignedIn {
                user_id,
                user,
                access_token,
                expires_in,
                refresh_token: token,
            })
        }
    }
}

/// A password change asked by its user.
pub struct PasswordChange {
    /// The password now.
    pub current: String,
    /// The new one.
    pub new: String,
    /// The session the request comes from, which stays signed in.
    pub kept_session: Option<String>,
}

/// Changes the password of `user_id` (of `tenant_id`), one check at a time per user: a wrong
/// current password is recorded (it counts toward the lock) and refused with 403.
pub async fn change_password(
    state: &AppState,
    ids: &RequestIds,
    user_id: &str,
    tenant_id: Option<&str>,
    change: PasswordChange,
) -> Result<(), Problem> {
    let command = AdminUserCommand::ChangePassword {
        user_id: user_id.to_owned(),
        current: change.current,
        new: change.new,
        kept_session: change.kept_session,
        at: Utc::now(),
    };
    let metadata = user_metadata(tenant_id, (user_id, ActorKind::Admin), ids);
    let (_, events) = state
        .ctx
        .identity
        .password_attempts
        .one_at_a_time(
            user_id,
            state
                .ctx
                .identity
                .admins
                .execute_with_events(user_id, None, command, &metadata),
        )
        .await
        .map_err(|e| Problem::unavailable(&e))??;
    // A wrong current password is recorded (it counts toward the lockout) and refused.
    if events
        .iter()
        .any(|e| matches!(e, AdminUserEvent::LoginFailed { .. }))
    {
        failed_login(state);
        return Err(AdminUserError::WrongPassword.problem());
    }
    // The event's own transaction made the new password current, ended the other sessions
    // and spent outstanding reset e-mails (migration 0024).
    Ok(())
}

/// Sets `new_password` with the reset token `token`: 422 `weak_password` (the token not
/// spent), 401 `invalid_reset_token`.
pub async fn complete_password_reset(
    state: &AppState,
    ids: &RequestIds,
    token: &str,
    new_password: String,
) -> Result<(), Problem> {
    // Check the policy before spending the token, so a weak password does not burn it.
    if crate::values::Password::parse(&new_password).is_none() {
        return Err(Problem::unprocessable(
            "weak_password",
            "the password must be 10 to 128 characters, not a well-known one, with at least 4 different characters",
        ));
    }
    // Spending one token spends every other outstanding token of the user.
    let user_id = state
        .ctx
        .identity
        .sessions
        .spend_reset(token)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let Some(user_id) = user_id else {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "invalid_reset_token",
            "The reset token is unknown, used or expired.",
        ));
    };
    let user = state.ctx.identity.admins.load(&user_id).await?;
    let metadata = user_metadata(user.tenant_id.as_deref(), (&user_id, ActorKind::Admin), ids);
    let command = AdminUserCommand::ResetPassword {
        user_id: user_id.clone(),
        new: new_password,
    };
    // Appending `PasswordReset` sets the password and ends every session (migration 0024).
    state
        .ctx
        .identity
        .admins
        .execute(&user_id, None, command, &metadata)
        .await?;
    Ok(())
}
