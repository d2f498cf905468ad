//! query-api: the read side of the platform.
//!
//! # Layout
//! - [`config`]: every setting (flags and environment); each context's own in its folder.
//! - [`http`]: shared query plumbing (keyset paging, read-your-writes, scopes, filters).
//! - [`context`]: what a bounded context contributes (settings, state, routes); the contexts
//!   themselves are listed once, in `contexts!` below.
//!
//! It only reads: read models written by the projector, and the event store for histories
//! (audits, payment timelines, webhook histories).

/// Settings.
pub mod config;
/// What a bounded context contributes, and the list that names them all.
pub mod context;
/// Shared query plumbing: paging, read-your-writes, scopes, filters.
pub mod http;

/// Audio files and their transcripts.
pub mod audio;
/// An aggregate's event history for auditors.
pub mod audit;
/// Threads, message history, unread counts, scheduled messages.
pub mod chat;
/// The dev inbox of captured outbound messages.
pub mod dev;
/// Admin users of a tenant and their login history.
pub mod identity;
/// Payments, the revenue report, tenants' catalogs.
pub mod payments;
/// A data subject's export (docs/privacy.md).
pub mod privacy;
/// The Pusher channel authorizer, client configuration and `/v1/stream`.
pub mod realtime;
/// The calls of tenants' numbers.
pub mod telephony;
/// Tenant list and detail.
pub mod tenants;
/// Received provider webhooks and the refused ones.
pub mod webhooks;
/// WhatsApp sessions, messages and contacts.
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
    realtime,
    audit,
    privacy,
    dev,
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, State};
use axum::response::{IntoResponse, Response};
use axum::{middleware, Router};
use events::access::TokenKeys;
use events::http::{problem, request, Metrics, Problem};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::config::Config;

/// The migrations this build reads through (applied by command-api or the projector; this
/// service only waits for them).
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Read models and the event store.
    pub pool: PgPool,
    /// Opens the personal fields of events read from the store (docs/privacy.md).
    pub keyring: events::keyring::Keyring,
    /// Bearer-token verification.
    pub tokens: TokenKeys,
    /// Revoked sessions, deactivated users, changed roles, suspended tenants.
    pub access: events::http::Access,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Longest wait for read-your-writes.
    pub read_wait: Duration,
    /// The blob store (files of WhatsApp messages).
    pub blobs: Arc<dyn object_store::ObjectStore>,
    /// Signs and checks short-lived file URLs.
    pub file_urls: whatsapp::FileUrls,
    /// The pseudonymous ids of phone users, as command-api derives them: the phone user a
    /// WhatsApp contact's number is, without reading the command side's `phone_users`.
    pub phone_keys: events::identity::PhoneKeys,
    /// Every bounded context's state.
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
    #[error("{0}")]
    Config(&'static str),
    /// PostgreSQL is unreachable.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The listener could not bind.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A secret is empty, short or a published default.
    #[error("{0}")]
    WeakSecret(String),
    /// `PRIVACY_MASTER_KEYS` does not parse.
    #[error("{0}")]
    MasterKeys(String),
}

/// The token secret, once every secret and the NATS URL passed the checks for weak ones.
fn checked_secret(config: &Config) -> Result<&str, StartError> {
    let secret = config.auth_secret().ok_or(StartError::Config(
        "set NEST_AUTH_SECRET (or NEXTAUTH_SECRET)",
    ))?;
    let masters = events::personal::master_secrets(config.privacy_master_keys.as_deref());
    events::access::check_secrets(
        &[
            ("NEST_AUTH_SECRET (or NEXTAUTH_SECRET)", Some(secret)),
            ("CREDENTIALS_KEY", config.credentials_key.as_deref()),
        ]
        .into_iter()
        .chain(Contexts::secrets(&config.ctx))
        .chain(
            masters
                .iter()
                .map(|(name, secret)| (name.as_str(), Some(*secret))),
        )
        .collect::<Vec<_>>(),
        config.allow_dev_secrets,
    )
    .map_err(StartError::WeakSecret)?;
    events::bus::NatsUrl::parse(&config.nats_url)
        .check(config.allow_dev_secrets)
        .map_err(StartError::WeakSecret)?;
    Ok(secret)
}

