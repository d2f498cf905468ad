//! The payments bounded context: each tenant's catalog of products and taxes, and payments
//! requested from customers, collected through a provider (Lyra payment links, Stripe) and
//! confirmed by the provider's webhooks.

/// The payment aggregate and its rules.
pub mod aggregate;
/// The catalog aggregate (products and taxes of one tenant).
pub mod catalog;
/// HTTP routes under `/v1/payments` and `/v1/catalog`.
pub mod http;
/// What the payment providers' webhooks say.
pub mod interpret;
/// The Lyra REST client (payment links).
pub mod lyra;
/// The application layer: requesting payments and their links.
pub mod service;
/// The context's settings.
pub mod settings;
/// The signatures of Stripe's and Lyra's webhooks.
pub mod signature;
/// Currency codes, names and the tax arithmetic.
pub mod values;
/// Stripe's and Lyra's webhooks (their [`crate::webhooks::provider::WebhookProvider`]).
pub mod webhooks;

pub use settings::Settings;

use std::sync::Arc;

use crate::context::{BoundedContext, Setup};
use crate::store::CommandBus;
use crate::webhooks::provider::WebhookProvider;

/// What the payments context holds.
pub struct Context {
    /// Catalog commands (one aggregate per tenant).
    pub catalogs: Arc<CommandBus<catalog::Catalog>>,
    /// Payment commands.
    pub payments: Arc<CommandBus<aggregate::Payment>>,
    /// The Lyra client, when an account is configured.
    pub lyra: Option<lyra::Lyra>,
    /// The keys Stripe's and Lyra's webhooks are verified with.
    pub webhook_keys: settings::WebhookKeys,
}

impl BoundedContext for Context {
    type Settings = Settings;

    async fn build(
        setup: &Setup<'_>,
        settings: &Self::Settings,
    ) -> Result<Self, crate::StartError> {
        Ok(Self {
            catalogs: setup.bus(()),
            payments: setup.bus(()),
            lyra: settings
                .lyra_account(setup.config.public_base())
                .map(lyra::Lyra::new),
            webhook_keys: settings.webhook_keys(),
        })
    }

    fn routes() -> utoipa_axum::router::OpenApiRouter<crate::AppState> {
        http::router()
    }

    fn webhook_providers() -> &'static [&'static dyn WebhookProvider] {
        &[&webhooks::STRIPE, &webhooks::LYRA]
    }

    fn locations() -> &'static [(&'static str, &'static str)] {
        &[(events::payments::PAYMENT, "/v1/payments")]
    }

    fn aggregates() -> &'static [crate::snapshots::Checked] {
        const ALL: &[crate::snapshots::Checked] = &[
            crate::snapshots::checked::<catalog::Catalog>(),
            crate::snapshots::checked::<aggregate::Payment>(),
        ];
        ALL
    }
}
