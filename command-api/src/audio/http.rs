//! Routes of audio files: `POST /v1/audio` (a multipart upload, streamed into the blob
//! store), `POST /v1/audio/{id}/transcribe` (the platform's process manager: request or
//! check the transcript when due; a tenant admin: ask again), `POST /v1/audio/{id}/attach`
//! (post the transcript in a chat thread), and the processing of AssemblyAI's webhooks.

use axum::extract::multipart::{Field, MultipartRejection};
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use events::access::Principal;
use events::audio::AUDIO;
use events::chat::Attachment;
use events::envelope::ActorKind;
use events::http::extract::status_problem;
use events::http::{AuthUser, Json, Problem, Query, RequestIds};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::aggregate::{Audio, AudioCommand, AudioError, Status};
use super::service::{check, parts, start, whole_text};
use super::upload::MAX_AUDIO_BYTES;
use crate::chat::commands::{Action, ThreadCommand};
use crate::http::accepted;
use crate::http::error::DomainProblem;
use crate::http::idempotency::KeyedRequest;
use crate::http::limits;
use crate::AppState;

/// Transcripts a tenant's admins may ask for again in an hour.
pub const ADMIN_RETRIES_PER_TENANT_PER_HOUR: i64 = 20;

/// The media types accepted, and the extension each is stored under.
const AUDIO_TYPES: &[(&str, &str)] = &[
    ("audio/mpeg", "mp3"),
    ("audio/wav", "wav"),
    ("audio/x-wav", "wav"),
    ("audio/wave", "wav"),
    ("audio/ogg", "ogg"),
    ("audio/webm", "webm"),
    ("audio/mp4", "m4a"),
];

/// The routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload))
        // The multipart envelope around the largest file.
        .layer(DefaultBodyLimit::max(MAX_AUDIO_BYTES as usize + 64 * 1024))
        .routes(routes!(transcribe))
        .routes(routes!(attach))
}

/// `?tenant_id=` of an upload (super admins name the tenant).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadParams {
    /// The tenant (super admins name it; others may only name their own).
    #[serde(default)]
    pub tenant_id: Option<Uuid>,
    /// The thread the recording is about: its customer is the recording's data subject
    /// (docs/privacy.md).
    #[serde(default)]
    pub thread_id: Option<Uuid>,
}

/// The form of an audio upload.
// Documents the multipart body `upload` reads as a stream.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct AudioUpload {
    /// The audio, at most 100 MiB; its part's Content-Type is audio/mpeg, audio/wav (or
    /// audio/x-wav, audio/wave), audio/ogg, audio/webm or audio/mp4.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// The tenant an upload belongs to: the caller's own (staff or a chatbot user), or the one a
/// super admin names.
fn upload_tenant(who: &Principal, asked: Option<Uuid>) -> Result<String, Problem> {
    let own = match who {
        Principal::Phone { tenant_id, .. } => Some(tenant_id.clone()),
        Principal::Admin {
            tenant_id: Some(t), ..
        } if !who.is_super_admin() => Some(t.clone()),
        _ => None,
    };
    match (own, asked) {
        (Some(own), None) => Ok(own),
        (Some(own), Some(t)) if t.to_string() == own => Ok(own),
        (None, Some(t)) if who.is_super_admin() => Ok(t.to_string()),
        (None, None) if who.is_super_admin() => Err(Problem::unprocessable(
            "tenant_required",
            "Name the tenant (tenant_id).",
        )),
        _ => Err(Problem::forbidden("Audio is uploaded in one's own tenant.")),
    }
}

