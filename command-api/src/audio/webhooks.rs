//! AssemblyAI's webhooks (`POST /api/webhooks/assemblyai?audio_id=…`): authenticated by the
//! secret header the platform set on the request, attributed to the audio file the URL
//! names, and processed into the file's transcript.

use axum::http::Request;
use axum::response::Response;
use events::http::{Problem, Query};
use events::webhooks::Provider;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::webhooks::provider::{
    text, Identity, NotProviderShaped, Pending, WebhookProvider, WebhookRequest,
};
use crate::webhooks::service::{receive, reject, stream_tenant, Processing, Refused};
use crate::webhooks::verify;
use crate::AppState;

/// AssemblyAI's webhooks.
pub(crate) struct AssemblyAiWebhooks;
/// The provider.
pub(crate) const ASSEMBLYAI: AssemblyAiWebhooks = AssemblyAiWebhooks;

/// The query of AssemblyAI's webhook URL (the platform names the audio file in it).
#[derive(Debug, serde::Deserialize)]
pub struct AssemblyAiParams {
    /// The audio file the transcript is for.
    #[serde(default)]
    pub audio_id: Option<Uuid>,
}

#[async_trait::async_trait]
impl WebhookProvider for AssemblyAiWebhooks {
    fn provider(&self) -> Provider {
        Provider::Assemblyai
    }

    fn paths(&self) -> &'static [&'static str] {
        &["/api/webhooks/assemblyai"]
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[super::assemblyai::WEBHOOK_HEADER]
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
        // The query is read as every route reads one (400 `invalid_query`), before the secret.
        let (mut parts, ()) = Request::builder()
            .uri(uri.clone())
            .body(())
            .map_err(|_| Problem::bad_request("invalid_query", "The query is not valid."))?
            .into_parts();
        let Query(params) = <Query<AssemblyAiParams> as axum::extract::FromRequestParts<
            AppState,
        >>::from_request_parts(&mut parts, state)
        .await?;
        let provided = headers
            .get(super::assemblyai::WEBHOOK_HEADER)
            .map(|v| v.to_str().unwrap_or("\u{fffd}"));
        let expected = state
            .ctx
            .audio
            .assemblyai
            .as_ref()
            .map_or(&[][..], |c| c.webhook_secrets());
        if let Err(r) = verify::secret_header(provided, expected) {
            let request = Refused::new(&uri, &headers, &body);
            return Err(reject(state, self, r, None, &request).await);
        }
        let parsed: Value = serde_json::from_slice(&body)
            .map_err(|_| Problem::bad_request("invalid_payload", "The body is not JSON."))?;
        let field = |k: &str| parsed.get(k).cloned().unwrap_or(Value::Null);
        let payload = json!({
            "transcript_id": field("transcript_id"),
            "status": field("status"),
            "audio_id": params.audio_id.map(|a| a.to_string()),
        });
        receive(state, &ids, self, payload, &body).await
    }

    fn identify(&self, body: &Value) -> Result<Identity, NotProviderShaped> {
        let transcript = text(body, "/transcript_id")
            .filter(|t| t.len() <= 128)
            .ok_or(NotProviderShaped(
                "an AssemblyAI webhook has a transcript_id",
            ))?;
        let status = text(body, "/status")
            .filter(|s| s.len() <= 32)
            .ok_or(NotProviderShaped("an AssemblyAI webhook has a status"))?;
        Ok(Identity {
            provider_event_id: format!("{transcript}:{status}"),
            event_type: format!("transcript.{status}"),
            payment_id: None,
        })
    }

    /// The tenant of the audio file the webhook's URL names.
    async fn owner(
        &self,
        state: &AppState,
        _identity: &Identity,
        payload: &Value,
    ) -> Result<Option<String>, Problem> {
        match payload.get("audio_id").and_then(Value::as_str) {
            Some(audio) => stream_tenant(&state.pool, events::audio::AUDIO, audio).await,
            None => Ok(None),
        }
    }

    async fn process(&self, state: &AppState, webhook: &Pending<'_>) -> Processing {
        super::service::process_webhook(state, webhook.id, webhook.payload, |tenant| {
            webhook.metadata(tenant)
        })
        .await
    }
}
