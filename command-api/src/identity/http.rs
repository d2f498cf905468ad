//! `/v1/admin-users…`: creating and managing admin users. A super admin manages anyone; a
//! tenant admin manages the users of their own tenant, and cannot make anyone super admin.
//! Another tenant's user is answered 404, as if it did not exist.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use events::access::{Principal, Role};
use events::http::{AuthUser, Json, Problem, RequestIds};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::aggregate::{AdminUser, AdminUserCommand};
use super::service;
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
/// `tenant_required`, `tenant_not_allowed` (a super admin belongs to no tenant),
/// `unknown_tenant` (no such tenant), `tenant_rejected` (its signup was
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
    let new = service::NewAdmin {
        id: body.id,
        email: body.email,
        password: body.password,
        tenant_id: body.tenant_id,
        role: body.role,
        department: body.department,
    };
    let c = service::create(&state, &who, &ids, new).await?;
    Ok(accepted(
        StatusCode::CREATED,
        ADMIN_USER,
        &c.aggregate_id,
        c.version,
    ))
}

/// Runs `command` on the user `id` and answers 200 with its version.
async fn run(
    state: &AppState,
    who: &Principal,
    ids: &RequestIds,
    id: &str,
    user: &AdminUser,
    command: AdminUserCommand,
) -> Result<Response, Problem> {
    let c = service::change(state, who, ids, id, user, command).await?;
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
    let (id, user) = service::managed(&state, &who, &id, Some(body.role)).await?;
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
    let (id, user) = service::managed(&state, &who, &id, None).await?;
    let department = service::check_placement(
        &state,
        user.tenant_id.as_deref(),
        body.department.as_deref(),
        service::Placement::Existing,
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
    let (id, user) = service::managed(&state, &who, &id, None).await?;
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
    let (id, user) = service::managed(&state, &who, &id, None).await?;
    run(&state, &who, &ids, &id, &user, AdminUserCommand::Reactivate).await
}

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
    let id = service::issue_password_reset(&state, &who, &ids, &id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ResetIssued {
            expires_in: service::RESET_TTL.num_seconds(),
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
            E::TenantNotAllowed => Problem::unprocessable("tenant_not_allowed", detail),
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
