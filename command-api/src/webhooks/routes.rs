//! `POST /api/webhooks/stripe`, `POST /api/webhooks/lyra` (ingestion), and the commands on
//! received webhooks: `process` (the process manager's, service tokens only) and `replay`
//! (an admin's).

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use events::access::Principal;
use events::envelope::ActorKind;
use events::http::{AuthUser, Json, Problem, RawBody, RequestIds};
use events::identity::PLATFORM_TENANT;
use events::payments::{PaymentEvent, PaymentProvider, PAYMENT};
use events::webhooks::{webhook_id, Outcome, Provider, WebhookEvent, WEBHOOK};
use events::Metadata;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::aggregate::{Status, WebhookCommand, WebhookError};
use super::interpret::{self, Reference};
pub(crate) use super::service::{Attributed, Processing};
use super::verify::{self, Rejection};
use crate::http::error::DomainProblem;
use crate::payments::aggregate::{PaymentAction, PaymentCommand, ProviderStatus};
use crate::store::CommandError;
use sha2::{Digest, Sha256};

use crate::AppState;

/// The largest webhook body accepted (Stripe's events stay far below it).
pub const MAX_WEBHOOK_BYTES: usize = 1024 * 1024;
/// The most a received webhook's kept fields may take, as JSON.
const MAX_KEPT_PAYLOAD_BYTES: usize = 384 * 1024;
/// Rejections kept in the log.
const REJECTIONS_KEPT: i64 = 1_000;
/// Rejections of one provider for one reason logged per minute: past it a flood is only
/// counted in the logs, so it cannot push the evidence of an earlier probe out of the log.
const REJECTIONS_PER_MINUTE: i64 = 20;

/// The routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/webhooks/stripe", post(stripe))
        .route("/api/webhooks/lyra", post(lyra))
        .route("/api/webhooks/signalwire", post(signalwire))
        .route("/api/webhooks/assemblyai", post(assemblyai))
        .layer(DefaultBodyLimit::max(MAX_WEBHOOK_BYTES))
        .route("/v1/webhooks/{id}/process", post(process))
        .route("/v1/webhooks/{id}/replay", post(replay))
        .route(
            "/v1/webhooks/rejections/{id}/replay",
            post(replay_rejection),
        )
}

async fn stripe(
    State(state): State<AppState>,
    ids: RequestIds,
    uri: Uri,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let signature = headers
        .get("stripe-signature")
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let now = state.clock.now().timestamp();
    match verify::stripe(signature, &body, &state.webhook_secrets.stripe, now) {
        Ok(_) => {}
        // A replay is of a request refused days ago: its signature is genuine, its age is
        // the point of the replay.
        Err(Rejection::Stale) if replaying() => {}
        Err(r) => {
            let request = Refused::new(&uri, &headers, &body);
            return Err(reject(&state, Provider::Stripe, r, signature, &request).await);
        }
    }
    let payload: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| Problem::bad_request("invalid_payload", "The body is not JSON."))?;
    receive(&state, &ids, Provider::Stripe, payload, &body).await
}

async fn lyra(
    State(state): State<AppState>,
    ids: RequestIds,
    uri: Uri,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let request = Refused::new(&uri, &headers, &body);
    let form: verify::LyraForm = match serde_urlencoded::from_bytes(&body) {
        Ok(form) => form,
        Err(_) => {
            let r = Rejection::Missing;
            return Err(reject(&state, Provider::Lyra, r, None, &request).await);
        }
    };
    let secrets = &state.webhook_secrets;
    let answer = match verify::lyra(
        &form,
        secrets.lyra_password.as_deref(),
        secrets.lyra_hmac_key.as_deref(),
    ) {
        Ok(answer) => answer,
        Err(r) => {
            return Err(reject(&state, Provider::Lyra, r, form.hash.as_deref(), &request).await)
        }
    };
    let payload: serde_json::Value = serde_json::from_str(&answer)
        .map_err(|_| Problem::bad_request("invalid_payload", "kr-answer is not JSON."))?;
    receive(&state, &ids, Provider::Lyra, payload, &body).await
}

