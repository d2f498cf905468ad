//! Payments reads: the list (keyset paged, filtered), a payment with its lines and refunds
//! (read-your-writes), its timeline for auditors (every event from the store, each with the
//! provider webhook that caused it), the revenue report ([`reports`]) and a tenant's catalog.
//!
//! Payments are for those who administer the tenant (`Principal::administers`): a super
//! admin, or the tenant's admin. Agents and customers see nothing of them; a payment one may
//! not see answers 404, as if it did not exist. The catalog (products, taxes) is for all of
//! the tenant's staff, agents included.

/// The revenue report.
pub mod reports;

use std::collections::HashMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use events::access::{Principal, Role};
use events::http::{AuthUser, Json, Problem, Query};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use uuid::Uuid;

use crate::http::filters::{one_of, plain};
use crate::http::scope::admin_scope;
use crate::http::{freshness, page};
use crate::AppState;

/// The context has no settings of its own.
pub use crate::context::NoSettings as Settings;

/// The payments context (its routes).
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
        .routes(routes!(detail))
        .routes(routes!(timeline))
        .routes(routes!(products))
        .routes(routes!(taxes))
        .merge(reports::router())
}

/// Every status a payment can be in (the `payments.status` column).
const STATUSES: [&str; 8] = [
    "requested",
    "link_created",
    "paid",
    "failed",
    "expired",
    "cancelled",
    "partially_refunded",
    "refunded",
];

/// The providers payments and webhooks come from (wire names).
pub(crate) const PROVIDERS: [&str; 2] = ["lyra", "stripe"];

/// True when `who` administers some tenant (or all): only they can see any payment.
fn reads_payments(who: &Principal) -> bool {
    matches!(
        who,
        Principal::Admin {
            role: Role::SuperAdmin,
            ..
        } | Principal::Admin {
            role: Role::TenantAdmin,
            tenant_id: Some(_),
            ..
        }
    )
}

/// A payment as the dashboard lists it (the `payments` read model).
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = Payment)]
pub struct PaymentView {
    /// The payment (aggregate) id.
    id: Uuid,
    /// The tenant paid.
    tenant_id: String,
    /// `lyra` or `stripe`.
    provider: String,
    /// `requested`, `link_created`, `paid`, `failed`, `expired`, `cancelled`,
    /// `partially_refunded` or `refunded`.
    status: String,
    /// ISO 4217 code.
    currency: String,
    /// Amount before tax, minor units.
    net: i64,
    /// Tax, minor units.
    tax: i64,
    /// What the customer pays (net + tax), minor units.
    total: i64,
    /// All refunds so far, minor units.
    refunded: i64,
    /// The tenant's reference of the customer.
    customer_reference: String,
    /// Shown to the customer.
    description: Option<String>,
    /// Where the customer pays, once the provider made a link.
    link_url: Option<String>,
    /// When the link stops working, if the provider said.
    link_expires_at: Option<DateTime<Utc>>,
    /// The provider's id of the order.
    provider_order_id: Option<String>,
    /// The provider's transaction, once paid.
    provider_reference: Option<String>,
    /// The latest failure (link refused, attempt failed).
    last_error: Option<String>,
    /// The latest provider report of money that moved and was not applied, as
    /// `{status}:{reason}` (`paid:duplicate_charge`, `paid:amount_mismatch`,
    /// `refunded:not_paid`, …): staff must act on it. Its webhook is in the timeline.
    attention: Option<String>,
    /// When that report came.
    attention_at: Option<DateTime<Utc>>,
    /// When it was requested.
    requested_at: DateTime<Utc>,
    /// When the provider confirmed it.
    paid_at: Option<DateTime<Utc>>,
    /// Last change.
    updated_at: DateTime<Utc>,
    /// The aggregate version this row reflects.
    version: i64,
}

/// The payment columns, table alias `p`.
const COLUMNS: &str = "p.id, p.tenant_id, p.provider, p.status, p.currency, p.net, p.tax, \
     p.total, p.refunded, p.customer_reference, p.description, p.link_url, p.link_expires_at, \
     p.provider_order_id, p.provider_reference, p.last_error, p.attention, p.attention_at, \
     p.requested_at, p.paid_at, \
     p.updated_at, p.version";

