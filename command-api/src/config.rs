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
    /// The longest a request waits for its route's turn, in milliseconds, once the route's
    /// queue stands (has not been empty for five times this long): past it, 503 `overloaded`
    /// with `Retry-After`, oldest first (a burst whose queue empties sooner is served whole).
    #[arg(long, env = "ROUTE_QUEUE_TARGET_MS", default_value_t = 20)]
    pub route_queue_target_ms: u64,
    /// Commands (requests other than `GET`, `HEAD`, `OPTIONS`) this process takes at once
    /// (default: twice `DB_MAX_CONNECTIONS`); beyond, 503 `overloaded` with
    /// `Retry-After` at once, so an overload costs the refused their answer, not everyone
    /// their latency.
    #[arg(long, env = "COMMANDS_IN_FLIGHT")]
    pub commands_in_flight: Option<usize>,
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
    /// Accept secrets that are empty, short or a published default (development only;
    /// `scripts/up` sets it). Without it the service refuses to start with one.
    #[arg(long, env = "ALLOW_DEV_SECRETS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_dev_secrets: bool,
    /// Key provider credentials are sealed with (any string; the same in the projector).
    /// Derived from the token secret when unset.
    #[arg(long, env = "CREDENTIALS_KEY", hide_env_values = true)]
    pub credentials_key: Option<String>,
    /// Master keys the data keys of personal data are sealed with (docs/privacy.md):
    /// `id=secret` pairs, comma-separated, the first sealing and every one opening. Unset:
    /// one key, `default`, derived from `CREDENTIALS_KEY` (or the token secret).
    #[arg(long, env = "PRIVACY_MASTER_KEYS", hide_env_values = true)]
    pub privacy_master_keys: Option<String>,
    /// Days raw provider data with personal data in it is kept: refused webhooks (their
    /// shapes and digests) and captured outbound messages (the dev inbox).
    #[arg(long, env = "RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub retention_days: u32,
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
    /// Each bounded context's own settings.
    #[command(flatten)]
    pub ctx: crate::ContextSettings,
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
    /// Personal data (docs/privacy.md).
    Privacy {
        /// What to do.
        #[command(subcommand)]
        action: PrivacyAction,
    },
}

/// Privacy subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum PrivacyAction {
    /// Seal the personal fields that events written before sealing hold in clear, in
    /// place, batch by batch (the one-time transform of the existing store; running it
    /// again finds nothing to do). Uses the master keys of the settings.
    SealStore {
        /// Events per transaction.
        #[arg(long, default_value_t = 500)]
        batch: i64,
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
    /// `PRIVACY_MASTER_KEYS` does not parse.
    #[error("{0}")]
    MasterKeys(String),
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

    /// The public base URL providers call back (`BACKEND_URL`), if set.
    pub fn public_base(&self) -> Option<&str> {
        self.backend_url.as_deref().filter(|b| !b.is_empty())
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
        let masters = events::personal::master_secrets(self.privacy_master_keys.as_deref());
        let mut secrets = vec![
            (
                "NEST_AUTH_SECRET (or NEXTAUTH_SECRET)",
                Some(self.auth_secret()?),
            ),
            ("CREDENTIALS_KEY", self.credentials_key.as_deref()),
        ];
        secrets.extend(
            masters
                .iter()
                .map(|(name, secret)| (name.as_str(), Some(*secret))),
        );
        events::access::check_secrets(&secrets, self.allow_dev_secrets)
            .map_err(ConfigError::WeakSecret)?;
        events::bus::NatsUrl::parse(&self.nats_url)
            .check(self.allow_dev_secrets)
            .map_err(ConfigError::WeakSecret)
    }

    /// The master keys of personal data: `PRIVACY_MASTER_KEYS`, or one derived from
    /// `CREDENTIALS_KEY` (or the token secret).
    pub fn master_keys(&self) -> Result<events::personal::MasterKeys, ConfigError> {
        events::personal::MasterKeys::from_settings(
            self.privacy_master_keys.as_deref(),
            self.credentials_key.as_deref(),
            Some(self.auth_secret()?),
        )
        .map_err(ConfigError::MasterKeys)
    }

    /// The key credentials are sealed with: `CREDENTIALS_KEY`, or one derived from the token
    /// secret.
    pub fn sealing_key(&self) -> Result<events::sealed::SealingKey, ConfigError> {
        match self.credentials_key.as_deref().filter(|k| !k.is_empty()) {
            Some(key) => Ok(events::sealed::SealingKey::derive(key)),
            None => Ok(events::sealed::SealingKey::derive(self.auth_secret()?)),
        }
    }
}

/// A setting's value, unless it is empty.
pub fn present(value: &Option<String>) -> Option<String> {
    value.clone().filter(|s| !s.is_empty())
}

/// A list setting's values, trimmed, without empty ones.
pub fn listed(values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::{Args, FromArgMatches};

    /// Tests build the contexts' settings from `Default`: it must give what the flags give
    /// when nothing is set.
    #[test]
    fn the_contexts_defaults_are_those_of_their_flags() {
        let command = crate::ContextSettings::augment_args(clap::Command::new("command-api"));
        let set: Vec<_> = command
            .get_arguments()
            .filter_map(|a| a.get_env())
            .filter(|name| std::env::var_os(name).is_some())
            .collect();
        if !set.is_empty() {
            eprintln!("skipped: the environment sets {set:?}");
            return;
        }
        let matches = command.get_matches_from(["command-api"]);
        let parsed = crate::ContextSettings::from_arg_matches(&matches).expect("parses");
        assert_eq!(parsed, crate::ContextSettings::default());
    }
}
