//! Routes of telephony: a tenant's numbers (`PUT /v1/telephony/numbers/{number}`,
//! `POST …/release`), and what the webhook layer asks of it: who owns the number a
//! SignalWire callback concerns, and the processing of a callback.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{post, put};
use axum::Router;
use events::http::{AuthUser, Json, Problem, RequestIds};
use events::telephony::PHONE_NUMBER;

use super::aggregate::{PhoneNumberCommand, PhoneNumberError};
use crate::http::error::DomainProblem;
use crate::http::{accepted, administered_tenant, ForTenant};
use crate::identity::phone::PhoneNumber as E164;
use crate::AppState;

/// The routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/telephony/numbers/{number}", put(assign))
        .route("/v1/telephony/numbers/{number}/release", post(release))
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
