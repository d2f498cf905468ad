//! Side-effect workers: projections whose work is a call to another service, performed
//! before their checkpoints move (see [`crate::projection::Effect`]).

/// Chat events to Soketi (Pusher HTTP API) and to core NATS for SSE.
pub mod realtime;

/// Thread replies forwarded to WhatsApp.
pub mod whatsapp;
