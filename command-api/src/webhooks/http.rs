//! Webhook routes: each registered provider's ingestion paths (`POST /api/webhooks/…`,
//! verified by the provider, received here), and the commands on received webhooks:
//! `process` (the process manager's, service tokens only), `replay` (an admin's), and the
//! replay of a refused request (a super admin's).

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use events::access::Principal;
use events::http::{AuthUser, Json, Problem, RawBody, RequestIds};
use events::identity::PLATFORM_TENANT;
use events::webhooks::{Outcome, WebhookEvent, WEBHOOK};
use serde_json::json;
use uuid::Uuid;

use super::aggregate::{Status, WebhookCommand, WebhookError};
use super::provider::{Pending, WebhookProvider, WebhookRequest};
use super::service::{
    caused_by, stream_tenant, Processing, MAX_WEBHOOK_BYTES, REPLAYING, UNMATCHED,
};
use crate::http::error::DomainProblem;
use crate::AppState;

/// The routes: the ingestion paths of `providers`, and the commands on received webhooks.
pub(crate) fn router(providers: &'static [&'static dyn WebhookProvider]) -> Router<AppState> {
    let mut ingestion = Router::new();
    for provider in providers {
        for path in provider.paths() {
            ingestion = ingestion.route(
                path,
                post(
                    move |State(state): State<AppState>,
                          ids: RequestIds,
                          uri: Uri,
                          headers: HeaderMap,
                          RawBody(body): RawBody| async move {
                        let request = WebhookRequest {
                            ids,
                            uri,
                            headers,
                            body,
                        };
                        provider.deliver(&state, request).await
                    },
                ),
            );
        }
    }
    ingestion
        .layer(DefaultBodyLimit::max(MAX_WEBHOOK_BYTES))
        .route("/v1/webhooks/{id}/process", post(process))
        .route("/v1/webhooks/{id}/replay", post(replay))
        .route(
            "/v1/webhooks/rejections/{id}/replay",
            post(replay_rejection),
        )
}

fn webhook_uuid(raw: &str) -> Result<String, Problem> {
    Uuid::parse_str(raw)
        .map(|u| u.to_string())
        .map_err(|_| WebhookError::NotFound.problem())
}

/// Processes a pending webhook: turns it into a payment command and records the outcome, or
/// the failure (retried later; dead-lettered after the last attempt). Only the platform's
/// process manager calls it.
async fn process(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    if !matches!(who, Principal::Service { .. }) {
        return Err(Problem::forbidden(
            "Webhooks are processed by the platform.",
        ));
    }
    let id = webhook_uuid(&raw)?;
    let webhook = state.ctx.webhooks.bus.load(&id).await?;
    let Some(received) = webhook.received().cloned() else {
        return Err(WebhookError::NotFound.problem());
    };
    if !webhook.due(state.clock.now()) {
        // Processed, dead, or a retry asked for before its time: nothing to do now.
        let status = match webhook.status() {
            Status::Pending => "retrying",
            other => status_name(other),
        };
        return Ok(Json(json!({"id": id, "status": status})).into_response());
    }
    let tenant = stream_tenant(&state.pool, WEBHOOK, &id)
        .await?
        .unwrap_or_else(|| PLATFORM_TENANT.to_owned());
    let pending = Pending {
        id: &id,
        event_type: &received.event_type,
        payload: &received.payload,
        received_by: (tenant != PLATFORM_TENANT).then_some(tenant.as_str()),
        ids: &ids,
    };
    let processing = match crate::Contexts::webhook_providers()
        .iter()
        .find(|p| p.provider() == received.provider)
    {
        Some(provider) => provider.process(&state, &pending).await,
        // Kept until a process that knows the provider takes it (retried, then dead-lettered
        // where an operator sees it).
        None => Processing::Retry("no provider is registered for it".into()),
    };
    let at = state.clock.now();
    let command = match &processing {
        Processing::Done(outcome, payment, detail) => WebhookCommand::RecordOutcome {
            outcome: *outcome,
            payment_id: payment.as_ref().and_then(|p| p.payment_id.clone()),
            tenant_id: payment.as_ref().map(|p| p.tenant_id.clone()),
            detail: detail.clone(),
            unmatched_reference: None,
            at,
        },
        Processing::Unmatched(reference) => WebhookCommand::RecordOutcome {
            outcome: Outcome::Ignored,
            payment_id: None,
            tenant_id: None,
            detail: UNMATCHED.into(),
            unmatched_reference: Some(reference.clone()),
            at,
        },
        Processing::Retry(error) => WebhookCommand::RecordFailure {
            error: error.clone(),
            at,
        },
        Processing::Held(tenant_id) => WebhookCommand::Hold {
            tenant_id: tenant_id.clone(),
            at,
        },
    };
    let (c, recorded) = state
        .ctx
        .webhooks
        .bus
        .execute_with_events(&id, None, command, &caused_by(&ids, &tenant, &id))
        .await?;
    let dead = recorded
        .iter()
        .any(|e| matches!(e, WebhookEvent::DeadLettered { .. }));
    let body = match processing {
        Processing::Retry(error) if dead => json!({
            "id": id, "version": c.version, "status": "dead", "error": error,
        }),
        Processing::Done(outcome, payment, detail) => json!({
            "id": id, "version": c.version, "status": "processed", "outcome": outcome,
            "payment_id": payment.and_then(|p| p.payment_id), "detail": detail,
        }),
        Processing::Retry(error) => json!({
            "id": id, "version": c.version, "status": "retrying", "error": error,
        }),
        Processing::Held(tenant) => json!({
            "id": id, "version": c.version, "status": "held", "tenant_id": tenant,
        }),
        Processing::Unmatched(reference) => json!({
            "id": id, "version": c.version, "status": "processed", "outcome": Outcome::Ignored,
            "payment_id": null, "detail": UNMATCHED, "unmatched_reference": reference,
        }),
    };
    Ok(Json(body).into_response())
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::None => "none",
        Status::Pending => "pending",
        Status::Processed => "processed",
        Status::Dead => "dead",
    }
}

