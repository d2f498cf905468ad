use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use super::Metrics;

/// Header carrying the id of one HTTP request. Always generated here, never taken from the
/// caller: it goes into event metadata, where it is the proof that a request's command ran
/// (idempotency recovery, conflict checks), so it must be unique. A caller's own
/// `X-Request-Id` becomes the correlation id when it sends no `X-Correlation-Id`.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Header carrying the id shared by everything one original request caused.
pub static CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");

/// The ids of the current request; they go into event metadata and NATS headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestIds {
    /// This request: unique, generated here.
    pub request_id: String,
    /// The chain this request belongs to (the caller's, or this request's own id).
    pub correlation_id: String,
}

impl RequestIds {
    fn from_headers(headers: &HeaderMap) -> Self {
        let request_id = crate::envelope::new_id();
        let correlation_id = header_id(headers, &CORRELATION_ID)
            .or_else(|| header_id(headers, &REQUEST_ID))
            .unwrap_or_else(|| request_id.clone());
        Self {
            request_id,
            correlation_id,
        }
    }
}

impl RequestIds {
    /// The metadata of the events this request's command appends, for `tenant`, acted on by
    /// `actor_id` of `kind`. The request is the direct cause.
    pub fn metadata(
        &self,
        tenant: &str,
        actor_id: &str,
        kind: crate::envelope::ActorKind,
    ) -> crate::Metadata {
        crate::Metadata {
            tenant_id: tenant.to_owned(),
            actor_id: actor_id.to_owned(),
            actor_kind: kind,
            correlation_id: self.correlation_id.clone(),
            causation_id: self.request_id.clone(),
            request_id: self.request_id.clone(),
        }
    }
}

/// A caller-supplied id is kept only if it is short printable ASCII, so it cannot forge log
/// lines or bloat metadata.
fn header_id(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let v = headers.get(name)?.to_str().ok()?;
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| v.to_owned())
}

impl<S: Send + Sync> FromRequestParts<S> for RequestIds {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestIds>()
            .cloned()
            .unwrap_or_else(|| RequestIds::from_headers(&parts.headers)))
    }
}

/// Middleware: assigns request and correlation ids, opens a span, logs the outcome, records
/// request metrics, and echoes the ids in the response.
pub async fn track(State(metrics): State<Arc<Metrics>>, mut req: Request, next: Next) -> Response {
    let ids = RequestIds::from_headers(req.headers());
    req.extensions_mut().insert(ids.clone());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let span = tracing::info_span!(
        "http",
        request_id = %ids.request_id,
        correlation_id = %ids.correlation_id,
        method = %method,
        route = %route,
    );
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    // Every 503 says when to come back, whichever layer answered it.
    if response.status() == axum::http::StatusCode::SERVICE_UNAVAILABLE
        && !response
            .headers()
            .contains_key(axum::http::header::RETRY_AFTER)
    {
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from_static("1"),
        );
    }
    let status = response.status().as_u16();
    metrics.observe_http(method.as_str(), &route, status, elapsed);
    span.in_scope(|| {
        // A 503 is a refusal for now (overload, a busy route, a dependency away, each logged
        // or counted where it is decided): logged at error it would let any flood write the
        // log and page whoever watches errors.
        if status == 503 {
            tracing::debug!(
                status,
                elapsed_ms = elapsed.as_secs_f64() * 1e3,
                "request refused for now"
            );
        } else if status >= 500 {
            tracing::error!(
                status,
                elapsed_ms = elapsed.as_secs_f64() * 1e3,
                "request failed"
            );
        } else {
            tracing::debug!(status, elapsed_ms = elapsed.as_secs_f64() * 1e3, "request");
        }
    });
    for (name, value) in [
        (&REQUEST_ID, &ids.request_id),
        (&CORRELATION_ID, &ids.correlation_id),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            response.headers_mut().insert(name.clone(), v);
        }
    }
    response
}
