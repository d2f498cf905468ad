//! The identity context's application layer for admin users: who may manage whom, where a
//! user may be placed, the answers that must not tell one tenant about another's users, and
//! issuing a password reset. The routes of `http.rs` extract, call these, and answer.

use axum::http::StatusCode;
use events::access::{Principal, Role};
use events::envelope::ActorKind;
use events::http::{Problem, RequestIds};
use uuid::Uuid;

use super::aggregate::{AdminUser, AdminUserCommand, AdminUserError};
use super::auth::user_metadata;
use super::sessions::StagedReset;
use crate::store::Committed;
use crate::AppState;

/// The actor an admin's command is recorded under.
fn actor(who: &Principal) -> (&str, ActorKind) {
    (who.user_id(), ActorKind::Admin)
}

/// May `who` manage users of `tenant`, giving them `role`?
fn may_manage(who: &Principal, tenant: Option<&str>, role: Option<Role>) -> bool {
    if who.is_super_admin() {
        return true;
    }
    matches!(
        (who, tenant),
        (Principal::Admin { role: Role::TenantAdmin, tenant_id: Some(home), .. }, Some(t)) if home == t
    ) && role != Some(Role::SuperAdmin)
}

/// 409 `already_exists`: the id names an admin user (or a chatbot user) already.
fn already_exists() -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "already_exists",
        "an admin user with this id already exists",
    )
}

/// An admin who used up their refusals of taken addresses this hour creates nobody until
/// it ends: were only taken addresses refused then, the 429 itself would tell them. Super
/// admins are not limited.
async fn admit_creation(state: &AppState, who: &Principal) -> Result<(), Problem> {
    if who.is_super_admin() {
        return Ok(());
    }
    let spent = crate::http::limits::spend(
        state,
        &email_refusals(who),
        crate::http::limits::Window::Hour,
        0,
        EMAIL_REFUSALS_PER_HOUR,
    )
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    match spent {
        Some(retry_after) => Err(probing_limited(retry_after)),
        None => Ok(()),
    }
}

/// Admin and chatbot users share one id space where it matters (`private-user-{id}`
/// channels, streams): an id a client chooses may not be a chatbot user's.
async fn chosen_id_is_free(state: &AppState, id: &str) -> Result<(), Problem> {
    if super::phone_users::exists(state, id).await? {
        return Err(already_exists());
    }
    Ok(())
}

/// Refused attempts to give an address that is taken, per admin and hour, before they are
/// answered 429: an admin cannot probe the platform's addresses at speed.
const EMAIL_REFUSALS_PER_HOUR: i64 = 20;

/// The answer to creating a user whose e-mail another user holds. Login e-mails are unique
/// across the platform, so the address cannot be given; but only a super admin, or an admin
/// of the holder's own tenant (who sees that user anyway), learns it is a user's:
/// `email_taken`. A tenant admin asking for another tenant's (or the platform's) address is
/// told only that it cannot be used (`email_unavailable`) — never whose or where — and such
/// refusals are counted and limited per admin.
async fn email_not_given(state: &AppState, who: &Principal, email: &str) -> Problem {
    let taken = || {
        Problem::new(
            StatusCode::CONFLICT,
            "email_taken",
            "another admin user has this e-mail",
        )
    };
    if who.is_super_admin() {
        return taken();
    }
    let holder: Result<Option<Option<String>>, sqlx::Error> =
        sqlx::query_scalar("SELECT tenant_id FROM admin_emails WHERE email = $1")
            .bind(crate::values::Email::lookup_form(email))
            .fetch_optional(&state.pool)
            .await;
    let home = match who {
        Principal::Admin { tenant_id, .. } => tenant_id.clone(),
        _ => None,
    };
    match holder {
        Ok(Some(Some(t))) if Some(&t) == home.as_ref() => return taken(),
        Ok(_) => {}
        Err(e) => return Problem::unavailable(&e),
    }
    match crate::http::limits::over_limit(state, &email_refusals(who), EMAIL_REFUSALS_PER_HOUR)
        .await
    {
        Ok(Some(retry_after)) => probing_limited(retry_after),
        Ok(None) => Problem::new(
            StatusCode::CONFLICT,
            "email_unavailable",
            "This e-mail cannot be given to a new user; use another address.",
        ),
        Err(e) => Problem::unavailable(&e),
    }
}

