//! The WhatsApp Cloud API as command-api needs it: checking a number's credentials before a
//! session counts as connected. (Sending is the projector's: its sender worker calls the
//! API and reports the outcome back as a command.)

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// The WhatsApp settings.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Base URL of the Graph API, without a trailing `/`.
    pub api_url: String,
    /// Graph API version (`v21.0`).
    pub version: String,
    /// App secrets of the platform's own Meta app(s).
    pub app_secrets: Vec<String>,
    /// Verify token of the platform's own Meta app.
    pub verify_token: Option<String>,
}

/// What the provider says of a phone number id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct NumberInfo {
    /// The number as shown.
    #[serde(default)]
    pub display_phone_number: Option<String>,
    /// The verified business name.
    #[serde(default)]
    pub verified_name: Option<String>,
}

/// Why credentials could not be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The provider refused them (422 `credentials_rejected`).
    #[error("WhatsApp refused the credentials: {0}")]
    Refused(String),
    /// The provider could not be asked (503).
    #[error("WhatsApp could not be reached: {0}")]
    Unreachable(String),
}

/// `appsecret_proof`: hex HMAC-SHA256 of the access token keyed by the app secret. The
/// Graph API checks it when given, so one call proves both the token and the app secret.
pub fn appsecret_proof(access_token: &str, app_secret: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(access_token.as_bytes());
    crate::values::hex(&mac.finalize().into_bytes())
}

/// Asks the provider for `phone_number_id` with the given credentials.
pub async fn check_number(
    settings: &Settings,
    phone_number_id: &str,
    access_token: &str,
    app_secret: &str,
) -> Result<NumberInfo, CheckError> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|e| CheckError::Unreachable(e.to_string()))?;
    let url = format!(
        "{}/{}/{}",
        settings.api_url, settings.version, phone_number_id
    );
    let response = http
        .get(url)
        .bearer_auth(access_token)
        .query(&[
            ("fields", "display_phone_number,verified_name"),
            (
                "appsecret_proof",
                &appsecret_proof(access_token, app_secret),
            ),
        ])
        .send()
        .await
        .map_err(|e| CheckError::Unreachable(e.without_url().to_string()))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if status.is_success() {
        return serde_json::from_value(body).map_err(|e| CheckError::Unreachable(e.to_string()));
    }
    let message = body
        .pointer("/error/message")
        .and_then(|m| m.as_str())
        .unwrap_or("no reason given")
        .chars()
        .take(300)
        .collect::<String>();
    match status.as_u16() {
        400..=499 if status.as_u16() != 429 => Err(CheckError::Refused(message)),
        _ => Err(CheckError::Unreachable(format!("HTTP {status}: {message}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proof_is_hmac_sha256_of_the_token() {
        // printf token | openssl dgst -sha256 -hmac secret
        assert_eq!(
            appsecret_proof("token", "secret"),
            "e941110e3d2bfe82621f0e3e1434730d7305d106c5f68c87165d0b27a4611a4a"
        );
    }
}
