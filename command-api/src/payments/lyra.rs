//! Lyra (PayZen / Lyra Collect) REST V4 client: payment links through
//! `Charge/CreatePaymentOrder`, authenticated with HTTP Basic `shop id : REST password`.
//!
//! Lyra answers business errors (a bad key, a bad field) with HTTP 200 and
//! `"status": "ERROR"`; the official SDKs accept 200 and 401 and treat anything else as a
//! transport failure. So does this client.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

/// Where Lyra is and who the shop is.
#[derive(Debug, Clone)]
pub struct LyraAccount {
    /// Base URL, e.g. `https://api.lyra.com` (PayZen: `https://api.payzen.eu`).
    pub base_url: String,
    /// Shop id (the Basic-auth user).
    pub shop_id: String,
    /// REST API password (the Basic-auth password; also the IPN's HMAC key).
    pub password: String,
    /// Where Lyra sends the IPN of the orders made here (`ipnTargetUrl`), if set; otherwise
    /// the URL set in Lyra's back office.
    pub ipn_url: Option<String>,
}

/// A payment order to create.
#[derive(Debug, Clone)]
pub struct PaymentOrder<'a> {
    /// Our payment id (Lyra's `orderId`, echoed in the IPN).
    pub order_id: &'a str,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217.
    pub currency: &'a str,
    /// The tenant's customer reference.
    pub customer_reference: &'a str,
    /// Shown in Lyra's back office.
    pub comment: Option<&'a str>,
}

/// A link Lyra made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// `paymentOrderId`.
    pub order_id: String,
    /// `paymentURL`.
    pub url: String,
    /// `expirationDate`, when given.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Why no link was made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Lyra refused (`status: ERROR`): a retry of the same request will not help.
    #[error("lyra refused: {code}: {message}")]
    Refused {
        /// `errorCode`, e.g. `INT_905`.
        code: String,
        /// `errorMessage`.
        message: String,
    },
    /// Lyra could not be reached or answered something unexpected: a retry may help.
    #[error("lyra unavailable: {0}")]
    Unavailable(String),
}

/// The Lyra REST client.
#[derive(Debug, Clone)]
pub struct Lyra {
    /// The account.
    account: LyraAccount,
    /// HTTP client with timeouts.
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Envelope {
    status: String,
    answer: serde_json::Value,
}

impl Lyra {
    /// A client for `account`.
    pub fn new(account: LyraAccount) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(3))
            .timeout(std::time::Duration::from_secs(15))
            .build()
            .unwrap_or_default();
        Self { account, http }
    }

    /// `POST {base}/api-payment/V4/Charge/CreatePaymentOrder` for a URL link.
    pub async fn create_payment_order(&self, order: &PaymentOrder<'_>) -> Result<Link, LinkError> {
        let mut body = json!({
            "amount": order.amount,
            "currency": order.currency,
            "orderId": order.order_id,
            "channelOptions": { "channelType": "URL" },
            "customer": { "reference": order.customer_reference },
        });
        if let Some(comment) = order.comment {
            body["merchantComment"] = json!(comment);
        }
        if let Some(ipn) = &self.account.ipn_url {
            body["ipnTargetUrl"] = json!(ipn);
        }
        let url = format!(
            "{}/api-payment/V4/Charge/CreatePaymentOrder",
            self.account.base_url.trim_end_matches('/')
        );
        let response = self
            .http
            .post(url)
            .basic_auth(&self.account.shop_id, Some(&self.account.password))
            .json(&body)
            .send()
            .await
            .map_err(|e| LinkError::Unavailable(e.without_url().to_string()))?;
        let status = response.status();
        if status != reqwest::StatusCode::OK && status != reqwest::StatusCode::UNAUTHORIZED {
            return Err(LinkError::Unavailable(format!("HTTP {status}")));
        }
        let envelope: Envelope = response
            .json()
            .await
            .map_err(|e| LinkError::Unavailable(format!("unreadable answer: {e}")))?;
        let field = |name: &str| envelope.answer[name].as_str().map(str::to_owned);
        if envelope.status != "SUCCESS" {
            return Err(LinkError::Refused {
                code: field("errorCode").unwrap_or_else(|| "unknown".into()),
                message: field("errorMessage").unwrap_or_default(),
            });
        }
        match (field("paymentOrderId"), field("paymentURL")) {
            (Some(order_id), Some(url)) => Ok(Link {
                order_id,
                url,
                expires_at: field("expirationDate")
                    .and_then(|d| DateTime::parse_from_rfc3339(&d).ok())
                    .map(|d| d.with_timezone(&Utc)),
            }),
            _ => Err(LinkError::Unavailable(
                "a SUCCESS answer without paymentOrderId or paymentURL".into(),
            )),
        }
    }
}
