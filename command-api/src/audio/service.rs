//! Audio's application layer: the transcription process (a request claimed, the file sent
//! in the background, checks of transcripts no webhook finished, the transcript completed
//! from the service or the blob store) and what AssemblyAI's webhooks do when processed.
use axum::http::{header, HeaderValue, StatusCode};
use events::audio::{StoredTranscript, MAX_INLINE_TRANSCRIPT_BYTES, PREVIEW_CHARS};
use events::http::Problem;
use events::keyring::KeyError;
use events::webhooks::Outcome;
use events::Metadata;
use futures::TryStreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::aggregate::{Audio, AudioCommand, Status};
use super::assemblyai::{ServiceError, Transcript};
use super::personal;
use crate::store::CommandError;
use crate::webhooks::service::{Attributed, Processing};
use crate::AppState;

/// Files a command-api process sends to the transcription service at once.
pub const TRANSCRIPTION_SLOTS: usize = 4;

/// Claims the request and, if this caller got the claim, sends the file in the background
/// and records the outcome when it comes (requested; or a failed attempt, retried later; or
/// given up): the claim's version. The caller is answered at once — an upload of a large
/// file takes minutes, and no caller (the process manager, an admin) should wait for it or
/// time out while it goes on. Should this process stop meanwhile, the claim lapses and the
/// request is started again.
pub(crate) async fn start(
    state: &AppState,
    id: &str,
    audio: &Audio,
    metadata: &Metadata,
) -> Result<Option<u64>, Problem> {
    // A slot first: without one the request is not claimed, and stays due.
    let Ok(slot) = state
        .ctx
        .audio
        .transcription_slots
        .clone()
        .try_acquire_owned()
    else {
        return Ok(None);
    };
    let at = state.clock.now();
    let (claim, claimed) = state
        .ctx
        .audio
        .files
        .execute_with_events(id, None, AudioCommand::Start { at }, metadata)
        .await?;
    if claimed.is_empty() {
        // Another caller holds the claim, or the request is no longer due.
        return Ok(None);
    }
    let (state, id, audio, metadata) = (
        state.clone(),
        id.to_owned(),
        audio.clone(),
        metadata.clone(),
    );
    tokio::spawn(async move {
        let command = attempt(&state, &id, &audio, &metadata).await;
        // The outcome is recorded however long the call took; should the store be
        // unreachable now, the claim lapses and the request is made again.
        if let Err(e) = state
            .ctx
            .audio
            .files
            .execute(&id, None, command, &metadata)
            .await
        {
            tracing::warn!(audio_id = %id, error = %e, "a transcript request's outcome could not be recorded");
        }
        drop(slot);
    });
    Ok(Some(claim.version))
}

/// One request of the transcript of audio file `id`, as the command recording its outcome.
/// Nothing about an erased person goes to the service (an upload that spanned their
/// erasure): its request fails for good.
async fn attempt(state: &AppState, id: &str, audio: &Audio, metadata: &Metadata) -> AudioCommand {
    let failed = |error: String, permanent: bool, unanswered_upload: Option<String>| {
        AudioCommand::RecordRequestFailure {
            permanent,
            error,
            unanswered_upload,
            at: state.clock.now(),
        }
    };
    match personal::about_erased(state, audio).await {
        Ok(true) => return failed(personal::ERASED_SUBJECT.into(), true, None),
        Err(e) => return failed(format!("the key table is unavailable: {e}"), false, None),
        Ok(false) => {}
    }
    match request(state, id, audio, metadata).await {
        Ok(transcript_id) => AudioCommand::RecordRequest {
            transcript_id,
            at: state.clock.now(),
        },
        // Erased while the file went up (the request stopped before asking).
        Err(_) if personal::about_erased(state, audio).await == Ok(true) => {
            failed(personal::ERASED_SUBJECT.into(), true, None)
        }
        Err(RequestFailure {
            error,
            unanswered_upload,
        }) => {
            tracing::warn!(audio_id = %id, %error, "transcript request failed");
            let permanent = matches!(error, ServiceError::Refused(_));
            failed(error.to_string(), permanent, unanswered_upload)
        }
    }
}

