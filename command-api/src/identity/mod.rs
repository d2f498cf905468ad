//! The identity bounded context: admin users, their logins, sessions and tokens.

/// The admin-user aggregate and its rules.
pub mod aggregate;
/// E-mail reservations and password hashes.
pub mod services;
