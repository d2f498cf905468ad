//! Events of received provider webhooks (aggregate type `webhook`).
//!
//! One aggregate per provider event: its id is derived from `(provider, provider's event
//! id)` ([`webhook_id`]), so a webhook delivered twice finds its aggregate already received
//! and appends nothing — the store's primary key settles even concurrent deliveries. The
//! stream of a webhook is its processing history: received, attempts that failed, the
//! outcome, replays an admin asked for.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The aggregate type name of webhooks.
pub const WEBHOOK: &str = "webhook";

/// Attempts at processing a webhook before it is dead-lettered: with the retry delays (2 s,
/// 4 s … at most an hour), about two hours of trying, enough to outlast a read model that
/// lags behind a rebuild.
pub const MAX_ATTEMPTS: u32 = 12;

/// The providers whose webhooks are received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// Stripe (`/api/webhooks/stripe`).
    Stripe,
    /// Lyra / PayZen IPN (`/api/webhooks/lyra`).
    Lyra,
    /// SignalWire (`/api/webhooks/signalwire`): SMS and calls.
    Signalwire,
    /// AssemblyAI (`/api/webhooks/assemblyai`): transcripts.
    Assemblyai,
    /// WhatsApp Cloud API (`/api/webhooks/whatsapp`): one webhook per message or status of
    /// a delivery (a delivery may batch several).
    Whatsapp,
}

impl Provider {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Stripe => "stripe",
            Provider::Lyra => "lyra",
            Provider::Signalwire => "signalwire",
            Provider::Assemblyai => "assemblyai",
            Provider::Whatsapp => "whatsapp",
        }
    }
}

/// The id of the webhook aggregate of `provider`'s event `provider_event_id`: the same for
/// every delivery of that event.
pub fn webhook_id(provider: Provider, provider_event_id: &str) -> String {
    let name = format!("{}\u{0}{provider_event_id}", provider.as_str());
    Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes()).to_string()
}

/// What processing made of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It changed a payment.
    Applied,
    /// It was for a payment, which recorded it without changing (a late or repeated status).
    Recorded,
    /// Nothing to do: a type the platform does not act on, or a reference to no payment.
    Ignored,
}

/// Something that happened to a received webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum WebhookEvent {
    /// A webhook passed its signature check and was accepted (answered 2xx).
    Received {
        /// Who sent it.
        provider: Provider,
        /// The provider's id of the event (Stripe's `evt_…`; for Lyra, order, transaction
        /// and status, since an IPN has no id of its own).
        provider_event_id: String,
        /// The provider's event type (`payment_intent.succeeded`, Lyra's `orderStatus`).
        event_type: String,
        /// The payment it names directly, if any (Stripe's `client_reference_id` or
        /// `metadata.payment_id`, Lyra's `orderId`).
        #[serde(default)]
        payment_id: Option<String>,
        /// What of the provider's body payments need (for Lyra, of `kr-answer`): its ids,
        /// type, amounts, statuses and references; never the customer's personal data.
        payload: serde_json::Value,
        /// Hex SHA-256 of the whole body as received (the proof of what arrived).
        #[serde(default)]
        body_sha256: Option<String>,
        /// When it arrived.
        received_at: DateTime<Utc>,
    },
    /// Processing failed for now; it is tried again at `retry_at`.
    AttemptFailed {
        /// Which attempt (1-based).
        attempt: u32,
        /// Why.
        error: String,
        /// When it is tried again.
        retry_at: DateTime<Utc>,
    },
    /// Processing failed [`MAX_ATTEMPTS`] times; it waits for an admin's replay.
    DeadLettered {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        error: String,
    },
    /// Processing finished.
    Processed {
        /// What it did.
        outcome: Outcome,
        /// The payment it concerned, if any.
        #[serde(default)]
        payment_id: Option<String>,
        /// That payment's tenant: a webhook received unattributed (`platform`) is listed for
        /// that tenant from now on.
        #[serde(default)]
        tenant_id: Option<String>,
        /// Why, for people.
        detail: String,
        /// The provider's reference (a Stripe payment intent) it named when no payment was
        /// known for it yet: processed again once a payment is paid with that reference
        /// (the projector's `payment-references` worker).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unmatched_reference: Option<String>,
        /// When.
        at: DateTime<Utc>,
    },
    /// An admin asked for it to be processed again (the payment makes a repeat change
    /// nothing).
    ReplayRequested {
        /// When.
        at: DateTime<Utc>,
    },
    /// It concerns a suspended tenant: it waits, still due, until the tenant is reactivated
    /// (nothing of a suspended tenant is processed), and is listed for that tenant.
    HeldForTenant {
        /// The tenant.
        tenant_id: String,
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for WebhookEvent {
    fn event_type(&self) -> String {
        match self {
            WebhookEvent::Received { .. } => "Received",
            WebhookEvent::AttemptFailed { .. } => "AttemptFailed",
            WebhookEvent::DeadLettered { .. } => "DeadLettered",
            WebhookEvent::Processed { .. } => "Processed",
            WebhookEvent::ReplayRequested { .. } => "ReplayRequested",
            WebhookEvent::HeldForTenant { .. } => "HeldForTenant",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_id_is_stable_per_provider_and_event() {
        let a = webhook_id(Provider::Stripe, "evt_1");
        assert_eq!(a, webhook_id(Provider::Stripe, "evt_1"));
        assert_ne!(a, webhook_id(Provider::Lyra, "evt_1"));
        assert_ne!(a, webhook_id(Provider::Stripe, "evt_2"));
    }
}
