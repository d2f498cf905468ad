//! projector: builds read models from the event stream.
//!
//! # Layout
//! - [`projection`]: the `Projection` trait and `apply_in_order`, which makes every read
//!   model apply each aggregate's events exactly once and in sequence order.
//! - [`worker`]: a durable JetStream pull consumer per projection, with a testable `step`,
//!   retries with back-off and dead letters.
//! - [`rebuild`]: rebuilds a read model from the event store and swaps it in.
//! - [`tenants`]: the tenants read model.
//! - [`identity`]: admin users and their login history.
//! - [`effects`]: side-effect workers: realtime (Soketi and SSE fan-out).
//! - [`scheduler`]: delivers due scheduled messages through command-api.
//! - [`chat`]: threads, messages, read positions and scheduled messages.
//! - [`payments`]: catalogs and payments.
//! - [`webhooks`]: received provider webhooks (the queue of their process manager).
//! - [`due`]: process managers that have due webhooks processed and audio transcribed.
//! - [`audio`]: audio files and their transcripts.
//! - [`telephony`]: the calls of tenants' numbers.
//! - [`whatsapp`]: WhatsApp sessions, conversations, messages and contacts.
//! - [`whatsapp`]: also the sender of due WhatsApp messages (through the Cloud API or a
//!   bridge, at most once each), the outbox of thread replies and the re-fetch of files.

/// The audio read model.
pub mod audio;
/// Chat threads, messages, receipts and scheduled messages.
pub mod chat;
/// Commands to command-api as a platform component.
pub mod command_client;
/// Process managers of due work (webhooks, transcriptions).
pub mod due;
/// Side-effect workers (realtime).
pub mod effects;
/// `/health/live` and `/health/ready` (on `PROJECTOR_PORT`).
pub mod health;
/// Admin users and their login history.
pub mod identity;
/// Catalogs and payments.
pub mod payments;
/// Projection contract and exactly-once application.
pub mod projection;
/// Rebuild from the event store.
pub mod rebuild;
/// Delivers scheduled messages when due.
pub mod scheduler;
/// The calls read model.
pub mod telephony;
/// The tenants read model.
pub mod tenants;
/// The webhooks read model.
pub mod webhooks;
/// The WhatsApp read models.
pub mod whatsapp;

/// Durable consumers.
pub mod worker;

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
    /// Base URL of Soketi's HTTP API (e.g. `http://127.0.0.1:6001`); realtime is off without it.
    #[arg(long, env = "SOKETI_URL", global = true)]
    pub soketi_url: Option<String>,
    /// Pusher app id of the Soketi app.
    #[arg(long, env = "SOKETI_APP_ID", global = true)]
    pub soketi_app_id: Option<String>,
    /// Pusher app key of the Soketi app.
    #[arg(long, env = "SOKETI_APP_KEY", global = true)]
    pub soketi_app_key: Option<String>,
    /// Accept secrets that are empty, short or a published default (development only;
    /// `scripts/up` sets it). Without it the service refuses to start with one.
    #[arg(long, env = "ALLOW_DEV_SECRETS", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub allow_dev_secrets: bool,
    /// Pusher app secret of the Soketi app (signs HTTP API requests).
    #[arg(long, env = "SOKETI_APP_SECRET", global = true, hide_env_values = true)]
    pub soketi_app_secret: Option<String>,
    /// First token of the core NATS subjects realtime events are fanned out on (for SSE).
    #[arg(long, env = "REALTIME_SUBJECT_PREFIX", global = true, default_value = events::realtime::DEFAULT_SUBJECT_PREFIX)]
    pub realtime_subject_prefix: String,
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
    /// Base URL of the WhatsApp Cloud API (the Graph API).
    #[arg(
        long,
        env = "WHATSAPP_API_URL",
        global = true,
        default_value = "https://graph.facebook.com"
    )]
    pub whatsapp_api_url: String,
    /// Graph API version the Cloud API is called with.
    #[arg(
        long,
        env = "WHATSAPP_API_VERSION",
        global = true,
        default_value = "v21.0"
    )]
    pub whatsapp_api_version: String,
    /// JetStream stream of bridge sessions' sends.
    #[arg(
        long,
        env = "WHATSAPP_BRIDGE_STREAM",
        global = true,
        default_value = "WHATSAPP_BRIDGE"
    )]
    pub whatsapp_bridge_stream: String,
    /// Subject prefix of bridge sessions' sends: `{prefix}.{session_id}.send`.
    #[arg(
        long,
        env = "WHATSAPP_BRIDGE_SUBJECT_PREFIX",
        global = true,
        default_value = "whatsapp.bridge"
    )]
    pub whatsapp_bridge_subject_prefix: String,
    /// Key provider credentials are sealed with (the same as command-api's); derived from
    /// the token secret when unset.
    #[arg(long, env = "CREDENTIALS_KEY", global = true, hide_env_values = true)]
    pub credentials_key: Option<String>,
    /// Port of the projector's health endpoints (`/health/live`, `/health/ready`: PostgreSQL
    /// answers and NATS is connected), on `HOST`; none without it.
    #[arg(long, env = "PROJECTOR_PORT", global = true)]
    pub port: Option<u16>,
    /// Address the health endpoints listen on.
    #[arg(long, env = "HOST", global = true, default_value = "0.0.0.0")]
    pub host: std::net::IpAddr,
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

