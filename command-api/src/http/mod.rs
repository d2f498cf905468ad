//! The HTTP surface of command-api.

/// Requests in flight per route.
pub mod concurrency;
/// Command failures as problem+json.
pub mod error;
/// `Idempotency-Key` handling.
pub mod idempotency;
/// Limits per client (its IP behind proxies, hourly counters).
pub mod limits;

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{middleware, Router};
use events::http::{problem, request, Problem};
use serde::{Deserialize, Serialize};

use crate::AppState;

/// Where the OpenAPI document comes from.
pub mod openapi;

/// Where a client reads an aggregate that a command opened (the `Location` of a 201).
pub fn location(aggregate_type: &str, id: &str) -> Option<String> {
    crate::Contexts::location(aggregate_type).map(|path| format!("{path}/{id}"))
}

/// What every accepted command answers: the aggregate and its version (also in `ETag`), so
/// the client can ask the query API to wait for it (`min_version`).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Accepted {
    /// Aggregate id.
    pub id: String,
    /// The aggregate's version after the command.
    pub version: u64,
}

/// The `If-Match` header of a command on an existing aggregate.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IfMatch {
    /// Expected aggregate version (`"3"`, `3` or `W/"3"`; `*` means any); another version
    /// answers 409 `version_conflict`.
    #[param(rename = "If-Match", example = "\"3\"")]
    pub if_match: Option<String>,
}

/// The answer of an accepted command: [`Accepted`], the version as `ETag`, and for a 201 the
/// `Location` where the new aggregate can be read. The one place this shape is made: the
/// routes answer with it, and `Idempotency-Key` recovery rebuilds lost answers with it.
pub fn accepted(status: StatusCode, aggregate_type: &str, id: &str, version: u64) -> Response {
    let mut response = (
        status,
        events::http::Json(Accepted {
            id: id.to_owned(),
            version,
        }),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
    if status == StatusCode::CREATED {
        if let Some(v) = location(aggregate_type, id).and_then(|l| HeaderValue::from_str(&l).ok()) {
            response.headers_mut().insert(header::LOCATION, v);
        }
    }
    response
}

/// The answer of a command that created an item inside an aggregate (a message in a
/// thread): 201 with the aggregate, its version and the item's id under `field`, and the
/// version as `ETag`. `Idempotency-Key` recovery rebuilds lost answers with it too.
pub fn created_item(id: &str, version: u64, field: &str, item_id: &str) -> Response {
    let mut body = serde_json::Map::new();
    body.insert("id".into(), id.into());
    body.insert("version".into(), version.into());
    body.insert(field.into(), item_id.into());
    let mut response = (
        StatusCode::CREATED,
        events::http::Json(serde_json::Value::Object(body)),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// The expected version from `If-Match` (`"3"`, `3` or `W/"3"`); `*` or absence means any.
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let raw = value.to_str().unwrap_or_default().trim();
    if raw == "*" {
        return Ok(None);
    }
    raw.trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map(Some)
        .map_err(|_| {
            Problem::bad_request(
                "invalid_if_match",
                "If-Match must be a version, e.g. \"3\".",
            )
        })
}

/// The id a client chose for something it creates: a random (version 4) or time-ordered
/// (version 7) UUID. Derived ids are the platform's own — name-based (version 5) from what a
/// provider names (an SMS sender's thread) or from an Idempotency-Key, keyed (version 8) for
/// chatbot users — so a client can never take one before the platform does: 422
/// `invalid_id`.
pub fn client_id(id: Option<uuid::Uuid>) -> Result<Option<uuid::Uuid>, Problem> {
    match id.map(|u| u.get_version_num()) {
        None | Some(4) | Some(7) => Ok(id),
        Some(_) => Err(Problem::unprocessable(
            "invalid_id",
            "An id you choose is a random (version 4) or time-ordered (version 7) UUID.",
        )),
    }
}

/// Body naming the tenant a staff request acts in (super admins name it; tenant admins act
/// in their own).
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForTenant {
    /// The tenant.
    #[serde(default)]
    pub tenant_id: Option<uuid::Uuid>,
}

/// The tenant a staff request acts in: a tenant admin's own (naming another is 403), or the
/// one a super admin names (required, and one that can take the work: [`named_tenant`]).
pub async fn administered_tenant(
    state: &AppState,
    who: &events::access::Principal,
    asked: Option<uuid::Uuid>,
) -> Result<String, Problem> {
    if who.is_super_admin() {
        let tenant = asked.map(|t| t.to_string()).ok_or_else(|| {
            Problem::unprocessable("tenant_required", "Name the tenant (tenant_id).")
        })?;
        named_tenant(state, &tenant).await?;
        return Ok(tenant);
    }
    let home = match who {
        events::access::Principal::Admin {
            tenant_id: Some(home),
            ..
        } => home.clone(),
        _ => return Err(Problem::forbidden("Only the tenant's admins may do this.")),
    };
    if asked.is_some_and(|t| t.to_string() != home) || !who.administers(&home) {
        return Err(Problem::forbidden("Only the tenant's admins may do this."));
    }
    Ok(home)
}

/// A tenant a super admin (or a platform component) names for new work must exist and have
/// been approved: 404 for none, 422 `tenant_pending` for one awaiting approval, 422
/// `tenant_rejected` for one turned down. A suspended tenant is still administered. (Its own
/// staff's tokens already say whether their tenant serves.)
pub async fn named_tenant(state: &AppState, tenant_id: &str) -> Result<(), Problem> {
    let tenant = state.ctx.tenants.bus.load(tenant_id).await?;
    if !tenant.exists() {
        return Err(Problem::not_found("no such tenant"));
    }
    if tenant.is_rejected() {
        return Err(Problem::unprocessable(
            "tenant_rejected",
            "The tenant's signup was turned down.",
        ));
    }
    if tenant.is_pending() {
        return Err(Problem::unprocessable(
            "tenant_pending",
            "The tenant awaits approval.",
        ));
    }
    Ok(())
}

/// Every route, with the shared middleware.
pub fn router(
    state: AppState,
    max_body_bytes: usize,
    route_limits: std::sync::Arc<concurrency::RouteLimits>,
    admission: concurrency::Admission,
) -> Router {
    let (routes, sign_in, document) = openapi::routes();
    let routed = routes
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            idempotency::idempotency,
        ))
        // Sign-in routes answer with tokens: never stored as an idempotent answer (a replay
        // would hand a spent refresh token's successor out again, and the store would hold
        // tokens in clear), and never cached by anything between (RFC 6749 §5.1).
        .merge(
            sign_in
                .layer(DefaultBodyLimit::max(max_body_bytes))
                .layer(middleware::map_response(no_store)),
        )
        // Admission inside the route's turn: a request waiting for a stuck route holds no
        // slot of the process.
        .layer(middleware::from_fn_with_state(
            admission,
            concurrency::admit,
        ))
        .layer(middleware::from_fn_with_state(
            route_limits,
            concurrency::limit,
        ));
    routed
        .merge(document)
        .fallback(problem::route_not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            request::track,
        ))
        .with_state(state)
}