/// Filters and page of the list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// `requested`, `link_created`, `paid`, `failed`, `expired`, `cancelled`,
    /// `partially_refunded` or `refunded`.
    status: Option<String>,
    /// `lyra` or `stripe`.
    provider: Option<String>,
    /// A super admin may pick a tenant; a tenant admin always reads their own.
    tenant_id: Option<String>,
    /// Exactly this customer reference.
    customer_reference: Option<String>,
    /// `true`: only payments with a report that needs attention; `false`: only without.
    attention: Option<bool>,
    /// Page size, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// Opaque cursor from the previous page's `next_cursor`.
    cursor: Option<String>,
}

/// One page of payments, newest request first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentPage {
    /// The payments.
    items: Vec<PaymentView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// Payments.
///
/// Newest `requested_at` first; keyset cursor. A super admin reads every tenant's (or one, with
/// `tenant_id`); a tenant admin only their own tenant's (403 when naming another); agents and
/// customers 403. Amounts are integers in the currency's minor unit.
#[utoipa::path(
    get,
    path = "/v1/payments",
    operation_id = "list_payments",
    params(ListParams),
    responses(
        (status = 200, description = "A page.", body = PaymentPage)
    ),
    security(("bearer" = []))
)]
async fn list(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Query(params): Query<ListParams>,
) -> Result<Response, Problem> {
    let tenant = admin_scope(&who, plain(params.tenant_id, "tenant_id")?, "payments")?;
    let limit = page::limit(params.limit)?;
    one_of(&params.status, &STATUSES, "status")?;
    one_of(&params.provider, &PROVIDERS, "provider")?;
    let customer = plain(params.customer_reference, "customer_reference")?;
    // Only the filters asked for (see `page::Conditions`).
    let mut w = page::Conditions::after(0);
    w.text("p.tenant_id = ?", tenant);
    w.text("p.status = ?", params.status);
    w.text("p.provider = ?", params.provider);
    w.text("p.customer_reference = ?", customer);
    match params.attention {
        Some(true) => w.and("p.attention IS NOT NULL"),
        Some(false) => w.and("p.attention IS NULL"),
        None => {}
    }
    w.keyset(
        "p.requested_at, p.id",
        page::cursor(params.cursor.as_deref())?,
    );
    let limit_at = w.next_placeholder();
    let sql = format!(
        "SELECT {COLUMNS} FROM payments p{} ORDER BY p.requested_at DESC, p.id DESC LIMIT {}",
        w.sql(),
        limit_at
    );
    let query = w.bind(sqlx::query_as::<_, PaymentView>(&sql));
    let mut items: Vec<PaymentView> = query
        .bind(limit + 1)
        .fetch_all(&state.pool)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let next_cursor = page::finish(&mut items, limit, |p| {
        page::encode_cursor(p.requested_at, p.id)
    });
    Ok(Json(PaymentPage { items, next_cursor }).into_response())
}

/// Read-your-writes on a payment.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DetailParams {
    /// The version a command answered with.
    min_version: Option<i64>,
}

/// A line of a payment, as requested.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = PaymentLine)]
pub struct LineView {
    /// The product.
    product_id: String,
    /// Its name then.
    name: String,
    /// How many.
    quantity: i64,
    /// Its unit price then, minor units.
    unit_price: i64,
    /// Its tax's name then, if any.
    tax_name: Option<String>,
    /// Its tax's rate then, basis points.
    rate_bp: Option<i64>,
    /// Amount before tax.
    net: i64,
    /// Tax amount.
    tax: i64,
    /// Amount with tax.
    gross: i64,
}

/// A refund of a payment.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = PaymentRefund)]
pub struct RefundView {
    /// The `Refunded` event's sequence in the payment's stream (see the timeline).
    sequence: i64,
    /// This refund, minor units.
    amount: i64,
    /// The webhook that reported it.
    webhook_id: String,
    /// When.
    refunded_at: DateTime<Utc>,
}

/// Another charge of the customer for a payment already paid (a second checkout), which the
/// tenant must return.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = PaymentCharge)]
pub struct ChargeView {
    /// The provider's transaction (refund this one at the provider).
    provider_reference: String,
    /// Charged, minor units.
    amount: i64,
    /// Its currency.
    currency: String,
    /// Refunded of it so far, minor units.
    refunded: i64,
    /// `payment` (the charge that paid it, in `charges` only), `duplicate_charge` (the
    /// payment's amount again: it pays the payment as well as the first charge does) or
    /// `amount_mismatch` (another amount or currency).
    reason: String,
    /// The webhook that reported it.
    webhook_id: String,
    /// When.
    charged_at: DateTime<Utc>,
}