/// Every projection this process runs: the read models and the side-effect workers (realtime
/// sends to Soketi when its URL and app are set, and fans out on `nats` for SSE).
pub fn projections(
    config: &Config,
    nats: Option<async_nats::Client>,
    pool: Option<PgPool>,
) -> Vec<Arc<dyn Projection>> {
    let mut all: Vec<Arc<dyn Projection>> = vec![
        Arc::new(tenants::TenantsProjection),
        Arc::new(identity::AdminUsersProjection),
        Arc::new(chat::ChatProjection),
        Arc::new(webhooks::WebhooksProjection),
        Arc::new(payments::CatalogProjection),
        Arc::new(payments::PaymentsProjection),
        Arc::new(audio::AudioProjection),
        Arc::new(telephony::CallsProjection),
        Arc::new(whatsapp::WhatsAppSessionsProjection),
        Arc::new(whatsapp::WhatsAppProjection),
    ];
    if let Some(reassignment) = reassignment(config, pool.as_ref()) {
        all.push(reassignment);
    }
    if let (Some(secret), Some(pool)) = (config.auth_secret(), &pool) {
        all.push(Arc::new(effects::references::PaymentReferences::new(
            pool.clone(),
            command_client::CommandClient::new(
                &config.command_api_url,
                events::access::TokenKeys::new(secret),
                "payment-references",
            ),
        )));
        all.push(Arc::new(whatsapp::media::MediaRefetch::new(
            pool.clone(),
            command_client::CommandClient::new(
                &config.command_api_url,
                events::access::TokenKeys::new(secret),
                "whatsapp-media-refetch",
            ),
        )));
    }
    if let Some(secret) = config.auth_secret() {
        all.push(Arc::new(whatsapp::outbox::WhatsAppOutbox::new(
            pool.clone(),
            command_client::CommandClient::new(
                &config.command_api_url,
                events::access::TokenKeys::new(secret),
                "whatsapp-outbox",
            ),
        )));
    }
    let realtime = || {
        effects::realtime::Realtime::new(
            config.soketi_app(),
            pool.clone(),
            nats.clone(),
            config.realtime_subject_prefix.clone(),
        )
    };
    all.push(Arc::new(realtime()));
    all.push(Arc::new(realtime().for_whatsapp()));
    if let (Some(app), Some(pool)) = (config.soketi_app(), pool) {
        all.push(Arc::new(effects::eviction::Eviction::new(app, pool)));
    }
    all
}

