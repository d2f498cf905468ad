//! Side-effect workers: projections whose work is a call to another service, performed
//! before their checkpoints move (see [`crate::projection::Effect`]).

/// WhatsApp files refused for an expired token, fetched again when the session reconnects.
pub mod media;

/// Open threads taken from agents and departments that went away.
pub mod reassignment;

/// Realtime connections of revoked sessions, users and tenants terminated on Soketi.
pub mod eviction;

/// Chat events to Soketi (Pusher HTTP API) and to core NATS for SSE.
pub mod realtime;

/// Thread replies forwarded to WhatsApp.
pub mod whatsapp;
