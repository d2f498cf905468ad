//! What a context that processes a provider's webhooks (payments, telephony, audio,
//! WhatsApp) answers the ingestion layer: the outcome of processing one webhook.

use events::webhooks::Outcome;

/// What processing a webhook did, or why it must be tried again.
pub(crate) enum Processing {
    /// Finished: what it did, the tenant (and payment) it concerned, why.
    Done(Outcome, Option<Attributed>, String),
    /// Failed for now (a stable reason: it is shown to tenants).
    Retry(String),
    /// It concerns this tenant, which is suspended: it waits for its reactivation.
    Held(String),
    /// It names a provider reference (a Stripe payment intent) no payment was paid with
    /// yet: recorded as ignored, and processed again when one is (the provider's events
    /// came out of order, or it is another product's on a shared account).
    Unmatched(String),
}

/// The tenant a webhook turned out to concern, and its payment if it was about one.
#[derive(Debug, Clone)]
pub(crate) struct Attributed {
    /// The payment.
    pub(crate) payment_id: Option<String>,
    /// Its tenant (or the number's).
    pub(crate) tenant_id: String,
}
