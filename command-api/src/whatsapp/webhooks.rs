//! WhatsApp deliveries through the webhook layer: the Cloud API's (`POST
//! /api/webhooks/whatsapp`, signed with the app secret of the numbers it names, or the
//! platform's) and a bridge's (`POST /api/webhooks/whatsapp/bridge`, signed with its session's
//! bridge secret). Each message and status of a delivery is a webhook of its own, attributed
//! to the tenant whose session holds the number, and processed into its conversation.

use axum::response::Response;
use events::http::Problem;
use events::webhooks::Provider;
use serde_json::Value;

use crate::webhooks::provider::{
    text, Identity, NotProviderShaped, Pending, WebhookProvider, WebhookRequest,
};
use crate::webhooks::service::Processing;
use crate::AppState;

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
            super::routes::bridge_delivery(state, request).await
        } else {
            super::routes::deliver(state, request).await
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
        super::routes::owner_of_item(state, payload).await
    }

    async fn process(&self, state: &AppState, webhook: &Pending<'_>) -> Processing {
        let (id, payload, received_by) = (webhook.id, webhook.payload, webhook.received_by);
        super::routes::process_webhook(state, id, payload, received_by, |t| webhook.metadata(t))
            .await
    }
}
