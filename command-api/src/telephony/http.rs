//! Routes of telephony: a tenant's numbers (`PUT /v1/telephony/numbers/{number}`,
//! `POST …/release`), and what the webhook layer asks of it: who owns the number a
//! SignalWire callback concerns, and the processing of a callback.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use events::http::{AuthUser, Json, Problem, RequestIds};
use events::telephony::PHONE_NUMBER;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::aggregate::{PhoneNumberCommand, PhoneNumberError};
use crate::http::error::DomainProblem;
use crate::http::{accepted, administered_tenant, ForTenant};
use crate::identity::phone::PhoneNumber as E164;
use crate::AppState;

/// The routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(assign))
        .routes(routes!(release))
}

fn number(raw: &str) -> Result<String, Problem> {
    E164::parse(raw)
        .map(|n| n.as_str().to_owned())
        .ok_or_else(|| {
            Problem::unprocessable(
                "invalid_phone",
                "A number is international, in E.164 (+ and 8 to 15 digits).",
            )
        })
}

/// Assign a phone number to a tenant.
///
/// Gives the number to the tenant: SignalWire's callbacks about it (`POST
/// /api/webhooks/signalwire`) are then attributed to the tenant and processed for it. The
/// number is international, in E.164 (`+` and 8 to 15 digits, not starting with 0; spaces,
/// dots, dashes, brackets and a `00` prefix are accepted and normalized; 422 `invalid_phone`
/// otherwise); it is the aggregate's id, so a number has one owner at a time. A number nobody
/// owns is assigned; assigning it again to its owner appends nothing; a number another tenant
/// owns: 409 `number_taken` (it must be released first). Event: Assigned (aggregate
/// `phone_number`). Allowed: the tenant's admin (in their own tenant; naming another
/// `tenant_id`: 403), or a super admin naming `tenant_id` (422 `tenant_required` without);
/// agents, phone users and service tokens: 403. The caller is checked before the number.
#[utoipa::path(
    put,
    path = "/v1/telephony/numbers/{number}",
    params(("number" = String, Path, description = "The number, in E.164 (URL-encode `+` as `%2B` if your client would otherwise alter it).", example = "+33612345678")),
    request_body = ForTenant,
    responses(
        (status = 200, description = "Accepted: `id` is the number (E.164, as normalized) and `version` its new version (also in `ETag`). Pass the version to query-api as `min_version` to read your write.", body = crate::http::Accepted),
        (status = 409, response = events::http::openapi::ProblemAnswer),
        (status = 404, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn assign(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(raw): Path<String>,
    Json(body): Json<ForTenant>,
) -> Result<Response, Problem> {
    let tenant = administered_tenant(&state, &who, body.tenant_id).await?;
    let number = number(&raw)?;
    let command = PhoneNumberCommand::Assign {
        tenant_id: tenant.clone(),
        at: state.clock.now(),
    };
    let metadata = ids.metadata(&tenant, who.user_id(), who.actor_kind());
    let c = state
        .ctx
        .telephony
        .numbers
        .execute(&number, None, command, &metadata)
        .await?;
    Ok(accepted(
        StatusCode::OK,
        PHONE_NUMBER,
        &c.aggregate_id,
        c.version,
    ))
}

/// Release a phone number.
///
/// The tenant gives the number up: callbacks about it are attributed to `platform` again (and
/// recorded as ignored) until a tenant assigns it. A number the tenant does not own
/// (unassigned, another tenant's, or not a number in E.164) answers 404. Event: Released
/// (aggregate `phone_number`). Allowed: the tenant's admin (in their own tenant; naming another
/// `tenant_id`: 403), or a super admin naming `tenant_id` (422 `tenant_required` without);
/// agents, phone users and service tokens: 403.
#[utoipa::path(
    post,
    path = "/v1/telephony/numbers/{number}/release",
    params(("number" = String, Path, description = "The number, in E.164 (as assigned; the same normalization applies).", example = "+33612345678")),
    request_body = ForTenant,
    responses(
        (status = 200, description = "Accepted: `id` is the number (E.164) and `version` its new version (also in `ETag`). Pass the version to query-api as `min_version` to read your write.", body = crate::http::Accepted),
        (status = 404, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn release(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(raw): Path<String>,
    Json(body): Json<ForTenant>,
) -> Result<Response, Problem> {
    let tenant = administered_tenant(&state, &who, body.tenant_id).await?;
    let number = number(&raw).map_err(|_| PhoneNumberError::NotFound.problem())?;
    let command = PhoneNumberCommand::Release {
        tenant_id: tenant.clone(),
        at: state.clock.now(),
    };
    let metadata = ids.metadata(&tenant, who.user_id(), who.actor_kind());
    let c = state
        .ctx
        .telephony
        .numbers
        .execute(&number, None, command, &metadata)
        .await?;
    Ok(accepted(
        StatusCode::OK,
        PHONE_NUMBER,
        &c.aggregate_id,
        c.version,
    ))
}

impl DomainProblem for crate::telephony::aggregate::PhoneNumberError {
    fn problem(&self) -> Problem {
        use crate::telephony::aggregate::PhoneNumberError as E;
        match self {
            E::Taken => Problem::new(StatusCode::CONFLICT, "number_taken", self.to_string()),
            E::NotFound => Problem::not_found(self.to_string()),
        }
    }
}
