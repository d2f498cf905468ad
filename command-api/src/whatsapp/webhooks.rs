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
use events::webhooks::Provider;

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

    fn paths(&self) -> &'static [&'static str] {
        &["/api/webhooks/whatsapp", BRIDGE_PATH]
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
    Ok(Json(json!({"received": true, "ids": received, "duplicates": duplicates})).into_response())
}
