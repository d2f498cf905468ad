//! The telephony context's settings: SignalWire's signing keys and API credentials.

use crate::config::{listed, present};

/// The telephony context's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
#[group(skip)]
pub struct Settings {
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
}

impl Settings {
    /// The signing keys callbacks are verified with (any of them may sign).
    pub fn signing_keys(&self) -> Vec<String> {
        listed(&self.signalwire_signing_key)
    }

    /// The project id and API token: the HTTP Basic credentials MMS media are fetched with
    /// (none: fetched without, as from a space serving media openly).
    pub fn api_credentials(&self) -> Option<(String, String)> {
        present(&self.signalwire_project_id).zip(present(&self.signalwire_api_token))
    }
}
