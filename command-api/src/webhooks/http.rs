//! Webhook routes: each registered provider's ingestion paths (`POST /api/webhooks/…`,
//! verified by the provider, received here), and the commands on received webhooks:
//! `process` (the process manager's, service tokens only), `replay` (an admin's), and the
//! replay of a refused request (a super admin's).

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use events::access::Principal;
use events::http::{AuthUser, Json, Problem, RequestIds};
use events::identity::PLATFORM_TENANT;
use events::webhooks::{Outcome, WebhookEvent, WEBHOOK};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::aggregate::{Status, WebhookCommand, WebhookError};
use super::provider::{Pending, WebhookProvider, WebhookRequest};
use super::service::{
    caused_by, stream_tenant, Processing, MAX_WEBHOOK_BYTES, REPLAYING, UNMATCHED,
};
use crate::http::error::DomainProblem;
use crate::AppState;

/// The routes: the ingestion paths of `providers`, and the commands on received webhooks.
pub(crate) fn router(
    providers: &'static [&'static dyn WebhookProvider],
) -> OpenApiRouter<AppState> {
    let mut ingestion = OpenApiRouter::new();
    for provider in providers {
        for route in provider.routes() {
            ingestion = ingestion.routes(route);
        }
    }
    ingestion
        .layer(DefaultBodyLimit::max(MAX_WEBHOOK_BYTES))
        .routes(routes!(process))
        .routes(routes!(replay))
        .routes(routes!(replay_rejection))
}

fn webhook_uuid(raw: &str) -> Result<String, Problem> {
    Uuid::parse_str(raw)
        .map(|u| u.to_string())
        .map_err(|_| WebhookError::NotFound.problem())
}

/// Process a received webhook.
///
/// The platform's command (the projector's webhook process manager, with a platform service
/// token; any other caller: 403). Turns a pending webhook into what it reports — a payment
/// status (Stripe, Lyra), or an SMS or call event for the tenant owning the number (SignalWire;
/// `ignored: no tenant owns the number` when nobody does), or a transcript (AssemblyAI: fetched
/// with `GET /v2/transcript/{id}`, then TranscriptCompleted or TranscriptFailed on the audio
/// file; see `POST /api/webhooks/assemblyai`), or a WhatsApp message or status for the tenant
/// whose session has the number (see `POST /api/webhooks/whatsapp`) — with the webhook's
/// Received event as `causation_id`, and records the outcome on the webhook (event Processed):
/// `applied` (it changed the payment; `detail` names the payment event, e.g. `Paid`),
/// `recorded` (the payment recorded it without applying it: the reason of its
/// ProviderStatusIgnored such as `provider_mismatch`, `amount_mismatch`, `already_paid`,
/// `payment_paid`, `refund_exceeds_paid`), or `ignored` (an event type the platform does not
/// act on, a webhook naming no payment, no such payment, a failure naming a payment intent no
/// payment was paid with; a refund naming only a Stripe payment intent no payment was paid or
/// charged again with is `ignored` with `unmatched_reference` set to that intent, and replayed
/// by the projector's `payment-references` worker as soon as a payment is paid with it). When
/// the payment had already taken the webhook into account (a replay, or an attempt whose
/// outcome was lost), the outcome is what it recorded then, its detail ending in ` (recorded
/// before)`. A failure that may pass (a transcript not final yet, AssemblyAI unreachable, a
/// database outage; `error` is a stable reason) answers `status: retrying` and appends
/// AttemptFailed, retried after 2 s, 4 s, 8 s … (at most 1 h); the 12th failure appends
/// DeadLettered instead and answers `status: dead` (the webhook then waits for a replay). A
/// webhook that is not due (processed, dead-lettered, or asked for before the retry time of its
/// last failed attempt: `status: retrying`) answers `{id, status}` and appends nothing. 404 for
/// an unknown id.
///
/// Processes a pending webhook: turns it into a payment command and records the outcome, or
/// the failure (retried later; dead-lettered after the last attempt). Only the platform's
/// process manager calls it.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/process",
    params(("id" = Uuid, Path, description = "The webhook.")),
    responses(
        (status = 200, description = "Processed, to be retried, or not pending.", body = ProcessAnswer),
        (status = 400, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
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
        let answer = ProcessAnswer {
            id,
            status,
            ..ProcessAnswer::default()
        };
        return Ok(Json(answer).into_response());
    }
    let tenant = stream_tenant(&state.pool, WEBHOOK, &id)
        .await?
        .unwrap_or_else(|| PLATFORM_TENANT.to_owned());
    let opened = super::service::opened_payload(&state, &received.payload).await?;
    let provider = crate::Contexts::webhook_providers()
        .iter()
        .find(|p| p.provider() == received.provider);
    let processing = match (provider, &opened) {
        (Some(provider), Some(payload)) => {
            let pending = Pending {
                id: &id,
                event_type: &received.event_type,
                payload,
                received_by: (tenant != PLATFORM_TENANT).then_some(tenant.as_str()),
                ids: &ids,
            };
            provider.process(&state, &pending).await
        }
        // Nothing is done any more for someone erased (docs/privacy.md).
        (Some(_), None) => Processing::Done(
            events::webhooks::Outcome::Ignored,
            None,
            "the person it is about was erased".into(),
        ),
        // Kept until a process that knows the provider takes it (retried, then dead-lettered
        // where an operator sees it).
        (None, _) => Processing::Retry("no provider is registered for it".into()),
    };
    let command = command_for(&processing, state.clock.now());
    let (c, recorded) = state
        .ctx
        .webhooks
        .bus
        .execute_with_events(&id, None, command, &caused_by(&ids, &tenant, &id))
        .await?;
    let dead = recorded
        .iter()
        .any(|e| matches!(e, WebhookEvent::DeadLettered { .. }));
    Ok(Json(ProcessAnswer::of(id, c.version, processing, dead)).into_response())
}

