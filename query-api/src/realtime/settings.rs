//! The realtime context's settings: the Soketi app clients connect to, and the server-sent
//! events of `/v1/stream`.

/// Default of [`Settings::streams_per_user`].
const STREAMS_PER_USER: usize = 5;
/// Default of [`Settings::soketi_public_host`].
const PUBLIC_HOST: &str = "127.0.0.1";
/// Default of [`Settings::soketi_public_port`].
const PUBLIC_PORT: u16 = 6001;
/// Default of [`Settings::realtime_auth_endpoint`].
const AUTH_ENDPOINT: &str = "/realtime/auth";
/// Default of [`Settings::realtime_user_auth_endpoint`].
const USER_AUTH_ENDPOINT: &str = "/realtime/user-auth";

/// The realtime context's settings.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[group(skip)]
pub struct Settings {
    /// Open `/v1/stream` connections one user (staff member or customer) may hold in this
    /// process; more are refused with 429 until one closes.
    #[arg(long, env = "STREAMS_PER_USER", default_value_t = STREAMS_PER_USER)]
    pub streams_per_user: usize,
    /// Pusher app key of the Soketi app (public; clients connect with it).
    #[arg(long, env = "SOKETI_APP_KEY")]
    pub soketi_app_key: Option<String>,
    /// Pusher app secret of the Soketi app (signs channel subscriptions).
    #[arg(long, env = "SOKETI_APP_SECRET", hide_env_values = true)]
    pub soketi_app_secret: Option<String>,
    /// Host browsers reach Soketi at.
    #[arg(long, env = "SOKETI_PUBLIC_HOST", default_value = PUBLIC_HOST)]
    pub soketi_public_host: String,
    /// Port browsers reach Soketi at.
    #[arg(long, env = "SOKETI_PUBLIC_PORT", default_value_t = PUBLIC_PORT)]
    pub soketi_public_port: u16,
    /// Whether browsers reach Soketi over TLS.
    #[arg(long, env = "SOKETI_PUBLIC_TLS", default_value_t = false, action = clap::ArgAction::Set)]
    pub soketi_public_tls: bool,
    /// First token of the core NATS subjects realtime events arrive on.
    #[arg(long, env = "REALTIME_SUBJECT_PREFIX", default_value = events::realtime::DEFAULT_SUBJECT_PREFIX)]
    pub realtime_subject_prefix: String,
    /// The channel authorizer URL clients are told (`/realtime/config`).
    #[arg(long, env = "REALTIME_AUTH_ENDPOINT", default_value = AUTH_ENDPOINT)]
    pub realtime_auth_endpoint: String,
    /// The user-authentication URL clients are told (`/realtime/config`).
    #[arg(long, env = "REALTIME_USER_AUTH_ENDPOINT", default_value = USER_AUTH_ENDPOINT)]
    pub realtime_user_auth_endpoint: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            streams_per_user: STREAMS_PER_USER,
            soketi_app_key: None,
            soketi_app_secret: None,
            soketi_public_host: PUBLIC_HOST.to_owned(),
            soketi_public_port: PUBLIC_PORT,
            soketi_public_tls: false,
            realtime_subject_prefix: events::realtime::DEFAULT_SUBJECT_PREFIX.to_owned(),
            realtime_auth_endpoint: AUTH_ENDPOINT.to_owned(),
            realtime_user_auth_endpoint: USER_AUTH_ENDPOINT.to_owned(),
        }
    }
}
