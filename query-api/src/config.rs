//! Every setting, from flags or the environment (`query-api --help` lists them).

use std::net::IpAddr;

use clap::Parser;

/// Settings of query-api.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "query-api",
    version,
    about = "Serves read models and the audit trail."
)]
pub struct Config {
    /// PostgreSQL connection string (read models and the event store, read only).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Fallback name for the connection string.
    #[arg(long, env = "NEON_PG_CONN", hide_env_values = true)]
    pub neon_pg_conn: Option<String>,
    /// Maximum PostgreSQL connections of this process.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// HS256 secret of bearer tokens.
    #[arg(long, env = "NEST_AUTH_SECRET", hide_env_values = true)]
    pub nest_auth_secret: Option<String>,
    /// Fallback name for the token secret.
    #[arg(long, env = "NEXTAUTH_SECRET", hide_env_values = true)]
    pub nextauth_secret: Option<String>,
    /// As command-api's: the master key of personal data is derived from it when
    /// `PRIVACY_MASTER_KEYS` is unset.
    #[arg(long, env = "CREDENTIALS_KEY", hide_env_values = true)]
    pub credentials_key: Option<String>,
    /// Master keys of personal data's data keys, as command-api's (docs/privacy.md): the
    /// audit trail shows personal fields opened.
    #[arg(long, env = "PRIVACY_MASTER_KEYS", hide_env_values = true)]
    pub privacy_master_keys: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "QUERY_PORT", default_value_t = 3002)]
    pub port: u16,
    /// Longest a read waits for a projection to reach a requested version, in milliseconds.
    #[arg(long, env = "READ_WAIT_MS", default_value_t = 2000)]
    pub read_wait_ms: u64,
    /// Folder of the blob store (the same as command-api's): WhatsApp files are served from it.
    #[arg(long, env = "BLOB_DIR", default_value = "./data/blobs")]
    pub blob_dir: std::path::PathBuf,
    /// Accept secrets that are empty, short or a published default (development only;
    /// `scripts/up` sets it). Without it the service refuses to start with one.
    #[arg(long, env = "ALLOW_DEV_SECRETS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_dev_secrets: bool,
    /// NATS server URL, with this service's user (`nats://query-api:password@host:4222`):
    /// the realtime events of `/v1/stream`; everything else works without.
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
    /// Each bounded context's own settings.
    #[command(flatten)]
    pub ctx: crate::ContextSettings,
}

impl Config {
    /// The connection string, from `DATABASE_URL` or its fallback.
    pub fn database_url(&self) -> Option<&str> {
        self.database_url
            .as_deref()
            .or(self.neon_pg_conn.as_deref())
            .filter(|s| !s.is_empty())
    }

    /// The token secret, from `NEST_AUTH_SECRET` or its fallback.
    pub fn auth_secret(&self) -> Option<&str> {
        self.nest_auth_secret
            .as_deref()
            .filter(|s| !s.is_empty())
            .or(self.nextauth_secret.as_deref())
            .filter(|s| !s.is_empty())
    }
}
