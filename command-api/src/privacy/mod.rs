//! The privacy bounded context (docs/privacy.md): what the platform does about a data
//! subject: erasing them, and sealing what the store held in clear before sealing.

/// The data-subject aggregate.
pub mod aggregate;
/// The store's transform of WhatsApp conversations.
pub mod conversations;
/// Deleting an erased subject's files.
pub mod files;
/// HTTP: extract, call the service, answer.
pub mod http;
/// The subjects one person is, linked for their erasure.
pub mod person;
/// The application layer: who may erase whom.
pub mod service;
/// The store's transform of staff e-mails.
pub mod staff;
/// The one-time transform that seals what the store holds in clear.
pub mod store;
/// The store's transform of SMS and calls.
pub mod telephony;
/// The store's transform of webhooks' kept payloads.
pub mod webhooks;

use std::sync::Arc;

pub use crate::context::NoSettings as Settings;

use crate::context::{BoundedContext, Setup};
use crate::store::CommandBus;

/// What the privacy context holds.
pub struct Context {
    /// Data-subject commands.
    pub subjects: Arc<CommandBus<aggregate::DataSubject>>,
}

impl BoundedContext for Context {
    type Settings = Settings;

    async fn build(setup: &Setup<'_>, _: &Self::Settings) -> Result<Self, crate::StartError> {
        Ok(Self {
            subjects: setup.bus(()),
        })
    }

    fn routes() -> utoipa_axum::router::OpenApiRouter<crate::AppState> {
        http::router()
    }

    /// None: a subject's stream is one `Erased` event, and never reaches a snapshot.
    fn aggregates() -> &'static [crate::snapshots::Checked] {
        &[]
    }
}
