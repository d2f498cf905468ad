//! AssemblyAI client: `POST /v2/upload` (the file's bytes, streamed from the blob store),
//! `POST /v2/transcript` (with the webhook AssemblyAI calls when done, authenticated by a
//! secret header), `GET /v2/transcript/{id}`. Requests carry the API key in `authorization`.

use serde::Deserialize;
use serde_json::json;

use events::audio::Word;

/// The header AssemblyAI sends the webhook secret in (its `webhook_auth_header_name`).
pub const WEBHOOK_HEADER: &str = "x-webhook-secret";

/// The account and where its webhooks go.
#[derive(Debug, Clone)]
pub struct AssemblyAiAccount {
    /// Base URL, e.g. `https://api.assemblyai.com`.
    pub base_url: String,
    /// API key.
    pub api_key: String,
    /// `{BACKEND_URL}/api/webhooks/assemblyai`.
    pub webhook_url: String,
    /// The secrets AssemblyAI may send back in [`WEBHOOK_HEADER`]: the first goes with new
    /// requests; the others are accepted during a rotation. Never empty.
    pub webhook_secrets: Vec<String>,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The service refused the request itself (a 4xx other than those below): retrying
    /// the same request will not help.
    #[error("assemblyai refused: {0}")]
    Refused(String),
    /// Unreachable, timed out, refusing the API key (401, 403: an operator can fix it, so
    /// it is retried), overloaded (429) or failing (5xx): a retry may help.
    #[error("assemblyai unavailable: {0}")]
    Unavailable(String),
}

/// A transcript as the service reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    /// `queued`, `processing`, `completed` or `error`.
    pub status: String,
    /// The text, once completed.
    pub text: Option<String>,
    /// The words, once completed.
    pub words: Vec<Word>,
    /// `language_code`.
    pub language: Option<String>,
    /// Overall confidence.
    pub confidence: Option<f64>,
    /// The error, when it failed.
    pub error: Option<String>,
    /// The webhook URL the request named (it names the audio file).
    pub webhook_url: Option<String>,
}

impl Transcript {
    /// Whether this transcript was requested for audio file `audio_id` (its webhook URL's
    /// `audio_id`).
    pub fn is_for(&self, audio_id: &str) -> bool {
        self.webhook_url
            .as_deref()
            .and_then(|u| reqwest::Url::parse(u).ok())
            .is_some_and(|u| {
                u.query_pairs()
                    .any(|(k, v)| k == "audio_id" && v == audio_id)
            })
    }
}

#[derive(Deserialize)]
struct RawWord {
    text: String,
    start: u64,
    end: u64,
    #[serde(default)]
    confidence: f64,
}

#[derive(Deserialize)]
struct RawTranscript {
    status: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    words: Option<Vec<RawWord>>,
    #[serde(default)]
    language_code: Option<String>,
    #[serde(default)]
    confidence: Option<f64>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    webhook_url: Option<String>,
}

/// The AssemblyAI client.
#[derive(Debug, Clone)]
pub struct AssemblyAi {
    /// The account.
    account: AssemblyAiAccount,
    /// HTTP client; each call has its own timeout ([`UPLOAD_TIMEOUT`], [`CALL_TIMEOUT`]).
    http: reqwest::Client,
}

/// The longest an upload may take: 100 MiB at about 170 KiB/s. The claim of a started
/// request (the aggregate's `REQUEST_LEASE`) and the process manager's wait for an answer
/// are longer than this and [`CALL_TIMEOUT`] together.
pub const UPLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// The longest any other call may take (a large transcript is megabytes of JSON).
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

