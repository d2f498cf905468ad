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
use axum::extract::State;
use utoipa_axum::router::UtoipaMethodRouter;
use utoipa_axum::routes;

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

    fn routes(&self) -> Vec<UtoipaMethodRouter<AppState>> {
        vec![routes!(assemblyai_delivery)]
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

/// Receive an AssemblyAI webhook.
///
/// AssemblyAI's webhook URL, as the platform names it with each transcript it requests
/// (`{BACKEND_URL}/api/webhooks/assemblyai?audio_id={id}`, see `POST
/// /v1/audio/{id}/transcribe`). Verification: the header `x-webhook-secret` (AssemblyAI's
/// `webhook_auth_header_name`) must carry ASSEMBLYAI_WEBHOOK_SECRET (derived from the token
/// secret when unset), compared in constant time (both reduced to HMACs under one key, so
/// neither contents nor lengths show in the timing). Transcription not configured
/// (ASSEMBLYAI_API_KEY or BACKEND_URL unset): `not_configured`; no header: `missing_signature`;
/// another value: `bad_signature`. `audio_id` must be a UUID when present (400 `invalid_query`,
/// answered before verification). The verified body must be JSON with `transcript_id` (at most
/// 128 characters) and `status` (at most 32) (400 `invalid_payload` otherwise); only those two
/// and `audio_id` are kept. De-duplication key: `{transcript_id}:{status}` (event type
/// `transcript.{status}`). The body (at most 1 MiB; 413 above) is verified before anything
/// parses it. A refusal answers 401 with the `code` given above (`not_configured`: no secret
/// can be expected, so nothing is accepted), appends nothing and writes one line to the capped
/// rejection log (query-api `GET /v1/webhooks/rejections`). A verified body that is not what
/// the provider sends answers 400 `invalid_payload` (a retry cannot succeed). A verified
/// webhook appends Received once per de-duplication key and is answered at once (no provider
/// call in the request); a repeat delivery answers 200 with `duplicate: true` and appends
/// nothing. It is attributed to the tenant of the audio file `audio_id` names (`platform` when
/// it names none, or an unknown one), and processed afterwards by the platform (`POST
/// /v1/webhooks/{id}/process`): AssemblyAI `GET /v2/transcript/{transcript_id}` is fetched and,
/// for the transcript the file awaits, `completed` appends TranscriptCompleted (text, words
/// with `start_ms`/`end_ms`/`confidence`, language, confidence) and `error` appends
/// TranscriptFailed on aggregate `audio` (outcome `applied`, `detail` the event); a webhook for
/// another transcript, or once the transcript is final, changes nothing (outcome `recorded`);
/// no or an unknown audio file, or a transcript AssemblyAI does not know (4xx): `ignored`; a
/// transcript not final yet (`queued`, `processing`), or AssemblyAI unreachable: retried.
/// Providers send no `Idempotency-Key`: de-duplication is by the provider's event. Allowed:
/// anyone (no bearer token: the shared secret authenticates the provider).
#[utoipa::path(
    post,
    path = "/api/webhooks/assemblyai",
    params(("audio_id" = Option<Uuid>, Query, description = "The audio file the transcript is for (set by the platform in the webhook URL)."), ("x-webhook-secret" = String, Header, description = "ASSEMBLYAI_WEBHOOK_SECRET, as the platform gave it to AssemblyAI (`webhook_auth_header_value`). Missing: 401 `missing_signature`.")),
    request_body(content = AssemblyAiNotification, content_type = "application/json", description = "AssemblyAI's notification, as sent. Other fields are ignored."),
    responses(
        (status = 200, description = "Received (new, or a duplicate: see `duplicate`).", body = crate::webhooks::service::WebhookReceived),
        (status = 401, response = events::http::openapi::ProblemAnswer),
        (status = 409, response = events::http::openapi::ProblemAnswer)
    )
)]
async fn assemblyai_delivery(
    State(state): State<AppState>,
    request: WebhookRequest,
) -> Result<Response, Problem> {
    ASSEMBLYAI.deliver(&state, request).await
}

/// AssemblyAI's notification, as sent. Other fields are ignored.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct AssemblyAiNotification {
    /// AssemblyAI's transcript id.
    #[schema(min_length = 1, max_length = 128)]
    transcript_id: String,
    /// `completed` or `error` (what is applied is read from `GET /v2/transcript/{id}`).
    #[schema(max_length = 32, example = "completed")]
    status: String,
}
