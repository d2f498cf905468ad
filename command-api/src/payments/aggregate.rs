//! The payment aggregate: requested → link created → paid / failed / expired / cancelled →
//! (partially) refunded.
//!
//! Providers report statuses through webhooks, late, twice and out of order. Each status
//! names its webhook; a webhook already applied changes nothing, and a status that would
//! move the payment backwards (a "failed" after "paid", a refund of more than was paid, an
//! amount that does not match) is recorded as [`PaymentEvent::ProviderStatusIgnored`], not
//! applied.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use events::payments::{PaymentEvent, PaymentLine, PaymentProvider, PAYMENT};
use serde::{Deserialize, Serialize};

use super::catalog::Catalog;
use super::values::{self, MAX_AMOUNT, MAX_LINES, MAX_QUANTITY};

/// Where a payment is in its life.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not requested yet (no such payment).
    #[default]
    None,
    /// Requested; no link yet (or the provider refused one).
    Requested,
    /// The customer has a link.
    LinkCreated,
    /// An attempt failed; the customer may try again.
    Failed,
    /// Paid.
    Paid,
    /// The link expired unpaid.
    Expired,
    /// Cancelled by staff.
    Cancelled,
    /// Part of it was refunded.
    PartiallyRefunded,
    /// All of it was refunded.
    Refunded,
}

impl Status {
    /// Whether money was taken (a late "failed" or "expired" cannot undo that).
    fn was_paid(self) -> bool {
        matches!(
            self,
            Status::Paid | Status::PartiallyRefunded | Status::Refunded
        )
    }

    /// Whether the customer may still pay (a "failed" or "expired" applies).
    fn awaits_payment(self) -> bool {
        matches!(
            self,
            Status::Requested | Status::LinkCreated | Status::Failed
        )
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::None => "none",
            Status::Requested => "requested",
            Status::LinkCreated => "link_created",
            Status::Failed => "failed",
            Status::Paid => "paid",
            Status::Expired => "expired",
            Status::Cancelled => "cancelled",
            Status::PartiallyRefunded => "partially_refunded",
            Status::Refunded => "refunded",
        }
    }
}

/// One requested line: a product of the catalog and how many.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineRequest {
    /// The product's id: an active product of the tenant's catalog (422 `unknown_product`,
    /// `inactive_product`).
    #[schema(example = "lesson")]
    pub product_id: String,
    /// How many (1–10,000).
    #[schema(minimum = 1, maximum = 10000)]
    pub quantity: u32,
}

/// What a provider reported about a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderStatus {
    /// Paid `amount` in `currency`, as transaction `reference`.
    Paid {
        /// Minor units.
        amount: i64,
        /// ISO 4217.
        currency: String,
        /// The provider's transaction.
        reference: String,
    },
    /// An attempt failed.
    Failed {
        /// The provider's reason.
        reason: String,
    },
    /// The link expired unpaid.
    Expired,
    /// Refunds now total `refunded_total` (providers report the running total).
    Refunded {
        /// Minor units.
        refunded_total: i64,
        /// ISO 4217.
        currency: String,
        /// The provider's transaction refunded, when it says (a Stripe payment intent).
        reference: Option<String>,
    },
}

impl ProviderStatus {
    fn name(&self) -> &'static str {
        match self {
            ProviderStatus::Paid { .. } => "paid",
            ProviderStatus::Failed { .. } => "failed",
            ProviderStatus::Expired => "expired",
            ProviderStatus::Refunded { .. } => "refunded",
        }
    }
}

/// A command on a payment, stamped with the server's clock.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentCommand {
    /// When it was asked.
    pub at: DateTime<Utc>,
    /// What.
    pub action: PaymentAction,
}

/// What a command asks.
#[derive(Debug, Clone, PartialEq)]
pub enum PaymentAction {
    /// Request a payment of `lines` from `catalog` (the tenant's catalog as the route read it).
    Request {
        /// The tenant paid.
        tenant_id: String,
        /// Who collects it.
        provider: PaymentProvider,
        /// ISO 4217.
        currency: String,
        /// What is paid for.
        lines: Vec<LineRequest>,
        /// The tenant's catalog.
        catalog: Box<Catalog>,
        /// The tenant's reference of the customer.
        customer_reference: String,
        /// Shown to the customer.
        description: Option<String>,
    },
    /// The provider made a link.
    RecordLink {
        /// The provider's order id.
        provider_order_id: String,
        /// The link.
        url: String,
        /// When it expires.
        expires_at: Option<DateTime<Utc>>,
    },
    /// The provider refused to make a link.
    RecordLinkFailure {
        /// Its error code.
        code: Option<String>,
        /// Why.
        reason: String,
    },
    /// Staff cancel the payment.
    Cancel {
        /// Why.
        reason: String,
    },
    /// A provider's status, from webhook `webhook_id`.
    ProviderStatus {
        /// The webhook that reported it.
        webhook_id: String,
        /// Who reported it (only the payment's own provider is listened to).
        provider: PaymentProvider,
        /// What it reported.
        status: ProviderStatus,
    },
}

/// Why a payment command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// 404.
    #[error("no such payment")]
    NotFound,
    /// 409 `already_exists`.
    #[error("a payment with this id exists")]
    AlreadyExists,
    /// 422 `invalid_currency`.
    #[error("a currency is an ISO 4217 code such as EUR")]
    InvalidCurrency,
    /// 422 `invalid_lines`.
    #[error("a payment has 1 to 100 lines, each of 1 to 10000 units")]
    InvalidLines,
    /// 422 `unknown_product`.
    #[error("a line names a product that is not in the catalog")]
    UnknownProduct,
    /// 422 `inactive_product`.
    #[error("a line names a product that is not active")]
    InactiveProduct,
    /// 422 `currency_mismatch`.
    #[error("every product of a payment must be priced in its currency")]
    CurrencyMismatch,
    /// 422 `invalid_amount`.
    #[error("a payment's total must be above zero and at most 1000000000000 minor units")]
    InvalidAmount,
    /// 422 `invalid_customer_reference`.
    #[error("a customer reference is 1 to 128 characters without control characters")]
    InvalidCustomerReference,
    /// 422 `invalid_description`.
    #[error("a description is at most 255 characters without control characters")]
    InvalidDescription,
    /// 409 `link_exists`.
    #[error("the payment already has a link")]
    LinkExists,
    /// 422 `not_awaiting_link`.
    #[error("the payment no longer takes a link")]
    NotAwaitingLink,
    /// 422 `not_cancellable`.
    #[error("only a payment that is not paid, expired or cancelled can be cancelled")]
    NotCancellable,
    /// 422 `invalid_reason`.
    #[error("a reason is at most 500 characters")]
    InvalidReason,
}

