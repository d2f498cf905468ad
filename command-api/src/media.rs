//! Files fetched from a provider into the blob store (WhatsApp media, MMS media): streamed
//! part by part, never whole in memory, refused past a size limit, hashed on the way.

use std::time::Duration;

/// Why a file could not be had from the provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// Never to be had (unknown or expired media id, too large): recorded, not retried.
    #[error("{0}")]
    Permanent(String),
    /// Not now (the provider unreachable or failing, the blob store failing): retried.
    #[error("{0}")]
    Transient(String),
    /// The credentials were refused (401, or the Graph API's OAuth code 190): not until
    /// they change.
    #[error("{0}")]
    Unauthorized(String),
}

/// How a download authenticates.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// `Authorization: Bearer …` (WhatsApp's access token).
    Bearer(&'a str),
    /// HTTP Basic (SignalWire's project id and API token).
    Basic(&'a str, &'a str),
    /// None (a provider that serves its media URLs openly).
    None,
}

/// Whether a file may be fetched from `url`: over HTTPS, or plain HTTP to this machine (a
/// local provider stand-in). Provider URLs come in signed deliveries; this keeps
/// credentials off the wire in clear and requests off other machines' plain-HTTP ports.
pub fn fetchable(url: &reqwest::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")),
        _ => false,
    }
}

/// An HTTP client giving a call `timeout`, following at most 5 redirects and only to URLs
/// that are [`fetchable`] (a redirect is no way around the rule).
pub fn client(timeout: Duration) -> Result<reqwest::Client, MediaError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() >= 5 || !fetchable(attempt.url()) {
                attempt.stop()
            } else {
                attempt.follow()
            }
        }))
        .build()
        .map_err(|e| MediaError::Transient(e.to_string()))
}

/// Downloads `url` into the blob store at `key`, streamed, refusing more than `limit` bytes
/// and taking at most `timeout`: its size, hex SHA-256 and the media type the provider
/// named.
pub async fn download(
    url: &str,
    credential: Credential<'_>,
    limit: u64,
    timeout: Duration,
    blobs: &dyn object_store::ObjectStore,
    key: &str,
) -> Result<(u64, String, Option<String>), MediaError> {
    use futures::StreamExt;
    use sha2::Digest;
    let transient = |e: &dyn std::fmt::Display| MediaError::Transient(e.to_string());
    let request = client(timeout)?.get(url);
    let request = match credential {
        Credential::Bearer(token) => request.bearer_auth(token),
        Credential::Basic(user, password) => request.basic_auth(user, Some(password)),
        Credential::None => request,
    };
    let response = request
        .send()
        .await
        .map_err(|e| transient(&e.without_url()))?;
    refused(response.status())?;
    if response.content_length().is_some_and(|l| l > limit) {
        return Err(too_large(limit));
    }
    let content_type = media_type(&response);
    let path = object_store::path::Path::from(key);
    let upload = blobs
        .put_multipart(&path)
        .await
        .map_err(|e| transient(&e))?;
    let mut writer = object_store::WriteMultipart::new(upload);
    let mut hasher = sha2::Sha256::new();
    let mut size: u64 = 0;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(transient(&e.without_url()));
            }
        };
        size += chunk.len() as u64;
        if size > limit {
            let _ = writer.abort().await;
            return Err(too_large(limit));
        }
        hasher.update(&chunk);
        writer.write(&chunk);
    }
    writer.finish().await.map_err(|e| transient(&e))?;
    Ok((size, crate::values::hex(&hasher.finalize()), content_type))
}

/// What a download's status says: fetch the body (2xx), or why not — refused to the
/// credentials, a redirection (never followed: it could lead anywhere), refused for good
/// (4xx but 429), or for now.
fn refused(status: reqwest::StatusCode) -> Result<(), MediaError> {
    if matches!(status.as_u16(), 401 | 403) {
        return Err(MediaError::Unauthorized(format!(
            "the file's download answered {status}"
        )));
    }
    if status.is_redirection() {
        return Err(MediaError::Permanent(format!(
            "the file's download answered {status}, to a URL that may not be fetched"
        )));
    }
    if status.is_client_error() && status.as_u16() != 429 {
        return Err(MediaError::Permanent(format!(
            "the file's download answered {status}"
        )));
    }
    if !status.is_success() {
        return Err(MediaError::Transient(format!(
            "the file's download answered {status}"
        )));
    }
    Ok(())
}

/// The media type a download declares, without parameters, when it is a plausible one.
fn media_type(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|t| !t.is_empty() && t.len() <= 128)
}

fn too_large(limit: u64) -> MediaError {
    MediaError::Permanent(format!(
        "the file is larger than the limit of {limit} bytes for its kind"
    ))
}

#[cfg(test)]
mod tests {
    use super::fetchable;

    #[test]
    fn only_https_or_plain_http_to_this_machine_is_fetched() {
        let url = |u: &str| reqwest::Url::parse(u).expect("url");
        assert!(fetchable(&url("https://media.example/x")));
        assert!(fetchable(&url("http://127.0.0.1:8080/x")));
        assert!(fetchable(&url("http://localhost/x")));
        assert!(!fetchable(&url("http://192.0.2.2/internal.jpg")));
        assert!(!fetchable(&url("http://169.254.169.254/latest/meta-data")));
        assert!(!fetchable(&url("ftp://media.example/x")));
        assert!(!fetchable(&url("file:///etc/passwd")));
    }
}
