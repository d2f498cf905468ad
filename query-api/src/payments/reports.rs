//! `GET /v1/payments/reports/revenue`: revenue by UTC day, by product or by tenant, as JSON
//! or CSV.
//!
//! # What is counted
//! - Amounts are never summed across currencies: the currency is part of every group key,
//!   and `totals` has one entry per currency. They stay integers in minor units, in JSON and
//!   in CSV alike.
//! - A payment counts as revenue at its `paid_at` (payments `paid`, `partially_refunded` and
//!   `refunded` all have one), whatever happened to it later. Each refund counts on its own
//!   `refunded_at` (table `payment_refunds`), not on the payment's day. So every grouping
//!   over the same range adds up to the same totals, and a past day's figures do not change
//!   when a refund comes later: the refund shows on its own day (which may leave a day's
//!   `gross` negative).
//! - Per group: `payments` is the number of payments paid in the range (for products: the
//!   quantity sold); `gross_paid` the sum of their totals (for products: of their lines'
//!   gross amounts); `refunds` the sum of the refunds in the range; `gross` = `gross_paid` −
//!   `refunds`; `net` = net paid − net refunded; `tax` = `gross` − `net`.
//! - The net part of a refund is rounded cumulatively over the payment's refunds:
//!   `round(upto × payment.net / payment.total) − round(before × …)`, where `upto` is the
//!   sum of the payment's refunds up to this one and `before` that of the ones before it. So
//!   a payment refunded in many parts has exactly its whole net amount refunded at the end
//!   (rounding each part on its own left a fully refunded payment at net 1, tax −1).
//! - By product, a line's share of a refund is `amount × line.gross / payment.total` and its
//!   net share `amount × line.net / payment.total`, rounded cumulatively over the payment's
//!   lines in order and over its refunds in order (the rounded share of the lines up to it
//!   and the refunds up to this one, less those before), so the shares of a refund add up to
//!   exactly the refund and its net part: the product report agrees to the cent with the
//!   day report. A payment whose total is 0 refunds nothing.
//! - Product rows carry `tenant_id` (product ids are unique only within a tenant) and
//!   `name`, the name of the product on its most recent payment line in the report.
//! - Day keys are UTC dates (`YYYY-MM-DD`).
//!
//! # Range and access
//! `from` is inclusive and `to` exclusive, each an RFC 3339 date-time or a date (its
//! midnight UTC); by default the 30 days up to the end of today (UTC). A super admin reads
//! every tenant or names one; a tenant admin always reads their own tenant; only a super
//! admin may group by tenant.

use std::collections::BTreeMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use events::http::{AuthUser, Json, Problem, Query};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;

use crate::http::filters::{plain, range};
use crate::http::page;
use crate::http::scope::admin_scope;
use crate::AppState;

/// The routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(revenue))
}

/// How revenue is grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupBy {
    /// By UTC day of payment or refund.
    Day,
    /// By product (payment lines).
    Product,
    /// By tenant (super admins only).
    Tenant,
}

impl GroupBy {
    /// `group_by` as asked for (default `day`); 400 `invalid_query` for anything else.
    fn parse(raw: Option<&str>) -> Result<Self, Problem> {
        match raw {
            None | Some("day") => Ok(GroupBy::Day),
            Some("product") => Ok(GroupBy::Product),
            Some("tenant") => Ok(GroupBy::Tenant),
            Some(_) => Err(Problem::bad_request(
                "invalid_query",
                "group_by must be one of day, product, tenant.",
            )),
        }
    }

    /// The wire name.
    fn as_str(self) -> &'static str {
        match self {
            GroupBy::Day => "day",
            GroupBy::Product => "product",
            GroupBy::Tenant => "tenant",
        }
    }

    /// The CSV header of the key column.
    fn key_column(self) -> &'static str {
        match self {
            GroupBy::Day => "day",
            GroupBy::Product => "product_id",
            GroupBy::Tenant => "tenant_id",
        }
    }
}

/// What to report.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RevenueParams {
    /// `day` (default), `product` or `tenant`.
    group_by: Option<String>,
    /// Inclusive start: an RFC 3339 date-time or a date.
    from: Option<String>,
    /// Exclusive end: an RFC 3339 date-time or a date.
    to: Option<String>,
    /// A super admin may pick a tenant; a tenant admin always reads their own.
    tenant_id: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// The refunds of the payments refunded in the range (`$1`, `$2`), each with the payment's
