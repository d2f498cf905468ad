//! Read models of the payments context, one projection per aggregate type:
//! - `catalog` (`catalog` events): `catalog_taxes`, `catalog_products`;
//! - `payments` (`payment` events): `payments`, `payment_lines`, `payment_refunds`.
//!
//! Every event moves its row's `version`, so a reader can wait for its own write.

/// Provider refunds that named a transaction before any payment was paid with it, processed again when one is.
pub mod references;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use events::payments::{CatalogEvent, PaymentEvent, CATALOG, PAYMENT};
use events::Envelope;
use sqlx::PgConnection;

use crate::projection::{decode, Projection, ProjectionError, Target};

/// Reasons a provider's report was not applied although money moved (a charge or a refund
/// the payment does not show): staff must act on them (migration 0026). Repeats
/// (`already_paid`, `refund_already_recorded`) and late failures after a payment need not.
const NEEDS_ATTENTION: [&str; 5] = [
    "duplicate_charge",
    "amount_mismatch",
    "provider_mismatch",
    // Written by events recorded before refunds were held until the payment.
    "not_paid",
    "refund_exceeds_paid",
];

/// The `catalog_taxes` and `catalog_products` read models.
pub struct CatalogProjection;

#[async_trait]
impl Projection for CatalogProjection {
    fn name(&self) -> &'static str {
        "catalog"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[CATALOG]
    }

    fn tables(&self) -> &'static [&'static str] {
        &["catalog_taxes", "catalog_products"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        target: &Target,
        e: &Envelope,
    ) -> Result<(), ProjectionError> {
        // A catalog's id is its tenant's.
        let tenant = e.aggregate_id.as_str();
        match decode::<CatalogEvent>(e)? {
            CatalogEvent::TaxDefined(t) | CatalogEvent::TaxUpdated(t) => {
                sqlx::query(&format!(
                    "INSERT INTO {} (tenant_id, id, name, rate_bp, included, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (tenant_id, id) DO UPDATE SET name = $3, rate_bp = $4,
                        included = $5, updated_at = $6",
                    target.table("catalog_taxes")
                ))
                .bind(tenant)
                .bind(t.tax_id)
                .bind(t.name)
                .bind(t.rate_bp as i32)
                .bind(t.included)
                .bind(e.recorded_at)
                .execute(&mut *conn)
                .await?;
            }
            CatalogEvent::ProductDefined(p) | CatalogEvent::ProductUpdated(p) => {
                sqlx::query(&format!(
                    "INSERT INTO {} (tenant_id, id, name, unit_price, currency, tax_id, active, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (tenant_id, id) DO UPDATE SET name = $3, unit_price = $4,
                        currency = $5, tax_id = $6, active = $7, updated_at = $8",
                    target.table("catalog_products")
                ))
                .bind(tenant)
                .bind(p.product_id)
                .bind(p.name)
                .bind(p.unit_price)
                .bind(p.currency)
                .bind(p.tax_id)
                .bind(p.active)
                .bind(e.recorded_at)
                .execute(&mut *conn)
                .await?;
            }
        }
        Ok(())
    }
}

/// The payment an event changes, and what every change of it records.
#[derive(Clone, Copy)]
struct Change<'a> {
    /// The read model's tables (live, or a rebuild's).
    target: &'a Target,
    /// The event.
    e: &'a Envelope,
    /// The payments table's name.
    payments: &'a str,
    /// The payment.
    id: &'a str,
    /// Its tenant.
    tenant: &'a str,
    /// The event's sequence: the row's version.
    version: i64,
    /// When the event was recorded.
    recorded: chrono::DateTime<chrono::Utc>,
}

