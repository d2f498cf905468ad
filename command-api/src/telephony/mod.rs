//! The telephony bounded context: the phone numbers tenants own, and the SMS and calls the
//! provider (SignalWire) reports through its webhooks.

/// The phone-number, SMS and call aggregates.
pub mod aggregate;
/// HTTP: extract, call the service, answer.
pub mod http;
/// Reading SignalWire's callbacks.
pub mod interpret;
/// The other party's data in SMS and call events, sealed for them.
pub mod personal;
/// The application layer: processing SignalWire's callbacks.
pub mod service;
/// The context's settings.
pub mod settings;
/// The signature of SignalWire's callbacks.
pub mod signature;
/// SignalWire's callbacks (their [`crate::webhooks::provider::WebhookProvider`]).
pub mod webhooks;

pub use settings::Settings;

use std::sync::Arc;

use crate::context::{BoundedContext, Setup};
use crate::store::CommandBus;
use crate::webhooks::provider::WebhookProvider;

/// What the telephony context holds.
pub struct Context {
    /// Phone-number commands.
    pub numbers: Arc<CommandBus<aggregate::PhoneNumber>>,
    /// SMS commands (from callbacks).
    pub sms: Arc<CommandBus<aggregate::Sms>>,
    /// Call commands (from callbacks).
    pub calls: Arc<CommandBus<aggregate::Call>>,
    /// SignalWire signing keys (any of them may sign).
    pub signing_keys: Vec<String>,
    /// SignalWire project id and API token: the HTTP Basic credentials MMS media are
    /// fetched with (none: fetched without, as from a space serving media openly).
    pub api_credentials: Option<(String, String)>,
}

impl BoundedContext for Context {
    type Settings = Settings;

    async fn build(
        setup: &Setup<'_>,
        settings: &Self::Settings,
    ) -> Result<Self, crate::StartError> {
        Ok(Self {
            numbers: setup.bus(()),
            sms: setup.bus(()),
            calls: setup.bus(()),
            signing_keys: settings.signing_keys(),
            api_credentials: settings.api_credentials(),
        })
    }

    fn routes() -> utoipa_axum::router::OpenApiRouter<crate::AppState> {
        http::router()
    }

    fn webhook_providers() -> &'static [&'static dyn WebhookProvider] {
        &[&webhooks::SIGNALWIRE]
    }

    fn aggregates() -> &'static [crate::snapshots::Checked] {
        const ALL: &[crate::snapshots::Checked] = &[
            crate::snapshots::checked::<aggregate::PhoneNumber>(),
            crate::snapshots::checked::<aggregate::Sms>(),
            crate::snapshots::checked::<aggregate::Call>(),
        ];
        ALL
    }
}
