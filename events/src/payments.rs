//! Events of the payments bounded context: each tenant's catalog (aggregate type `catalog`,
//! one per tenant, id = the tenant id) and payments (aggregate type `payment`).
//!
//! Amounts are integers in the currency's minor unit (cents); rates are basis points
//! (2,000 = 20 %). A payment's events are its audit trail: every change a provider caused
//! names the webhook it came from, and a provider status that may not apply (a late
//! "failed" after "paid") is recorded, not applied.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

/// The aggregate type name of catalogs.
pub const CATALOG: &str = "catalog";
/// The aggregate type name of payments.
pub const PAYMENT: &str = "payment";

/// A tax as defined in a catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tax {
    /// Its id within the tenant.
    pub tax_id: String,
    /// Display name (`VAT 20%`).
    pub name: String,
    /// Rate in basis points, 0–10,000.
    pub rate_bp: u32,
    /// Whether prices include it (`true`) or it is added on top.
    pub included: bool,
}

/// A product as defined in a catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Product {
    /// Its id within the tenant.
    pub product_id: String,
    /// Display name.
    pub name: String,
    /// Unit price in minor units (tax included or not, as its tax says).
    pub unit_price: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The tax it carries, if any.
    #[serde(default)]
    pub tax_id: Option<String>,
    /// Whether it may be sold.
    pub active: bool,
}

/// Something that happened to a tenant's catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum CatalogEvent {
    /// A tax was defined.
    TaxDefined(Tax),
    /// A tax's name, rate or inclusion changed (payments already requested keep theirs).
    TaxUpdated(Tax),
    /// A product was defined.
    ProductDefined(Product),
    /// A product's name, price, tax or activity changed.
    ProductUpdated(Product),
}

