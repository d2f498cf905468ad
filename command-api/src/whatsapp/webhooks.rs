//! WhatsApp deliveries through the webhook layer: the Cloud API's (`POST
//! /api/webhooks/whatsapp`, signed with the app secret of the numbers it names, or the
//! platform's) and a bridge's (`POST /api/webhooks/whatsapp/bridge`, signed with its session's
//! bridge secret). Each message and status of a delivery is a webhook of its own, attributed
//! to the tenant whose session holds the number, and processed into its conversation.

use axum::response::{IntoResponse, Response};
use events::http::{Json, Problem, RequestIds};
use events::whatsapp::{session_id, Transport};
use serde_json::{json, Value};
use uuid::Uuid;

use super::aggregate::SessionError;
use super::inbound;
use super::service::{credentials, opened, owner_of_item, process_webhook};
use crate::http::error::DomainProblem;
use crate::webhooks::provider::WebhookRequest;
use crate::webhooks::provider::{text, Identity, NotProviderShaped, Pending, WebhookProvider};
use crate::webhooks::service::{receive_item, reject, Processing, Refused};
use crate::webhooks::verify;
use crate::AppState;
use axum::extract::State;
use events::webhooks::Provider;
use utoipa_axum::router::UtoipaMethodRouter;
use utoipa_axum::routes;

/// WhatsApp's deliveries.
pub(crate) struct WhatsappWebhooks;
/// The provider.
pub(crate) const WHATSAPP: WhatsappWebhooks = WhatsappWebhooks;

/// Where a bridge posts what it saw.
const BRIDGE_PATH: &str = "/api/webhooks/whatsapp/bridge";

#[async_trait::async_trait]
impl WebhookProvider for WhatsappWebhooks {
    fn provider(&self) -> Provider {
        Provider::Whatsapp
    }

    fn routes(&self) -> Vec<UtoipaMethodRouter<AppState>> {
        vec![routes!(cloud_delivery), routes!(bridge_ingestion)]
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[
            "x-hub-signature-256",
            "x-bridge-signature",
            "x-bridge-session",
        ]
    }

    async fn deliver(
        &self,
        state: &AppState,
        request: WebhookRequest,
    ) -> Result<Response, Problem> {
        if request.uri.path() == BRIDGE_PATH {
            bridge_delivery(state, request).await
        } else {
            deliver(state, request).await
        }
    }

    fn identify(&self, body: &Value) -> Result<Identity, NotProviderShaped> {
        // One message or status of a delivery (`inbound::items`), keyed under its
        // number: ids are chosen by the provider (or a tenant's bridge), so one number's
        // cannot pre-empt another's.
        let number = text(body, "/phone_number_id")
            .filter(|n| n.len() <= 64)
            .ok_or(NotProviderShaped(
                "a WhatsApp item names its phone number id",
            ))?;
        let (key, event_type) = match (body.get("message"), body.get("status")) {
            (Some(m), _) => {
                let id = text(m, "/id").filter(|i| i.len() <= 256);
                let kind = text(m, "/type").unwrap_or("unknown");
                let id = id.ok_or(NotProviderShaped("a WhatsApp message has an id"))?;
                (format!("message:{number}:{id}"), format!("message.{kind}"))
            }
            (None, Some(s)) => {
                let id = text(s, "/id").filter(|i| i.len() <= 256);
                let id = id.ok_or(NotProviderShaped("a WhatsApp status has an id"))?;
                let status = text(s, "/status")
                    .filter(|s| s.len() <= 32)
                    .ok_or(NotProviderShaped("a WhatsApp status has a status"))?;
                (
                    format!("status:{number}:{id}:{status}"),
                    format!("status.{status}"),
                )
            }
            (None, None) => return Err(NotProviderShaped("a WhatsApp message or status")),
        };
        Ok(Identity {
            provider_event_id: key,
            event_type: event_type.chars().take(64).collect(),
            payment_id: None,
        })
    }