/// Every route, with the shared middleware.
pub fn router(state: AppState) -> Router {
    http::openapi::routes()
        .fallback(problem::route_not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(middleware::from_fn(http::conditional::respond))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            request::track,
        ))
        .with_state(state)
}

/// A built, bound, not yet serving query-api.
pub struct Application {
    /// Bound listener.
    listener: tokio::net::TcpListener,
    /// The router.
    router: Router,
    /// The contexts, told when the server shuts down (streams end).
    ctx: Arc<Contexts>,
    /// Header, idle and body timeouts.
    timeouts: events::http::Timeouts,
}

impl Application {
    /// Connects and binds. Migrations belong to the writers; this waits for none.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let url = config
            .database_url()
            .ok_or(StartError::Config("set DATABASE_URL (or NEON_PG_CONN)"))?;
        let secret = checked_secret(&config)?;
        // query-api does not migrate: it waits for command-api (or the projector) to bring
        // the schema to the migrations it was built with, rather than fail on a missing table.
        events::schema::wait_for(url, &MIGRATIONS, std::time::Duration::from_secs(120)).await?;
        let pool = PgPoolOptions::new()
            .max_connections(config.db_max_connections)
            .connect(url)
            .await?;
        std::fs::create_dir_all(&config.blob_dir)?;
        let blobs: Arc<dyn object_store::ObjectStore> = Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(&config.blob_dir)
                .map_err(|e| std::io::Error::other(e.to_string()))?,
        );
        let keyring = events::keyring::Keyring::new(
            pool.clone(),
            events::personal::MasterKeys::from_settings(
                config.privacy_master_keys.as_deref(),
                config.credentials_key.as_deref(),
                Some(secret),
            )
            .map_err(StartError::MasterKeys)?,
        );
        keyring.follow_erasures();
        let access = events::http::Access::follow(pool.clone(), None).await?;
        let ctx = Arc::new(
            Contexts::build(&context::Setup {
                config: &config,
                pool: &pool,
            })
            .await?,
        );
        let state = AppState {
            access,
            blobs,
            file_urls: whatsapp::FileUrls::new(secret),
            phone_keys: events::identity::PhoneKeys::new(secret),
            keyring,
            pool,
            tokens: TokenKeys::new(secret),
            metrics: Arc::new(Metrics::default()),
            read_wait: Duration::from_millis(config.read_wait_ms),
            ctx: ctx.clone(),
        };
        let listener = tokio::net::TcpListener::bind((config.host, config.port)).await?;
        let access_for_limits = state.access.clone();
        Ok(Self {
            listener,
            router: router(state).layer(axum::middleware::from_fn_with_state(
                config.http.in_flight(
                    TokenKeys::new(secret),
                    access_for_limits,
                    &["/v1/stream"],
                    // Behind proxies, query-api sees them, not the clients: its anonymous
                    // routes (health, configuration) are cheap.
                    Arc::new(|peer, _| peer.ip().to_string()),
                ),
                events::http::inflight::limit,
            )),
            ctx,
            timeouts: config.http.timeouts(),
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let ctx = self.ctx;
        let shutdown = async move {
            shutdown.await;
            ctx.shutting_down();
        };
        events::http::serve(self.listener, self.router, shutdown, self.timeouts).await
    }
}

/// Readiness.
///
/// Ready when PostgreSQL answers. query-api depends on nothing else: it reads read models
/// and the store, and keeps serving (possibly stale) reads while NATS is down.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "operations",
    responses((status = 200, description = "Ready.", body = Readiness))
)]
pub(crate) async fn ready(State(state): State<AppState>) -> Result<Response, Problem> {
    tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&state.pool),
    )
    .await
    .map_err(|_| Problem::unavailable(&"PostgreSQL did not answer in 2 s"))?
    .map_err(|e| Problem::unavailable(&e))?;
    if !state.access.is_live() {
        return Err(Problem::unavailable(&"token revocations are not followed"));
    }
    Ok(axum::Json(Readiness {
        status: "ready",
        postgres: "up",
    })
    .into_response())
}

/// The answer of `GET /health/ready`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Readiness {
    /// `ready`.
    status: &'static str,
    /// `up`.
    postgres: &'static str,
}

/// Prometheus metrics.
///
/// Text exposition format: requests by route and status.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Metrics.", body = String, content_type = "text/plain"))
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.as_ref().into_response()
}