/// Upload an audio file.
///
/// Multipart field `file` (other fields are skipped; none named `file`: 400 `missing_file`)
/// whose Content-Type is audio/mpeg, audio/wav (or audio/x-wav, audio/wave), audio/ogg,
/// audio/webm or audio/mp4, parameters ignored (415 `unsupported_audio` otherwise; a body that
/// is not multipart: 415 `unsupported_media_type`), 1 byte to 100 MiB (400 `empty_file`; 413
/// `payload_too_large` above, the rest of the body read and dropped so the client gets the
/// answer). Streamed into the blob store part by part under
/// `tenants/{tenant}/audio/{id}/{upload}.{ext}` (`upload` a fresh id per attempt; `mp3`, `wav`,
/// `ogg`, `webm`, `m4a`), never held whole in memory, so an upload that is then refused never
/// overwrites a stored file; an upload refused for its content, or by the aggregate, leaves no
/// blob and appends nothing. Event: AudioUploaded (with the file's size and hex SHA-256). The
/// platform then requests the transcript from AssemblyAI (`POST /v1/audio/{id}/transcribe`) and
/// AssemblyAI's webhook completes it (`POST /api/webhooks/assemblyai`); read it on query-api
/// `GET /v1/audio/{id}`, and post it in a thread with `POST /v1/audio/{id}/attach`. Allowed: a
/// tenant's staff and its chatbot (phone) users, in their own tenant (naming another: 403); a
/// super admin names the tenant (`tenant_id`; without it: 422 `tenant_required`); anyone else:
/// 403. With `thread_id`, the recording is about the thread's customer (the caller must see
/// the thread: 404 otherwise; a thread without a customer: 422 `no_customer`); a chatbot
/// user's own upload is about them: its transcript is sealed for that person and the file
/// and transcript are deleted with them (an erased person: 410 `subject_erased`, nothing
/// stored; docs/privacy.md). Answer 201 with `Location: /v1/audio/{id}`. The file must begin as its declared type
/// does (MP3: an ID3 tag or an MPEG frame; WAV: RIFF…WAVE; Ogg: OggS; WebM: an EBML header;
/// MP4: an ftyp box), else 415 `audio_content_mismatch` and nothing is stored. Each user
/// uploads at most `AUDIO_UPLOADS_PER_USER_PER_HOUR` files an hour (default 30; 429
/// `rate_limited` with `Retry-After` beyond) and `AUDIO_UPLOAD_MIB_PER_USER_PER_DAY` mebibytes
/// a day (default 1024, each file counted by the MiB it starts; 429 `upload_quota_exceeded`
/// with `Retry-After` once used up).
#[utoipa::path(
    post,
    path = "/v1/audio",
    params(UploadParams),
    request_body(content = AudioUpload, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Created: the audio file and its version (also in `ETag`, `Location`). Pass the version to query-api as `min_version` to read your write.", body = crate::http::Accepted),
        (status = 404, response = events::http::openapi::ProblemAnswer),
        (status = 429, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn upload(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    keyed: Option<Extension<KeyedRequest>>,
    Query(params): Query<UploadParams>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, Problem> {
    let tenant = upload_tenant(&who, params.tenant_id)?;
    if who.is_super_admin() {
        crate::http::named_tenant(&state, &tenant).await?;
    }
    let subject =
        super::personal::recording_subject(&state, &who, &tenant, params.thread_id).await?;
    let mut multipart = multipart.map_err(not_multipart)?;
    let field = loop {
        match multipart
            .next_field()
            .await
            .map_err(|e| status_problem(e.status(), e.body_text()))?
        {
            Some(f) if f.name() == Some("file") => break f,
            Some(_) => continue,
            None => {
                return Err(Problem::bad_request(
                    "missing_file",
                    "Send the audio as a multipart field named `file`.",
                ))
            }
        }
    };
    let (content_type, extension) = audio_type(&field)?;
    let volume = super::service::admit_upload(&state, &who).await?;
    let id = keyed
        .as_deref()
        .map(KeyedRequest::derived_id)
        .unwrap_or_else(Uuid::now_v7)
        .to_string();
    // A name of this attempt's own: an upload the aggregate then refuses (the id is taken)
    // cannot have overwritten the file an earlier upload stored.
    let object_key = format!(
        "tenants/{tenant}/audio/{id}/{}.{extension}",
        Uuid::now_v7().simple()
    );
    let path = object_store::path::Path::from(object_key.as_str());
    let chunks = field.map_err(|e| status_problem(e.status(), e.body_text()));
    let (size, sha256) =
        super::upload::stream_to_store(&state, chunks, &content_type, &path, &volume).await?;
    let command = AudioCommand::Upload {
        tenant_id: tenant.clone(),
        uploaded_by: who.user_id().to_owned(),
        object_key,
        content_type,
        size_bytes: size,
        sha256,
        subject,
        at: state.clock.now(),
    };
    let metadata = ids.metadata(&tenant, who.user_id(), who.actor_kind());
    let c = super::service::record_upload(&state, &id, command, &metadata, &path).await?;
    Ok(accepted(
        StatusCode::CREATED,
        AUDIO,
        &c.aggregate_id,
        c.version,
    ))
}

/// 415: the body is not multipart.
fn not_multipart(e: MultipartRejection) -> Problem {
    Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        e.body_text(),
    )
}

/// The media type of an uploaded file and the extension it is stored with: 415 for a type
/// that is not audio.
fn audio_type(field: &Field<'_>) -> Result<(String, &'static str), Problem> {
    let content_type = field
        .content_type()
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let Some((_, extension)) = AUDIO_TYPES.iter().find(|(t, _)| *t == content_type) else {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_audio",
            "Audio is MP3 (audio/mpeg), WAV, Ogg, WebM or MP4 (audio/mp4).",
        ));
    };
    Ok((content_type, extension))
}