    /// The contact: a message's sender, a status's recipient.
    async fn data_subject(
        &self,
        pool: &sqlx::PgPool,
        tenant: &str,
        payload: &Value,
    ) -> Result<Option<Uuid>, sqlx::Error> {
        // A status of a message the platform sent is about that message's contact, whatever
        // id WhatsApp reports the recipient under.
        let callback = payload
            .pointer("/status/biz_opaque_callback_data")
            .and_then(Value::as_str);
        if let Some(message) = callback {
            if let Some(contact) = contact_of_message(pool, tenant, message).await? {
                return Ok(Some(contact));
            }
        }
        let contact = payload
            .pointer("/message/from")
            .or(payload.pointer("/status/recipient_id"))
            .and_then(Value::as_str);
        Ok(contact.and_then(|c| events::whatsapp::contact_subject(tenant, c)))
    }

    async fn owner(
        &self,
        state: &AppState,
        _identity: &Identity,
        payload: &Value,
    ) -> Result<Option<String>, Problem> {
        owner_of_item(state, payload).await
    }

    async fn process(&self, state: &AppState, webhook: &Pending<'_>) -> Processing {
        let (id, payload, received_by) = (webhook.id, webhook.payload, webhook.received_by);
        process_webhook(state, id, payload, received_by, |t| webhook.metadata(t)).await
    }
}

/// `POST /api/webhooks/whatsapp/bridge`: what a bridge worker saw (messages, statuses),
/// shaped as the Cloud API's `value` object, for the session `X-Bridge-Session` names and
/// signed with its bridge secret (`X-Bridge-Signature: sha256=` HMAC-SHA256 of the raw
/// body). From there on it is a Cloud API delivery: one webhook per message and status.
pub(crate) async fn bridge_delivery(
    state: &AppState,
    request: WebhookRequest,
) -> Result<Response, Problem> {
    let WebhookRequest {
        ids,
        uri,
        headers,
        body,
    } = request;
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let signature = header("x-bridge-signature");
    let session = header("x-bridge-session").and_then(|s| Uuid::parse_str(s).ok());
    let found = match session {
        Some(id) => Some(state.ctx.whatsapp.sessions.load(&id.to_string()).await?),
        None => None,
    }
    .filter(|s| s.transport() == Transport::Bridge && s.tenant_id().is_some());
    let secret = match (&found, session) {
        (Some(s), Some(id)) => opened(state, s, &id.to_string()).map(|c| c.app_secret),
        _ => None,
    };
    let secrets: Vec<String> = secret.into_iter().collect();
    if let Err(r) = super::signature::whatsapp(signature, &body, &secrets) {
        let request = Refused::new(&uri, &headers, &body);
        return Err(reject(state, &super::webhooks::WHATSAPP, r, signature, &request).await);
    }
    let Some(session) = found else {
        return Err(SessionError::NotFound.problem());
    };
    let value: Value = serde_json::from_slice(&body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| Problem::bad_request("invalid_payload", "The body is not a JSON object."))?;
    let mut value = value;
    value["metadata"] = json!({"phone_number_id": session.phone_number_id()});
    let delivery = json!({"object": "whatsapp_business_account",
                          "entry": [{"id": "bridge", "changes": [{"field": "messages", "value": value}]}]});
    receive_delivery(state, &ids, &delivery, &body).await
}

/// The app secret of session `id`, if it has one this process can open.
async fn app_secret(state: &AppState, id: &str) -> Result<Option<String>, Problem> {
    Ok(credentials(state, id).await?.map(|c| c.app_secret))
}

