//! HTTP plumbing the two APIs share, so an error, a token or a request id means the same
//! thing on both sides.

/// The revocations every token is checked against, followed from PostgreSQL.
pub mod access;
/// Extractors: the bearer-token principal, JSON bodies and query strings whose rejections
/// are problem+json.
pub mod extract;
/// Prometheus metrics in text exposition format.
pub mod metrics;
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

/// `GET /health/live`: the process serves HTTP.
pub async fn live() -> axum::response::Response {
    axum::response::IntoResponse::into_response(axum::Json(serde_json::json!({"status": "ok"})))
}

/// `GET /openapi.json`: serves a static OpenAPI document.
pub fn openapi<S: Clone + Send + Sync + 'static>(
    document: &'static str,
) -> axum::routing::MethodRouter<S> {
    axum::routing::get(move || async move {
        (
            [(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            )],
            document,
        )
    })
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // With the peer address, for limits per client IP.
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
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
