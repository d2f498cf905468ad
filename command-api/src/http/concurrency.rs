//! Requests in flight per route: one hot or stuck route (a burst of sign-ups waiting on a
//! locked table) cannot take every database connection from the others. Each route has
//! its own budget ([`RouteLimits`]); a request beyond it waits for a turn, and after
//! [`RouteLimits::wait`] is answered 503 `route_busy` with `Retry-After`.
//!
//! The wait is bounded by time, in the manner of Facebook's controlled-delay request queues
//! (after Nichols and Jacobson's CoDel): while a route's queue empties now and then, a burst
//! is served whole, each request waiting up to [`RouteLimits::wait`]. Once the queue has not
//! been empty for an *interval*, it is a standing queue — waiting no longer buys throughput,
//! only latency — and every request that has waited the *target* is answered 503
//! `overloaded` with `Retry-After`, whenever it arrived: the oldest go first, so the head of
//! the queue is shed, the queue stays short and what gets a turn has waited at most the
//! target. Offered more than it can take, a route keeps a turn always claimed (the queue is
//! never empty) and refuses the excess cheaply, before any work. What it bounds is the wait
//! for the route's turn: requests admitted together on one aggregate then take turns on it
//! (`store::Turns`), and that wait is not bounded by the target (docs/performance.md, run 10).
//!
//! Commands running in the process ([`Admission`]; counted inside the route's turn, so the
//! requests waiting for a stuck route hold none): past the bound a command is answered 503
//! `overloaded` with `Retry-After` at once, instead of joining a queue that only grows (reads
//! are not counted: they are cheap and bounded elsewhere). A burst on one route waits in
//! that route's queue, as above.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use events::http::Problem;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
// Tokio's clock, so tests can pause and advance it.
use tokio::time::Instant;

/// The budgets.
pub struct RouteLimits {
    /// Requests in flight per route.
    per_route: usize,
    /// Longest wait for a turn while the queue is not standing.
    wait: Duration,
    /// Longest wait for a turn in a standing queue.
    target: Duration,
    /// How long a queue must stay non-empty to be standing.
    interval: Duration,
    /// One route state per route pattern, made on first use.
    routes: Mutex<HashMap<String, Arc<Route>>>,
}

/// One route's turns and its queue.
struct Route {
    /// One permit per request in flight.
    turns: Arc<Semaphore>,
    /// Who waits for a turn, and since when someone always has.
    queue: Mutex<Queue>,
}

/// The requests waiting for a route's turn.
#[derive(Default)]
struct Queue {
    /// How many wait now.
    waiting: usize,
    /// Since when the queue has not been empty (`None` while it is).
    busy_since: Option<Instant>,
}

impl Route {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the queue has not been empty for at least `interval`.
    fn standing(&self, interval: Duration) -> bool {
        self.queue()
            .busy_since
            .is_some_and(|since| since.elapsed() >= interval)
    }
}

/// A request's place in a route's queue, given up when dropped (turn taken, refused, or the
/// client gone).
struct Waiting<'a>(&'a Route);

impl<'a> Waiting<'a> {
    fn join(route: &'a Route) -> Self {
        let mut queue = route.queue();
        queue.waiting += 1;
        queue.busy_since.get_or_insert_with(Instant::now);
        Self(route)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut queue = self.0.queue();
        queue.waiting = queue.waiting.saturating_sub(1);
        if queue.waiting == 0 {
            queue.busy_since = None;
        }
    }
}

/// Why a request got no turn.
enum NoTurn {
    /// It waited the target in a standing queue.
    Shed,
    /// It waited the longest wait.
    TimedOut,
}

