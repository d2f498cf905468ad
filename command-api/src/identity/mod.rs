//! The identity bounded context: admin users, their logins, sessions and tokens.

/// The admin-user aggregate and its rules.
pub mod aggregate;
/// One password check at a time per admin user.
pub mod attempts;
/// `/auth/admin/*` and `/auth/introspect`.
pub mod auth;
/// The first super admin.
pub mod bootstrap;
/// Phone sign-in for chatbot users: the `phone_login` aggregate.
pub mod phone;
/// `/auth/phone/*`.
pub mod phone_routes;
/// `/v1/admin-users…`.
pub mod routes;
/// E-mail reservations and password hashes.
pub mod services;
/// Refresh-token families.
pub mod sessions;