async fn replay(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let id = webhook_uuid(&raw)?;
    let tenant = stream_tenant(&state.pool, WEBHOOK, &id)
        .await?
        .ok_or_else(|| WebhookError::NotFound.problem())?;
    // Unattributed webhooks belong to the platform: only a super admin (or the platform's
    // own workers) replays them.
    let platform = who.is_super_admin() || matches!(who, Principal::Service { .. });
    if !platform && (tenant == PLATFORM_TENANT || !who.administers(&tenant)) {
        return Err(WebhookError::NotFound.problem());
    }
    let metadata = ids.metadata(&tenant, who.user_id(), who.actor_kind());
    let command = WebhookCommand::Replay {
        at: state.clock.now(),
    };
    let c = state
        .ctx
        .webhooks
        .bus
        .execute(&id, None, command, &metadata)
        .await?;
    Ok(crate::http::accepted(
        StatusCode::OK,
        WEBHOOK,
        &c.aggregate_id,
        c.version,
    ))
}

/// A refused request, unsealed.
#[derive(serde::Deserialize)]
struct SealedRequest {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// `POST /v1/webhooks/rejections/{id}/replay` (super admins): a refused webhook, kept sealed
/// for a week, is verified again as it was received — with today's secrets and settings —
/// and, if it now passes, received (once: a webhook received since answers as a duplicate).
/// 404 for an unknown rejection, 410 `replay_expired` once its request is erased (or was
/// too large to keep), 422 `still_rejected` when it still fails.
async fn replay_rejection(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    use base64::Engine;
    if !who.is_super_admin() {
        return Err(Problem::forbidden(
            "Refused webhooks belong to no tenant: super admins replay them.",
        ));
    }
    let not_found = || Problem::not_found("no such rejected webhook");
    let id: i64 = raw.parse().map_err(|_| not_found())?;
    let row: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT sealed_request FROM webhook_rejections
          WHERE id = $1 AND (replayable_until IS NULL OR replayable_until > now())",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    let exists = row.is_some()
        || sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM webhook_rejections WHERE id = $1)",
        )
        .bind(id)
        .fetch_one(&state.pool)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let expired = || {
        Problem::new(
            StatusCode::GONE,
            "replay_expired",
            "This refused webhook is no longer kept (a week after it came, or too large to keep).",
        )
    };
    let sealed = match row {
        Some((Some(sealed),)) => sealed,
        _ if exists => return Err(expired()),
        _ => return Err(not_found()),
    };
    let request: SealedRequest = state
        .sealing
        .open(&sealed)
        .ok()
        .and_then(|plain| serde_json::from_str(&plain).ok())
        .ok_or_else(expired)?;
    let body = base64::engine::general_purpose::STANDARD
        .decode(&request.body)
        .map_err(|_| expired())?;
    let uri: Uri = request.path.parse().map_err(|_| expired())?;
    let mut headers = HeaderMap::new();
    for (name, value) in &request.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    let provider = crate::Contexts::webhook_providers()
        .iter()
        .find(|p| p.paths().contains(&uri.path()))
        .ok_or_else(|| {
            Problem::unprocessable(
                "still_rejected",
                "The webhook was sent to no webhook endpoint.",
            )
        })?;
    let request = WebhookRequest {
        ids,
        uri,
        headers,
        body: body.into(),
    };
    let answer = REPLAYING
        .scope((), provider.deliver(&state, request))
        .await?;
    // Passed: the rejection says what it became.
    let (parts, answer_body) = answer.into_parts();
    let bytes = axum::body::to_bytes(answer_body, 1024 * 1024)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let received: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let webhook = received["id"].as_str().map(str::to_owned).or_else(|| {
        received["ids"].as_array().map(|ids| {
            ids.iter()
                .filter_map(|i| i.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
    });
    sqlx::query(
        "UPDATE webhook_rejections SET replayed_at = now(), replayed_webhook_id = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(webhook)
    .execute(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    Ok(Response::from_parts(parts, axum::body::Body::from(bytes)))
}

impl DomainProblem for crate::webhooks::aggregate::WebhookError {
    fn problem(&self) -> Problem {
        match self {
            crate::webhooks::aggregate::WebhookError::NotFound => {
                Problem::not_found(self.to_string())
            }
        }
    }
}