/// Whom a placement is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A user being created: a rejected tenant gets none.
    NewUser,
    /// A user the tenant already has (moving them out of a department is always allowed).
    Existing,
}

/// The hourly count of an admin's refusals of taken addresses.
fn email_refusals(who: &Principal) -> String {
    format!("email-refusals:{}", who.user_id())
}

/// The answer once an admin has used up their refusals of taken addresses: to every user
/// they create, whatever its address, until the hour ends.
fn probing_limited(retry_after: i64) -> Problem {
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("Too many addresses refused this hour; retry in {retry_after} s."),
    )
    .with_header(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_str(&retry_after.to_string())
            .unwrap_or(axum::http::HeaderValue::from_static("3600")),
    )
}

/// A user belongs to a tenant that exists, and a department belongs to that tenant.
pub async fn check_placement(
    state: &AppState,
    tenant: Option<&str>,
    department: Option<&str>,
    placement: Placement,
) -> Result<Option<String>, Problem> {
    let unknown_department =
        || Problem::unprocessable("unknown_department", "The tenant has no such department.");
    let Some(tenant) = tenant else {
        return match department {
            Some(_) => Err(unknown_department()),
            None => Ok(None),
        };
    };
    let unknown_tenant = || Problem::unprocessable("unknown_tenant", "No such tenant.");
    let tenant = Uuid::parse_str(tenant)
        .map_err(|_| unknown_tenant())?
        .to_string();
    let t = state.ctx.tenants.bus.load(&tenant).await?;
    if !t.exists() {
        return Err(unknown_tenant());
    }
    if t.is_rejected() && (placement == Placement::NewUser || department.is_some()) {
        return Err(Problem::unprocessable(
            "tenant_rejected",
            "The tenant's signup was turned down: it gets no users.",
        ));
    }
    // As the tenant spells it.
    match department {
        Some(d) => t
            .department(d)
            .map(|d| Some(d.to_owned()))
            .ok_or_else(unknown_department),
        None => Ok(None),
    }
}

/// Loads a user `who` may manage, or answers 404 as if it did not exist.
pub async fn managed(
    state: &AppState,
    who: &Principal,
    id: &str,
    role: Option<Role>,
) -> Result<(String, AdminUser), Problem> {
    let not_found = || Problem::not_found("admin user not found");
    let id = Uuid::parse_str(id).map_err(|_| not_found())?.to_string();
    let user = state.ctx.identity.admins.load(&id).await?;
    if !user.exists() || !may_manage(who, user.tenant_id.as_deref(), None) {
        return Err(not_found());
    }
    // A tenant admin cannot touch a super admin, nor make one.
    if !who.is_super_admin()
        && (user.role == Some(Role::SuperAdmin) || role == Some(Role::SuperAdmin))
    {
        return Err(Problem::forbidden("Only a super admin may do this."));
    }
    Ok((id, user))
}

/// The admin user an e-mail (in its look-up form) belongs to, and their tenant. No stored
/// address holds a control character, and PostgreSQL text cannot hold U+0000 at all (it
/// would answer an error, not "no such row"): such an address is nobody's.
pub async fn admin_of_email(
    state: &AppState,
    email: &str,
) -> Result<Option<(String, Option<String>)>, Problem> {
    if email.chars().any(char::is_control) {
        return Ok(None);
    }
    sqlx::query_as("SELECT user_id, tenant_id FROM admin_emails WHERE email = $1")
        .bind(email)
        .fetch_optional(&state.pool)
        .await
        .map_err(|e| Problem::unavailable(&e))
}

/// An admin user to create, as asked.
pub struct NewAdmin {
    /// A client-chosen id (version 4 or 7), or `None` for a new one.
    pub id: Option<Uuid>,
    /// Login e-mail.
    pub email: String,
    /// Password (hashed by the aggregate's services, never in an event).
    pub password: String,
    /// Tenant (a tenant admin's own by default).
    pub tenant_id: Option<String>,
    /// Role.
    pub role: Role,
    /// Department of the tenant.
    pub department: Option<String>,
}