/// The state the rules need (also the snapshot form).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Payment {
    /// The owning tenant, once requested.
    tenant_id: Option<String>,
    /// Where it is.
    status: Status,
    /// ISO 4217.
    currency: String,
    /// What the customer pays.
    total: i64,
    /// What was paid.
    paid: i64,
    /// Refunds so far.
    refunded: i64,
    /// Who collects it.
    provider: Option<PaymentProvider>,
    /// The provider's order, once a link exists.
    provider_order_id: Option<String>,
    /// The link, once it exists.
    link_url: Option<String>,
    /// When the link expires, if the provider said.
    link_expires_at: Option<DateTime<Utc>>,
    /// The tenant's reference of the customer (sent to the provider with the link).
    customer_reference: String,
    /// Shown to the customer.
    description: Option<String>,
    /// Webhooks already taken into account.
    webhooks: BTreeSet<String>,
    /// The provider's transaction that paid it (absent in snapshots written before).
    #[serde(default)]
    provider_reference: Option<String>,
    /// Refunds reported before the payment was confirmed, by the transaction they name
    /// (`""` when the provider named none): providers report running totals per
    /// transaction, so one of another transaction never replaces this one's.
    #[serde(default)]
    held_refunds: BTreeMap<String, HeldRefund>,
    /// The customer's other charges for this payment once it was paid (a second checkout),
    /// by the provider's transaction: the tenant must return them.
    #[serde(default)]
    extra_charges: BTreeMap<String, Charge>,
}

/// A charge of the customer beside the one that paid the payment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Charge {
    /// Charged, minor units.
    amount: i64,
    /// Its currency.
    currency: String,
    /// Refunded of it so far.
    refunded: i64,
    /// Whether it pays the payment as well as its first charge (the payment's amount and
    /// currency): kept while the first is refunded, the payment stays paid.
    #[serde(default = "covers_by_default")]
    covers: bool,
}

/// Charges kept before `covers` was: duplicates of the payment's amount.
fn covers_by_default() -> bool {
    true
}

/// A provider's report on a payment, as far as what the payment makes of it needs.
struct Report {
    /// The status reported (`paid`, `failed`, `expired`, `refunded`).
    status: &'static str,
    /// The webhook that carried it.
    webhook_id: String,
    /// When.
    at: DateTime<Utc>,
}

impl Report {
    /// The report recorded without effect, and why.
    fn ignored(&self, reason: &str) -> PaymentEvent {
        PaymentEvent::ProviderStatusIgnored {
            status: self.status.to_owned(),
            reason: reason.to_owned(),
            webhook_id: self.webhook_id.clone(),
            at: self.at,
        }
    }
}

impl Charge {
    /// What a refund reported as `refunded_total` of this charge (transaction `reference`)
    /// leads to.
    fn refund(
        &self,
        reference: &str,
        refunded_total: i64,
        currency: &str,
        webhook_id: &str,
        at: DateTime<Utc>,
    ) -> PaymentEvent {
        let ignored = |reason: &str| PaymentEvent::ProviderStatusIgnored {
            status: "refunded".into(),
            reason: reason.into(),
            webhook_id: webhook_id.to_owned(),
            at,
        };
        if currency != self.currency {
            ignored("amount_mismatch")
        } else if refunded_total > self.amount {
            ignored("refund_exceeds_paid")
        } else if refunded_total <= self.refunded {
            ignored("refund_already_recorded")
        } else {
            PaymentEvent::ChargeRefunded {
                provider_reference: reference.to_owned(),
                amount: refunded_total - self.refunded,
                refunded_total,
                webhook_id: webhook_id.to_owned(),
                at,
            }
        }
    }
}

/// A refund reported before the payment it refunds was confirmed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct HeldRefund {
    /// All refunds so far.
    refunded_total: i64,
    /// Their currency.
    currency: String,
    /// The webhook that said so.
    webhook_id: String,
    /// The provider's transaction refunded, when it said.
    reference: Option<String>,
}

impl Payment {
    /// The owning tenant.
    pub fn tenant_id(&self) -> Option<&str> {
        self.tenant_id.as_deref()
    }

    /// Where it is.
    pub fn status(&self) -> Status {
        self.status
    }

    /// ISO 4217.
    pub fn currency(&self) -> &str {
        &self.currency
    }

    /// What the customer pays.
    pub fn total(&self) -> i64 {
        self.total
    }

    /// Whether the platform makes this payment's link (Lyra); a Stripe payment's checkout is
    /// the tenant's.
    pub fn takes_link(&self) -> bool {
        self.provider == Some(PaymentProvider::Lyra)
    }

    /// The link as `(provider order id, url, expiry)`, once it exists.
    pub fn link(&self) -> Option<(&str, &str, Option<DateTime<Utc>>)> {
        Some((
            self.provider_order_id.as_deref()?,
            self.link_url.as_deref()?,
            self.link_expires_at,
        ))
    }

    /// The tenant's reference of the customer.
    pub fn customer_reference(&self) -> &str {
        &self.customer_reference
    }

    /// Shown to the customer.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// What the customer paid that pays the payment and was not refunded: its first charge
    /// and the duplicates of it, less their refunds.
    fn kept(&self) -> i64 {
        let others: i64 = self
            .extra_charges
            .values()
            .filter(|c| c.covers)
            .map(|c| c.amount - c.refunded)
            .sum();
        self.paid - self.refunded + others
    }

    /// A paid payment's status from what it kept, whichever of its charges were refunded.
    fn settle(&mut self) {
        if self.status.was_paid() {
            let kept = self.kept();
            self.status = if kept >= self.total {
                Status::Paid
            } else if kept <= 0 {
                Status::Refunded
            } else {
                Status::PartiallyRefunded
            };
        }
    }
    /// A payment requested: its lines priced from the catalog, its reference and
    /// description checked.
    fn requested(
        &self,
        action: PaymentAction,
        at: DateTime<Utc>,
    ) -> Result<Vec<PaymentEvent>, PaymentError> {
        let PaymentAction::Request {
            tenant_id,
            provider,
            currency,
            lines,
            catalog,
            customer_reference,
            description,
        } = action
        else {
            return Ok(vec![]);
        };
        if self.tenant_id.is_some() {
            return Err(PaymentError::AlreadyExists);
        }
        let requested = request(&currency, &lines, &catalog)?;
        Ok(vec![PaymentEvent::Requested {
            tenant_id,
            provider,
            currency: requested.currency,
            net: requested.lines.iter().map(|l| l.net).sum(),
            tax: requested.lines.iter().map(|l| l.tax_amount).sum(),
            total: requested.total,
            lines: requested.lines,
            customer_reference: text(&customer_reference, 1, 128)
                .ok_or(PaymentError::InvalidCustomerReference)?,
            description: match description {
                None => None,
                Some(d) => Some(text(&d, 0, 255).ok_or(PaymentError::InvalidDescription)?)
                    .filter(|d| !d.is_empty()),
            },
            at,
        }])
    }

