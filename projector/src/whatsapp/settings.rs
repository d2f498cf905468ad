//! The WhatsApp context's settings: the Cloud API and the bridge stream.

/// Default of [`Settings::whatsapp_api_url`].
const API_URL: &str = "https://graph.facebook.com";
/// Default of [`Settings::whatsapp_api_version`].
const API_VERSION: &str = "v21.0";
/// Default of [`Settings::whatsapp_bridge_stream`].
const BRIDGE_STREAM: &str = "WHATSAPP_BRIDGE";
/// Default of [`Settings::whatsapp_bridge_subject_prefix`].
const BRIDGE_SUBJECT_PREFIX: &str = "whatsapp.bridge";

/// The WhatsApp context's settings.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[group(skip)]
pub struct Settings {
    /// Base URL of the WhatsApp Cloud API (the Graph API).
    #[arg(long, env = "WHATSAPP_API_URL", global = true, default_value = API_URL)]
    pub whatsapp_api_url: String,
    /// Graph API version the Cloud API is called with.
    #[arg(long, env = "WHATSAPP_API_VERSION", global = true, default_value = API_VERSION)]
    pub whatsapp_api_version: String,
    /// JetStream stream of bridge sessions' sends.
    #[arg(long, env = "WHATSAPP_BRIDGE_STREAM", global = true, default_value = BRIDGE_STREAM)]
    pub whatsapp_bridge_stream: String,
    /// Subject prefix of bridge sessions' sends: `{prefix}.{session_id}.send`.
    #[arg(
        long,
        env = "WHATSAPP_BRIDGE_SUBJECT_PREFIX",
        global = true,
        default_value = BRIDGE_SUBJECT_PREFIX
    )]
    pub whatsapp_bridge_subject_prefix: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            whatsapp_api_url: API_URL.to_owned(),
            whatsapp_api_version: API_VERSION.to_owned(),
            whatsapp_bridge_stream: BRIDGE_STREAM.to_owned(),
            whatsapp_bridge_subject_prefix: BRIDGE_SUBJECT_PREFIX.to_owned(),
        }
    }
}
