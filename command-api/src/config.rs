//! Every setting, from flags or the environment (`command-api --help` lists them).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;

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
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
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
}

impl Config {
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
}
