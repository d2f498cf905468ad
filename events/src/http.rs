//! HTTP plumbing the two APIs share, so an error, a token or a request id means the same
//! thing on both sides.

/// The revocations every token is checked against, followed from PostgreSQL.
pub mod access;
/// Extractors: the bearer-token principal, JSON bodies and query strings whose rejections
/// are problem+json.
pub mod extract;
/// Requests in flight per principal.
pub mod inflight;
/// Prometheus metrics in text exposition format.
pub mod metrics;
/// The generated `/openapi.json` documents: shared components and rules.
pub mod openapi;
/// `application/problem+json` (RFC 9457) errors with stable codes.
pub mod problem;
/// Request ids, correlation ids, access logs and request metrics.
pub mod request;
/// JSON logs with `tracing`.
pub mod telemetry;

pub use access::Access;
pub use extract::{AuthUser, Json, MaybeAuthUser, Query, RawBody};
pub use metrics::Metrics;
pub use problem::Problem;
pub use request::RequestIds;

/// The answer of `GET /health/live`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Live {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness.
///
/// The process serves HTTP (it says nothing of PostgreSQL or NATS: see `/health/ready`).
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "operations",
    responses((status = 200, description = "Serving.", body = Live))
)]
pub async fn live() -> axum::response::Response {
    axum::response::IntoResponse::into_response(axum::Json(Live { status: "ok" }))
}

/// The settings of the servers' protection against slow and greedy clients, the same on
/// both APIs.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpLimits {
    /// Milliseconds a connection may take to send a request's head, and may stay idle
    /// between requests.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_MS", default_value_t = 30_000)]
    pub http_header_timeout_ms: u64,
    /// Milliseconds a request body may pause between two pieces.
    #[arg(long, env = "HTTP_BODY_TIMEOUT_MS", default_value_t = 30_000)]
    pub http_body_timeout_ms: u64,
    /// Milliseconds a whole request body may take (a body trickled a byte at a time is cut
    /// off here; 10 minutes carry the largest upload at about 170 kB/s).
    #[arg(long, env = "HTTP_BODY_DEADLINE_MS", default_value_t = 600_000)]
    pub http_body_deadline_ms: u64,
    /// Requests one token may have in flight at once (SSE streams excepted).
    #[arg(long, env = "CONCURRENT_REQUESTS_PER_PRINCIPAL", default_value_t = 32)]
    pub concurrent_requests_per_principal: usize,
    /// Requests without a working token one client address may have in flight at once.
    #[arg(long, env = "CONCURRENT_REQUESTS_PER_ADDRESS", default_value_t = 64)]
    pub concurrent_requests_per_address: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            http_header_timeout_ms: 30_000,
            http_body_timeout_ms: 30_000,
            http_body_deadline_ms: 600_000,
            concurrent_requests_per_principal: 32,
            concurrent_requests_per_address: 64,
        }
    }
}

impl HttpLimits {
    /// The timeouts of [`serve`].
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            header: std::time::Duration::from_millis(self.http_header_timeout_ms.max(1)),
            body: std::time::Duration::from_millis(self.http_body_timeout_ms.max(1)),
            body_deadline: std::time::Duration::from_millis(self.http_body_deadline_ms.max(1)),
        }
    }

    /// The limiter of requests in flight, counting tokens `keys` verifies and `access`
    /// accepts, else client addresses as `client` names them; `exempt` paths (SSE) are not
    /// counted.
    pub fn in_flight(
        &self,
        keys: crate::access::TokenKeys,
        access: Access,
        exempt: &'static [&'static str],
        client: inflight::ClientKey,
    ) -> inflight::InFlight {
        inflight::InFlight::new(keys, access, self.concurrent_requests_per_principal, exempt)
            .with_anonymous(self.concurrent_requests_per_address, client)
    }
}

/// How long a connection may take over each part of a request.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Waiting for a request's head and reading it. hyper runs this timer whenever an
    /// HTTP/1 connection waits for a request, so it is also the idle timeout of a kept-alive
    /// connection (and the ping timeout of an HTTP/2 one).
    pub header: std::time::Duration,
    /// Waiting for each piece of a request body (a client that stops sending mid-body).
    pub body: std::time::Duration,
    /// The whole of a request body (a client that trickles it).
    pub body_deadline: std::time::Duration,
}

/// A request body cut off at a deadline, and after any pause of `pause` between pieces.
fn bounded_body(
    body: hyper::body::Incoming,
    pause: std::time::Duration,
    deadline: std::time::Duration,
) -> axum::body::Body {
    use futures_util::StreamExt;
    let paced = axum::body::Body::new(tower_http::timeout::TimeoutBody::new(pause, body));
    let until = tokio::time::Instant::now() + deadline;
    let stream =
        futures_util::stream::unfold(Some(paced.into_data_stream()), move |stream| async move {
            let mut stream = stream?;
            match tokio::time::timeout_at(until, stream.next()).await {
                Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(stream))),
                Ok(Some(Err(e))) => Some((Err(axum::BoxError::from(e)), None)),
                Ok(None) => None,
                Err(_) => Some((Err(axum::BoxError::from(BodyDeadline)), None)),
            }
        });
    axum::body::Body::from_stream(stream)
}

/// A request body that took longer than its deadline.
#[derive(Debug)]
struct BodyDeadline;

impl std::fmt::Display for BodyDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Worded as the pause timeout is, so both are answered 408 alike.
        f.write_str("the whole body was not received within the designated timeout")
    }
}

impl std::error::Error for BodyDeadline {}

/// Serves `router` on `listener` until `shutdown` completes, then waits for the requests in
/// flight. Each request carries the peer address (for limits per client address); a client
/// that does not send its request head, or a piece of its body, in time is cut off.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    timeouts: Timeouts,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(timeouts.header))
        .keep_alive_timeout(timeouts.header);
    // A handler that panics (a library's `unwrap` on data it cannot read) answers a 500
    // problem, logged, instead of dropping the client's connection.
    let router = router.layer(tower_http::catch_panic::CatchPanicLayer::custom(
        |panic: Box<dyn std::any::Any + Send + 'static>| {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            axum::response::IntoResponse::into_response(Problem::internal(&format!(
                "handler panicked: {what}"
            )))
        },
    ));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(
            move |request: axum::http::Request<hyper::body::Incoming>| {
                let mut request =
                    request.map(|body| bounded_body(body, timeouts.body, timeouts.body_deadline));
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                router.clone().oneshot(request)
            },
        );
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