    fn decide(&self, command: PaymentCommand) -> Result<Vec<PaymentEvent>, PaymentError> {
        let at = command.at;
        if self.tenant_id.is_none() && !matches!(command.action, PaymentAction::Request { .. }) {
            return Err(PaymentError::NotFound);
        }
        match command.action {
            request @ PaymentAction::Request { .. } => self.requested(request, at),
            PaymentAction::RecordLink { .. } | PaymentAction::RecordLinkFailure { .. }
                if !self.takes_link() =>
            {
                Err(PaymentError::NotAwaitingLink)
            }
            PaymentAction::RecordLink {
                provider_order_id,
                url,
                expires_at,
            } => match (&self.provider_order_id, self.status) {
                (Some(existing), _) if *existing == provider_order_id => Ok(vec![]),
                (Some(_), _) => Err(PaymentError::LinkExists),
                (None, Status::Requested) => Ok(vec![PaymentEvent::LinkCreated {
                    provider_order_id,
                    url,
                    expires_at,
                    at,
                }]),
                (None, _) => Err(PaymentError::NotAwaitingLink),
            },
            PaymentAction::RecordLinkFailure { code, reason } => {
                if self.status != Status::Requested || self.provider_order_id.is_some() {
                    return Err(PaymentError::NotAwaitingLink);
                }
                Ok(vec![PaymentEvent::LinkFailed {
                    code: code.map(|c| printable(&c, 64)),
                    reason: printable(&reason, 500),
                    at,
                }])
            }
            PaymentAction::Cancel { reason } => {
                let reason = text(&reason, 0, 500).ok_or(PaymentError::InvalidReason)?;
                match self.status {
                    Status::Cancelled => Ok(vec![]),
                    s if s.awaits_payment() => Ok(vec![PaymentEvent::Cancelled { reason, at }]),
                    _ => Err(PaymentError::NotCancellable),
                }
            }
            PaymentAction::ProviderStatus {
                webhook_id,
                provider,
                status,
            } => {
                if self.webhooks.contains(&webhook_id) {
                    return Ok(vec![]);
                }
                if self.provider != Some(provider) {
                    // A customer could pay a Lyra payment through some Stripe checkout that
                    // names it: only the payment's own provider moves it.
                    return Ok(vec![PaymentEvent::ProviderStatusIgnored {
                        status: status.name().to_owned(),
                        reason: "provider_mismatch".into(),
                        webhook_id,
                        at,
                    }]);
                }
                Ok(self.provider_status(webhook_id, status, at))
            }
        }
    }

    /// The events a provider's status leads to: the change (with a refund held until then,
    /// once paid), or the record that it was not applied.
    fn provider_status(
        &self,
        webhook_id: String,
        status: ProviderStatus,
        at: DateTime<Utc>,
    ) -> Vec<PaymentEvent> {
        let event = self.provider_change(webhook_id, status, at);
        let mut events = vec![event];
        if let PaymentEvent::ChargedAgain {
            amount,
            currency,
            provider_reference,
            ..
        } = &events[0]
        {
            // A refund of this charge reported before the charge itself.
            if let Some(held) = self.held_refunds.get(provider_reference) {
                let charge = Charge {
                    amount: *amount,
                    currency: currency.clone(),
                    refunded: 0,
                    covers: false,
                };
                let refund = charge.refund(
                    provider_reference,
                    held.refunded_total,
                    &held.currency,
                    &held.webhook_id,
                    at,
                );
                events.push(refund);
            }
            return events;
        }
        let PaymentEvent::Paid {
            amount: paid,
            provider_reference,
            ..
        } = &events[0]
        else {
            return events;
        };
        let (paid, provider_reference) = (*paid, provider_reference.clone());
        // The held refund of the transaction that paid (or naming none: the largest running
        // total of the two); those of other transactions stay held for the charges they
        // name, which the provider may report later.
        let mine = self
            .held_refunds
            .iter()
            .filter(|(r, _)| r.is_empty() || **r == provider_reference)
            .max_by_key(|(_, held)| held.refunded_total)
            .map(|(r, _)| r.clone());
        for (reference, held) in &self.held_refunds {
            let ignored = |reason: &str| PaymentEvent::ProviderStatusIgnored {
                status: "refunded".into(),
                reason: reason.into(),
                webhook_id: held.webhook_id.clone(),
                at,
            };
            if Some(reference) != mine.as_ref() {
                continue;
            }
            events.push(if held.currency != self.currency {
                ignored("amount_mismatch")
            } else if held.refunded_total > paid {
                ignored("refund_exceeds_paid")
            } else {
                PaymentEvent::Refunded {
                    amount: held.refunded_total,
                    refunded_total: held.refunded_total,
                    webhook_id: held.webhook_id.clone(),
                    at,
                }
            });
        }
        events
    }

    /// The one event a provider's status leads to by itself.
    fn provider_change(
        &self,
        webhook_id: String,
        status: ProviderStatus,
        at: DateTime<Utc>,
    ) -> PaymentEvent {
        let report = Report {
            status: status.name(),
            webhook_id,
            at,
        };
        match status {
            ProviderStatus::Paid {
                amount,
                currency,
                reference,
            } => self.paid_change(report, amount, currency, reference),
            ProviderStatus::Failed { reason } => {
                if self.status.awaits_payment() {
                    PaymentEvent::Failed {
                        reason: printable(&reason, 500),
                        webhook_id: report.webhook_id,
                        at,
                    }
                } else {
                    report.ignored(&format!("payment_{}", self.status.as_str()))
                }
            }
            ProviderStatus::Expired => {
                if self.status.awaits_payment() {
                    PaymentEvent::Expired {
                        webhook_id: report.webhook_id,
                        at,
                    }
                } else {
                    report.ignored(&format!("payment_{}", self.status.as_str()))
                }
            }
            ProviderStatus::Refunded {
                refunded_total,
                currency,
                reference,
            } => self.refund_change(report, refunded_total, currency, reference),
        }
    }

