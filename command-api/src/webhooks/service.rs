//! Webhook ingestion's application layer, shared by every provider: refusing a request
//! (the capped rejection log, the sealed request kept for a replay), receiving a verified
//! webhook once (de-duplicated, attributed, appended as `Received`), and what a provider's
//! context answers when it has processed one.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use events::envelope::ActorKind;
use events::http::{Json, Problem, RequestIds};
use events::identity::PLATFORM_TENANT;
use events::webhooks::{webhook_id, Outcome, WEBHOOK};
use events::Metadata;
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::aggregate::WebhookCommand;
use super::provider::WebhookProvider;
use super::verify::{self, Rejection};
use crate::AppState;

/// The largest webhook body accepted (Stripe's events stay far below it).
pub(crate) const MAX_WEBHOOK_BYTES: usize = 1024 * 1024;
/// The most a received webhook's kept fields may take, as JSON.
const MAX_KEPT_PAYLOAD_BYTES: usize = 384 * 1024;
/// Rejections kept in the log.
const REJECTIONS_KEPT: i64 = 1_000;
/// Rejections of one provider for one reason logged per minute: past it a flood is only
/// counted in the logs, so it cannot push the evidence of an earlier probe out of the log.
const REJECTIONS_PER_MINUTE: i64 = 20;

/// What processing a webhook did, or why it must be tried again.
pub(crate) enum Processing {
    /// Finished: what it did, the tenant (and payment) it concerned, why.
    Done(Outcome, Option<Attributed>, String),
    /// Failed for now (a stable reason: it is shown to tenants).
    Retry(String),
    /// It concerns this tenant, which is suspended: it waits for its reactivation.
    Held(String),
    /// It names a provider reference (a Stripe payment intent) no payment was paid with
    /// yet: recorded as ignored, and processed again when one is (the provider's events
    /// came out of order, or it is another product's on a shared account).
    Unmatched(String),
}

/// Why a webhook naming a provider reference no payment was paid with was not applied.
pub(crate) const UNMATCHED: &str = "no payment known for the provider's reference";

/// The tenant a webhook turned out to concern, and its payment if it was about one.
#[derive(Debug, Clone)]
pub(crate) struct Attributed {
    /// The payment.
    pub(crate) payment_id: Option<String>,
    /// Its tenant (or the number's).
    pub(crate) tenant_id: String,
}

tokio::task_local! {
    /// Set while a refused webhook is replayed (`POST /v1/webhooks/rejections/{id}/replay`):
    /// a refusal is answered, not logged again, and a signature's age is no refusal.
    pub(crate) static REPLAYING: ();
}

/// Whether a refused webhook is being replayed.
pub(crate) fn replaying() -> bool {
    REPLAYING.try_with(|_| ()).is_ok()
}

/// The largest refused body kept for a replay.
const MAX_REPLAYABLE_BYTES: usize = 256 * 1024;
/// How long a refused webhook can be replayed.
const REPLAYABLE_FOR: &str = "7 days";

/// A refused request as received: what its replay needs.
pub(crate) struct Refused<'a> {
    /// Its path and query.
    uri: &'a Uri,
    /// Its headers.
    headers: &'a HeaderMap,
    /// Its body.
    body: &'a [u8],
}

impl<'a> Refused<'a> {
    /// The request `uri`, `headers`, `body`.
    pub(crate) fn new(uri: &'a Uri, headers: &'a HeaderMap, body: &'a [u8]) -> Self {
        Self { uri, headers, body }
    }

    /// The request sealed for a replay, with its type and the headers `provider`'s
    /// verification reads, if its body is small enough to keep.
    fn sealed(&self, state: &AppState, provider: &dyn WebhookProvider) -> Option<String> {
        use base64::Engine;
        if self.body.len() > MAX_REPLAYABLE_BYTES {
            return None;
        }
        let headers: Vec<(&str, &str)> = ["content-type"]
            .iter()
            .chain(provider.signature_headers())
            .filter_map(|name| {
                let value = self.headers.get(*name)?.to_str().ok()?;
                Some((*name, value))
            })
            .collect();
        let request = json!({
            "path": self.uri.path_and_query().map_or("/", |p| p.as_str()),
            "headers": headers,
            "body": base64::engine::general_purpose::STANDARD.encode(self.body),
        });
        Some(state.sealing.seal(&request.to_string()))
    }
}

