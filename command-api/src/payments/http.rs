//! HTTP routes of payments and catalogs.
//!
//! A payment is requested and its link made in one request: the payment is appended first,
//! then the provider is asked for a link, and its answer (link or refusal) is appended too.
//! If the process dies in between, the payment waits in `requested` and
//! `POST /v1/payments/{id}/link` makes the link.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Extension, Router};
use events::access::Principal;
use events::http::{AuthUser, Json, Problem, RequestIds};
use events::payments::{PaymentProvider, CATALOG, PAYMENT};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::aggregate::{LineRequest, Payment, PaymentAction, PaymentCommand, PaymentError, Status};
use super::catalog::CatalogCommand;
use super::lyra::{LinkError, PaymentOrder};
use crate::http::error::DomainProblem;
use crate::http::idempotency::KeyedRequest;
use crate::http::{accepted, administered_tenant};
use crate::store::{CommandError, Committed};
use crate::AppState;

/// The routes of the payments context.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/payments", post(request))
        .route("/v1/payments/{id}/link", post(link))
        .route("/v1/payments/{id}/cancel", post(cancel))
        .route("/v1/catalog/taxes/{id}", put(save_tax))
        .route("/v1/catalog/products/{id}", put(save_product))
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
#[derive(Debug, Deserialize)]
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
    pub currency: String,
    /// Products and quantities.
    pub lines: Vec<LineRequest>,
    /// The tenant's reference of the customer.
    pub customer_reference: String,
    /// Shown to the customer.
    #[serde(default)]
    pub description: Option<String>,
}

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
    let catalog = state.ctx.payments.catalogs.load(&tenant).await?;
    let provider = body.provider.unwrap_or(PaymentProvider::Lyra);
    let command = PaymentCommand {
        at: state.clock.now(),
        action: PaymentAction::Request {
            tenant_id: tenant.clone(),
            provider,
            currency: body.currency,
            lines: body.lines,
            catalog: Box::new(catalog),
            customer_reference: body.customer_reference,
            description: body.description,
        },
    };
    let metadata = ids.metadata(&tenant, who.user_id(), who.actor_kind());
    let c = match state
        .ctx
        .payments
        .payments
        .execute(&id, None, command, &metadata)
        .await
    {
        Ok(c) => c,
        // The id derives from this caller's `Idempotency-Key`: a retry of a request whose
        // answer was not stored (it failed after the payment was appended). It carries on
        // from where the payment is. A client-chosen id that is taken stays a 409.
        Err(CommandError::Rejected(PaymentError::AlreadyExists))
            if body.id.is_none() && keyed.is_some() =>
        {
            let version: Option<i64> = sqlx::query_scalar(
                "SELECT max(sequence) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
            )
            .bind(PAYMENT)
            .bind(&id)
            .fetch_one(&state.pool)
            .await
            .map_err(|e| Problem::unavailable(&e))?;
            Committed {
                aggregate_id: id.clone(),
                version: version.unwrap_or_default() as u64,
                appended: 0,
            }
        }
        Err(e) => return Err(e.into()),
    };
    let payment = state.ctx.payments.payments.load(&id).await?;
    let answer = if payment.takes_link() && payment.status() == Status::Requested {
        make_link(&state, &ids, &who, &tenant, &id).await?
    } else {
        // A Stripe payment (the tenant's Checkout names it as `client_reference_id`), or a
        // retry finding the link made.
        Answer {
            link: payment
                .link()
                .map(|(order, url, expires_at)| link_json(order, url, expires_at)),
            committed: c,
            link_error: None,
        }
    };
    Ok(answer.into_response(StatusCode::CREATED))
}

/// A payment command's answer, with the link or why there is none.
struct Answer {
    committed: Committed,
    link: Option<serde_json::Value>,
    link_error: Option<serde_json::Value>,
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
            let body = json!({
                "id": self.committed.aggregate_id,
                "version": self.committed.version,
                "link": self.link,
                "link_error": self.link_error,
            });
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

/// A link as answers show it.
fn link_json(
    order: &str,
    url: &str,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> serde_json::Value {
    json!({"url": url, "provider_order_id": order, "expires_at": expires_at})
}

/// Asks Lyra for the payment's link and records the answer.
async fn make_link(
    state: &AppState,
    ids: &RequestIds,
    who: &Principal,
    tenant: &str,
    id: &str,
) -> Result<Answer, Problem> {
    let payment = state.ctx.payments.payments.load(id).await?;
    let outcome = match &state.ctx.payments.lyra {
        None => Err(LinkError::Refused {
            code: "not_configured".into(),
            message: "no Lyra account is configured (LYRA_SHOP_ID, LYRA_PASSWORD)".into(),
        }),
        Some(lyra) => {
            lyra.create_payment_order(&PaymentOrder {
                order_id: id,
                amount: payment.total(),
                currency: payment.currency(),
                customer_reference: payment.customer_reference(),
                comment: payment.description(),
            })
            .await
        }
    };
    let (action, link, link_error) = match outcome {
        Ok(l) => (
            PaymentAction::RecordLink {
                provider_order_id: l.order_id.clone(),
                url: l.url.clone(),
                expires_at: l.expires_at,
            },
            Some(link_json(&l.order_id, &l.url, l.expires_at)),
            None,
        ),
        Err(e) => {
            let code = match &e {
                LinkError::Refused { code, .. } => Some(code.clone()),
                LinkError::Unavailable(_) => None,
            };
            tracing::warn!(payment_id = id, error = %e, "no payment link");
            (
                PaymentAction::RecordLinkFailure {
                    code: code.clone(),
                    reason: e.to_string(),
                },
                None,
                Some(
                    json!({"code": code.unwrap_or_else(|| "provider_unavailable".into()), "detail": e.to_string()}),
                ),
            )
        }
    };
    let command = PaymentCommand {
        at: state.clock.now(),
        action,
    };
    let metadata = ids.metadata(tenant, who.user_id(), who.actor_kind());
    let committed = state
        .ctx
        .payments
        .payments
        .execute(id, None, command, &metadata)
        .await?;
    Ok(Answer {
        committed,
        link,
        link_error,
    })
}

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
    let answer = make_link(&state, &ids, &who, &tenant, &id).await?;
    Ok(answer.into_response(StatusCode::OK))
}

/// Body of a cancellation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    /// Why (≤ 500 characters).
    #[serde(default)]
    pub reason: String,
}

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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveTax {
    /// The tenant (super admins name it).
    #[serde(default)]
    pub tenant_id: Option<Uuid>,
    /// Display name.
    pub name: String,
    /// Rate in basis points (2000 = 20 %).
    pub rate_bp: u32,
    /// Whether prices include it.
    pub included: bool,
}

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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveProduct {
    /// The tenant (super admins name it).
    #[serde(default)]
    pub tenant_id: Option<Uuid>,
    /// Display name.
    pub name: String,
    /// Unit price, minor units.
    pub unit_price: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Its tax.
    #[serde(default)]
    pub tax_id: Option<String>,
    /// Whether it may be sold (default true).
    #[serde(default)]
    pub active: Option<bool>,
}

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
