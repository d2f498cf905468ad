//! The telephony bounded context: the phone numbers tenants own, and the SMS and calls the
//! provider (SignalWire) reports through its webhooks.

/// The phone-number, SMS and call aggregates.
pub mod aggregate;
/// Reading SignalWire's callbacks.
pub mod interpret;
/// HTTP routes under `/v1/telephony`.
pub mod routes;
/// The signature of SignalWire's callbacks.
pub mod signature;
/// SignalWire's callbacks (their [`crate::webhooks::provider::WebhookProvider`]).
pub mod webhooks;