/// A payment with its lines and refunds.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct PaymentDetail {
    /// The payment.
    #[serde(flatten)]
    #[sqlx(flatten)]
    payment: PaymentView,
    /// Its lines, in order.
    #[schema(value_type = Vec<LineView>)]
    lines: sqlx::types::Json<Vec<LineView>>,
    /// Its refunds, in order.
    #[schema(value_type = Vec<RefundView>)]
    refunds: sqlx::types::Json<Vec<RefundView>>,
    /// The customer's other charges for it (duplicates to return), in order.
    #[schema(value_type = Vec<ChargeView>)]
    other_charges: sqlx::types::Json<Vec<ChargeView>>,
    /// Every charge of it, the one that paid it first, each with what was refunded of it:
    /// a refund shows on the charge it named even when the payment, kept by a duplicate,
    /// stays paid.
    #[schema(value_type = Vec<ChargeView>)]
    charges: sqlx::types::Json<Vec<ChargeView>>,
    /// What the tenant holds and must return, in the payment's currency, minor units: what it
    /// kept beyond the total (duplicates), and the charges in another amount not yet
    /// refunded. A charge in another currency is returned as `other_charges` lists it.
    to_return: i64,
}

/// A payment, its lines and its refunds in one statement, so the three come from one
/// snapshot (a refund the row does not count yet cannot show up beside it).
fn detail_sql() -> String {
    format!(
        "SELECT {COLUMNS},
                (SELECT coalesce(json_agg(json_build_object(
                            'product_id', l.product_id, 'name', l.name, 'quantity', l.quantity,
                            'unit_price', l.unit_price, 'tax_name', l.tax_name, 'rate_bp', l.rate_bp,
                            'net', l.net, 'tax', l.tax, 'gross', l.gross) ORDER BY l.n), '[]'::json)
                   FROM payment_lines l WHERE l.payment_id = p.id) AS lines,
                (SELECT coalesce(json_agg(json_build_object(
                            'sequence', r.sequence, 'amount', r.amount, 'webhook_id', r.webhook_id,
                            'refunded_at', r.refunded_at) ORDER BY r.sequence), '[]'::json)
                   FROM payment_refunds r WHERE r.payment_id = p.id) AS refunds,
                (SELECT coalesce(json_agg(json_build_object(
                            'provider_reference', c.provider_reference, 'amount', c.amount,
                            'currency', c.currency, 'refunded', c.refunded, 'reason', c.reason,
                            'webhook_id', c.webhook_id, 'charged_at', c.charged_at)
                            ORDER BY c.charged_at, c.provider_reference), '[]'::json)
                   FROM payment_charges c
                  WHERE c.payment_id = p.id AND c.reason <> 'payment') AS other_charges,
                (SELECT coalesce(json_agg(json_build_object(
                            'provider_reference', c.provider_reference, 'amount', c.amount,
                            'currency', c.currency, 'refunded', c.refunded, 'reason', c.reason,
                            'webhook_id', c.webhook_id, 'charged_at', c.charged_at)
                            ORDER BY c.reason <> 'payment', c.charged_at, c.provider_reference),
                            '[]'::json)
                   FROM payment_charges c WHERE c.payment_id = p.id) AS charges,
                (SELECT greatest(coalesce(sum(c.amount - c.refunded)
                                          FILTER (WHERE c.reason <> 'amount_mismatch'), 0)
                                 - CASE WHEN p.paid_at IS NULL THEN 0 ELSE p.total END, 0)
                        + coalesce(sum(c.amount - c.refunded)
                                   FILTER (WHERE c.reason = 'amount_mismatch'
                                             AND c.currency = p.currency), 0)
                   FROM payment_charges c WHERE c.payment_id = p.id)::bigint AS to_return
           FROM payments p
          WHERE p.id = $1"
    )
}

/// A payment id from a path; 404 when it is not a UUID (it names no payment).
fn payment_uuid(raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| Problem::not_found("payment not found"))
}

