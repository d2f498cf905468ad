//! The `audio_files` read model: what query-api serves of a file and its transcript, and the
//! queue the transcription process manager takes due files from (`next_attempt_at`).

use async_trait::async_trait;
use events::audio::{AudioEvent, AUDIO};
use events::Envelope;
use sqlx::PgConnection;

use crate::projection::{decode, Projection, ProjectionError, Target};

/// The audio read model.
pub struct AudioProjection;

#[async_trait]
impl Projection for AudioProjection {
    fn name(&self) -> &'static str {
        "audio"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[AUDIO]
    }

    fn tables(&self) -> &'static [&'static str] {
        &["audio_files"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        target: &Target,
        e: &Envelope,
    ) -> Result<(), ProjectionError> {
        let table = target.table("audio_files");
        let event: AudioEvent = decode(e)?;
        let (id, version, recorded) = (e.aggregate_id.as_str(), e.sequence as i64, e.recorded_at);
        // Each statement sets its columns from $4 on; $1–$3 are the row and its version.
        let update = |set: &str| {
            format!("UPDATE {table} SET {set}, updated_at = $2, version = $3 WHERE id = $1::uuid")
        };
        match event {
            AudioEvent::AudioUploaded {
                tenant_id,
                uploaded_by,
                object_key,
                content_type,
                size_bytes,
                at,
                ..
            } => {
                sqlx::query(&format!(
                    "INSERT INTO {table} (id, tenant_id, uploaded_by, object_key, content_type,
                                          size_bytes, status, next_attempt_at, created_at,
                                          updated_at, version)
                     VALUES ($1::uuid, $2, $3, $4, $5, $6, 'uploaded', $7, $7, $8, $9)"
                ))
                .bind(id)
                .bind(tenant_id)
                .bind(uploaded_by)
                .bind(object_key)
                .bind(content_type)
                .bind(size_bytes as i64)
                .bind(at)
                .bind(recorded)
                .bind(version)
                .execute(&mut *conn)
                .await?;
            }
            AudioEvent::TranscriptionStarted { until, .. } => {
                // Due again only if the claim lapses with no outcome recorded.
                sqlx::query(&update("status = 'requesting', next_attempt_at = $4"))
                    .bind(id)
                    .bind(recorded)
                    .bind(version)
                    .bind(until)
                    .execute(&mut *conn)
                    .await?;
            }
            // The row stays as it is (requesting, due when the claim lapses).
            AudioEvent::TranscriptionUploaded { .. } => {
                sqlx::query(&update("status = status"))
                    .bind(id)
                    .bind(recorded)
                    .bind(version)
                    .execute(&mut *conn)
                    .await?;
            }
            AudioEvent::TranscriptionRetried { at, .. } => {
                sqlx::query(&update(
                    "status = 'uploaded', attempts = 0, checks = 0, last_error = NULL,
                     transcript_id = NULL, next_attempt_at = $4",
                ))
                .bind(id)
                .bind(recorded)
                .bind(version)
                .bind(at)
                .execute(&mut *conn)
                .await?;
            }
            AudioEvent::TranscriptRequested { transcript_id, at } => {
                sqlx::query(&update(
                    "status = 'requested', transcript_id = $4, next_attempt_at = $5,
                     checks = 0, last_error = NULL",
                ))
                .bind(id)
                .bind(recorded)
                .bind(version)
                .bind(transcript_id)
                .bind(at + events::audio::FIRST_CHECK)
                .execute(&mut *conn)
                .await?;
            }
            AudioEvent::TranscriptChecked {
                checks,
                error,
                next_check_at,
                ..
            } => {
                sqlx::query(&update(
                    "checks = $4, last_error = $5, next_attempt_at = $6",
                ))
                .bind(id)
                .bind(recorded)
                .bind(version)
                .bind(checks as i32)
                .bind(error)
                .bind(next_check_at)
                .execute(&mut *conn)
                .await?;
            }
            AudioEvent::TranscriptionAttemptFailed {
                attempt,
                error,
                retry_at,
                ..
            } => {
                sqlx::query(&update(
                    "status = 'retrying', attempts = $4, last_error = $5, next_attempt_at = $6",
                ))
                .bind(id)
                .bind(recorded)
                .bind(version)
                .bind(attempt as i32)
                .bind(error)
                .bind(retry_at)
                .execute(&mut *conn)
                .await?;
            }
            AudioEvent::TranscriptionFailed { attempts, error } => {
                sqlx::query(&update(
                    "status = 'failed', attempts = $4, last_error = $5, next_attempt_at = NULL",
                ))
                .bind(id)
                .bind(recorded)
                .bind(version)
                .bind(attempts as i32)
                .bind(error)
                .execute(&mut *conn)
                .await?;
            }
            AudioEvent::TranscriptCompleted {
                text,
                words,
                stored,
                language,
                confidence,
                ..
            } => {
                let chars = stored
                    .as_ref()
                    .map_or(text.chars().count() as u64, |s| s.text_chars);
                let words = match &stored {
                    Some(_) => None,
                    None => Some(serde_json::to_value(words).unwrap_or_default()),
                };
                sqlx::query(&update(
                    "status = 'completed', text = $4, words = $5, language = $6, confidence = $7,
                     transcript_object_key = $8, transcript_chars = $9, last_error = NULL,
                     next_attempt_at = NULL",
                ))
                .bind(id)
                .bind(recorded)
                .bind(version)
                .bind(text)
                .bind(words)
                .bind(language)
                .bind(confidence)
                .bind(stored.map(|s| s.object_key))
                .bind(chars as i64)
                .execute(&mut *conn)
                .await?;
            }
            AudioEvent::TranscriptFailed { error, .. } => {
                sqlx::query(&update(
                    "status = 'failed', last_error = $4, next_attempt_at = NULL",
                ))
                .bind(id)
                .bind(recorded)
                .bind(version)
                .bind(error)
                .execute(&mut *conn)
                .await?;
            }
        }
        Ok(())
    }
}

/// The context has no settings of its own.
pub use crate::context::NoSettings as Settings;

/// The audio context: audio files and transcripts, and the process manager that has due
/// ones transcribed.
pub struct Context;

impl crate::context::BoundedContext for Context {
    type Settings = Settings;

    fn projections(
        _setup: &crate::context::Setup<'_>,
        _settings: &Settings,
    ) -> Vec<std::sync::Arc<dyn crate::projection::Projection>> {
        vec![std::sync::Arc::new(AudioProjection)]
    }

    /// The process manager of due transcriptions.
    fn workers(
        running: &crate::context::Running<'_>,
        _settings: &Settings,
        tasks: &mut tokio::task::JoinSet<()>,
    ) {
        let processor = crate::due::DueProcessor::transcriptions(
            running.pool.clone(),
            &running.config.command_api_url,
            running.keys(),
            std::sync::Arc::new(events::clock::SystemClock),
        );
        tasks.spawn(async move { processor.run().await });
    }
}
