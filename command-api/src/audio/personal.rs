//! What a recording holds of the person it is about (docs/privacy.md): who that is (the
//! customer of the thread it was uploaded for, or the chatbot user who uploaded it), its
//! transcript sealed for them, and nothing kept or sent once they are erased — not the
//! upload, not the request to the transcription service, not a transcript that completes
//! afterwards — while the service is asked to forget what it made.

use axum::http::StatusCode;
use events::access::Principal;
use events::audio::AudioSubject;
use events::chat::{Party, PartyKind};
use events::http::Problem;
use events::keyring::{KeyError, Subject, SubjectKind};

use super::aggregate::{Audio, AudioCommand};
use super::assemblyai::ServiceError;
use crate::http::error::DomainProblem;
use crate::AppState;

/// Has the transcription service forget every transcript it made of the recordings of
/// `tenant` about subject `subject` (an erasure: the service holds the files it transcribed
/// and their text); returns how many it asked for. Without a configured service, none.
pub(crate) async fn forget_at_service(
    state: &AppState,
    tenant: &str,
    subject: uuid::Uuid,
) -> Result<usize, String> {
    let Some(client) = &state.ctx.audio.assemblyai else {
        return Ok(0);
    };
    let transcripts: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT t.payload->'TranscriptRequested'->>'transcript_id'
           FROM events u JOIN events t
             ON t.aggregate_type = 'audio' AND t.aggregate_id = u.aggregate_id
            AND t.event_type = 'TranscriptRequested'
          WHERE u.aggregate_type = 'audio' AND u.event_type = 'AudioUploaded'
            AND u.metadata->>'tenant_id' = $1
            AND u.payload->'AudioUploaded'->'subject'->>'id' = $2",
    )
    .bind(tenant)
    .bind(subject.to_string())
    .fetch_all(&state.pool)
    .await
    .map_err(|e| e.to_string())?;
    for id in &transcripts {
        client
            .delete_transcript(id)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(transcripts.len())
}

/// Why nothing of a recording about an erased person is sent or kept.
pub(crate) const ERASED_SUBJECT: &str = "the person the recording is about was erased";

/// Refused (for good) when recording `audio` is about a person who was erased.
pub(crate) async fn not_erased_yet(state: &AppState, audio: &Audio) -> Result<(), ServiceError> {
    match about_erased(state, audio).await {
        Ok(false) => Ok(()),
        Ok(true) => Err(ServiceError::Refused(ERASED_SUBJECT.into())),
        Err(e) => Err(ServiceError::Unavailable(e)),
    }
}

/// 410 `subject_erased` when recording `audio` is about a person who was erased.
pub(crate) async fn not_about_erased(state: &AppState, audio: &Audio) -> Result<(), Problem> {
    match about_erased(state, audio).await {
        Ok(false) => Ok(()),
        Ok(true) => Err(erased_problem()),
        Err(e) => Err(Problem::unavailable(&e)),
    }
}

/// Whether recording `audio` is about a person who was erased.
pub(crate) async fn about_erased(state: &AppState, audio: &Audio) -> Result<bool, String> {
    erased(state, audio.subject().map(|s| s.id)).await
}

/// Whether data subject `subject` (if any) is erased now.
async fn erased(state: &AppState, subject: Option<uuid::Uuid>) -> Result<bool, String> {
    let Some(id) = subject else {
        return Ok(false);
    };
    let known = state.keyring.subject(id).await.map_err(|e| e.to_string())?;
    Ok(known.is_some_and(|k| k.erased))
}

/// `text` sealed for the person recording `audio` is about (docs/privacy.md); as it is for
/// the tenant's own recording.
pub(crate) async fn sealed_for_subject(
    state: &AppState,
    audio: &Audio,
    text: String,
) -> Result<String, KeyError> {
    let (Some(person), Some(tenant)) = (audio.subject(), audio.tenant_id()) else {
        return Ok(text);
    };
    let kind = SubjectKind::parse(&person.kind).unwrap_or(SubjectKind::PhoneUser);
    let subject = Subject {
        id: person.id,
        kind,
        tenant_id: tenant,
    };
    state.keyring.seal(subject, &text).await
}

