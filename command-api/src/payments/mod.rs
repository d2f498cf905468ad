//! The payments bounded context: each tenant's catalog of products and taxes, and payments
//! requested from customers, collected through a provider (Lyra payment links, Stripe) and
//! confirmed by the provider's webhooks.

/// The payment aggregate and its rules.
pub mod aggregate;
/// The catalog aggregate (products and taxes of one tenant).
pub mod catalog;
/// What the payment providers' webhooks say.
pub mod interpret;
/// The Lyra REST client (payment links).
pub mod lyra;
/// HTTP routes under `/v1/payments` and `/v1/catalog`.
pub mod routes;
/// The signatures of Stripe's and Lyra's webhooks.
pub mod signature;
/// Currency codes, names and the tax arithmetic.
pub mod values;
/// Stripe's and Lyra's webhooks (their [`crate::webhooks::provider::WebhookProvider`]).
pub mod webhooks;
