//! `GET /v1/audio/{id}`: an uploaded audio file, where its transcript is, and the transcript
//! (text, words with timings, language, confidence) once complete; a transcript too large
//! for its event is read from the blob store. Staff of the file's
//! tenant read it, and so does the chatbot user who uploaded it; anyone else is told it does
//! not exist.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use events::access::Principal;
use events::http::{AuthUser, Json, Problem, Query};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::http::freshness;
use crate::AppState;

/// The context has no settings of its own.
pub use crate::context::NoSettings as Settings;

/// The audio context (its routes).
pub struct Context;

impl crate::context::BoundedContext for Context {
    type Settings = Settings;

    async fn build(
        _setup: &crate::context::Setup<'_>,
        _settings: &Settings,
    ) -> Result<Self, crate::StartError> {
        Ok(Self)
    }

    fn routes() -> OpenApiRouter<AppState> {
        router()
    }
}

/// The routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(detail))
}

/// An audio file as the API shows it: an uploaded file, where its transcript is, and the
/// transcript once complete.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = AudioFile)]
pub struct AudioView {
    id: Uuid,
    tenant_id: String,
    /// The user who uploaded it (staff or a chatbot user).
    uploaded_by: String,
    content_type: String,
    size_bytes: i64,
    /// `uploaded`, `retrying`, `requesting`, `requested`, `completed` or `failed`.
    status: String,
    /// AssemblyAI's transcript id, once requested.
    transcript_id: Option<String>,
    /// The whole text, once completed (read from the blob store when it was too large for
    /// its event).
    text: Option<String>,
    /// Characters of the text.
    transcript_chars: Option<i64>,
    /// `[{text, start_ms, end_ms, confidence}]`, once completed.
    words: Option<serde_json::Value>,
    /// The language detected or asked for.
    language: Option<String>,
    /// AssemblyAI's confidence, 0–1.
    confidence: Option<f64>,
    /// Failed attempts at requesting the transcript.
    attempts: i32,
    /// Checks of a requested transcript that no webhook has finished.
    checks: i32,
    /// Why the last attempt or check failed.
    last_error: Option<String>,
    /// When the transcript is next requested (while retried) or checked (while requested).
    next_attempt_at: Option<DateTime<Utc>>,
    /// Where the whole transcript is, when too large for its event.
    #[serde(skip)]
    transcript_object_key: Option<String>,
    /// Present (true) only when the transcript was too large for its event and its stored
    /// file could not be read just now: `text` is then its first 1,000 characters and `words`
    /// null.
    #[sqlx(skip)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    transcript_unavailable: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i64,
}

/// Read-your-writes on an audio file.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DetailParams {
    /// The version a command answered with.
    min_version: Option<i64>,
}

fn may_read(who: &Principal, file: &AudioView) -> bool {
    match who {
        Principal::Phone { user_id, tenant_id } => {
            *tenant_id == file.tenant_id && *user_id == file.uploaded_by
        }
        _ => who.is_staff_of(&file.tenant_id),
    }
}

/// An audio file and its transcript.
///
/// Where the transcript is and, once completed, its text, words with timings, language and
/// confidence (the blob's `object_key` is not shown). Read-your-writes with
/// `min_version`/`X-Min-Version` as for tenants. Readable by the file's tenant staff (and super
/// admins) and by the chatbot user who uploaded it; anyone else gets 404, as for an unknown id.
#[utoipa::path(
    get,
    path = "/v1/audio/{id}",
    operation_id = "audio_file",
    params(("id" = Uuid, Path), ("X-Min-Version" = Option<i64>, Header), DetailParams),
    responses(
        (status = 200, description = "The audio file.", body = AudioView, headers(
            ("X-Read-Version" = i64, description = "The version the row reflects."),
            ("X-Read-Stale" = String, description = "`true` when the read gave up waiting for `min_version`.")
        ))
    ),
    security(("bearer" = []))
)]
async fn detail(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<DetailParams>,
) -> Result<Response, Problem> {
    let not_found = || Problem::not_found("no such audio file");
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let min_version = freshness::min_version(&headers, params.min_version)?;
    let (row, stale) = freshness::read_at_least(
        state.read_wait,
        min_version,
        |a: &AudioView| a.version,
        || {
            sqlx::query_as(
                "SELECT id, tenant_id, uploaded_by, content_type, size_bytes, status,
                        transcript_id, text, transcript_chars, words, language, confidence,
                        attempts, checks, last_error, next_attempt_at, transcript_object_key,
                        created_at, updated_at, version
                   FROM audio_files WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(&state.pool)
        },
    )
    .await?;
    match row {
        Some(mut file) if may_read(&who, &file) => {
            let erased = file.text.as_deref() == Some(events::personal::ERASED);
            if let Some(key) = file.transcript_object_key.take().filter(|_| !erased) {
                // The file and its status still show when the stored transcript cannot be
                // read (the blob store down, the file lost): its preview, and a flag.
                match stored_transcript(&state, &key).await {
                    Ok(whole) => {
                        file.text = whole["text"].as_str().map(str::to_owned).or(file.text);
                        file.words = Some(whole["words"].clone());
                    }
                    Err(e) => {
                        tracing::warn!(audio_id = %file.id, error = %e, "a stored transcript could not be read");
                        file.transcript_unavailable = true;
                    }
                }
            }
            let version = file.version;
            let mut response = Json(file).into_response();
            freshness::version_headers(response.headers_mut(), Some(version), stale);
            Ok(response)
        }
        _ => Err(not_found()),
    }
}

/// A transcript kept in the blob store (`{"text": …, "words": [...]}`; sealed whole for
/// the person a recording is about, docs/privacy.md).
pub(crate) async fn stored_transcript(
    state: &AppState,
    key: &str,
) -> Result<serde_json::Value, String> {
    let bytes = state
        .blobs
        .get(&object_store::path::Path::from(key))
        .await
        .map_err(|e| e.to_string())?
        .bytes()
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&bytes);
    let opened = state.keyring.open(&text).await.map_err(|e| e.to_string())?;
    if opened == events::personal::ERASED {
        return Ok(serde_json::json!({"text": opened, "words": []}));
    }
    serde_json::from_str(&opened).map_err(|e| e.to_string())
}
