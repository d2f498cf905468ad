//! What a bounded context contributes to query-api, through one trait: its settings, its
//! state and its routes. `lib.rs` names every context once, in `contexts!`; the state and
//! the router are loops over that list.

use sqlx::PgPool;

use crate::config::Config;
use crate::{AppState, StartError};

/// What a context is built from.
pub struct Setup<'a> {
    /// Every setting.
    pub config: &'a Config,
    /// The read models' database.
    pub pool: &'a PgPool,
}

/// The settings of a context that has none.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
#[group(skip)]
pub struct NoSettings {}

/// A bounded context of query-api.
pub(crate) trait BoundedContext: Sized + Send + Sync + 'static {
    /// Its settings (flags and environment variables, listed by `--help`), with the same
    /// defaults as `Default` gives.
    type Settings: clap::Args + Default + Clone + std::fmt::Debug + PartialEq;

    /// Builds the context's state from its settings.
    async fn build(setup: &Setup<'_>, settings: &Self::Settings) -> Result<Self, StartError>;

    /// Its routes.
    fn routes() -> utoipa_axum::router::OpenApiRouter<AppState>;

    /// Its secrets, checked at start like the process's own.
    fn secrets(_settings: &Self::Settings) -> Vec<(&'static str, Option<&str>)> {
        Vec::new()
    }

    /// Lets its long-lived answers (streams) end when the process shuts down.
    fn shutting_down(&self) {}
}

/// Names the bounded contexts of query-api, once: each is a module `name` whose `Context`
/// implements [`BoundedContext`] with the module's `Settings`. Expands to the settings and
/// the state of every context ([`crate::ContextSettings`], [`crate::Contexts`])
/// and the loops over their contributions.
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

            /// Every context's routes.
            pub(crate) fn routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
                use context::BoundedContext as _;
                utoipa_axum::router::OpenApiRouter::new()$(.merge(events::http::openapi::tagged(
                    stringify!($name),
                    $name::Context::routes(),
                )))*
            }

            /// Every context's secrets.
            fn secrets(settings: &ContextSettings) -> Vec<(&'static str, Option<&str>)> {
                use context::BoundedContext as _;
                let mut all = Vec::new();
                $(all.extend($name::Context::secrets(&settings.$name));)*
                all
            }

            /// Tells every context the process is shutting down.
            fn shutting_down(&self) {
                use context::BoundedContext as _;
                $(self.$name.shutting_down();)*
            }
        }
    };
}
pub(crate) use contexts;

#[cfg(test)]
mod tests {
    use clap::{Args, FromArgMatches};

    /// Tests build the contexts' settings from `Default`: it must give what the flags give
    /// when nothing is set.
    #[test]
    fn the_contexts_defaults_are_those_of_their_flags() {
        let command = crate::ContextSettings::augment_args(clap::Command::new("query-api"));
        let set: Vec<_> = command
            .get_arguments()
            .filter_map(|a| a.get_env())
            .filter(|name| std::env::var_os(name).is_some())
            .collect();
        if !set.is_empty() {
            eprintln!("skipped: the environment sets {set:?}");
            return;
        }
        let matches = command.get_matches_from(["query-api"]);
        let parsed = crate::ContextSettings::from_arg_matches(&matches).expect("parses");
        assert_eq!(parsed, crate::ContextSettings::default());
    }
}
