//! HTTP routes of payments and catalogs.
//!
//! A payment is requested and its link made in one request: the payment is appended first,
//! then the provider is asked for a link, and its answer (link or refusal) is appended too.
//! If the process dies in between, the payment waits in `requested` and
//! `POST /v1/payments/{id}/link` makes the link.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use events::access::Principal;
use events::http::{AuthUser, Json, Problem, RequestIds};
use events::payments::{PaymentProvider, CATALOG, PAYMENT};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::aggregate::{LineRequest, Payment, PaymentAction, PaymentCommand, PaymentError, Status};
use super::catalog::CatalogCommand;
use super::service::{self, Answer, PaymentLink, PaymentLinkError};
use crate::http::error::DomainProblem;
use crate::http::idempotency::KeyedRequest;
use crate::http::{accepted, administered_tenant};
use crate::AppState;

/// The routes of the payments context.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(request))
        .routes(routes!(link))
        .routes(routes!(cancel))
        .routes(routes!(save_tax))
        .routes(routes!(save_product))
}

/// The payment `raw` names, if the caller administers its tenant; 404 otherwise (another
/// tenant's payment ids reveal nothing).
async fn payment_of(
    state: &AppState,
    who: &Principal,
    raw: &str,
) -> Result<(String, Payment), Problem> {
    let id = Uuid::parse_str(raw)
        .map_err(|_| PaymentError::NotFound.problem())?
        .to_string();
    let payment = state.ctx.payments.payments.load(&id).await?;
    match payment.tenant_id() {
        Some(t) if who.administers(t) => Ok((id, payment)),
        _ => Err(PaymentError::NotFound.problem()),
    }
}

/// Body of `POST /v1/payments`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestPayment {
    /// Optional client-chosen id (a UUID).
    #[serde(default)]
    pub id: Option<Uuid>,
    /// The tenant (super admins name it).
    #[serde(default)]
    pub tenant_id: Option<Uuid>,
    /// `lyra` (default) or `stripe`.
    #[serde(default)]
    pub provider: Option<PaymentProvider>,
    /// ISO 4217 code.
    #[schema(pattern = r"^[A-Z]{3}$")]
    pub currency: String,
    /// Products and quantities: 1–100 lines (422 `invalid_lines`).
    #[schema(min_items = 1, max_items = 100)]
    pub lines: Vec<LineRequest>,
    /// The tenant's reference of the customer.
    #[schema(min_length = 1, max_length = 128)]
    pub customer_reference: String,
    /// Shown to the customer.
    #[serde(default)]
    #[schema(max_length = 255)]
    pub description: Option<String>,
}

