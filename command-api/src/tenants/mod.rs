//! The tenants bounded context: signup, approval, lifecycle, preferences and logo.

/// The tenant aggregate and its rules.
pub mod aggregate;
/// Commands on a tenant.
pub mod commands;
/// HTTP routes under `/v1/tenants`.
pub mod routes;
/// What the aggregate needs from outside (slug uniqueness).
pub mod services;
/// Value objects: names, slugs, e-mails, preferences, images.
pub mod values;
