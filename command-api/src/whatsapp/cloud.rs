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

/// The Graph API's error message in `body` (`error.message`, at most 300 characters), or
/// `default`.
fn graph_error(body: &serde_json::Value, default: &str) -> String {
    body.pointer("/error/message")
        .and_then(|m| m.as_str())
        .unwrap_or(default)
        .chars()
        .take(300)
        .collect()
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
    let message = graph_error(&body, "no reason given");
    match status.as_u16() {
        400..=499 if status.as_u16() != 429 => Err(CheckError::Refused(message)),
        _ => Err(CheckError::Unreachable(format!("HTTP {status}: {message}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_counted_once_each() {
        assert_eq!(placeholders("Hello {{1}}, order {{2}} ships {{2}}"), 2);
        assert_eq!(placeholders("Hi {{first_name}}"), 1);
        assert_eq!(placeholders("No parameters"), 0);
        assert_eq!(placeholders("Broken {{1"), 0);
    }

    #[test]
    fn the_proof_is_hmac_sha256_of_the_token() {
        // printf token | openssl dgst -sha256 -hmac secret
        assert_eq!(
            appsecret_proof("token", "secret"),
            "e941110e3d2bfe82621f0e3e1434730d7305d106c5f68c87165d0b27a4611a4a"
        );
    }
}

pub use crate::media::MediaError;

/// A file the provider holds, as `GET /{media_id}` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaInfo {
    /// Where to download it (valid a few minutes, with the bearer token).
    pub url: String,
    /// Its media type.
    pub mime_type: Option<String>,
    /// Its size, when said (a string in the provider's answers).
    pub file_size: Option<u64>,
}

fn client(timeout: Duration) -> Result<reqwest::Client, MediaError> {
    crate::media::client(timeout)
}

/// Asks the provider where media `media_id` is.
pub async fn media_info(
    settings: &Settings,
    media_id: &str,
    access_token: &str,
) -> Result<MediaInfo, MediaError> {
    let url = format!("{}/{}/{media_id}", settings.api_url, settings.version);
    let response = client(Duration::from_secs(15))?
        .get(url)
        .bearer_auth(access_token)
        .send()
        .await
        .map_err(|e| MediaError::Transient(e.without_url().to_string()))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if status.as_u16() == 401 || body.pointer("/error/code").and_then(|c| c.as_i64()) == Some(190) {
        let message = graph_error(&body, "the provider refused the session's access token");
        return Err(MediaError::Unauthorized(message));
    }
    if status.is_client_error() && status.as_u16() != 429 {
        let message = graph_error(&body, "the provider does not know the media id");
        return Err(MediaError::Permanent(message));
    }
    if !status.is_success() {
        return Err(MediaError::Transient(format!(
            "media lookup answered {status}"
        )));
    }
    let url = body
        .get("url")
        .and_then(|u| u.as_str())
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
        .ok_or_else(|| MediaError::Transient("the media lookup named no URL".into()))?;
    let file_size = match body.get("file_size") {
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        _ => None,
    };
    Ok(MediaInfo {
        url: url.to_owned(),
        mime_type: body
            .get("mime_type")
            .and_then(|m| m.as_str())
            .map(|m| m.chars().take(128).collect()),
        file_size,
    })
}

/// Downloads `url` (with the bearer token) into the blob store at `key`, streamed, refusing
/// more than `limit` bytes: its size and hex SHA-256.
pub async fn download(
    url: &str,
    access_token: &str,
    limit: u64,
    blobs: &dyn object_store::ObjectStore,
    key: &str,
) -> Result<(u64, String), MediaError> {
    let credential = crate::media::Credential::Bearer(access_token);
    crate::media::download(url, credential, limit, Duration::from_secs(300), blobs, key)
        .await
        .map(|(size, sha256, _)| (size, sha256))
}

/// Uploads a file to the provider (`POST /{phone_number_id}/media`, multipart with
/// `messaging_product`, `type` and `file`, streamed): its media id.
pub async fn upload_media<S>(
    settings: &Settings,
    phone_number_id: &str,
    access_token: &str,
    bytes: S,
    size_bytes: u64,
    content_type: &str,
    filename: &str,
) -> Result<String, MediaError>
where
    S: futures::Stream<Item = Result<bytes::Bytes, object_store::Error>> + Send + 'static,
{
    let part =
        reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(bytes), size_bytes)
            .file_name(filename.to_owned())
            .mime_str(content_type)
            .map_err(|e| MediaError::Permanent(e.to_string()))?;
    let form = reqwest::multipart::Form::new()
        .text("messaging_product", "whatsapp")
        .text("type", content_type.to_owned())
        .part("file", part);
    let url = format!(
        "{}/{}/{phone_number_id}/media",
        settings.api_url, settings.version
    );
    let response = client(Duration::from_secs(300))?
        .post(url)
        .bearer_auth(access_token)
        .multipart(form)
        .send()
        .await
        .map_err(|e| MediaError::Transient(e.without_url().to_string()))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if status.is_success() {
        return body
            .get("id")
            .and_then(|i| i.as_str())
            .map(str::to_owned)
            .ok_or_else(|| MediaError::Transient("the upload answered no media id".into()));
    }
    let message = graph_error(&body, "the provider refused the file");
    match status.as_u16() {
        429 | 500..=599 => Err(MediaError::Transient(message)),
        _ => Err(MediaError::Permanent(message)),
    }
}

/// How many body parameters the approved template `name` in `language` takes, as the
/// provider describes it (`GET /{business_account_id}/message_templates`): `Ok(None)` when
/// the account has no such approved template; `Err` when the provider could not tell (the
/// send then goes ahead and the provider decides).
pub async fn template_parameters(
    settings: &Settings,
    business_account_id: &str,
    access_token: &str,
    name: &str,
    language: &str,
) -> Result<Option<usize>, MediaError> {
    let url = format!(
        "{}/{}/{business_account_id}/message_templates",
        settings.api_url, settings.version
    );
    let response = client(Duration::from_secs(10))?
        .get(url)
        .bearer_auth(access_token)
        .query(&[
            ("name", name),
            ("fields", "name,language,status,components"),
        ])
        .send()
        .await
        .map_err(|e| MediaError::Transient(e.without_url().to_string()))?;
    if !response.status().is_success() {
        return Err(MediaError::Transient(format!(
            "the template lookup answered {}",
            response.status()
        )));
    }
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| MediaError::Transient(e.to_string()))?;
    let template = body
        .get("data")
        .and_then(|d| d.as_array())
        .into_iter()
        .flatten()
        .find(|t| {
            t.get("name").and_then(|n| n.as_str()) == Some(name)
                && t.get("language").and_then(|l| l.as_str()) == Some(language)
                && t.get("status").and_then(|s| s.as_str()) == Some("APPROVED")
        });
    let Some(template) = template else {
        return Ok(None);
    };
    let body_text = template
        .get("components")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
        .find(|c| c.get("type").and_then(|t| t.as_str()) == Some("BODY"))
        .and_then(|c| c.get("text"))
        .and_then(|t| t.as_str())
        .unwrap_or_default();
    Ok(Some(placeholders(body_text)))
}

/// The distinct `{{…}}` placeholders of a template text.
pub fn placeholders(text: &str) -> usize {
    let mut seen = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let name = after[..end].trim();
        if !name.is_empty() && !name.contains('{') {
            seen.insert(name.to_owned());
        }
        rest = &after[end + 2..];
    }
    seen.len()
}
