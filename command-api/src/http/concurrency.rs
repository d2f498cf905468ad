//! Requests in flight per route: one hot or stuck route (a burst of sign-ups waiting on a
//! locked table) cannot take every database connection from the others. Each route has
//! its own budget ([`RouteLimits`]); a request beyond it waits for a turn, and after
//! [`RouteLimits::wait`] is answered 503 `route_busy` with `Retry-After`.
//!
//! The wait is bounded by time in the manner of CoDel (Nichols and Jacobson's controlled
//! delay): a burst that drains quickly is served whole, but once every request that got its
//! turn for a whole *interval* had waited longer than the *target*, the route has a standing
//! queue — waiting no longer buys throughput, only latency — and new arrivals are answered
//! 503 `overloaded` with `Retry-After` at once, until a request again gets its turn within
//! the target. Offered more than it can take, a route keeps serving at full speed and
//! refuses the excess cheaply. It does not shed the requests already waiting, and the first
//! request to find the route free ends the standing state: under a flood of clients that
//! retry at once, a wave joins the queue each time it drains, and admitted requests can
//! still wait seconds (docs/performance.md, run 9). Shedding at the head of the queue is the
//! step still to take.
//!
//! Commands running in the process ([`Admission`]; counted inside the route's turn, so the
//! requests waiting for a stuck route hold none): past the bound a command is answered 503
//! `overloaded` with `Retry-After` at once, instead of joining a queue that only grows (reads
//! are not counted: they are cheap and bounded elsewhere). A burst on one route still waits
//! in that route's queue, up to [`RouteLimits::wait`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// The queue delay a route may keep standing ([`Route`]).
    target: Duration,
    /// How long the delay must stay above the target before arrivals are refused.
    interval: Duration,
    /// One route state per route pattern, made on first use.
    routes: Mutex<HashMap<String, Arc<Route>>>,
}

/// One route's turns and how long its requests lately waited for them.
struct Route {
    /// One permit per request in flight.
    turns: Arc<Semaphore>,
    /// Since when every request that got its turn had waited longer than the target (`None`
    /// once one got it within the target).
    above_since: Mutex<Option<Instant>>,
}

impl Route {
    /// Notes that a request waited `waited` for the turn it just got.
    fn served(&self, waited: Duration, target: Duration) {
        let mut above_since = self.above_since.lock().unwrap_or_else(|e| e.into_inner());
        if waited < target {
            *above_since = None;
        } else if above_since.is_none() {
            *above_since = Some(Instant::now());
        }
    }

    /// Whether the route has had a standing queue for at least `interval`.
    fn standing(&self, interval: Duration) -> bool {
        self.above_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|since| since.elapsed() >= interval)
    }
}

impl RouteLimits {
    /// `per_route` requests in flight on each route (at least one), waiting at most `wait`;
    /// new arrivals refused once the requests served for `4 × target` all waited longer
    /// than `target`.
    pub fn new(per_route: usize, wait: Duration, target: Duration) -> Self {
        Self {
            per_route: per_route.max(1),
            wait,
            target,
            interval: target * 4,
            routes: Mutex::new(HashMap::new()),
        }
    }

    fn state_of(&self, route: &str) -> Arc<Route> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .entry(route.to_owned())
            .or_insert_with(|| {
                Arc::new(Route {
                    turns: Arc::new(Semaphore::new(self.per_route)),
                    above_since: Mutex::new(None),
                })
            })
            .clone()
    }
}

/// The middleware (the route is known: it is added with the routes).
pub async fn limit(State(limits): State<Arc<RouteLimits>>, req: Request, next: Next) -> Response {
    let Some(pattern) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
    else {
        return next.run(req).await;
    };
    let route = limits.state_of(&pattern);
    if let Ok(_turn) = route.turns.clone().try_acquire_owned() {
        route.served(Duration::ZERO, limits.target);
        return next.run(req).await;
    }
    if route.standing(limits.interval) {
        return overloaded();
    }
    let arrived = Instant::now();
    match tokio::time::timeout(limits.wait, route.turns.clone().acquire_owned()).await {
        Ok(Ok(_turn)) => {
            route.served(arrived.elapsed(), limits.target);
            next.run(req).await
        }
        _ => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "route_busy",
            "Too many requests of this kind are being processed; try again shortly.",
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
        .into_response(),
    }
}

/// 503 `overloaded` with `Retry-After`: refused at once, before any work.
fn overloaded() -> Response {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "The service is taking as many commands as it can; try again shortly.",
    )
    .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
    .into_response()
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
        return overloaded();
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
        let limits = Arc::new(RouteLimits::new(
            1,
            Duration::from_millis(50),
            Duration::from_secs(1),
        ));
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
        let limits = RouteLimits::new(2, Duration::from_millis(10), Duration::from_secs(1));
        let hot = limits.state_of("/v1/tenants").turns.clone();
        let _a = hot.clone().try_acquire_owned().expect("first");
        let _b = hot.clone().try_acquire_owned().expect("second");
        assert!(
            hot.clone().try_acquire_owned().is_err(),
            "the hot route is full"
        );
        let other = limits.state_of("/v1/chat/threads").turns.clone();
        assert!(other.try_acquire_owned().is_ok(), "another route is not");
    }

    /// A burst is served whole however long its last request waits; a queue that stands
    /// above the target for an interval turns new arrivals away at once; a request served
    /// within the target again lets them in.
    #[tokio::test]
    async fn a_standing_queue_refuses_new_arrivals_at_once_and_a_burst_is_served() {
        let target = Duration::from_millis(20);
        let limits = Arc::new(RouteLimits::new(1, Duration::from_secs(5), target));
        let gate = Arc::new(Semaphore::new(0));
        let held = gate.clone();
        let router = axum::Router::new()
            .route(
                "/slow",
                get(move || {
                    let held = held.clone();
                    async move {
                        if let Ok(permit) = held.acquire().await {
                            permit.forget();
                        }
                    }
                }),
            )
            .layer(axum::middleware::from_fn_with_state(limits.clone(), limit));
        let call = || {
            let router = router.clone();
            tokio::spawn(async move {
                router
                    .oneshot(Request::get("/slow").body(Body::empty()).expect("request"))
                    .await
                    .expect("answered")
                    .status()
            })
        };
        // A burst of five on a route that takes one at a time: each waits past the target.
        let burst: Vec<_> = (0..5).map(|_| call()).collect();
        for _ in 0..4 {
            tokio::time::sleep(target * 2).await;
            gate.add_permits(1);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Every turn since the second's came after more than the target, for more than an
        // interval (4 × target): a new arrival meeting the busy route is turned away at once.
        let started = Instant::now();
        let refused = call().await.expect("joined");
        assert_eq!(refused, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused without waiting (a turn would take the 5 s wait)"
        );
        gate.add_permits(1);
        for request in burst {
            assert_eq!(
                request.await.expect("joined"),
                StatusCode::OK,
                "the burst is served"
            );
        }
        // A request that gets its turn at once ends the standing queue.
        let served = call();
        tokio::time::sleep(Duration::from_millis(5)).await;
        gate.add_permits(1);
        assert_eq!(served.await.expect("joined"), StatusCode::OK);
        assert!(!limits.state_of("/slow").standing(limits.interval));
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
