//! What a bounded context contributes to the projector, through one trait: its settings, its
//! projections (read models and side-effect workers, each on a durable consumer) and its
//! background workers (process managers, senders). `lib.rs` names every context once, in
//! `contexts!`; the projector's start, `list` and `rebuild` are loops over that list.

use std::sync::Arc;

use sqlx::PgPool;

use crate::command_client::CommandClient;
use crate::projection::Projection;
use crate::Config;

/// What a context's projections are made from.
pub struct Setup<'a> {
    /// Every setting.
    pub config: &'a Config,
    /// The NATS connection (realtime fan-out), when running.
    pub nats: Option<async_nats::Client>,
    /// The read models' database, when running or listing consumers.
    pub pool: Option<PgPool>,
    /// The process's data keys (following erasures), when running: for a projection that
    /// reads events from the store itself (those it is given are opened already).
    pub keyring: Option<events::keyring::Keyring>,
}

impl Setup<'_> {
    /// A client of command-api acting as the platform component `component`, when a service
    /// token can be signed (the token secret is set).
    pub fn command_client(&self, component: &'static str) -> Option<CommandClient> {
        let secret = self.config.auth_secret()?;
        Some(CommandClient::new(
            &self.config.command_api_url,
            events::access::TokenKeys::new(secret),
            component,
        ))
    }
}

/// What a context's background workers are started with.
pub struct Running<'a> {
    /// Every setting.
    pub config: &'a Config,
    /// The read models' database.
    pub pool: &'a PgPool,
    /// JetStream (streams of the context's own).
    pub js: &'a async_nats::jetstream::Context,
    /// The token secret: service tokens for command-api.
    pub secret: &'a str,
}

impl Running<'_> {
    /// Keys that sign this process's service tokens.
    pub fn keys(&self) -> events::access::TokenKeys {
        events::access::TokenKeys::new(self.secret)
    }
}

/// The settings of a context that has none.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
#[group(skip)]
pub struct NoSettings {}

/// A bounded context of the projector.
pub(crate) trait BoundedContext {
    /// Its settings (flags and environment variables, listed by `--help`), with the same
    /// defaults as `Default` gives.
    type Settings: clap::Args + Default + Clone + std::fmt::Debug + PartialEq;

    /// Its projections: read models and side-effect workers, each on a durable consumer.
    fn projections(setup: &Setup<'_>, settings: &Self::Settings) -> Vec<Arc<dyn Projection>>;

    /// Starts its background workers (process managers, senders) on `tasks`: only when a
    /// service token can be signed (they command command-api).
    fn workers(
        _running: &Running<'_>,
        _settings: &Self::Settings,
        _tasks: &mut tokio::task::JoinSet<()>,
    ) {
    }

    /// Its secrets, checked at start like the process's own (none empty, short or a
    /// published default outside development).
    fn secrets(_settings: &Self::Settings) -> Vec<(&'static str, Option<&str>)> {
        Vec::new()
    }
}

/// Names the bounded contexts of the projector, once: each is a module `name` whose
/// `Context` implements [`BoundedContext`] with the module's `Settings`. Expands to the
/// settings of every context ([`crate::ContextSettings`]) and the loops over
/// their contributions.
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

        /// Every context's projections.
        fn context_projections(setup: &context::Setup<'_>) -> Vec<Arc<dyn Projection>> {
            use context::BoundedContext as _;
            let mut all = Vec::new();
            $(all.extend($name::Context::projections(setup, &setup.config.ctx.$name));)*
            all
        }

        /// Starts every context's background workers.
        fn context_workers(running: &context::Running<'_>, tasks: &mut tokio::task::JoinSet<()>) {
            use context::BoundedContext as _;
            $($name::Context::workers(running, &running.config.ctx.$name, tasks);)*
        }

        /// Every context's secrets.
        fn context_secrets(settings: &ContextSettings) -> Vec<(&'static str, Option<&str>)> {
            use context::BoundedContext as _;
            let mut all = Vec::new();
            $(all.extend($name::Context::secrets(&settings.$name));)*
            all
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
        let command = crate::ContextSettings::augment_args(clap::Command::new("projector"));
        let set: Vec<_> = command
            .get_arguments()
            .filter_map(|a| a.get_env())
            .filter(|name| std::env::var_os(name).is_some())
            .collect();
        if !set.is_empty() {
            eprintln!("skipped: the environment sets {set:?}");
            return;
        }
        let matches = command.get_matches_from(["projector"]);
        let parsed = crate::ContextSettings::from_arg_matches(&matches).expect("parses");
        assert_eq!(parsed, crate::ContextSettings::default());
    }
}