/// `POST /api/webhooks/whatsapp`: a delivery signed by the app secret of the sessions it
/// names (or the platform's). Each message and status is appended as a webhook of its own
/// before the answer.
pub(crate) async fn deliver(
    state: &AppState,
    request: WebhookRequest,
) -> Result<Response, Problem> {
    let WebhookRequest {
        ids,
        uri,
        headers,
        body,
    } = request;
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let signature = headers
        .get("x-hub-signature-256")
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    // The platform's app may sign for any number. Otherwise every number the (not yet
    // trusted) body names must be a session whose own app secret signed it, so one tenant's
    // app cannot speak for another tenant's number.
    let platform =
        super::signature::whatsapp(signature, &body, &state.ctx.whatsapp.settings.app_secrets);
    if platform.is_err() {
        let numbers: Vec<String> = parsed.iter().flat_map(inbound::phone_number_ids).collect();
        let mut verdict = Err(verify::Rejection::Mismatch);
        if !numbers.is_empty() && numbers.len() <= 8 {
            verdict = Ok(());
            for number in &numbers {
                if number.len() > 64 {
                    verdict = Err(verify::Rejection::Mismatch);
                    break;
                }
                let secrets: Vec<String> = app_secret(state, &session_id(number))
                    .await?
                    .into_iter()
                    .collect();
                if let Err(r) = super::signature::whatsapp(signature, &body, &secrets) {
                    // A number no session has: nothing of it can have signed.
                    verdict = Err(match r {
                        verify::Rejection::NotConfigured => verify::Rejection::Mismatch,
                        r => r,
                    });
                    break;
                }
            }
        }
        if let Err(r) = verdict {
            // A missing or malformed header says so, whatever the numbers.
            let r = match platform {
                Err(
                    p @ (verify::Rejection::Missing
                    | verify::Rejection::Malformed
                    | verify::Rejection::Unsupported),
                ) => p,
                _ => r,
            };
            let request = Refused::new(&uri, &headers, &body);
            return Err(reject(state, &super::webhooks::WHATSAPP, r, signature, &request).await);
        }
    }
    let parsed =
        parsed.ok_or_else(|| Problem::bad_request("invalid_payload", "The body is not JSON."))?;
    receive_delivery(state, &ids, &parsed, &body).await
}

/// Appends each message and status of a verified delivery as a webhook of its own: their
/// ids, and how many were received before.
async fn receive_delivery(
    state: &AppState,
    ids: &RequestIds,
    delivery: &Value,
    body: &[u8],
) -> Result<Response, Problem> {
    let items = inbound::items(delivery).map_err(|e| Problem::bad_request("invalid_payload", e))?;
    // Every item is checked before any is kept: a delivery is taken whole or refused whole.
    for item in &items {
        crate::webhooks::provider::identify(&super::webhooks::WHATSAPP, &item.payload)
            .map_err(|e| Problem::bad_request("invalid_payload", e.0))?;
    }
    let mut received = Vec::with_capacity(items.len());
    let mut duplicates = 0;
    for item in items {
        let (id, duplicate) =
            receive_item(state, ids, &super::webhooks::WHATSAPP, item.payload, body).await?;
        duplicates += usize::from(duplicate);
        received.push(id);
    }
    let answer = WhatsAppWebhookReceived {
        received: true,
        ids: received,
        duplicates,
    };
    Ok(Json(answer).into_response())
}

/// The answer to a delivery: it is accepted (a 2xx stops the provider's retries); its
/// messages and statuses are processed afterwards, each as a webhook of its own.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct WhatsAppWebhookReceived {
    /// Always `true`.
    received: bool,
    /// The webhooks' ids, in the body's order (for each change, its messages then its
    /// statuses); derived from provider and de-duplication key, so the same for every
    /// delivery of one item (read them on query-api's `GET /v1/webhooks/{id}`). Empty when
    /// the body held none.
    #[schema(value_type = Vec<Uuid>)]
    ids: Vec<String>,
    /// How many of them were received before (nothing was appended for those).
    duplicates: usize,
}