/// The command that records what processing a webhook did.
fn command_for(processing: &Processing, at: chrono::DateTime<chrono::Utc>) -> WebhookCommand {
    match processing {
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
    }
}

impl ProcessAnswer {
    /// The answer once processing is recorded at `version` (`dead`: the failure
    /// dead-lettered it).
    fn of(id: String, version: u64, processing: Processing, dead: bool) -> Self {
        let answer = ProcessAnswer {
            id,
            version: Some(version),
            ..ProcessAnswer::default()
        };
        match processing {
            Processing::Retry(error) => ProcessAnswer {
                status: if dead { "dead" } else { "retrying" },
                error: Some(error),
                ..answer
            },
            Processing::Done(outcome, payment, detail) => ProcessAnswer {
                status: "processed",
                outcome: Some(outcome),
                payment_id: Some(payment.and_then(|p| p.payment_id)),
                detail: Some(detail),
                ..answer
            },
            Processing::Held(tenant) => ProcessAnswer {
                status: "held",
                tenant_id: Some(tenant),
                ..answer
            },
            Processing::Unmatched(reference) => ProcessAnswer {
                status: "processed",
                outcome: Some(Outcome::Ignored),
                payment_id: Some(None),
                detail: Some(UNMATCHED.to_owned()),
                unmatched_reference: Some(reference),
                ..answer
            },
        }
    }
}

/// What processing a webhook did: `processed` (the outcome is recorded), `retrying` or
/// `dead` (failed for now, or dead-lettered after the last attempt: `error`), `held` (kept
/// for a tenant: `tenant_id`); or, when it was not due, only its `id` and `status`.
#[derive(Debug, Default, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ProcessAnswer {
    /// The webhook.
    #[schema(value_type = Uuid)]
    id: String,
    /// The webhook's version after the command (absent when nothing was done).
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    /// `processed`, `retrying`, `dead` or `held` (when nothing was done: where it stands).
    status: &'static str,
    /// What processing made of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<Outcome>,
    /// The payment concerned, if any (with an outcome).
    #[serde(skip_serializing_if = "Option::is_none")]
    payment_id: Option<Option<String>>,
    /// The event it caused or why it changed nothing, e.g. `Paid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    /// Why it failed for now.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The tenant it is held for.
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_id: Option<String>,
    /// The provider reference no payment was found for.
    #[serde(skip_serializing_if = "Option::is_none")]
    unmatched_reference: Option<String>,
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::None => "none",
        Status::Pending => "pending",
        Status::Processed => "processed",
        Status::Dead => "dead",
    }
}

