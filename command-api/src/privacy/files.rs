//! Deleting an erased subject's files (docs/privacy.md, "Erasure"): the files the platform
//! stored for them as the contact of their threads — the MMS files of their SMS and the
//! files they sent on WhatsApp — and the recordings about them with their stored
//! transcripts. Found in the event store, which names every one of them: the
//! blob store is command-api's, and so is the store that says which file is whose.
//!
//! Deleting is idempotent (a file already gone counts as deleted), so an erasure asked again
//! deletes what an interrupted one left.

use events::personal::subject_id;
use object_store::{path::Path, ObjectStore};
use sqlx::PgPool;
use uuid::Uuid;

/// Why files could not all be deleted.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The event store could not be read.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The blob store refused a deletion.
    #[error(transparent)]
    Blobs(#[from] object_store::Error),
}

/// The ids of the threads of `tenant` whose customer is subject `subject` (of `kind`).
async fn threads_of(
    pool: &PgPool,
    tenant: &str,
    subject: Uuid,
    kind: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let customers: Vec<(String, String)> = sqlx::query_as(
        "SELECT aggregate_id, payload->'Opened'->'customer'->>'id' FROM events
          WHERE aggregate_type = 'thread' AND sequence = 1
            AND metadata->>'tenant_id' = $1
            AND jsonb_typeof(payload->'Opened'->'customer') = 'object'",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    Ok(customers
        .into_iter()
        .filter(|(_, customer)| subject_id(kind, tenant, customer) == subject)
        .map(|(thread, _)| thread)
        .collect())
}

/// The blob keys of the files of `threads` of `tenant` that the platform stored for the
/// contact who wrote: the MMS files of their SMS (attachments under
/// `tenants/{tenant}/sms/`) and the files they sent on WhatsApp
/// (`tenants/{tenant}/whatsapp/{message id}`, absent when the message had none). Only
/// those: an attachment a person or an agent names may be any file of the tenant (its logo,
/// another customer's upload), so naming one makes it nobody's to delete.
async fn files_of(
    pool: &PgPool,
    tenant: &str,
    threads: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    let keys: Vec<(Option<String>, String)> = sqlx::query_as(
        "SELECT payload->'MessageSent'->'attachment'->>'object_key',
                payload->'MessageSent'->>'message_id'
           FROM events
          WHERE aggregate_type = 'thread' AND aggregate_id = ANY($1)
            AND event_type = 'MessageSent'
            AND payload->'MessageSent'->'author'->>'kind' = 'contact'",
    )
    .bind(threads)
    .fetch_all(pool)
    .await?;
    let sms = format!("tenants/{tenant}/sms/");
    let mut files: Vec<String> = Vec::new();
    for (attachment, message_id) in keys {
        files.extend(attachment.filter(|k| k.starts_with(&sms)));
        files.push(format!("tenants/{tenant}/whatsapp/{message_id}"));
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// The blob keys of the recordings of `tenant` about subject `subject`
/// (`AudioUploaded.subject`) and of their transcripts stored in the blob store.
async fn recordings_of(
    pool: &PgPool,
    tenant: &str,
    subject: Uuid,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH theirs AS (
             SELECT aggregate_id, payload->'AudioUploaded'->>'object_key' AS file FROM events
              WHERE aggregate_type = 'audio' AND event_type = 'AudioUploaded'
                AND metadata->>'tenant_id' = $1
                AND payload->'AudioUploaded'->'subject'->>'id' = $2)
         SELECT file FROM theirs
         UNION
         SELECT e.payload->'TranscriptCompleted'->'stored'->>'object_key' FROM events e
          WHERE e.aggregate_type = 'audio' AND e.event_type = 'TranscriptCompleted'
            AND e.aggregate_id IN (SELECT aggregate_id FROM theirs)
            AND e.payload->'TranscriptCompleted'->'stored'->>'object_key' IS NOT NULL",
    )
    .bind(tenant)
    .bind(subject.to_string())
    .fetch_all(pool)
    .await
}

/// Deletes the files of subject `subject` (of `kind`) of `tenant`; returns how many keys it
/// deleted or found gone.
pub async fn delete_subject_files(
    pool: &PgPool,
    blobs: &dyn ObjectStore,
    tenant: &str,
    subject: Uuid,
    kind: &str,
) -> Result<usize, FilesError> {
    let threads = threads_of(pool, tenant, subject, kind).await?;
    let mut keys = match threads.is_empty() {
        true => Vec::new(),
        false => files_of(pool, tenant, &threads).await?,
    };
    keys.extend(recordings_of(pool, tenant, subject).await?);
    for key in &keys {
        match blobs.delete(&Path::from(key.as_str())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(keys.len())
}
