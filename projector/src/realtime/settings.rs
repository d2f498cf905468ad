//! The realtime context's settings: Soketi's HTTP API and the core NATS subjects of SSE.

/// The realtime context's settings.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[group(skip)]
pub struct Settings {
    /// Base URL of Soketi's HTTP API (e.g. `http://127.0.0.1:6001`); realtime is off without it.
    #[arg(long, env = "SOKETI_URL", global = true)]
    pub soketi_url: Option<String>,
    /// Pusher app id of the Soketi app.
    #[arg(long, env = "SOKETI_APP_ID", global = true)]
    pub soketi_app_id: Option<String>,
    /// Pusher app key of the Soketi app.
    #[arg(long, env = "SOKETI_APP_KEY", global = true)]
    pub soketi_app_key: Option<String>,
    /// Pusher app secret of the Soketi app (signs HTTP API requests).
    #[arg(long, env = "SOKETI_APP_SECRET", global = true, hide_env_values = true)]
    pub soketi_app_secret: Option<String>,
    /// First token of the core NATS subjects realtime events are fanned out on (for SSE).
    #[arg(long, env = "REALTIME_SUBJECT_PREFIX", global = true, default_value = events::realtime::DEFAULT_SUBJECT_PREFIX)]
    pub realtime_subject_prefix: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            soketi_url: None,
            soketi_app_id: None,
            soketi_app_key: None,
            soketi_app_secret: None,
            realtime_subject_prefix: events::realtime::DEFAULT_SUBJECT_PREFIX.to_owned(),
        }
    }
}

impl Settings {
    /// The Soketi app, when its URL, id, key and secret are all set.
    pub fn soketi_app(&self) -> Option<super::SoketiApp> {
        let set = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        Some(super::SoketiApp {
            url: set(&self.soketi_url)?,
            app_id: set(&self.soketi_app_id)?,
            key: set(&self.soketi_app_key)?,
            secret: set(&self.soketi_app_secret)?,
        })
    }
}
