//! The audio context's settings: upload limits and the AssemblyAI account.

use crate::config::{listed, present};

/// Default of [`Settings::audio_uploads_per_user_per_hour`].
const UPLOADS_PER_USER_PER_HOUR: i64 = 30;
/// Default of [`Settings::audio_upload_mib_per_user_per_day`].
const MIB_PER_USER_PER_DAY: i64 = 1024;
/// Default of [`Settings::assemblyai_api_url`].
const ASSEMBLYAI_API_URL: &str = "https://api.assemblyai.com";

/// The audio context's settings.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[group(skip)]
pub struct Settings {
    /// Audio files one user (staff member or chatbot user) may upload per hour.
    #[arg(
        long,
        env = "AUDIO_UPLOADS_PER_USER_PER_HOUR",
        default_value_t = UPLOADS_PER_USER_PER_HOUR
    )]
    pub audio_uploads_per_user_per_hour: i64,
    /// Mebibytes of audio one user may upload per day (the file that crosses it is kept;
    /// the next is refused until the day ends).
    #[arg(
        long,
        env = "AUDIO_UPLOAD_MIB_PER_USER_PER_DAY",
        default_value_t = MIB_PER_USER_PER_DAY
    )]
    pub audio_upload_mib_per_user_per_day: i64,
    /// Base URL of AssemblyAI's API.
    #[arg(long, env = "ASSEMBLYAI_API_URL", default_value = ASSEMBLYAI_API_URL)]
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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            audio_uploads_per_user_per_hour: UPLOADS_PER_USER_PER_HOUR,
            audio_upload_mib_per_user_per_day: MIB_PER_USER_PER_DAY,
            assemblyai_api_url: ASSEMBLYAI_API_URL.to_owned(),
            assemblyai_api_key: None,
            assemblyai_webhook_secret: Vec::new(),
        }
    }
}

impl Settings {
    /// The AssemblyAI account, when an API key and the public base URL (`BACKEND_URL`) are
    /// set. Without a webhook secret of its own, one is derived from the token secret.
    pub fn assemblyai_account(
        &self,
        backend_url: Option<&str>,
        auth_secret: Option<&str>,
    ) -> Option<super::assemblyai::AssemblyAiAccount> {
        let backend = backend_url?;
        let configured = listed(&self.assemblyai_webhook_secret);
        let secrets = if configured.is_empty() {
            // A secret of its own, derived so that it needs no setting and differs from the
            // token secret itself.
            use sha2::Digest;
            vec![crate::webhooks::verify::hex_sha256(
                &sha2::Sha256::new()
                    .chain_update(b"assemblyai-webhook\0")
                    .chain_update(auth_secret?.as_bytes())
                    .finalize(),
            )]
        } else {
            configured
        };
        Some(super::assemblyai::AssemblyAiAccount {
            base_url: self.assemblyai_api_url.clone(),
            api_key: present(&self.assemblyai_api_key)?,
            webhook_url: format!("{}/api/webhooks/assemblyai", backend.trim_end_matches('/')),
            webhook_secrets: secrets,
        })
    }
}