/// The audio file `raw` names, if the caller may use it: staff of its tenant, or the chatbot
/// user who uploaded it; 404 otherwise.
async fn audio_of(
    state: &AppState,
    who: &Principal,
    raw: &str,
) -> Result<(String, Audio), Problem> {
    let id = Uuid::parse_str(raw)
        .map_err(|_| AudioError::NotFound.problem())?
        .to_string();
    let audio = state.ctx.audio.files.load(&id).await?;
    let allowed = match audio.tenant_id() {
        None => false,
        Some(t) => match who {
            Principal::Phone { user_id, tenant_id } => {
                tenant_id == t && user_id == audio.uploaded_by()
            }
            Principal::Service { .. } => true,
            Principal::Admin { .. } => who.is_staff_of(t),
        },
    };
    if allowed {
        Ok((id, audio))
    } else {
        Err(AudioError::NotFound.problem())
    }
}

/// Where an audio file's transcript is, after a request, a check or a retry.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Transcription {
    /// The audio file.
    #[schema(format = Uuid)]
    pub id: String,
    /// Where its transcript is now. After an appended event: `requesting` (the request was
    /// claimed and goes on in the background: TranscriptRequested, TranscriptionAttemptFailed
    /// or TranscriptionFailed follows), `requested` (a check found it not final),
    /// `completed`/`failed` (a check finished it), `uploaded` (an admin's retry while the
    /// request was not yet due); otherwise where it was.
    pub status: Status,
    /// The audio file's version after the command; absent when nothing was appended
    /// (requested and not yet to be checked, under way, final, or before a retry's time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// Request, check or ask again for a transcript.
