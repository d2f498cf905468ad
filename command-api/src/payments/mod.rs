//! The payments bounded context: each tenant's catalog of products and taxes, and payments
//! requested from customers, collected through a provider (Lyra payment links, Stripe) and
//! confirmed by the provider's webhooks.

/// The payment aggregate and its rules.
pub mod aggregate;
/// The catalog aggregate (products and taxes of one tenant).
pub mod catalog;
/// The Lyra REST client (payment links).
pub mod lyra;
/// HTTP routes under `/v1/payments` and `/v1/catalog`.
pub mod routes;
/// Currency codes, names and the tax arithmetic.
pub mod values;
