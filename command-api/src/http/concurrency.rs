//! Requests in flight per route: one hot or stuck route (a burst of sign-ups waiting on a
//! locked table) cannot take every database connection from the others. Each route has
//! its own budget ([`RouteLimits`]); a request beyond it waits for a turn, and after
//! [`RouteLimits::wait`] is answered 503 `route_busy` with `Retry-After`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use events::http::Problem;
use tokio::sync::Semaphore;

/// The budgets.
pub struct RouteLimits {
    /// Requests in flight per route.
    per_route: usize,
    /// Longest wait for a turn.
    wait: Duration,
    /// One semaphore per route pattern, made on first use.
    routes: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl RouteLimits {
    /// `per_route` requests in flight on each route (at least one), waiting at most `wait`.
    pub fn new(per_route: usize, wait: Duration) -> Self {
        Self {
            per_route: per_route.max(1),
            wait,
            routes: Mutex::new(HashMap::new()),
        }
    }

    fn semaphore(&self, route: &str) -> Arc<Semaphore> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .entry(route.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_route)))
            .clone()
    }
}

/// The middleware (the route is known: it is added with the routes).
pub async fn limit(State(limits): State<Arc<RouteLimits>>, req: Request, next: Next) -> Response {
    let Some(route) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
    else {
        return next.run(req).await;
    };
    let semaphore = limits.semaphore(&route);
    match tokio::time::timeout(limits.wait, semaphore.acquire_owned()).await {
        Ok(Ok(_turn)) => next.run(req).await,
        _ => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "route_busy",
            "Too many requests of this kind are being processed; try again shortly.",
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn a_request_beyond_the_routes_budget_waits_then_is_told_to_retry() {
        let limits = Arc::new(RouteLimits::new(1, Duration::from_millis(50)));
        let release = Arc::new(tokio::sync::Notify::new());
        let held = release.clone();
        let router = axum::Router::new()
            .route(
                "/slow",
                get(move || {
                    let held = held.clone();
                    async move { held.notified().await }
                }),
            )
            .route("/other", get(|| async {}))
            .layer(axum::middleware::from_fn_with_state(limits, limit));
        let call = |path: &'static str| {
            router
                .clone()
                .oneshot(Request::get(path).body(Body::empty()).expect("request"))
        };
        let first = tokio::spawn(call("/slow"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = call("/slow").await.expect("answered");
        assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(second.headers()[header::RETRY_AFTER], "1");
        // Another route has its own budget.
        assert_eq!(
            call("/other").await.expect("answered").status(),
            StatusCode::OK
        );
        release.notify_one();
        assert_eq!(
            first.await.expect("joined").expect("answered").status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn each_route_has_its_own_budget() {
        let limits = RouteLimits::new(2, Duration::from_millis(10));
        let hot = limits.semaphore("/v1/tenants");
        let _a = hot.clone().try_acquire_owned().expect("first");
        let _b = hot.clone().try_acquire_owned().expect("second");
        assert!(
            hot.clone().try_acquire_owned().is_err(),
            "the hot route is full"
        );
        let other = limits.semaphore("/v1/chat/threads");
        assert!(other.try_acquire_owned().is_ok(), "another route is not");
    }
}
