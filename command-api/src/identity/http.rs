//! `/v1/admin-users…`: creating and managing admin users. A super admin manages anyone; a
//! tenant admin manages the users of their own tenant, and cannot make anyone super admin.
//! Another tenant's user is answered 404, as if it did not exist.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use events::access::{Principal, Role};
use events::envelope::ActorKind;
use events::http::{AuthUser, Json, Problem, RequestIds};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::aggregate::{AdminUser, AdminUserCommand, AdminUserError};
use super::auth::user_metadata;
use crate::http::accepted;
use crate::AppState;
use events::identity::ADMIN_USER;

/// The routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(change_role))
        .routes(routes!(change_department))
        .routes(routes!(deactivate))
        .routes(routes!(reactivate))
        .routes(routes!(issue_password_reset))
}

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

/// Body of a creation.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Optional client-chosen id: a random (version 4) or time-ordered (version 7) UUID; other
    /// versions are the platform's derived ids: 422 `invalid_id`.
    #[serde(default)]
    id: Option<Uuid>,
    email: String,
    #[schema(min_length = 10, max_length = 128)]
    password: String,
    #[serde(default)]
    tenant_id: Option<String>,
    role: Role,
    #[serde(default)]
    department: Option<String>,
}

/// Create (invite) an admin user.
///
/// A super admin creates anyone; a tenant admin creates tenant admins and agents of their own
/// tenant (the default tenant). 409 `email_taken` (another user has the address: said to a
/// super admin, and to a tenant admin when the holder is one of their own tenant's users), 409
/// `email_unavailable` (to a tenant admin, for an address held outside their tenant — never
/// whose or where; after 20 such refusals in an hour every creation by that admin answers 429
/// `rate_limited` until the hour ends), 422 `weak_password`, `invalid_email`,
/// `tenant_required`, `unknown_tenant` (no such tenant), `tenant_rejected` (its signup was
/// turned down: it gets no users; a pending tenant's users can sign in once it is approved),
/// `unknown_department` (the tenant has no such department). Event: Created (the password is
/// hashed with argon2id and never in an event).
#[utoipa::path(
    post,
    path = "/v1/admin-users",
    request_body = CreateUser,
    responses(
        (status = 201, description = "Accepted.", body = crate::http::Accepted)
    ),
    security(("bearer" = []))
)]
async fn create(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Json(body): Json<CreateUser>,
) -> Result<Response, Problem> {
    // A tenant admin creates users of their own tenant by default.
    let tenant = body.tenant_id.clone().or_else(|| match &who {
        Principal::Admin {
            role: Role::TenantAdmin,
            tenant_id,
            ..
        } => tenant_id.clone(),
        _ => None,
    });
    admit_creation(&state, &who).await?;
    // One spelling of the tenant's id in the user's events, whatever form the caller used.
    let tenant = tenant.map(|t| Uuid::parse_str(&t).map_or(t, |u| u.to_string()));
    if !may_manage(&who, tenant.as_deref(), Some(body.role)) {
        return Err(Problem::forbidden("You may not create this user."));
    }
    let department = check_placement(
        &state,
        tenant.as_deref(),
        body.department.as_deref(),
        Placement::NewUser,
    )
    .await?;
    let id = crate::http::client_id(body.id)?
        .unwrap_or_else(Uuid::now_v7)
        .to_string();
    if body.id.is_some() {
        chosen_id_is_free(&state, &id).await?;
    }
    let email = body.email.clone();
    let command = AdminUserCommand::Create {
        user_id: id.clone(),
        email: body.email,
        password: body.password,
        tenant_id: tenant.clone(),
        role: body.role,
        department,
    };
    let metadata = user_metadata(tenant.as_deref(), actor(&who), &ids);
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
            return Err(email_not_given(&state, &who, &email).await)
        }
        Err(other) => return Err(other.into()),
    };
    Ok(accepted(
        StatusCode::CREATED,
        ADMIN_USER,
        &c.aggregate_id,
        c.version,
    ))
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
    let taken: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM phone_users WHERE user_id = $1)")
            .bind(id)
            .fetch_one(&state.pool)
            .await
            .map_err(|e| Problem::unavailable(&e))?;
    if taken {
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
enum Placement {
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
async fn check_placement(
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
async fn managed(
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

async fn run(
    state: &AppState,
    who: &Principal,
    ids: &RequestIds,
    id: &str,
    user: &AdminUser,
    command: AdminUserCommand,
) -> Result<Response, Problem> {
    let metadata = user_metadata(user.tenant_id.as_deref(), actor(who), ids);
    let c = state
        .ctx
        .identity
        .admins
        .execute(id, None, command, &metadata)
        .await?;
    Ok(accepted(
        StatusCode::OK,
        ADMIN_USER,
        &c.aggregate_id,
        c.version,
    ))
}

/// Body of a role change.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRole {
    role: Role,
}

/// Change the role (a tenant admin cannot grant or touch super admin).
///
/// Changes the role and ends the user's sessions (they sign in again under the new one); the
/// same role appends nothing. 422 `last_super_admin` (the last active super admin keeps the
/// role), `tenant_required` (a tenant admin or agent needs a tenant); 503 when it raced another
/// change of a super admin (retry). Another tenant's user answers 404. Event: RoleChanged.
#[utoipa::path(
    post,
    path = "/v1/admin-users/{id}/role",
    params(("id" = Uuid, Path)),
    request_body = ChangeRole,
    responses(
        (status = 200, description = "Accepted.", body = crate::http::Accepted)
    ),
    security(("bearer" = []))
)]
async fn change_role(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(id): Path<String>,
    Json(body): Json<ChangeRole>,
) -> Result<Response, Problem> {
    let (id, user) = managed(&state, &who, &id, Some(body.role)).await?;
    // Its sessions end with the old role, in the event's transaction (migration 0024): the
    // user signs in again under the new one, and a token of the old role does not come back
    // to life if the role is given back later.
    run(
        &state,
        &who,
        &ids,
        &id,
        &user,
        AdminUserCommand::ChangeRole {
            user_id: id.clone(),
            role: body.role,
        },
    )
    .await
}

/// Body of a department change (`null` for none).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeDepartment {
    department: Option<String>,
}