async fn signalwire(
    State(state): State<AppState>,
    ids: RequestIds,
    headers: HeaderMap,
    uri: axum::http::Uri,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let request = Refused::new(&uri, &headers, &body);
    let signature = header("x-signalwire-signature").or(header("x-twilio-signature"));
    let json = header("content-type").is_some_and(|t| t.starts_with("application/json"));
    let Some(url) = crate::telephony::routes::public_url(&state, &uri) else {
        let r = Rejection::NotConfigured;
        return Err(reject(&state, Provider::Signalwire, r, signature, &request).await);
    };
    let form: Vec<(String, String)> = if json {
        Vec::new()
    } else {
        match serde_urlencoded::from_bytes(&body) {
            Ok(form) => form,
            Err(_) => {
                let r = Rejection::Malformed;
                return Err(reject(&state, Provider::Signalwire, r, signature, &request).await);
            }
        }
    };
    let scheme = if json {
        verify::SignalwireBody::Json(&body)
    } else {
        verify::SignalwireBody::Form(&form)
    };
    if let Err(r) = verify::signalwire(signature, &url, scheme, &state.webhook_secrets.signalwire) {
        return Err(reject(&state, Provider::Signalwire, r, signature, &request).await);
    }
    let payload = if json {
        let parsed: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| Problem::bad_request("invalid_payload", "The body is not JSON."))?;
        crate::telephony::interpret::json_payload(&parsed)
    } else {
        crate::telephony::interpret::form_payload(&form)
    };
    receive(&state, &ids, Provider::Signalwire, payload, &body).await
}

/// The query of AssemblyAI's webhook URL (the platform names the audio file in it).
#[derive(Debug, serde::Deserialize)]
pub struct AssemblyAiParams {
    /// The audio file the transcript is for.
    #[serde(default)]
    pub audio_id: Option<Uuid>,
}

async fn assemblyai(
    State(state): State<AppState>,
    ids: RequestIds,
    uri: Uri,
    headers: HeaderMap,
    events::http::Query(params): events::http::Query<AssemblyAiParams>,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let provided = headers
        .get(crate::audio::assemblyai::WEBHOOK_HEADER)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let expected = state
        .assemblyai
        .as_ref()
        .map_or(&[][..], |c| c.webhook_secrets());
    if let Err(r) = verify::secret_header(provided, expected) {
        let request = Refused::new(&uri, &headers, &body);
        return Err(reject(&state, Provider::Assemblyai, r, None, &request).await);
    }
    let parsed: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| Problem::bad_request("invalid_payload", "The body is not JSON."))?;
    let field = |k: &str| parsed.get(k).cloned().unwrap_or(serde_json::Value::Null);
    let payload = json!({
        "transcript_id": field("transcript_id"),
        "status": field("status"),
        "audio_id": params.audio_id.map(|a| a.to_string()),
    });
    receive(&state, &ids, Provider::Assemblyai, payload, &body).await
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

tokio::task_local! {
    /// Set while a refused webhook is replayed (`POST /v1/webhooks/rejections/{id}/replay`):
    /// a refusal is answered, not logged again, and a signature's age is no refusal.
    static REPLAYING: ();
}

/// Whether a refused webhook is being replayed.
pub(crate) fn replaying() -> bool {
    REPLAYING.try_with(|_| ()).is_ok()
}