/// Creates the admin user `new` on behalf of `who`.
pub async fn create(
    state: &AppState,
    who: &Principal,
    ids: &RequestIds,
    new: NewAdmin,
) -> Result<Committed, Problem> {
    // A tenant admin creates users of their own tenant by default.
    let tenant = new.tenant_id.clone().or_else(|| match who {
        Principal::Admin {
            role: Role::TenantAdmin,
            tenant_id,
            ..
        } => tenant_id.clone(),
        _ => None,
    });
    admit_creation(state, who).await?;
    // One spelling of the tenant's id in the user's events, whatever form the caller used.
    let tenant = tenant.map(|t| Uuid::parse_str(&t).map_or(t, |u| u.to_string()));
    if !may_manage(who, tenant.as_deref(), Some(new.role)) {
        return Err(Problem::forbidden("You may not create this user."));
    }
    let department = check_placement(
        state,
        tenant.as_deref(),
        new.department.as_deref(),
        Placement::NewUser,
    )
    .await?;
    let id = crate::http::client_id(new.id)?
        .unwrap_or_else(Uuid::now_v7)
        .to_string();
    if new.id.is_some() {
        chosen_id_is_free(state, &id).await?;
    }
    let email = new.email.clone();
    let command = AdminUserCommand::Create {
        user_id: id.clone(),
        email: new.email,
        password: new.password,
        tenant_id: tenant.clone(),
        role: new.role,
        department,
    };
    let metadata = user_metadata(tenant.as_deref(), actor(who), ids);
    let c = match state
        .ctx
        .identity
        .admins
        .execute(&id, Some(0), command, &metadata)
        .await
    {
        Ok(c) => c,
        Err(crate::store::CommandError::VersionConflict { .. }) => return Err(already_exists()),
        Err(crate::store::CommandError::Rejected(AdminUserError::EmailTaken)) => {
            return Err(email_not_given(state, who, &email).await)
        }
        Err(other) => return Err(other.into()),
    };
    Ok(c)
}

/// Runs `command` on the user `id` (loaded as `user`) on behalf of `who`.
pub async fn change(
    state: &AppState,
    who: &Principal,
    ids: &RequestIds,
    id: &str,
    user: &AdminUser,
    command: AdminUserCommand,
) -> Result<Committed, Problem> {
    let metadata = user_metadata(user.tenant_id.as_deref(), actor(who), ids);
    Ok(state
        .ctx
        .identity
        .admins
        .execute(id, None, command, &metadata)
        .await?)
}

/// How long a reset token works.
pub const RESET_TTL: chrono::Duration = chrono::Duration::hours(1);

/// Issues a one-time password-reset token for the user `id` that `who` manages: the user's
/// id. The token goes to the user's e-mail, never to the caller.
pub async fn issue_password_reset(
    state: &AppState,
    who: &Principal,
    ids: &RequestIds,
    id: &str,
) -> Result<String, Problem> {
    let (id, user) = managed(state, who, id, None).await?;
    let expires_at = chrono::Utc::now() + RESET_TTL;
    // The token's hash and its e-mail are staged; appending the event stores the one and
    // sends the other in its own transaction (migration 0042), so a failure anywhere leaves
    // neither an event without its token nor a token without its event, and a retry
    // converges.
    let token = super::sessions::new_token();
    let reset = Uuid::new_v4().to_string();
    let body = format!(
        "An administrator started a password reset for your account. Use this one-time token within an hour at POST /auth/admin/password-reset: {token}"
    );
    let sessions = &state.ctx.identity.sessions;
    let staged = StagedReset {
        reset: &reset,
        user_id: &id,
        token: &token,
        expires_at,
        tenant: user
            .tenant_id
            .as_deref()
            .unwrap_or(events::identity::PLATFORM_TENANT),
        recipient: &email_of(state, &user).await?,
        body: &body,
    };
    sessions
        .stage_reset(staged)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let metadata = user_metadata(user.tenant_id.as_deref(), actor(who), ids);
    let command = AdminUserCommand::IssuePasswordReset {
        expires_at,
        reset: reset.clone(),
    };
    if let Err(e) = state
        .ctx
        .identity
        .admins
        .execute(&id, None, command, &metadata)
        .await
    {
        sessions.unstage_reset(&reset).await;
        return Err(e.into());
    }
    Ok(id)
}

/// The login e-mail of `user`, opened: sealed for them in their `Created` event
/// (docs/privacy.md), in clear in events written before; `[erased]` once they are erased.
pub(crate) async fn email_of(state: &AppState, user: &AdminUser) -> Result<String, Problem> {
    state
        .keyring
        .open(&user.email)
        .await
        .map_err(|e| Problem::unavailable(&e))
}
