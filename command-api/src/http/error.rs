//! Maps command failures onto problem+json answers.

use axum::http::StatusCode;
use events::http::Problem;

use crate::store::CommandError;

/// A domain error that knows its HTTP answer.
pub trait DomainProblem: std::error::Error {
    /// The problem to answer with.
    fn problem(&self) -> Problem;
}

impl<E: DomainProblem> From<CommandError<E>> for Problem {
    fn from(e: CommandError<E>) -> Self {
        match e {
            CommandError::Rejected(e) => e.problem(),
            CommandError::VersionConflict { .. } => {
                Problem::new(StatusCode::CONFLICT, "version_conflict", e.to_string())
            }
            CommandError::Contention => {
                Problem::new(StatusCode::CONFLICT, "contention", e.to_string()).with_header(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from_static("1"),
                )
            }
            CommandError::Unavailable(cause) => Problem::unavailable(&cause),
            CommandError::Broken(incident) => Problem::incident(incident.code, incident.id),
        }
    }
}
