//! The chat bounded context: threads, their messages, read receipts and scheduled messages.

/// The thread aggregate and its rules.
pub mod aggregate;
/// Commands on a thread.
pub mod commands;
/// HTTP routes under `/v1/chat`.
pub mod routes;
/// The application layer: callers, tenants of thread commands, ids of new messages.
pub mod service;
/// What the aggregate needs from outside (agents, departments, phone users).
pub mod services;
/// Value objects: texts, tags, attachments.
pub mod values;
