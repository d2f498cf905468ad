//! Webhook ingestion, shared by every provider: the raw body is verified in constant time,
//! de-duplicated on `(provider, provider's event id)` (the webhook aggregate's id), and
//! appended as `Received` before the 2xx answer; processing happens afterwards, when the
//! projector's process manager asks for it (`POST /v1/webhooks/{id}/process`).
//!
//! A webhook that fails verification gets 401, appends nothing, and is written to the capped
//! rejection log (`webhook_rejections`).

/// The webhook aggregate and its rules.
pub mod aggregate;
/// HTTP routes: each provider's `/api/webhooks/…` paths and `/v1/webhooks/{id}/…`.
pub mod http;
/// What a provider implements in its own context.
pub mod provider;
/// Refusing, receiving and the outcome of processing, shared by every provider.
pub mod service;
/// Signature checks shared by providers.
pub mod verify;

/// The context has no settings of its own.
pub use crate::context::NoSettings as Settings;

use std::sync::Arc;

use crate::context::{BoundedContext, Setup};
use crate::store::CommandBus;

/// What the webhooks context holds.
pub struct Context {
    /// Webhook commands.
    pub bus: Arc<CommandBus<aggregate::Webhook>>,
}

impl BoundedContext for Context {
    type Settings = Settings;

    async fn build(setup: &Setup<'_>, _: &Self::Settings) -> Result<Self, crate::StartError> {
        Ok(Self { bus: setup.bus(()) })
    }

    /// The ingestion paths of every context's webhook providers, and the commands on
    /// received webhooks.
    fn routes() -> utoipa_axum::router::OpenApiRouter<crate::AppState> {
        http::router(crate::Contexts::webhook_providers())
    }

    fn aggregates() -> &'static [crate::snapshots::Checked] {
        const ALL: &[crate::snapshots::Checked] =
            &[crate::snapshots::checked::<aggregate::Webhook>()];
        ALL
    }
}