/// A payment.
///
/// With its lines (in order) and refunds (in order; `sequence` is the `Refunded` event's in the
/// payment's stream). Read-your-writes with `min_version`/`X-Min-Version` as for tenants.
/// Anyone who does not administer the payment's tenant gets 404.
#[utoipa::path(
    get,
    path = "/v1/payments/{id}",
    operation_id = "payment",
    params(("id" = Uuid, Path), ("X-Min-Version" = Option<i64>, Header), DetailParams),
    responses(
        (status = 200, description = "The payment.", body = PaymentDetail, headers(
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
    let id = payment_uuid(&id)?;
    let min_version = freshness::min_version(&headers, params.min_version)?;
    if !reads_payments(&who) {
        // Agents and customers see no payment; no need to wait for one.
        return Err(Problem::not_found("payment not found"));
    }
    let sql = detail_sql();
    let (row, stale) = freshness::read_at_least(
        state.read_wait,
        min_version,
        |d: &PaymentDetail| d.payment.version,
        || sqlx::query_as(&sql).bind(id).fetch_optional(&state.pool),
    )
    .await?;
    match row {
        Some(detail) if who.administers(&detail.payment.tenant_id) => {
            let version = detail.payment.version;
            let mut response = Json(detail).into_response();
            freshness::version_headers(response.headers_mut(), Some(version), stale);
            Ok(response)
        }
        // Another tenant's payment is answered as if it did not exist.
        _ => Err(Problem::not_found("payment not found")),
    }
}

/// One event of a payment's stream.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = PaymentTimelineEvent)]
pub struct TimelineEvent {
    /// Position in the payment's stream (1-based).
    sequence: i64,
    /// `Requested`, `Paid`, `Refunded`, …
    event_type: String,
    /// The event as stored (externally tagged: `{"Paid": {…}}`).
    payload: serde_json::Value,
    /// Tenant, actor, correlation, causation, request id.
    metadata: serde_json::Value,
    /// When it was stored.
    recorded_at: DateTime<Utc>,
    /// The provider webhook that caused it; `null` when none did (or its stream is not in
    /// the store).
    #[sqlx(skip)]
    webhook: Option<CausedBy>,
}

/// What the provider said, from a webhook's `Received` event.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = ReceivedWebhook)]
pub struct Received {
    /// `stripe` or `lyra`.
    provider: String,
    /// The provider's id of the event.
    provider_event_id: String,
    /// The provider's event type.
    event_type: String,
    /// When it arrived.
    received_at: DateTime<Utc>,
    /// The provider's body, parsed.
    payload: serde_json::Value,
}

/// The webhook behind an event of a payment.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = CausingWebhook)]
pub struct CausedBy {
    /// The webhook (aggregate) id.
    id: String,
    /// What it said.
    #[serde(flatten)]
    received: Received,
}

/// A payment's history for auditors.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = PaymentTimeline)]
pub struct Timeline {
    /// The payment.
    payment_id: Uuid,
    /// Its tenant.
    tenant_id: String,
    /// Every event, in order.
    events: Vec<TimelineEvent>,
}

/// The webhook an event payload names (`{"Paid": {"webhook_id": …}}`), if any.
fn caused_by(payload: &serde_json::Value) -> Option<&str> {
    payload
        .as_object()?
        .values()
        .next()?
        .get("webhook_id")?
        .as_str()
}

/// A payment's timeline (auditors).
///
/// Every event of the payment from the event store (always current), in order, each with the
/// provider webhook that caused it (`webhook`: what its `Received` event recorded, including
/// the provider's parsed body), or `null` when no webhook did. For super admins and the
/// payment's tenant admins; anyone else gets 404.
#[utoipa::path(
    get,
    path = "/v1/payments/{id}/timeline",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "The timeline.", body = Timeline)
    ),
    security(("bearer" = []))
)]
async fn timeline(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let payment_id = payment_uuid(&id)?;
    let aggregate_id = payment_id.to_string();
    let not_found = || Problem::not_found("payment not found");
    // The tenant is that of the stream's first event, as for audits: the store is always
    // current, even before the projector has written the payment's row.
    let tenant = sqlx::query_scalar::<_, Option<String>>(
        "SELECT metadata->>'tenant_id' FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = 1",
    )
    .bind(events::payments::PAYMENT)
    .bind(&aggregate_id)
    .fetch_optional(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?
    .flatten();
    // Agents and other tenants' admins learn nothing, not even that it exists.
    let tenant_id = tenant
        .filter(|t| who.administers(t))
        .ok_or_else(not_found)?;
    let mut events: Vec<TimelineEvent> = sqlx::query_as(
        "SELECT sequence, event_type, payload, metadata, recorded_at FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2
          ORDER BY sequence",
    )
    .bind(events::payments::PAYMENT)
    .bind(&aggregate_id)
    .fetch_all(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    let mut webhook_ids: Vec<String> = events
        .iter()
        .filter_map(|e| caused_by(&e.payload).map(str::to_owned))
        .collect();
    webhook_ids.sort();
    webhook_ids.dedup();
    let webhooks = received(&state, &webhook_ids).await?;
    for event in &mut events {
        event.webhook = caused_by(&event.payload).and_then(|id| webhooks.get(id).cloned());
    }
    Ok(Json(Timeline {
        payment_id,
        tenant_id,
        events,
    })
    .into_response())
}

/// The `Received` event of each webhook in `ids`, by webhook id, in one query (a payment's
/// events may name many webhooks). A webhook whose stream is missing or malformed is left
/// out.
async fn received(state: &AppState, ids: &[String]) -> Result<HashMap<String, CausedBy>, Problem> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, Option<serde_json::Value>)> = sqlx::query_as(
        "SELECT aggregate_id, payload->'Received' FROM events
          WHERE aggregate_type = $1 AND aggregate_id = ANY($2) AND sequence = 1",
    )
    .bind(events::webhooks::WEBHOOK)
    .bind(ids)
    .fetch_all(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, body)| {
            match serde_json::from_value::<Received>(body.unwrap_or_default()) {
                Ok(received) => Some((id.clone(), CausedBy { id, received })),
                Err(e) => {
                    // The timeline stays readable; the event itself still names the webhook.
                    tracing::warn!(webhook_id = %id, error = %e, "webhook stream does not start with Received");
                    None
                }
            }
        })
        .collect())
}

