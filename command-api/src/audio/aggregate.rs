//! The audio aggregate: a file's life from upload to transcript.
//!
//! A request for the transcript is *started* before AssemblyAI is called: the start is a
//! claim, so two callers (two process managers, a retry after a timeout, an admin) never
//! both send the file, and a file gets at most one billed transcript per request. The claim
//! lapses after [`REQUEST_LEASE`] (its process died mid-call). A failed request is retried
//! with back-off (2 s … 5 min, the aggregate refusing an attempt before its time); the
//! [`MAX_REQUEST_ATTEMPTS`]th failure (about an hour of outage) gives up visibly, and an
//! admin may start again. A requested transcript that no webhook has finished is checked
//! with the service from [`FIRST_CHECK`] on, less often as it waits, and failed after
//! [`GIVE_UP_CHECKING`]. A transcript is final once completed or failed: a webhook for
//! another transcript id, or any later webhook or check, changes nothing.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use events::audio::{
    AudioEvent, AudioSubject, StoredTranscript, Word, AUDIO, FIRST_CHECK, MAX_REQUEST_ATTEMPTS,
};
use serde::{Deserialize, Serialize};

/// How long a started request holds its claim: an upload of the largest file (10 minutes
/// at most) and the transcript request, with room to record the outcome.
pub const REQUEST_LEASE: Duration = Duration::minutes(15);
/// The longest pause between two checks.
const MAX_CHECK_PAUSE: Duration = Duration::hours(1);
/// How long after its request a transcript is waited for before it is failed.
pub const GIVE_UP_CHECKING: Duration = Duration::hours(24);

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
        /// The person the recording is about, if any.
        subject: Option<AudioSubject>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Claim the request of the transcript, if it is due.
    Start {
        /// When.
        at: DateTime<Utc>,
    },
    /// The file was uploaded to the service for the request under way.
    RecordUpload {
        /// The service's URL of it.
        upload_url: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// An admin asks for the transcript again.
    Retry {
        /// Who.
        by: String,
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
        /// The file's URL at the service, when it was uploaded and the transcript request's
        /// answer was lost (the service may have made a transcript of it).
        unanswered_upload: Option<String>,
        /// Whether to give up now.
        permanent: bool,
        /// When.
        at: DateTime<Utc>,
    },
    /// A check found transcript `transcript_id` not final, or could not ask (`error`).
    RecordCheck {
        /// The service's id.
        transcript_id: String,
        /// Why the service could not be asked.
        error: Option<String>,
        /// An admin's check: now, whenever the next one is due.
        forced: bool,
        /// When.
        at: DateTime<Utc>,
    },
    /// The service finished transcript `transcript_id`.
    Complete {
        /// The service's id.
        transcript_id: String,
        /// The text (a preview when `stored`), sealed for the recording's subject if any.
        text: String,
        /// The words (none when `stored` or sealed).
        words: Vec<Word>,
        /// The words sealed whole for the recording's subject.
        words_sealed: Option<String>,
        /// Where the whole transcript is, when too large for an event.
        stored: Option<StoredTranscript>,
        /// The language.
        language: Option<String>,
        /// The confidence.
        confidence: Option<f64>,
        /// The webhook; none for a check.
        webhook_id: Option<String>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The service could not transcribe `transcript_id`.
    Fail {
        /// The service's id.
        transcript_id: String,
        /// Its error.
        error: String,
        /// The webhook; none for a check.
        webhook_id: Option<String>,
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
    /// 409 `already_transcribed`.
    #[error("the transcript is complete")]
    AlreadyTranscribed,
}

/// Where the transcript is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = TranscriptStatus)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// No file.
    #[default]
    None,
    /// Uploaded; the transcript is to be requested (again, after a failed attempt).
    Uploaded,
    /// A request is under way (claimed until `lease_until`).
    Requesting,
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
    /// Every transcript id the file has had (a retry requests a new one): a webhook or a
    /// replay naming an earlier one is never taken for the current request.
    past_transcripts: Vec<String>,
    /// The service's URL of the file uploaded by a request whose outcome is not known (under
    /// way; its process died; its answer lost to a gateway error or a timeout): the next
    /// attempt first looks for a transcript the service made of it, and sends it again
    /// without a new upload.
    unanswered_upload: Option<String>,
    /// Failed request attempts.
    attempts: u32,
    /// When the next request attempt is due.
    retry_at: Option<DateTime<Utc>>,
    /// When a started request's claim lapses.
    lease_until: Option<DateTime<Utc>>,
    /// When the service accepted the request.
    requested_at: Option<DateTime<Utc>>,
    /// Checks made of a requested transcript.
    checks: u32,
    /// When a requested transcript is next checked.
    check_at: Option<DateTime<Utc>>,
    /// The transcript's text (its preview when stored), once completed.
    text: Option<String>,
    /// Where the whole transcript is, when it was too large for its event.
    stored: Option<StoredTranscript>,
    /// The person the recording is about, if any.
    subject: Option<AudioSubject>,
}

/// The pause before request attempt `attempt + 1`: 2, 4, 8 … seconds, at most 5 minutes.
pub fn retry_delay(attempt: u32) -> Duration {
    crate::values::backoff(attempt, Duration::minutes(5))
}

/// The pause after check `checks` of a requested transcript: 10, 20, 40 … minutes, at most
/// an hour.
pub fn check_delay(checks: u32) -> Duration {
    (FIRST_CHECK * 2i32.pow(checks.min(8))).min(MAX_CHECK_PAUSE)
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

    /// The service's transcript id, once requested.
    pub fn transcript_id(&self) -> Option<&str> {
        self.transcript_id.as_deref()
    }

    /// The transcript's text (its preview when [`Audio::stored`]), once completed.
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// The person the recording is about, if any: its transcript is sealed for them.
    pub fn subject(&self) -> Option<&AudioSubject> {
        self.subject.as_ref()
    }

    /// The service's URL of a file whose transcript request went unanswered.
    pub fn unanswered_upload(&self) -> Option<&str> {
        self.unanswered_upload.as_deref()
    }

    /// Where the whole transcript is, when it was too large for its event.
    pub fn stored(&self) -> Option<&StoredTranscript> {
        self.stored.as_ref()
    }

    /// Whether a request for its transcript may be started at `now`: it waits to be
    /// requested and its back-off has passed, or a started request's claim has lapsed.
    pub fn due(&self, now: DateTime<Utc>) -> bool {
        match self.status {
            Status::Uploaded => self.retry_at.is_none_or(|r| r <= now),
            Status::Requesting => self.lease_until.is_none_or(|l| l <= now),
            _ => false,
        }
    }

    /// Whether a requested transcript is to be checked with the service at `now`.
    pub fn check_due(&self, now: DateTime<Utc>) -> bool {
        self.status == Status::Requested && self.check_at.is_none_or(|c| c <= now)
    }

    /// Whether a webhook about `transcript_id` may still finish the transcript.
    fn awaits(&self, transcript_id: &str) -> bool {
        self.status == Status::Requested && self.transcript_id.as_deref() == Some(transcript_id)
    }

    /// Whether the failure of a request may be recorded at `at`: one was started (events
    /// from before starts existed recorded outcomes of files still uploaded).
    fn in_request(&self, at: DateTime<Utc>) -> bool {
        self.status == Status::Requesting || (self.status == Status::Uploaded && self.due(at))
    }

    /// A file uploaded: a new audio file only.
    fn upload(&self, command: AudioCommand) -> Result<Option<AudioEvent>, AudioError> {
        let AudioCommand::Upload {
            tenant_id,
            uploaded_by,
            object_key,
            content_type,
            size_bytes,
            sha256,
            subject,
            at,
        } = command
        else {
            return Ok(None);
        };
        if self.tenant_id.is_some() {
            return Err(AudioError::AlreadyExists);
        }
        Ok(Some(AudioEvent::AudioUploaded {
            tenant_id,
            uploaded_by,
            object_key,
            content_type,
            size_bytes,
            sha256,
            subject,
            at,
        }))
    }

    /// A request that failed: tried again after a back-off, or failed for good after the
    /// last attempt (or a permanent refusal). Nothing once no request is under way.
    fn request_failed(&self, command: AudioCommand) -> Option<AudioEvent> {
        let AudioCommand::RecordRequestFailure {
            error,
            unanswered_upload,
            permanent,
            at,
        } = command
        else {
            return None;
        };
        if !self.in_request(at) {
            return None;
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
                unanswered_upload,
            }
        })
    }

    /// A check of the transcript awaited, when due (or forced): checked again later, or
    /// given up after [`GIVE_UP_CHECKING`].
    fn checked(&self, command: AudioCommand) -> Option<AudioEvent> {
        let AudioCommand::RecordCheck {
            transcript_id,
            error,
            forced,
            at,
        } = command
        else {
            return None;
        };
        if !self.awaits(&transcript_id) || !(forced || self.check_due(at)) {
            return None;
        }
        let error = error.map(|e| e.chars().take(500).collect::<String>());
        let waited = self
            .requested_at
            .is_some_and(|r| at - r >= GIVE_UP_CHECKING);
        Some(if waited {
            AudioEvent::TranscriptFailed {
                transcript_id,
                error: match error {
                    Some(e) => format!("no transcript after 24 hours; last check: {e}"),
                    None => "no transcript after 24 hours".to_owned(),
                },
                webhook_id: None,
                at,
            }
        } else {
            let checks = self.checks + 1;
            AudioEvent::TranscriptChecked {
                transcript_id,
                checks,
                error,
                next_check_at: at + check_delay(checks),
                at,
            }
        })
    }

    /// The transcript awaited, completed or failed; any other transcript changes nothing.
    fn transcript_outcome(&self, command: AudioCommand) -> Option<AudioEvent> {
        match command {
            AudioCommand::Complete {
                transcript_id,
                text,
                words,
                words_sealed,
                stored,
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
                    words_sealed,
                    stored,
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
            _ => None,
        }
    }

    fn decide(&self, command: AudioCommand) -> Result<Option<AudioEvent>, AudioError> {
        if self.tenant_id.is_none() && !matches!(command, AudioCommand::Upload { .. }) {
            return Err(AudioError::NotFound);
        }
        Ok(match command {
            upload @ AudioCommand::Upload { .. } => self.upload(upload)?,
            AudioCommand::Start { at } => {
                self.due(at).then_some(AudioEvent::TranscriptionStarted {
                    attempt: self.attempts + 1,
                    until: at + REQUEST_LEASE,
                    at,
                })
            }
            AudioCommand::RecordUpload { upload_url, at } => (self.status == Status::Requesting
                && self.unanswered_upload.as_deref() != Some(upload_url.as_str()))
            .then_some(AudioEvent::TranscriptionUploaded { upload_url, at }),
            AudioCommand::Retry { by, at } => match self.status {
                Status::Completed => return Err(AudioError::AlreadyTranscribed),
                Status::Failed => Some(AudioEvent::TranscriptionRetried { by, at }),
                // Waiting out a back-off: now instead.
                Status::Uploaded if self.retry_at.is_some_and(|r| r > at) => {
                    Some(AudioEvent::TranscriptionRetried { by, at })
                }
                // Due already, or under way.
                _ => None,
            },
            // Recorded while no request outcome is: from the request's answer, or from the
            // service's webhook naming this file (its answer lost, or slower than the
            // webhook) — once; a later answer or webhook naming another transcript changes
            // nothing.
            AudioCommand::RecordRequest { transcript_id, at } => {
                (matches!(self.status, Status::Requesting | Status::Uploaded)
                    && !self.past_transcripts.contains(&transcript_id))
                .then_some(AudioEvent::TranscriptRequested { transcript_id, at })
            }
            failure @ AudioCommand::RecordRequestFailure { .. } => self.request_failed(failure),
            check @ AudioCommand::RecordCheck { .. } => self.checked(check),
            outcome @ (AudioCommand::Complete { .. } | AudioCommand::Fail { .. }) => {
                self.transcript_outcome(outcome)
            }
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
                subject,
                ..
            } => {
                self.tenant_id = Some(tenant_id);
                self.subject = subject;
                self.uploaded_by = uploaded_by;
                self.object_key = object_key;
                self.content_type = content_type;
                self.size_bytes = size_bytes;
                self.status = Status::Uploaded;
            }
            AudioEvent::TranscriptionStarted { until, .. } => {
                self.status = Status::Requesting;
                self.lease_until = Some(until);
            }
            AudioEvent::TranscriptionUploaded { upload_url, .. } => {
                self.unanswered_upload = Some(upload_url);
            }
            AudioEvent::TranscriptionRetried { .. } => {
                self.unanswered_upload = None;
                self.status = Status::Uploaded;
                self.attempts = 0;
                self.retry_at = None;
                self.lease_until = None;
                self.transcript_id = None;
                self.requested_at = None;
                self.checks = 0;
                self.check_at = None;
            }
            AudioEvent::TranscriptRequested { transcript_id, at } => {
                self.past_transcripts.push(transcript_id.clone());
                self.unanswered_upload = None;
                self.transcript_id = Some(transcript_id);
                self.status = Status::Requested;
                self.lease_until = None;
                self.requested_at = Some(at);
                self.checks = 0;
                self.check_at = Some(at + FIRST_CHECK);
            }
            AudioEvent::TranscriptionAttemptFailed {
                attempt,
                retry_at,
                unanswered_upload,
                ..
            } => {
                self.unanswered_upload = unanswered_upload;
                self.status = Status::Uploaded;
                self.lease_until = None;
                self.attempts = attempt;
                self.retry_at = Some(retry_at);
            }
            AudioEvent::TranscriptionFailed { attempts, .. } => {
                self.attempts = attempts;
                self.lease_until = None;
                self.status = Status::Failed;
            }
            AudioEvent::TranscriptChecked {
                checks,
                next_check_at,
                ..
            } => {
                self.checks = checks;
                self.check_at = Some(next_check_at);
            }
            AudioEvent::TranscriptCompleted { text, stored, .. } => {
                self.text = Some(text);
                self.stored = stored;
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
            subject: None,
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
            words_sealed: None,
            stored: None,
            language: Some("en".into()),
            confidence: Some(0.9),
            webhook_id: Some("w1".into()),
            at: t0(),
        }
    }

    fn completed() -> AudioEvent {
        AudioEvent::TranscriptCompleted {
            transcript_id: "tr-1".into(),
            text: "hello".into(),
            words: vec![],
            words_sealed: None,
            stored: None,
            language: Some("en".into()),
            confidence: Some(0.9),
            webhook_id: Some("w1".into()),
            at: t0(),
        }
    }

    fn failure(minutes: i64, permanent: bool) -> AudioCommand {
        AudioCommand::RecordRequestFailure {
            error: "down".into(),
            unanswered_upload: None,
            permanent,
            at: t0() + Duration::minutes(minutes),
        }
    }

    fn framework() -> TestFramework<Audio> {
        TestFramework::with(())
    }

    fn started(minutes: i64, attempt: u32) -> AudioEvent {
        let at = t0() + Duration::minutes(minutes);
        AudioEvent::TranscriptionStarted {
            attempt,
            until: at + REQUEST_LEASE,
            at,
        }
    }

    #[test]
    fn record_request_adopts_the_transcript_a_webhook_names_when_no_answer_was_recorded() {
        // The answer timed out after the service accepted: recorded as a failed attempt;
        // the service's webhook then names its transcript, and that one is kept.
        let timed_out = AudioEvent::TranscriptionAttemptFailed {
            attempt: 1,
            error: "timed out".into(),
            retry_at: t0() + Duration::minutes(5),
            unanswered_upload: None,
        };
        framework()
            .given(vec![uploaded(), started(0, 1), timed_out])
            .when(AudioCommand::RecordRequest {
                transcript_id: "tr-1".into(),
                at: t0(),
            })
            .then_expect_events(vec![requested()]);
        // A transcript the file had before (a replayed webhook of a failed one, after an
        // admin asked again) is never taken for the current request.
        framework()
            .given(vec![
                uploaded(),
                requested(),
                AudioEvent::TranscriptFailed {
                    transcript_id: "tr-1".into(),
                    error: "bad audio".into(),
                    webhook_id: None,
                    at: t0(),
                },
                AudioEvent::TranscriptionRetried {
                    by: "admin-1".into(),
                    at: t0(),
                },
                started(0, 1),
            ])
            .when(AudioCommand::RecordRequest {
                transcript_id: "tr-1".into(),
                at: t0(),
            })
            .then_expect_events(vec![]);
        // Failed for good, or finished: nothing to adopt.
        framework()
            .given(vec![
                uploaded(),
                AudioEvent::TranscriptionFailed {
                    attempts: 1,
                    error: "refused".into(),
                },
            ])
            .when(AudioCommand::RecordRequest {
                transcript_id: "tr-1".into(),
                at: t0(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn an_upload_is_recorded_once_for_the_request_under_way_and_kept_past_a_lapsed_claim() {
        let uploaded_to = |url: &str| AudioEvent::TranscriptionUploaded {
            upload_url: url.into(),
            at: t0(),
        };
        let record = |url: &str| AudioCommand::RecordUpload {
            upload_url: url.into(),
            at: t0(),
        };
        framework()
            .given(vec![uploaded(), started(0, 1)])
            .when(record("https://cdn/1"))
            .then_expect_events(vec![uploaded_to("https://cdn/1")]);
        framework()
            .given(vec![
                uploaded(),
                started(0, 1),
                uploaded_to("https://cdn/1"),
            ])
            .when(record("https://cdn/1"))
            .then_expect_events(vec![]);
        // Not without a request under way.
        framework()
            .given(vec![uploaded()])
            .when(record("https://cdn/1"))
            .then_expect_events(vec![]);
        let mut audio = Audio::default();
        for e in [
            uploaded(),
            started(0, 1),
            uploaded_to("https://cdn/1"),
            started(15, 1),
        ] {
            audio.apply(e);
        }
        assert_eq!(audio.unanswered_upload(), Some("https://cdn/1"));
        audio.apply(requested());
        assert_eq!(audio.unanswered_upload(), None);
    }

    #[test]
    fn start_claims_a_due_request_once_until_its_lease_lapses() {
        framework()
            .given(vec![uploaded()])
            .when(AudioCommand::Start { at: t0() })
            .then_expect_events(vec![started(0, 1)]);
        // A second caller (a retry after a timeout, another process manager) gets nothing.
        framework()
            .given(vec![uploaded(), started(0, 1)])
            .when(AudioCommand::Start {
                at: t0() + Duration::minutes(14),
            })
            .then_expect_events(vec![]);
        // Its process died mid-call: once the lease lapses the request is started again.
        framework()
            .given(vec![uploaded(), started(0, 1)])
            .when(AudioCommand::Start {
                at: t0() + REQUEST_LEASE,
            })
            .then_expect_events(vec![started(15, 1)]);
        // Requested already: nothing more is started.
        framework()
            .given(vec![uploaded(), started(0, 1), requested()])
            .when(AudioCommand::Start {
                at: t0() + Duration::days(1),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn retry_starts_a_failed_or_waiting_transcript_again_and_refuses_a_complete_one() {
        let by = || "admin-1".to_owned();
        let retried = AudioEvent::TranscriptionRetried { by: by(), at: t0() };
        let given_up = AudioEvent::TranscriptionFailed {
            attempts: MAX_REQUEST_ATTEMPTS,
            error: "down".into(),
        };
        framework()
            .given(vec![uploaded(), given_up.clone()])
            .when(AudioCommand::Retry { by: by(), at: t0() })
            .then_expect_events(vec![retried.clone()]);
        let waiting = AudioEvent::TranscriptionAttemptFailed {
            attempt: 3,
            error: "down".into(),
            retry_at: t0() + Duration::minutes(5),
            unanswered_upload: None,
        };
        framework()
            .given(vec![uploaded(), waiting])
            .when(AudioCommand::Retry { by: by(), at: t0() })
            .then_expect_events(vec![retried.clone()]);
        // Due already or under way: nothing to do.
        framework()
            .given(vec![uploaded(), started(0, 1)])
            .when(AudioCommand::Retry { by: by(), at: t0() })
            .then_expect_events(vec![]);
        framework()
            .given(vec![uploaded(), requested(), completed()])
            .when(AudioCommand::Retry { by: by(), at: t0() })
            .then_expect_error(AudioError::AlreadyTranscribed);
        // After a retry, attempts count from the first again.
        framework()
            .given(vec![uploaded(), given_up, retried])
            .when(AudioCommand::Start { at: t0() })
            .then_expect_events(vec![started(0, 1)]);
    }

    #[test]
    fn record_check_backs_off_then_fails_a_transcript_that_never_came() {
        let check = |minutes: i64, error: Option<&str>| AudioCommand::RecordCheck {
            transcript_id: "tr-1".into(),
            error: error.map(str::to_owned),
            forced: false,
            at: t0() + Duration::minutes(minutes),
        };
        // Not before the first check is due.
        framework()
            .given(vec![uploaded(), requested()])
            .when(check(5, None))
            .then_expect_events(vec![]);
        framework()
            .given(vec![uploaded(), requested()])
            .when(check(10, Some("HTTP 401")))
            .then_expect_events(vec![AudioEvent::TranscriptChecked {
                transcript_id: "tr-1".into(),
                checks: 1,
                error: Some("HTTP 401".into()),
                next_check_at: t0() + Duration::minutes(30),
                at: t0() + Duration::minutes(10),
            }]);
        // Another transcript's check, or one after completion, changes nothing.
        framework()
            .given(vec![uploaded(), requested()])
            .when(AudioCommand::RecordCheck {
                transcript_id: "tr-2".into(),
                error: None,
                forced: false,
                at: t0() + Duration::hours(1),
            })
            .then_expect_events(vec![]);
        framework()
            .given(vec![uploaded(), requested(), completed()])
            .when(check(60, None))
            .then_expect_events(vec![]);
        framework()
            .given(vec![uploaded(), requested()])
            .when(check(24 * 60, None))
            .then_expect_events(vec![AudioEvent::TranscriptFailed {
                transcript_id: "tr-1".into(),
                error: "no transcript after 24 hours".into(),
                webhook_id: None,
                at: t0() + Duration::hours(24),
            }]);
        assert_eq!(check_delay(1), Duration::minutes(20));
        assert_eq!(check_delay(3), Duration::hours(1));
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
            .given(vec![uploaded(), started(0, 1)])
            .when(failure(0, false))
            .then_expect_events(vec![AudioEvent::TranscriptionAttemptFailed {
                attempt: 1,
                error: "down".into(),
                retry_at: t0() + retry_delay(1),
                unanswered_upload: None,
            }]);
        let first = AudioEvent::TranscriptionAttemptFailed {
            attempt: 1,
            error: "down".into(),
            retry_at: t0() + retry_delay(1),
            unanswered_upload: None,
        };
        // Before its retry time, nothing is started and no failure recorded.
        framework()
            .given(vec![uploaded(), first.clone()])
            .when(failure(0, false))
            .then_expect_events(vec![]);
        framework()
            .given(vec![uploaded(), first])
            .when(AudioCommand::Start { at: t0() })
            .then_expect_events(vec![]);
        let mut given = vec![uploaded()];
        for attempt in 1..MAX_REQUEST_ATTEMPTS {
            given.push(AudioEvent::TranscriptionAttemptFailed {
                attempt,
                error: "down".into(),
                retry_at: t0() + Duration::minutes(attempt as i64 * 10),
                unanswered_upload: None,
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
                webhook_id: Some("w2".into()),
                at: t0(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn upload_about_a_person_keeps_them_as_the_recordings_subject() {
        let person = AudioSubject {
            id: uuid::Uuid::from_u128(7),
            kind: "contact".into(),
        };
        let mut event = uploaded();
        if let AudioEvent::AudioUploaded { subject, .. } = &mut event {
            *subject = Some(person.clone());
        }
        let mut audio = Audio::default();
        audio.apply(event);
        assert_eq!(audio.subject(), Some(&person));
        let mut tenants_own = Audio::default();
        tenants_own.apply(uploaded());
        assert_eq!(tenants_own.subject(), None);
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
                subject: None,
                at: t0(),
            })
            .then_expect_error(AudioError::AlreadyExists);
    }
}