/// Writes a refused webhook to the capped rejection log and answers 401: what diagnosis
/// needs in clear (the body's shape and digest), and the request sealed for a replay. The
/// log is best-effort: failing to write it does not change the answer. A replay's refusal
/// is answered 422 `still_rejected` and not logged again.
pub(crate) async fn reject(
    state: &AppState,
    provider: &dyn WebhookProvider,
    rejection: Rejection,
    signature: Option<&str>,
    request: &Refused<'_>,
) -> Problem {
    if replaying() {
        return Problem::unprocessable(
            "still_rejected",
            format!(
                "The webhook still fails verification ({}).",
                rejection.code()
            ),
        );
    }
    let body = request.body;
    let shape = body_shape(body);
    let digest = crate::values::hex(&Sha256::digest(body));
    let signature = signature.map(|s| s.chars().take(512).collect::<String>().replace('\0', ""));
    let logged = sqlx::query(&format!(
        "WITH added AS (
             INSERT INTO webhook_rejections (provider, reason, signature, body_excerpt, body_bytes,
                                             body_sha256, sealed_request, replayable_until)
             SELECT $1, $2, $3, $4, $5, $8, $9,
                    CASE WHEN $9::text IS NULL THEN NULL ELSE now() + interval '{REPLAYABLE_FOR}' END
              WHERE (SELECT count(*) FROM webhook_rejections
                      WHERE provider = $1 AND reason = $2
                        AND received_at > now() - interval '1 minute') < $7
             RETURNING id)
         DELETE FROM webhook_rejections WHERE id <= (SELECT id FROM added) - $6"
    ))
    .bind(provider.provider().as_str())
    .bind(rejection.code())
    .bind(signature)
    .bind(shape)
    .bind(body.len() as i32)
    .bind(REJECTIONS_KEPT)
    .bind(REJECTIONS_PER_MINUTE)
    .bind(digest)
    .bind(request.sealed(state, provider))
    .execute(&state.pool)
    .await;
    if let Err(e) = logged {
        tracing::warn!(error = %e, "could not log a webhook rejection");
    }
    tracing::warn!(
        provider = provider.provider().as_str(),
        reason = rejection.code(),
        "webhook refused"
    );
    Problem::new(
        StatusCode::UNAUTHORIZED,
        rejection.code(),
        "The webhook's signature could not be verified.",
    )
}

/// The tenant of the stream `(aggregate_type, id)`: that of its first event.
pub(crate) async fn stream_tenant(
    pool: &PgPool,
    aggregate_type: &str,
    id: &str,
) -> Result<Option<String>, Problem> {
    sqlx::query_scalar(
        "SELECT metadata->>'tenant_id' FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = 1",
    )
    .bind(aggregate_type)
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(|e| Problem::unavailable(&e))
}

/// What a refused body looked like without what it said: a JSON object's keys, a form's
/// field names, or only its size. The values may be customer data, and a refused webhook
/// is no record of anything.
fn body_shape(body: &[u8]) -> String {
    let names = |mut names: Vec<String>| {
        names.sort();
        names.dedup();
        names.truncate(64);
        names
            .into_iter()
            .map(|n| {
                n.chars()
                    .take(64)
                    .filter(|c| !c.is_control())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body) {
        return format!("json keys: {}", names(map.keys().cloned().collect()));
    }
    // A form only if every name is one (letters, digits, `_.-[]`, at most 64): other text
    // read as a form would show its words as "names" — a refused plain-text or broken JSON
    // body's content.
    let name_like = |n: &str| {
        (1..=64).contains(&n.len())
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-[]".contains(&b))
    };
    if let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body) {
        if !form.is_empty()
            && std::str::from_utf8(body).is_ok()
            && form.iter().all(|(k, _)| name_like(k))
        {
            return format!(
                "form fields: {}",
                names(form.into_iter().map(|(k, _)| k).collect())
            );
        }
    }
    "unparsed".to_owned()
}

/// Appends a verified webhook, once: a repeat finds it received and appends nothing.
pub(crate) async fn receive(
    state: &AppState,
    ids: &RequestIds,
    provider: &dyn WebhookProvider,
    payload: serde_json::Value,
    body: &[u8],
) -> Result<Response, Problem> {
    let (id, duplicate) = receive_item(state, ids, provider, payload, body).await?;
    let received = WebhookReceived {
        received: true,
        id,
        duplicate,
    };
    Ok(Json(received).into_response())
}

/// The answer to a provider's delivery: the webhook is accepted (a 2xx stops the provider's
/// retries); it is processed afterwards.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct WebhookReceived {
    /// Always `true`.
    received: bool,
    /// The webhook's id, derived from the provider and its de-duplication key: the same for
    /// every delivery of one event (read it on query-api's `GET /v1/webhooks/{id}`).
    #[schema(value_type = Uuid)]
    id: String,
    /// `true` when this event was received before (a retry or a concurrent delivery):
    /// nothing was appended.
    duplicate: bool,
}

