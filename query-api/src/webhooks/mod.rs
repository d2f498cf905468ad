//! Received provider webhooks: the list (keyset paged, filtered), a webhook with the
//! provider's body and its processing history from the store, and the webhooks that failed
//! verification (`webhook_rejections`).
//!
//! A webhook belongs to the tenant of the payment it named, or to `platform` when it named
//! none it knew. A super admin reads them all; a tenant admin only their tenant's; anyone else
//! none. A webhook one may not see answers 404, as if it did not exist. Rejections were never
//! accepted and belong to no tenant: only a super admin reads them.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use events::http::{AuthUser, Json, Problem, Query};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::http::filters::{one_of, plain};
use crate::http::scope::admin_scope;

/// The providers whose webhooks are received.
const WEBHOOK_PROVIDERS: [&str; 5] = ["lyra", "stripe", "signalwire", "assemblyai", "whatsapp"];
use crate::http::{freshness, page};
use crate::AppState;

/// The context has no settings of its own.
pub use crate::context::NoSettings as Settings;

/// The webhooks context (its routes).
pub struct Context;

impl crate::context::BoundedContext for Context {
    type Settings = Settings;

    async fn build(
        _setup: &crate::context::Setup<'_>,
        _settings: &Settings,
    ) -> Result<Self, crate::StartError> {
        Ok(Self)
    }

    fn routes() -> OpenApiRouter<AppState> {
        router()
    }
}

/// The routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(rejections))
        .routes(routes!(detail))
}

/// Where a webhook's processing stands (the `webhooks.status` column).
const STATUSES: [&str; 4] = ["received", "retrying", "processed", "dead"];

/// A webhook as admins list it (the `webhooks` read model).
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = Webhook)]
pub struct WebhookView {
    /// The webhook (aggregate) id, derived from provider and provider event id.
    id: Uuid,
    /// The tenant it concerns (the named payment's, the number's owner, the audio file's),
    /// else `platform`.
    tenant_id: String,
    /// `lyra`, `stripe`, `signalwire`, `assemblyai` or `whatsapp`.
    provider: String,
    /// The provider's id of the event.
    provider_event_id: String,
    /// The provider's event type.
    event_type: String,
    /// The payment it names, if any.
    payment_id: Option<String>,
    /// `received`, `retrying`, `processed` or `dead`.
    status: String,
    /// `applied`, `recorded` or `ignored`, once processed.
    outcome: Option<String>,
    /// Why, for people, once processed.
    detail: Option<String>,
    /// Processing attempts that failed.
    attempts: i32,
    /// The latest failure.
    last_error: Option<String>,
    /// When it is next tried; `null` once processed or dead.
    next_attempt_at: Option<DateTime<Utc>>,
    /// When it arrived.
    received_at: DateTime<Utc>,
    /// When processing finished.
    processed_at: Option<DateTime<Utc>>,
    /// Last change.
    updated_at: DateTime<Utc>,
    /// The aggregate version this row reflects.
    version: i64,
}

/// The webhook columns.
const COLUMNS: &str = "id, tenant_id, provider, provider_event_id, event_type, payment_id, \
     status, outcome, detail, attempts, last_error, next_attempt_at, received_at, processed_at, \
     updated_at, version";

/// Filters and page of the list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// A super admin may pick a tenant (or `platform`); a tenant admin always reads their
    /// own.
    tenant_id: Option<String>,
    /// `lyra`, `stripe`, `signalwire`, `assemblyai` or `whatsapp`.
    provider: Option<String>,
    /// `received`, `retrying`, `processed` or `dead`.
    status: Option<String>,
    /// Only webhooks naming this payment.
    payment_id: Option<String>,
    /// Only webhooks received at or after this instant (RFC 3339, or a date: its midnight UTC).
    from: Option<String>,
    /// Only webhooks received before this instant.
    to: Option<String>,
    /// Page size, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// Opaque cursor from the previous page's `next_cursor`.
    cursor: Option<String>,
}

/// An optional instant parameter; 400 `invalid_query` when it is not one.
fn instant(raw: Option<&str>, name: &str) -> Result<Option<DateTime<Utc>>, Problem> {
    raw.map(|raw| {
        crate::http::filters::parse_instant(raw).ok_or_else(|| {
            Problem::bad_request(
                "invalid_query",
                format!("{name} must be an RFC 3339 date-time or a date (YYYY-MM-DD)."),
            )
        })
    })
    .transpose()
}

/// One page of webhooks, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookPage {
    /// The webhooks.
    items: Vec<WebhookView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// Received webhooks.
