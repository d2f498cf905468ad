//! Requests in flight per route: one hot or stuck route (a burst of sign-ups waiting on a
//! locked table) cannot take every database connection from the others. Each route has
//! its own budget ([`RouteLimits`]); a request beyond it waits for a turn, and after
//! [`RouteLimits::wait`] is answered 503 `route_busy` with `Retry-After`.
//!
//! Commands running in the process ([`Admission`]; counted inside the route's turn, so the
//! requests waiting for a stuck route hold none): past the bound a command is answered 503
//! `overloaded` with `Retry-After` at once, instead of joining a queue that only grows (reads
//! are not counted: they are cheap and bounded elsewhere). A burst on one route still waits
//! in that route's queue, up to [`RouteLimits::wait`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
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

/// The bound on commands in flight in this process.
#[derive(Clone)]
pub struct Admission {
    /// One permit per command in flight.
    slots: Arc<Semaphore>,
    /// Where refusals are counted.
    metrics: Arc<events::http::Metrics>,
}

impl Admission {
    /// At most `commands` (at least one) in flight at once.
    pub fn new(commands: usize, metrics: Arc<events::http::Metrics>) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(commands.max(1))),
            metrics,
        }
    }
}

/// The middleware: a command (any method but `GET`, `HEAD`, `OPTIONS`) holds a slot until
/// its answer is produced; with none free it is answered 503 `overloaded` at once.
pub async fn admit(State(admission): State<Admission>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let Ok(slot) = admission.slots.clone().try_acquire_owned() else {
        admission.metrics.count(
            "commands_refused_overloaded_total",
            "Commands refused at once because the process had as many in flight as it takes.",
            &[],
            1.0,
        );
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "The service is taking as many commands as it can; try again shortly.",
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
        .into_response();
    };
    let response = next.run(req).await;
    drop(slot);
    response
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

    #[tokio::test]
    async fn a_command_beyond_the_bound_is_refused_at_once_and_reads_are_not_counted() {
        let admission = Admission::new(1, Arc::new(events::http::Metrics::default()));
        let release = Arc::new(tokio::sync::Notify::new());
        let held = release.clone();
        let router = axum::Router::new()
            .route(
                "/slow",
                axum::routing::post(move || {
                    let held = held.clone();
                    async move { held.notified().await }
                }),
            )
            .route("/other", axum::routing::post(|| async {}))
            .route("/read", get(|| async {}))
            .layer(axum::middleware::from_fn_with_state(admission, admit));
        let call = |method: &str, path: &str| {
            Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .expect("request")
        };
        let slow = tokio::spawn(router.clone().oneshot(call("POST", "/slow")));
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let refused = router
            .clone()
            .oneshot(call("POST", "/other"))
            .await
            .expect("answer");
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
        let read = router
            .clone()
            .oneshot(call("GET", "/read"))
            .await
            .expect("answer");
        assert_eq!(read.status(), StatusCode::OK, "reads are not counted");
        release.notify_one();
        assert_eq!(
            slow.await.expect("joined").expect("answer").status(),
            StatusCode::OK
        );
        let after = router
            .oneshot(call("POST", "/other"))
            .await
            .expect("answer");
        assert_eq!(after.status(), StatusCode::OK, "the slot came back");
    }
}