/// Request a payment (and its Lyra link).
///
/// Prices `lines` from the tenant's catalog (each product's price and tax; taxes rounded once
/// per line) and appends Requested. For `provider: lyra` (the default) the platform then asks
/// Lyra for a payment link (CreatePaymentOrder, `orderId` = the payment id, with `ipnTargetUrl`
/// = `{BACKEND_URL}/api/webhooks/lyra` when BACKEND_URL is set) and records its answer:
/// LinkCreated with `link`, or LinkFailed with `link_error` (`not_configured`,
/// `provider_unavailable` or Lyra's `errorCode` such as `INT_905`) — a refused link is still a
/// 201: the payment exists and waits in `requested` for `POST /v1/payments/{id}/link`. For
/// `provider: stripe` no link is made: the tenant's Stripe Checkout names the payment as
/// `client_reference_id` (or `metadata.payment_id`), and the answer is `{id, version}`. 409
/// `already_exists` when `id` is taken. 422 `tenant_required`, `invalid_currency`,
/// `invalid_lines` (1–100 lines of 1–10,000 units), `unknown_product`, `inactive_product`,
/// `currency_mismatch` (every product priced in `currency`), `invalid_amount` (a total above 0
/// and at most 1,000,000,000,000 minor units), `invalid_customer_reference`,
/// `invalid_description`. Events: Requested, then LinkCreated or LinkFailed (Lyra). Answer 201
/// with `Location: /v1/payments/{id}`. After a 503 the payment may exist without its link:
/// `POST /v1/payments/{id}/link` completes it. Allowed: the tenant's admin (in their own
/// tenant; naming another `tenant_id`: 403), or a super admin naming `tenant_id` (422
/// `tenant_required` without); agents, phone users and service tokens: 403.
#[utoipa::path(
    post,
    path = "/v1/payments",
    request_body = RequestPayment,
    responses(
        (status = 201, description = "Created: the payment and its version (also in `ETag`, `Location`); for Lyra, the link or why there is none.", body = PaymentAnswer),
        (status = 404, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn request(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    keyed: Option<Extension<KeyedRequest>>,
    Json(body): Json<RequestPayment>,
) -> Result<Response, Problem> {
    let tenant = administered_tenant(&state, &who, body.tenant_id).await?;
    let id = crate::http::client_id(body.id)?
        .or_else(|| keyed.as_deref().map(KeyedRequest::derived_id))
        .unwrap_or_else(Uuid::now_v7)
        .to_string();
    let request = service::Request {
        id,
        chosen: body.id.is_some(),
        keyed: keyed.is_some(),
        tenant,
        provider: body.provider.unwrap_or(PaymentProvider::Lyra),
        currency: body.currency,
        lines: body.lines,
        customer_reference: body.customer_reference,
        description: body.description,
    };
    let answer = service::request(&state, &ids, &who, request).await?;
    Ok(answer.into_response(StatusCode::CREATED))
}

/// The payment and its new version (also in `ETag`). For a Lyra payment both `link` and
/// `link_error` are present, exactly one of them non-null; for a Stripe payment (or a keyed
/// retry finding a Lyra payment that moved on without a link) neither is: the answer is the
/// plain `Accepted` shape.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentAnswer {
    /// The payment.
    #[schema(format = Uuid)]
    pub id: String,
    /// The payment's version after the command (after the link or its failure was recorded,
    /// for Lyra). Pass it to query-api as `min_version` to read your write.
    pub version: u64,
    /// The link, when one was made.
    pub link: Option<PaymentLink>,
    /// Why no link was made, when none was.
    pub link_error: Option<PaymentLinkError>,
}

impl Answer {
    fn into_response(self, status: StatusCode) -> Response {
        let mut response = accepted(
            status,
            PAYMENT,
            &self.committed.aggregate_id,
            self.committed.version,
        );
        if self.link.is_some() || self.link_error.is_some() {
            let body = PaymentAnswer {
                id: self.committed.aggregate_id,
                version: self.committed.version,
                link: self.link,
                link_error: self.link_error,
            };
            let headers = response.headers().clone();
            response = (status, Json(body)).into_response();
            for (name, value) in &headers {
                if name != axum::http::header::CONTENT_TYPE
                    && name != axum::http::header::CONTENT_LENGTH
                {
                    response.headers_mut().insert(name.clone(), value.clone());
                }
            }
        }
        response
    }
}

/// Make a payment's Lyra link.
///
/// For a payment still `requested`: after Lyra refused or was unavailable, or when the process
/// stopped between the payment and its link. Asks Lyra as `POST /v1/payments` does and records
/// the answer (LinkCreated or LinkFailed); a refused link is still a 200, with `link_error`.
/// 422 `not_awaiting_link` once the payment has a link or has moved on (paid, failed, expired,
/// cancelled); 409 `link_exists` when another link was recorded meanwhile. A payment of a
/// tenant the caller does not administer answers 404, as an unknown id does. Events:
/// LinkCreated or LinkFailed. Allowed: the payment's tenant admin or a super admin.
#[utoipa::path(
    post,
    path = "/v1/payments/{id}/link",
    params(("id" = Uuid, Path, description = "The payment.")),
    responses(
        (status = 200, description = "Accepted: the payment, its new version (also in `ETag`) and `link` or `link_error` (one of them non-null).", body = PaymentAnswer),
        (status = 400, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn link(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let (id, payment) = payment_of(&state, &who, &raw).await?;
    if !payment.takes_link() || payment.status() != Status::Requested {
        return Err(PaymentError::NotAwaitingLink.problem());
    }
    let tenant = payment.tenant_id().unwrap_or_default().to_owned();
    let answer = service::make_link(&state, &ids, &who, &tenant, &id).await?;
    Ok(answer.into_response(StatusCode::OK))
}

/// Body of a cancellation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    /// Why (≤ 500 characters).
    #[serde(default)]
    #[schema(max_length = 500)]
    pub reason: String,
}

/// Cancel a payment.
///
/// While it awaits payment (`requested`, `link_created` or `failed`). Cancelling a cancelled
/// payment appends nothing; a paid, refunded or expired one: 422 `not_cancellable`; 422
/// `invalid_reason` (more than 500 characters, or control characters). A payment of a tenant
/// the caller does not administer answers 404, as an unknown id does. Event: Cancelled.
/// Allowed: the payment's tenant admin or a super admin.
#[utoipa::path(
    post,
    path = "/v1/payments/{id}/cancel",
    params(("id" = Uuid, Path, description = "The payment.")),
    request_body = Cancel,
    responses(
        (status = 200, description = "Accepted: the payment and its new version (also in `ETag`). Pass the version to query-api as `min_version` to read your write.", body = crate::http::Accepted)
    ),
    security(("bearer" = []))
)]
async fn cancel(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(raw): Path<String>,
    Json(body): Json<Cancel>,
) -> Result<Response, Problem> {
    let (id, payment) = payment_of(&state, &who, &raw).await?;
    let tenant = payment.tenant_id().unwrap_or_default();
    let command = PaymentCommand {
        at: state.clock.now(),
        action: PaymentAction::Cancel {
            reason: body.reason,
        },
    };
    let metadata = ids.metadata(tenant, who.user_id(), who.actor_kind());
    let c = state
        .ctx
        .payments
        .payments
        .execute(&id, None, command, &metadata)
        .await?;
    Ok(accepted(
        StatusCode::OK,
        PAYMENT,
        &c.aggregate_id,
        c.version,
    ))
}

