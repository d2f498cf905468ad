//! Every setting, from flags or the environment (`command-api --help` lists them).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Settings of command-api.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "command-api",
    version,
    about = "Validates commands, appends events, relays them to NATS JetStream."
)]
pub struct Config {
    /// PostgreSQL connection string of the event store.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Fallback name for the connection string, kept from the system being replaced.
    #[arg(long, env = "NEON_PG_CONN", hide_env_values = true)]
    pub neon_pg_conn: Option<String>,
    /// Maximum PostgreSQL connections of this process.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Longest a statement of this process may run (ms) before PostgreSQL cancels it (503,
    /// retry): a stuck statement cannot hold a connection for long.
    #[arg(long, env = "DB_STATEMENT_TIMEOUT_MS", default_value_t = 10_000)]
    pub db_statement_timeout_ms: u64,
    /// Longest a statement may wait for a lock (ms) before it gives up (503, retry): a table
    /// locked elsewhere cannot make commands queue on it.
    #[arg(long, env = "DB_LOCK_TIMEOUT_MS", default_value_t = 5_000)]
    pub db_lock_timeout_ms: u64,
    /// Requests one route may have in flight at once in this process (default: three
    /// quarters of `DB_MAX_CONNECTIONS`, and at least four connections left over), so one hot
    /// or stuck route cannot take every database connection; beyond, requests wait up to 10 s for their turn, then 503
    /// `route_busy` with `Retry-After`.
    #[arg(long, env = "ROUTE_CONCURRENCY")]
    pub route_concurrency: Option<usize>,
    /// NATS server URL.
    /// NATS server URL, with this service's user (`nats://command-api:password@host:4222`).
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: String,
    /// Timeouts and requests in flight per token.
    #[command(flatten)]
    pub http: events::http::HttpLimits,
    /// JetStream stream holding every committed event.
    #[arg(long, env = "NATS_STREAM", default_value = events::subject::DEFAULT_STREAM)]
    pub nats_stream: String,
    /// First token of every event subject (`{prefix}.{tenant}.{aggregate}.{event}`).
    #[arg(long, env = "NATS_SUBJECT_PREFIX", default_value = events::subject::DEFAULT_PREFIX)]
    pub nats_subject_prefix: String,
    /// HS256 secret of bearer tokens.
    #[arg(long, env = "NEST_AUTH_SECRET", hide_env_values = true)]
    pub nest_auth_secret: Option<String>,
    /// Fallback name for the token secret.
    #[arg(long, env = "NEXTAUTH_SECRET", hide_env_values = true)]
    pub nextauth_secret: Option<String>,
    /// Lifetime of access tokens (`1h`, `15m`, `3600`, …).
    #[arg(long, env = "AUTH_TOKEN_EXPIRES_IN", default_value = "1h")]
    pub auth_token_expires_in: String,
    /// Lifetime of refresh tokens.
    #[arg(long, env = "REFRESH_TOKEN_EXPIRES_IN", default_value = "30d")]
    pub refresh_token_expires_in: String,
    /// Sessions one admin user may hold at once: a new sign-in beyond it ends the user's
    /// least recently used session.
    #[arg(long, env = "SESSIONS_PER_USER", default_value_t = 20)]
    pub sessions_per_user: i64,
    /// On start, create this super admin if no admin user has this e-mail.
    #[arg(long, env = "ADMIN_BOOTSTRAP_EMAIL")]
    pub admin_bootstrap_email: Option<String>,
    /// Password of the bootstrap super admin.
    #[arg(long, env = "ADMIN_BOOTSTRAP_PASSWORD", hide_env_values = true)]
    pub admin_bootstrap_password: Option<String>,
    /// Codes a client IP may request per hour (`/auth/phone/request`).
    #[arg(long, env = "OTP_REQUESTS_PER_IP_PER_HOUR", default_value_t = 20)]
    pub otp_requests_per_ip_per_hour: i64,
    /// Audio files one user (staff member or chatbot user) may upload per hour.
    #[arg(long, env = "AUDIO_UPLOADS_PER_USER_PER_HOUR", default_value_t = 30)]
    pub audio_uploads_per_user_per_hour: i64,
    /// Mebibytes of audio one user may upload per day (the file that crosses it is kept;
    /// the next is refused until the day ends).
    #[arg(
        long,
        env = "AUDIO_UPLOAD_MIB_PER_USER_PER_DAY",
        default_value_t = 1024
    )]
    pub audio_upload_mib_per_user_per_day: i64,
    /// Refused admin logins a client IP may have per hour (`/auth/admin/login`); beyond, its
    /// logins answer 429 until the hour ends, and add nothing to anyone's history.
    #[arg(long, env = "LOGIN_FAILURES_PER_IP_PER_HOUR", default_value_t = 100)]
    pub login_failures_per_ip_per_hour: i64,
    /// Anonymous tenant sign-ups a client IP may make per hour (`/v1/tenants/signup`).
    #[arg(long, env = "SIGNUPS_PER_IP_PER_HOUR", default_value_t = 5)]
    pub signups_per_ip_per_hour: i64,
    /// Reverse proxies in front of command-api that append to `X-Forwarded-For` (0: the
    /// header is ignored and the client IP is the socket's peer). With n, the client IP is
    /// the n-th address from the right: the one the outermost trusted proxy saw; addresses
    /// further left are the client's to choose.
    #[arg(long, env = "TRUSTED_PROXY_HOPS", default_value_t = 0)]
    pub trusted_proxy_hops: usize,
    /// Older form of `TRUSTED_PROXY_HOPS=1` (one proxy), used when that is 0.
    #[arg(long, env = "TRUST_FORWARDED_FOR", default_value_t = false, action = clap::ArgAction::Set)]
    pub trust_forwarded_for: bool,
    /// The platform's public base URL, for providers' callbacks (Lyra's `ipnTargetUrl` is
    /// `{BACKEND_URL}/api/webhooks/lyra` when set).
    #[arg(long, env = "BACKEND_URL")]
    pub backend_url: Option<String>,
    /// Base URL of Lyra's REST API (PayZen: `https://api.payzen.eu`).
    #[arg(long, env = "LYRA_API_URL", default_value = "https://api.lyra.com")]
    pub lyra_api_url: String,
    /// Lyra shop id (payment links are off without it and the password).
    #[arg(long, env = "LYRA_SHOP_ID")]
    pub lyra_shop_id: Option<String>,
    /// Lyra REST API password: authenticates link creation and keys the IPN's `kr-hash`.
    #[arg(long, env = "LYRA_PASSWORD", hide_env_values = true)]
    pub lyra_password: Option<String>,
    /// Lyra HMAC-SHA-256 key: keys the `kr-hash` of browser returns.
    #[arg(long, env = "LYRA_HMAC_KEY", hide_env_values = true)]
    pub lyra_hmac_key: Option<String>,
    /// Base URL of AssemblyAI's API.
    #[arg(
        long,
        env = "ASSEMBLYAI_API_URL",
        default_value = "https://api.assemblyai.com"
    )]
    pub assemblyai_api_url: String,
    /// AssemblyAI API key (transcripts are off without it and `BACKEND_URL`).
    #[arg(long, env = "ASSEMBLYAI_API_KEY", hide_env_values = true)]
    pub assemblyai_api_key: Option<String>,
    /// The secrets AssemblyAI's webhooks may carry, comma-separated: the first is sent with
    /// each new request, the others (during a rotation) are still accepted from transcripts
    /// requested before. Derived from the token secret when unset.
    #[arg(
        long,
        env = "ASSEMBLYAI_WEBHOOK_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub assemblyai_webhook_secret: Vec<String>,
    /// SignalWire signing keys (the project's signing key; comma-separated during a rotation).
    #[arg(
        long,
        env = "SIGNALWIRE_SIGNING_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub signalwire_signing_key: Vec<String>,
    /// SignalWire project id: with `SIGNALWIRE_API_TOKEN`, the credentials MMS media are
    /// fetched with.
    #[arg(long, env = "SIGNALWIRE_PROJECT_ID")]
    pub signalwire_project_id: Option<String>,
    /// SignalWire API token (see `SIGNALWIRE_PROJECT_ID`).
    #[arg(long, env = "SIGNALWIRE_API_TOKEN", hide_env_values = true)]
    pub signalwire_api_token: Option<String>,
    /// Base URL of the WhatsApp Cloud API (the Graph API).
    #[arg(
        long,
        env = "WHATSAPP_API_URL",
        default_value = "https://graph.facebook.com"
    )]
    pub whatsapp_api_url: String,
    /// Graph API version the Cloud API is called with.
    #[arg(long, env = "WHATSAPP_API_VERSION", default_value = "v21.0")]
    pub whatsapp_api_version: String,
    /// App secrets of the platform's own Meta app(s), comma-separated: deliveries signed by
    /// them are accepted even for numbers no session has (recorded, never lost). Sessions'
    /// own app secrets are always accepted for their numbers.
    #[arg(
        long,
        env = "WHATSAPP_APP_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub whatsapp_app_secret: Vec<String>,
    /// Verify token of the platform's own Meta app (sessions' verify tokens are accepted too).
    #[arg(long, env = "WHATSAPP_VERIFY_TOKEN", hide_env_values = true)]
    pub whatsapp_verify_token: Option<String>,
    /// Accept secrets that are empty, short or a published default (development only;
    /// `scripts/up` sets it). Without it the service refuses to start with one.
    #[arg(long, env = "ALLOW_DEV_SECRETS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_dev_secrets: bool,
    /// Key provider credentials are sealed with (any string; the same in the projector).
    /// Derived from the token secret when unset.
    #[arg(long, env = "CREDENTIALS_KEY", hide_env_values = true)]
    pub credentials_key: Option<String>,
    /// Stripe webhook endpoint secrets (`whsec_…`), comma-separated: several during a rotation.
    #[arg(
        long,
        env = "STRIPE_WEBHOOK_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub stripe_webhook_secret: Vec<String>,
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 3001)]
    pub port: u16,
    /// Run the relay in this process (one instance wins the advisory lock; others stand by).
    #[arg(long, env = "RELAY_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub relay_enabled: bool,
    /// Events the relay reads and publishes per round trip.
    #[arg(long, env = "RELAY_BATCH", default_value_t = 512)]
    pub relay_batch: i64,
    /// Longest wait (ms) between relay reads when no commit wakes it.
    #[arg(long, env = "RELAY_POLL_MS", default_value_t = 100)]
    pub relay_poll_ms: u64,
    /// Take an aggregate snapshot every this many events.
    #[arg(long, env = "SNAPSHOT_EVERY", default_value_t = 100)]
    pub snapshot_every: usize,
    /// Folder of the local blob store (logos, media).
    #[arg(long, env = "BLOB_DIR", default_value = "./data/blobs")]
    pub blob_dir: PathBuf,
    /// Largest JSON body accepted, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve the API (and run the relay).
    Serve,
    /// Manage admin users from the command line.
    Admin {
        /// What to do.
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Check aggregate snapshots.
    Snapshots {
        /// What to do.
        #[command(subcommand)]
        action: SnapshotAction,
    },
}