/// Whose catalog to read.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TaxParams {
    /// A super admin names the tenant; staff read their own.
    tenant_id: Option<String>,
}

/// Whose catalog to read, and which products.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ProductParams {
    /// A super admin names the tenant; staff read their own.
    tenant_id: Option<String>,
    /// Only products that may (`true`) or may not (`false`) be sold.
    active: Option<bool>,
}

/// A product of a catalog.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = Product)]
pub struct ProductView {
    /// Its id within the tenant.
    id: String,
    /// Display name.
    name: String,
    /// Unit price, minor units.
    unit_price: i64,
    /// ISO 4217 code.
    currency: String,
    /// The tax it carries, if any.
    tax_id: Option<String>,
    /// Whether it may be sold.
    active: bool,
    /// Last change.
    updated_at: DateTime<Utc>,
}

/// A tax of a catalog.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = Tax)]
pub struct TaxView {
    /// Its id within the tenant.
    id: String,
    /// Display name.
    name: String,
    /// Rate, basis points (2,000 = 20 %).
    rate_bp: i32,
    /// Whether prices include it.
    included: bool,
    /// Last change.
    updated_at: DateTime<Utc>,
}

/// A tenant's products.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProductList {
    /// The tenant.
    tenant_id: String,
    /// Its products, by name.
    items: Vec<ProductView>,
}

/// A tenant's taxes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaxList {
    /// The tenant.
    tenant_id: String,
    /// Its taxes, by name.
    items: Vec<TaxView>,
}

/// The tenant whose catalog `who` reads: the one asked for (a super admin must name one),
/// else their own; 403 unless `who` is staff of it.
fn catalog_tenant(who: &Principal, asked: Option<String>) -> Result<String, Problem> {
    let home = match who {
        Principal::Admin { tenant_id, .. } => tenant_id.clone(),
        _ => None,
    };
    let tenant = match asked.or(home) {
        Some(t) => t,
        None if who.is_super_admin() => {
            return Err(Problem::bad_request(
                "invalid_query",
                "A super admin names the tenant: tenant_id.",
            ))
        }
        None => return Err(Problem::forbidden("Only staff read a catalog.")),
    };
    if who.is_staff_of(&tenant) {
        Ok(tenant)
    } else {
        Err(Problem::forbidden(
            "You may only read your own tenant's catalog.",
        ))
    }
}