/// refunds so far: `upto` (this one included) and `before` (this one excluded). A refund's
/// net part, and a line's share, is what rounding the payment's cumulative refunds gives,
/// less what it gave before: the parts of a payment's refunds add up exactly (to its whole
/// net amount once it is all refunded), however many partial refunds there were.
const REFUNDS_SO_FAR: &str = "(SELECT payment_id, sequence, amount, refunded_at,
                 sum(amount) OVER (PARTITION BY payment_id ORDER BY sequence) AS upto,
                 sum(amount) OVER (PARTITION BY payment_id ORDER BY sequence) - amount AS before
            FROM payment_refunds
           WHERE payment_id IN (SELECT payment_id FROM payment_refunds
                                 WHERE refunded_at >= $1 AND refunded_at < $2))";

/// The report's statement. Its parts yield one row per payment paid (per line, by product)
/// and one per refund (per line, by product) in the range, and it adds them up per group:
/// `$1`/`$2` are the range; `filter` (the tenant, `$3`) starts with ` WHERE` and applies to
/// payments `p`.
fn revenue_sql(group: GroupBy, filter: &str) -> String {
    let paid = "p.status IN ('paid', 'partially_refunded', 'refunded') \
                AND p.paid_at >= $1 AND p.paid_at < $2";
    let refunded = "r.refunded_at >= $1 AND r.refunded_at < $2";
    let parts = match group {
        GroupBy::Day | GroupBy::Tenant => {
            let (paid_key, refund_key) = if group == GroupBy::Day {
                (
                    "to_char(p.paid_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
                    "to_char(r.refunded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
                )
            } else {
                ("p.tenant_id", "p.tenant_id")
            };
            format!(
                "SELECT {paid_key} AS key, NULL::text AS tenant_id, p.currency,
                        1::bigint AS payments, p.total AS gross_paid, p.net AS net_paid,
                        0::numeric AS refunds, 0::numeric AS refund_net,
                        NULL::text AS name, NULL::timestamptz AS named_at
                   FROM payments p{filter} AND {paid}
                 UNION ALL
                 SELECT {refund_key}, NULL, p.currency, 0, 0, 0, r.amount,
                        coalesce(round(r.upto::numeric * p.net / nullif(p.total, 0))
                                 - round(r.before::numeric * p.net / nullif(p.total, 0)), 0),
                        NULL, NULL
                   FROM {REFUNDS_SO_FAR} r JOIN payments p ON p.id = r.payment_id{filter}
                    AND {refunded}"
            )
        }
        // Cumulative rounding (see the module doc): `*_upto` is the rounded share of the
        // refund's lines up to this one, `*_before` that of the lines before it.
        GroupBy::Product => format!(
            "SELECT l.product_id AS key, p.tenant_id, p.currency,
                    l.quantity::bigint AS payments, l.gross AS gross_paid, l.net AS net_paid,
                    0::numeric AS refunds, 0::numeric AS refund_net,
                    l.name, p.requested_at AS named_at
               FROM payments p JOIN payment_lines l ON l.payment_id = p.id{filter} AND {paid}
             UNION ALL
             SELECT key, tenant_id, currency, 0, 0, 0,
                    coalesce(round(upto * gross_upto / total) - round(upto * gross_before / total)
                             - round(before * gross_upto / total)
                             + round(before * gross_before / total), 0),
                    coalesce(round(upto * net_upto / total) - round(upto * net_before / total)
                             - round(before * net_upto / total)
                             + round(before * net_before / total), 0),
                    name, named_at
               FROM (SELECT l.product_id AS key, p.tenant_id, p.currency, l.name,
                            p.requested_at AS named_at, nullif(p.total, 0)::numeric AS total,
                            r.upto::numeric AS upto, r.before::numeric AS before,
                            sum(l.gross) OVER w AS gross_upto,
                            sum(l.gross) OVER w - l.gross AS gross_before,
                            sum(l.net) OVER w AS net_upto,
                            sum(l.net) OVER w - l.net AS net_before
                       FROM {REFUNDS_SO_FAR} r
                       JOIN payments p ON p.id = r.payment_id
                       JOIN payment_lines l ON l.payment_id = r.payment_id{filter}
                        AND {refunded}
                     WINDOW w AS (PARTITION BY r.payment_id, r.sequence ORDER BY l.n)) AS shares"
        ),
    };
    format!(
        "SELECT key, tenant_id, currency,
                sum(payments)::bigint AS payments, sum(gross_paid)::bigint AS gross_paid,
                sum(net_paid)::bigint AS net_paid, sum(refunds)::bigint AS refunds,
                sum(refund_net)::bigint AS refund_net,
                (array_agg(name ORDER BY named_at DESC NULLS LAST, name))[1] AS name
           FROM ({parts}) AS parts
          GROUP BY key, tenant_id, currency
          ORDER BY key, tenant_id, currency"
    )
}

