//! The WhatsApp sender: sends due outbound messages (`whatsapp_messages` rows with a
//! `next_attempt_at`) through the Cloud API, at most once each.
//!
//! For each due message it asks command-api to **claim** it: the conversation records the
//! attempt (`SendAttempted`) before anything is sent, and answers with the request to make
//! and the session's sealed credentials. The sender calls the provider, then **reports**
//! the outcome as a command (accepted with the provider's id; refused, retryable or not).
//! Should it die, or lose the provider's answer, between the two, the attempt stays without
//! an outcome: when its lease runs out the next claim fails the message visibly
//! (`outcome_unknown`) instead of sending it again, and a status webhook naming the message
//! (its id travels as `biz_opaque_callback_data`) still records it as sent.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use events::access::TokenKeys;
use events::clock::Clock;
use events::sealed::SealingKey;
use events::whatsapp::Credentials;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::command_client::{CommandClient, Quiet};

/// How long a row claimed is not claimed again at the same version.
const QUIET: Duration = Duration::from_secs(10);
/// Most rows per step.
const BATCH: i64 = 50;
/// Cloud API error codes worth retrying: throttling (4, 80007, 130429, 131056) and the
/// provider's own trouble (1, 2, 131000, 131016, 131057, 133004).
const RETRYABLE_CODES: &[i64] = &[
    1, 2, 4, 80007, 130429, 131000, 131016, 131056, 131057, 133004,
];

/// Seconds before retrying after a 5xx answer (see [`Sender::send`]).
const SERVER_ERROR_WAIT_SECS: u32 = 30;

/// Where the Cloud API is.
#[derive(Debug, Clone)]
pub struct CloudApi {
    /// Base URL, without a trailing `/`.
    pub url: String,
    /// Graph API version.
    pub version: String,
}

/// What one step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StepReport {
    /// Messages the provider accepted.
    pub sent: usize,
    /// Messages refused (the outcome reported: retried later or failed).
    pub refused: usize,
    /// Claims that did not lead to a send (not due, finished, failed in doubt).
    pub skipped: usize,
    /// Attempts whose outcome is unknown (no report: the lease decides).
    pub in_doubt: usize,
    /// Messages handed to a session's bridge worker (it reports what became of them).
    pub handed_over: usize,
    /// command-api unreachable or failing.
    pub failed: usize,
}

/// Where bridge sessions' sends go: a JetStream subject per session,
/// `{prefix}.{session_id}.send`, on a stream of their own.
#[derive(Clone)]
pub struct Bridge {
    /// JetStream.
    pub js: async_nats::jetstream::Context,
    /// The subject prefix (`whatsapp.bridge`).
    pub prefix: String,
}