/// A tenant's products.
///
/// A tenant's catalog, for its staff (agents included); a super admin names the tenant with
/// `tenant_id` (400 without). Naming another tenant: 403. By name.
#[utoipa::path(
    get,
    path = "/v1/catalog/products",
    params(ProductParams),
    responses(
        (status = 200, description = "The products.", body = ProductList)
    ),
    security(("bearer" = []))
)]
async fn products(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Query(params): Query<ProductParams>,
) -> Result<Response, Problem> {
    let tenant = catalog_tenant(&who, plain(params.tenant_id, "tenant_id")?)?;
    let mut w = page::Conditions::after(1);
    if params.active.is_some() {
        w.and("active = ?");
    }
    let sql = format!(
        "SELECT id, name, unit_price, currency, tax_id, active, updated_at
           FROM catalog_products{} AND tenant_id = $1
          ORDER BY name, id",
        w.sql()
    );
    let mut query = sqlx::query_as::<_, ProductView>(&sql).bind(&tenant);
    if let Some(active) = params.active {
        query = query.bind(active);
    }
    let items = query
        .fetch_all(&state.pool)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    Ok(Json(ProductList {
        tenant_id: tenant,
        items,
    })
    .into_response())
}

/// A tenant's taxes.
///
/// A tenant's catalog, for its staff (agents included); a super admin names the tenant with
/// `tenant_id` (400 without). Naming another tenant: 403. By name.
#[utoipa::path(
    get,
    path = "/v1/catalog/taxes",
    params(TaxParams),
    responses(
        (status = 200, description = "The taxes.", body = TaxList)
    ),
    security(("bearer" = []))
)]
async fn taxes(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Query(params): Query<TaxParams>,
) -> Result<Response, Problem> {
    let tenant = catalog_tenant(&who, plain(params.tenant_id, "tenant_id")?)?;
    let items: Vec<TaxView> = sqlx::query_as(
        "SELECT id, name, rate_bp, included, updated_at
           FROM catalog_taxes WHERE tenant_id = $1
          ORDER BY name, id",
    )
    .bind(&tenant)
    .fetch_all(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    Ok(Json(TaxList {
        tenant_id: tenant,
        items,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(role: Role, tenant: Option<&str>) -> Principal {
        Principal::Admin {
            user_id: "u".into(),
            tenant_id: tenant.map(str::to_owned),
            role,
        }
    }

    #[test]
    fn an_event_names_the_webhook_inside_its_variant() {
        let paid = serde_json::json!({"Paid": {"amount": 100, "webhook_id": "w1"}});
        assert_eq!(caused_by(&paid), Some("w1"));
        let cancelled = serde_json::json!({"Cancelled": {"reason": "x"}});
        assert_eq!(caused_by(&cancelled), None);
        assert_eq!(caused_by(&serde_json::json!("Unit")), None);
    }

    #[test]
    fn only_administrators_list_payments_and_tenant_admins_only_their_own() {
        let sa = admin(Role::SuperAdmin, None);
        assert_eq!(admin_scope(&sa, None, "payments").ok(), Some(None));
        assert_eq!(
            admin_scope(&sa, Some("t2".into()), "payments").ok(),
            Some(Some("t2".into()))
        );
        let ta = admin(Role::TenantAdmin, Some("t1"));
        assert_eq!(
            admin_scope(&ta, None, "payments").ok(),
            Some(Some("t1".into()))
        );
        assert!(admin_scope(&ta, Some("t2".into()), "payments").is_err());
        assert!(admin_scope(&admin(Role::Agent, Some("t1")), None, "payments").is_err());
        let phone = Principal::Phone {
            user_id: "p".into(),
            tenant_id: "t1".into(),
        };
        assert!(admin_scope(&phone, None, "payments").is_err());
        assert!(!reads_payments(&phone));
    }

    #[test]
    fn agents_read_their_catalog_and_a_super_admin_names_one() {
        let agent = admin(Role::Agent, Some("t1"));
        assert_eq!(catalog_tenant(&agent, None).ok(), Some("t1".into()));
        assert!(catalog_tenant(&agent, Some("t2".into())).is_err());
        let sa = admin(Role::SuperAdmin, None);
        assert_eq!(
            catalog_tenant(&sa, None).err().map(|p| p.code),
            Some("invalid_query")
        );
        assert_eq!(
            catalog_tenant(&sa, Some("t2".into())).ok(),
            Some("t2".into())
        );
    }
}
