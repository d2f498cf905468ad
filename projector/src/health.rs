//! The projector's health endpoints, on `PROJECTOR_PORT` when it is set: `/health/live`
//! answers while the process runs; `/health/ready` answers 200 when PostgreSQL answers and
//! the NATS connection is up, 503 problem+json otherwise (the projector starts while the bus
//! is down and waits for it).

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use events::http::Problem;
use sqlx::PgPool;

/// What readiness looks at.
#[derive(Clone)]
struct Health {
    /// The read models' database.
    pool: PgPool,
    /// The bus.
    nats: async_nats::Client,
}

/// Serves the health endpoints on `listener` for as long as the projector runs.
pub async fn serve(listener: tokio::net::TcpListener, pool: PgPool, nats: async_nats::Client) {
    let router = Router::new()
        .route("/health/live", get(events::http::live))
        .route("/health/ready", get(ready))
        .fallback(events::http::problem::route_not_found)
        .with_state(Health { pool, nats });
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "the health endpoints stopped");
    }
}

async fn ready(State(health): State<Health>) -> Result<Response, Problem> {
    tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&health.pool),
    )
    .await
    .map_err(|_| Problem::unavailable(&"PostgreSQL did not answer in 2 s"))?
    .map_err(|e| Problem::unavailable(&e))?;
    if health.nats.connection_state() != async_nats::connection::State::Connected {
        return Err(Problem::unavailable(&"NATS is not connected"));
    }
    Ok(
        axum::Json(serde_json::json!({"status": "ready", "postgres": "up", "nats": "up"}))
            .into_response(),
    )
}
