//! The payments context's application layer: requesting a payment and asking its provider
//! for a link, then recording the provider's answer. The routes of `http.rs` extract, call
//! these, and answer.

use events::access::Principal;
use events::http::{Problem, RequestIds};
use events::payments::PaymentProvider;

use super::aggregate::{LineRequest, PaymentAction, PaymentCommand, PaymentError, Status};
use super::lyra::{LinkError, PaymentOrder};
use crate::store::{CommandError, Committed};
use crate::AppState;
use serde::Serialize;

/// A payment link the provider (Lyra) made.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentLink {
    /// Lyra's `paymentURL`, to send to the customer.
    #[schema(format = "uri")]
    pub url: String,
    /// Lyra's `paymentOrderId`.
    pub provider_order_id: String,
    /// Lyra's `expirationDate`, when it gave one.
    #[schema(required = true)]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl PaymentLink {
    /// A link as answers show it.
    fn new(order: &str, url: &str, expires_at: Option<chrono::DateTime<chrono::Utc>>) -> Self {
        Self {
            url: url.to_owned(),
            provider_order_id: order.to_owned(),
            expires_at,
        }
    }
}

/// Why no link was made. The payment stays `requested` (event LinkFailed); `POST
/// /v1/payments/{id}/link` tries again.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentLinkError {
    /// `not_configured` (no Lyra account: LYRA_SHOP_ID and LYRA_PASSWORD unset),
    /// `provider_unavailable` (Lyra unreachable, an HTTP error or an unreadable answer: a retry
    /// may help), or Lyra's own `errorCode` when it refused the order (e.g. `INT_905`;
    /// `unknown` when it named none): a retry of the same order will not help.
    #[schema(example = "INT_905")]
    pub code: String,
    /// What went wrong.
    #[schema(example = "lyra refused: INT_905: invalid amount")]
    pub detail: String,
}

/// A payment command's outcome, with the link or why there is none.
pub struct Answer {
    /// What was appended.
    pub committed: Committed,
    /// The provider's link, when one was made.
    pub link: Option<PaymentLink>,
    /// Why there is no link, when the provider was asked and gave none.
    pub link_error: Option<PaymentLinkError>,
}

/// A payment to request.
pub struct Request {
    /// Its id: chosen by the client, derived from its `Idempotency-Key`, or new.
    pub id: String,
    /// Whether the client chose the id.
    pub chosen: bool,
    /// Whether the request carries an `Idempotency-Key`.
    pub keyed: bool,
    /// The tenant.
    pub tenant: String,
    /// Who takes the payment.
    pub provider: PaymentProvider,
    /// ISO 4217 code.
    pub currency: String,
    /// Products and quantities.
    pub lines: Vec<LineRequest>,
    /// The tenant's reference of the customer.
    pub customer_reference: String,
    /// Shown to the customer.
    pub description: Option<String>,
}

/// Requests a payment priced from the tenant's catalog and, for a provider that makes links,
/// asks for its link.
pub async fn request(
    state: &AppState,
    ids: &RequestIds,
    who: &Principal,
    request: Request,
) -> Result<Answer, Problem> {
    let Request { id, tenant, .. } = &request;
    let catalog = state.ctx.payments.catalogs.load(tenant).await?;
    let command = PaymentCommand {
        at: state.clock.now(),
        action: PaymentAction::Request {
            tenant_id: tenant.clone(),
            provider: request.provider,
            currency: request.currency.clone(),
            lines: request.lines.clone(),
            catalog: Box::new(catalog),
            customer_reference: request.customer_reference.clone(),
            description: request.description.clone(),
        },
    };
    let metadata = ids.metadata(tenant, who.user_id(), who.actor_kind());
    let bus = &state.ctx.payments.payments;
    let committed = match bus.execute(id, None, command, &metadata).await {
        Ok(c) => Some(c),
        // The id derives from this caller's `Idempotency-Key`: a retry of a request whose
        // answer was not stored (it failed after the payment was appended). It carries on
        // from where the payment is. A client-chosen id that is taken stays a 409.
        Err(CommandError::Rejected(PaymentError::AlreadyExists))
            if !request.chosen && request.keyed =>
        {
            None
        }
        Err(e) => return Err(e.into()),
    };
    let (payment, version) = bus.load_versioned(id).await?;
    if payment.takes_link() && payment.status() == Status::Requested {
        return make_link(state, ids, who, tenant, id).await;
    }
    // A Stripe payment (the tenant's Checkout names it as `client_reference_id`), or a
    // retry finding the link made.
    Ok(Answer {
        link: payment
            .link()
            .map(|(order, url, expires_at)| PaymentLink::new(order, url, expires_at)),
        committed: committed.unwrap_or_else(|| Committed {
            aggregate_id: id.clone(),
            version,
            appended: 0,
        }),
        link_error: None,
    })
}

/// Asks Lyra for the payment's link and records the answer.
pub async fn make_link(
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
            Some(PaymentLink::new(&l.order_id, &l.url, l.expires_at)),
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
                Some(PaymentLinkError {
                    code: code.unwrap_or_else(|| "provider_unavailable".into()),
                    detail: e.to_string(),
                }),
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
