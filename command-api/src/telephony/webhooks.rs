//! SignalWire's callbacks (`POST /api/webhooks/signalwire`): signed for the public URL they
//! were sent to (`BACKEND_URL` and the path), attributed to the tenant owning the number
//! (or the SMS or call already recorded), and processed into SMS, calls and the contact's
//! SMS thread.

use axum::response::Response;
use events::http::Problem;
use events::webhooks::Provider;
use serde_json::Value;

use super::interpret;
use super::signature::{self, SignalwireBody};
use crate::webhooks::provider::{
    Identity, NotProviderShaped, Pending, WebhookProvider, WebhookRequest,
};
use crate::webhooks::service::{receive, reject, Processing, Refused};
use crate::webhooks::verify::Rejection;
use crate::AppState;

/// SignalWire's callbacks.
pub(crate) struct SignalwireWebhooks;
/// The provider.
pub(crate) const SIGNALWIRE: SignalwireWebhooks = SignalwireWebhooks;

#[async_trait::async_trait]
impl WebhookProvider for SignalwireWebhooks {
    fn provider(&self) -> Provider {
        Provider::Signalwire
    }

    fn paths(&self) -> &'static [&'static str] {
        &["/api/webhooks/signalwire"]
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &["x-signalwire-signature", "x-twilio-signature"]
    }

    async fn deliver(
        &self,
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
        let request = Refused::new(&uri, &headers, &body);
        let signed = header("x-signalwire-signature").or(header("x-twilio-signature"));
        let json = header("content-type").is_some_and(|t| t.starts_with("application/json"));
        let Some(url) = super::service::public_url(state, &uri) else {
            let r = Rejection::NotConfigured;
            return Err(reject(state, self, r, signed, &request).await);
        };
        let form: Vec<(String, String)> = if json {
            Vec::new()
        } else {
            match serde_urlencoded::from_bytes(&body) {
                Ok(form) => form,
                Err(_) => {
                    return Err(reject(state, self, Rejection::Malformed, signed, &request).await)
                }
            }
        };
        let scheme = if json {
            SignalwireBody::Json(&body)
        } else {
            SignalwireBody::Form(&form)
        };
        let keys = &state.ctx.telephony.signing_keys;
        if let Err(r) = signature::signalwire(signed, &url, scheme, keys) {
            return Err(reject(state, self, r, signed, &request).await);
        }
        let payload = if json {
            let parsed: Value = serde_json::from_slice(&body)
                .map_err(|_| Problem::bad_request("invalid_payload", "The body is not JSON."))?;
            interpret::json_payload(&parsed)
        } else {
            interpret::form_payload(&form)
        };
        receive(state, &ids, self, payload, &body).await
    }

    fn identify(&self, body: &Value) -> Result<Identity, NotProviderShaped> {
        interpret::identify(body)
    }

    async fn owner(
        &self,
        state: &AppState,
        _identity: &Identity,
        payload: &Value,
    ) -> Result<Option<String>, Problem> {
        super::service::owner_of_callback(state, payload).await
    }

    async fn process(&self, state: &AppState, webhook: &Pending<'_>) -> Processing {
        let (id, payload, received_by) = (webhook.id, webhook.payload, webhook.received_by);
        super::service::process_callback(state, id, payload, received_by, |t| webhook.metadata(t))
            .await
    }
}