/// Asks the service about a requested transcript no webhook has finished (`forced`: an
/// admin's, now): finishes it; fails it when the service does not know it (deleted, or never
/// made: the file can be asked for again); or records the check (not final yet, or the
/// service could not be asked, and why).
pub(crate) async fn check(
    state: &AppState,
    id: &str,
    audio: &Audio,
    forced: bool,
    metadata: &Metadata,
) -> Result<u64, Problem> {
    let transcript_id = audio.transcript_id().unwrap_or_default().to_owned();
    let at = state.clock.now();
    let looked = match &state.ctx.audio.assemblyai {
        None => Err(ServiceError::Unavailable(
            "transcription is not configured".to_owned(),
        )),
        Some(client) => client.transcript(&transcript_id).await,
    };
    let command = match looked {
        Ok(t) if matches!(t.status.as_str(), "completed" | "error") => {
            finishing(state, id, audio, &transcript_id, t, None, at)
                .await
                .map_err(|e| Problem::unavailable(&e))?
        }
        Ok(_) => AudioCommand::RecordCheck {
            transcript_id,
            error: None,
            forced,
            at,
        },
        Err(ServiceError::Refused(error)) => AudioCommand::Fail {
            transcript_id,
            error: format!("the service does not know the transcript: {error}"),
            webhook_id: None,
            at,
        },
        Err(error) => {
            tracing::warn!(audio_id = %id, %error, "transcript check failed");
            AudioCommand::RecordCheck {
                transcript_id,
                error: Some(error.to_string()),
                forced,
                at,
            }
        }
    };
    Ok(state
        .ctx
        .audio
        .files
        .execute(id, None, command, metadata)
        .await?
        .version)
}

/// Why a finished transcript could not be recorded (yet).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unfinished {
    /// The blob store failed.
    #[error(transparent)]
    Blob(#[from] object_store::Error),
    /// The recording's subject's key could not be read or made.
    #[error(transparent)]
    Key(KeyError),
}