/// Move to a department (null for none).
///
/// Another tenant's user answers 404; 422 `unknown_department` when the user's tenant has no
/// such department.
#[utoipa::path(
    post,
    path = "/v1/admin-users/{id}/department",
    params(("id" = Uuid, Path)),
    request_body = ChangeDepartment,
    responses(
        (status = 200, description = "Accepted.", body = crate::http::Accepted)
    ),
    security(("bearer" = []))
)]
async fn change_department(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(id): Path<String>,
    Json(body): Json<ChangeDepartment>,
) -> Result<Response, Problem> {
    let (id, user) = managed(&state, &who, &id, None).await?;
    let department = check_placement(
        &state,
        user.tenant_id.as_deref(),
        body.department.as_deref(),
        Placement::Existing,
    )
    .await?;
    let command = AdminUserCommand::ChangeDepartment { department };
    run(&state, &who, &ids, &id, &user, command).await
}

/// Deactivate (its sessions end at once).
///
/// Ends the user's sessions at once (in the event's transaction) and stops them signing in.
/// Deactivating a user who is already inactive answers 200 and appends nothing, so a retry
/// converges. 422 `cannot_deactivate_self` (another admin can), `last_super_admin` (the last
/// active super admin stays: make another one first); 503 when it raced another change of a
/// super admin (retry). Another tenant's user answers 404. Event: Deactivated.
#[utoipa::path(
    post,
    path = "/v1/admin-users/{id}/deactivate",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "Accepted.", body = crate::http::Accepted),
        (status = 400, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn deactivate(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let (id, user) = managed(&state, &who, &id, None).await?;
    // Its sessions end with it, in the event's transaction (migration 0024): no refresh,
    // and introspection answers inactive.
    let command = AdminUserCommand::Deactivate {
        user_id: id.clone(),
        by: who.user_id().to_owned(),
    };
    run(&state, &who, &ids, &id, &user, command).await
}

/// Reactivate.
///
/// Another tenant's user answers 404.
#[utoipa::path(
    post,
    path = "/v1/admin-users/{id}/reactivate",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "Accepted.", body = crate::http::Accepted),
        (status = 400, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn reactivate(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let (id, user) = managed(&state, &who, &id, None).await?;
    run(&state, &who, &ids, &id, &user, AdminUserCommand::Reactivate).await
}

/// How long a reset token works.
const RESET_TTL: chrono::Duration = chrono::Duration::hours(1);

/// What issuing a password reset answers (never the token).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ResetIssued {
    /// Seconds the token works.
    pub expires_in: i64,
    /// The user.
    pub id: String,
}

