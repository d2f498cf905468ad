//! projector: builds read models from the event stream.
//!
//! # Layout
//! - [`projection`]: the `Projection` trait and `apply_in_order`, which makes every read
//!   model apply each aggregate's events exactly once and in sequence order.
//! - [`worker`]: a durable JetStream pull consumer per projection, with a testable `step`,
//!   retries with back-off and dead letters.
//! - [`rebuild`]: rebuilds a read model from the event store and swaps it in.
//! - [`due`]: the engine of process managers that have due work done through command-api.
//! - [`context`]: what a bounded context contributes (settings, projections, workers); the
//!   contexts themselves are listed once, in `contexts!` below.

/// Commands to command-api as a platform component.
pub mod command_client;
/// What a bounded context contributes, and the list that names them all.
pub mod context;
/// Process managers of due work (webhooks, transcriptions, sends).
pub mod due;
/// `/health/live` and `/health/ready` (on `PROJECTOR_PORT`).
pub mod health;
/// Privacy: redaction of erased subjects' read models.
pub mod privacy;
/// Projection contract and exactly-once application.
pub mod projection;
/// Rebuild from the event store.
pub mod rebuild;
/// Durable consumers.
pub mod worker;

/// Audio files, transcripts and their process manager.
pub mod audio;
/// Threads, messages, receipts, scheduled messages; reassignment; the scheduler.
pub mod chat;
/// Admin users and their login history.
pub mod identity;
/// Catalogs and payments.
pub mod payments;
/// Events to Soketi and to SSE; eviction of ended access.
pub mod realtime;
/// The calls of tenants' numbers.
pub mod telephony;
/// The tenants read model.
pub mod tenants;
/// Received provider webhooks and their process manager.
pub mod webhooks;
/// WhatsApp sessions, conversations, contacts; the outbox, file re-fetch and sender.
pub mod whatsapp;

// The bounded contexts, registered: each is a module declared above (where rustfmt reaches
// it) and named here once, in the order they are built (docs/adding-a-context.md).
context::contexts! {
    tenants,
    identity,
    chat,
    webhooks,
    payments,
    audio,
    telephony,
    whatsapp,
    realtime,
    privacy,
}

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::projection::Projection;

/// The migrations of the whole platform (shared with the other services).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Settings of the projector.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "projector",
    version,
    about = "Builds read models from the event stream."
)]
pub struct Config {
    /// PostgreSQL connection string (event store and read models).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Fallback name for the connection string.
    #[arg(long, env = "NEON_PG_CONN", global = true, hide_env_values = true)]
    pub neon_pg_conn: Option<String>,
    /// Maximum PostgreSQL connections of this process.
    #[arg(long, env = "DB_MAX_CONNECTIONS", global = true, default_value_t = 8)]
    pub db_max_connections: u32,
    /// NATS server URL, with this service's user (`nats://projector:password@host:4222`).
    #[arg(
        long,
        env = "NATS_URL",
        global = true,
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: String,
    /// JetStream stream holding every committed event.
    #[arg(long, env = "NATS_STREAM", global = true, default_value = events::subject::DEFAULT_STREAM)]
    pub nats_stream: String,
    /// First token of every event subject.
    #[arg(long, env = "NATS_SUBJECT_PREFIX", global = true, default_value = events::subject::DEFAULT_PREFIX)]
    pub nats_subject_prefix: String,
    /// Attempts before a message that keeps failing goes to dead letters.
    #[arg(
        long,
        env = "PROJECTOR_MAX_DELIVER",
        global = true,
        default_value_t = 5
    )]
    pub max_deliver: i64,
    /// Most messages applied in one transaction.
    #[arg(long, env = "PROJECTOR_BATCH", global = true, default_value_t = 256)]
    pub batch: usize,
    /// Accept secrets that are empty, short or a published default (development only;
    /// `scripts/up` sets it). Without it the service refuses to start with one.
    #[arg(long, env = "ALLOW_DEV_SECRETS", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub allow_dev_secrets: bool,
    /// command-api's base URL (the scheduler sends due messages' delivery commands there).
    #[arg(
        long,
        env = "COMMAND_API_URL",
        global = true,
        default_value = "http://127.0.0.1:3001"
    )]
    pub command_api_url: String,
    /// HS256 secret of bearer tokens (the scheduler signs its service token with it; without
    /// it scheduled messages are not delivered).
    #[arg(long, env = "NEST_AUTH_SECRET", global = true, hide_env_values = true)]
    pub nest_auth_secret: Option<String>,
    /// Fallback name for the token secret.
    #[arg(long, env = "NEXTAUTH_SECRET", global = true, hide_env_values = true)]
    pub nextauth_secret: Option<String>,
    /// Key provider credentials are sealed with (the same as command-api's); derived from
    /// the token secret when unset.
    #[arg(long, env = "CREDENTIALS_KEY", global = true, hide_env_values = true)]
    pub credentials_key: Option<String>,
    /// Master keys of personal data's data keys, as command-api's (docs/privacy.md): the
    /// projector opens personal fields before it applies events.
    #[arg(
        long,
        env = "PRIVACY_MASTER_KEYS",
        global = true,
        hide_env_values = true
    )]
    pub privacy_master_keys: Option<String>,
    /// Port of the projector's health endpoints (`/health/live`, `/health/ready`: PostgreSQL
    /// answers and NATS is connected), on `HOST`; none without it.
    #[arg(long, env = "PROJECTOR_PORT", global = true)]
    pub port: Option<u16>,
    /// Address the health endpoints listen on.
    #[arg(long, env = "HOST", global = true, default_value = "0.0.0.0")]
    pub host: std::net::IpAddr,
    /// Each bounded context's own settings.
    #[command(flatten)]
    pub ctx: ContextSettings,
    /// What to do (default: run every projection).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Consume the stream and keep every read model current.
    Run,
    /// Rebuild a read model from the event store into fresh tables and swap it in.
    Rebuild {
        /// The projection to rebuild (e.g. `tenants`).
        projection: String,
    },
    /// List the projections.
    List,
}