/// What is recorded of transcript `transcript_id` of a recording whose person was erased:
/// a failure, its text never kept; the service forgets it too (it came after the erasure
/// asked it to forget the rest).
pub(crate) async fn not_kept(
    state: &AppState,
    transcript_id: &str,
    webhook_id: Option<String>,
    at: chrono::DateTime<chrono::Utc>,
) -> AudioCommand {
    if let Some(client) = &state.ctx.audio.assemblyai {
        if let Err(e) = client.delete_transcript(transcript_id).await {
            tracing::warn!(error = %e, "an erased person's transcript not forgotten at the service");
        }
    }
    AudioCommand::Fail {
        transcript_id: transcript_id.to_owned(),
        error: "the person the recording is about was erased: the transcript is not kept".into(),
        webhook_id,
        at,
    }
}

/// The person a recording uploaded by `who` to `tenant` is about: the customer of thread
/// `thread` (which `who` must see: 404; without a customer: 422), else a chatbot user
/// themselves, else no one (the tenant's own). 410 when that person was erased: nothing new
/// is kept about them.
pub(crate) async fn recording_subject(
    state: &AppState,
    who: &Principal,
    tenant: &str,
    thread: Option<uuid::Uuid>,
) -> Result<Option<AudioSubject>, Problem> {
    let person = match (thread, who) {
        (Some(thread), _) => {
            let loaded = state.ctx.chat.threads.load(&thread.to_string()).await?;
            let customer = loaded
                .customer_seen_by(&crate::chat::service::actor(who))
                .ok()
                .filter(|_| loaded.tenant_id() == Some(tenant))
                .ok_or_else(|| crate::chat::aggregate::ThreadError::NotFound.problem())?;
            customer.cloned().ok_or_else(|| {
                Problem::unprocessable("no_customer", "The thread has no customer to be about.")
            })?
        }
        (None, Principal::Phone { user_id, .. }) => Party {
            id: user_id.clone(),
            kind: PartyKind::Phone,
        },
        (None, _) => return Ok(None),
    };
    let Some((id, kind)) = crate::chat::services::subject_of(tenant, &person) else {
        return Ok(None);
    };
    if erased_now(state, Some(id)).await? {
        return Err(erased_problem());
    }
    Ok(Some(AudioSubject {
        id,
        kind: kind.as_str().to_owned(),
    }))
}

/// Refuses to post recording `audio` in thread `thread` when it is about a person and the
/// thread is not theirs (422 `not_their_thread`): posted, the transcript is sealed for the
/// thread's customer, and another person's erasure would not reach it (docs/privacy.md).
/// A thread `who` may not see answers 404 as the post itself would.
pub(crate) async fn postable_in(
    state: &AppState,
    who: &Principal,
    audio: &Audio,
    thread: &str,
) -> Result<(), Problem> {
    let (Some(person), Some(tenant)) = (audio.subject(), audio.tenant_id()) else {
        return Ok(());
    };
    let loaded = state.ctx.chat.threads.load(thread).await?;
    let customer = loaded
        .customer_seen_by(&crate::chat::service::actor(who))
        .map_err(|e| e.problem())?;
    let theirs = customer
        .and_then(|c| crate::chat::services::subject_of(tenant, c))
        .is_some_and(|(id, _)| id == person.id);
    if theirs {
        Ok(())
    } else {
        Err(Problem::unprocessable(
            "not_their_thread",
            "A recording about a person is posted only in a thread of theirs.",
        ))
    }
}

/// [`erased`], answered as a problem (503) when the key table cannot be read.
pub(crate) async fn erased_now(
    state: &AppState,
    subject: Option<uuid::Uuid>,
) -> Result<bool, Problem> {
    erased(state, subject)
        .await
        .map_err(|e| Problem::unavailable(&e))
}

/// 410 `subject_erased`: nothing new is kept about an erased person.
pub(crate) fn erased_problem() -> Problem {
    Problem::new(
        StatusCode::GONE,
        "subject_erased",
        "The person the recording is about was erased: nothing new is kept about them.",
    )
}

/// A transcript's text and words as its event holds them: for a recording about a person,
/// the text sealed for them and the words sealed whole (none left in clear).
pub(crate) async fn seal_transcript(
    state: &AppState,
    audio: &Audio,
    text: String,
    words: Vec<events::audio::Word>,
) -> Result<(String, Vec<events::audio::Word>, Option<String>), KeyError> {
    if audio.subject().is_none() {
        return Ok((text, words, None));
    }
    let text = sealed_for_subject(state, audio, text).await?;
    let words = serde_json::to_string(&words).unwrap_or_else(|_| "[]".into());
    let words = sealed_for_subject(state, audio, words).await?;
    Ok((text, Vec::new(), Some(words)))
}