/// One group's sums as the statement answers them.
#[derive(Debug, FromRow)]
struct Sums {
    /// Day, product id or tenant id.
    key: String,
    /// The product's tenant (by product only).
    tenant_id: Option<String>,
    /// ISO 4217 code.
    currency: String,
    /// Payments paid (by product: quantity sold).
    payments: i64,
    /// Sum of what was paid.
    gross_paid: i64,
    /// Its net part.
    net_paid: i64,
    /// Sum of refunds.
    refunds: i64,
    /// Their net part.
    refund_net: i64,
    /// The product's latest name (by product only).
    name: Option<String>,
}

/// Revenue figures of a group or of a currency, minor units.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = RevenueFigures)]
pub struct Figures {
    /// Payments paid in the range (by product: quantity sold).
    payments: i64,
    /// What they paid.
    gross_paid: i64,
    /// Refunds in the range.
    refunds: i64,
    /// `gross_paid` − `refunds`.
    gross: i64,
    /// `gross` less tax.
    net: i64,
    /// `gross` − `net`.
    tax: i64,
}

impl Figures {
    /// The figures of a group's sums.
    fn of(s: &Sums) -> Self {
        let gross = s.gross_paid.saturating_sub(s.refunds);
        let net = s.net_paid.saturating_sub(s.refund_net);
        Self {
            payments: s.payments,
            gross_paid: s.gross_paid,
            refunds: s.refunds,
            gross,
            net,
            tax: gross.saturating_sub(net),
        }
    }

    /// Adds `other` to these.
    fn add(&mut self, other: &Figures) {
        self.payments = self.payments.saturating_add(other.payments);
        self.gross_paid = self.gross_paid.saturating_add(other.gross_paid);
        self.refunds = self.refunds.saturating_add(other.refunds);
        self.gross = self.gross.saturating_add(other.gross);
        self.net = self.net.saturating_add(other.net);
        self.tax = self.tax.saturating_add(other.tax);
    }
}

/// One row of the report.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RevenueRow {
    /// Day (`YYYY-MM-DD`), product id or tenant id.
    key: String,
    /// The product's name on its most recent payment line in the report (by product only;
    /// absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// The product's tenant (by product only; absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_id: Option<String>,
    /// ISO 4217 code.
    currency: String,
    /// The figures.
    #[serde(flatten)]
    figures: Figures,
}

/// The totals of one currency.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = RevenueTotals)]
pub struct CurrencyTotals {
    /// ISO 4217 code.
    currency: String,
    /// The figures.
    #[serde(flatten)]
    figures: Figures,
}

/// The report.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RevenueReport {
    /// `day`, `product` or `tenant`.
    group_by: &'static str,
    /// Inclusive start.
    from: DateTime<Utc>,
    /// Exclusive end.
    to: DateTime<Utc>,
    /// The tenant reported on; `null` for every tenant.
    tenant_id: Option<String>,
    /// One per group and currency, by key then currency.
    rows: Vec<RevenueRow>,
    /// One per currency.
    totals: Vec<CurrencyTotals>,
}

