//! Webhook ingestion, shared by every provider: the raw body is verified in constant time,
//! de-duplicated on `(provider, provider's event id)` (the webhook aggregate's id), and
//! appended as `Received` before the 2xx answer; processing happens afterwards, when the
//! projector's process manager asks for it (`POST /v1/webhooks/{id}/process`).
//!
//! A webhook that fails verification gets 401, appends nothing, and is written to the capped
//! rejection log (`webhook_rejections`).

/// The webhook aggregate and its rules.
pub mod aggregate;
/// What a provider's body says: identity and meaning for payments.
pub mod interpret;
/// HTTP routes: `/api/webhooks/{provider}` and `/v1/webhooks/{id}/…`.
pub mod routes;
/// The outcome of processing a webhook, as the providers' contexts answer it.
pub mod service;
/// Signature checks.
pub mod verify;