/// Headers a verification reads, kept (sealed) with a refused webhook for its replay.
const KEPT_HEADERS: &[&str] = &[
    "content-type",
    "stripe-signature",
    "x-signalwire-signature",
    "x-twilio-signature",
    crate::audio::assemblyai::WEBHOOK_HEADER,
    "x-hub-signature-256",
    "x-bridge-signature",
    "x-bridge-session",
];
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

    /// The request sealed for a replay, if its body is small enough to keep.
    fn sealed(&self, state: &AppState) -> Option<String> {
        use base64::Engine;
        if self.body.len() > MAX_REPLAYABLE_BYTES {
            return None;
        }
        let headers: Vec<(&str, &str)> = KEPT_HEADERS
            .iter()
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
    provider: Provider,
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
    .bind(provider.as_str())
    .bind(rejection.code())
    .bind(signature)
    .bind(shape)
    .bind(body.len() as i32)
    .bind(REJECTIONS_KEPT)
    .bind(REJECTIONS_PER_MINUTE)
    .bind(digest)
    .bind(request.sealed(state))
    .execute(&state.pool)
    .await;
    if let Err(e) = logged {
        tracing::warn!(error = %e, "could not log a webhook rejection");
    }
    tracing::warn!(
        provider = provider.as_str(),
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
async fn stream_tenant(
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

/// Appends a verified webhook, once: a repeat finds it received and appends nothing.
async fn receive(
    state: &AppState,
    ids: &RequestIds,
    provider: Provider,
    payload: serde_json::Value,
    body: &[u8],
) -> Result<Response, Problem> {
    let (id, duplicate) = receive_item(state, ids, provider, payload, body).await?;
    Ok(Json(json!({"received": true, "id": id, "duplicate": duplicate})).into_response())
}

/// Appends one verified webhook unless it was received before: its id, and whether it was.
pub(crate) async fn receive_item(
    state: &AppState,
    ids: &RequestIds,
    provider: Provider,
    payload: serde_json::Value,
    body: &[u8],
) -> Result<(String, bool), Problem> {
    let identity = interpret::identify(provider, &payload)
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
    let id = webhook_id(provider, &identity.provider_event_id);
    // Attributed to the tenant of the payment it names, or of the number it concerns.
    let tenant = match (&identity.payment_id, provider) {
        (Some(p), _) => stream_tenant(&state.pool, PAYMENT, p).await?,
        (None, Provider::Signalwire) => {
            crate::telephony::routes::owner_of_callback(state, &payload).await?
        }
        (None, Provider::Assemblyai) => match payload.get("audio_id").and_then(|a| a.as_str()) {
            Some(audio) => stream_tenant(&state.pool, events::audio::AUDIO, audio).await?,
            None => None,
        },
        (None, Provider::Whatsapp) => {
            crate::whatsapp::routes::owner_of_item(state, &payload).await?
        }
        (None, _) => None,
    }
    .unwrap_or_else(|| PLATFORM_TENANT.to_owned());
    let metadata = ids.metadata(
        &tenant,
        &format!("webhook:{}", provider.as_str()),
        ActorKind::Anonymous,
    );
    let command = WebhookCommand::Receive {
        provider,
        provider_event_id: identity.provider_event_id,
        event_type: identity.event_type,
        payment_id: identity.payment_id,
        payload: interpret::retained(provider, &payload),
        body_sha256: Some(verify::hex_sha256(body)),
        at: state.clock.now(),
    };
    let c = state
        .webhooks
        .execute(&id, None, command, &metadata)
        .await?;
    Ok((id, c.appended == 0))
}

fn webhook_uuid(raw: &str) -> Result<String, Problem> {
    Uuid::parse_str(raw)
        .map(|u| u.to_string())
        .map_err(|_| WebhookError::NotFound.problem())
}

/// The metadata of a command caused by webhook `id`: the tenant of its stream, the platform
/// component `webhooks` as actor, the webhook's `Received` event as the cause.
pub(crate) fn caused_by(ids: &RequestIds, tenant: &str, id: &str) -> Metadata {
    let mut metadata = ids.metadata(tenant, "webhooks", ActorKind::System);
    metadata.causation_id = events::subject::message_id(WEBHOOK, id, 1);
    metadata
}

/// Processes a pending webhook: turns it into a payment command and records the outcome, or
/// the failure (retried later; dead-lettered after the last attempt). Only the platform's
/// process manager calls it.
async fn process(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    if !matches!(who, Principal::Service { .. }) {
        return Err(Problem::forbidden(
            "Webhooks are processed by the platform.",
        ));
    }
    let id = webhook_uuid(&raw)?;
    let webhook = state.webhooks.load(&id).await?;
    let Some(received) = webhook.received().cloned() else {
        return Err(WebhookError::NotFound.problem());
    };
    if !webhook.due(state.clock.now()) {
        // Processed, dead, or a retry asked for before its time: nothing to do now.
        let status = match webhook.status() {
            Status::Pending => "retrying",
            other => status_name(other),
        };
        return Ok(Json(json!({"id": id, "status": status})).into_response());
    }
    let tenant = stream_tenant(&state.pool, WEBHOOK, &id)
        .await?
        .unwrap_or_else(|| PLATFORM_TENANT.to_owned());
    let processing = match received.provider {
        Provider::Signalwire => {
            let metadata = |tenant: &str| caused_by(&ids, tenant, &id);
            let received_by = (tenant != PLATFORM_TENANT).then_some(tenant.as_str());
            crate::telephony::routes::process_callback(
                &state,
                &id,
                &received.payload,
                received_by,
                metadata,
            )
            .await
        }
        Provider::Assemblyai => {
            let metadata = |tenant: &str| caused_by(&ids, tenant, &id);
            crate::audio::routes::process_webhook(&state, &id, &received.payload, metadata).await
        }
        Provider::Whatsapp => {
            let metadata = |tenant: &str| caused_by(&ids, tenant, &id);
            let received_by = (tenant != PLATFORM_TENANT).then_some(tenant.as_str());
            crate::whatsapp::routes::process_webhook(
                &state,
                &id,
                &received.payload,
                received_by,
                metadata,
            )
            .await
        }
        provider => {
            let meaning = interpret::interpret(provider, &received.event_type, &received.payload);
            apply(&state, &ids, &id, provider, meaning).await
        }
    };
    let at = state.clock.now();
    let command = match &processing {
        Processing::Done(outcome, payment, detail) => WebhookCommand::RecordOutcome {
            outcome: *outcome,
            payment_id: payment.as_ref().and_then(|p| p.payment_id.clone()),
            tenant_id: payment.as_ref().map(|p| p.tenant_id.clone()),
            detail: detail.clone(),
            unmatched_reference: None,
            at,
        },
        Processing::Unmatched(reference) => WebhookCommand::RecordOutcome {
            outcome: Outcome::Ignored,
            payment_id: None,
            tenant_id: None,
            detail: UNMATCHED.into(),
            unmatched_reference: Some(reference.clone()),
            at,
        },
        Processing::Retry(error) => WebhookCommand::RecordFailure {
            error: error.clone(),
            at,
        },
        Processing::Held(tenant_id) => WebhookCommand::Hold {
            tenant_id: tenant_id.clone(),
            at,
        },
    };
    let (c, recorded) = state
        .webhooks
        .execute_with_events(&id, None, command, &caused_by(&ids, &tenant, &id))
        .await?;
    let dead = recorded
        .iter()
        .any(|e| matches!(e, WebhookEvent::DeadLettered { .. }));
    let body = match processing {
        Processing::Retry(error) if dead => json!({
            "id": id, "version": c.version, "status": "dead", "error": error,
        }),
        Processing::Done(outcome, payment, detail) => json!({
            "id": id, "version": c.version, "status": "processed", "outcome": outcome,
            "payment_id": payment.and_then(|p| p.payment_id), "detail": detail,
        }),
        Processing::Retry(error) => json!({
            "id": id, "version": c.version, "status": "retrying", "error": error,
        }),
        Processing::Held(tenant) => json!({
            "id": id, "version": c.version, "status": "held", "tenant_id": tenant,
        }),
        Processing::Unmatched(reference) => json!({
            "id": id, "version": c.version, "status": "processed", "outcome": Outcome::Ignored,
            "payment_id": null, "detail": UNMATCHED, "unmatched_reference": reference,
        }),
    };
    Ok(Json(body).into_response())
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::None => "none",
        Status::Pending => "pending",
        Status::Processed => "processed",
        Status::Dead => "dead",
    }
}

/// Why a webhook naming a provider reference no payment was paid with was not applied.
const UNMATCHED: &str = "no payment known for the provider's reference";

/// Turns a webhook's meaning into a payment command.
async fn apply(
    state: &AppState,
    ids: &RequestIds,
    webhook: &str,
    provider: Provider,
    meaning: interpret::Meaning,
) -> Processing {
    let ignored = |detail: &str| Processing::Done(Outcome::Ignored, None, detail.to_owned());
    let Some(status) = meaning.status else {
        return ignored(
            meaning
                .unhandled
                .unwrap_or("not an event the platform acts on"),
        );
    };
    let payment_id = match meaning.reference {
        Reference::Payment(id) => id,
        Reference::Provider(reference) => {
            // The payment paid (or charged again) through that transaction, from the event
            // store: committed is known. Only a refund must find one; a failure or expiry
            // naming an intent no payment was paid with is for nobody here.
            let found: Result<Option<String>, _> =
                sqlx::query_scalar(events::payments::lookups::PAID_WITH)
                    .bind(&reference)
                    .fetch_optional(&state.pool)
                    .await;
            match found {
                Ok(Some(id)) => id,
                Ok(None) if matches!(status, ProviderStatus::Refunded { .. }) => {
                    return Processing::Unmatched(reference)
                }
                Ok(None) => return ignored(UNMATCHED),
                Err(e) => {
                    tracing::warn!(error = %e, "payments read model unavailable");
                    return Processing::Retry("database unavailable".into());
                }
            }
        }
        Reference::None => return ignored("names no payment"),
    };
    let tenant = match stream_tenant(&state.pool, PAYMENT, &payment_id).await {
        Ok(Some(t)) => t,
        Ok(None) => return ignored("no such payment"),
        Err(_) => return Processing::Retry("database unavailable".into()),
    };
    let payment = Some(Attributed {
        payment_id: Some(payment_id.clone()),
        tenant_id: tenant.clone(),
    });
    let command = PaymentCommand {
        at: state.clock.now(),
        action: PaymentAction::ProviderStatus {
            webhook_id: webhook.to_owned(),
            provider: match provider {
                Provider::Stripe => PaymentProvider::Stripe,
                Provider::Lyra => PaymentProvider::Lyra,
                Provider::Signalwire | Provider::Assemblyai | Provider::Whatsapp => {
                    return ignored("not a payment provider")
                }
            },
            status,
        },
    };
    let metadata = caused_by(ids, &tenant, webhook);
    let events = match state
        .payments
        .execute_with_events(&payment_id, None, command, &metadata)
        .await
    {
        Ok((_, events)) => events,
        Err(CommandError::Rejected(_)) => return ignored("no such payment"),
        Err(e) => {
            tracing::warn!(error = %e, webhook, "payment command failed");
            return Processing::Retry("event store unavailable".into());
        }
    };
    // Nothing appended: the payment took this webhook into account before (an attempt whose
    // outcome was not recorded, or a replay). Its outcome is what the payment recorded then.
    let (event_type, reason) = match events.first() {
        Some(PaymentEvent::ProviderStatusIgnored { reason, .. }) => {
            ("ProviderStatusIgnored".to_owned(), Some(reason.clone()))
        }
        // A charge that does not pay the payment: tracked beside it, not applied to it.
        Some(PaymentEvent::ChargedAgain { reason, .. }) => {
            ("ChargedAgain".to_owned(), Some(reason.clone()))
        }
        Some(e) => (cqrs_es::DomainEvent::event_type(e), None),
        None => match recorded_for(&state.pool, &payment_id, webhook).await {
            Ok(Some(found)) => found,
            Ok(None) => return ignored("the payment holds no record of it"),
            Err(_) => return Processing::Retry("database unavailable".into()),
        },
    };
    let again = if events.is_empty() {
        " (recorded before)"
    } else {
        ""
    };
    match reason {
        Some(reason) => Processing::Done(Outcome::Recorded, payment, format!("{reason}{again}")),
        None => Processing::Done(Outcome::Applied, payment, format!("{event_type}{again}")),
    }
}

/// The payment event webhook `webhook` caused, and its reason when it was a status recorded
/// without being applied.
async fn recorded_for(
    pool: &PgPool,
    payment_id: &str,
    webhook: &str,
) -> Result<Option<(String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT event_type, payload->event_type->>'reason' FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2
            AND payload->event_type->>'webhook_id' = $3
          ORDER BY sequence LIMIT 1",
    )
    .bind(PAYMENT)
    .bind(payment_id)
    .bind(webhook)
    .fetch_optional(pool)
    .await
}

async fn replay(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let id = webhook_uuid(&raw)?;
    let tenant = stream_tenant(&state.pool, WEBHOOK, &id)
        .await?
        .ok_or_else(|| WebhookError::NotFound.problem())?;
    // Unattributed webhooks belong to the platform: only a super admin (or the platform's
    // own workers) replays them.
    let platform = who.is_super_admin() || matches!(who, Principal::Service { .. });
    if !platform && (tenant == PLATFORM_TENANT || !who.administers(&tenant)) {
        return Err(WebhookError::NotFound.problem());
    }
    let metadata = ids.metadata(&tenant, who.user_id(), who.actor_kind());
    let command = WebhookCommand::Replay {
        at: state.clock.now(),
    };
    let c = state
        .webhooks
        .execute(&id, None, command, &metadata)
        .await?;
    Ok(crate::http::accepted(
        StatusCode::OK,
        WEBHOOK,
        &c.aggregate_id,
        c.version,
    ))
}

/// A refused request, unsealed.
#[derive(serde::Deserialize)]
struct SealedRequest {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// `POST /v1/webhooks/rejections/{id}/replay` (super admins): a refused webhook, kept sealed
/// for a week, is verified again as it was received — with today's secrets and settings —
/// and, if it now passes, received (once: a webhook received since answers as a duplicate).
/// 404 for an unknown rejection, 410 `replay_expired` once its request is erased (or was
/// too large to keep), 422 `still_rejected` when it still fails.
async fn replay_rejection(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    use base64::Engine;
    if !who.is_super_admin() {
        return Err(Problem::forbidden(
            "Refused webhooks belong to no tenant: super admins replay them.",
        ));
    }
    let not_found = || Problem::not_found("no such rejected webhook");
    let id: i64 = raw.parse().map_err(|_| not_found())?;
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
    let body = axum::body::Bytes::from(body);
    let state_for = state.clone();
    let answer = REPLAYING
        .scope((), async move {
            let state = State(state_for);
            match uri.path() {
                "/api/webhooks/stripe" => stripe(state, ids, uri, headers, RawBody(body)).await,
                "/api/webhooks/lyra" => lyra(state, ids, uri, headers, RawBody(body)).await,
                "/api/webhooks/signalwire" => {
                    signalwire(state, ids, headers, uri, RawBody(body)).await
                }
                "/api/webhooks/assemblyai" => {
                    let params: AssemblyAiParams =
                        serde_urlencoded::from_str(uri.query().unwrap_or_default()).map_err(
                            |_| Problem::bad_request("invalid_query", "The query is not valid."),
                        )?;
                    assemblyai(
                        state,
                        ids,
                        uri,
                        headers,
                        events::http::Query(params),
                        RawBody(body),
                    )
                    .await
                }
                "/api/webhooks/whatsapp" => {
                    crate::whatsapp::routes::deliver(state, ids, uri, headers, RawBody(body)).await
                }
                "/api/webhooks/whatsapp/bridge" => {
                    crate::whatsapp::routes::bridge_delivery(
                        state,
                        uri,
                        ids,
                        headers,
                        RawBody(body),
                    )
                    .await
                }
                _ => Err(Problem::unprocessable(
                    "still_rejected",
                    "The webhook was sent to no webhook endpoint.",
                )),
            }
        })
        .await?;
    // Passed: the rejection says what it became.
    let (parts, answer_body) = answer.into_parts();
    let bytes = axum::body::to_bytes(answer_body, 1024 * 1024)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let received: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
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
    Ok(Response::from_parts(parts, axum::body::Body::from(bytes)))
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