impl DomainEvent for CatalogEvent {
    fn event_type(&self) -> String {
        match self {
            CatalogEvent::TaxDefined(_) => "TaxDefined",
            CatalogEvent::TaxUpdated(_) => "TaxUpdated",
            CatalogEvent::ProductDefined(_) => "ProductDefined",
            CatalogEvent::ProductUpdated(_) => "ProductUpdated",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// One line of a payment: a product, its quantity, and the amounts as computed when the
/// payment was requested (later catalog changes do not touch it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentLine {
    /// The product.
    pub product_id: String,
    /// Its name then.
    pub name: String,
    /// How many.
    pub quantity: u32,
    /// Its unit price then.
    pub unit_price: i64,
    /// Its tax then, if any.
    #[serde(default)]
    pub tax: Option<Tax>,
    /// Amount before tax.
    pub net: i64,
    /// Tax amount.
    pub tax_amount: i64,
    /// Amount with tax.
    pub gross: i64,
}

/// Which provider collects a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PaymentProvider {
    /// Lyra / PayZen payment order (the platform creates the link).
    Lyra,
    /// Stripe (the tenant's checkout names the payment as `client_reference_id`).
    Stripe,
}

/// Something that happened to a payment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum PaymentEvent {
    /// A payment was requested from a customer.
    Requested {
        /// The tenant paid.
        tenant_id: String,
        /// Who collects it.
        provider: PaymentProvider,
        /// ISO 4217 code.
        currency: String,
        /// What is paid for.
        lines: Vec<PaymentLine>,
        /// Sum of the lines' net amounts.
        net: i64,
        /// Sum of the lines' tax amounts.
        tax: i64,
        /// What the customer pays (net + tax).
        total: i64,
        /// The tenant's reference of the customer (a CRM id, an e-mail).
        customer_reference: String,
        /// Shown to the customer.
        #[serde(default)]
        description: Option<String>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The provider made a payment link.
    LinkCreated {
        /// The provider's id of the order (Lyra's `paymentOrderId`).
        provider_order_id: String,
        /// Where the customer pays.
        url: String,
        /// When the link stops working, if the provider said.
        #[serde(default)]
        expires_at: Option<DateTime<Utc>>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The provider refused to make a link (a new attempt may follow).
    LinkFailed {
        /// The provider's error code, if any.
        code: Option<String>,
        /// Why.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The provider confirmed the payment.
    Paid {
        /// Amount paid, minor units.
        amount: i64,
        /// The provider's transaction (Stripe payment intent, Lyra transaction uuid).
        provider_reference: String,
        /// The webhook that said so.
        webhook_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The provider reported a failed attempt (the customer may try again).
    Failed {
        /// The provider's reason.
        reason: String,
        /// The webhook that said so.
        webhook_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The link expired unpaid.
    Expired {
        /// The webhook that said so.
        webhook_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Staff cancelled the payment before it was paid.
    Cancelled {
        /// Why.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The provider refunded part or all of the payment.
    Refunded {
        /// This refund, minor units.
        amount: i64,
        /// All refunds so far.
        refunded_total: i64,
        /// The webhook that said so.
        webhook_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The provider reported a refund before it confirmed the payment (its events came out
    /// of order): held, and applied when the payment is confirmed, so the payment ends the
    /// same whatever order the provider's events come in.
    RefundHeld {
        /// All refunds so far, as the provider reported them.
        refunded_total: i64,
        /// Their currency.
        currency: String,
        /// The provider's transaction refunded, when it said (applied only to the one that
        /// pays the payment).
        #[serde(default)]
        reference: Option<String>,
        /// The webhook that said so.
        webhook_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The provider charged the customer in a transaction that does not pay the payment:
    /// again after it was paid (`duplicate_charge`: a second checkout, a retried payment) or
    /// in another amount or currency (`amount_mismatch`). It is tracked beside the payment,
    /// with its refunds, so money the tenant must return is never lost from sight. A
    /// duplicate in the payment's amount and currency covers the payment as well as its
    /// first charge does: refunding either leaves the payment paid while the other is kept.
    ChargedAgain {
        /// Amount charged, minor units.
        amount: i64,
        /// Its currency, as the provider reported it.
        currency: String,
        /// The provider's transaction (Stripe payment intent, Lyra transaction uuid).
        provider_reference: String,
        /// `duplicate_charge` or `amount_mismatch`.
        #[serde(default = "duplicate_charge")]
        reason: String,
        /// The webhook that said so.
        webhook_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The provider refunded part or all of a charge recorded by [`PaymentEvent::ChargedAgain`]
    /// (the payment's own charge is untouched).
    ChargeRefunded {
        /// The provider's transaction refunded.
        provider_reference: String,
        /// This refund, minor units.
        amount: i64,
        /// All refunds of that transaction so far.
        refunded_total: i64,
        /// The webhook that said so.
        webhook_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// A provider status that may not apply (a "failed" after "paid", an amount that does
    /// not match, a refund above what was paid) was recorded and not applied.
    ProviderStatusIgnored {
        /// The status the provider reported (`paid`, `failed`, `expired`, `refunded`).
        status: String,
        /// Why it was not applied.
        reason: String,
        /// The webhook that said so.
        webhook_id: String,
        /// When.
        at: DateTime<Utc>,
    },
}

/// The reason of a `ChargedAgain` recorded before it had one.
fn duplicate_charge() -> String {
    "duplicate_charge".to_owned()
}

impl DomainEvent for PaymentEvent {
    fn event_type(&self) -> String {
        match self {
            PaymentEvent::Requested { .. } => "Requested",
            PaymentEvent::LinkCreated { .. } => "LinkCreated",
            PaymentEvent::LinkFailed { .. } => "LinkFailed",
            PaymentEvent::Paid { .. } => "Paid",
            PaymentEvent::Failed { .. } => "Failed",
            PaymentEvent::Expired { .. } => "Expired",
            PaymentEvent::Cancelled { .. } => "Cancelled",
            PaymentEvent::Refunded { .. } => "Refunded",
            PaymentEvent::RefundHeld { .. } => "RefundHeld",
            PaymentEvent::ChargedAgain { .. } => "ChargedAgain",
            PaymentEvent::ChargeRefunded { .. } => "ChargeRefunded",
            PaymentEvent::ProviderStatusIgnored { .. } => "ProviderStatusIgnored",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
/// Questions about payments' provider transactions that the command side (matching a
/// webhook to its payment) and the projector's `payment-references` worker (matching it
/// again later) ask alike, as SQL over the event store (indexes of migrations 0031, 0032).
pub mod lookups {
    /// The payment paid, or charged again, through provider transaction `$1`.
    pub const PAID_WITH: &str = "SELECT aggregate_id FROM events
      WHERE aggregate_type = 'payment' AND event_type IN ('Paid', 'ChargedAgain')
        AND coalesce(payload->'Paid'->>'provider_reference',
                     payload->'ChargedAgain'->>'provider_reference') = $1
      ORDER BY global_position LIMIT 1";

    /// The webhooks whose latest event records them as naming provider transaction `$1`
    /// when no payment was known for it (a replay already asked for is under way).
    pub const UNMATCHED_WEBHOOKS: &str = "SELECT p.aggregate_id FROM events p
      WHERE p.aggregate_type = 'webhook' AND p.event_type = 'Processed'
        AND p.payload->'Processed' ? 'unmatched_reference'
        AND p.payload->'Processed'->>'unmatched_reference' = $1
        AND NOT EXISTS (SELECT 1 FROM events l
                         WHERE l.aggregate_type = 'webhook' AND l.aggregate_id = p.aggregate_id
                           AND l.sequence > p.sequence)";
}