/// Creates (or finds) the bridge stream `stream` over `{prefix}.>`: sends are kept a week
/// for a bridge that was away, and a repeated publish of one message (same `Nats-Msg-Id`)
/// within two minutes is stored once.
pub async fn ensure_bridge_stream(
    js: &async_nats::jetstream::Context,
    stream: &str,
    prefix: &str,
) -> Result<(), async_nats::Error> {
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: stream.to_owned(),
        subjects: vec![format!("{prefix}.>")],
        max_age: Duration::from_secs(7 * 24 * 3600),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// The sender.
pub struct Sender {
    /// The read models.
    pool: PgPool,
    /// command-api, as a platform service.
    client: CommandClient,
    /// The Cloud API client.
    http: reqwest::Client,
    /// Where the Cloud API is.
    api: CloudApi,
    /// Opens sessions' credentials.
    sealing: SealingKey,
    /// What "now" is.
    clock: Arc<dyn Clock>,
    /// Rows claimed recently, by `(id, version)`.
    quiet: Quiet<(Uuid, i64)>,
    /// Where bridge sessions' sends go, when NATS is at hand.
    bridge: Option<Bridge>,
}

/// The outcome of one call to the provider.
enum Sent {
    /// Accepted under this id.
    Accepted(String),
    /// Refused: code, reason, retryable, Retry-After seconds.
    Refused(Option<String>, String, bool, Option<u32>),
    /// Unknown: the request may have reached the provider.
    InDoubt(String),
    /// Handed to a bridge worker, which reports the outcome as a status.
    HandedOver,
}

impl Sender {
    /// A sender through command-api at `command_api` (tokens signed by `keys`) and the Cloud
    /// API at `api`.
    pub fn new(
        pool: PgPool,
        command_api: &str,
        keys: TokenKeys,
        api: CloudApi,
        sealing: SealingKey,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self {
            pool,
            // A claim uploads a file to the provider first (up to 100 MiB).
            client: CommandClient::new(command_api, keys, "whatsapp-sender")
                .with_timeout(Duration::from_secs(600)),
            http,
            api: CloudApi {
                url: api.url.trim_end_matches('/').to_owned(),
                version: api.version,
            },
            sealing,
            clock,
            quiet: Quiet::new(QUIET),
            bridge: None,
        }
    }

    /// Sends of bridge sessions go to `bridge`.
    pub fn with_bridge(mut self, bridge: Bridge) -> Self {
        self.bridge = Some(bridge);
        self
    }

    /// Runs for ever.
    pub async fn run(self) {
        crate::due::run_forever(
            "whatsapp sender",
            self.clock.as_ref(),
            || self.step(),
            || self.next_due(),
        )
        .await
    }

    /// The earliest time a message not claimed a moment ago is due.
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        crate::due::earliest_due(&self.pool, "whatsapp_messages", &self.quiet).await
    }

    /// Claims and sends every message due by the clock's now: the unit the loop repeats,
    /// and what tests drive.
    pub async fn step(&self) -> Result<StepReport, sqlx::Error> {
        let (quiet_ids, quiet_versions): (Vec<Uuid>, Vec<i64>) =
            self.quiet.keys().into_iter().unzip();
        let due: Vec<(Uuid, Uuid, i64)> = sqlx::query_as(&format!(
            "SELECT id, conversation_id, version FROM whatsapp_messages
              WHERE next_attempt_at <= $1 AND {}
                AND (id, version) NOT IN (SELECT * FROM unnest($3::uuid[], $4::bigint[]))
              ORDER BY next_attempt_at, id LIMIT $2",
            crate::due::TENANT_NOT_SUSPENDED
        ))
        .bind(self.clock.now())
        .bind(BATCH)
        .bind(&quiet_ids)
        .bind(&quiet_versions)
        .fetch_all(&self.pool)
        .await?;
        let mut report = StepReport::default();
        for (id, conversation, version) in due {
            self.quiet.hush((id, version));
            let base = format!("/v1/whatsapp/conversations/{conversation}/messages/{id}");
            let claim = match self.client.post(&format!("{base}/claim")).await {
                Ok(r) if r.status().is_success() => r.json::<Value>().await.unwrap_or_default(),
                Ok(r) => {
                    tracing::warn!(%id, status = %r.status(), "claim refused");
                    report.failed += 1;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "command-api unreachable; will retry");
                    report.failed += 1;
                    continue;
                }
            };
            if claim.get("send").and_then(Value::as_bool) != Some(true) {
                report.skipped += 1;
                continue;
            }
            let attempt = claim.get("attempt").and_then(Value::as_u64).unwrap_or(0);
            let outcome = match self.send(id, &claim).await {
                Sent::Accepted(wamid) => {
                    report.sent += 1;
                    json!({"result": "accepted", "attempt": attempt, "wamid": wamid})
                }
                Sent::Refused(code, reason, retryable, retry_after) => {
                    report.refused += 1;
                    json!({"result": "refused", "attempt": attempt, "code": code,
                           "reason": reason, "retryable": retryable,
                           "retry_after_secs": retry_after})
                }
                Sent::HandedOver => {
                    report.handed_over += 1;
                    continue;
                }
                Sent::InDoubt(why) => {
                    tracing::warn!(%id, attempt, why, "outcome of a WhatsApp send unknown");
                    report.in_doubt += 1;
                    continue;
                }
            };
            if !self.report(&format!("{base}/outcome"), &outcome).await {
                report.failed += 1;
            }
        }
        Ok(report)
    }

    /// Reports an outcome, trying a few times: an unreported acceptance becomes an
    /// in-doubt failure unless a status webhook tells.
    async fn report(&self, path: &str, outcome: &Value) -> bool {
        for pause in [0, 200, 1000, 3000] {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            match self.client.post_json(path, outcome).await {
                Ok(r) if r.status().is_success() => return true,
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    if !busy(r).await {
                        tracing::warn!(%status, "outcome refused");
                        return false;
                    }
                    tracing::warn!(%status, "outcome not recorded (busy); trying again");
                }
                Ok(r) => tracing::warn!(status = %r.status(), "outcome not recorded; trying again"),
                Err(e) => tracing::warn!(error = %e, "outcome not recorded; trying again"),
            }
        }
        false
    }

    /// Makes the provider call a claim describes.
    async fn send(&self, id: Uuid, claim: &Value) -> Sent {
        let refused =
            |code: &str, reason: &str| Sent::Refused(Some(code.into()), reason.into(), false, None);
        match claim.get("transport").and_then(Value::as_str) {
            Some("cloud") => {}
            Some("bridge") => return self.hand_over(id, claim).await,
            _ => {
                return refused(
                    "unsupported_transport",
                    "The session's transport cannot send.",
                )
            }
        }
        let credentials = claim
            .get("credentials")
            .and_then(Value::as_str)
            .and_then(|sealed| self.sealing.open(sealed).ok())
            .and_then(|plain| serde_json::from_str::<Credentials>(&plain).ok());
        let Some(credentials) = credentials else {
            return refused(
                "credentials_unreadable",
                "The session's credentials cannot be opened with the sender's CREDENTIALS_KEY.",
            );
        };
        let number = claim
            .get("phone_number_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let url = format!("{}/{}/{number}/messages", self.api.url, self.api.version);
        let response = match self
            .http
            .post(url)
            .bearer_auth(&credentials.access_token)
            .json(claim.get("request").unwrap_or(&Value::Null))
            .send()
            .await
        {
            Ok(r) => r,
            // Not connected: the request never left, so trying again cannot send twice.
            Err(e) if e.is_connect() => {
                return Sent::Refused(
                    Some("unreachable".into()),
                    "WhatsApp could not be reached.".into(),
                    true,
                    None,
                )
            }
            Err(e) => return Sent::InDoubt(e.without_url().to_string()),
        };
        answered(response).await
    }
}