/// The reassignment process manager, when command-api can be called (a service token
/// needs the secret).
fn reassignment(
    config: &Config,
    pool: Option<&PgPool>,
) -> Option<Arc<effects::reassignment::Reassignment>> {
    let (secret, pool) = (config.auth_secret()?, pool?);
    Some(Arc::new(effects::reassignment::Reassignment::new(
        pool.clone(),
        command_client::CommandClient::new(
            &config.command_api_url,
            events::access::TokenKeys::new(secret),
            "reassignment",
        ),
    )))
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

    /// The Soketi app, when its URL, id, key and secret are all set.
    pub fn soketi_app(&self) -> Option<effects::realtime::SoketiApp> {
        let set = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        Some(effects::realtime::SoketiApp {
            url: set(&self.soketi_url)?,
            app_id: set(&self.soketi_app_id)?,
            key: set(&self.soketi_app_key)?,
            secret: set(&self.soketi_app_secret)?,
        })
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
    events::access::check_secrets(
        &[
            (
                "NEST_AUTH_SECRET (or NEXTAUTH_SECRET)",
                config.auth_secret(),
            ),
            ("CREDENTIALS_KEY", config.credentials_key.as_deref()),
            ("SOKETI_APP_SECRET", config.soketi_app_secret.as_deref()),
        ],
        config.allow_dev_secrets,
    )
    .map_err(Error::Config)?;
    let nats_url = events::bus::NatsUrl::parse(&config.nats_url);
    nats_url
        .check(config.allow_dev_secrets)
        .map_err(Error::Config)?;
    let pool = config.pool().await?;
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
    for projection in projections(&config, Some(client), Some(pool.clone())) {
        let (pool, js, config) = (pool.clone(), js.clone(), config.clone());
        tasks.spawn(async move { supervise(pool, js, config, projection).await });
    }
    match config.auth_secret() {
        Some(secret) => {
            let scheduler = scheduler::Scheduler::new(
                pool.clone(),
                config.command_api_url.clone(),
                events::access::TokenKeys::new(secret),
                Arc::new(events::clock::SystemClock),
            );
            tasks.spawn(async move { scheduler.run().await });
            if let Some(reassignment) = reassignment(&config, Some(&pool)) {
                tasks.spawn(reassignment.run_sweeps());
            }
            let sender = whatsapp::sender::Sender::new(
                pool.clone(),
                &config.command_api_url,
                events::access::TokenKeys::new(secret),
                whatsapp::sender::CloudApi {
                    url: config.whatsapp_api_url.clone(),
                    version: config.whatsapp_api_version.clone(),
                },
                config.sealing_key(secret),
                Arc::new(events::clock::SystemClock),
            );
            // Bridge sessions' sends go to the bridge stream, made sure of in the background
            // (the bus may be down now): until it exists their sends fail and are retried.
            let sender = sender.with_bridge(whatsapp::sender::Bridge {
                js: js.clone(),
                prefix: config.whatsapp_bridge_subject_prefix.clone(),
            });
            let (bridge_js, bridge_stream, bridge_prefix) = (
                js.clone(),
                config.whatsapp_bridge_stream.clone(),
                config.whatsapp_bridge_subject_prefix.clone(),
            );
            tasks.spawn(async move {
                let mut backoff = Duration::from_millis(200);
                while let Err(e) =
                    whatsapp::sender::ensure_bridge_stream(&bridge_js, &bridge_stream, &bridge_prefix).await
                {
                    tracing::warn!(error = %e, "no bridge stream yet: bridge sessions' sends are retried");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                // Done: this task's work is over, but ending would end the projector.
                std::future::pending::<()>().await
            });
            tasks.spawn(async move { sender.run().await });
            for processor in [
                due::DueProcessor::webhooks,
                due::DueProcessor::transcriptions,
            ] {
                let processor = processor(
                    pool.clone(),
                    &config.command_api_url,
                    events::access::TokenKeys::new(secret),
                    Arc::new(events::clock::SystemClock),
                );
                tasks.spawn(async move { processor.run().await });
            }
        }
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
        for projection in projections(&config, None, Some(pool)) {
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
