//! System tests of the event backbone, against the real PostgreSQL and NATS.
//!
//! They live in one test binary (one link, not one per file) in the crate that depends on
//! all three services. Each test makes its own database, stream and subject prefix, so the
//! tests run in parallel and repeat cleanly.

mod audio;
mod bus_down;
mod chat;
mod commands;
mod e2e;
mod group_commit;
mod horizon;
mod identity;
mod isolation;
mod limits;
mod live;
mod nats_auth;
mod openapi;
mod ownership;
mod payments;
mod privacy;
mod projector;
mod queries;
mod realtime;
mod reassignment;
mod relay;
mod revocation;
mod scheduler;
mod snapshots;
mod store;
mod support;
mod telephony;
mod whatsapp;
