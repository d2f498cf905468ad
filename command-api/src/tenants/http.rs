use axum::extract::multipart::MultipartRejection;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Multipart, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use events::access::Principal;
use events::envelope::ActorKind;
use events::http::{AuthUser, Json, MaybeAuthUser, Problem, RequestIds};
use events::Metadata;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::router::UtoipaMethodRouterExt;
use utoipa_axum::routes;
use uuid::Uuid;

use super::commands::TenantCommand;
use super::values;
use crate::http::idempotency::KeyedRequest;
use crate::http::limits;
use crate::http::{accepted, if_match};
use crate::store::Committed;
use crate::AppState;
use events::tenants::AGGREGATE_TYPE;

/// The form of a logo upload (read as a stream by [`upload_logo`]).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct LogoUpload {
    /// The image: PNG, JPEG or WebP (told by its bytes), at most 2 MiB.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// Largest logo request (the image plus multipart framing).
const LOGO_BODY_LIMIT: usize = values::MAX_LOGO_BYTES as usize + 64 * 1024;

/// The routes of the tenants context.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(request_signup))
        .routes(routes!(approve))
        .routes(routes!(reject))
        .routes(routes!(rename))
        .routes(routes!(update_preferences))
        .routes(routes!(suspend))
        .routes(routes!(reactivate))
        .routes(routes!(add_department))
        .routes(routes!(remove_department))
        .routes(routes!(upload_logo).layer(DefaultBodyLimit::max(LOGO_BODY_LIMIT)))
}

fn created(c: &Committed) -> Response {
    accepted(
        StatusCode::CREATED,
        AGGREGATE_TYPE,
        &c.aggregate_id,
        c.version,
    )
}

fn changed(c: &Committed) -> Response {
    accepted(StatusCode::OK, AGGREGATE_TYPE, &c.aggregate_id, c.version)
}

/// Tenant ids are UUIDs; anything else names no tenant.
fn tenant_id(raw: &str) -> Result<String, Problem> {
    Uuid::parse_str(raw)
        .map(|u| u.to_string())
        .map_err(|_| Problem::not_found("tenant not found"))
}

fn metadata(tenant_id: &str, who: Option<&Principal>, ids: &RequestIds) -> Metadata {
    match who {
        Some(p) => ids.metadata(tenant_id, p.user_id(), p.actor_kind()),
        None => ids.metadata(tenant_id, "anonymous", ActorKind::Anonymous),
    }
}

fn require_super_admin(who: &Principal) -> Result<(), Problem> {
    if who.is_super_admin() {
        Ok(())
    } else {
        Err(Problem::forbidden("Only a super admin may do this."))
    }
}

fn require_admin_of(who: &Principal, tenant: &str) -> Result<(), Problem> {
    if who.administers(tenant) {
        Ok(())
    } else {
        Err(Problem::forbidden(
            "Only a super admin or this tenant's admin may do this.",
        ))
    }
}

/// Body of a signup request or a direct creation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenTenant {
    /// Optional client-chosen id (a UUID), so a blind retry cannot open two tenants.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// Display name.
    #[schema(min_length = 2, max_length = 80)]
    pub name: String,
    /// Slug.
    #[schema(
        min_length = 3,
        max_length = 63,
        pattern = r"^[a-z](?:[a-z0-9]|-(?!-))*[a-z0-9]$"
    )]
    pub slug: String,
    /// Contact e-mail.
    #[schema(format = Email)]
    pub contact_email: String,
}

/// The id of a tenant being opened: the client's, else one derived from the request's
/// Idempotency-Key (so a retry opens the same tenant), else a fresh one.
fn new_tenant_id(body: &OpenTenant, keyed: Option<&KeyedRequest>) -> Result<String, Problem> {
    Ok(crate::http::client_id(body.id)?
        .or_else(|| keyed.map(KeyedRequest::derived_id))
        .unwrap_or_else(Uuid::now_v7)
        .to_string())
}