/// Every projection this process runs: each context's read models and side-effect workers
/// (those that command command-api only when a service token can be signed; realtime sends
/// to Soketi when its URL and app are set, and fans out on `nats` for SSE).
pub fn projections(
    config: &Config,
    nats: Option<async_nats::Client>,
    pool: Option<PgPool>,
    keyring: Option<events::keyring::Keyring>,
) -> Vec<Arc<dyn Projection>> {
    context_projections(&context::Setup {
        config,
        nats,
        pool,
        keyring,
    })
}

/// Why the projector stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is missing or wrong.
    #[error("{0}")]
    Config(String),
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A projection failed.
    #[error(transparent)]
    Projection(#[from] projection::ProjectionError),
    /// NATS failed.
    #[error("nats: {0}")]
    Nats(String),
}

impl Config {
    /// The key credentials are sealed with: `CREDENTIALS_KEY`, or one derived from the token
    /// secret `secret` (as command-api derives it).
    pub fn sealing_key(&self, secret: &str) -> events::sealed::SealingKey {
        match self.credentials_key.as_deref().filter(|k| !k.is_empty()) {
            Some(key) => events::sealed::SealingKey::derive(key),
            None => events::sealed::SealingKey::derive(secret),
        }
    }

    /// The data keys of personal data in `pool`'s database, under `PRIVACY_MASTER_KEYS` or
    /// the one master key derived from `CREDENTIALS_KEY` (or the token secret), as
    /// command-api derives it.
    pub fn keyring(&self, pool: &PgPool) -> Result<events::keyring::Keyring, Error> {
        let masters = events::personal::MasterKeys::from_settings(
            self.privacy_master_keys.as_deref(),
            self.credentials_key.as_deref(),
            self.auth_secret(),
        )
        .map_err(Error::Config)?;
        Ok(events::keyring::Keyring::new(pool.clone(), masters))
    }

    /// The token secret, from `NEST_AUTH_SECRET` or its fallback.
    pub fn auth_secret(&self) -> Option<&str> {
        self.nest_auth_secret
            .as_deref()
            .filter(|s| !s.is_empty())
            .or(self.nextauth_secret.as_deref())
            .filter(|s| !s.is_empty())
    }

    /// Connects and migrates.
    pub async fn pool(&self) -> Result<PgPool, Error> {
        let url = self
            .database_url
            .as_deref()
            .or(self.neon_pg_conn.as_deref())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::Config("set DATABASE_URL (or NEON_PG_CONN)".into()))?;
        let pool = PgPoolOptions::new()
            .max_connections(self.db_max_connections)
            .connect(url)
            .await?;
        events::schema::migrate(url, &MIGRATOR).await?;
        Ok(pool)
    }
}