/// Receive a WhatsApp Cloud API delivery.
///
/// Meta's webhook for the WhatsApp Business Cloud API (callback
/// `{BACKEND_URL}/api/webhooks/whatsapp`, field `messages`). A delivery batches entries,
/// changes, messages and statuses, possibly for several numbers. Verification:
/// `X-Hub-Signature-256: sha256=<hex>` is the HMAC-SHA256 of the raw body keyed by a Meta app's
/// secret, compared in constant time. A secret of WHATSAPP_APP_SECRET (the platform's own apps,
/// comma-separated) accepts the whole body; otherwise every number the body names
/// (`entry[].changes[].value.metadata.phone_number_id`: 1 to 8 distinct, each at most 64
/// characters; the body is read untrusted only to find them) must be a session's whose own app
/// secret matches, so one tenant's app cannot speak for another tenant's number. No header:
/// `missing_signature`; no `=`, or not 32 bytes of hex: `malformed_signature`; a scheme other
/// than `sha256`: `unsupported_algorithm`; no match (including a body naming no number, more
/// than 8, or a number no session has, when the platform's secrets do not match):
/// `bad_signature`. A refusal answers 401 with the `code` given above, appends nothing and
/// writes one line to the capped rejection log (query-api `GET /v1/webhooks/rejections`,
/// provider `whatsapp`). The body (at most 1 MiB; 413 above) must then be JSON with `object:
/// whatsapp_business_account` and an `entry` array; a message needs an `id`, a status an `id`
/// and a `status` (ids at most 256 characters, a status at most 32); 400 `invalid_payload`
/// otherwise (a retry cannot succeed). Changes without `metadata.phone_number_id` (account or
/// template updates) are acknowledged and not kept. Each message and each status is kept as a
/// webhook of its own (Received, provider `whatsapp`), de-duplication key
/// `message:{phone_number_id}:{id}` (event type `message.{type}`) or
/// `status:{phone_number_id}:{id}:{status}` (`status.{status}`), so a repeated delivery, or a
/// batch overlapping an earlier one, appends only what is new; kept: `{phone_number_id,
/// display_phone_number, contact: {wa_id, name}, message}` or `{phone_number_id,
/// display_phone_number, status}`. It is attributed to the tenant whose session has the number
/// (`platform` otherwise) and processed afterwards by the platform (`POST
/// /v1/webhooks/{id}/process`): a message is recorded in its conversation (MessageReceived,
/// aggregate `whatsapp_conversation`; it opens the 24-hour customer-service window) and
/// delivered into the contact's open thread of channel `whatsapp` (a new one when none is
/// open); the file of an image, audio, video, document or sticker is then fetched into the blob
/// store (MediaStored or MediaFailed; the message lands whatever becomes of its file); a status
/// (`sent`, `delivered`, `read`, `failed`) moves an outbound message forward only
/// (StatusUpdated; `failed` from any state, nothing after it), naming it by
/// `biz_opaque_callback_data` or its `wamid`. An item for a number no session has is recorded
/// as `ignored` under `platform` and can be replayed once the number is connected. Answered at
/// once, before processing. Providers send no `Idempotency-Key`: de-duplication is by the
/// provider's ids. Allowed: anyone (no bearer token: the signature authenticates the provider).
#[utoipa::path(
    post,
    path = "/api/webhooks/whatsapp",
    params(("X-Hub-Signature-256" = String, Header, description = "`sha256=` and the hex HMAC-SHA256 of the raw body under the app secret. Missing: 401 `missing_signature`.")),
    request_body(content = serde_json::Value, content_type = "application/json", description = "The delivery, byte for byte as Meta sent it (the signature covers the raw bytes; the media type is not checked). Provider-shaped: fields not listed are kept in the items or ignored."),
    responses(
        (status = 200, description = "Received (new items, duplicates, or none).", body = WhatsAppWebhookReceived),
        (status = 401, response = events::http::openapi::ProblemAnswer),
        (status = 409, response = events::http::openapi::ProblemAnswer)
    )
)]
async fn cloud_delivery(
    State(state): State<AppState>,
    request: WebhookRequest,
) -> Result<Response, Problem> {
    WHATSAPP.deliver(&state, request).await
}