/// Request a tenant (public signup).
///
/// Opens the tenant as `pending` until a super admin approves it; its slug is reserved until
/// then, and released if the sign-up is rejected. Each client address may sign up
/// `SIGNUPS_PER_IP_PER_HOUR` times an hour (default 5; 429 `rate_limited` with `Retry-After`
/// beyond). Event: SignupRequested. Allowed: anyone.
#[utoipa::path(
    post,
    path = "/v1/tenants/signup",
    request_body = OpenTenant,
    responses(
        (status = 201, description = "Accepted (the version also in `ETag`).", body = crate::http::Accepted),
        (status = 429, response = events::http::openapi::ProblemAnswer)
    ),
    // Anyone; a token sent is checked all the same (a revoked one answers 401).
    security((), ("bearer" = []))
)]
async fn request_signup(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    MaybeAuthUser(who): MaybeAuthUser,
    ids: RequestIds,
    keyed: Option<Extension<KeyedRequest>>,
    Json(body): Json<OpenTenant>,
) -> Result<Response, Problem> {
    // Anyone may ask, so each client asks a few times an hour: a sign-up reserves its slug
    // until it is rejected.
    let ip = limits::client_ip(&state, peer, &headers);
    if let Some(retry_after) = limits::over_limit(
        &state,
        &format!("signup-ip:{ip}"),
        state.ctx.tenants.signups_per_ip,
    )
    .await
    .map_err(|e| Problem::unavailable(&e))?
    {
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("Too many sign-ups from this address; retry in {retry_after} s."),
        )
        .with_header(
            header::RETRY_AFTER,
            HeaderValue::from_str(&retry_after.to_string())
                .unwrap_or(HeaderValue::from_static("3600")),
        ));
    }
    let id = new_tenant_id(&body, keyed.as_deref())?;
    let command = TenantCommand::RequestSignup {
        tenant_id: id.clone(),
        name: body.name,
        slug: body.slug,
        contact_email: body.contact_email,
    };
    let c = state
        .ctx
        .tenants
        .bus
        .execute(&id, Some(0), command, &metadata(&id, who.as_ref(), &ids))
        .await
        .map_err(new_tenant_conflict)?;
    Ok(created(&c))
}

/// Create an active tenant.
///
/// Event: Created. Allowed: super admin.
#[utoipa::path(
    post,
    path = "/v1/tenants",
    request_body = OpenTenant,
    responses(
        (status = 201, description = "Accepted (the version also in `ETag`).", body = crate::http::Accepted),
        (status = 404, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn create(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    keyed: Option<Extension<KeyedRequest>>,
    Json(body): Json<OpenTenant>,
) -> Result<Response, Problem> {
    require_super_admin(&who)?;
    let id = new_tenant_id(&body, keyed.as_deref())?;
    let command = TenantCommand::Create {
        tenant_id: id.clone(),
        name: body.name,
        slug: body.slug,
        contact_email: body.contact_email,
    };
    let c = state
        .ctx
        .tenants
        .bus
        .execute(&id, Some(0), command, &metadata(&id, Some(&who), &ids))
        .await
        .map_err(new_tenant_conflict)?;
    Ok(created(&c))
}

/// Opening a tenant expects version 0; finding another version means the id is taken.
fn new_tenant_conflict(e: crate::store::CommandError<super::aggregate::TenantError>) -> Problem {
    match e {
        crate::store::CommandError::VersionConflict { .. } => {
            super::aggregate::TenantError::AlreadyExists.into_problem()
        }
        other => other.into(),
    }
}

impl super::aggregate::TenantError {
    fn into_problem(self) -> Problem {
        crate::http::error::DomainProblem::problem(&self)
    }
}

async fn execute(
    state: &AppState,
    who: &Principal,
    ids: &RequestIds,
    headers: &HeaderMap,
    id: &str,
    command: TenantCommand,
) -> Result<Response, Problem> {
    let expected = if_match(headers)?;
    let c = state
        .ctx
        .tenants
        .bus
        .execute(id, expected, command, &metadata(id, Some(who), ids))
        .await?;
    Ok(changed(&c))
}

/// Approve a pending signup.
///
/// 422 `already_approved` when approved before; 422 `not_pending` after a rejection. Event:
/// Approved. Allowed: super admin.
#[utoipa::path(
    post,
    path = "/v1/tenants/{id}/approve",
    params(("id" = Uuid, Path), crate::http::IfMatch),
    responses(
        (status = 200, description = "Accepted (the version also in `ETag`).", body = crate::http::Accepted),
        (status = 400, response = events::http::openapi::ProblemAnswer),
        (status = 413, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn approve(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    require_super_admin(&who)?;
    let id = tenant_id(&id)?;
    execute(&state, &who, &ids, &headers, &id, TenantCommand::Approve).await
}

/// A body with a reason.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    /// Why.
    #[schema(min_length = 1, max_length = 500)]
    pub reason: String,
}

/// Reject a pending signup.
///
/// Event: Rejected. Allowed: super admin.
#[utoipa::path(
    post,
    path = "/v1/tenants/{id}/reject",
    params(("id" = Uuid, Path), crate::http::IfMatch),
    request_body = Reason,
    responses(
        (status = 200, description = "Accepted (the version also in `ETag`).", body = crate::http::Accepted)
    ),
    security(("bearer" = []))
)]
async fn reject(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<Reason>,
) -> Result<Response, Problem> {
    require_super_admin(&who)?;
    let id = tenant_id(&id)?;
    let command = TenantCommand::Reject {
        reason: body.reason,
    };
    execute(&state, &who, &ids, &headers, &id, command).await
}

/// Suspend an active tenant.
///
/// Nothing else changes until it is reactivated. Event: Suspended. Allowed: super admin.
#[utoipa::path(
    post,
    path = "/v1/tenants/{id}/suspend",
    params(("id" = Uuid, Path), crate::http::IfMatch),
    request_body = Reason,
    responses(
        (status = 200, description = "Accepted (the version also in `ETag`).", body = crate::http::Accepted)
    ),
    security(("bearer" = []))
)]
async fn suspend(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<Reason>,
) -> Result<Response, Problem> {
    require_super_admin(&who)?;
    let id = tenant_id(&id)?;
    let command = TenantCommand::Suspend {
        reason: body.reason,
    };
    execute(&state, &who, &ids, &headers, &id, command).await
}