/// Snapshot subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum SnapshotAction {
    /// Check that every snapshot decodes and, with the events after it, yields the state a
    /// full replay yields; lists those that do not and exits non-zero if any.
    Verify,
}

/// Admin-user subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminAction {
    /// Create a platform super admin (nothing changes if the e-mail already has one).
    Create {
        /// Login e-mail.
        #[arg(long)]
        email: String,
        /// Read the password from the first line of standard input (passwords are never
        /// taken from the command line, where other users and shell history can see them).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

/// A setting that is missing or wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither `DATABASE_URL` nor `NEON_PG_CONN` is set.
    #[error("set DATABASE_URL (or NEON_PG_CONN)")]
    NoDatabase,
    /// Neither `NEST_AUTH_SECRET` nor `NEXTAUTH_SECRET` is set.
    #[error("set NEST_AUTH_SECRET (or NEXTAUTH_SECRET)")]
    NoSecret,
    /// A duration setting does not parse.
    #[error("{0} must be a duration such as 1h, 15m, 7d or a number of seconds")]
    BadDuration(&'static str),
    /// An access token would live longer than a day.
    #[error("AUTH_TOKEN_EXPIRES_IN is at most 24h: an access token is checked against revocations, and a day is how long they are remembered")]
    TokenTooLong,
    /// Only one of the two bootstrap settings is set.
    #[error("set both ADMIN_BOOTSTRAP_EMAIL and ADMIN_BOOTSTRAP_PASSWORD, or neither")]
    HalfBootstrap,
    /// A secret is empty, short or a published default (and development secrets are not
    /// allowed).
    #[error("{0}")]
    WeakSecret(String),
}

impl Config {
    /// Trusted proxy hops in front of command-api (`TRUSTED_PROXY_HOPS`, or 1 for the older
    /// `TRUST_FORWARDED_FOR=true`).
    pub fn proxy_hops(&self) -> usize {
        match (self.trusted_proxy_hops, self.trust_forwarded_for) {
            (0, true) => 1,
            (n, _) => n,
        }
    }

    /// Access-token lifetime.
    pub fn token_ttl(&self) -> Result<std::time::Duration, ConfigError> {
        let ttl = crate::values::parse_duration(&self.auth_token_expires_in)
            .ok_or(ConfigError::BadDuration("AUTH_TOKEN_EXPIRES_IN"))?;
        if ttl > std::time::Duration::from_secs(24 * 3600) {
            return Err(ConfigError::TokenTooLong);
        }
        Ok(ttl)
    }

    /// Refresh-token lifetime.
    pub fn refresh_ttl(&self) -> Result<std::time::Duration, ConfigError> {
        crate::values::parse_duration(&self.refresh_token_expires_in)
            .ok_or(ConfigError::BadDuration("REFRESH_TOKEN_EXPIRES_IN"))
    }

    /// The bootstrap super admin, if configured.
    pub fn bootstrap_admin(&self) -> Result<Option<(&str, &str)>, ConfigError> {
        match (
            self.admin_bootstrap_email.as_deref(),
            self.admin_bootstrap_password.as_deref(),
        ) {
            (Some(e), Some(p)) if !e.is_empty() => Ok(Some((e, p))),
            (None, None) => Ok(None),
            _ => Err(ConfigError::HalfBootstrap),
        }
    }

    /// The connection string, from `DATABASE_URL` or its fallback.
    pub fn database_url(&self) -> Result<&str, ConfigError> {
        self.database_url
            .as_deref()
            .or(self.neon_pg_conn.as_deref())
            .filter(|s| !s.is_empty())
            .ok_or(ConfigError::NoDatabase)
    }

    /// The token secret, from `NEST_AUTH_SECRET` or its fallback.
    pub fn auth_secret(&self) -> Result<&str, ConfigError> {
        self.nest_auth_secret
            .as_deref()
            .filter(|s| !s.is_empty())
            .or(self.nextauth_secret.as_deref())
            .filter(|s| !s.is_empty())
            .ok_or(ConfigError::NoSecret)
    }

    /// Refuses weak secrets outside development ([`events::access::check_secrets`]).
    pub fn check_secrets(&self) -> Result<(), ConfigError> {
        events::access::check_secrets(
            &[
                (
                    "NEST_AUTH_SECRET (or NEXTAUTH_SECRET)",
                    Some(self.auth_secret()?),
                ),
                ("CREDENTIALS_KEY", self.credentials_key.as_deref()),
            ],
            self.allow_dev_secrets,
        )
        .map_err(ConfigError::WeakSecret)?;
        events::bus::NatsUrl::parse(&self.nats_url)
            .check(self.allow_dev_secrets)
            .map_err(ConfigError::WeakSecret)
    }

    /// The Lyra account, when its shop id and password are set.
    pub fn lyra_account(&self) -> Option<crate::payments::lyra::LyraAccount> {
        let set = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        Some(crate::payments::lyra::LyraAccount {
            base_url: self.lyra_api_url.clone(),
            shop_id: set(&self.lyra_shop_id)?,
            password: set(&self.lyra_password)?,
            ipn_url: set(&self.backend_url)
                .map(|b| format!("{}/api/webhooks/lyra", b.trim_end_matches('/'))),
        })
    }

    /// The keys webhooks are verified with.
    pub fn webhook_secrets(&self) -> crate::WebhookSecrets {
        let set = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        crate::WebhookSecrets {
            stripe: self
                .stripe_webhook_secret
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            lyra_password: set(&self.lyra_password),
            lyra_hmac_key: set(&self.lyra_hmac_key),
            signalwire: self
                .signalwire_signing_key
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            signalwire_api: set(&self.signalwire_project_id).zip(set(&self.signalwire_api_token)),
        }
    }

    /// The key credentials are sealed with: `CREDENTIALS_KEY`, or one derived from the token
    /// secret.
    pub fn sealing_key(&self) -> Result<events::sealed::SealingKey, ConfigError> {
        match self.credentials_key.as_deref().filter(|k| !k.is_empty()) {
            Some(key) => Ok(events::sealed::SealingKey::derive(key)),
            None => Ok(events::sealed::SealingKey::derive(self.auth_secret()?)),
        }
    }

    /// The WhatsApp settings.
    pub fn whatsapp(&self) -> crate::whatsapp::cloud::Settings {
        crate::whatsapp::cloud::Settings {
            api_url: self.whatsapp_api_url.trim_end_matches('/').to_owned(),
            version: self.whatsapp_api_version.clone(),
            app_secrets: self
                .whatsapp_app_secret
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            verify_token: self.whatsapp_verify_token.clone().filter(|t| !t.is_empty()),
        }
    }

    /// The AssemblyAI account, when an API key and `BACKEND_URL` are set.
    pub fn assemblyai_account(&self) -> Option<crate::audio::assemblyai::AssemblyAiAccount> {
        let set = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        let backend = set(&self.backend_url)?;
        let configured: Vec<String> = self
            .assemblyai_webhook_secret
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let secrets = if configured.is_empty() {
            // A secret of its own, derived so that it needs no setting and differs from the
            // token secret itself.
            use sha2::Digest;
            let secret = self.auth_secret().ok()?;
            vec![crate::webhooks::verify::hex_sha256(
                &sha2::Sha256::new()
                    .chain_update(b"assemblyai-webhook\0")
                    .chain_update(secret.as_bytes())
                    .finalize(),
            )]
        } else {
            configured
        };
        Some(crate::audio::assemblyai::AssemblyAiAccount {
            base_url: self.assemblyai_api_url.clone(),
            api_key: set(&self.assemblyai_api_key)?,
            webhook_url: format!("{}/api/webhooks/assemblyai", backend.trim_end_matches('/')),
            webhook_secrets: secrets,
        })
    }
}