/// Revenue report.
///
/// Revenue by UTC day, by product or by tenant (super admins only; others 403), in `[from,
/// to)`. Never summed across currencies: the currency is part of every group, and `totals` has
/// one entry per currency. A payment counts on its `paid_at`; each refund on its own
/// `refunded_at` (a refund is a change of what the payment kept: a duplicate charge kept after
/// the first one was refunded makes it paid again, a negative refund on that day), so every
/// grouping of a range has the same totals. A refund's net part is round(amount × net / total);
/// by product, a line takes the share gross/total (net share net/total) of each refund, rounded
/// cumulatively over the payment's lines so the shares add up exactly. Amounts are integers in
/// minor units, in JSON and CSV. A super admin reads every tenant or names one; a tenant admin
/// always their own (403 when naming another). CSV (`format=csv`): a header row then one line
/// per row (`day` | `product_id,name,tenant_id` | `tenant_id`, then
/// `currency,payments,gross_paid,refunds,gross,net,tax`), quoted per RFC 4180, a text cell
/// starting with = + - @ (or tab, CR) prefixed with an apostrophe.
#[utoipa::path(
    get,
    path = "/v1/payments/reports/revenue",
    params(RevenueParams),
    responses(
        (status = 200, description = "The report: JSON, or CSV with `format=csv` (as an attachment).", content(
            (RevenueReport = "application/json"),
            (String = "text/csv")
        ))
    ),
    security(("bearer" = []))
)]
async fn revenue(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Query(params): Query<RevenueParams>,
) -> Result<Response, Problem> {
    let tenant = admin_scope(&who, plain(params.tenant_id, "tenant_id")?, "revenue")?;
    let group = GroupBy::parse(params.group_by.as_deref())?;
    if group == GroupBy::Tenant && !who.is_super_admin() {
        return Err(Problem::forbidden(
            "Only a super admin groups revenue by tenant.",
        ));
    }
    let csv = match params.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => {
            return Err(Problem::bad_request(
                "invalid_query",
                "format must be json or csv.",
            ))
        }
    };
    let (from, to) = range(params.from.as_deref(), params.to.as_deref(), Utc::now())?;
    // `$1` and `$2` are the range; the tenant, when there is one, is `$3`.
    let mut w = page::Conditions::after(2);
    if tenant.is_some() {
        w.and("p.tenant_id = ?");
    }
    let sql = revenue_sql(group, w.sql());
    let mut query = sqlx::query_as::<_, Sums>(&sql).bind(from).bind(to);
    if let Some(tenant) = &tenant {
        query = query.bind(tenant);
    }
    let sums = query
        .fetch_all(&state.pool)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let report = report(group, from, to, tenant, sums);
    if csv {
        let disposition = format!("attachment; filename=\"revenue-{}.csv\"", group.as_str());
        let disposition = HeaderValue::from_str(&disposition).map_err(|e| Problem::internal(&e))?;
        Ok((
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/csv; charset=utf-8"),
                ),
                (header::CONTENT_DISPOSITION, disposition),
            ],
            to_csv(group, &report.rows),
        )
            .into_response())
    } else {
        Ok(Json(report).into_response())
    }
}

/// The report of the sums: rows as they come, totals per currency.
fn report(
    group: GroupBy,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tenant_id: Option<String>,
    sums: Vec<Sums>,
) -> RevenueReport {
    let mut totals: BTreeMap<String, Figures> = BTreeMap::new();
    let rows: Vec<RevenueRow> = sums
        .into_iter()
        .map(|s| {
            let figures = Figures::of(&s);
            totals.entry(s.currency.clone()).or_default().add(&figures);
            RevenueRow {
                key: s.key,
                name: s.name,
                tenant_id: s.tenant_id,
                currency: s.currency,
                figures,
            }
        })
        .collect();
    RevenueReport {
        group_by: group.as_str(),
        from,
        to,
        tenant_id,
        rows,
        totals: totals
            .into_iter()
            .map(|(currency, figures)| CurrencyTotals { currency, figures })
            .collect(),
    }
}