/// Appends one verified webhook unless it was received before: its id, and whether it was.
pub(crate) async fn receive_item(
    state: &AppState,
    ids: &RequestIds,
    provider: &dyn WebhookProvider,
    payload: serde_json::Value,
    body: &[u8],
) -> Result<(String, bool), Problem> {
    let identity = super::provider::identify(provider, &payload)
        .map_err(|e| Problem::bad_request("invalid_payload", e.0))?;
    // What is kept of a webhook is what processing needs: far below what an event may hold.
    // A signed body keeping more (a 700 KB field) is the provider's mistake, answered 413
    // so that it is not retried as a failure of ours.
    if events::jsonb::encoded_len(&payload) > MAX_KEPT_PAYLOAD_BYTES {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "The webhook's fields are larger than any this provider sends.",
        ));
    }
    let kind = provider.provider();
    let id = webhook_id(kind, &identity.provider_event_id);
    // Attributed to the tenant owning what it concerns (the payment it names, the number
    // it reached), if anybody does.
    let tenant = provider
        .owner(state, &identity, &payload)
        .await?
        .unwrap_or_else(|| PLATFORM_TENANT.to_owned());
    let metadata = ids.metadata(
        &tenant,
        &format!("webhook:{}", kind.as_str()),
        ActorKind::Anonymous,
    );
    let mut kept = provider.retained(&payload);
    let mut digest = verify::hex_sha256(body);
    let subject = provider
        .data_subject(&state.pool, &tenant, &kept)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    // About a person: the kept payload, and the body's digest (which a guess of the body's
    // personal values could be checked against), sealed for them.
    if let Some(subject) = subject {
        kept = sealed_text(state, &tenant, subject, &kept.to_string())
            .await?
            .into();
        digest = sealed_text(state, &tenant, subject, &digest).await?;
    }
    let command = WebhookCommand::Receive {
        provider: kind,
        provider_event_id: identity.provider_event_id,
        event_type: identity.event_type,
        payment_id: identity.payment_id,
        payload: kept,
        body_sha256: Some(digest),
        at: state.clock.now(),
    };
    let c = state
        .ctx
        .webhooks
        .bus
        .execute(&id, None, command, &metadata)
        .await?;
    Ok((id, c.appended == 0))
}

/// `text` (a kept payload's JSON text, a digest) sealed for contact `subject` of `tenant`
/// (docs/privacy.md); `[erased]` when they were erased (nothing of theirs is kept again).
async fn sealed_text(
    state: &AppState,
    tenant: &str,
    subject: uuid::Uuid,
    text: &str,
) -> Result<String, Problem> {
    let contact = events::keyring::Subject {
        id: subject,
        kind: events::keyring::SubjectKind::Contact,
        tenant_id: tenant,
    };
    match state.keyring.seal(contact, text).await {
        Ok(sealed) => Ok(sealed),
        Err(events::keyring::KeyError::Erased) => Ok(events::personal::ERASED.into()),
        Err(e) => Err(Problem::unavailable(&e)),
    }
}