///
/// Newest `received_at` first; keyset cursor. A super admin reads all (or one tenant's, or
/// `platform`'s: those that named no known payment); a tenant admin only their tenant's (403
/// when naming another); others 403.
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    operation_id = "list_webhooks",
    params(ListParams),
    responses(
        (status = 200, description = "A page.", body = WebhookPage)
    ),
    security(("bearer" = []))
)]
async fn list(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Query(params): Query<ListParams>,
) -> Result<Response, Problem> {
    let tenant = admin_scope(&who, plain(params.tenant_id, "tenant_id")?, "webhooks")?;
    let limit = page::limit(params.limit)?;
    one_of(&params.provider, &WEBHOOK_PROVIDERS, "provider")?;
    one_of(&params.status, &STATUSES, "status")?;
    let payment_id = plain(params.payment_id, "payment_id")?;
    // Only the filters asked for (see `page::Conditions`).
    let mut w = page::Conditions::after(0);
    w.text("tenant_id = ?", tenant);
    w.text("provider = ?", params.provider);
    w.text("status = ?", params.status);
    w.text("payment_id = ?", payment_id);
    w.time("received_at >= ?", instant(params.from.as_deref(), "from")?);
    w.time("received_at < ?", instant(params.to.as_deref(), "to")?);
    w.keyset("received_at, id", page::cursor(params.cursor.as_deref())?);
    let limit_at = w.next_placeholder();
    let sql = format!(
        "SELECT {COLUMNS} FROM webhooks{} ORDER BY received_at DESC, id DESC LIMIT {}",
        w.sql(),
        limit_at
    );
    let query = w.bind(sqlx::query_as::<_, WebhookView>(&sql));
    let mut items: Vec<WebhookView> = query
        .bind(limit + 1)
        .fetch_all(&state.pool)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let next_cursor = page::finish(&mut items, limit, |w| {
        page::encode_cursor(w.received_at, w.id)
    });
    Ok(Json(WebhookPage { items, next_cursor }).into_response())
}

/// Read-your-writes on a webhook (a replay's answer).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DetailParams {
    /// The version a command answered with.
    min_version: Option<i64>,
}

/// One event of a webhook's stream.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = WebhookEvent)]
pub struct HistoryEvent {
    /// Position in the stream (1-based).
    sequence: i64,
    /// `Received`, `AttemptFailed`, `DeadLettered`, `Processed`, `ReplayRequested`,
    /// `HeldForTenant`.
    event_type: String,
    /// The event as stored (externally tagged).
    payload: serde_json::Value,
    /// When it was stored.
    recorded_at: DateTime<Utc>,
}

/// A webhook with what the provider sent and its processing history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookDetail {
    /// The webhook.
    #[serde(flatten)]
    webhook: WebhookView,
    /// The provider's body, parsed (from the `Received` event); `null` if the store has none.
    /// What it keeps about a person is stored sealed for them and shown opened here, or as
    /// the string `[erased]` once they were erased.
    payload: serde_json::Value,

    /// Every event of the webhook, in order.
    history: Vec<HistoryEvent>,
}

/// The provider's body of a webhook's history (opened): the `Received` event's `payload`,
/// parsed from the JSON text it was sealed as (`[erased]` once the person it is about was
/// erased), or as it is when kept in clear.
fn provider_body(history: &[HistoryEvent]) -> serde_json::Value {
    let kept = history
        .iter()
        .find(|e| e.sequence == 1)
        .and_then(|e| e.payload.get("Received"))
        .and_then(|r| r.get("payload"))
        .cloned()
        .unwrap_or_default();
    match kept {
        serde_json::Value::String(json) => {
            serde_json::from_str(&json).unwrap_or(serde_json::Value::String(json))
        }
        other => other,
    }
}