/// The command that finishes transcript `transcript_id` as the service reported it
/// (`completed` or `error`). A transcript too large for an event is written to the blob
/// store first, and the event names it and carries a preview. A recording about a person
/// has its text, words and stored file sealed for them; once they are erased, nothing of
/// it is kept (the transcript is recorded failed).
pub(crate) async fn finishing(
    state: &AppState,
    id: &str,
    audio: &Audio,
    transcript_id: &str,
    transcript: Transcript,
    webhook_id: Option<String>,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<AudioCommand, Unfinished> {
    // What the service says is stored as events: no NUL (PostgreSQL cannot store it), and
    // the error and language bounded.
    let clean = |s: String| s.replace('\0', "\u{fffd}");
    if transcript.status != "completed" {
        let error: String = transcript
            .error
            .unwrap_or_else(|| "error".into())
            .chars()
            .take(500)
            .collect();
        return Ok(AudioCommand::Fail {
            transcript_id: transcript_id.to_owned(),
            error: clean(error),
            webhook_id,
            at,
        });
    }
    let language = transcript
        .language
        .map(|l| clean(l.chars().take(16).collect()));
    let words: Vec<events::audio::Word> = transcript
        .words
        .into_iter()
        .map(|mut w| {
            w.text = clean(w.text);
            w
        })
        .collect();
    let text = clean(transcript.text.unwrap_or_default());
    let whole = serde_json::to_vec(&json!({"text": text, "words": words})).unwrap_or_default();
    let erased = || personal::not_kept(state, transcript_id, webhook_id.clone(), at);
    let (text, words, stored) = if whole.len() <= MAX_INLINE_TRANSCRIPT_BYTES {
        (text, words, None)
    } else {
        let stored = match store_whole(state, id, audio, transcript_id, whole, &text).await {
            Err(Unfinished::Key(KeyError::Erased)) => return Ok(erased().await),
            stored => stored?,
        };
        let preview = text.chars().take(PREVIEW_CHARS).collect();
        (preview, Vec::new(), Some(stored))
    };
    let (text, words, words_sealed) =
        match personal::seal_transcript(state, audio, text, words).await {
            Ok(sealed) => sealed,
            Err(KeyError::Erased) => return Ok(erased().await),
            Err(e) => return Err(Unfinished::Key(e)),
        };
    Ok(AudioCommand::Complete {
        transcript_id: transcript_id.to_owned(),
        text,
        words,
        words_sealed,
        stored,
        language,
        confidence: transcript.confidence,
        webhook_id,
        at,
    })
}

/// Writes transcript `whole` (its JSON) of audio file `id` to the blob store, named by the
/// transcript so a repeated finish writes the same file again; for a recording about a
/// person, the file holds the JSON text sealed for them.
async fn store_whole(
    state: &AppState,
    id: &str,
    audio: &Audio,
    transcript_id: &str,
    whole: Vec<u8>,
    text: &str,
) -> Result<StoredTranscript, Unfinished> {
    let name: String = transcript_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(100)
        .collect();
    let object_key = format!(
        "tenants/{}/audio/{id}/transcript-{name}.json",
        audio.tenant_id().unwrap_or_default()
    );
    let whole =
        personal::sealed_for_subject(state, audio, String::from_utf8_lossy(&whole).into_owned())
            .await
            .map_err(Unfinished::Key)?
            .into_bytes();
    let stored = StoredTranscript {
        object_key: object_key.clone(),
        size_bytes: whole.len() as u64,
        sha256: crate::values::hex(&Sha256::digest(&whole)),
        text_chars: text.chars().count() as u64,
    };
    state
        .blobs
        .put(&object_store::path::Path::from(object_key), whole.into())
        .await?;
    Ok(stored)
}

/// Why a request failed, and the file's URL at the service when it was uploaded but the
/// transcript request's answer was lost (the service may have made a transcript of it).
pub(crate) struct RequestFailure {
    error: ServiceError,
    unanswered_upload: Option<String>,
}

impl From<ServiceError> for RequestFailure {
    fn from(error: ServiceError) -> Self {
        Self {
            error,
            unanswered_upload: None,
        }
    }
}

/// Sends the file to AssemblyAI, streamed from the blob store, and asks for its transcript.
/// After an attempt whose answer was lost, first looks for the transcript the service may
/// have made of the file it has, and asks again for that file without a new upload.
pub(crate) async fn request(
    state: &AppState,
    id: &str,
    audio: &Audio,
    metadata: &Metadata,
) -> Result<String, RequestFailure> {
    let Some(client) = &state.ctx.audio.assemblyai else {
        return Err(ServiceError::Refused(
            "transcription is not configured (ASSEMBLYAI_API_KEY and BACKEND_URL)".into(),
        )
        .into());
    };
    let upload_url = match audio.unanswered_upload() {
        Some(url) => {
            let kept = |error: ServiceError| RequestFailure {
                error,
                unanswered_upload: Some(url.to_owned()),
            };
            if let Some(found) = client.find_transcript(url).await.map_err(kept)? {
                return Ok(found);
            }
            url.to_owned()
        }
        None => {
            let (object_key, _, _) = audio.file();
            let file = state
                .blobs
                .get(&object_store::path::Path::from(object_key))
                .await
                .map_err(|e| match e {
                    object_store::Error::NotFound { .. } => ServiceError::Refused(
                        "the audio file is missing from the blob store".into(),
                    ),
                    other => ServiceError::Unavailable(format!("blob store: {other}")),
                })?;
            let body =
                reqwest::Body::wrap_stream(file.into_stream().map_err(std::io::Error::other));
            let url = client.upload(body).await?;
            // Recorded before the transcript is requested: should this process die before
            // the answer is recorded, the next attempt looks for a transcript of this upload
            // instead of making a second one.
            let record = AudioCommand::RecordUpload {
                upload_url: url.clone(),
                at: state.clock.now(),
            };
            if let Err(e) = state
                .ctx
                .audio
                .files
                .execute(id, None, record, metadata)
                .await
            {
                return Err(ServiceError::Unavailable(format!("event store: {e}")).into());
            }
            url
        }
    };
    // The person may have been erased while the file went up: no transcript is asked for.
    personal::not_erased_yet(state, audio).await?;
    let reused = audio.unanswered_upload().is_some();
    client
        .request_transcript(&upload_url, id)
        .await
        .map_err(|error| match error {
            // No answer, or a failing one: the service may have accepted.
            ServiceError::Unavailable(_) => RequestFailure {
                error,
                unanswered_upload: Some(upload_url.clone()),
            },
            // The service no longer has the file uploaded before: upload it again next
            // time rather than give up.
            ServiceError::Refused(e) if reused => {
                ServiceError::Unavailable(format!("the earlier upload is gone: {e}")).into()
            }
            error => error.into(),
        })
}

/// The whole text of a completed transcript: from its event, or from the blob store when
/// it was too large for one.
pub(crate) async fn whole_text(state: &AppState, audio: &Audio) -> Result<Option<String>, Problem> {
    let Some(text) = audio.text() else {
        return Ok(None);
    };
    // Sealed for the recording's subject: `[erased]` once they are.
    let opened = |text: String| async move {
        state
            .keyring
            .open(&text)
            .await
            .map_err(|e| Problem::unavailable(&e))
    };
    let text = opened(text.to_owned()).await?;
    let Some(stored) = audio.stored() else {
        return Ok(Some(text));
    };
    if text == events::personal::ERASED {
        return Ok(Some(text));
    }
    let bytes = state
        .blobs
        .get(&object_store::path::Path::from(stored.object_key.as_str()))
        .await
        .map_err(|e| Problem::unavailable(&e))?
        .bytes()
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let bytes = opened(String::from_utf8_lossy(&bytes).into_owned()).await?;
    let whole: serde_json::Value =
        serde_json::from_str(&bytes).map_err(|e| Problem::unavailable(&e))?;
    Ok(Some(whole["text"].as_str().unwrap_or(&text).to_owned()))
}

/// `text` cut into messages of at most [`MAX_PART_CHARS`] characters, at a space or line
/// break where there is one near the end of a part.
pub(crate) fn parts(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.trim().chars().collect();
    let mut parts = Vec::new();
    let mut from = 0;
    while from < chars.len() {
        let mut to = (from + MAX_PART_CHARS).min(chars.len());
        if to < chars.len() {
            // Back to the last whitespace in the part's final fifth, if any.
            if let Some(space) = (to - MAX_PART_CHARS / 5..to)
                .rev()
                .find(|&i| chars[i].is_whitespace())
            {
                to = space;
            }
        }
        let part: String = chars[from..to].iter().collect();
        if !part.trim().is_empty() {
            parts.push(part.trim().to_owned());
        }
        from = to;
    }
    parts
}

/// The most characters of a transcript posted in one message (a chat message holds 4,096).
pub(crate) const MAX_PART_CHARS: usize = 4_000;

/// Processes an AssemblyAI webhook: fetches the transcript it announces and completes (or
/// fails) the audio file's transcript; a webhook for another transcript, or after the
/// transcript is final, changes nothing. A webhook that comes before its request is
/// recorded (the service is quicker than the answer to the request) is processed again.
pub(crate) async fn process_webhook(
    state: &AppState,
    webhook_id: &str,
    payload: &serde_json::Value,
    metadata: impl Fn(&str) -> Metadata,
) -> Processing {
    let ignored = |detail: &str| Processing::Done(Outcome::Ignored, None, detail.to_owned());
    let text = |k: &str| payload.get(k).and_then(serde_json::Value::as_str);
    let (Some(audio_id), Some(transcript_id)) = (text("audio_id"), text("transcript_id")) else {
        return ignored("names no audio file");
    };
    let audio = match state.ctx.audio.files.load(audio_id).await {
        Ok(a) => a,
        Err(_) => return Processing::Retry("event store unavailable".into()),
    };
    let Some(tenant) = audio.tenant_id().map(str::to_owned) else {
        return ignored("no such audio file");
    };
    // Nothing of a suspended tenant is processed: the transcript waits for its reactivation.
    if state.access.is_suspended(&tenant) {
        return Processing::Held(tenant);
    }
    let attributed = Some(Attributed {
        payment_id: None,
        tenant_id: tenant.clone(),
    });
    let transcript = match fetch_transcript(state, transcript_id, &attributed).await {
        Ok(transcript) => transcript,
        Err(outcome) => return outcome,
    };
    let metadata = metadata(&tenant);
    if let Err(retry) = adopt(
        state,
        &audio,
        audio_id,
        &transcript,
        transcript_id,
        &metadata,
    )
    .await
    {
        return retry;
    }
    let audio = match state.ctx.audio.files.load(audio_id).await {
        Ok(a) => a,
        Err(_) => return Processing::Retry("event store unavailable".into()),
    };
    if !matches!(transcript.status.as_str(), "completed" | "error") {
        // Not final yet (an early or out-of-order webhook): look again later.
        return Processing::Retry("the transcript is not final yet".into());
    }
    let at = state.clock.now();
    let webhook = Some(webhook_id.to_owned());
    let finished = finishing(
        state,
        audio_id,
        &audio,
        transcript_id,
        transcript,
        webhook,
        at,
    );
    let command = match finished.await {
        Ok(command) => command,
        Err(e) => {
            tracing::warn!(error = %e, "the transcript could not be stored");
            return Processing::Retry("blob store unavailable".into());
        }
    };
    let files = &state.ctx.audio.files;
    let recorded = files.execute_with_events(audio_id, None, command, &metadata);
    verdict(recorded.await, attributed)
}

/// The transcript the service has, asked for by its id: unknown there, the webhook is
/// ignored; the service unreachable or not configured, it is retried.
async fn fetch_transcript(
    state: &AppState,
    transcript_id: &str,
    attributed: &Option<Attributed>,
) -> Result<Transcript, Processing> {
    let Some(client) = &state.ctx.audio.assemblyai else {
        return Err(Processing::Retry("transcription is not configured".into()));
    };
    match client.transcript(transcript_id).await {
        Ok(t) => Ok(t),
        Err(ServiceError::Refused(_)) => Err(Processing::Done(
            Outcome::Ignored,
            attributed.clone(),
            "unknown transcript".into(),
        )),
        Err(e) => {
            tracing::warn!(error = %e, "assemblyai unavailable");
            Err(Processing::Retry(e.to_string()))
        }
    }
}

/// What processing made of the webhook, from what finishing the transcript recorded.
fn verdict(
    recorded: Result<
        (crate::store::Committed, Vec<events::audio::AudioEvent>),
        CommandError<super::aggregate::AudioError>,
    >,
    attributed: Option<Attributed>,
) -> Processing {
    match recorded {
        Ok((_, events)) => match events.first() {
            Some(e) => Processing::Done(
                Outcome::Applied,
                attributed,
                cqrs_es::DomainEvent::event_type(e),
            ),
            None => Processing::Done(
                Outcome::Recorded,
                attributed,
                "the transcript was already final, or is another one".into(),
            ),
        },
        Err(CommandError::Rejected(e)) => {
            Processing::Done(Outcome::Ignored, attributed, e.to_string())
        }
        Err(e) => {
            tracing::warn!(error = %e, "audio command failed");
            Processing::Retry("event store unavailable".into())
        }
    }
}

/// A transcript the service made of this file (its request named the file) while no
/// request outcome is recorded — the webhook came before the answer, or the answer was lost
/// (a timeout after the service accepted, a crash): recorded for the current request, so
/// the transcript the file has is kept instead of a second one requested and billed. One
/// the file had before (a replayed webhook) is not (the aggregate keeps every transcript id
/// it had).
async fn adopt(
    state: &AppState,
    audio: &Audio,
    audio_id: &str,
    transcript: &Transcript,
    transcript_id: &str,
    metadata: &Metadata,
) -> Result<(), Processing> {
    if !(matches!(audio.status(), Status::Requesting | Status::Uploaded)
        && transcript.is_for(audio_id))
    {
        return Ok(());
    }
    let adopt = AudioCommand::RecordRequest {
        transcript_id: transcript_id.to_owned(),
        at: state.clock.now(),
    };
    let files = &state.ctx.audio.files;
    if let Err(e) = files.execute(audio_id, None, adopt, metadata).await {
        tracing::warn!(error = %e, "audio command failed");
        return Err(Processing::Retry("event store unavailable".into()));
    }
    Ok(())
}

/// Whether `who` may upload now: so many uploads an hour and so many mebibytes a day per
/// user, whoever they are (each upload is stored and may be sent for paid transcription).
/// The key the day's mebibytes are counted under; 429 with `Retry-After` beyond either.
pub(crate) async fn admit_upload(
    state: &AppState,
    who: &events::access::Principal,
) -> Result<String, Problem> {
    let bucket = format!(
        "audio-uploads:{}:{}",
        who.actor_kind().as_str(),
        who.user_id()
    );
    if let Some(retry_after) =
        crate::http::limits::over_limit(state, &bucket, state.ctx.audio.uploads_per_user)
            .await
            .map_err(|e| Problem::unavailable(&e))?
    {
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("Too many uploads this hour; retry in {retry_after} s."),
        )
        .with_header(
            header::RETRY_AFTER,
            HeaderValue::from_str(&retry_after.to_string())
                .unwrap_or(HeaderValue::from_static("3600")),
        ));
    }
    // And so many mebibytes a day: what was stored counts, the next upload is refused.
    let volume = format!("{bucket}:mib");
    if let Some(retry_after) = crate::http::limits::spend(
        state,
        &volume,
        crate::http::limits::Window::Day,
        0,
        state.ctx.audio.mib_per_user_per_day - 1,
    )
    .await
    .map_err(|e| Problem::unavailable(&e))?
    {
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "upload_quota_exceeded",
            format!("This user's audio for today is used up; retry in {retry_after} s."),
        )
        .with_header(
            header::RETRY_AFTER,
            HeaderValue::from_str(&retry_after.to_string())
                .unwrap_or(HeaderValue::from_static("86400")),
        ));
    }
    Ok(volume)
}

/// Records an upload stored at `path` (the file is deleted when the aggregate refuses it
/// for certain; after a store failure the commit may have landed, and the file stays for
/// the event that may name it).
pub(crate) async fn record_upload(
    state: &AppState,
    id: &str,
    command: AudioCommand,
    metadata: &Metadata,
    path: &object_store::path::Path,
) -> Result<crate::store::Committed, Problem> {
    // The person it is about may have been erased while it streamed: nothing is kept. An
    // erasure that lands between this check and the record lists its files before this
    // one is named, so the check after the record deletes it then.
    let about = match &command {
        AudioCommand::Upload { subject, .. } => subject.as_ref().map(|s| s.id),
        _ => None,
    };
    if personal::erased_now(state, about).await? {
        let _ = state.blobs.delete(path).await;
        return Err(personal::erased_problem());
    }
    match state
        .ctx
        .audio
        .files
        .execute(id, None, command, metadata)
        .await
    {
        Ok(c) => {
            if personal::erased_now(state, about).await? {
                let _ = state.blobs.delete(path).await;
            }
            Ok(c)
        }
        Err(e) => {
            if !matches!(e, CommandError::Unavailable(_)) {
                let _ = state.blobs.delete(path).await;
            }
            Err(e.into())
        }
    }
}