impl RouteLimits {
    /// `per_route` requests in flight on each route (at least one), waiting at most `wait`;
    /// once a queue has not been empty for `5 × target`, every request in it that waited
    /// `target` is refused.
    pub fn new(per_route: usize, wait: Duration, target: Duration) -> Self {
        Self {
            per_route: per_route.max(1),
            wait,
            target,
            interval: target * 5,
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
                    queue: Mutex::new(Queue::default()),
                })
            })
            .clone()
    }

    /// Waits in `route`'s queue (first come, first served) until a turn is free, the target
    /// has passed in a standing queue, or the longest wait has.
    async fn turn(&self, route: &Route) -> Result<OwnedSemaphorePermit, NoTurn> {
        let _place = Waiting::join(route);
        let arrived = Instant::now();
        // One acquisition for the whole wait, so the request keeps its place in line.
        let acquire = route.turns.clone().acquire_owned();
        tokio::pin!(acquire);
        loop {
            let waited = arrived.elapsed();
            if waited >= self.target && route.standing(self.interval) {
                return Err(NoTurn::Shed);
            }
            if waited >= self.wait {
                return Err(NoTurn::TimedOut);
            }
            // Looked at again when the target is reached, then once per target.
            let next = if waited < self.target {
                self.target - waited
            } else {
                self.target.min(self.wait - waited)
            };
            tokio::select! {
                turn = &mut acquire => return turn.map_err(|_| NoTurn::TimedOut),
                () = tokio::time::sleep(next) => {}
            }
        }
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
        return next.run(req).await;
    }
    match limits.turn(&route).await {
        Ok(_turn) => next.run(req).await,
        Err(NoTurn::Shed) => overloaded(),
        Err(NoTurn::TimedOut) => Problem::new(
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
    use axum::Extension;
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

    /// How long each request that got a turn had waited for it.
    type Waits = Arc<Mutex<Vec<Duration>>>;

    /// A route that takes one request at a time until `gate` lets each through, and a way
    /// to send it requests that answer with their status.
    fn gated_route(
        limits: Arc<RouteLimits>,
    ) -> (
        Arc<Semaphore>,
        impl Fn() -> tokio::task::JoinHandle<StatusCode>,
        Waits,
    ) {
        let gate = Arc::new(Semaphore::new(0));
        let held = gate.clone();
        let waits = Waits::default();
        let turns = waits.clone();
        let router = axum::Router::new()
            .route(
                "/slow",
                get(move |Extension(sent): Extension<Instant>| {
                    let (held, waits) = (held.clone(), turns.clone());
                    async move {
                        waits.lock().expect("waits").push(sent.elapsed());
                        if let Ok(permit) = held.acquire().await {
                            permit.forget();
                        }
                    }
                }),
            )
            .layer(axum::middleware::from_fn_with_state(limits, limit));
        let call = move || {
            let router = router.clone();
            tokio::spawn(async move {
                let mut request = Request::get("/slow").body(Body::empty()).expect("request");
                request.extensions_mut().insert(Instant::now());
                router.oneshot(request).await.expect("answered").status()
            })
        };
        (gate, call, waits)
    }

    /// A burst whose queue empties within the interval is served whole, however long its
    /// last request waited.
    #[tokio::test(start_paused = true)]
    async fn a_burst_that_drains_within_the_interval_is_served_whole() {
        let target = Duration::from_millis(100);
        let limits = Arc::new(RouteLimits::new(1, Duration::from_secs(5), target));
        let (gate, call, _) = gated_route(limits);
        let burst: Vec<_> = (0..5).map(|_| call()).collect();
        // Each request takes 90 ms: the last waits 360 ms, past the target, but the queue
        // is empty after 360 ms, before the 500 ms interval.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(90)).await;
            gate.add_permits(1);
        }
        for request in burst {
            assert_eq!(request.await.expect("joined"), StatusCode::OK);
        }
    }

    /// Once the queue has not been empty for the interval, every request in it that has
    /// waited the target is refused, the oldest first; the request being served is not
    /// touched, and once the queue empties a request waits its turn again.
    #[tokio::test(start_paused = true)]
    async fn a_standing_queue_sheds_what_waited_the_target_and_recovers_once_empty() {
        let target = Duration::from_millis(20);
        let limits = Arc::new(RouteLimits::new(1, Duration::from_secs(5), target));
        let (gate, call, _) = gated_route(limits.clone());
        let served = call();
        tokio::task::yield_now().await;
        let started = Instant::now();
        let first = call();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = call();
        // The queue stands from the first arrival; at 100 ms (the interval) the first has
        // waited past the target and is refused; the second, which came 50 ms later, too.
        assert_eq!(
            first.await.expect("joined"),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            second.await.expect("joined"),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(
            started.elapsed() <= Duration::from_millis(120),
            "shed at the interval, not at the 5 s wait: {:?}",
            started.elapsed()
        );
        // The queue emptied: a new request waits for its turn and gets it.
        let patient = call();
        tokio::time::sleep(Duration::from_millis(60)).await;
        gate.add_permits(2);
        assert_eq!(served.await.expect("joined"), StatusCode::OK);
        assert_eq!(patient.await.expect("joined"), StatusCode::OK);
    }

    /// In a queue that stands because arrivals never stop, the requests that get a turn
    /// have waited at most the target, and the excess is refused.
    #[tokio::test(start_paused = true)]
    async fn under_a_steady_flood_what_is_served_waited_at_most_the_target() {
        let target = Duration::from_millis(20);
        let limits = Arc::new(RouteLimits::new(1, Duration::from_secs(5), target));
        let (gate, call, waits) = gated_route(limits);
        // A request every 2 ms, one served every 10 ms: five times what the route takes.
        let mut sent = Vec::new();
        for n in 0..500 {
            sent.push(call());
            tokio::time::sleep(Duration::from_millis(2)).await;
            if n % 5 == 4 {
                gate.add_permits(1);
            }
        }
        gate.add_permits(1_000);
        let (mut ok, mut refused) = (0, 0);
        for request in sent {
            match request.await.expect("joined") {
                StatusCode::OK => ok += 1,
                StatusCode::SERVICE_UNAVAILABLE => refused += 1,
                other => panic!("{other}"),
            }
        }
        assert!(ok >= 95, "the route kept serving at its pace: {ok} served");
        assert!(refused >= 350, "the excess was refused: {refused}");
        let waits = waits.lock().expect("waits");
        // The first interval (100 ms) is a burst: its requests may wait longer.
        let late = waits.iter().skip(15).filter(|w| **w > target).count();
        assert_eq!(
            late, 0,
            "waits past the target once the queue stood: {waits:?}"
        );
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
