//! The `audio_files` read model: what query-api serves of a file and its transcript, and the
//! queue the transcription process manager takes due files from (`next_attempt_at`).

use async_trait::async_trait;
use events::audio::{AudioEvent, AUDIO};
use events::Envelope;
use sqlx::PgConnection;

use crate::projection::{decode, run, Projection, ProjectionError, RowUpdate, Target};

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
        let row = RowUpdate::new(table.clone(), e);
        let id = e.aggregate_id.as_str();
        // Each statement sets its columns from $4 on; $1–$3 are the row and its version.
        match decode::<AudioEvent>(e)? {
            uploaded @ AudioEvent::AudioUploaded { .. } => {
                insert_uploaded(conn, &table, e, uploaded).await
            }
            completed @ AudioEvent::TranscriptCompleted { .. } => {
                completed_transcript(conn, &row, id, completed).await
            }
            AudioEvent::TranscriptionStarted { until, .. } => {
                // Due again only if the claim lapses with no outcome recorded.
                let sql = row.sql("status = 'requesting', next_attempt_at = $4");
                run(conn, row.query(&sql, id).bind(until)).await
            }
            // The row stays as it is (requesting, due when the claim lapses).
            AudioEvent::TranscriptionUploaded { .. } => {
                run(conn, row.query(&row.sql("status = status"), id)).await
            }
            AudioEvent::TranscriptionRetried { at, .. } => {
                let sql = row.sql(
                    "status = 'uploaded', attempts = 0, checks = 0, last_error = NULL,
                     transcript_id = NULL, next_attempt_at = $4",
                );
                run(conn, row.query(&sql, id).bind(at)).await
            }
            AudioEvent::TranscriptRequested { transcript_id, at } => {
                let sql = row.sql(
                    "status = 'requested', transcript_id = $4, next_attempt_at = $5,
                     checks = 0, last_error = NULL",
                );
                let next = at + events::audio::FIRST_CHECK;
                run(conn, row.query(&sql, id).bind(transcript_id).bind(next)).await
            }
            AudioEvent::TranscriptChecked {
                checks,
                error,
                next_check_at,
                ..
            } => {
                let sql = row.sql("checks = $4, last_error = $5, next_attempt_at = $6");
                let query = row.query(&sql, id).bind(checks as i32).bind(error);
                run(conn, query.bind(next_check_at)).await
            }
            AudioEvent::TranscriptionAttemptFailed {
                attempt,
                error,
                retry_at,
                ..
            } => {
                let sql = row.sql(
                    "status = 'retrying', attempts = $4, last_error = $5, next_attempt_at = $6",
                );
                let query = row.query(&sql, id).bind(attempt as i32).bind(error);
                run(conn, query.bind(retry_at)).await
            }
            AudioEvent::TranscriptionFailed { attempts, error } => {
                let sql = row.sql(
                    "status = 'failed', attempts = $4, last_error = $5, next_attempt_at = NULL",
                );
                run(conn, row.query(&sql, id).bind(attempts as i32).bind(error)).await
            }
            AudioEvent::TranscriptFailed { error, .. } => {
                let sql = row.sql("status = 'failed', last_error = $4, next_attempt_at = NULL");
                run(conn, row.query(&sql, id).bind(error)).await
            }
        }
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

/// A file uploaded: its row.
async fn insert_uploaded(
    conn: &mut PgConnection,
    table: &str,
    e: &Envelope,
    event: AudioEvent,
) -> Result<(), ProjectionError> {
    let AudioEvent::AudioUploaded {
        tenant_id,
        uploaded_by,
        object_key,
        content_type,
        size_bytes,
        subject,
        at,
        ..
    } = event
    else {
        return Ok(());
    };
    sqlx::query(&format!(
        "INSERT INTO {table} (id, tenant_id, uploaded_by, object_key, content_type,
                              size_bytes, status, next_attempt_at, created_at,
                              updated_at, version, subject_id)
         VALUES ($1::uuid, $2, $3, $4, $5, $6, 'uploaded', $7, $7, $8, $9, $10)"
    ))
    .bind(&e.aggregate_id)
    .bind(tenant_id)
    .bind(uploaded_by)
    .bind(object_key)
    .bind(content_type)
    .bind(size_bytes as i64)
    .bind(at)
    .bind(e.recorded_at)
    .bind(e.sequence as i64)
    .bind(subject.map(|s| s.id))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Overwrites with `[erased]` the transcripts of recordings about erased subject `subject`
/// (docs/privacy.md): their text, and their words (none left). The live table, in the
/// caller's transaction; a rebuild gives the same (the events read `[erased]`).
pub async fn redact_subject(
    conn: &mut PgConnection,
    subject: uuid::Uuid,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "UPDATE audio_files
            SET text = CASE WHEN text IS NOT NULL THEN $2 END,
                words = CASE WHEN words IS NOT NULL THEN '[]'::jsonb END
          WHERE subject_id = $1",
    )
    .bind(subject)
    .bind(events::personal::ERASED)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A transcript completed: its text (or where the stored one is) and words.
async fn completed_transcript(
    conn: &mut PgConnection,
    row: &RowUpdate,
    id: &str,
    event: AudioEvent,
) -> Result<(), ProjectionError> {
    let AudioEvent::TranscriptCompleted {
        text,
        words,
        words_sealed,
        stored,
        language,
        confidence,
        ..
    } = event
    else {
        return Ok(());
    };
    // Opened with the rest of the event: `[erased]`, no list, once its subject is erased.
    let words = events::audio::words_of(words, words_sealed.as_deref());
    let chars = stored
        .as_ref()
        .map_or(text.chars().count() as u64, |s| s.text_chars);
    let words = match &stored {
        Some(_) => None,
        None => Some(serde_json::to_value(words).unwrap_or_default()),
    };
    let sql = row.sql(
        "status = 'completed', text = $4, words = $5, language = $6, confidence = $7,
         transcript_object_key = $8, transcript_chars = $9, last_error = NULL,
         next_attempt_at = NULL",
    );
    let query = row
        .query(&sql, id)
        .bind(text)
        .bind(words)
        .bind(language)
        .bind(confidence)
        .bind(stored.map(|s| s.object_key))
        .bind(chars as i64);
    run(conn, query).await
}
