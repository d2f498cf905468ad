//! The audio aggregate: a file's life from upload to transcript.
//!
//! Requesting a transcript is retried with back-off (2 s … 5 min), the aggregate refusing an
//! attempt before its time; the 6th failure gives up visibly (`TranscriptionFailed`). A
//! transcript is final once completed or failed: a webhook for another transcript id, or
//! any later webhook, changes nothing.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use events::audio::{AudioEvent, Word, AUDIO, MAX_REQUEST_ATTEMPTS};
use serde::{Deserialize, Serialize};

/// A command on an audio file.
#[derive(Debug, Clone, PartialEq)]
pub enum AudioCommand {
    /// A file was stored.
    Upload {
        /// The tenant.
        tenant_id: String,
        /// Who uploaded it.
        uploaded_by: String,
        /// Where it is stored.
        object_key: String,
        /// Its media type.
        content_type: String,
        /// Its size.
        size_bytes: u64,
        /// Hex SHA-256.
        sha256: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The service accepted the file as transcript `transcript_id`.
    RecordRequest {
        /// The service's id.
        transcript_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Requesting failed; `permanent` when a retry cannot help (not configured, refused).
    RecordRequestFailure {
        /// Why.
        error: String,
        /// Whether to give up now.
        permanent: bool,
        /// When.
        at: DateTime<Utc>,
    },
    /// The service finished transcript `transcript_id`.
    Complete {
        /// The service's id.
        transcript_id: String,
        /// The text.
        text: String,
        /// The words.
        words: Vec<Word>,
        /// The language.
        language: Option<String>,
        /// The confidence.
        confidence: Option<f64>,
        /// The webhook.
        webhook_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The service could not transcribe `transcript_id`.
    Fail {
        /// The service's id.
        transcript_id: String,
        /// Its error.
        error: String,
        /// The webhook.
        webhook_id: String,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Why an audio command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudioError {
    /// 404.
    #[error("no such audio file")]
    NotFound,
    /// 409 `already_exists`.
    #[error("an audio file with this id exists")]
    AlreadyExists,
}

/// Where the transcript is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// No file.
    #[default]
    None,
    /// Uploaded; the transcript is to be requested (again, after a failed attempt).
    Uploaded,
    /// The service is transcribing it.
    Requested,
    /// Done.
    Completed,
    /// The service failed, or requesting was given up.
    Failed,
}

/// An audio file (also the snapshot form).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Audio {
    /// The tenant.
    tenant_id: Option<String>,
    /// Who uploaded it.
    uploaded_by: String,
    /// Where it is stored.
    object_key: String,
    /// Its media type.
    content_type: String,
    /// Its size.
    size_bytes: u64,
    /// Where the transcript is.
    status: Status,
    /// The service's transcript id, once requested.
    transcript_id: Option<String>,
    /// Failed request attempts.
    attempts: u32,
    /// When the next request attempt is due.
    retry_at: Option<DateTime<Utc>>,
    /// The transcript's text, once completed.
    text: Option<String>,
}

/// The pause before request attempt `attempt + 1`: 2, 4, 8 … seconds, at most 5 minutes.
pub fn retry_delay(attempt: u32) -> Duration {
    crate::values::backoff(attempt, Duration::minutes(5))
}

impl Audio {
    /// The tenant.
    pub fn tenant_id(&self) -> Option<&str> {
        self.tenant_id.as_deref()
    }

    /// Who uploaded it.
    pub fn uploaded_by(&self) -> &str {
        &self.uploaded_by
    }

    /// `(object key, content type, size)` of the stored file.
    pub fn file(&self) -> (&str, &str, u64) {
        (&self.object_key, &self.content_type, self.size_bytes)
    }

    /// Where the transcript is.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The transcript's text, once completed.
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// Whether its transcript may be requested at `now`.
    pub fn due(&self, now: DateTime<Utc>) -> bool {
        self.status == Status::Uploaded && self.retry_at.is_none_or(|r| r <= now)
    }

    /// Whether a webhook about `transcript_id` may still finish the transcript.
    fn awaits(&self, transcript_id: &str) -> bool {
        self.status == Status::Requested && self.transcript_id.as_deref() == Some(transcript_id)
    }

    fn decide(&self, command: AudioCommand) -> Result<Option<AudioEvent>, AudioError> {
        if self.tenant_id.is_none() && !matches!(command, AudioCommand::Upload { .. }) {
            return Err(AudioError::NotFound);
        }
        Ok(match command {
            AudioCommand::Upload {
                tenant_id,
                uploaded_by,
                object_key,
                content_type,
                size_bytes,
                sha256,
                at,
            } => {
                if self.tenant_id.is_some() {
                    return Err(AudioError::AlreadyExists);
                }
                Some(AudioEvent::AudioUploaded {
                    tenant_id,
                    uploaded_by,
                    object_key,
                    content_type,
                    size_bytes,
                    sha256,
                    at,
                })
            }
            AudioCommand::RecordRequest { transcript_id, at } => (self.status == Status::Uploaded)
                .then_some(AudioEvent::TranscriptRequested { transcript_id, at }),
            AudioCommand::RecordRequestFailure {
                error,
                permanent,
                at,
            } => {
                if !self.due(at) {
                    return Ok(None);
                }
                let attempt = self.attempts + 1;
                let error: String = error.chars().take(500).collect();
                Some(if permanent || attempt >= MAX_REQUEST_ATTEMPTS {
                    AudioEvent::TranscriptionFailed {
                        attempts: attempt,
                        error,
                    }
                } else {
                    AudioEvent::TranscriptionAttemptFailed {
                        attempt,
                        error,
                        retry_at: at + retry_delay(attempt),
                    }
                })
            }
            AudioCommand::Complete {
                transcript_id,
                text,
                words,
                language,
                confidence,
                webhook_id,
                at,
            } => self
                .awaits(&transcript_id)
                .then_some(AudioEvent::TranscriptCompleted {
                    transcript_id,
                    text,
                    words,
                    language,
                    confidence,
                    webhook_id,
                    at,
                }),
            AudioCommand::Fail {
                transcript_id,
                error,
                webhook_id,
                at,
            } => self
                .awaits(&transcript_id)
                .then_some(AudioEvent::TranscriptFailed {
                    transcript_id,
                    error: error.chars().take(500).collect(),
                    webhook_id,
                    at,
                }),
        })
    }
}

impl Aggregate for Audio {
    const TYPE: &'static str = AUDIO;
    type Command = AudioCommand;
    type Event = AudioEvent;
    type Error = AudioError;
    type Services = ();

    async fn handle(
        &mut self,
        command: AudioCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), AudioError> {
        if let Some(event) = self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: AudioEvent) {
        match event {
            AudioEvent::AudioUploaded {
                tenant_id,
                uploaded_by,
                object_key,
                content_type,
                size_bytes,
                ..
            } => {
                self.tenant_id = Some(tenant_id);
                self.uploaded_by = uploaded_by;
                self.object_key = object_key;
                self.content_type = content_type;
                self.size_bytes = size_bytes;
                self.status = Status::Uploaded;
            }
            AudioEvent::TranscriptRequested { transcript_id, .. } => {
                self.transcript_id = Some(transcript_id);
                self.status = Status::Requested;
            }
            AudioEvent::TranscriptionAttemptFailed {
                attempt, retry_at, ..
            } => {
                self.attempts = attempt;
                self.retry_at = Some(retry_at);
            }
            AudioEvent::TranscriptionFailed { attempts, .. } => {
                self.attempts = attempts;
                self.status = Status::Failed;
            }
            AudioEvent::TranscriptCompleted { text, .. } => {
                self.text = Some(text);
                self.status = Status::Completed;
            }
            AudioEvent::TranscriptFailed { .. } => self.status = Status::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0)
            .single()
            .unwrap_or_default()
    }

    fn uploaded() -> AudioEvent {
        AudioEvent::AudioUploaded {
            tenant_id: "t1".into(),
            uploaded_by: "agent-1".into(),
            object_key: "tenants/t1/audio/a.mp3".into(),
            content_type: "audio/mpeg".into(),
            size_bytes: 10,
            sha256: "ab".into(),
            at: t0(),
        }
    }

    fn requested() -> AudioEvent {
        AudioEvent::TranscriptRequested {
            transcript_id: "tr-1".into(),
            at: t0(),
        }
    }

    fn complete(transcript: &str) -> AudioCommand {
        AudioCommand::Complete {
            transcript_id: transcript.into(),
            text: "hello".into(),
            words: vec![],
            language: Some("en".into()),
            confidence: Some(0.9),
            webhook_id: "w1".into(),
            at: t0(),
        }
    }

    fn completed() -> AudioEvent {
        AudioEvent::TranscriptCompleted {
            transcript_id: "tr-1".into(),
            text: "hello".into(),
            words: vec![],
            language: Some("en".into()),
            confidence: Some(0.9),
            webhook_id: "w1".into(),
            at: t0(),
        }
    }

    fn failure(minutes: i64, permanent: bool) -> AudioCommand {
        AudioCommand::RecordRequestFailure {
            error: "down".into(),
            permanent,
            at: t0() + Duration::minutes(minutes),
        }
    }

    fn framework() -> TestFramework<Audio> {
        TestFramework::with(())
    }

    #[test]
    fn record_request_of_an_uploaded_file_requests_it_once() {
        framework()
            .given(vec![uploaded()])
            .when(AudioCommand::RecordRequest {
                transcript_id: "tr-1".into(),
                at: t0(),
            })
            .then_expect_events(vec![requested()]);
        framework()
            .given(vec![uploaded(), requested()])
            .when(AudioCommand::RecordRequest {
                transcript_id: "tr-2".into(),
                at: t0(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn request_failures_back_off_then_give_up_visibly() {
        framework()
            .given(vec![uploaded()])
            .when(failure(0, false))
            .then_expect_events(vec![AudioEvent::TranscriptionAttemptFailed {
                attempt: 1,
                error: "down".into(),
                retry_at: t0() + retry_delay(1),
            }]);
        let first = AudioEvent::TranscriptionAttemptFailed {
            attempt: 1,
            error: "down".into(),
            retry_at: t0() + retry_delay(1),
        };
        // Before its retry time: nothing.
        framework()
            .given(vec![uploaded(), first])
            .when(failure(0, false))
            .then_expect_events(vec![]);
        let mut given = vec![uploaded()];
        for attempt in 1..MAX_REQUEST_ATTEMPTS {
            given.push(AudioEvent::TranscriptionAttemptFailed {
                attempt,
                error: "down".into(),
                retry_at: t0() + Duration::minutes(attempt as i64 * 10),
            });
        }
        framework()
            .given(given)
            .when(failure(1_000, false))
            .then_expect_events(vec![AudioEvent::TranscriptionFailed {
                attempts: MAX_REQUEST_ATTEMPTS,
                error: "down".into(),
            }]);
    }

    #[test]
    fn a_permanent_request_failure_gives_up_at_once() {
        framework()
            .given(vec![uploaded()])
            .when(failure(0, true))
            .then_expect_events(vec![AudioEvent::TranscriptionFailed {
                attempts: 1,
                error: "down".into(),
            }]);
    }

    #[test]
    fn complete_applies_once_and_only_for_the_requested_transcript() {
        framework()
            .given(vec![uploaded(), requested()])
            .when(complete("tr-1"))
            .then_expect_events(vec![completed()]);
        framework()
            .given(vec![uploaded(), requested(), completed()])
            .when(complete("tr-1"))
            .then_expect_events(vec![]);
        framework()
            .given(vec![uploaded(), requested()])
            .when(complete("tr-other"))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_failure_after_completion_changes_nothing() {
        framework()
            .given(vec![uploaded(), requested(), completed()])
            .when(AudioCommand::Fail {
                transcript_id: "tr-1".into(),
                error: "late".into(),
                webhook_id: "w2".into(),
                at: t0(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn commands_on_an_unknown_file_are_not_found_and_upload_twice_is_refused() {
        framework()
            .given_no_previous_events()
            .when(complete("tr-1"))
            .then_expect_error(AudioError::NotFound);
        framework()
            .given(vec![uploaded()])
            .when(AudioCommand::Upload {
                tenant_id: "t1".into(),
                uploaded_by: "x".into(),
                object_key: "k".into(),
                content_type: "audio/mpeg".into(),
                size_bytes: 1,
                sha256: "s".into(),
                at: t0(),
            })
            .then_expect_error(AudioError::AlreadyExists);
    }
}
