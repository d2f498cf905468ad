//! The seam between webhook ingestion and the contexts whose providers send webhooks. A
//! provider (Stripe and Lyra in payments, SignalWire in telephony, AssemblyAI in audio,
//! WhatsApp in whatsapp) implements [`WebhookProvider`] in its own context: how its requests
//! are verified, what names one of its webhooks, what of it is kept, whose it is, and what
//! processing it does. Ingestion (this context) holds what every provider shares — the
//! rejection log, de-duplication, the `Received` event, retries, dead letters, replays — and
//! names no provider.

use axum::body::Bytes;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use events::http::{Problem, RequestIds};
use events::webhooks::Provider;
use events::Metadata;
use serde_json::Value;

use super::service::Processing;
use crate::AppState;
use utoipa_axum::router::UtoipaMethodRouter;

/// A request posted to one of a provider's webhook paths, as received.
pub(crate) struct WebhookRequest {
    /// The request's ids (correlation).
    pub(crate) ids: RequestIds,
    /// Its path and query.
    pub(crate) uri: Uri,
    /// Its headers.
    pub(crate) headers: HeaderMap,
    /// Its raw body, as signed.
    pub(crate) body: Bytes,
}

impl axum::extract::FromRequest<AppState> for WebhookRequest {
    type Rejection = Response;

    async fn from_request(
        req: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        use axum::extract::FromRequestParts as _;
        use axum::response::IntoResponse as _;
        let (mut parts, body) = req.into_parts();
        let ids = RequestIds::from_request_parts(&mut parts, state)
            .await
            .map_err(|e| e.into_response())?;
        let uri = parts.uri.clone();
        let headers = parts.headers.clone();
        let req = axum::extract::Request::from_parts(parts, body);
        let events::http::RawBody(body) = events::http::RawBody::from_request(req, state)
            .await
            .map_err(|e| e.into_response())?;
        Ok(Self {
            ids,
            uri,
            headers,
            body,
        })
    }
}

/// A webhook's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The de-duplication key within the provider.
    pub provider_event_id: String,
    /// The provider's event type.
    pub event_type: String,
    /// The payment it names directly, if any.
    pub payment_id: Option<String>,
}

/// Why a verified body is not what the provider sends (400: the sender must not retry it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotProviderShaped(pub &'static str);

/// A provider's id or word at `pointer`: 1–255 characters (providers' ids are far shorter; a
/// longer one names nothing of ours and is not kept).
pub(crate) fn text<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 255)
}

/// A received webhook that is due to be processed.
pub(crate) struct Pending<'a> {
    /// The webhook's id (its stream).
    pub(crate) id: &'a str,
    /// The provider's event type.
    pub(crate) event_type: &'a str,
    /// What was kept of it.
    pub(crate) payload: &'a Value,
    /// The tenant it was attributed to when it arrived; `None` when it was the platform's
    /// (nobody owned what it names then).
    pub(crate) received_by: Option<&'a str>,
    /// The processing request's ids.
    pub(crate) ids: &'a RequestIds,
}

impl Pending<'_> {
    /// The metadata of a command this webhook causes in `tenant`.
    pub(crate) fn metadata(&self, tenant: &str) -> Metadata {
        super::service::caused_by(self.ids, tenant, self.id)
    }
}

/// A provider whose webhooks the platform receives, implemented in the provider's context.
#[async_trait::async_trait]
pub(crate) trait WebhookProvider: Send + Sync + 'static {
    /// Which provider (the `provider` of its webhooks' events).
    fn provider(&self) -> Provider;

    /// Its ingestion routes: one documented handler per path its webhooks are posted to,
    /// each handing the request to [`WebhookProvider::deliver`].
    fn routes(&self) -> Vec<UtoipaMethodRouter<AppState>>;

    /// Whether `path` is one of its ingestion paths.
    fn serves(&self, path: &str) -> bool {
        self.routes()
            .iter()
            .any(|(_, paths, _)| paths.paths.contains_key(path))
    }

    /// The request headers its verification reads: kept (sealed) with a refused request so
    /// that an operator can replay it.
    fn signature_headers(&self) -> &'static [&'static str];

    /// Verifies a request posted to one of its [`WebhookProvider::routes`] and receives what it
    /// carries ([`super::service::receive`]), or refuses it
    /// ([`super::service::reject`]). A replay of a refused request comes through here too.
    async fn deliver(&self, state: &AppState, request: WebhookRequest)
        -> Result<Response, Problem>;

    /// The identity of a verified body (or why it is not one of this provider's).
    fn identify(&self, body: &Value) -> Result<Identity, NotProviderShaped>;

    /// What of a verified body the `Received` event keeps: what identifies it and what
    /// processing needs, and no more (docs/architecture.md, invariant 7). By default the
    /// body as the provider's [`WebhookProvider::deliver`] read it: SignalWire's and
    /// AssemblyAI's routes keep only the fields their contexts need, and a WhatsApp item is
    /// a message as the contact sent it (which the conversation's events keep too).
    fn retained(&self, body: &Value) -> Value {
        body.clone()
    }

    /// The person a kept payload is about, a data subject of `tenant` (the webhook's owner,
    /// `platform` for nobody's): the payload is kept sealed for them (docs/privacy.md), and
    /// reads `[erased]` once they are erased. `None` (the default): it is about nobody (a
    /// payment's status, a transcript's id) and is kept in clear.
    async fn data_subject(
        &self,
        _pool: &sqlx::PgPool,
        _tenant: &str,
        _payload: &Value,
    ) -> Result<Option<uuid::Uuid>, sqlx::Error> {
        Ok(None)
    }

    /// The tenant owning what the webhook concerns when it arrives, if anybody does.
    async fn owner(
        &self,
        state: &AppState,
        identity: &Identity,
        payload: &Value,
    ) -> Result<Option<String>, Problem>;

    /// Processes a due webhook in its context. Every step is idempotent: an attempt that
    /// failed half-way is completed by the next.
    async fn process(&self, state: &AppState, webhook: &Pending<'_>) -> Processing;
}

/// The identity of a verified body of `provider`'s. No provider's body holds a NUL
/// character (PostgreSQL's `jsonb` cannot keep one).
pub(crate) fn identify(
    provider: &dyn WebhookProvider,
    body: &Value,
) -> Result<Identity, NotProviderShaped> {
    if events::jsonb::holds_nul(body) {
        return Err(NotProviderShaped(
            "a provider's body holds no NUL character",
        ));
    }
    provider.identify(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_body_holding_a_nul_character_is_no_providers() {
        let body = json!({"id": "evt", "type": "x", "data": {"object": {"note": "a\u{0}b"}}});
        let stripe = &crate::payments::webhooks::STRIPE;
        assert!(stripe.identify(&body).is_ok());
        assert!(identify(stripe, &body).is_err());
    }
}
