//! command-api: the write side of the platform.
//!
//! # Layout
//! - [`config`]: every setting (flags and environment).
//! - [`http`]: the router, health, metrics, OpenAPI, error mapping, `Idempotency-Key`.
//! - [`store`]: runs a command on an aggregate and commits its events (`If-Match`, retries).
//! - [`group_commit`]: appends the events of commands decided together in one transaction.
//! - [`snapshots`]: checks every snapshot against a replay of its events.
//! - [`relay`]: publishes committed events to NATS JetStream, none lost or skipped.
//! - [`tenants`]: the tenants bounded context (aggregate, commands, values, routes).
//! - [`chat`]: threads, messages, read receipts and scheduled messages.
//! - [`payments`]: catalogs (products, taxes) and payments, with Lyra payment links.
//! - [`audio`]: audio uploads and their AssemblyAI transcripts.
//! - [`telephony`]: tenants' phone numbers, and the SMS and calls SignalWire reports.
//! - [`webhooks`]: provider webhooks: verified, de-duplicated, appended, then processed.
//! - [`whatsapp`]: WhatsApp sessions, inbound deliveries and outbound messages.
//!
//! [`Application::build`] binds from config, so tests run on port 0 with their own
//! database and stream.

/// Outbound messages (capture sink).
pub mod comms;
/// Settings.
pub mod config;
/// What a bounded context contributes, and the list that names them all.
pub mod context;
/// Group commit: one transaction, one insert and one flush for many commands' events.
pub mod group_commit;
/// HTTP surface.
pub mod http;
/// Files fetched from providers into the blob store.
pub mod media;
/// Events → NATS.
pub mod relay;
/// Snapshot checks.
pub mod snapshots;
/// Command execution.
pub mod store;
/// Value objects shared by contexts.
pub mod values;

/// Audio files and their transcripts.
pub mod audio;
/// Chat: threads, messages, receipts, scheduled messages.
pub mod chat;
/// Identity: admin users, logins, sessions, phone sign-in.
pub mod identity;
/// Payments: catalogs and payments.
pub mod payments;
/// Privacy: data subjects and their erasure.
pub mod privacy;
/// Telephony: numbers, SMS, calls.
pub mod telephony;
/// Tenants: signup, approval, lifecycle, preferences, logo, departments.
pub mod tenants;
/// Provider webhooks: ingestion and processing.
pub mod webhooks;
/// WhatsApp: sessions, conversations, deliveries.
pub mod whatsapp;

// The bounded contexts, registered: each is a module declared above (where rustfmt reaches
// it) and named here once, in the order they are built (docs/adding-a-context.md).
context::contexts! {
    tenants,
    identity,
    chat,
    payments,
    webhooks,
    telephony,
    audio,
    whatsapp,
    privacy,
}

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::FromRef;
use events::access::TokenKeys;
use events::http::Metrics;
use object_store::ObjectStore;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::config::Config;
use crate::identity::aggregate::AdminUser;
use crate::identity::services::PgIdentity;
use crate::store::CommandBus;

/// The migrations of the whole platform (event store, command side, read models).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Event store and command-side tables.
    pub pool: PgPool,
    /// The same database through connections that commit without waiting for the WAL
    /// flush (`synchronous_commit = off`): for writes whose loss in a crash is harmless
    /// (the `Idempotency-Key` records; see [`http::idempotency`]).
    pub relaxed_pool: PgPool,
    /// NATS connection (readiness).
    pub nats: async_nats::Client,
    /// Whether this process's relay gets events out (readiness).
    pub relay_health: Arc<relay::Health>,
    /// Bearer-token verification.
    pub tokens: TokenKeys,
    /// Revoked sessions, deactivated users, changed roles, suspended tenants.
    pub access: events::http::Access,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The blob store (logos, media, audio, attachments).
    pub blobs: Arc<dyn ObjectStore>,
    /// Trusted proxies appending to `X-Forwarded-For` (0: the header is ignored).
    pub proxy_hops: usize,
    /// The clock commands are stamped with (time rules of chat).
    pub clock: Arc<dyn events::clock::Clock>,
    /// The public base URL providers call back (`BACKEND_URL`).
    pub backend_url: Option<String>,
    /// Seals and opens provider credentials.
    pub sealing: events::sealed::SealingKey,
    /// The data keys of personal data: seals, opens and erases (docs/privacy.md).
    pub keyring: events::keyring::Keyring,
    /// Every bounded context's state (command buses, clients, limits).
    pub ctx: Arc<Contexts>,
}