/// Issue a one-time password-reset token.
///
/// For admins of the user's tenant (another tenant's user answers 404). The token (valid 1
/// hour, stored as SHA-256) goes to the user's e-mail through the capture sink (query-api dev
/// inbox) until an e-mail provider is wired; it is never answered to the admin nor put in an
/// event. Event: PasswordResetIssued.
///
/// An admin issues a one-time reset token for a user; it goes to the user's e-mail (through
/// the capture sink until a provider is wired), never to the admin.
#[utoipa::path(
    post,
    path = "/v1/admin-users/{id}/password-reset",
    params(("id" = Uuid, Path)),
    responses(
        (status = 202, description = "Sent.", body = ResetIssued)
    ),
    security(("bearer" = []))
)]
async fn issue_password_reset(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let (id, user) = managed(&state, &who, &id, None).await?;
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
    let tenant = user
        .tenant_id
        .as_deref()
        .unwrap_or(events::identity::PLATFORM_TENANT);
    sqlx::query(
        "INSERT INTO admin_password_reset_staging
                (reset_id, user_id, token_hash, expires_at, tenant_id, recipient, body)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&reset)
    .bind(&id)
    .bind(super::sessions::hash(&token))
    .bind(expires_at)
    .bind(tenant)
    .bind(&user.email)
    .bind(&body)
    .execute(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    let metadata = user_metadata(user.tenant_id.as_deref(), actor(&who), &ids);
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
        // Refused or failed: the staged token goes (had the event committed after all, its
        // transaction took the row already).
        let _ = sqlx::query("DELETE FROM admin_password_reset_staging WHERE reset_id = $1")
            .bind(&reset)
            .execute(&state.pool)
            .await;
        return Err(e.into());
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(ResetIssued {
            expires_in: RESET_TTL.num_seconds(),
            id,
        }),
    )
        .into_response())
}

impl crate::http::error::DomainProblem for crate::identity::aggregate::AdminUserError {
    fn problem(&self) -> Problem {
        use crate::identity::aggregate::AdminUserError as E;
        let detail = self.to_string();
        match self {
            E::NotFound => Problem::not_found(detail),
            E::AlreadyExists => Problem::new(StatusCode::CONFLICT, "already_exists", detail),
            E::EmailTaken => Problem::new(StatusCode::CONFLICT, "email_taken", detail),
            E::InvalidEmail => Problem::unprocessable("invalid_email", detail),
            E::WeakPassword => Problem::unprocessable("weak_password", detail),
            E::InvalidDepartment => Problem::unprocessable("invalid_department", detail),
            E::TenantRequired => Problem::unprocessable("tenant_required", detail),
            E::Inactive => Problem::unprocessable("user_inactive", detail),
            E::SelfDeactivation => Problem::unprocessable("cannot_deactivate_self", detail),
            E::LastSuperAdmin => Problem::unprocessable("last_super_admin", detail),
            E::Active => Problem::unprocessable("user_active", detail),
            E::WrongPassword => Problem::forbidden(detail),
            E::Locked => Problem::new(StatusCode::FORBIDDEN, "account_locked", detail),
            E::Unavailable(cause) => Problem::unavailable(cause),
        }
    }
}