/// A kept payload as processing reads it: opened from its sealed JSON text, or as it is when
/// kept in clear; `None` once the person it is about was erased.
pub(crate) async fn opened_payload(
    state: &AppState,
    payload: &serde_json::Value,
) -> Result<Option<serde_json::Value>, Problem> {
    let serde_json::Value::String(text) = payload else {
        return Ok(Some(payload.clone()));
    };
    let opened = state
        .keyring
        .open(text)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    Ok(match opened.as_str() {
        events::personal::ERASED => None,
        json => Some(serde_json::from_str(json).unwrap_or(serde_json::Value::String(opened))),
    })
}

/// The metadata of a command caused by webhook `id`: the tenant of its stream, the platform
/// component `webhooks` as actor, the webhook's `Received` event as the cause.
pub(crate) fn caused_by(ids: &RequestIds, tenant: &str, id: &str) -> Metadata {
    let mut metadata = ids.metadata(tenant, "webhooks", ActorKind::System);
    metadata.causation_id = events::subject::message_id(WEBHOOK, id, 1);
    metadata
}

#[cfg(test)]
mod tests {
    use super::body_shape;

    #[test]
    fn a_refused_body_shows_its_shape_never_its_values() {
        assert_eq!(
            body_shape(br#"{"customer_email":"jane@example.com","name":"Jane"}"#),
            "json keys: customer_email, name"
        );
        assert_eq!(
            body_shape(b"Body=Hello&From=%2B1555"),
            "form fields: Body, From"
        );
        // Broken JSON, plain text, XML: no names, so nothing of them.
        for text in [
            &br#"{"customer_email":"jane.doe@example.com","name":"Jane Doe","card"#[..],
            b"her card is 4242424242424242, exp 12/30",
            b"<xml><email>jane@example.com</email></xml>",
        ] {
            assert_eq!(
                body_shape(text),
                "unparsed",
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }
}

/// A refused request, unsealed.
#[derive(serde::Deserialize)]
struct SealedRequest {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// The refused request rejection `id` kept (sealed): its path and query, the headers
/// verification reads, and its body. 404 for an unknown rejection; 410 `replay_expired` once
/// it is erased (a week on), when it was not kept (too large), or when it no longer opens.
pub(crate) async fn kept_request(
    state: &AppState,
    id: i64,
) -> Result<(Uri, HeaderMap, bytes::Bytes), Problem> {
    use base64::Engine;
    let not_found = || Problem::not_found("no such rejected webhook");
    let row: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT sealed_request FROM webhook_rejections
          WHERE id = $1 AND (replayable_until IS NULL OR replayable_until > now())",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    let exists = row.is_some()
        || sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM webhook_rejections WHERE id = $1)",
        )
        .bind(id)
        .fetch_one(&state.pool)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let expired = || {
        Problem::new(
            StatusCode::GONE,
            "replay_expired",
            "This refused webhook is no longer kept (a week after it came, or too large to keep).",
        )
    };
    let sealed = match row {
        Some((Some(sealed),)) => sealed,
        _ if exists => return Err(expired()),
        _ => return Err(not_found()),
    };
    let request: SealedRequest = state
        .sealing
        .open(&sealed)
        .ok()
        .and_then(|plain| serde_json::from_str(&plain).ok())
        .ok_or_else(expired)?;
    let body = base64::engine::general_purpose::STANDARD
        .decode(&request.body)
        .map_err(|_| expired())?;
    let uri: Uri = request.path.parse().map_err(|_| expired())?;
    let mut headers = HeaderMap::new();
    for (name, value) in &request.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    Ok((uri, headers, body.into()))
}

/// Records on rejection `id` what its replay became (the webhook ids of the endpoint's
/// answer).
pub(crate) async fn record_replay(state: &AppState, id: i64, answer: &[u8]) -> Result<(), Problem> {
    let received: serde_json::Value = serde_json::from_slice(answer).unwrap_or_default();
    let webhook = received["id"].as_str().map(str::to_owned).or_else(|| {
        received["ids"].as_array().map(|ids| {
            ids.iter()
                .filter_map(|i| i.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
    });
    sqlx::query(
        "UPDATE webhook_rejections SET replayed_at = now(), replayed_webhook_id = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(webhook)
    .execute(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    Ok(())
}