impl FromRef<AppState> for TokenKeys {
    fn from_ref(state: &AppState) -> Self {
        state.tokens.clone()
    }
}

impl FromRef<AppState> for events::http::Access {
    fn from_ref(state: &AppState) -> Self {
        state.access.clone()
    }
}

/// Why start-up failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is missing.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// PostgreSQL is unreachable.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// NATS is unreachable or refused the stream.
    #[error("nats: {0}")]
    Nats(String),
    /// The listener could not bind, or the blob folder could not be made.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The blob store could not be opened.
    #[error("blob store: {0}")]
    Blobs(#[from] object_store::Error),
    /// The bootstrap super admin could not be created.
    #[error("bootstrap admin: {0}")]
    Bootstrap(String),
    /// The store's transform stopped (`privacy seal-store`).
    #[error("sealing the store: {0}")]
    Transform(#[from] privacy::store::TransformError),
}

/// A built, bound, not yet serving command-api.
pub struct Application {
    /// Bound listener.
    listener: tokio::net::TcpListener,
    /// The router.
    router: axum::Router,
    /// The relay, if this process runs one.
    relay: Option<(relay::Relay, Arc<Notify>)>,
    /// Header, idle and body timeouts.
    timeouts: events::http::Timeouts,
}

impl Application {
    /// Connects, migrates, ensures the stream and binds.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        Self::build_with_clock(config, Arc::new(events::clock::SystemClock)).await
    }

    /// Like [`Application::build`], with the clock commands are stamped with (tests set it).
    pub async fn build_with_clock(
        config: Config,
        clock: Arc<dyn events::clock::Clock>,
    ) -> Result<Self, StartError> {
        let database_url = config.database_url()?;
        config.check_secrets()?;
        let options = PgConnectOptions::from_str(database_url)?.options([
            (
                "statement_timeout",
                format!("{}ms", config.db_statement_timeout_ms),
            ),
            ("lock_timeout", format!("{}ms", config.db_lock_timeout_ms)),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(config.db_max_connections)
            .connect_with(options)
            .await?;
        // Migrations on a connection of their own: they may take longer than any command's
        // statement is allowed to.
        events::schema::migrate(database_url, &MIGRATOR).await?;
        let (nats, js) = connect_bus(&config).await?;
        std::fs::create_dir_all(&config.blob_dir)?;
        let blobs: Arc<dyn ObjectStore> = Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(&config.blob_dir)?,
        );
        let metrics = Arc::new(Metrics::default());
        let committed = Arc::new(Notify::new());
        let appends = group_commit::GroupCommit::start(&pool, metrics.clone());
        let keyring = events::keyring::Keyring::new(pool.clone(), config.master_keys()?);
        let ctx = Contexts::build(&context::Setup {
            config: &config,
            pool: &pool,
            metrics: &metrics,
            committed: &committed,
            appends: &appends,
            keyring: &keyring,
        })
        .await?;
        let relaxed_pool = PgPoolOptions::new()
            .max_connections(config.db_max_connections)
            .connect_lazy_with(
                (*pool.connect_options())
                    .clone()
                    .options([("synchronous_commit", "off")]),
            );
        // Ended sessions are kept until every token they issued has expired (plus a day).
        let access = events::http::Access::follow(
            pool.clone(),
            Some(config.token_ttl()? + std::time::Duration::from_secs(86_400)),
        )
        .await?;
        let relay_health = Arc::new(relay::Health::default());
        let state = AppState {
            pool: pool.clone(),
            relaxed_pool,
            nats,
            relay_health: relay_health.clone(),
            access,
            tokens: TokenKeys::new(config.auth_secret()?),
            metrics: metrics.clone(),
            blobs,
            proxy_hops: config.proxy_hops(),
            clock,
            backend_url: config.public_base().map(str::to_owned),
            sealing: config.sealing_key()?,
            keyring: keyring.clone(),
            ctx: Arc::new(ctx),
        };
        let relay = relay_of(&config, &pool, js, metrics, relay_health, committed);
        keyring.follow_erasures();
        tokio::spawn(reseal_data_keys(keyring));
        tokio::spawn(expire_old_records(pool, config.retention_days));
        let listener = tokio::net::TcpListener::bind((config.host, config.port)).await?;
        Ok(Self {
            listener,
            router: served_router(&config, state)?,
            relay,
            timeouts: config.http.timeouts(),
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes; the relay stops with it.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let relay = self
            .relay
            .map(|(relay, wake)| tokio::spawn(relay.run(wake)));
        let outcome =
            events::http::serve(self.listener, self.router, shutdown, self.timeouts).await;
        if let Some(relay) = relay {
            relay.abort();
        }
        outcome
    }
}

/// Connects to NATS in the background. The bus may be down: commands are taken all the same
/// (the store is the source of truth), readiness says NATS is not connected, and the relay
/// creates the stream and publishes what waited once it is up.
async fn connect_bus(
    config: &Config,
) -> Result<(async_nats::Client, async_nats::jetstream::Context), StartError> {
    let nats = events::bus::NatsUrl::parse(&config.nats_url)
        .connect_in_background()
        .await
        .map_err(|e| StartError::Nats(e.to_string()))?;
    let js = async_nats::jetstream::new(nats.clone());
    // When the bus answers at once, the stream exists before the API listens, as it
    // always did; when it does not, the relay makes sure of it once it does.
    let up = tokio::time::timeout(std::time::Duration::from_secs(3), async {
        while nats.connection_state() != async_nats::connection::State::Connected {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .is_ok();
    if up {
        let ensured = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            relay::ensure_stream(&js, &config.nats_stream, &config.nats_subject_prefix),
        )
        .await;
        if !matches!(ensured, Ok(Ok(()))) {
            tracing::warn!("the event stream could not be set up yet; the relay will");
        }
    } else {
        tracing::warn!("NATS is not reachable yet: taking commands, publishing when it is");
    }
    Ok((nats, js))
}

/// The relay, when this process runs it; otherwise a task that tells the active relay,
/// elsewhere, of this process's commits.
fn relay_of(
    config: &Config,
    pool: &PgPool,
    js: async_nats::jetstream::Context,
    metrics: Arc<Metrics>,
    health: Arc<relay::Health>,
    committed: Arc<Notify>,
) -> Option<(relay::Relay, Arc<Notify>)> {
    if !config.relay_enabled {
        // The active relay runs elsewhere: tell it of this process's commits.
        let (pool, committed) = (pool.clone(), committed.clone());
        tokio::spawn(async move {
            loop {
                if let Err(e) = relay::forward_commits(pool.clone(), &committed).await {
                    tracing::warn!(error = %e, "could not notify the relay of commits");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        });
    }
    config.relay_enabled.then(|| {
        (
            relay::Relay::new(
                pool.clone(),
                js,
                config.nats_stream.clone(),
                config.nats_subject_prefix.clone(),
                config.relay_batch,
                metrics,
            )
            .with_idle_poll(std::time::Duration::from_millis(config.relay_poll_ms))
            .with_health(health),
            committed,
        )
    })
}

/// Every route with the shared middleware, and the in-flight limits per token and address.
fn served_router(config: &Config, state: AppState) -> Result<axum::Router, StartError> {
    let access_for_limits = state.access.clone();
    let proxy_hops = state.proxy_hops;
    let state_metrics = state.metrics.clone();
    Ok(http::router(
        state,
        config.max_body_bytes,
        Arc::new(http::concurrency::RouteLimits::new(
            config.route_concurrency.unwrap_or_else(|| {
                // Room for the other routes and for the background work that needs a
                // connection now and then (revocation heartbeats, purges).
                let pool = config.db_max_connections as usize;
                (pool * 3 / 4).min(pool.saturating_sub(4)).max(1)
            }),
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis(config.route_queue_target_ms.max(1)),
        )),
        http::concurrency::Admission::new(
            config
                .commands_in_flight
                .unwrap_or(config.db_max_connections as usize * 2),
            state_metrics,
        ),
    )
    .layer(axum::middleware::from_fn_with_state(
        config.http.in_flight(
            TokenKeys::new(config.auth_secret()?),
            access_for_limits,
            &[],
            Arc::new(move |peer, headers| {
                http::limits::client_ip_behind(proxy_hops, peer, headers)
            }),
        ),
        events::http::inflight::limit,
    )))
}

/// `command-api admin create`: connects, migrates, and creates the super admin.
pub async fn create_super_admin(
    config: &Config,
    email: &str,
    password: &str,
) -> Result<identity::bootstrap::Bootstrapped, StartError> {
    events::schema::migrate(config.database_url()?, &MIGRATOR).await?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(config.database_url()?)
        .await?;
    let admins = CommandBus::<AdminUser>::new(
        pool.clone(),
        Arc::new(PgIdentity {
            pool: pool.clone(),
            keyring: events::keyring::Keyring::new(pool.clone(), config.master_keys()?),
            metrics: Arc::new(Metrics::default()),
        }),
        config.snapshot_every,
        Arc::new(Notify::new()),
    );
    identity::bootstrap::ensure_super_admin(&pool, &admins, email, password)
        .await
        .map_err(StartError::Bootstrap)
}

/// `command-api snapshots verify`: connects and audits every snapshot.
pub async fn verify_snapshots(config: &Config) -> Result<snapshots::Audit, StartError> {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(config.database_url()?)
        .await?;
    Ok(snapshots::audit(&pool).await?)
}

/// Runs the one-time transform that seals the personal fields the store holds in clear
/// (`command-api privacy seal-store`, docs/privacy.md), `batch` events per transaction.
pub async fn seal_store(
    config: &Config,
    batch: i64,
) -> Result<privacy::store::Transformed, StartError> {
    // The transform needs migration 0056 (the trigger's one exception).
    events::schema::migrate(config.database_url()?, &MIGRATOR).await?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(config.database_url()?)
        .await?;
    let keyring = events::keyring::Keyring::new(pool.clone(), config.master_keys()?);
    Ok(privacy::store::seal_store(&pool, &keyring, batch.max(1)).await?)
}

/// Re-seals, under the current master key, every data key sealed under an older one (a
/// master-key rotation, docs/privacy.md), a few hundred at a time; done once none is left.
async fn reseal_data_keys(keyring: events::keyring::Keyring) {
    let mut total = 0;
    loop {
        match keyring.reseal(500).await {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) => {
                tracing::warn!(error = %e, "could not re-seal data keys under the current master key");
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            }
        }
    }
    if total > 0 {
        tracing::info!(
            keys = total,
            master_key = keyring.masters().current(),
            "data keys re-sealed under the current master key"
        );
    }
}

/// Replay records are kept a day, like the providers whose retries they absorb; raw
/// provider data with personal data in it, `retention_days`.
async fn expire_old_records(pool: PgPool, retention_days: u32) {
    /// Rows deleted per statement: each statement stays well inside the statement timeout
    /// however much piled up.
    const CHUNK: u64 = 5_000;
    loop {
        // Keys are kept a day; so are staged passwords, e-mails and sessions whose command never
        // committed (migration 0024: a committed one is taken by its event). An expired key
        // is already a new key when claimed (`http::idempotency`): the purge only keeps the
        // table small.
        let lifetime = http::idempotency::KEY_LIFETIME;
        for (what, table, condition) in [
            (
                "idempotency keys",
                "idempotency_keys",
                format!("created_at < now() - interval '{lifetime}'"),
            ),
            (
                "staged password resets",
                "admin_password_reset_staging",
                "staged_at < now() - interval '24 hours'".to_owned(),
            ),
            (
                "staged passwords",
                "admin_credential_changes",
                "staged_at < now() - interval '24 hours'".to_owned(),
            ),
            (
                "staged staff e-mails",
                "admin_email_staging",
                "staged_at < now() - interval '24 hours'".to_owned(),
            ),
            (
                "staged sessions",
                "admin_sessions",
                "status = 'pending' AND created_at < now() - interval '24 hours'".to_owned(),
            ),
            (
                "refused webhooks",
                "webhook_rejections",
                format!("received_at < now() - interval '{retention_days} days'"),
            ),
            // A queued message is still to be sent: it stays until it was.
            (
                "captured outbound messages",
                "outbound_messages",
                format!(
                    "status <> 'queued' AND created_at < now() - interval '{retention_days} days'"
                ),
            ),
        ] {
            let statement = format!(
                "DELETE FROM {table} WHERE ctid IN
                   (SELECT ctid FROM {table} WHERE {condition} LIMIT {CHUNK})"
            );
            loop {
                match sqlx::query(&statement).execute(&pool).await {
                    Ok(done) if done.rows_affected() == CHUNK => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not expire {what}");
                        break;
                    }
                }
            }
        }
        // Refused webhooks are replayable for a week; then their sealed request is erased.
        if let Err(e) = sqlx::query(
            "UPDATE webhook_rejections SET sealed_request = NULL
              WHERE sealed_request IS NOT NULL AND replayable_until < now()",
        )
        .execute(&pool)
        .await
        {
            tracing::warn!(error = %e, "could not erase expired rejected webhooks");
        }
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}
