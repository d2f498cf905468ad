//! `GET /v1/dev/inbox`: the messages the capture sink kept instead of sending (no provider
//! configured), for development and tests. Off unless `DEV_INBOX_ENABLED`; super admins only,
//! since bodies may hold one-time codes.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use events::http::{AuthUser, Json, Problem, Query};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

/// The context's settings.
pub mod settings;

pub use settings::Settings;

/// The dev inbox: captured outbound messages, when enabled.
pub struct Context {
    /// Whether `/v1/dev/inbox` is served.
    pub enabled: bool,
}

impl crate::context::BoundedContext for Context {
    type Settings = Settings;

    async fn build(
        _setup: &crate::context::Setup<'_>,
        settings: &Settings,
    ) -> Result<Self, crate::StartError> {
        Ok(Self {
            enabled: settings.dev_inbox_enabled,
        })
    }

    fn routes() -> OpenApiRouter<AppState> {
        router()
    }
}

/// The routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(inbox))
}

/// Filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Only messages to this recipient.
    recipient: Option<String>,
    /// Newest first, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// One captured message.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = DevMessage)]
pub struct Message {
    id: uuid::Uuid,
    tenant_id: String,
    channel: String,
    recipient: String,
    body: String,
    causation_id: String,
    status: String,
    created_at: DateTime<Utc>,
}

/// The captured messages.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DevInbox {
    /// Newest first.
    items: Vec<Message>,
}

/// Captured outbound messages (dev inbox).
///
/// Messages kept by the capture sink because no provider is configured (SMS codes, later
/// e-mails). Served only with DEV_INBOX_ENABLED=true (404 otherwise); super admins only (bodies
/// may hold one-time codes).
#[utoipa::path(
    get,
    path = "/v1/dev/inbox",
    params(Params),
    responses(
        (status = 200, description = "Newest first.", body = DevInbox),
        (status = 404, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn inbox(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Query(params): Query<Params>,
) -> Result<Response, Problem> {
    if !state.ctx.dev.enabled {
        return Err(Problem::not_found("No such route."));
    }
    if !who.is_super_admin() {
        return Err(Problem::forbidden(
            "Only a super admin may read the dev inbox.",
        ));
    }
    let limit = params.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(Problem::bad_request(
            "invalid_query",
            "limit must be 1 to 200.",
        ));
    }
    if params
        .recipient
        .as_deref()
        .is_some_and(|r| r.contains('\0'))
    {
        return Err(Problem::bad_request(
            "invalid_query",
            "recipient must not contain NUL.",
        ));
    }
    let messages: Vec<Message> = sqlx::query_as(
        "SELECT id, tenant_id, channel, recipient, body, causation_id, status, created_at
           FROM outbound_messages
          WHERE ($1::text IS NULL OR recipient = $1)
          ORDER BY created_at DESC, id DESC
          LIMIT $2",
    )
    .bind(params.recipient)
    .bind(limit)
    .fetch_all(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    Ok(Json(DevInbox { items: messages }).into_response())
}