/// What WhatsApp's answer to a send says: accepted with its message id, refused (with the
/// provider's code, and whether and when to try again), or in doubt.
async fn answered(response: reqwest::Response) -> Sent {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok());
    let body: Value = match response.json().await {
        Ok(body) => body,
        Err(e) if status.is_success() => return Sent::InDoubt(e.to_string()),
        Err(_) => Value::Null,
    };
    if status.is_success() {
        return match body.pointer("/messages/0/id").and_then(Value::as_str) {
            Some(wamid) => Sent::Accepted(wamid.to_owned()),
            None => Sent::InDoubt("an answer without a message id".into()),
        };
    }
    let code = body.pointer("/error/code").and_then(Value::as_i64);
    let mut reason = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("WhatsApp refused the message.")
        .to_owned();
    if let Some(details) = body
        .pointer("/error/error_data/details")
        .and_then(Value::as_str)
    {
        reason = format!("{reason}: {details}");
    }
    let retryable = status.as_u16() == 429
        || status.is_server_error()
        || code.is_some_and(|c| RETRYABLE_CODES.contains(&c));
    // A 5xx may hide a message the provider took: the retry waits long enough for its
    // status webhook (which names the message) to settle it first.
    let retry_after = match status.is_server_error() {
        true => Some(retry_after.unwrap_or(0).max(SERVER_ERROR_WAIT_SECS)),
        false => retry_after,
    };
    let code = code
        .map(|c| c.to_string())
        .unwrap_or_else(|| status.as_u16().to_string());
    Sent::Refused(Some(code), reason, retryable, retry_after)
}

impl Sender {
    /// Publishes a bridge session's send on its subject. The message id is the
    /// `Nats-Msg-Id`, so a publish repeated after a lost acknowledgement is stored once.
    async fn hand_over(&self, id: Uuid, claim: &Value) -> Sent {
        let Some(bridge) = &self.bridge else {
            return Sent::Refused(
                Some("bridge_unavailable".into()),
                "The sender has no connection to the bridge stream.".into(),
                true,
                None,
            );
        };
        let session = claim
            .get("session_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let request = claim.get("request").cloned().unwrap_or(Value::Null);
        let payload = json!({
            "message_id": id,
            "attempt": claim.get("attempt"),
            "to": request.get("to"),
            "request": request,
        });
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.to_string().as_str());
        let published = bridge
            .js
            .publish_with_headers(
                format!("{}.{session}.send", bridge.prefix),
                headers,
                serde_json::to_vec(&payload).unwrap_or_default().into(),
            )
            .await;
        let acked = match published {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match acked {
            Ok(()) => Sent::HandedOver,
            Err(e) => Sent::Refused(
                Some("bridge_unavailable".into()),
                format!("The bridge stream did not take the message: {e}"),
                true,
                None,
            ),
        }
    }
}

/// Whether command-api answered that the aggregate was too busy (409 `contention`, or 429):
/// worth another try, unlike the other refusals.
pub(crate) async fn busy(response: reqwest::Response) -> bool {
    match response.status().as_u16() {
        429 => true,
        409 => response
            .json::<Value>()
            .await
            .is_ok_and(|p| p["code"] == "contention"),
        _ => false,
    }
}