    /// A provider's report that money was paid.
    fn paid_change(
        &self,
        report: Report,
        amount: i64,
        currency: String,
        reference: String,
    ) -> PaymentEvent {
        let (webhook_id, at) = (report.webhook_id.clone(), report.at);
        if self.status.was_paid() {
            // The same transaction reported again is a repeat; another one is a second
            // charge of the customer, which staff must refund. (A state read from a snapshot
            // older than the reference knows none: it cannot tell, and takes it as a repeat.)
            if self
                .provider_reference
                .as_ref()
                .is_none_or(|paid| paid == &reference)
                || self.extra_charges.contains_key(&reference)
            {
                report.ignored("already_paid")
            } else {
                let same = currency == self.currency && amount == self.total;
                PaymentEvent::ChargedAgain {
                    amount,
                    currency,
                    provider_reference: reference,
                    reason: if same {
                        "duplicate_charge"
                    } else {
                        "amount_mismatch"
                    }
                    .into(),
                    webhook_id,
                    at,
                }
            }
        } else if currency != self.currency || amount != self.total {
            // Money moved that does not pay the payment: tracked, to be returned.
            if self.extra_charges.contains_key(&reference) {
                report.ignored("charge_already_recorded")
            } else {
                PaymentEvent::ChargedAgain {
                    amount,
                    currency,
                    provider_reference: reference,
                    reason: "amount_mismatch".into(),
                    webhook_id,
                    at,
                }
            }
        } else {
            PaymentEvent::Paid {
                amount,
                provider_reference: reference,
                webhook_id,
                at,
            }
        }
    }

    /// A provider's report that money was returned (of the payment, or of another charge).
    fn refund_change(
        &self,
        report: Report,
        refunded_total: i64,
        currency: String,
        reference: Option<String>,
    ) -> PaymentEvent {
        let other = reference.as_ref().filter(|r| {
            self.provider_reference
                .as_ref()
                .is_some_and(|paid| paid != *r)
        });
        let named_charge = reference
            .as_ref()
            .filter(|r| self.provider_reference.as_ref() != Some(*r))
            .and_then(|r| self.extra_charges.get(r).map(|c| (r, c)));
        let at = report.at;
        if let Some((charge_ref, charge)) = named_charge {
            // Another charge being returned: the payment keeps what it was paid.
            charge.refund(
                charge_ref,
                refunded_total,
                &currency,
                &report.webhook_id,
                at,
            )
        } else if !self.status.was_paid() || other.is_some() {
            // Out of order (the confirmation of the payment, or of the charge it names, is on
            // its way; or the customer paid a payment staff had given up on): held until that
            // charge is reported.
            match self
                .held_refunds
                .get(reference.as_deref().unwrap_or_default())
            {
                Some(held) if held.refunded_total >= refunded_total => {
                    report.ignored("refund_already_recorded")
                }
                _ => PaymentEvent::RefundHeld {
                    refunded_total,
                    currency,
                    reference,
                    webhook_id: report.webhook_id,
                    at,
                },
            }
        } else if currency != self.currency {
            report.ignored("amount_mismatch")
        } else if refunded_total > self.paid {
            report.ignored("refund_exceeds_paid")
        } else if refunded_total <= self.refunded {
            report.ignored("refund_already_recorded")
        } else {
            PaymentEvent::Refunded {
                amount: refunded_total - self.refunded,
                refunded_total,
                webhook_id: report.webhook_id,
                at,
            }
        }
    }

    /// Money beyond the payment itself: other charges, refunds held or applied, provider
    /// reports recorded without effect.
    fn apply_money_back(&mut self, event: PaymentEvent) {
        match event {
            PaymentEvent::ChargedAgain {
                amount,
                currency,
                provider_reference,
                reason,
                webhook_id,
                ..
            } => {
                self.held_refunds.remove(&provider_reference);
                self.extra_charges.insert(
                    provider_reference,
                    Charge {
                        amount,
                        currency,
                        refunded: 0,
                        covers: reason == "duplicate_charge",
                    },
                );
                self.webhooks.insert(webhook_id);
                self.settle();
            }
            PaymentEvent::ChargeRefunded {
                provider_reference,
                refunded_total,
                webhook_id,
                ..
            } => {
                if let Some(charge) = self.extra_charges.get_mut(&provider_reference) {
                    charge.refunded = refunded_total;
                }
                self.webhooks.insert(webhook_id);
                self.settle();
            }
            PaymentEvent::RefundHeld {
                refunded_total,
                currency,
                reference,
                webhook_id,
                ..
            } => {
                self.held_refunds.insert(
                    reference.clone().unwrap_or_default(),
                    HeldRefund {
                        refunded_total,
                        currency,
                        webhook_id: webhook_id.clone(),
                        reference,
                    },
                );
                self.webhooks.insert(webhook_id);
            }
            PaymentEvent::Refunded {
                refunded_total,
                webhook_id,
                ..
            } => {
                self.refunded = refunded_total;
                self.status = Status::PartiallyRefunded;
                self.settle();
                self.webhooks.insert(webhook_id);
            }
            PaymentEvent::ProviderStatusIgnored {
                webhook_id, reason, ..
            } => {
                // Streams written before refunds of other charges stayed held recorded them
                // as not applicable when the payment was confirmed.
                if reason == "refund_of_another_charge" {
                    self.held_refunds.retain(|_, h| h.webhook_id != webhook_id);
                }
                self.webhooks.insert(webhook_id);
            }
            _ => {}
        }
    }
}

/// Lines priced from the catalog, and their total.
struct Priced {
    currency: String,
    lines: Vec<PaymentLine>,
    total: i64,
}

fn request(
    currency: &str,
    lines: &[LineRequest],
    catalog: &Catalog,
) -> Result<Priced, PaymentError> {
    let currency = values::currency(currency).ok_or(PaymentError::InvalidCurrency)?;
    if lines.is_empty()
        || lines.len() > MAX_LINES
        || lines
            .iter()
            .any(|l| l.quantity == 0 || l.quantity > MAX_QUANTITY)
    {
        return Err(PaymentError::InvalidLines);
    }
    let mut priced = Vec::with_capacity(lines.len());
    let mut total: i64 = 0;
    for l in lines {
        let product = catalog
            .product(&l.product_id)
            .ok_or(PaymentError::UnknownProduct)?;
        if !product.active {
            return Err(PaymentError::InactiveProduct);
        }
        if product.currency != currency {
            return Err(PaymentError::CurrencyMismatch);
        }
        let tax = product.tax_id.as_deref().and_then(|t| catalog.tax(t));
        let line = values::line(product, tax, l.quantity).ok_or(PaymentError::InvalidAmount)?;
        total = total
            .checked_add(line.gross)
            .filter(|t| *t <= MAX_AMOUNT)
            .ok_or(PaymentError::InvalidAmount)?;
        priced.push(line);
    }
    if total <= 0 {
        return Err(PaymentError::InvalidAmount);
    }
    Ok(Priced {
        currency,
        lines: priced,
        total,
    })
}

