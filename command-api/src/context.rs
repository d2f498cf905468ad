//! What a bounded context contributes to command-api, through one trait: its settings, its
//! state (command buses, clients, limits), its routes, the webhook providers it implements, where a client
//! reads an aggregate it opened, and the items its commands create inside an aggregate.
//! `lib.rs` names every context once, in `contexts!`; the state, the router, the webhook
//! layer and `Idempotency-Key` recovery are loops over that list.

use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;

use events::http::Metrics;
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::config::Config;
use crate::group_commit::GroupCommit;
use crate::store::CommandBus;
use crate::webhooks::provider::WebhookProvider;
use crate::{AppState, StartError};

/// What a context is built from: the settings and what the process shares.
pub struct Setup<'a> {
    /// Every setting.
    pub config: &'a Config,
    /// The event store and command-side tables.
    pub pool: &'a PgPool,
    /// The process's metrics.
    pub metrics: &'a Arc<Metrics>,
    /// Woken after every commit (the relay).
    pub(crate) committed: &'a Arc<Notify>,
    /// The process's event-store writers (group commit), shared by every bus.
    pub(crate) appends: &'a GroupCommit,
    /// The data keys personal data is sealed with (docs/privacy.md).
    pub keyring: &'a events::keyring::Keyring,
}

impl Setup<'_> {
    /// A command bus for aggregate `A` with `services`.
    pub fn bus<A>(&self, services: A::Services) -> Arc<CommandBus<A>>
    where
        A: cqrs_es::Aggregate + Clone + 'static,
        A::Command: Clone,
    {
        Arc::new(
            CommandBus::sharing(
                self.appends.clone(),
                self.pool.clone(),
                services,
                self.config.snapshot_every,
                self.committed.clone(),
            )
            .with_metrics(self.metrics.clone()),
        )
    }
}

/// An item a command creates inside an aggregate and answers with its own id (201): a
/// message in a thread. `Idempotency-Key` recovery rebuilds the answer from the event.
#[derive(Debug, Clone, Copy)]
pub struct CreatedItem {
    /// The aggregate type.
    pub aggregate_type: &'static str,
    /// The event that creates the item.
    pub event_type: &'static str,
    /// The field of that event holding the item's id, named the same in the answer.
    pub id_field: &'static str,
}

/// The settings of a context that has none.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
#[group(skip)]
pub struct NoSettings {}

/// A bounded context of command-api.
pub(crate) trait BoundedContext: Sized + Send + Sync + 'static {
    /// Its settings (flags and environment variables, listed by `--help`), with the same
    /// defaults as `Default` gives (tests build settings from it).
    type Settings: clap::Args + Default + Clone + std::fmt::Debug + PartialEq;

    /// Builds the context's state from its settings.
    async fn build(setup: &Setup<'_>, settings: &Self::Settings) -> Result<Self, StartError>;

    /// Its routes. Answers are kept for `Idempotency-Key`.
    fn routes() -> OpenApiRouter<AppState>;

    /// Its routes that answer with tokens: never kept as idempotent answers (a replay would
    /// hand a spent refresh token's successor out again, and the store would hold tokens in
    /// clear), never cached by anything between (RFC 6749 §5.1).
    fn sign_in_routes() -> OpenApiRouter<AppState> {
        OpenApiRouter::new()
    }

    /// The webhook providers it implements.
    fn webhook_providers() -> &'static [&'static dyn WebhookProvider] {
        &[]
    }

    /// Where a client reads an aggregate it opened (the `Location` of a 201): the aggregate
    /// type and the path its id is appended to.
    fn locations() -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// The items its commands create inside an aggregate.
    fn created_items() -> &'static [CreatedItem] {
        &[]
    }

    /// The aggregates it runs: their snapshots are audited (`command-api snapshots verify`).
    fn aggregates() -> &'static [crate::snapshots::Checked];
}

/// Names the bounded contexts of command-api, once: each is a module `name` (a folder)
/// whose `Context` implements [`BoundedContext`] with the module's `Settings`. Expands to
/// the settings and the state of every context ([`crate::ContextSettings`],
/// [`crate::Contexts`]) and the loops over their contributions.
macro_rules! contexts {
    ($($name:ident),* $(,)?) => {
        /// The settings of every bounded context.
        #[derive(Debug, Clone, Default, PartialEq, clap::Args)]
        #[group(skip)]
        pub struct ContextSettings {
            $(
                #[allow(missing_docs)]
                #[command(flatten)]
                pub $name: $name::Settings,
            )*
        }

        /// The state of every bounded context.
        pub struct Contexts {
            $(#[allow(missing_docs)] pub $name: $name::Context,)*
        }

        impl Contexts {
            /// Builds every context, in the order of the list.
            async fn build(setup: &context::Setup<'_>) -> Result<Self, StartError> {
                use context::BoundedContext as _;
                Ok(Self {
                    $($name: $name::Context::build(setup, &setup.config.ctx.$name).await?,)*
                })
            }

            /// Every context's routes whose answers are kept for `Idempotency-Key`.
            pub(crate) fn routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
                use context::BoundedContext as _;
                utoipa_axum::router::OpenApiRouter::new()$(.merge(events::http::openapi::tagged(
                    stringify!($name),
                    $name::Context::routes(),
                )))*
            }

            /// Every context's routes that answer with tokens.
            pub(crate) fn sign_in_routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
                use context::BoundedContext as _;
                utoipa_axum::router::OpenApiRouter::new()$(.merge(events::http::openapi::tagged(
                    stringify!($name),
                    $name::Context::sign_in_routes(),
                )))*
            }

            /// Every webhook provider.
            pub(crate) fn webhook_providers(
            ) -> &'static [&'static dyn webhooks::provider::WebhookProvider] {
                use context::BoundedContext as _;
                static ALL: std::sync::LazyLock<
                    Vec<&'static dyn webhooks::provider::WebhookProvider>,
                > = std::sync::LazyLock::new(|| {
                    [$($name::Context::webhook_providers()),*].concat()
                });
                &ALL
            }

            /// Where a client reads an aggregate of `aggregate_type` it opened.
            pub(crate) fn location(aggregate_type: &str) -> Option<&'static str> {
                use context::BoundedContext as _;
                [$($name::Context::locations()),*]
                    .into_iter()
                    .flatten()
                    .find(|(t, _)| *t == aggregate_type)
                    .map(|(_, path)| *path)
            }

            /// Every context's aggregates, in the order of the list.
            pub(crate) fn aggregates() -> impl Iterator<Item = &'static crate::snapshots::Checked> {
                use context::BoundedContext as _;
                [$($name::Context::aggregates()),*].into_iter().flatten()
            }

            /// The items commands create inside aggregates of `aggregate_type`.
            pub(crate) fn created_items(
                aggregate_type: &str,
            ) -> impl Iterator<Item = &'static context::CreatedItem> + '_ {
                use context::BoundedContext as _;
                [$($name::Context::created_items()),*]
                    .into_iter()
                    .flatten()
                    .filter(move |i| i.aggregate_type == aggregate_type)
            }
        }
    };
}
pub(crate) use contexts;