///
/// The platform's process manager (a platform service token) sends files whose request or check
/// is due; a tenant admin or super admin asks again (agents and chatbot users: 403; another
/// tenant's file: 404). An admin's call first appends TranscriptionRetried when the transcript
/// failed (attempts count from the first again) or waits out a back-off (sent now); a requested
/// one is checked with the service now; a completed transcript answers 409
/// `already_transcribed` and one under way its status, neither counted; a tenant's admins ask
/// at most 20 times an hour (429 `rate_limited`, `Retry-After`). After an attempt whose answer
/// was lost (5xx or timeout after the upload), the next one first looks for the transcript
/// among the service's latest (`GET /v2/transcript?limit=200`, by `audio_url`) and re-requests
/// the same upload if there is none. A check answered 404 fails the transcript at once. A due
/// request is first claimed (TranscriptionStarted, 15 minutes): a concurrent caller finds it
/// claimed and sends nothing, so a file makes one transcript per request. The answer comes at
/// once (`status: requesting`); in the background the claimant streams the file from the blob
/// store to AssemblyAI `POST /v2/upload` (10-minute timeout), then `POST /v2/transcript`
/// (2-minute timeout) with the returned `audio_url`, `webhook_url` =
/// `{BACKEND_URL}/api/webhooks/assemblyai?audio_id={id}`, `webhook_auth_header_name`
/// `x-webhook-secret` and `webhook_auth_header_value` the first secret of
/// ASSEMBLYAI_WEBHOOK_SECRET (the API key ASSEMBLYAI_API_KEY in `authorization`), and records
/// the outcome: TranscriptRequested (with AssemblyAI's transcript id); or, when AssemblyAI is
/// unreachable, answers 401, 403, 408, 429 or 5xx, TranscriptionAttemptFailed (`error`; retried
/// after 2 s, 4 s, 8 s … at most 5 min); or TranscriptionFailed (`attempts`, `error`) on the
/// 20th failure (about an hour), a refusal of the file (another 4xx), a file missing from the
/// blob store, or transcription not configured (ASSEMBLYAI_API_KEY and BACKEND_URL). A
/// requested transcript no webhook has finished is checked from 10 minutes after its request
/// (`GET /v2/transcript/{id}`): completed → TranscriptCompleted, error → TranscriptFailed, not
/// final or not reachable → TranscriptChecked (next check 20, 40 … at most 60 minutes later);
/// 24 hours after the request, TranscriptFailed. Nothing due: answers `{id, status}` and
/// appends nothing. 404 for an unknown id. A recording about a person who was erased is
/// never sent (its request fails for good; an admin asking again gets 410 `subject_erased`).
///
/// Where the transcript is: the platform's process manager sends files whose request or
/// check is due; a tenant's admin asks again (after a failure, or at once while retries
/// wait). A request is started (claimed) before the file is sent, so however many callers
/// ask at once, one sends it; a check asks the service about a transcript no webhook has
/// finished.
#[utoipa::path(
    post,
    path = "/v1/audio/{id}/transcribe",
    params(("id" = Uuid, Path, description = "The audio file.")),
    responses(
        (status = 200, description = "Requested, to be retried, given up, or not due.", body = Transcription),
        (status = 400, response = events::http::openapi::ProblemAnswer),
        (status = 429, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn transcribe(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let (id, mut audio) = audio_of(&state, &who, &raw).await?;
    let tenant = audio.tenant_id().unwrap_or_default().to_owned();
    let now = state.clock.now();
    let mut version = None;
    if !matches!(who, Principal::Service { .. }) {
        if !who.administers(&tenant) {
            return Err(Problem::forbidden(
                "Transcripts are asked for again by the tenant's admins.",
            ));
        }
        match audio.status() {
            Status::Completed => return Err(AudioError::AlreadyTranscribed.problem()),
            // Under way: nothing to ask, and nothing counted.
            Status::Requesting => {
                return Ok(Json(Transcription::of(id, &audio, None)).into_response())
            }
            _ => {}
        }
        super::personal::not_about_erased(&state, &audio).await?;
        // Each retry may send a file of up to 100 MiB for paid transcription again: a
        // tenant asks so many times an hour.
        let bucket = format!("audio-retries:{tenant}");
        if let Some(retry_after) =
            limits::over_limit(&state, &bucket, ADMIN_RETRIES_PER_TENANT_PER_HOUR)
                .await
                .map_err(|e| Problem::unavailable(&e))?
        {
            return Err(Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "Too many transcripts asked for again this hour; retry in {retry_after} s."
                ),
            )
            .with_header(
                header::RETRY_AFTER,
                HeaderValue::from_str(&retry_after.to_string())
                    .unwrap_or(HeaderValue::from_static("3600")),
            ));
        }
        let metadata = ids.metadata(&tenant, who.user_id(), who.actor_kind());
        let retry = AudioCommand::Retry {
            by: who.user_id().to_owned(),
            at: now,
        };
        let c = state
            .ctx
            .audio
            .files
            .execute(&id, None, retry, &metadata)
            .await?;
        version = Some(c.version);
        audio = state.ctx.audio.files.load(&id).await?;
    }
    let metadata = ids.metadata(&tenant, "transcriber", ActorKind::System);
    let forced = version.is_some() && audio.status() == Status::Requested;
    let worked = if forced || audio.check_due(now) {
        Some(check(&state, &id, &audio, forced, &metadata).await?)
    } else if audio.due(now) {
        start(&state, &id, &audio, &metadata).await?
    } else {
        None
    };
    let audio = match worked.or(version) {
        Some(v) => {
            version = Some(v);
            state.ctx.audio.files.load(&id).await?
        }
        None => audio,
    };
    Ok(Json(Transcription::of(id, &audio, version)).into_response())
}

impl Transcription {
    /// Where `audio`'s transcript is, with the version a command left it at.
    fn of(id: String, audio: &super::aggregate::Audio, version: Option<u64>) -> Self {
        Self {
            id,
            status: audio.status(),
            version,
        }
    }
}

/// Body of an attachment to a thread.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attach {
    /// The thread.
    pub thread_id: Uuid,
}

/// What posting a transcript in a thread answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TranscriptPosted {
    /// The thread.
    pub id: String,
    /// The first message (it carries the audio).
    pub message_id: String,
    /// Every message of the transcript, in order.
    pub message_ids: Vec<String>,
    /// The thread's version after the last message (also in `ETag`).
    pub version: u64,
}

/// 422 `transcript_not_ready`: the transcript is not complete (or failed).
fn not_ready() -> Problem {
    Problem::unprocessable("transcript_not_ready", "The transcript is not complete.")
}