/// Reactivate a suspended tenant.
///
/// Event: Reactivated. Allowed: super admin.
#[utoipa::path(
    post,
    path = "/v1/tenants/{id}/reactivate",
    params(("id" = Uuid, Path), crate::http::IfMatch),
    responses(
        (status = 200, description = "Accepted (the version also in `ETag`).", body = crate::http::Accepted),
        (status = 400, response = events::http::openapi::ProblemAnswer),
        (status = 413, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn reactivate(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    require_super_admin(&who)?;
    let id = tenant_id(&id)?;
    execute(&state, &who, &ids, &headers, &id, TenantCommand::Reactivate).await
}

/// Body of a rename.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    /// The new display name.
    #[schema(min_length = 2, max_length = 80)]
    pub name: String,
}

/// Rename.
///
/// Renaming to the current name appends nothing. 422 `tenant_suspended` while suspended. Event:
/// Renamed. Allowed: super admin or the tenant's admin.
#[utoipa::path(
    post,
    path = "/v1/tenants/{id}/rename",
    params(("id" = Uuid, Path), crate::http::IfMatch),
    request_body = Rename,
    responses(
        (status = 200, description = "Accepted (the version also in `ETag`).", body = crate::http::Accepted)
    ),
    security(("bearer" = []))
)]
async fn rename(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<Rename>,
) -> Result<Response, Problem> {
    let id = tenant_id(&id)?;
    require_admin_of(&who, &id)?;
    execute(
        &state,
        &who,
        &ids,
        &headers,
        &id,
        TenantCommand::Rename { name: body.name },
    )
    .await
}

/// Body naming a department.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Department {
    /// Its name.
    #[schema(min_length = 1, max_length = 80)]
    pub name: String,
}

/// Add a department.
///
/// 409 `department_exists`, 422 `invalid_department`. Admin users are placed in their tenant's
/// departments. Event: DepartmentAdded. Allowed: super admin or the tenant's admin.
#[utoipa::path(
    post,
    path = "/v1/tenants/{id}/departments",
    params(("id" = Uuid, Path), crate::http::IfMatch),
    request_body = Department,
    responses(
        (status = 200, description = "Accepted.", body = crate::http::Accepted)
    ),
    security(("bearer" = []))
)]
async fn add_department(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<Department>,
) -> Result<Response, Problem> {
    let id = tenant_id(&id)?;
    require_admin_of(&who, &id)?;
    execute(
        &state,
        &who,
        &ids,
        &headers,
        &id,
        TenantCommand::AddDepartment { name: body.name },
    )
    .await
}

/// Remove a department.
///
/// 404 when the tenant has no such department. Event: DepartmentRemoved. Allowed: super admin
/// or the tenant's admin. A department with admin users still in it is not removed: 422
/// `department_in_use` (move them to another department, or none, first); its open threads
/// leave it by themselves (reason `department_removed`).
#[utoipa::path(
    post,
    path = "/v1/tenants/{id}/departments/remove",
    params(("id" = Uuid, Path), crate::http::IfMatch),
    request_body = Department,
    responses(
        (status = 200, description = "Accepted.", body = crate::http::Accepted)
    ),
    security(("bearer" = []))
)]
async fn remove_department(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<Department>,
) -> Result<Response, Problem> {
    let id = tenant_id(&id)?;
    require_admin_of(&who, &id)?;
    execute(
        &state,
        &who,
        &ids,
        &headers,
        &id,
        TenantCommand::RemoveDepartment {
            tenant_id: id.clone(),
            name: body.name,
        },
    )
    .await
}

