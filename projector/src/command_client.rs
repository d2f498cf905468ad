//! What the projector's workers that act through command-api share (the scheduler, the
//! webhook process manager): a client that posts commands with a service token
//! (docs/architecture.md, invariant 5: outcomes come back as commands), and a short memory of what
//! was just sent, so work waiting for its read model to catch up is not sent again.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use events::access::TokenKeys;

/// Posts commands to command-api as platform component `name`.
pub struct CommandClient {
    /// HTTP client with timeouts.
    http: reqwest::Client,
    /// command-api's base URL, without a trailing `/`.
    base: String,
    /// Mints the service token.
    keys: TokenKeys,
    /// The component's name (the token's subject, the events' actor).
    name: &'static str,
}

impl CommandClient {
    /// A client of command-api at `base`, signing tokens with `keys` as `name`.
    pub fn new(base: &str, keys: TokenKeys, name: &'static str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            keys,
            name,
        }
    }

    /// The same client, waiting up to `timeout` for an answer (commands that call a provider
    /// on the way — a file fetched or uploaded — take longer than the default 10 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        self
    }

    /// `POST {base}{path}` with no body. No `Idempotency-Key`: a stored answer would be
    /// replayed when the situation has changed (a delivery that was not due yet); the
    /// aggregates make a repeated command append nothing.
    pub async fn post(&self, path: &str) -> Result<reqwest::Response, reqwest::Error> {
        let token = self.keys.service_token(self.name, 300);
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
    }
}

impl CommandClient {
    /// `POST {base}{path}` with a JSON body (the sender's outcome reports).
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let token = self.keys.service_token(self.name, 300);
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
    }
}

/// Keys sent within the last `period`.
pub struct Quiet<K> {
    /// When each key was sent.
    sent: Mutex<HashMap<K, Instant>>,
    /// How long a key stays quiet.
    period: Duration,
}

impl<K: Hash + Eq + Clone> Quiet<K> {
    /// Keys stay quiet for `period`.
    pub fn new(period: Duration) -> Self {
        Self {
            sent: Mutex::new(HashMap::new()),
            period,
        }
    }

    /// The keys sent within the period (older ones are forgotten).
    pub fn keys(&self) -> Vec<K> {
        let Ok(mut sent) = self.sent.lock() else {
            return Vec::new();
        };
        sent.retain(|_, at| at.elapsed() < self.period);
        sent.keys().cloned().collect()
    }

    /// Marks `key` as sent now.
    pub fn hush(&self, key: K) {
        if let Ok(mut sent) = self.sent.lock() {
            sent.insert(key, Instant::now());
        }
    }
}

/// Has command-api process received webhook `webhook` again (`POST
/// /v1/webhooks/{id}/replay`, as a platform service). A refusal (the webhook is gone, or
/// pending already) is logged and passed over; command-api being away is an error, so the
/// worker's checkpoint does not move.
pub(crate) async fn replay_webhook(
    client: &CommandClient,
    webhook: &str,
) -> Result<(), crate::projection::ProjectionError> {
    let path = format!("/v1/webhooks/{webhook}/replay");
    match client.post_json(&path, &serde_json::json!({})).await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
            tracing::warn!(webhook, status = %r.status(), "webhook not replayed");
            Ok(())
        }
        Ok(r) => Err(crate::projection::ProjectionError::Unavailable(format!(
            "command-api answered {}",
            r.status()
        ))),
        Err(e) => Err(crate::projection::ProjectionError::Unavailable(
            e.to_string(),
        )),
    }
}
