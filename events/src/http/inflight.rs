//! Requests in flight per principal: one token cannot hold every worker of a service. Each
//! authenticated request (its bearer token verifies) holds a slot of its subject until its
//! response is produced; past the cap it is answered 429 `too_many_concurrent_requests` at
//! once. A token that verifies but was revoked holds no slot (the route refuses it), so a
//! stolen, revoked token cannot starve its user. Anonymous requests have their own limits
//! per client address (sign-ups, codes), and SSE streams theirs (`STREAMS_PER_USER`), so
//! neither counts here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::access::Access;
use super::Problem;
use crate::access::TokenKeys;

/// The slots of every principal.
#[derive(Clone)]
pub struct InFlight {
    /// Verifies the tokens the slots are counted by.
    keys: TokenKeys,
    /// Revocations: a revoked token holds no slot of its user (the route refuses it).
    access: Access,
    /// Requests one principal may have in flight.
    per_principal: usize,
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
            exempt,
            held: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn claim(&self, principal: String) -> Option<Slot> {
        let mut held = self.held.lock().ok()?;
        let n = held.entry(principal.clone()).or_insert(0);
        if *n >= self.per_principal {
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
pub async fn limit(State(limiter): State<InFlight>, request: Request, next: Next) -> Response {
    if limiter.exempt.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let principal = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .and_then(|(_, token)| limiter.keys.claims(token.trim()).ok())
        .filter(|c| limiter.access.check(c).is_ok())
        .map(|c| format!("{}:{}", c.kind.as_deref().unwrap_or("admin"), c.sub));
    let Some(principal) = principal else {
        return next.run(request).await;
    };
    let Some(slot) = limiter.claim(principal) else {
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