/// Marks an answer as not to be stored by any cache.
async fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        axum::http::header::PRAGMA,
        axum::http::HeaderValue::from_static("no-cache"),
    );
    response
}

/// How long the relay may keep failing before the process says it is not ready.
const RELAY_FAILING_FOR: Duration = Duration::from_secs(10);

/// Readiness.
///
/// Ready when PostgreSQL answers, token revocations are followed, the NATS connection is up
/// and the relay has not been failing for [`RELAY_FAILING_FOR`]. Events the relay quarantined and no operator has acknowledged yet are reported
/// (`"status": "degraded"`, `quarantined_events`) without taking the instance out of service:
/// they are one aggregate's trouble, and every other event is being published.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "operations",
    responses((status = 200, description = "Ready, or degraded (quarantined events).", body = Readiness))
)]
pub(crate) async fn ready(State(state): State<AppState>) -> Result<Response, Problem> {
    let quarantined: i64 = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar("SELECT count(*) FROM quarantined_events WHERE acknowledged_at IS NULL")
            .fetch_one(&state.pool),
    )
    .await
    .map_err(|_| Problem::unavailable(&"PostgreSQL did not answer in 2 s"))?
    .map_err(|e| Problem::unavailable(&e))?;
    if !state.access.is_live() {
        return Err(Problem::unavailable(&"token revocations are not followed"));
    }
    if state.nats.connection_state() != async_nats::connection::State::Connected {
        return Err(Problem::unavailable(&"NATS is not connected"));
    }
    // A relay that keeps failing (the bus refuses, the stream is gone) holds every read
    // model and push back: not ready, though commands are still taken.
    if let Some((for_how_long, why)) = state.relay_health.failing() {
        if for_how_long > RELAY_FAILING_FOR {
            return Err(Problem::unavailable(&format!(
                "the relay has not published for {} s: {why}",
                for_how_long.as_secs()
            )));
        }
    }
    let status = if quarantined > 0 { "degraded" } else { "ready" };
    Ok(axum::Json(Readiness {
        status,
        postgres: "up",
        nats: "up",
        quarantined_events: quarantined,
    })
    .into_response())
}

/// The answer of `GET /health/ready`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Readiness {
    /// `ready`, or `degraded` while quarantined events await an operator.
    status: &'static str,
    /// `up`.
    postgres: &'static str,
    /// `up`.
    nats: &'static str,
    /// Events the relay quarantined that no operator has acknowledged.
    quarantined_events: i64,
}

/// Prometheus metrics.
///
/// Text exposition format: requests by route and status, command and relay figures.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Metrics.", body = String, content_type = "text/plain"))
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.as_ref().into_response()
}
