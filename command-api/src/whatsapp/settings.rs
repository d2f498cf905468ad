//! The WhatsApp context's settings: the Cloud API and the platform's own Meta app.

use crate::config::listed;

/// Default of [`Settings::whatsapp_api_url`].
const API_URL: &str = "https://graph.facebook.com";
/// Default of [`Settings::whatsapp_api_version`].
const API_VERSION: &str = "v21.0";

/// The WhatsApp context's settings.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[group(skip)]
pub struct Settings {
    /// Base URL of the WhatsApp Cloud API (the Graph API).
    #[arg(long, env = "WHATSAPP_API_URL", default_value = API_URL)]
    pub whatsapp_api_url: String,
    /// Graph API version the Cloud API is called with.
    #[arg(long, env = "WHATSAPP_API_VERSION", default_value = API_VERSION)]
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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            whatsapp_api_url: API_URL.to_owned(),
            whatsapp_api_version: API_VERSION.to_owned(),
            whatsapp_app_secret: Vec::new(),
            whatsapp_verify_token: None,
        }
    }
}

impl Settings {
    /// What the Cloud API calls and the deliveries' checks need.
    pub fn cloud(&self) -> super::cloud::Settings {
        super::cloud::Settings {
            api_url: self.whatsapp_api_url.trim_end_matches('/').to_owned(),
            version: self.whatsapp_api_version.clone(),
            app_secrets: listed(&self.whatsapp_app_secret),
            verify_token: self.whatsapp_verify_token.clone().filter(|t| !t.is_empty()),
        }
    }
}