/// Receive a bridge worker's delivery.
///
/// What a session's bridge worker saw (the contact's messages, statuses of the messages it
/// sent), shaped as the Cloud API's change `value`. Verification: `X-Bridge-Session` names the
/// session, and `X-Bridge-Signature: sha256=<hex>` must be the HMAC-SHA256 of the raw body
/// under its bridge secret (constant-time comparison). No such bridge session (the header
/// missing, not a UUID, unknown, a Cloud API session, or a secret this process cannot open):
/// `not_configured`; no signature: `missing_signature`; no `=`, or not 32 bytes of hex:
/// `malformed_signature`; a scheme other than `sha256`: `unsupported_algorithm`; no match:
/// `bad_signature`. A refusal answers 401 with the `code` given above, appends nothing and
/// writes one line to the capped rejection log (query-api `GET /v1/webhooks/rejections`,
/// provider `whatsapp`). The verified body must be a JSON object (400 `invalid_payload`
/// otherwise); its `metadata` is replaced by the session's phone number id, and from there on
/// it is a Cloud API delivery. A message needs an `id`, a status an `id` and a `status` (ids at
/// most 256 characters, a status at most 32); 400 `invalid_payload` otherwise (a retry cannot
/// succeed). Each message and each status is kept as a webhook of its own (Received, provider
/// `whatsapp`), de-duplication key `message:{phone_number_id}:{id}` (event type
/// `message.{type}`) or `status:{phone_number_id}:{id}:{status}` (`status.{status}`), so a
/// repeated delivery, or a batch overlapping an earlier one, appends only what is new; kept:
/// `{phone_number_id, display_phone_number, contact: {wa_id, name}, message}` or
/// `{phone_number_id, display_phone_number, status}`. It is attributed to the tenant whose
/// session has the number (`platform` otherwise) and processed afterwards by the platform
/// (`POST /v1/webhooks/{id}/process`): a message is recorded in its conversation
/// (MessageReceived, aggregate `whatsapp_conversation`; it opens the 24-hour customer-service
/// window) and delivered into the contact's open thread of channel `whatsapp` (a new one when
/// none is open); the file of an image, audio, video, document or sticker is then fetched into
/// the blob store (MediaStored or MediaFailed; the message lands whatever becomes of its file);
/// a status (`sent`, `delivered`, `read`, `failed`) moves an outbound message forward only
/// (StatusUpdated; `failed` from any state, nothing after it), naming it by
/// `biz_opaque_callback_data` or its `wamid`. An item for a number no session has is recorded
/// as `ignored` under `platform` and can be replayed once the number is connected. A status
/// settles a message handed to the worker. The body is limited to 1 MiB (413 above). Allowed:
/// anyone (no bearer token: the signature authenticates the worker).
#[utoipa::path(
    post,
    path = BRIDGE_PATH,
    params(("X-Bridge-Session" = Uuid, Header, description = "The bridge session the delivery is for."), ("X-Bridge-Signature" = String, Header, description = "`sha256=` and the hex HMAC-SHA256 of the raw body under the session's bridge secret. Missing: 401 `missing_signature`.")),
    request_body(content = serde_json::Value, content_type = "application/json", description = "A Cloud API change `value` (`contacts`, `messages`, `statuses`), byte for byte as signed."),
    responses(
        (status = 200, description = "Received (new items, duplicates, or none).", body = WhatsAppWebhookReceived),
        (status = 401, response = events::http::openapi::ProblemAnswer),
        (status = 409, response = events::http::openapi::ProblemAnswer)
    )
)]
async fn bridge_ingestion(
    State(state): State<AppState>,
    request: WebhookRequest,
) -> Result<Response, Problem> {
    WHATSAPP.deliver(&state, request).await
}

/// The contact of the conversation of `tenant` that queued outbound message `message_id`,
/// if there is one: named by its `Started` event (their sealed id names them).
async fn contact_of_message(
    pool: &sqlx::PgPool,
    tenant: &str,
    message_id: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    let started: Option<(String, String)> = sqlx::query_as(
        "SELECT s.payload->'Started'->>'tenant_id', s.payload->'Started'->>'wa_id'
           FROM events q
           JOIN events s ON s.aggregate_type = q.aggregate_type
                        AND s.aggregate_id = q.aggregate_id AND s.sequence = 1
          WHERE q.aggregate_type = 'whatsapp_conversation' AND q.event_type = 'MessageQueued'
            AND q.payload->'MessageQueued'->>'message_id' = $1
          LIMIT 1",
    )
    .bind(message_id)
    .fetch_optional(pool)
    .await?;
    Ok(started
        .filter(|(owner, _)| owner == tenant)
        .and_then(|(_, wa_id)| events::whatsapp::contact_subject(tenant, &wa_id)))
}