/// Replay a webhook.
///
/// Makes a processed or dead-lettered webhook pending again, so the platform processes it once
/// more; one waiting out its back-off after a failed attempt is processed now (its attempts
/// counted from the first); one already due appends nothing. A payment applies a webhook only
/// once, so a replay changes nothing and reports what the payment recorded the first time (e.g.
/// `applied: Paid (recorded before)`). Webhooks attributed to no tenant (`platform`) are
/// replayed by super admins (and platform services) only. A webhook the caller may not replay
/// answers 404, as an unknown id does. Event: ReplayRequested. Allowed: the webhook's tenant
/// admin, a super admin, or a platform service (the projector's `whatsapp-media-refetch` worker
/// replays the deliveries of files refused for an expired token when their session is connected
/// again; its `payment-references` worker replays refunds recorded as unmatched when a payment
/// is paid with the payment intent they name).
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/replay",
    params(("id" = Uuid, Path, description = "The webhook.")),
    responses(
        (status = 200, description = "Accepted (the version also in `ETag`).", body = crate::http::Accepted),
        (status = 400, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
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

/// Replay a refused webhook.
///
/// Super admins only (others 403): a webhook refused at verification (listed by query-api's
/// `GET /v1/webhooks/rejections`) is verified again exactly as it was received — its path and
/// query, the headers verification reads and its body, kept sealed for 7 days — with the
/// secrets and settings configured now (a rotated secret added, `BACKEND_URL` set). A
/// signature's age is no refusal on a replay (the delivery is days old by design). If it passes
/// it is received as the endpoint would have received it (200, the endpoint's answer
/// `{received, id, duplicate}`; a webhook received since — a provider's retry, an earlier
/// replay — answers `duplicate: true` and appends nothing), and the rejection records when and
/// what it became. 422 `still_rejected` (with the reason) when it still fails, logging nothing
/// more; 410 `replay_expired` once its request is erased (a week on) or when it was not kept (a
/// body over 256 KiB); 404 for an unknown id.
///
/// `POST /v1/webhooks/rejections/{id}/replay` (super admins): a refused webhook, kept sealed
/// for a week, is verified again as it was received — with today's secrets and settings —
/// and, if it now passes, received (once: a webhook received since answers as a duplicate).
/// 404 for an unknown rejection, 410 `replay_expired` once its request is erased (or was
/// too large to keep), 422 `still_rejected` when it still fails.
#[utoipa::path(
    post,
    path = "/v1/webhooks/rejections/{id}/replay",
    params(("id" = i64, Path, description = "The rejection's id.")),
    responses(
        (status = 200, description = "Received: the answer of the provider's `POST /api/webhooks/…` endpoint (`{received, id, duplicate}`, or for WhatsApp `{received, ids, duplicates}`).", body = serde_json::Value),
        (status = 400, response = events::http::openapi::ProblemAnswer),
        (status = 410, response = events::http::openapi::ProblemAnswer),
        (status = 422, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn replay_rejection(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    if !who.is_super_admin() {
        return Err(Problem::forbidden(
            "Refused webhooks belong to no tenant: super admins replay them.",
        ));
    }
    let id: i64 = raw
        .parse()
        .map_err(|_| Problem::not_found("no such rejected webhook"))?;
    let (uri, headers, body) = super::service::kept_request(&state, id).await?;
    let provider = crate::Contexts::webhook_providers()
        .iter()
        .find(|p| p.serves(uri.path()))
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
        body,
    };
    let answer = REPLAYING
        .scope((), provider.deliver(&state, request))
        .await?;
    // Passed: the rejection says what it became.
    let (parts, answer_body) = answer.into_parts();
    let bytes = axum::body::to_bytes(answer_body, 1024 * 1024)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    super::service::record_replay(&state, id, &bytes).await?;
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