/// Runs every projection's worker until one fails for good or `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let masters = events::personal::master_secrets(config.privacy_master_keys.as_deref());
    events::access::check_secrets(
        &[
            (
                "NEST_AUTH_SECRET (or NEXTAUTH_SECRET)",
                config.auth_secret(),
            ),
            ("CREDENTIALS_KEY", config.credentials_key.as_deref()),
        ]
        .into_iter()
        .chain(context_secrets(&config.ctx))
        .chain(
            masters
                .iter()
                .map(|(name, secret)| (name.as_str(), Some(*secret))),
        )
        .collect::<Vec<_>>(),
        config.allow_dev_secrets,
    )
    .map_err(Error::Config)?;
    let nats_url = events::bus::NatsUrl::parse(&config.nats_url);
    nats_url
        .check(config.allow_dev_secrets)
        .map_err(Error::Config)?;
    let pool = config.pool().await?;
    let keys = config.keyring(&pool)?;
    // The bus may be down: every worker waits for it (reconnecting with back-off), and
    // readiness says so until it is up.
    let client = nats_url
        .connect_in_background()
        .await
        .map_err(|e| Error::Nats(e.to_string()))?;
    let js = async_nats::jetstream::new(client.clone());
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(port) = config.port {
        let listener = tokio::net::TcpListener::bind((config.host, port))
            .await
            .map_err(|e| Error::Config(format!("cannot listen on port {port}: {e}")))?;
        tasks.spawn(health::serve(listener, pool.clone(), client.clone()));
    }
    keys.follow_erasures();
    for projection in projections(
        &config,
        Some(client),
        Some(pool.clone()),
        Some(keys.clone()),
    ) {
        let (pool, js, config, keys) = (pool.clone(), js.clone(), config.clone(), keys.clone());
        tasks.spawn(async move { supervise(pool, js, config, projection, keys).await });
    }
    match config.auth_secret() {
        Some(secret) => context_workers(
            &context::Running {
                config: &config,
                pool: &pool,
                js: &js,
                secret,
            },
            &mut tasks,
        ),
        None => {
            tracing::warn!("NEST_AUTH_SECRET is not set: scheduled messages will not be delivered, received webhooks will not be processed, audio will not be transcribed and WhatsApp messages will not be sent")
        }
    }
    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => {}
        Some(_) = tasks.join_next() => {}
    }
    tasks.shutdown().await;
    Ok(())
}

/// Keeps one projection's worker running, reconnecting with back-off (the stream may not
/// exist yet when the projector starts before command-api).
async fn supervise(
    pool: PgPool,
    js: async_nats::jetstream::Context,
    config: Config,
    projection: Arc<dyn Projection>,
    keys: events::keyring::Keyring,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let outcome = async {
            let consumer = worker::durable_consumer(
                &js,
                &config.nats_stream,
                &config.nats_subject_prefix,
                projection.as_ref(),
            )
            .await?;
            tracing::info!(projection = projection.name(), "consuming");
            worker::Worker::new(
                pool.clone(),
                projection.clone(),
                consumer,
                config.max_deliver,
                config.batch,
                keys.clone(),
            )
            .run()
            .await
        }
        .await;
        if let Err(e) = outcome {
            tracing::warn!(projection = projection.name(), error = %e, "worker stopped; restarting");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod consumer_files {
    use clap::Parser;

    use super::{projections, Config};

    /// `nats/consumers/` writes down every consumer the projector creates, as it creates it:
    /// one file per projection (every one, with every optional worker configured), and no
    /// file for a consumer that does not exist.
    #[tokio::test]
    async fn nats_consumer_files_are_the_projectors_consumers() {
        let secret = "s".repeat(48);
        let config = Config::try_parse_from([
            "projector",
            "--nest-auth-secret",
            &secret,
            "--soketi-url",
            "http://127.0.0.1:6001",
            "--soketi-app-id",
            "app",
            "--soketi-app-key",
            "key",
            "--soketi-app-secret",
            "secret",
        ])
        .expect("config");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://127.0.0.1/unused")
            .expect("lazy pool");
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../nats/consumers");
        let mut expected = std::collections::BTreeMap::new();
        for projection in projections(&config, None, Some(pool), None) {
            let c = crate::worker::consumer_config(
                events::subject::DEFAULT_PREFIX,
                projection.as_ref(),
            );
            let deliver = match c.deliver_policy {
                async_nats::jetstream::consumer::DeliverPolicy::New => "new",
                _ => "all",
            };
            expected.insert(
                format!("{}.json", projection.name()),
                serde_json::json!({
                    "durable_name": c.durable_name,
                    "deliver_policy": deliver,
                    "ack_policy": "explicit",
                    "ack_wait": c.ack_wait.as_nanos() as u64,
                    "max_ack_pending": c.max_ack_pending,
                    "filter_subject": c.filter_subject,
                }),
            );
        }
        let mut found = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(&folder).expect("nats/consumers") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let text = std::fs::read_to_string(&path).expect("readable");
            let json: serde_json::Value = serde_json::from_str(&text).expect("json");
            found.insert(name, json);
        }
        let wanted: Vec<String> = expected
            .iter()
            .map(|(name, json)| format!("{name}: {json}"))
            .collect();
        assert_eq!(
            found,
            expected,
            "nats/consumers/ should hold:\n{}",
            wanted.join("\n")
        );
    }
}
