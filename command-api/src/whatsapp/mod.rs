//! WhatsApp through the Cloud API: tenants' sessions (numbers connected with sealed
//! credentials), inbound deliveries through the webhook layer (each message and status
//! de-duplicated, then processed into its conversation and the contact's thread), and
//! outbound messages decided by the conversation (the 24-hour customer-service window) and
//! sent at most once by the projector's sender, which reports back here.

/// The session and conversation aggregates and their rules.
pub mod aggregate;
/// The Cloud API calls command-api makes (checking credentials).
pub mod cloud;
/// A conversation's older messages, read from its events.
pub mod history;
/// What a webhook delivery says.
pub mod inbound;
/// HTTP routes.
pub mod routes;
/// The signature of WhatsApp deliveries.
pub mod signature;
/// WhatsApp deliveries (their [`crate::webhooks::provider::WebhookProvider`]).
pub mod webhooks;