impl AssemblyAi {
    /// A client for `account`.
    pub fn new(account: AssemblyAiAccount) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self { account, http }
    }

    /// The secrets its webhooks may carry.
    pub fn webhook_secrets(&self) -> &[String] {
        &self.account.webhook_secrets
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.account.base_url.trim_end_matches('/'))
    }

    async fn json(response: reqwest::Response) -> Result<serde_json::Value, ServiceError> {
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| ServiceError::Unavailable(e.without_url().to_string()))?;
        if status.is_success() {
            return serde_json::from_str(&text)
                .map_err(|e| ServiceError::Unavailable(format!("unreadable answer: {e}")));
        }
        let detail = format!(
            "HTTP {status}: {}",
            text.chars().take(300).collect::<String>()
        );
        let transient = [
            reqwest::StatusCode::UNAUTHORIZED,
            reqwest::StatusCode::FORBIDDEN,
            reqwest::StatusCode::REQUEST_TIMEOUT,
            reqwest::StatusCode::TOO_MANY_REQUESTS,
        ];
        if status.is_client_error() && !transient.contains(&status) {
            Err(ServiceError::Refused(detail))
        } else {
            Err(ServiceError::Unavailable(detail))
        }
    }

    /// `POST /v2/upload`: the file's bytes; answers where the service keeps them.
    pub async fn upload(&self, body: reqwest::Body) -> Result<String, ServiceError> {
        let response = self
            .http
            .post(self.url("/v2/upload"))
            .header(reqwest::header::AUTHORIZATION, &self.account.api_key)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .timeout(UPLOAD_TIMEOUT)
            .body(body)
            .send()
            .await
            .map_err(|e| ServiceError::Unavailable(e.without_url().to_string()))?;
        let answer = Self::json(response).await?;
        answer["upload_url"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ServiceError::Unavailable("no upload_url in the answer".into()))
    }

    /// `POST /v2/transcript` for `audio_url`, with the webhook naming audio file `audio_id`;
    /// answers the transcript's id.
    pub async fn request_transcript(
        &self,
        audio_url: &str,
        audio_id: &str,
    ) -> Result<String, ServiceError> {
        let body = json!({
            "audio_url": audio_url,
            "webhook_url": format!("{}?audio_id={audio_id}", self.account.webhook_url),
            "webhook_auth_header_name": WEBHOOK_HEADER,
            "webhook_auth_header_value": self.account.webhook_secrets.first(),
        });
        let response = self
            .http
            .post(self.url("/v2/transcript"))
            .header(reqwest::header::AUTHORIZATION, &self.account.api_key)
            .timeout(CALL_TIMEOUT)
            .json(&body)
            .send()
            .await
            .map_err(|e| ServiceError::Unavailable(e.without_url().to_string()))?;
        let answer = Self::json(response).await?;
        answer["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ServiceError::Unavailable("no transcript id in the answer".into()))
    }

    /// The transcript the service made of the file it keeps at `audio_url`, if any: `GET
    /// /v2/transcript?limit=200` (the newest first) — a request whose answer was lost is
    /// recent.
    pub async fn find_transcript(&self, audio_url: &str) -> Result<Option<String>, ServiceError> {
        let response = self
            .http
            .get(self.url("/v2/transcript"))
            .query(&[("limit", "200")])
            .header(reqwest::header::AUTHORIZATION, &self.account.api_key)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| ServiceError::Unavailable(e.without_url().to_string()))?;
        let page = Self::json(response).await?;
        Ok(page["transcripts"].as_array().and_then(|items| {
            items
                .iter()
                .find(|t| t["audio_url"].as_str() == Some(audio_url))
                .and_then(|t| t["id"].as_str())
                .map(str::to_owned)
        }))
    }

    /// `DELETE /v2/transcript/{id}`: the service forgets the transcript and the file it was
    /// made from (a transcript it no longer has counts as forgotten).
    pub async fn delete_transcript(&self, id: &str) -> Result<(), ServiceError> {
        let response = self
            .http
            .delete(self.url(&format!("/v2/transcript/{id}")))
            .header(reqwest::header::AUTHORIZATION, &self.account.api_key)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| ServiceError::Unavailable(e.without_url().to_string()))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        Self::json(response).await.map(|_| ())
    }

    /// `GET /v2/transcript/{id}`.
    pub async fn transcript(&self, id: &str) -> Result<Transcript, ServiceError> {
        let response = self
            .http
            .get(self.url(&format!("/v2/transcript/{id}")))
            .header(reqwest::header::AUTHORIZATION, &self.account.api_key)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| ServiceError::Unavailable(e.without_url().to_string()))?;
        let raw: RawTranscript = serde_json::from_value(Self::json(response).await?)
            .map_err(|e| ServiceError::Unavailable(format!("unreadable transcript: {e}")))?;
        Ok(Transcript {
            status: raw.status,
            text: raw.text,
            words: raw
                .words
                .unwrap_or_default()
                .into_iter()
                .map(|w| Word {
                    text: w.text,
                    start_ms: w.start,
                    end_ms: w.end,
                    confidence: w.confidence,
                })
                .collect(),
            language: raw.language_code,
            confidence: raw.confidence,
            error: raw.error,
            webhook_url: raw.webhook_url,
        })
    }
}
