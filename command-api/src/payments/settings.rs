//! The payments context's settings: the Lyra account and the providers' webhook secrets.

use crate::config::{listed, present};

/// Default of [`Settings::lyra_api_url`].
const LYRA_API_URL: &str = "https://api.lyra.com";

/// The payments context's settings.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[group(skip)]
pub struct Settings {
    /// Base URL of Lyra's REST API (PayZen: `https://api.payzen.eu`).
    #[arg(long, env = "LYRA_API_URL", default_value = LYRA_API_URL)]
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
    /// Stripe webhook endpoint secrets (`whsec_…`), comma-separated: several during a rotation.
    #[arg(
        long,
        env = "STRIPE_WEBHOOK_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub stripe_webhook_secret: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            lyra_api_url: LYRA_API_URL.to_owned(),
            lyra_shop_id: None,
            lyra_password: None,
            lyra_hmac_key: None,
            stripe_webhook_secret: Vec::new(),
        }
    }
}

/// The keys the payment providers' webhooks are verified with.
#[derive(Debug, Clone, Default)]
pub struct WebhookKeys {
    /// Stripe endpoint secrets (any of them may sign).
    pub stripe: Vec<String>,
    /// Lyra REST password (the IPN's key).
    pub lyra_password: Option<String>,
    /// Lyra HMAC-SHA-256 key (the browser return's key).
    pub lyra_hmac_key: Option<String>,
}

impl Settings {
    /// The Lyra account, when its shop id and password are set; the IPN goes to
    /// `{backend_url}/api/webhooks/lyra` when the public base is known.
    pub fn lyra_account(&self, backend_url: Option<&str>) -> Option<super::lyra::LyraAccount> {
        Some(super::lyra::LyraAccount {
            base_url: self.lyra_api_url.clone(),
            shop_id: present(&self.lyra_shop_id)?,
            password: present(&self.lyra_password)?,
            ipn_url: backend_url.map(|b| format!("{}/api/webhooks/lyra", b.trim_end_matches('/'))),
        })
    }

    /// The keys webhooks are verified with.
    pub fn webhook_keys(&self) -> WebhookKeys {
        WebhookKeys {
            stripe: listed(&self.stripe_webhook_secret),
            lyra_password: present(&self.lyra_password),
            lyra_hmac_key: present(&self.lyra_hmac_key),
        }
    }
}