/// A webhook.
///
/// With the provider's parsed body (`payload`, from its `Received` event) and its processing
/// history (every event of its stream). Read-your-writes with `min_version`/`X-Min-Version` as
/// for tenants. Anyone who does not administer the webhook's tenant gets 404 (only super admins
/// see `platform` webhooks).
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    operation_id = "webhook",
    params(("id" = Uuid, Path), ("X-Min-Version" = Option<i64>, Header), DetailParams),
    responses(
        (status = 200, description = "The webhook.", body = WebhookDetail, headers(
            ("X-Read-Version" = i64, description = "The version the row reflects."),
            ("X-Read-Stale" = String, description = "`true` when the read gave up waiting for `min_version`.")
        ))
    ),
    security(("bearer" = []))
)]
async fn detail(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<DetailParams>,
) -> Result<Response, Problem> {
    let not_found = || Problem::not_found("webhook not found");
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let min_version = freshness::min_version(&headers, params.min_version)?;
    // Agents and customers see no webhook; no need to wait for one.
    admin_scope(&who, None, "webhooks").map_err(|_| not_found())?;
    let sql = format!("SELECT {COLUMNS} FROM webhooks WHERE id = $1");
    let (row, stale) = freshness::read_at_least(
        state.read_wait,
        min_version,
        |w: &WebhookView| w.version,
        || sqlx::query_as(&sql).bind(id).fetch_optional(&state.pool),
    )
    .await?;
    // Another tenant's (or the platform's) webhook is answered as if it did not exist.
    let webhook = row
        .filter(|w| who.administers(&w.tenant_id))
        .ok_or_else(not_found)?;
    let mut history: Vec<HistoryEvent> = sqlx::query_as(
        "SELECT sequence, event_type, payload, recorded_at FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2
          ORDER BY sequence",
    )
    .bind(events::webhooks::WEBHOOK)
    .bind(id.to_string())
    .fetch_all(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    // A payload kept sealed for the person it is about is shown opened (docs/privacy.md).
    state
        .keyring
        .open_values(history.iter_mut().map(|e| &mut e.payload).collect())
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let version = webhook.version;
    let mut response = Json(WebhookDetail {
        webhook,
        payload: provider_body(&history),
        history,
    })
    .into_response();
    freshness::version_headers(response.headers_mut(), Some(version), stale);
    Ok(response)
}

/// Filters and page of the rejections.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RejectionParams {
    /// `lyra`, `stripe`, `signalwire`, `assemblyai` or `whatsapp`.
    provider: Option<String>,
    /// Only rejections with a smaller id (the previous page's `next_before`).
    #[param(minimum = 1)]
    before: Option<i64>,
    /// Page size, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// A webhook that failed verification.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = WebhookRejection)]
pub struct RejectionView {
    /// Its number (newer is greater).
    id: i64,
    /// The provider it claimed to come from.
    provider: String,
    /// A stable code: `missing_signature`, `bad_signature`, `stale_timestamp`, …
    reason: String,
    /// The signature as received (at most 512 characters).
    signature: Option<String>,
    /// The body's shape, never its content: `json keys: …`, `form fields: …` or `unparsed`
    /// (rejections logged before this was the first 2 KiB were blanked).
    body_excerpt: String,
    /// The body's full size.
    body_bytes: i32,
    /// Hex SHA-256 of the body, to find it in the provider's delivery log.
    body_sha256: Option<String>,
    /// When it arrived.
    received_at: DateTime<Utc>,
    /// Until when a super admin may replay it (`POST /v1/webhooks/rejections/{id}/replay`
    /// on command-api); null once its sealed request is erased, or when it was too large to
    /// keep.
    replayable_until: Option<DateTime<Utc>>,
    /// When a replay passed verification, and the webhook(s) it became.
    replayed_at: Option<DateTime<Utc>>,
    replayed_webhook_id: Option<String>,
}

/// One page of rejections, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = WebhookRejectionPage)]
pub struct RejectionPage {
    /// The rejections.
    items: Vec<RejectionView>,
    /// Pass as `before` for older ones; null on the last page.
    next_before: Option<i64>,
}

/// Webhooks that failed verification.
///
/// Newest first (command-api keeps the newest 1,000). Super admins only (others 403). `before`
/// (the previous page's `next_before`) pages back.
#[utoipa::path(
    get,
    path = "/v1/webhooks/rejections",
    params(RejectionParams),
    responses(
        (status = 200, description = "A page.", body = RejectionPage)
    ),
    security(("bearer" = []))
)]
async fn rejections(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Query(params): Query<RejectionParams>,
) -> Result<Response, Problem> {
    if !who.is_super_admin() {
        return Err(Problem::forbidden(
            "Only a super admin reads rejected webhooks.",
        ));
    }
    let limit = page::limit(params.limit)?;
    one_of(&params.provider, &WEBHOOK_PROVIDERS, "provider")?;
    if params.before.is_some_and(|b| b < 1) {
        return Err(Problem::bad_request(
            "invalid_query",
            "before must be a rejection id (1 or more).",
        ));
    }
    let mut w = page::Conditions::after(0);
    w.text("provider = ?", params.provider);
    w.int("id < ?", params.before);
    let limit_at = w.next_placeholder();
    let sql = format!(
        "SELECT id, provider, reason, signature, body_excerpt, body_bytes, body_sha256, received_at,
                CASE WHEN sealed_request IS NULL OR replayable_until <= now() THEN NULL
                     ELSE replayable_until END AS replayable_until,
                replayed_at, replayed_webhook_id
           FROM webhook_rejections{} ORDER BY id DESC LIMIT {}",
        w.sql(),
        limit_at
    );
    let query = w.bind(sqlx::query_as::<_, RejectionView>(&sql));
    let mut items: Vec<RejectionView> = query
        .bind(limit + 1)
        .fetch_all(&state.pool)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let next_before = page::finish(&mut items, limit, |r| r.id);
    Ok(Json(RejectionPage { items, next_before }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sequence: i64, payload: serde_json::Value) -> HistoryEvent {
        HistoryEvent {
            sequence,
            event_type: "x".into(),
            payload,
            recorded_at: DateTime::<Utc>::default(),
        }
    }

    #[test]
    fn the_provider_body_is_that_of_the_received_event() {
        let history = vec![
            event(
                1,
                serde_json::json!({"Received": {"provider": "stripe", "payload": {"id": "evt_1"}}}),
            ),
            event(
                2,
                serde_json::json!({"ReplayRequested": {"at": "2026-01-01T00:00:00Z"}}),
            ),
        ];
        assert_eq!(provider_body(&history), serde_json::json!({"id": "evt_1"}));
        assert_eq!(provider_body(&history[1..]), serde_json::Value::Null);
    }
}