/// What a provider said, for the record: at most `max` characters, control characters (which
/// `jsonb` may refuse) replaced.
fn printable(raw: &str, max: usize) -> String {
    raw.chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// `raw` trimmed, `min`–`max` characters, no control characters.
fn text(raw: &str, min: usize, max: usize) -> Option<String> {
    let t = raw.trim();
    let n = t.chars().count();
    ((min..=max).contains(&n) && !t.chars().any(char::is_control)).then(|| t.to_owned())
}

impl Aggregate for Payment {
    const TYPE: &'static str = PAYMENT;
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = PaymentError;
    type Services = ();

    async fn handle(
        &mut self,
        command: PaymentCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), PaymentError> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: PaymentEvent) {
        match event {
            PaymentEvent::Requested {
                tenant_id,
                provider,
                currency,
                total,
                customer_reference,
                description,
                ..
            } => {
                self.tenant_id = Some(tenant_id);
                self.provider = Some(provider);
                self.customer_reference = customer_reference;
                self.description = description;
                self.currency = currency;
                self.total = total;
                self.status = Status::Requested;
            }
            PaymentEvent::LinkCreated {
                provider_order_id,
                url,
                expires_at,
                ..
            } => {
                self.provider_order_id = Some(provider_order_id);
                self.link_url = Some(url);
                self.link_expires_at = expires_at;
                self.status = Status::LinkCreated;
            }
            PaymentEvent::LinkFailed { .. } => {}
            PaymentEvent::Paid {
                amount,
                webhook_id,
                provider_reference,
                ..
            } => {
                // Its held refund is applied (or recorded as not applicable) by the events
                // that follow; those naming other transactions wait for them.
                self.held_refunds.remove("");
                self.held_refunds.remove(&provider_reference);
                self.provider_reference = Some(provider_reference);
                self.paid = amount;
                self.status = Status::Paid;
                self.webhooks.insert(webhook_id);
            }
            PaymentEvent::Failed { webhook_id, .. } => {
                self.status = Status::Failed;
                self.webhooks.insert(webhook_id);
            }
            PaymentEvent::Expired { webhook_id, .. } => {
                self.status = Status::Expired;
                self.webhooks.insert(webhook_id);
            }
            PaymentEvent::Cancelled { .. } => self.status = Status::Cancelled,
            money @ (PaymentEvent::ChargedAgain { .. }
            | PaymentEvent::ChargeRefunded { .. }
            | PaymentEvent::RefundHeld { .. }
            | PaymentEvent::Refunded { .. }
            | PaymentEvent::ProviderStatusIgnored { .. }) => self.apply_money_back(money),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;
    use events::payments::{CatalogEvent, Product, Tax};

    use super::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0)
            .single()
            .unwrap_or_default()
    }

    fn vat() -> Tax {
        Tax {
            tax_id: "vat".into(),
            name: "VAT".into(),
            rate_bp: 2_000,
            included: true,
        }
    }

    fn product(id: &str, price: i64, currency: &str, active: bool) -> Product {
        Product {
            product_id: id.into(),
            name: id.to_uppercase(),
            unit_price: price,
            currency: currency.into(),
            tax_id: Some("vat".into()),
            active,
        }
    }

    /// VAT 20 % included; `lesson` 60.00 EUR, `book` 12.00 EUR, `old` inactive, `usd` in USD.
    fn catalog() -> Box<Catalog> {
        let mut c = Catalog::default();
        for e in [
            CatalogEvent::TaxDefined(vat()),
            CatalogEvent::ProductDefined(product("lesson", 6_000, "EUR", true)),
            CatalogEvent::ProductDefined(product("book", 1_200, "EUR", true)),
            CatalogEvent::ProductDefined(product("old", 100, "EUR", false)),
            CatalogEvent::ProductDefined(product("usd", 100, "USD", true)),
        ] {
            c.apply(e);
        }
        Box::new(c)
    }

    fn line(product_id: &str, quantity: u32) -> LineRequest {
        LineRequest {
            product_id: product_id.into(),
            quantity,
        }
    }

    fn request_with(lines: Vec<LineRequest>) -> PaymentCommand {
        cmd(PaymentAction::Request {
            tenant_id: "t1".into(),
            provider: PaymentProvider::Lyra,
            currency: "EUR".into(),
            lines,
            catalog: catalog(),
            customer_reference: " cust-1 ".into(),
            description: Some("Lessons".into()),
        })
    }

    fn cmd(action: PaymentAction) -> PaymentCommand {
        PaymentCommand { at: t0(), action }
    }

    /// 2 lessons + 1 book: 132.00 EUR incl. 22.00 VAT.
    fn requested() -> PaymentEvent {
        let lesson = values::line(&product("lesson", 6_000, "EUR", true), Some(&vat()), 2);
        let book = values::line(&product("book", 1_200, "EUR", true), Some(&vat()), 1);
        PaymentEvent::Requested {
            tenant_id: "t1".into(),
            provider: PaymentProvider::Lyra,
            currency: "EUR".into(),
            lines: [lesson, book].into_iter().flatten().collect(),
            net: 11_000,
            tax: 2_200,
            total: 13_200,
            customer_reference: "cust-1".into(),
            description: Some("Lessons".into()),
            at: t0(),
        }
    }

    fn link() -> PaymentEvent {
        PaymentEvent::LinkCreated {
            provider_order_id: "po-1".into(),
            url: "https://pay.example/po-1".into(),
            expires_at: None,
            at: t0(),
        }
    }

    fn paid(webhook: &str) -> PaymentEvent {
        PaymentEvent::Paid {
            amount: 13_200,
            provider_reference: "tx-1".into(),
            webhook_id: webhook.into(),
            at: t0(),
        }
    }

    fn status(webhook: &str, status: ProviderStatus) -> PaymentCommand {
        cmd(PaymentAction::ProviderStatus {
            webhook_id: webhook.into(),
            provider: PaymentProvider::Lyra,
            status,
        })
    }

    fn paid_status(amount: i64) -> ProviderStatus {
        ProviderStatus::Paid {
            amount,
            currency: "EUR".into(),
            reference: "tx-1".into(),
        }
    }

    fn refunded_status(total: i64) -> ProviderStatus {
        ProviderStatus::Refunded {
            reference: None,
            refunded_total: total,
            currency: "EUR".into(),
        }
    }

    fn ignored(status: &str, reason: &str, webhook: &str) -> PaymentEvent {
        PaymentEvent::ProviderStatusIgnored {
            status: status.into(),
            reason: reason.into(),
            webhook_id: webhook.into(),
            at: t0(),
        }
    }

    fn framework() -> TestFramework<Payment> {
        TestFramework::with(())
    }

    #[test]
    fn request_prices_the_lines_from_the_catalog() {
        framework()
            .given_no_previous_events()
            .when(request_with(vec![line("lesson", 2), line("book", 1)]))
            .then_expect_events(vec![requested()]);
    }

    #[test]
    fn request_twice_is_refused() {
        framework()
            .given(vec![requested()])
            .when(request_with(vec![line("book", 1)]))
            .then_expect_error(PaymentError::AlreadyExists);
    }

    #[test]
    fn request_without_lines_or_with_zero_units_is_refused() {
        for lines in [vec![], vec![line("book", 0)], vec![line("book", 10_001)]] {
            framework()
                .given_no_previous_events()
                .when(request_with(lines))
                .then_expect_error(PaymentError::InvalidLines);
        }
    }

    #[test]
    fn request_of_an_unknown_or_inactive_product_is_refused() {
        framework()
            .given_no_previous_events()
            .when(request_with(vec![line("nope", 1)]))
            .then_expect_error(PaymentError::UnknownProduct);
        framework()
            .given_no_previous_events()
            .when(request_with(vec![line("old", 1)]))
            .then_expect_error(PaymentError::InactiveProduct);
    }

    #[test]
    fn request_mixing_currencies_is_refused() {
        framework()
            .given_no_previous_events()
            .when(request_with(vec![line("usd", 1)]))
            .then_expect_error(PaymentError::CurrencyMismatch);
    }

    #[test]
    fn request_with_a_bad_customer_reference_is_refused() {
        framework()
            .given_no_previous_events()
            .when(cmd(PaymentAction::Request {
                tenant_id: "t1".into(),
                provider: PaymentProvider::Lyra,
                currency: "EUR".into(),
                lines: vec![line("book", 1)],
                catalog: catalog(),
                customer_reference: "  ".into(),
                description: None,
            }))
            .then_expect_error(PaymentError::InvalidCustomerReference);
    }

    #[test]
    fn request_of_a_free_payment_is_refused() {
        let mut c = catalog();
        c.apply(CatalogEvent::ProductDefined(product(
            "free", 0, "EUR", true,
        )));
        framework()
            .given_no_previous_events()
            .when(cmd(PaymentAction::Request {
                tenant_id: "t1".into(),
                provider: PaymentProvider::Lyra,
                currency: "EUR".into(),
                lines: vec![line("free", 1)],
                catalog: c,
                customer_reference: "c".into(),
                description: None,
            }))
            .then_expect_error(PaymentError::InvalidAmount);
    }

    #[test]
    fn record_link_on_a_requested_payment_creates_it() {
        framework()
            .given(vec![requested()])
            .when(cmd(PaymentAction::RecordLink {
                provider_order_id: "po-1".into(),
                url: "https://pay.example/po-1".into(),
                expires_at: None,
            }))
            .then_expect_events(vec![link()]);
    }

    #[test]
    fn record_link_again_with_the_same_order_appends_nothing_and_another_is_refused() {
        framework()
            .given(vec![requested(), link()])
            .when(cmd(PaymentAction::RecordLink {
                provider_order_id: "po-1".into(),
                url: "https://pay.example/po-1".into(),
                expires_at: None,
            }))
            .then_expect_events(vec![]);
        framework()
            .given(vec![requested(), link()])
            .when(cmd(PaymentAction::RecordLink {
                provider_order_id: "po-2".into(),
                url: "https://pay.example/po-2".into(),
                expires_at: None,
            }))
            .then_expect_error(PaymentError::LinkExists);
    }

    #[test]
    fn record_link_failure_after_a_link_is_refused() {
        framework()
            .given(vec![requested(), link()])
            .when(cmd(PaymentAction::RecordLinkFailure {
                code: None,
                reason: "x".into(),
            }))
            .then_expect_error(PaymentError::NotAwaitingLink);
    }

    #[test]
    fn any_command_on_an_unknown_payment_is_not_found() {
        framework()
            .given_no_previous_events()
            .when(status("w1", paid_status(13_200)))
            .then_expect_error(PaymentError::NotFound);
    }

    #[test]
    fn paid_with_the_right_amount_is_applied() {
        framework()
            .given(vec![requested(), link()])
            .when(status("w1", paid_status(13_200)))
            .then_expect_events(vec![paid("w1")]);
    }

    #[test]
    fn paid_with_another_amount_or_currency_is_tracked_as_a_charge_that_does_not_pay() {
        let mismatch = |amount: i64, currency: &str| PaymentEvent::ChargedAgain {
            amount,
            currency: currency.into(),
            provider_reference: "tx".into(),
            reason: "amount_mismatch".into(),
            webhook_id: "w1".into(),
            at: t0(),
        };
        let by = |amount: i64, currency: &str| ProviderStatus::Paid {
            amount,
            currency: currency.into(),
            reference: "tx".into(),
        };
        framework()
            .given(vec![requested(), link()])
            .when(status("w1", by(100, "EUR")))
            .then_expect_events(vec![mismatch(100, "EUR")]);
        framework()
            .given(vec![requested(), link()])
            .when(status("w1", by(13_200, "USD")))
            .then_expect_events(vec![mismatch(13_200, "USD")]);
        // Reported again: a repeat; its refund applies to it, before or after the payment.
        framework()
            .given(vec![requested(), link(), mismatch(100, "EUR")])
            .when(status("w2", by(100, "EUR")))
            .then_expect_events(vec![ignored("paid", "charge_already_recorded", "w2")]);
        framework()
            .given(vec![requested(), link(), mismatch(100, "EUR"), paid("w3")])
            .when(status(
                "w4",
                ProviderStatus::Refunded {
                    refunded_total: 100,
                    currency: "EUR".into(),
                    reference: Some("tx".into()),
                },
            ))
            .then_expect_events(vec![charge_refunded("tx", 100, 100, "w4")]);
    }

    #[test]
    fn two_identical_charges_leave_the_payment_paid_whichever_is_refunded() {
        // Paid by tx-1, charged again by tx-2; the merchant refunds tx-1: tx-2 pays it.
        let mut state = Payment::default();
        for event in [
            requested(),
            link(),
            paid("w1"),
            charged_again("tx-2", "w2"),
            PaymentEvent::Refunded {
                amount: 13_200,
                refunded_total: 13_200,
                webhook_id: "w3".into(),
                at: t0(),
            },
        ] {
            state.apply(event);
        }
        assert_eq!(state.status(), Status::Paid);
        // Refunding tx-2 as well leaves nothing kept.
        state.apply(charge_refunded("tx-2", 13_200, 13_200, "w4"));
        assert_eq!(state.status(), Status::Refunded);
    }

    #[test]
    fn the_same_webhook_twice_changes_nothing() {
        framework()
            .given(vec![requested(), link(), paid("w1")])
            .when(status("w1", paid_status(13_200)))
            .then_expect_events(vec![]);
    }

    #[test]
    fn failed_after_paid_is_recorded_not_applied() {
        framework()
            .given(vec![requested(), link(), paid("w1")])
            .when(status(
                "w2",
                ProviderStatus::Failed {
                    reason: "card_declined".into(),
                },
            ))
            .then_expect_events(vec![ignored("failed", "payment_paid", "w2")]);
    }

    #[test]
    fn failed_then_paid_applies_both() {
        let failed = PaymentEvent::Failed {
            reason: "card_declined".into(),
            webhook_id: "w1".into(),
            at: t0(),
        };
        framework()
            .given(vec![requested(), link()])
            .when(status(
                "w1",
                ProviderStatus::Failed {
                    reason: "card_declined".into(),
                },
            ))
            .then_expect_events(vec![failed.clone()]);
        framework()
            .given(vec![requested(), link(), failed])
            .when(status("w2", paid_status(13_200)))
            .then_expect_events(vec![paid("w2")]);
    }

    #[test]
    fn expired_while_awaiting_payment_is_applied_and_after_paid_is_recorded() {
        framework()
            .given(vec![requested(), link()])
            .when(status("w1", ProviderStatus::Expired))
            .then_expect_events(vec![PaymentEvent::Expired {
                webhook_id: "w1".into(),
                at: t0(),
            }]);
        framework()
            .given(vec![requested(), link(), paid("w1")])
            .when(status("w2", ProviderStatus::Expired))
            .then_expect_events(vec![ignored("expired", "payment_paid", "w2")]);
    }

    #[test]
    fn a_second_paid_is_recorded_not_applied() {
        framework()
            .given(vec![requested(), link(), paid("w1")])
            .when(status("w2", paid_status(13_200)))
            .then_expect_events(vec![ignored("paid", "already_paid", "w2")]);
    }

    fn paid_by(reference: &str) -> ProviderStatus {
        ProviderStatus::Paid {
            amount: 13_200,
            currency: "EUR".into(),
            reference: reference.into(),
        }
    }

    fn refund_of(reference: &str, total: i64) -> ProviderStatus {
        ProviderStatus::Refunded {
            refunded_total: total,
            currency: "EUR".into(),
            reference: Some(reference.into()),
        }
    }

    fn charged_again(reference: &str, webhook: &str) -> PaymentEvent {
        PaymentEvent::ChargedAgain {
            amount: 13_200,
            currency: "EUR".into(),
            provider_reference: reference.into(),
            reason: "duplicate_charge".into(),
            webhook_id: webhook.into(),
            at: t0(),
        }
    }

    fn charge_refunded(reference: &str, amount: i64, total: i64, webhook: &str) -> PaymentEvent {
        PaymentEvent::ChargeRefunded {
            provider_reference: reference.into(),
            amount,
            refunded_total: total,
            webhook_id: webhook.into(),
            at: t0(),
        }
    }

    fn held_of(reference: &str, total: i64, webhook: &str) -> PaymentEvent {
        PaymentEvent::RefundHeld {
            refunded_total: total,
            currency: "EUR".into(),
            reference: Some(reference.into()),
            webhook_id: webhook.into(),
            at: t0(),
        }
    }

    #[test]
    fn a_paid_naming_another_transaction_is_tracked_as_another_charge() {
        framework()
            .given(vec![requested(), link(), paid("w1")])
            .when(status("w2", paid_by("tx-2")))
            .then_expect_events(vec![charged_again("tx-2", "w2")]);
        // Reported again (another webhook of the same transaction): a repeat.
        framework()
            .given(vec![
                requested(),
                link(),
                paid("w1"),
                charged_again("tx-2", "w2"),
            ])
            .when(status("w3", paid_by("tx-2")))
            .then_expect_events(vec![ignored("paid", "already_paid", "w3")]);
    }

    #[test]
    fn refunds_of_another_charge_apply_to_it_up_to_its_amount() {
        let given = || vec![requested(), link(), paid("w1"), charged_again("tx-2", "w2")];
        framework()
            .given(given())
            .when(status("w3", refund_of("tx-2", 5_000)))
            .then_expect_events(vec![charge_refunded("tx-2", 5_000, 5_000, "w3")]);
        let mut partly = given();
        partly.push(charge_refunded("tx-2", 5_000, 5_000, "w3"));
        framework()
            .given(partly.clone())
            .when(status("w4", refund_of("tx-2", 13_200)))
            .then_expect_events(vec![charge_refunded("tx-2", 8_200, 13_200, "w4")]);
        framework()
            .given(partly.clone())
            .when(status("w4", refund_of("tx-2", 5_000)))
            .then_expect_events(vec![ignored("refunded", "refund_already_recorded", "w4")]);
        framework()
            .given(partly)
            .when(status("w4", refund_of("tx-2", 13_201)))
            .then_expect_events(vec![ignored("refunded", "refund_exceeds_paid", "w4")]);
    }

    #[test]
    fn a_refund_of_another_charge_before_that_charge_is_held_until_it_comes() {
        framework()
            .given(vec![requested(), link(), paid("w1")])
            .when(status("w3", refund_of("tx-2", 13_200)))
            .then_expect_events(vec![held_of("tx-2", 13_200, "w3")]);
        framework()
            .given(vec![
                requested(),
                link(),
                paid("w1"),
                held_of("tx-2", 13_200, "w3"),
            ])
            .when(status("w2", paid_by("tx-2")))
            .then_expect_events(vec![
                charged_again("tx-2", "w2"),
                charge_refunded("tx-2", 13_200, 13_200, "w3"),
            ]);
        // Held before the payment itself was confirmed: it outlives that confirmation.
        framework()
            .given(vec![
                requested(),
                link(),
                held_of("tx-2", 13_200, "w3"),
                paid("w1"),
            ])
            .when(status("w2", paid_by("tx-2")))
            .then_expect_events(vec![
                charged_again("tx-2", "w2"),
                charge_refunded("tx-2", 13_200, 13_200, "w3"),
            ]);
    }

    #[test]
    fn refunds_are_applied_up_to_what_was_paid() {
        let first = PaymentEvent::Refunded {
            amount: 1_200,
            refunded_total: 1_200,
            webhook_id: "w2".into(),
            at: t0(),
        };
        framework()
            .given(vec![requested(), link(), paid("w1")])
            .when(status("w2", refunded_status(1_200)))
            .then_expect_events(vec![first.clone()]);
        framework()
            .given(vec![requested(), link(), paid("w1"), first.clone()])
            .when(status("w3", refunded_status(13_200)))
            .then_expect_events(vec![PaymentEvent::Refunded {
                amount: 12_000,
                refunded_total: 13_200,
                webhook_id: "w3".into(),
                at: t0(),
            }]);
        framework()
            .given(vec![requested(), link(), paid("w1"), first])
            .when(status("w3", refunded_status(1_200)))
            .then_expect_events(vec![ignored("refunded", "refund_already_recorded", "w3")]);
    }

    #[test]
    fn a_refund_above_what_was_paid_is_recorded_not_applied() {
        framework()
            .given(vec![requested(), link(), paid("w1")])
            .when(status("w2", refunded_status(13_201)))
            .then_expect_events(vec![ignored("refunded", "refund_exceeds_paid", "w2")]);
    }

    fn held(total: i64, webhook: &str) -> PaymentEvent {
        PaymentEvent::RefundHeld {
            refunded_total: total,
            currency: "EUR".into(),
            reference: None,
            webhook_id: webhook.into(),
            at: t0(),
        }
    }

    #[test]
    fn a_refund_before_the_payment_is_held() {
        framework()
            .given(vec![requested(), link()])
            .when(status("w2", refunded_status(100)))
            .then_expect_events(vec![held(100, "w2")]);
        // A later report of more refunds replaces it; one of less or as much is a repeat.
        framework()
            .given(vec![requested(), link(), held(100, "w2")])
            .when(status("w3", refunded_status(300)))
            .then_expect_events(vec![held(300, "w3")]);
        framework()
            .given(vec![requested(), link(), held(300, "w3")])
            .when(status("w4", refunded_status(300)))
            .then_expect_events(vec![ignored("refunded", "refund_already_recorded", "w4")]);
    }

    #[test]
    fn a_held_refund_is_applied_when_the_payment_is_confirmed() {
        framework()
            .given(vec![requested(), link(), held(13_200, "w2")])
            .when(status("w1", paid_status(13_200)))
            .then_expect_events(vec![
                paid("w1"),
                PaymentEvent::Refunded {
                    amount: 13_200,
                    refunded_total: 13_200,
                    webhook_id: "w2".into(),
                    at: t0(),
                },
            ]);
    }

    #[test]
    fn a_refund_of_another_transaction_leaves_the_payment_as_paid() {
        framework()
            .given(vec![
                requested(),
                link(),
                paid("w1"),
                charged_again("tx-2", "w2"),
            ])
            .when(status("w3", refund_of("tx-2", 13_200)))
            .then_expect_events(vec![charge_refunded("tx-2", 13_200, 13_200, "w3")]);
        framework()
            .given(vec![requested(), link(), paid("w1")])
            .when(status("w2", refund_of("tx-1", 13_200)))
            .then_expect_events(vec![PaymentEvent::Refunded {
                amount: 13_200,
                refunded_total: 13_200,
                webhook_id: "w2".into(),
                at: t0(),
            }]);
    }

    #[test]
    fn held_refunds_of_another_transaction_do_not_replace_this_ones() {
        framework()
            .given(vec![
                requested(),
                link(),
                held_of("tx-1", 5_000, "w2"),
                held_of("tx-2", 13_200, "w3"),
            ])
            .when(status("w1", paid_status(13_200)))
            .then_expect_events(vec![
                paid("w1"),
                PaymentEvent::Refunded {
                    amount: 5_000,
                    refunded_total: 5_000,
                    webhook_id: "w2".into(),
                    at: t0(),
                },
            ]);
    }

    #[test]
    fn refunds_recorded_as_of_another_charge_by_earlier_streams_stay_recorded() {
        // Before refunds of other charges were held, the confirmation recorded them as not
        // applicable; that charge arriving now is tracked without them.
        framework()
            .given(vec![
                requested(),
                link(),
                held_of("tx-2", 13_200, "w3"),
                paid("w1"),
                ignored("refunded", "refund_of_another_charge", "w3"),
            ])
            .when(status("w2", paid_by("tx-2")))
            .then_expect_events(vec![charged_again("tx-2", "w2")]);
    }

    #[test]
    fn a_held_refund_above_the_payment_is_recorded_not_applied() {
        framework()
            .given(vec![requested(), link(), held(99_999, "w2")])
            .when(status("w1", paid_status(13_200)))
            .then_expect_events(vec![
                paid("w1"),
                ignored("refunded", "refund_exceeds_paid", "w2"),
            ]);
    }

    #[test]
    fn cancel_before_payment_cancels_and_after_is_refused() {
        framework()
            .given(vec![requested(), link()])
            .when(cmd(PaymentAction::Cancel {
                reason: "duplicate".into(),
            }))
            .then_expect_events(vec![PaymentEvent::Cancelled {
                reason: "duplicate".into(),
                at: t0(),
            }]);
        framework()
            .given(vec![requested(), link(), paid("w1")])
            .when(cmd(PaymentAction::Cancel { reason: "".into() }))
            .then_expect_error(PaymentError::NotCancellable);
    }

    #[test]
    fn record_link_on_a_stripe_payment_is_refused() {
        let mut stripe = requested();
        if let PaymentEvent::Requested { provider, .. } = &mut stripe {
            *provider = PaymentProvider::Stripe;
        }
        framework()
            .given(vec![stripe])
            .when(cmd(PaymentAction::RecordLink {
                provider_order_id: "po-1".into(),
                url: "https://pay.example/po-1".into(),
                expires_at: None,
            }))
            .then_expect_error(PaymentError::NotAwaitingLink);
    }

    #[test]
    fn a_status_from_another_provider_is_recorded_not_applied() {
        framework()
            .given(vec![requested(), link()])
            .when(cmd(PaymentAction::ProviderStatus {
                webhook_id: "w1".into(),
                provider: PaymentProvider::Stripe,
                status: paid_status(13_200),
            }))
            .then_expect_events(vec![ignored("paid", "provider_mismatch", "w1")]);
    }

    #[test]
    fn paid_after_cancel_is_applied_because_the_money_was_taken() {
        framework()
            .given(vec![
                requested(),
                link(),
                PaymentEvent::Cancelled {
                    reason: "".into(),
                    at: t0(),
                },
            ])
            .when(status("w1", paid_status(13_200)))
            .then_expect_events(vec![paid("w1")]);
    }

    #[test]
    fn cancel_twice_appends_nothing() {
        framework()
            .given(vec![
                requested(),
                PaymentEvent::Cancelled {
                    reason: "".into(),
                    at: t0(),
                },
            ])
            .when(cmd(PaymentAction::Cancel { reason: "".into() }))
            .then_expect_events(vec![]);
    }
}