/// Replace the preferences.
///
/// The body is the whole new preferences object (at most 16 KiB; 422 `preferences_not_object` /
/// `preferences_too_large`). Event: PreferencesUpdated. Allowed: super admin or the tenant's
/// admin.
#[utoipa::path(
    post,
    path = "/v1/tenants/{id}/preferences",
    params(("id" = Uuid, Path), crate::http::IfMatch),
    request_body = Object,
    responses(
        (status = 200, description = "Accepted (the version also in `ETag`).", body = crate::http::Accepted)
    ),
    security(("bearer" = []))
)]
async fn update_preferences(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(preferences): Json<serde_json::Value>,
) -> Result<Response, Problem> {
    let id = tenant_id(&id)?;
    require_admin_of(&who, &id)?;
    let command = TenantCommand::UpdatePreferences { preferences };
    execute(&state, &who, &ids, &headers, &id, command).await
}

/// Upload a logo.
///
/// Multipart field `file`: PNG, JPEG or WebP (told by its bytes, 415 `unsupported_image`
/// otherwise), at most 2 MiB (413). Stored in the blob store under
/// `tenants/{id}/logo/{sha256}.{ext}`. Event: LogoUploaded. Allowed: super admin or the
/// tenant's admin.
#[utoipa::path(
    post,
    path = "/v1/tenants/{id}/logo",
    params(("id" = Uuid, Path), crate::http::IfMatch),
    request_body(content = LogoUpload, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Accepted (the version also in `ETag`).", body = crate::http::Accepted)
    ),
    security(("bearer" = []))
)]
async fn upload_logo(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    headers: HeaderMap,
    Path(id): Path<String>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, Problem> {
    let id = tenant_id(&id)?;
    require_admin_of(&who, &id)?;
    let mut multipart = multipart.map_err(|e| {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            e.body_text(),
        )
    })?;
    let mut image = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| events::http::extract::status_problem(e.status(), e.body_text()))?
    {
        if field.name() == Some("file") {
            let bytes = field
                .bytes()
                .await
                .map_err(|e| events::http::extract::status_problem(e.status(), e.body_text()))?;
            image = Some(bytes);
            break;
        }
    }
    let image = image.ok_or_else(|| {
        Problem::bad_request(
            "missing_file",
            "Send the image as a multipart field named `file`.",
        )
    })?;
    let command = super::service::store_logo(&state, &id, image).await?;
    execute(&state, &who, &ids, &headers, &id, command).await
}

impl crate::http::error::DomainProblem for crate::tenants::aggregate::TenantError {
    fn problem(&self) -> Problem {
        use crate::tenants::aggregate::TenantError as E;
        let detail = self.to_string();
        match self {
            E::NotFound => Problem::not_found(detail),
            E::AlreadyExists => Problem::new(StatusCode::CONFLICT, "already_exists", detail),
            E::SlugTaken => Problem::new(StatusCode::CONFLICT, "slug_taken", detail),
            E::InvalidName => Problem::unprocessable("invalid_name", detail),
            E::InvalidSlug => Problem::unprocessable("invalid_slug", detail),
            E::InvalidEmail => Problem::unprocessable("invalid_email", detail),
            E::AlreadyApproved => Problem::unprocessable("already_approved", detail),
            E::NotPending => Problem::unprocessable("not_pending", detail),
            E::Suspended => Problem::unprocessable("tenant_suspended", detail),
            E::NotSuspended => Problem::unprocessable("not_suspended", detail),
            E::NotActive => Problem::unprocessable("not_active", detail),
            E::Rejected => Problem::unprocessable("tenant_rejected", detail),
            E::PreferencesNotObject => Problem::unprocessable("preferences_not_object", detail),
            E::PreferencesTooLarge => Problem::unprocessable("preferences_too_large", detail),
            E::PreferencesInvalid => Problem::unprocessable("preferences_invalid", detail),
            E::InvalidReason => Problem::unprocessable("invalid_reason", detail),
            E::InvalidLogo => Problem::unprocessable("invalid_logo", detail),
            E::InvalidDepartment => Problem::unprocessable("invalid_department", detail),
            E::DepartmentExists => Problem::new(StatusCode::CONFLICT, "department_exists", detail),
            E::NoSuchDepartment => Problem::not_found(detail),
            E::DepartmentInUse(_) => Problem::unprocessable("department_in_use", detail),
            E::Unavailable(cause) => Problem::unavailable(cause),
        }
    }
}
