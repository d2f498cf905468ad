//! The event contract of the platform: what every process agrees on.
//!
//! # Layout
//! - [`envelope`]: the wire form of a committed event (what the relay publishes to NATS and
//!   what projectors read back from the event store), and the metadata every event carries.
//! - [`subject`]: NATS subject and message-id naming.
//! - [`tenant`]: the events of the tenants bounded context.
//! - [`identity`]: the events of admin users (logins, lockouts, sessions).
//! - [`clock`]: the time source (system, or manual in tests).
//! - [`chat`]: the events of chat threads, their messages, receipts and scheduled messages.
//! - [`realtime`]: realtime channels and events, and the Pusher protocol's signatures.
//! - [`webhook`]: received provider webhooks and their processing.
//! - [`payment`]: tenants' catalogs (products, taxes) and payments.
//! - [`audio`]: uploaded audio files and their transcripts.
//! - [`telephony`]: tenants' phone numbers, and the SMS and calls the provider reports.
//! - [`whatsapp`]: WhatsApp sessions and their conversations with contacts.
//! - [`sealed`]: secrets sealed for storage (provider credentials).
//! - [`privacy`]: the events of data subjects (erasure).
//! - [`personal`]: personal data sealed per data subject (crypto-shredding), and `keyring`
//!   (feature `privacy`): the data keys in PostgreSQL, cached per process.
//! - [`hex`]: lowercase hex (digests, signatures).
//! - [`jsonb`]: what PostgreSQL's `jsonb` can store (no NUL in any key or string).
//! - [`access`]: bearer-token claims and roles (verification is pure CPU, no I/O).
//! - `http` (feature `http`): plumbing the two HTTP APIs share — problem+json errors, the
//!   bearer-token extractor, telemetry and metrics — so both verify tokens with one extractor.
//!
//! Nothing here performs I/O except the optional `http` module (its response types, and the
//! follower of token revocations).

/// Bearer-token claims and roles.
pub mod access;
/// Audio files and their transcripts.
pub mod audio;
/// Connecting to NATS as a service's own user.
#[cfg(feature = "nats")]
pub mod bus;
/// Events of chat threads.
pub mod chat;
/// The clock rules are decided by (settable in tests).
pub mod clock;
/// The committed-event envelope and its metadata keys.
pub mod envelope;
/// Lowercase hex encoding and decoding.
pub mod hex;
/// HTTP plumbing shared by command-api and query-api.
#[cfg(feature = "http")]
pub mod http;
/// Events of admin users.
pub mod identity;
/// What PostgreSQL's `jsonb` columns can store.
pub mod jsonb;
/// The data keys in PostgreSQL, cached: sealing, opening and erasing personal data.
#[cfg(feature = "privacy")]
pub mod keyring;
/// Catalogs and payments.
pub mod payments;
/// Personal data sealed per data subject: the format, data and master keys.
pub mod personal;
/// Events of data subjects (erasure).
pub mod privacy;
/// Realtime channels, events and the Pusher protocol's signatures.
pub mod realtime;
/// What makes a verified token stop working before it expires.
pub mod revocation;
/// Migrations, one process at a time, and waiting for them.
#[cfg(feature = "http")]
pub mod schema;
/// Secrets sealed for storage.
pub mod sealed;
/// NATS subject and `Nats-Msg-Id` naming.
pub mod subject;
/// Phone numbers, SMS and calls.
pub mod telephony;
/// Events of the tenants bounded context.
pub mod tenants;
/// Received provider webhooks.
pub mod webhooks;
/// WhatsApp sessions and conversations.
pub mod whatsapp;

pub use envelope::{Envelope, Metadata};
