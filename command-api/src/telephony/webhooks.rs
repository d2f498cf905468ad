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
use axum::extract::State;
use utoipa_axum::router::UtoipaMethodRouter;
use utoipa_axum::routes;

/// SignalWire's callbacks.
pub(crate) struct SignalwireWebhooks;
/// The provider.
pub(crate) const SIGNALWIRE: SignalwireWebhooks = SignalwireWebhooks;

#[async_trait::async_trait]
impl WebhookProvider for SignalwireWebhooks {
    fn provider(&self) -> Provider {
        Provider::Signalwire
    }

    fn routes(&self) -> Vec<UtoipaMethodRouter<AppState>> {
        vec![routes!(signalwire_delivery)]
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

    /// The other party: who texted or called the tenant's number, or whom it texted or
    /// called; for a recording callback, which names no one, the call's recorded other
    /// party (a RELAY event names no one).
    async fn data_subject(
        &self,
        pool: &sqlx::PgPool,
        tenant: &str,
        payload: &Value,
    ) -> Result<Option<uuid::Uuid>, sqlx::Error> {
        use events::telephony::Direction;
        use interpret::Callback;
        let number = match interpret::read(payload) {
            Callback::Sms { report, .. } => report.other_party().to_owned(),
            Callback::Call {
                direction: Direction::Inbound,
                from,
                ..
            } => from,
            Callback::Call {
                direction: Direction::Outbound,
                to,
                ..
            } => to,
            Callback::Other => return Ok(None),
        };
        match super::personal::contact(tenant, &number) {
            Some(contact) => Ok(Some(contact)),
            // A recording callback names no one: the call's other party, or, before any
            // status of the call came, the call itself (erased with the party).
            None => match interpret::read(payload) {
                Callback::Call { sid, .. } => {
                    let party = super::personal::call_counterpart(pool, tenant, &sid).await?;
                    Ok(Some(party.unwrap_or_else(|| {
                        super::personal::pending_call(tenant, &sid)
                    })))
                }
                _ => Ok(None),
            },
        }
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

/// Receive a SignalWire callback.
///
/// SignalWire's callback URL for the project's numbers (the status callback of SMS and calls,
/// the inbound SMS and call webhooks, and RELAY event callbacks). Two body forms, told apart by
/// `Content-Type`: `application/json` is a RELAY event, anything else is read as an
/// `application/x-www-form-urlencoded` LaML (Twilio-compatible) callback. Verification:
/// `X-SignalWire-Signature` (or `X-Twilio-Signature`, as compatibility callbacks send it) is
/// checked, in constant time, under each signing key of SIGNALWIRE_SIGNING_KEY
/// (comma-separated: several during a rotation; any key matching passes), over the public URL
/// SignalWire called: BACKEND_URL followed by the request's path and query. Without BACKEND_URL
/// every callback is refused with 401 `not_configured` (the `Host` a request names is the
/// caller's to choose). The URL is tried without its port and with its scheme's default port
/// (443 for `https`, 80 otherwise), as either may have been signed. Form callbacks: the base64
/// HMAC-SHA1 of the URL followed by the parameters sorted by name, each name followed by its
/// value (a name's distinct values sorted), as Twilio signs. JSON callbacks: the hex HMAC-SHA1
/// of the URL followed by the raw body; or, in Twilio's scheme for JSON, the base64 HMAC-SHA1
/// of the URL alone when its query carries `bodySHA256` equal to the hex SHA-256 of the raw
/// body. SIGNALWIRE_SIGNING_KEY unset: `not_configured`; a form body that cannot be decoded:
/// `malformed_signature`; no header: `missing_signature`; a signature that is neither base64
/// nor hex of 20 bytes: `malformed_signature`; no match: `bad_signature`. The verified callback
/// must name a RELAY `event_type`, a message (`MessageSid` or `SmsSid`, with `SmsStatus` or
/// `MessageStatus`) or a call (`CallSid`, with `CallStatus`) — fields are read when non-empty
/// and at most 256 characters — and hold no NUL character; a JSON body must be JSON (400
/// `invalid_payload` otherwise). De-duplication key: `sms:{MessageSid}:{status}`,
/// `call:{CallSid}:{CallStatus}:{RecordingSid or -}`, `relay:{event_type}:{id}:{state}` (the id
/// is `params.call_id`, `message_id` or `segment_id`, the state `params.call_state`,
/// `message_state` or `state`; `-` when missing): a retried callback repeats its key, a new
/// status (or a recording) does not. Kept in the webhook's payload: of a form, the fields
/// listed below (the caller's city, zip code and the like are dropped); of a RELAY event,
/// `event_type`, `event_channel`, `timestamp`, `project_id`, `space_id` and the `params` ending
/// in `_id` or `_state`, and `direction`. The body (at most 1 MiB; 413 above) is verified as
/// received, before anything parses it. A refusal answers 401 with the `code` given above
/// (`not_configured`: no signing key is set, so nothing can be verified and nothing is
/// accepted), appends nothing and writes one line to the capped rejection log (query-api `GET
/// /v1/webhooks/rejections`). A verified body that is not what the provider sends answers 400
/// `invalid_payload` (a retry cannot succeed). A verified webhook appends Received once per
/// de-duplication key and is answered at once; a repeat delivery answers 200 with `duplicate:
/// true` and appends nothing. It is attributed to the tenant owning the number it concerns
/// (`To` for an inbound SMS — status `received` — or an inbound call; `From` for the status
/// callbacks of an SMS sent or of an outbound call — `Direction` starting with `outbound`; see
/// `PUT /v1/telephony/numbers/{number}`), `platform` otherwise, and processed afterwards by the
/// platform (`POST /v1/webhooks/{id}/process`), for the tenant owning the number then: an
/// inbound SMS (status `received`) appends SmsReceived (once) and a status callback
/// DeliveryStatusChanged (forward only: `queued`/`accepted` → `sending` → `sent` →
/// `delivered`/`undelivered`/`failed`) on aggregate `sms` (id = `MessageSid`); a call callback
/// appends CallStatusChanged on aggregate `call` (id = `CallSid`; forward only:
/// `queued`/`initiated` → `ringing` → `in-progress`/`answered` →
/// `completed`/`busy`/`failed`/`no-answer`/`canceled`, except that a later callback bringing
/// the recording at the same status still counts). The outcome is `applied` (`detail`: the
/// event), `recorded` (an earlier or repeated status) or `ignored` (an unknown status, a RELAY
/// event — received and recorded, not acted on yet). A callback for a number nobody owns is
/// still acknowledged (200) and recorded as a webhook (outcome `ignored`), not dropped.
/// Providers send no `Idempotency-Key`: de-duplication is by the provider's event. Allowed:
/// anyone (no bearer token: the signature authenticates the provider).
#[utoipa::path(
    post,
    path = "/api/webhooks/signalwire",
    params(("X-SignalWire-Signature" = Option<String>, Header, description = "Form callbacks: base64 HMAC-SHA1 of the URL and the sorted parameters. JSON callbacks: hex HMAC-SHA1 of the URL and the raw body, or base64 HMAC-SHA1 of the URL when it carries `bodySHA256`. One of this header or `X-Twilio-Signature` is required (401 `missing_signature`)."), ("X-Twilio-Signature" = Option<String>, Header, description = "The same signature, as compatibility (LaML) callbacks name it; read when `X-SignalWire-Signature` is absent.")),
    request_body(description = "The callback, byte for byte as SignalWire sent it (the signature covers it). `application/json` is read as a RELAY event; any other media type as a form. Provider-shaped: fields not listed are ignored (or, of a RELAY event, kept as described above).", content(
        (serde_json::Value = "application/x-www-form-urlencoded"),
        (serde_json::Value = "application/json")
    )),
    responses(
        (status = 200, description = "Received (new, or a duplicate: see `duplicate`).", body = crate::webhooks::service::WebhookReceived),
        (status = 401, response = events::http::openapi::ProblemAnswer),
        (status = 409, response = events::http::openapi::ProblemAnswer)
    )
)]
async fn signalwire_delivery(
    State(state): State<AppState>,
    request: WebhookRequest,
) -> Result<Response, Problem> {
    SIGNALWIRE.deliver(&state, request).await
}