/// Body of `PUT /v1/catalog/taxes/{id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaveTax {
    /// The tenant (super admins name it).
    #[serde(default)]
    pub tenant_id: Option<Uuid>,
    /// Display name.
    #[schema(min_length = 1, max_length = 120)]
    pub name: String,
    /// Rate in basis points (2000 = 20 %).
    #[schema(minimum = 0, maximum = 10000)]
    pub rate_bp: u32,
    /// Whether prices include it.
    pub included: bool,
}

/// Define or change a tax.
///
/// The whole tax, under the client-chosen id (1–64 letters, digits, `_` or `-`; 422
/// `invalid_item_id`). The first save defines it, a save that changes it updates it, a save
/// that changes nothing appends nothing. 422 `invalid_name`, `invalid_rate` (above 10,000 basis
/// points). A changed tax prices later payments; requested payments keep their amounts. Events:
/// TaxDefined, TaxUpdated. Allowed: the tenant's admin (in their own tenant; naming another
/// `tenant_id`: 403), or a super admin naming `tenant_id` (422 `tenant_required` without);
/// agents, phone users and service tokens: 403.
#[utoipa::path(
    put,
    path = "/v1/catalog/taxes/{id}",
    params(("id" = String, Path, description = "The tax's id in the tenant's catalog.")),
    request_body = SaveTax,
    responses(
        (status = 200, description = "Accepted: `id` is the catalog's (the tenant id: one catalog per tenant) and `version` its new version (also in `ETag`). Pass the version to query-api as `min_version` to read your write.", body = crate::http::Accepted),
        (status = 409, response = events::http::openapi::ProblemAnswer),
        (status = 404, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn save_tax(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(tax_id): Path<String>,
    Json(body): Json<SaveTax>,
) -> Result<Response, Problem> {
    let tenant = administered_tenant(&state, &who, body.tenant_id).await?;
    let command = CatalogCommand::SaveTax {
        tax_id,
        name: body.name,
        rate_bp: body.rate_bp,
        included: body.included,
    };
    save(&state, &who, &ids, &tenant, command).await
}

/// Body of `PUT /v1/catalog/products/{id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaveProduct {
    /// The tenant (super admins name it).
    #[serde(default)]
    pub tenant_id: Option<Uuid>,
    /// Display name.
    #[schema(min_length = 1, max_length = 120)]
    pub name: String,
    /// Unit price, minor units.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub unit_price: i64,
    /// ISO 4217 code.
    #[schema(pattern = r"^[A-Z]{3}$")]
    pub currency: String,
    /// Its tax.
    #[serde(default)]
    pub tax_id: Option<String>,
    /// Whether it may be sold (default true).
    #[serde(default)]
    pub active: Option<bool>,
}

/// Define or change a product.
///
/// The whole product, under the client-chosen id (1–64 letters, digits, `_` or `-`; 422
/// `invalid_item_id`): an absent `tax_id` means no tax, an absent `active` means true. The
/// first save defines it, a save that changes it updates it, a save that changes nothing
/// appends nothing. 422 `unknown_tax` (no such tax in the tenant's catalog), `invalid_name`,
/// `invalid_price`, `invalid_currency`. An inactive product cannot be put in a payment (422
/// `inactive_product`). Events: ProductDefined, ProductUpdated. Allowed: the tenant's admin (in
/// their own tenant; naming another `tenant_id`: 403), or a super admin naming `tenant_id` (422
/// `tenant_required` without); agents, phone users and service tokens: 403.
#[utoipa::path(
    put,
    path = "/v1/catalog/products/{id}",
    params(("id" = String, Path, description = "The product's id in the tenant's catalog.")),
    request_body = SaveProduct,
    responses(
        (status = 200, description = "Accepted: `id` is the catalog's (the tenant id: one catalog per tenant) and `version` its new version (also in `ETag`). Pass the version to query-api as `min_version` to read your write.", body = crate::http::Accepted),
        (status = 409, response = events::http::openapi::ProblemAnswer),
        (status = 404, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn save_product(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(product_id): Path<String>,
    Json(body): Json<SaveProduct>,
) -> Result<Response, Problem> {
    let tenant = administered_tenant(&state, &who, body.tenant_id).await?;
    let command = CatalogCommand::SaveProduct {
        product_id,
        name: body.name,
        unit_price: body.unit_price,
        currency: body.currency,
        tax_id: body.tax_id,
        active: body.active.unwrap_or(true),
    };
    save(&state, &who, &ids, &tenant, command).await
}

async fn save(
    state: &AppState,
    who: &Principal,
    ids: &RequestIds,
    tenant: &str,
    command: CatalogCommand,
) -> Result<Response, Problem> {
    let metadata = ids.metadata(tenant, who.user_id(), who.actor_kind());
    let c = state
        .ctx
        .payments
        .catalogs
        .execute(tenant, None, command, &metadata)
        .await?;
    Ok(accepted(
        StatusCode::OK,
        CATALOG,
        &c.aggregate_id,
        c.version,
    ))
}

impl DomainProblem for crate::payments::catalog::CatalogError {
    fn problem(&self) -> Problem {
        use crate::payments::catalog::CatalogError as E;
        let detail = self.to_string();
        let code = match self {
            E::InvalidId => "invalid_item_id",
            E::InvalidName => "invalid_name",
            E::InvalidRate => "invalid_rate",
            E::InvalidPrice => "invalid_price",
            E::InvalidCurrency => "invalid_currency",
            E::UnknownTax => "unknown_tax",
        };
        Problem::unprocessable(code, detail)
    }
}

impl DomainProblem for crate::payments::aggregate::PaymentError {
    fn problem(&self) -> Problem {
        use crate::payments::aggregate::PaymentError as E;
        let detail = self.to_string();
        let unprocessable = |code| Problem::unprocessable(code, detail.clone());
        match self {
            E::NotFound => Problem::not_found(detail),
            E::AlreadyExists => Problem::new(StatusCode::CONFLICT, "already_exists", detail),
            E::LinkExists => Problem::new(StatusCode::CONFLICT, "link_exists", detail),
            E::InvalidCurrency => unprocessable("invalid_currency"),
            E::InvalidLines => unprocessable("invalid_lines"),
            E::UnknownProduct => unprocessable("unknown_product"),
            E::InactiveProduct => unprocessable("inactive_product"),
            E::CurrencyMismatch => unprocessable("currency_mismatch"),
            E::InvalidAmount => unprocessable("invalid_amount"),
            E::InvalidCustomerReference => unprocessable("invalid_customer_reference"),
            E::InvalidDescription => unprocessable("invalid_description"),
            E::NotAwaitingLink => unprocessable("not_awaiting_link"),
            E::NotCancellable => unprocessable("not_cancellable"),
            E::InvalidReason => unprocessable("invalid_reason"),
        }
    }
}
