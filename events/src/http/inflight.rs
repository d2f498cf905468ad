//! Requests in flight per principal: one token cannot hold every worker of a service. Each
//! authenticated request (its bearer token verifies) holds a slot of its subject until its
//! response is produced; past the cap it is answered 429 `too_many_concurrent_requests` at
//! once. A token that verifies but was revoked holds no slot of its user (so a stolen,
//! revoked token cannot starve them): such requests, and those without a token, are counted
//! by client address instead. SSE streams have their own cap (`STREAMS_PER_USER`) and are
//! not counted here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::access::Access;
use super::Problem;
use crate::access::TokenKeys;

/// How a service names the client of a request: its address, seen through the service's
/// trusted proxies.
pub type ClientKey = Arc<dyn Fn(SocketAddr, &HeaderMap) -> String + Send + Sync>;

/// The slots of every principal.
#[derive(Clone)]
pub struct InFlight {
    /// Verifies the tokens the slots are counted by.
    keys: TokenKeys,
    /// Revocations: a revoked token holds no slot of its user (the route refuses it).
    access: Access,
    /// Requests one principal may have in flight.
    per_principal: usize,
    /// Anonymous requests one client address may have in flight.
    per_address: usize,
    /// The client address of a request (the service knows its trusted proxies).
    client: ClientKey,
    /// Paths whose requests are long-lived and capped elsewhere (SSE).
    exempt: &'static [&'static str],
    /// Requests in flight by principal.
    held: Arc<Mutex<HashMap<String, usize>>>,
}

impl InFlight {
    /// A limiter of `per_principal` requests, counting by subjects of tokens `keys` verifies.
    pub fn new(
        keys: TokenKeys,
        access: Access,
        per_principal: usize,
        exempt: &'static [&'static str],
    ) -> Self {
        Self {
            keys,
            access,
            per_principal: per_principal.max(1),
            per_address: per_principal.max(1),
            client: Arc::new(|peer, _| peer.ip().to_string()),
            exempt,
            held: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Anonymous requests counted per client address, `per_address` at once, the address
    /// named by `client`.
    pub fn with_anonymous(mut self, per_address: usize, client: ClientKey) -> Self {
        self.per_address = per_address.max(1);
        self.client = client;
        self
    }

    fn claim(&self, principal: String, cap: usize) -> Option<Slot> {
        let mut held = self.held.lock().ok()?;
        let n = held.entry(principal.clone()).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Slot {
            held: self.held.clone(),
            principal,
        })
    }
}

/// One request's slot; dropping it gives it back.
struct Slot {
    held: Arc<Mutex<HashMap<String, usize>>>,
    principal: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut held) = self.held.lock() {
            if let Some(n) = held.get_mut(&self.principal) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    held.remove(&self.principal);
                }
            }
        }
    }
}

/// The middleware.
pub async fn limit(State(limiter): State<InFlight>, mut request: Request, next: Next) -> Response {
    if limiter.exempt.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    // Only a bearer token, as the extractors read it, is verified here; the route's
    // extractor then reuses it.
    let verified = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .and_then(|(_, token)| limiter.keys.verify_claims(token.trim()).ok());
    let principal = verified
        .as_ref()
        .filter(|(claims, _)| limiter.access.check(claims).is_ok())
        .map(|(c, _)| format!("{}:{}", c.kind.as_deref().unwrap_or("admin"), c.sub));
    if let Some((claims, principal)) = verified {
        request
            .extensions_mut()
            .insert(super::extract::Verified { claims, principal });
    }
    // A request without a token that works is counted by its client's address (a revoked
    // token's requests too: the route refuses them, but they are not free).
    let (principal, cap) = match principal {
        Some(principal) => (principal, limiter.per_principal),
        None => {
            let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>()
            else {
                return next.run(request).await;
            };
            let address = (limiter.client)(*peer, request.headers());
            (format!("address:{address}"), limiter.per_address)
        }
    };
    let Some(slot) = limiter.claim(principal, cap) else {
        return Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_concurrent_requests",
            "This token has as many requests in flight as allowed; wait for one to finish.",
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
        .into_response();
    };
    let response = next.run(request).await;
    drop(slot);
    response
}