/// Post a transcript in a chat thread.
///
/// Posts the completed transcript as messages of the caller in thread `thread_id`, the first
/// with the audio file attached (its `object_key`, `content_type` and `size_bytes`): a
/// transcript longer than a message continues in the next ones, of at most 4,000 characters
/// each, cut at a space; one without speech is posted as `(no speech in the transcript)`. The
/// messages' ids derive from the file (as a `client_message_id` `transcript:{id}`, then
/// `transcript:{id}:2` … would), so a retry names the same messages and appends nothing. A
/// message in a closed thread reopens it (events Reopened, MessageSent). 422
/// `transcript_not_ready` until the transcript is complete (also when it failed); the thread's
/// rules apply: 404 when the caller may not see the thread, 422 `invalid_text` (control
/// characters), `invalid_attachment` (a thread of another tenant than the file's). Allowed: the
/// file's tenant staff (and super admins), the chatbot user who uploaded it — who must also
/// take part in the thread — and the platform; anyone else gets 404, as for an unknown file.
/// A recording about a person is posted only in a thread whose customer they are (422
/// `not_their_thread`): posted elsewhere, it would be sealed for someone else and outlive
/// their erasure (docs/privacy.md).
///
/// Posts the transcript in a thread, as messages of the caller: the first carries the audio
/// file, and a transcript longer than a message continues in the next ones. Retries name
/// the same messages (their ids derive from the file and the part).
#[utoipa::path(
    post,
    path = "/v1/audio/{id}/attach",
    params(("id" = Uuid, Path, description = "The audio file.")),
    request_body = Attach,
    responses(
        (status = 201, description = "Created: the thread, its new version (also in `ETag`), the first message's id and every message's id. A transcript longer than a message (4,096 characters) is posted as several messages of at most 4,000 characters, cut at a space, the first carrying the audio.", body = TranscriptPosted)
    ),
    security(("bearer" = []))
)]
async fn attach(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(raw): Path<String>,
    Json(body): Json<Attach>,
) -> Result<Response, Problem> {
    let (id, audio) = audio_of(&state, &who, &raw).await?;
    let Some(text) = whole_text(&state, &audio).await? else {
        return Err(not_ready());
    };
    let mut parts = parts(&text);
    if parts.is_empty() {
        // Silence: the file is posted with a line saying so.
        parts.push("(no speech in the transcript)".to_owned());
    }
    let thread = body.thread_id.to_string();
    super::personal::postable_in(&state, &who, &audio, &thread).await?;
    let tenant = crate::chat::service::tenant_of(&state, &who, &thread).await?;
    let (object_key, content_type, size_bytes) = audio.file();
    let metadata = ids.metadata(&tenant, who.user_id(), who.actor_kind());
    let mut first = None;
    let mut message_ids = Vec::new();
    let mut last = None;
    for (n, part) in parts.into_iter().enumerate() {
        let client_id = match n {
            0 => format!("transcript:{id}"),
            n => format!("transcript:{id}:{}", n + 1),
        };
        let message_id =
            crate::chat::service::item_id(&thread, who.user_id(), Some(&client_id), None);
        let command = ThreadCommand {
            thread_id: thread.clone(),
            actor: crate::chat::service::actor(&who),
            at: state.clock.now(),
            action: Action::Send {
                message_id: message_id.clone(),
                client_message_id: Some(client_id),
                text: part,
                attachment: (n == 0).then(|| Attachment {
                    object_key: object_key.to_owned(),
                    content_type: content_type.to_owned(),
                    name: None,
                    size_bytes,
                }),
            },
        };
        let threads = &state.ctx.chat.threads;
        last = Some(threads.execute(&thread, None, command, &metadata).await?);
        first.get_or_insert_with(|| message_id.clone());
        message_ids.push(message_id);
    }
    let (Some(c), Some(first)) = (last, first) else {
        return Err(not_ready());
    };
    let mut response = (
        StatusCode::CREATED,
        Json(TranscriptPosted {
            id: c.aggregate_id,
            message_id: first,
            message_ids,
            version: c.version,
        }),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", c.version)) {
        response.headers_mut().insert(header::ETAG, v);
    }
    Ok(response)
}

impl DomainProblem for crate::audio::aggregate::AudioError {
    fn problem(&self) -> Problem {
        use crate::audio::aggregate::AudioError as E;
        match self {
            E::NotFound => Problem::not_found(self.to_string()),
            E::AlreadyExists => {
                Problem::new(StatusCode::CONFLICT, "already_exists", self.to_string())
            }
            E::AlreadyTranscribed => Problem::new(
                StatusCode::CONFLICT,
                "already_transcribed",
                self.to_string(),
            ),
        }
    }
}
