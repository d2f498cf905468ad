//! Events of audio files and their transcripts (aggregate type `audio`, id = the file's UUID).
//!
//! A file is uploaded; a request for its transcript is started (a claim: one request at a
//! time, whoever asks) and recorded as accepted by AssemblyAI, or failed and retried with
//! back-off while the service is unreachable (about an hour), then given up visibly; an
//! admin may start it again. The transcript is completed or failed by the service's webhook,
//! or by a check of the service when no webhook came. Once a transcript is final, later or
//! repeated webhooks change nothing. A transcript too large for an event is kept in the blob
//! store and the event names it ([`StoredTranscript`]).

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

/// The aggregate type of audio files.
pub const AUDIO: &str = "audio";

/// Attempts at requesting a transcript before it is given up: back-off from 2 s doubling to
/// at most 5 minutes, so about an hour of the service being unreachable.
pub const MAX_REQUEST_ATTEMPTS: u32 = 20;

/// When a requested transcript is first checked with the service if no webhook has
/// finished it by then.
pub const FIRST_CHECK: chrono::Duration = chrono::Duration::minutes(10);

/// The largest transcript (its text and words as JSON) kept in the event itself; a larger
/// one goes to the blob store.
pub const MAX_INLINE_TRANSCRIPT_BYTES: usize = 64 * 1024;

/// Characters of a stored transcript's text that its event still carries (a preview).
pub const PREVIEW_CHARS: usize = 1_000;

/// A transcript kept in the blob store: a JSON object `{"text": …, "words": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredTranscript {
    /// Where it is (`tenants/{tenant}/audio/{id}/transcript-{transcript id}.json`).
    pub object_key: String,
    /// Its size.
    pub size_bytes: u64,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
    /// Characters of the whole text.
    pub text_chars: u64,
}

/// The person a recording is about: a data subject of its tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioSubject {
    /// The subject's id.
    pub id: uuid::Uuid,
    /// Their kind (`phone_user`, `contact`).
    pub kind: String,
}

/// The words of a completed transcript: `words`, or, for a recording about a person, those
/// `words_sealed` holds once opened (none once they are erased: `[erased]` is no list).
pub fn words_of(words: Vec<Word>, words_sealed: Option<&str>) -> Vec<Word> {
    match words_sealed {
        Some(text) => serde_json::from_str(text).unwrap_or_default(),
        None => words,
    }
}

/// One word of a transcript, with its timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Word {
    /// The word.
    pub text: String,
    /// Start, milliseconds from the beginning.
    pub start_ms: u64,
    /// End, milliseconds from the beginning.
    pub end_ms: u64,
    /// The service's confidence, 0–1.
    pub confidence: f64,
}

/// Something that happened to an audio file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum AudioEvent {
    /// A file was uploaded and stored.
    AudioUploaded {
        /// The tenant.
        tenant_id: String,
        /// Who uploaded it (a user id).
        uploaded_by: String,
        /// Where it is in the blob store (`tenants/{tenant}/audio/{id}.{ext}`).
        object_key: String,
        /// Its media type.
        content_type: String,
        /// Its size.
        size_bytes: u64,
        /// Hex SHA-256 of its bytes.
        sha256: String,
        /// The person the recording is about, if any (the customer of the thread it was
        /// uploaded for, or the chatbot user who uploaded it): its transcript is sealed for
        /// them, and the file and transcript are deleted with them (docs/privacy.md).
        /// Absent: the tenant's own recording.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<AudioSubject>,
        /// When.
        at: DateTime<Utc>,
    },
    /// A request for the transcript was started (attempt `attempt`): no other is started
    /// until its outcome is recorded or `until` has passed (the request was lost with its
    /// process).
    TranscriptionStarted {
        /// Which attempt (1-based).
        attempt: u32,
        /// When the claim lapses.
        until: DateTime<Utc>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The file was uploaded to the service for the request under way (`upload_url`, the
    /// service's URL of it): should the request's outcome never be recorded (its process
    /// died), the next attempt looks for a transcript of that upload before asking again.
    TranscriptionUploaded {
        /// The service's URL of the file.
        upload_url: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// An admin asked for the transcript again (after it failed, or at once while retries
    /// wait): attempts start again from the first.
    TranscriptionRetried {
        /// Who (a user id).
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The transcription service accepted the file and is transcribing it.
    TranscriptRequested {
        /// The service's transcript id.
        transcript_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Requesting the transcript failed for now; it is tried again at `retry_at`.
    TranscriptionAttemptFailed {
        /// Which attempt (1-based).
        attempt: u32,
        /// Why.
        error: String,
        /// When it is tried again.
        retry_at: DateTime<Utc>,
        /// The file's URL at the service when it was uploaded but the transcript request's
        /// answer was lost (a gateway error, a timeout): the next attempt looks for a
        /// transcript the service made of it before requesting one again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unanswered_upload: Option<String>,
    },
    /// Requesting the transcript was given up (the service stayed unreachable, refused the
    /// file, or is not configured).
    TranscriptionFailed {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        error: String,
    },
    /// No webhook had finished the transcript when it was due, and the service was asked:
    /// it is not final yet (or could not be asked: `error`); asked again at `next_check_at`.
    TranscriptChecked {
        /// The service's transcript id.
        transcript_id: String,
        /// Checks made so far.
        checks: u32,
        /// Why the service could not be asked (an outage, a refused key), if it could not.
        #[serde(default)]
        error: Option<String>,
        /// When it is checked again.
        next_check_at: DateTime<Utc>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The service finished the transcript.
    TranscriptCompleted {
        /// The service's transcript id.
        transcript_id: String,
        /// The text; when `stored`, its first [`PREVIEW_CHARS`] characters. Sealed for the
        /// recording's subject, if it has one.
        text: String,
        /// Every word with its timing; when `stored`, or sealed in `words_sealed`, none (they
        /// are in the stored file).
        words: Vec<Word>,
        /// For a recording about a person: the words, sealed for them whole as their JSON
        /// text (read them with [`words_of`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        words_sealed: Option<String>,
        /// Where the whole transcript is, when it was too large for the event.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stored: Option<StoredTranscript>,
        /// The language detected or asked for (`en`, `fr`, …).
        #[serde(default)]
        language: Option<String>,
        /// The service's confidence, 0–1.
        #[serde(default)]
        confidence: Option<f64>,
        /// The webhook that said so; none when a check of the service found it.
        #[serde(default)]
        webhook_id: Option<String>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The service could not transcribe the file.
    TranscriptFailed {
        /// The service's transcript id.
        transcript_id: String,
        /// The service's error.
        error: String,
        /// The webhook that said so; none when a check of the service found it.
        #[serde(default)]
        webhook_id: Option<String>,
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for AudioEvent {
    fn event_type(&self) -> String {
        match self {
            AudioEvent::AudioUploaded { .. } => "AudioUploaded",
            AudioEvent::TranscriptionStarted { .. } => "TranscriptionStarted",
            AudioEvent::TranscriptionUploaded { .. } => "TranscriptionUploaded",
            AudioEvent::TranscriptionRetried { .. } => "TranscriptionRetried",
            AudioEvent::TranscriptRequested { .. } => "TranscriptRequested",
            AudioEvent::TranscriptChecked { .. } => "TranscriptChecked",
            AudioEvent::TranscriptionAttemptFailed { .. } => "TranscriptionAttemptFailed",
            AudioEvent::TranscriptionFailed { .. } => "TranscriptionFailed",
            AudioEvent::TranscriptCompleted { .. } => "TranscriptCompleted",
            AudioEvent::TranscriptFailed { .. } => "TranscriptFailed",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
