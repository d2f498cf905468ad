use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem: a status, a stable machine-readable `code`, a human title and detail.
#[derive(Debug, Clone)]
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code clients match on (`version_conflict`, `invalid_body`, …).
    pub code: &'static str,
    /// What went wrong, for people.
    pub detail: String,
    /// Extra headers (`Retry-After`, `WWW-Authenticate`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The id under which a failure was logged, for the client to quote to support.
    pub incident_id: Option<String>,
}

/// RFC 9457 problem details: every error answer's body.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub(crate) struct Body<'a> {
    /// `urn:problem:` and the code.
    #[schema(example = "urn:problem:invalid_slug")]
    r#type: String,
    /// The status's reason phrase.
    title: &'a str,
    /// The HTTP status.
    status: u16,
    /// What went wrong, for people.
    detail: &'a str,
    /// Stable machine-readable code.
    code: &'a str,
    /// Present on a 500 that will recur however often the request is retried (codes
    /// `store_rejected`, `unstorable_event`): the id the failure was logged under, to quote
    /// to support.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = Uuid)]
    incident_id: Option<&'a str>,
}

impl Problem {
    /// A problem with a status, code and detail.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            headers: Vec::new(),
            incident_id: None,
        }
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// 400 with code `code`.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 404 `not_found`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// 403 `forbidden`.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 422 with code `code`: the request was understood and a rule refused it.
    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }

    /// 500 `internal`: logs the cause and says nothing internal to the client.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "An unexpected error occurred; it has been logged.",
        )
    }

    /// 503 `unavailable` with `Retry-After: 1`: a dependency is down for now (the same
    /// request is expected to succeed later); the cause is logged.
    pub fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "dependency unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "A dependency is unavailable; try again shortly.",
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
    }

    /// 500 with code `code` and an incident id: a failure that will recur for the same
    /// request, so retrying is pointless. The caller has logged it under `incident_id`;
    /// the body says nothing internal.
    pub fn incident(code: &'static str, incident_id: String) -> Self {
        let detail = format!(
            "The request cannot be carried out, and retrying will not help; the failure was \
             logged as incident {incident_id}."
        );
        let mut problem = Self::new(StatusCode::INTERNAL_SERVER_ERROR, code, detail);
        problem.incident_id = Some(incident_id);
        problem
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = Body {
            r#type: format!("urn:problem:{}", self.code),
            title,
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
            incident_id: self.incident_id.as_deref(),
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
            bytes,
        )
            .into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// The router fallback: an unknown route is a problem+json 404.
pub async fn route_not_found() -> Problem {
    Problem::not_found("No such route.")
}

/// The method fallback: a known route with the wrong method is a problem+json 405.
pub async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "This route does not accept that method.",
    )
}
