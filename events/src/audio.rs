//! Events of audio files and their transcripts (aggregate type `audio`, id = the file's UUID).
//!
//! A file is uploaded, its transcript requested from AssemblyAI (retried with back-off while
//! the service is unreachable, then given up visibly), and completed or failed by the
//! service's webhook. Once a transcript is final, later or repeated webhooks change nothing.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

/// The aggregate type of audio files.
pub const AUDIO: &str = "audio";

/// Attempts at requesting a transcript before it is given up.
pub const MAX_REQUEST_ATTEMPTS: u32 = 6;

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
    },
    /// Requesting the transcript was given up (the service stayed unreachable, refused the
    /// file, or is not configured).
    TranscriptionFailed {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        error: String,
    },
    /// The service finished the transcript.
    TranscriptCompleted {
        /// The service's transcript id.
        transcript_id: String,
        /// The text.
        text: String,
        /// Every word with its timing.
        words: Vec<Word>,
        /// The language detected or asked for (`en`, `fr`, …).
        #[serde(default)]
        language: Option<String>,
        /// The service's confidence, 0–1.
        #[serde(default)]
        confidence: Option<f64>,
        /// The webhook that said so.
        webhook_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The service could not transcribe the file.
    TranscriptFailed {
        /// The service's transcript id.
        transcript_id: String,
        /// The service's error.
        error: String,
        /// The webhook that said so.
        webhook_id: String,
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for AudioEvent {
    fn event_type(&self) -> String {
        match self {
            AudioEvent::AudioUploaded { .. } => "AudioUploaded",
            AudioEvent::TranscriptRequested { .. } => "TranscriptRequested",
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