/// A text cell of CSV: a leading `=`, `+`, `-`, `@`, tab or carriage return gets an
/// apostrophe before it, so a spreadsheet shows the text instead of running it as a formula
/// (a product name is whatever a tenant typed); then quoted per RFC 4180 when it holds a
/// comma, a quote or a line break. Amounts are written as plain integers, never through
/// here: a refund-only day's negative `gross` must stay a number.
fn csv_text(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

/// The rows as CSV (RFC 4180: CRLF line ends, a header row first).
fn to_csv(group: GroupBy, rows: &[RevenueRow]) -> String {
    let product = group == GroupBy::Product;
    let mut out = String::from(group.key_column());
    if product {
        out.push_str(",name,tenant_id");
    }
    out.push_str(",currency,payments,gross_paid,refunds,gross,net,tax\r\n");
    for row in rows {
        let mut cells = vec![csv_text(&row.key)];
        if product {
            cells.push(csv_text(row.name.as_deref().unwrap_or_default()));
            cells.push(csv_text(row.tenant_id.as_deref().unwrap_or_default()));
        }
        cells.push(csv_text(&row.currency));
        let f = &row.figures;
        cells.extend(
            [f.payments, f.gross_paid, f.refunds, f.gross, f.net, f.tax]
                .iter()
                .map(i64::to_string),
        );
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(raw: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(raw)
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn csv_cells_are_quoted_per_rfc_4180() {
        assert_eq!(csv_text("Plain tea"), "Plain tea");
        assert_eq!(csv_text("Tea, green"), "\"Tea, green\"");
        assert_eq!(csv_text("The \"best\" tea"), "\"The \"\"best\"\" tea\"");
        assert_eq!(csv_text("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_text(""), "");
    }

    #[test]
    fn csv_cells_that_a_spreadsheet_would_run_as_formulas_are_neutralised() {
        assert_eq!(csv_text("=1+1"), "'=1+1");
        assert_eq!(csv_text("+33 6 12"), "'+33 6 12");
        assert_eq!(csv_text("-2"), "'-2");
        assert_eq!(csv_text("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_text("\tx"), "'\tx");
        // Neutralised first, then quoted: the apostrophe is inside the quotes.
        assert_eq!(
            csv_text("=HYPERLINK(\"http://x\",\"y\")"),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""
        );
        // Only a leading sign counts.
        assert_eq!(csv_text("a=b"), "a=b");
    }

    #[test]
    fn csv_rows_keep_amounts_as_integers_and_escape_text() {
        let rows = vec![RevenueRow {
            key: "p1".into(),
            name: Some("=cmd".into()),
            tenant_id: Some("t1".into()),
            currency: "EUR".into(),
            figures: Figures {
                payments: 2,
                gross_paid: 0,
                refunds: 1200,
                gross: -1200,
                net: -1000,
                tax: -200,
            },
        }];
        assert_eq!(
            to_csv(GroupBy::Product, &rows),
            "product_id,name,tenant_id,currency,payments,gross_paid,refunds,gross,net,tax\r\n\
             p1,'=cmd,t1,EUR,2,0,1200,-1200,-1000,-200\r\n"
        );
        assert_eq!(
            to_csv(GroupBy::Day, &[]),
            "day,currency,payments,gross_paid,refunds,gross,net,tax\r\n"
        );
    }

    #[test]
    fn totals_are_per_currency_and_gross_net_tax_follow_refunds() {
        let sums = |key: &str, currency: &str, gross_paid, net_paid, refunds, refund_net| Sums {
            key: key.into(),
            tenant_id: None,
            currency: currency.into(),
            payments: 1,
            gross_paid,
            net_paid,
            refunds,
            refund_net,
            name: None,
        };
        let r = report(
            GroupBy::Day,
            at("2026-05-01T00:00:00Z"),
            at("2026-05-03T00:00:00Z"),
            None,
            vec![
                sums("2026-05-01", "EUR", 1200, 1000, 0, 0),
                sums("2026-05-01", "USD", 500, 500, 0, 0),
                sums("2026-05-02", "EUR", 0, 0, 600, 500),
            ],
        );
        assert_eq!(r.rows[2].figures.gross, -600);
        assert_eq!(r.rows[2].figures.tax, -100);
        assert_eq!(r.totals.len(), 2);
        assert_eq!(r.totals[0].currency, "EUR");
        assert_eq!(
            r.totals[0].figures,
            Figures {
                payments: 2,
                gross_paid: 1200,
                refunds: 600,
                gross: 600,
                net: 500,
                tax: 100,
            }
        );
    }

    #[test]
    fn group_by_accepts_only_the_three_groupings() {
        assert_eq!(GroupBy::parse(None).ok(), Some(GroupBy::Day));
        assert_eq!(GroupBy::parse(Some("tenant")).ok(), Some(GroupBy::Tenant));
        assert!(GroupBy::parse(Some("week")).is_err());
    }
}
