//! WhatsApp through the Cloud API: tenants' sessions (numbers connected with sealed
//! credentials), inbound deliveries through the webhook layer (each message and status
//! de-duplicated, then processed into its conversation and the contact's thread), and
//! outbound messages decided by the conversation (the 24-hour customer-service window) and
//! sent at most once by the projector's sender, which reports back here.

/// The session and conversation aggregates and their rules.
pub mod aggregate;
/// The Cloud API calls command-api makes (checking credentials).
pub mod cloud;
/// A conversation's older messages, read from its events.
pub mod history;
/// HTTP: extract, call the service, answer.
pub mod http;
/// What a webhook delivery says.
pub mod inbound;
/// The contact's personal data in a conversation's events, sealed for them.
pub mod personal;
/// The application layer: processing deliveries, credentials, provider calls.
pub mod service;
/// The context's settings.
pub mod settings;
/// The signature of WhatsApp deliveries.
pub mod signature;
/// WhatsApp deliveries (their [`crate::webhooks::provider::WebhookProvider`]).
pub mod webhooks;

pub use settings::Settings;

use std::sync::Arc;

use crate::context::{BoundedContext, Setup};
use crate::store::CommandBus;
use crate::webhooks::provider::WebhookProvider;

/// What the WhatsApp context holds.
pub struct Context {
    /// Session commands.
    pub sessions: Arc<CommandBus<aggregate::Session>>,
    /// Conversation commands.
    pub conversations: Arc<CommandBus<aggregate::Conversation>>,
    /// The API URL and version, the platform's app secrets and verify token.
    pub settings: Arc<cloud::Settings>,
}

impl BoundedContext for Context {
    type Settings = Settings;

    async fn build(
        setup: &Setup<'_>,
        settings: &Self::Settings,
    ) -> Result<Self, crate::StartError> {
        Ok(Self {
            sessions: setup.bus(()),
            conversations: setup.bus(Arc::new(history::PgHistory {
                pool: setup.pool.clone(),
                keyring: setup.keyring.clone(),
            }) as aggregate::ConversationServices),
            settings: Arc::new(settings.cloud()),
        })
    }

    fn routes() -> utoipa_axum::router::OpenApiRouter<crate::AppState> {
        http::router()
    }

    fn webhook_providers() -> &'static [&'static dyn WebhookProvider] {
        &[&webhooks::WHATSAPP]
    }

    fn aggregates() -> &'static [crate::snapshots::Checked] {
        const ALL: &[crate::snapshots::Checked] = &[
            crate::snapshots::checked::<aggregate::Session>(),
            crate::snapshots::checked::<aggregate::Conversation>(),
        ];
        ALL
    }
}