/// The payment row and its lines.
async fn requested(
    conn: &mut PgConnection,
    c: &Change<'_>,
    event: PaymentEvent,
) -> Result<(), ProjectionError> {
    let PaymentEvent::Requested {
        provider,
        currency,
        lines,
        net,
        tax,
        total,
        customer_reference,
        description,
        at,
        ..
    } = event
    else {
        return Ok(());
    };
    let Change {
        target,
        payments,
        id,
        tenant,
        version,
        recorded,
        ..
    } = *c;
    sqlx::query(&format!(
        "INSERT INTO {payments} (id, tenant_id, provider, status, currency, net, tax,
                    total, customer_reference, description, requested_at,
                    updated_at, version)
         VALUES ($1::uuid, $2, $3, 'requested', $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    ))
    .bind(id)
    .bind(tenant)
    .bind(match provider {
        events::payments::PaymentProvider::Lyra => "lyra",
        events::payments::PaymentProvider::Stripe => "stripe",
    })
    .bind(currency)
    .bind(net)
    .bind(tax)
    .bind(total)
    .bind(customer_reference)
    .bind(description)
    .bind(at)
    .bind(recorded)
    .bind(version)
    .execute(&mut *conn)
    .await?;
    for (n, l) in lines.into_iter().enumerate() {
        sqlx::query(&format!(
            "INSERT INTO {} (payment_id, n, tenant_id, product_id, name, quantity,
                             unit_price, tax_name, rate_bp, net, tax, gross)
             VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            target.table("payment_lines")
        ))
        .bind(id)
        .bind(n as i32 + 1)
        .bind(tenant)
        .bind(l.product_id)
        .bind(l.name)
        .bind(l.quantity as i32)
        .bind(l.unit_price)
        .bind(l.tax.as_ref().map(|t| t.name.clone()))
        .bind(l.tax.as_ref().map(|t| t.rate_bp as i32))
        .bind(l.net)
        .bind(l.tax_amount)
        .bind(l.gross)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The payment link the provider made.
async fn link_created(
    conn: &mut PgConnection,
    c: &Change<'_>,
    provider_order_id: String,
    url: String,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(), ProjectionError> {
    let Change {
        payments,
        id,
        version,
        recorded,
        ..
    } = *c;
    sqlx::query(&format!(
        "UPDATE {payments} SET status = 'link_created', provider_order_id = $4,
                link_url = $5, link_expires_at = $6, last_error = NULL,
                updated_at = $2, version = $3
          WHERE id = $1::uuid"
    ))
    .bind(id)
    .bind(recorded)
    .bind(version)
    .bind(provider_order_id)
    .bind(url)
    .bind(expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Paid: the row, the charge that paid it, and the settlement of its webhook.
async fn paid(
    conn: &mut PgConnection,
    c: &Change<'_>,
    amount: i64,
    provider_reference: String,
    webhook_id: String,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let Change {
        target,
        e,
        payments,
        id,
        tenant,
        ..
    } = *c;
    // A payment paid after it was cancelled or failed is no longer in error.
    sqlx::query(&format!(
        "UPDATE {payments} SET status = 'paid', provider_reference = $2,
                paid_at = $3, last_error = NULL
          WHERE id = $1::uuid"
    ))
    .bind(id)
    .bind(&provider_reference)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    let charge = Charge {
        reference: &provider_reference,
        amount,
        currency: None,
        reason: "payment",
        webhook_id: &webhook_id,
        at,
    };
    charge.insert(conn, target, id, tenant).await?;
    settle(conn, target, e, &webhook_id, at).await
}

/// A refund of the charge that paid the payment.
async fn refunded(
    conn: &mut PgConnection,
    c: &Change<'_>,
    refunded_total: i64,
    webhook_id: String,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let Change { target, e, id, .. } = *c;
    sqlx::query(&format!(
        "UPDATE {} SET refunded = $2 WHERE payment_id = $1::uuid AND reason = 'payment'",
        target.table("payment_charges")
    ))
    .bind(id)
    .bind(refunded_total)
    .execute(&mut *conn)
    .await?;
    settle(conn, target, e, &webhook_id, at).await
}

/// A charge that does not pay the payment, tracked beside it.
async fn charged_again(
    conn: &mut PgConnection,
    c: &Change<'_>,
    event: PaymentEvent,
) -> Result<(), ProjectionError> {
    let PaymentEvent::ChargedAgain {
        amount,
        currency,
        provider_reference,
        reason,
        webhook_id,
        at,
    } = event
    else {
        return Ok(());
    };
    let Change {
        target,
        e,
        id,
        tenant,
        ..
    } = *c;
    let charge = Charge {
        reference: &provider_reference,
        amount,
        currency: Some(&currency),
        reason: &reason,
        webhook_id: &webhook_id,
        at,
    };
    charge.insert(conn, target, id, tenant).await?;
    settle(conn, target, e, &webhook_id, at).await
}

/// A refund of such a charge.
async fn charge_refunded(
    conn: &mut PgConnection,
    c: &Change<'_>,
    provider_reference: String,
    refunded_total: i64,
    webhook_id: String,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let Change { target, e, id, .. } = *c;
    sqlx::query(&format!(
        "UPDATE {} SET refunded = $3
          WHERE payment_id = $1::uuid AND provider_reference = $2",
        target.table("payment_charges")
    ))
    .bind(id)
    .bind(provider_reference)
    .bind(refunded_total)
    .execute(&mut *conn)
    .await?;
    settle(conn, target, e, &webhook_id, at).await
}

/// The `payments`, `payment_lines` and `payment_refunds` read models.
pub struct PaymentsProjection;

#[async_trait]
impl Projection for PaymentsProjection {
    fn name(&self) -> &'static str {
        "payments"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[PAYMENT]
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "payments",
            "payment_lines",
            "payment_refunds",
            "payment_charges",
        ]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        target: &Target,
        e: &Envelope,
    ) -> Result<(), ProjectionError> {
        let payments = target.table("payments");
        let c = Change {
            target,
            e,
            payments: &payments,
            id: e.aggregate_id.as_str(),
            tenant: e.tenant_id(),
            version: e.sequence as i64,
            recorded: e.recorded_at,
        };
        match decode::<PaymentEvent>(e)? {
            requested_event @ PaymentEvent::Requested { .. } => {
                requested(conn, &c, requested_event).await
            }
            PaymentEvent::LinkCreated {
                provider_order_id,
                url,
                expires_at,
                ..
            } => link_created(conn, &c, provider_order_id, url, expires_at).await,
            PaymentEvent::Paid {
                amount,
                provider_reference,
                webhook_id,
                at,
            } => paid(conn, &c, amount, provider_reference, webhook_id, at).await,
            // A refund of the charge that paid the payment.
            PaymentEvent::Refunded {
                refunded_total,
                webhook_id,
                at,
                ..
            } => refunded(conn, &c, refunded_total, webhook_id, at).await,
            charged @ PaymentEvent::ChargedAgain { .. } => charged_again(conn, &c, charged).await,
            PaymentEvent::ChargeRefunded {
                provider_reference,
                refunded_total,
                webhook_id,
                at,
                ..
            } => {
                let reference = provider_reference;
                charge_refunded(conn, &c, reference, refunded_total, webhook_id, at).await
            }
            ignored @ PaymentEvent::ProviderStatusIgnored { .. } => {
                provider_report(conn, &c, ignored).await
            }
            status @ (PaymentEvent::LinkFailed { .. }
            | PaymentEvent::Failed { .. }
            | PaymentEvent::Expired { .. }
            | PaymentEvent::Cancelled { .. }
            | PaymentEvent::RefundHeld { .. }) => status_change(conn, &c, status).await,
        }
    }
}

/// An event that changes the payment row's status or last error only.
async fn status_change(
    conn: &mut PgConnection,
    c: &Change<'_>,
    event: PaymentEvent,
) -> Result<(), ProjectionError> {
    // Each arm names the columns it sets, from $4 on; $1–$3 are the row and its version.
    let (set, text) = match event {
        PaymentEvent::LinkFailed { reason, .. } => ("last_error = $4", Some(reason)),
        PaymentEvent::Failed { reason, .. } => ("status = 'failed', last_error = $4", Some(reason)),
        PaymentEvent::Expired { .. } => ("status = 'expired'", None),
        PaymentEvent::Cancelled { reason, .. } => (
            "status = 'cancelled', last_error = NULLIF($4, '')",
            Some(reason),
        ),
        // Applied with the payment's confirmation (then a `Refunded` follows).
        PaymentEvent::RefundHeld { .. } => ("status = status", None),
        // Never reached: `apply` sends every other event to its own function.
        _ => return Ok(()),
    };
    let sql = format!(
        "UPDATE {} SET {set}, updated_at = $2, version = $3 WHERE id = $1::uuid",
        c.payments
    );
    let mut query = sqlx::query(&sql)
        .bind(c.id)
        .bind(c.recorded)
        .bind(c.version);
    if set.contains("$4") {
        query = query.bind(text);
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

/// A provider's report the payment recorded without applying it: shown on the row when
/// money moved that staff must look at, cleared when a duplicate charge was returned.
async fn provider_report(
    conn: &mut PgConnection,
    c: &Change<'_>,
    event: PaymentEvent,
) -> Result<(), ProjectionError> {
    let Change {
        target,
        e,
        payments,
        id,
        ..
    } = *c;
    match event {
        // Recorded on the payment's timeline (the event store); the row keeps its
        // state, and shows the reports of money that moved and was not applied.
        PaymentEvent::ProviderStatusIgnored {
            status,
            reason,
            webhook_id,
            at,
        } if NEEDS_ATTENTION.contains(&reason.as_str()) => {
            sqlx::query(&format!(
                "UPDATE {payments} SET report_flag = $2, report_flag_at = $3
                  WHERE id = $1::uuid"
            ))
            .bind(id)
            .bind(format!("{status}:{reason}"))
            .bind(at)
            .execute(&mut *conn)
            .await?;
            settle(conn, target, e, &webhook_id, at).await
        }
        // The duplicate charge was returned (streams written before charges were
        // tracked): nothing is left for staff to do.
        PaymentEvent::ProviderStatusIgnored {
            reason,
            webhook_id,
            at,
            ..
        } if reason == "refund_of_another_charge" => {
            sqlx::query(&format!(
                "UPDATE {payments} SET report_flag = NULL, report_flag_at = NULL
                  WHERE id = $1::uuid AND report_flag = 'paid:duplicate_charge'"
            ))
            .bind(id)
            .execute(&mut *conn)
            .await?;
            settle(conn, target, e, &webhook_id, at).await
        }
        // Recorded on the payment's timeline only: the row keeps its state.
        _ => {
            let sql = format!(
                "UPDATE {payments} SET status = status, updated_at = $2, version = $3
                  WHERE id = $1::uuid"
            );
            let query = sqlx::query(&sql).bind(id).bind(c.recorded).bind(c.version);
            query.execute(&mut *conn).await?;
            Ok(())
        }
    }
}

/// A charge of the customer, as `payment_charges` holds it.
struct Charge<'a> {
    /// The provider's transaction.
    reference: &'a str,
    /// Charged.
    amount: i64,
    /// Its currency (the payment's when `None`).
    currency: Option<&'a str>,
    /// `payment` (the one that paid it), `duplicate_charge` or `amount_mismatch`.
    reason: &'a str,
    /// The webhook that reported it.
    webhook_id: &'a str,
    /// When.
    at: chrono::DateTime<chrono::Utc>,
}

impl Charge<'_> {
    async fn insert(
        &self,
        conn: &mut PgConnection,
        target: &Target,
        payment: &str,
        tenant: &str,
    ) -> Result<(), ProjectionError> {
        sqlx::query(&format!(
            "INSERT INTO {charges} (payment_id, provider_reference, tenant_id, amount, currency,
                                    reason, webhook_id, charged_at)
             SELECT $1::uuid, $2, $3, $4, coalesce($5, p.currency), $6, $7, $8
               FROM {payments} p WHERE p.id = $1::uuid",
            charges = target.table("payment_charges"),
            payments = target.table("payments"),
        ))
        .bind(payment)
        .bind(self.reference)
        .bind(tenant)
        .bind(self.amount)
        .bind(self.currency)
        .bind(self.reason)
        .bind(self.webhook_id)
        .bind(self.at)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// Brings a payment's money in line with its charges after event `e` (reported by webhook
/// `webhook_id` at `at`): what it kept is its own charge and the duplicates of it, less their
/// refunds, whichever was refunded; `refunded` is the total less what it kept (at least 0),
/// the status follows, and each change of it is a row of `payment_refunds` (a duplicate
/// kept after the payment's own charge was refunded gives a negative one: the money is kept
/// again). `attention` says what staff must act on: money held beyond the total
/// (`paid:duplicate_charge`), a charge in another amount not wholly returned
/// (`paid:amount_mismatch`), else the latest other report (`report_flag`).
async fn settle(
    conn: &mut PgConnection,
    target: &Target,
    e: &Envelope,
    webhook_id: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), ProjectionError> {
    let payments = target.table("payments");
    let charges = target.table("payment_charges");
    let change: Option<i64> = sqlx::query_scalar(&format!(
        "WITH k AS (
             SELECT coalesce(sum(amount - refunded)
                             FILTER (WHERE reason IN ('payment', 'duplicate_charge')), 0)::bigint
                      AS kept,
                    coalesce(bool_or(reason = 'amount_mismatch' AND refunded < amount), false)
                      AS mismatch
               FROM {charges} WHERE payment_id = $1::uuid),
         o AS (SELECT refunded AS before FROM {payments} WHERE id = $1::uuid),
         n AS (SELECT p.id,
                      CASE WHEN p.paid_at IS NULL THEN p.refunded
                           ELSE p.total - least(p.total, k.kept) END AS refunded,
                      CASE WHEN p.paid_at IS NOT NULL AND k.kept > p.total
                             THEN 'paid:duplicate_charge'
                           WHEN k.mismatch THEN 'paid:amount_mismatch'
                           ELSE p.report_flag END AS attention
                 FROM {payments} p, k WHERE p.id = $1::uuid)
         UPDATE {payments} p SET
                refunded = n.refunded,
                status = CASE WHEN p.paid_at IS NULL THEN p.status
                              WHEN n.refunded = 0 THEN 'paid'
                              WHEN n.refunded >= p.total THEN 'refunded'
                              ELSE 'partially_refunded' END,
                attention = n.attention,
                attention_at = CASE WHEN n.attention IS NOT DISTINCT FROM p.attention
                                      THEN p.attention_at
                                    WHEN n.attention IS NOT DISTINCT FROM p.report_flag
                                      THEN p.report_flag_at
                                    ELSE $4 END,
                updated_at = $2, version = $3
           FROM n, o WHERE p.id = n.id
         RETURNING n.refunded - o.before"
    ))
    .bind(&e.aggregate_id)
    .bind(e.recorded_at)
    .bind(e.sequence as i64)
    .bind(at)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(amount) = change.filter(|a| *a != 0) {
        sqlx::query(&format!(
            "INSERT INTO {} (payment_id, sequence, tenant_id, amount, webhook_id, refunded_at)
             VALUES ($1::uuid, $2, $3, $4, $5, $6)",
            target.table("payment_refunds")
        ))
        .bind(&e.aggregate_id)
        .bind(e.sequence as i64)
        .bind(e.tenant_id())
        .bind(amount)
        .bind(webhook_id)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The context has no settings of its own.
pub use crate::context::NoSettings as Settings;

/// The payments context: catalogs and payments, and the refunds processed again once a
/// payment names their provider reference.
pub struct Context;

impl crate::context::BoundedContext for Context {
    type Settings = Settings;

    fn projections(
        setup: &crate::context::Setup<'_>,
        _settings: &Settings,
    ) -> Vec<std::sync::Arc<dyn crate::projection::Projection>> {
        let mut all: Vec<std::sync::Arc<dyn crate::projection::Projection>> = vec![
            std::sync::Arc::new(CatalogProjection),
            std::sync::Arc::new(PaymentsProjection),
        ];
        if let (Some(pool), Some(client)) =
            (&setup.pool, setup.command_client("payment-references"))
        {
            all.push(std::sync::Arc::new(references::PaymentReferences::new(
                pool.clone(),
                client,
            )));
        }
        all
    }
}
