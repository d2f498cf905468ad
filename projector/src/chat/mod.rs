//! Read models of chat: `chat_threads` (the inbox), `chat_participants`, `chat_messages`
//! (tombstones keep their row without text), `chat_reads` (how far each reader has read)
//! and `chat_scheduled` (what the scheduler delivers).
//!
//! Every event moves the thread row's `version`, so a reader can wait for its own write.
//! A message's author has read it: sending moves the author's read position too.

/// Open threads taken from agents and departments that went away.
pub mod reassignment;
/// Delivers scheduled messages when due.
pub mod scheduler;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use events::chat::{Attachment, Party, PartyKind, ThreadEvent, THREAD};
use events::Envelope;
use sqlx::PgConnection;

use crate::projection::{Projection, ProjectionError, Target};

/// Longest preview of the last message on the inbox row, in characters.
const PREVIEW_CHARS: i32 = 200;

/// The chat read models.
pub struct ChatProjection;

/// The physical names of the chat tables for one target.
struct Tables {
    threads: String,
    participants: String,
    messages: String,
    reads: String,
    scheduled: String,
}

impl Tables {
    fn of(target: &Target) -> Self {
        Self {
            threads: target.table("chat_threads"),
            participants: target.table("chat_participants"),
            messages: target.table("chat_messages"),
            reads: target.table("chat_reads"),
            scheduled: target.table("chat_scheduled"),
        }
    }
}

#[async_trait]
impl Projection for ChatProjection {
    fn name(&self) -> &'static str {
        "chat"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[THREAD]
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "chat_threads",
            "chat_participants",
            "chat_messages",
            "chat_reads",
            "chat_scheduled",
        ]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        target: &Target,
        e: &Envelope,
    ) -> Result<(), ProjectionError> {
        let event: ThreadEvent = serde_json::from_value(e.payload.clone()).map_err(|err| {
            ProjectionError::Undecodable {
                event_id: e.event_id(),
                reason: err.to_string(),
            }
        })?;
        let t = Tables::of(target);
        let (id, tenant) = (e.aggregate_id.as_str(), e.tenant_id());
        let r = Row {
            t: &t,
            id,
            tenant,
            version: e.sequence as i64,
            recorded: e.recorded_at,
        };
        // Statements that change more than the thread row run first; `touch` then sets the
        // thread's columns named in `set` ($4 onwards) with its version.
        let touched = match event {
            opened_event @ ThreadEvent::Opened { .. } => {
                return opened(conn, &r, opened_event).await;
            }
            ThreadEvent::ParticipantAdded { participant } => {
                join(conn, &t, id, tenant, &participant, r.recorded).await?;
                touch(conn, &r, "", Binds::None).await?
            }
            change @ (ThreadEvent::Assigned { .. }
            | ThreadEvent::BotSwitched { .. }
            | ThreadEvent::Closed { .. }
            | ThreadEvent::Reopened { .. }
            | ThreadEvent::Tagged { .. }) => thread_change(conn, &r, change).await?,
            sent @ ThreadEvent::MessageSent { .. } => message_sent(conn, &r, sent).await?,
            ThreadEvent::MessageEdited {
                message_id,
                text,
                at,
            } => message_edited(conn, &r, message_id, text, at).await?,
            ThreadEvent::MessageDeleted { message_id, at, .. } => {
                message_deleted(conn, &r, message_id, at).await?
            }
            ThreadEvent::Read { reader, number, at } => {
                read(conn, &t, id, tenant, &reader, number, at).await?;
                touch(conn, &r, "", Binds::None).await?
            }
            ThreadEvent::MessageScheduled {
                scheduled_id,
                author,
                text,
                attachment,
                due_at,
            } => {
                message_scheduled(conn, &r, scheduled_id, author, text, attachment, due_at).await?
            }
            ThreadEvent::MessageRescheduled {
                scheduled_id,
                due_at,
            } => message_rescheduled(conn, &r, scheduled_id, due_at).await?,
            ThreadEvent::ScheduleFailed {
                scheduled_id,
                code,
                reason,
                at,
            } => schedule_failed(conn, &r, scheduled_id, code, reason, at).await?,
            ThreadEvent::ScheduleCancelled { scheduled_id } => {
                schedule_cancelled(conn, &r, scheduled_id).await?
            }
        };
        if touched != 1 {
            return Err(ProjectionError::Undecodable {
                event_id: e.event_id(),
                reason: format!("thread row {id} is missing"),
            });
        }
        Ok(())
    }
}

/// The thread row an event changes, and what every change of it records.
#[derive(Clone, Copy)]
struct Row<'a> {
    /// The read model's tables (live, or a rebuild's).
    t: &'a Tables,
    /// The thread.
    id: &'a str,
    /// Its tenant.
    tenant: &'a str,
    /// The event's sequence: the row's version.
    version: i64,
    /// When the event was recorded.
    recorded: DateTime<Utc>,
}

/// A change of the thread row alone: assignment, bot, open or closed, tags. The rows
/// changed (1, or 0 when the row is missing).
async fn thread_change(
    conn: &mut PgConnection,
    r: &Row<'_>,
    event: ThreadEvent,
) -> Result<u64, ProjectionError> {
    match event {
        ThreadEvent::Assigned {
            agent_id,
            department,
            reason,
        } => {
            let reason = reason.map(|r| r.as_str().to_owned());
            touch(
                conn,
                r,
                "agent_id = $4, department = $5, assignment_reason = $6,",
                Binds::Texts3(agent_id, department, reason),
            )
            .await
        }
        ThreadEvent::BotSwitched { enabled } => {
            touch(conn, r, "bot_enabled = $4,", Binds::Bool(enabled)).await
        }
        ThreadEvent::Closed { at } => {
            touch(
                conn,
                r,
                "status = 'closed', last_activity_at = $4,",
                Binds::Time(at),
            )
            .await
        }
        ThreadEvent::Reopened { at } => {
            touch(
                conn,
                r,
                "status = 'open', last_activity_at = $4,",
                Binds::Time(at),
            )
            .await
        }
        ThreadEvent::Tagged { tags } => touch(conn, r, "tags = $4,", Binds::Tags(tags)).await,
        // Another group's: `apply` sends it there.
        _ => Ok(1),
    }
}

/// Opens the thread row and joins its first parties.
async fn opened(
    conn: &mut PgConnection,
    r: &Row<'_>,
    event: ThreadEvent,
) -> Result<(), ProjectionError> {
    let ThreadEvent::Opened {
        channel,
        opened_by,
        customer,
        customer_address,
        subject,
        bot_enabled,
        tags,
        at,
        ..
    } = event
    else {
        return Ok(());
    };
    let Row {
        t,
        id,
        tenant,
        version,
        recorded,
    } = *r;
    sqlx::query(&format!(
        "INSERT INTO {} (id, tenant_id, channel, status, subject, customer_id, opened_by,
                             bot_enabled, tags, last_activity_at, created_at, updated_at, version,
                             customer_address)
             VALUES ($1::uuid, $2, $3, 'open', $4, $5, $6, $7, $8, $9, $9, $10, $11, $12)",
        t.threads
    ))
    .bind(id)
    .bind(tenant)
    .bind(channel.as_str())
    .bind(subject)
    .bind(customer.as_ref().map(|c| c.id.clone()))
    .bind(&opened_by.id)
    .bind(bot_enabled)
    .bind(tags)
    .bind(at)
    .bind(recorded)
    .bind(version)
    .bind(customer_address)
    .execute(&mut *conn)
    .await?;
    for party in [Some(opened_by), customer].into_iter().flatten() {
        join(conn, t, id, tenant, &party, at).await?;
    }
    Ok(())
}

/// The message, the author's read position, the delivered schedule and the inbox row, in one round trip.
async fn message_sent(
    conn: &mut PgConnection,
    r: &Row<'_>,
    event: ThreadEvent,
) -> Result<u64, ProjectionError> {
    let ThreadEvent::MessageSent {
        message_id,
        number,
        author,
        client_message_id,
        text,
        attachment,
        scheduled_id,
        at,
    } = event
    else {
        return Ok(0);
    };
    let Row {
        t,
        id,
        tenant,
        version,
        recorded,
    } = *r;
    let attachment = attachment.map(|a| serde_json::to_value(a).unwrap_or_default());
    // One round trip: the message, the author's read position, the delivered
    // schedule and the inbox row.
    Ok(sqlx::query(&format!(
        "WITH message AS (
            INSERT INTO {messages} (thread_id, number, message_id, tenant_id, author_id,
                                    author_kind, text, attachment, client_message_id,
                                    scheduled_id, sent_at)
            VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)),
         reads AS (
            INSERT INTO {reads} (thread_id, reader_id, tenant_id, reader_kind, last_read, read_at)
            VALUES ($1::uuid, $5, $4, $6, $2, $11)
            ON CONFLICT (thread_id, reader_id) DO UPDATE
               SET last_read = greatest({reads}.last_read, EXCLUDED.last_read),
                   read_at = EXCLUDED.read_at),
         delivered AS (
            UPDATE {scheduled} SET status = 'delivered', message_id = $3, updated_at = $12
             WHERE thread_id = $1::uuid AND id = $10)
         UPDATE {threads}
            SET message_count = $2, last_activity_at = $11,
                last_message = jsonb_build_object(
                    'message_id', $3, 'number', $2, 'author_id', $5, 'author_kind', $6,
                    'text', left($7, {PREVIEW_CHARS}), 'has_attachment', $8::jsonb IS NOT NULL,
                    'sent_at', api_time($11)),
                updated_at = $12, version = $13
          WHERE id = $1::uuid",
        messages = t.messages,
        reads = t.reads,
        scheduled = t.scheduled,
        threads = t.threads,
    ))
    .bind(id)
    .bind(number as i64)
    .bind(message_id)
    .bind(tenant)
    .bind(&author.id)
    .bind(author.kind.as_str())
    .bind(text)
    .bind(attachment)
    .bind(client_message_id)
    .bind(scheduled_id)
    .bind(at)
    .bind(recorded)
    .bind(version)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// A message's new text, and the preview if it is the last message.
async fn message_edited(
    conn: &mut PgConnection,
    r: &Row<'_>,
    message_id: String,
    text: String,
    at: DateTime<Utc>,
) -> Result<u64, ProjectionError> {
    let Row { t, id, .. } = *r;
    sqlx::query(&format!(
        "UPDATE {} SET text = $3, edited_at = $4 WHERE thread_id = $1::uuid AND message_id = $2",
        t.messages
    ))
    .bind(id)
    .bind(&message_id)
    .bind(&text)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    touch(
        conn,
        r,
        &format!(
            "last_message = CASE WHEN last_message->>'message_id' = $4
                 THEN jsonb_set(last_message, '{{text}}', to_jsonb(left($5, {PREVIEW_CHARS})))
                 ELSE last_message END,"
        ),
        Binds::Texts(Some(message_id), Some(text)),
    )
    .await
}

/// A message tombstoned; the preview falls back to the newest message still there.
async fn message_deleted(
    conn: &mut PgConnection,
    r: &Row<'_>,
    message_id: String,
    at: DateTime<Utc>,
) -> Result<u64, ProjectionError> {
    let Row { t, id, .. } = *r;
    sqlx::query(&format!(
        "UPDATE {} SET text = NULL, attachment = NULL, deleted_at = $3
          WHERE thread_id = $1::uuid AND message_id = $2",
        t.messages
    ))
    .bind(id)
    .bind(&message_id)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    // The preview falls back to the newest message still there; unread counts
    // leave the deleted one out.
    touch(
        conn,
        r,
        &format!(
            "deleted_numbers = ARRAY(SELECT DISTINCT n FROM unnest(
                 deleted_numbers || ARRAY(SELECT m.number FROM {messages} m
                                           WHERE m.thread_id = $1::uuid
                                             AND m.message_id = $4)) AS n
                                      ORDER BY n),
             last_message = CASE WHEN last_message->>'message_id' = $4
                 THEN (SELECT jsonb_build_object(
                          'message_id', m.message_id, 'number', m.number,
                          'author_id', m.author_id, 'author_kind', m.author_kind,
                          'text', left(m.text, {PREVIEW_CHARS}),
                          'has_attachment', m.attachment IS NOT NULL,
                          'sent_at', api_time(m.sent_at))
                         FROM {messages} m
                        WHERE m.thread_id = $1::uuid AND m.deleted_at IS NULL
                        ORDER BY m.number DESC LIMIT 1)
                 ELSE last_message END,",
            messages = t.messages
        ),
        Binds::Texts(Some(message_id), None),
    )
    .await
}

/// A scheduled message, pending.
async fn message_scheduled(
    conn: &mut PgConnection,
    r: &Row<'_>,
    scheduled_id: String,
    author: Party,
    text: String,
    attachment: Option<Attachment>,
    due_at: DateTime<Utc>,
) -> Result<u64, ProjectionError> {
    let Row {
        t,
        id,
        tenant,
        recorded,
        ..
    } = *r;
    let attachment = attachment.map(|a| serde_json::to_value(a).unwrap_or_default());
    sqlx::query(&format!(
        "INSERT INTO {} (thread_id, id, tenant_id, author_id, text, attachment, due_at,
                         status, created_at, updated_at)
         VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, 'pending', $8, $8)",
        t.scheduled
    ))
    .bind(id)
    .bind(scheduled_id)
    .bind(tenant)
    .bind(author.id)
    .bind(text)
    .bind(attachment)
    .bind(due_at)
    .bind(recorded)
    .execute(&mut *conn)
    .await?;
    touch(conn, r, "", Binds::None).await
}

/// A scheduled message moved (a failed one is pending again).
async fn message_rescheduled(
    conn: &mut PgConnection,
    r: &Row<'_>,
    scheduled_id: String,
    due_at: DateTime<Utc>,
) -> Result<u64, ProjectionError> {
    let Row {
        t, id, recorded, ..
    } = *r;
    // A failed one is pending again at its new time.
    schedule_change(
        conn,
        t,
        id,
        &scheduled_id,
        "due_at = $3, status = CASE WHEN status = 'failed' THEN 'pending' ELSE status END,
         failure_code = NULL, failure = NULL, failed_at = NULL",
        Some(due_at),
        recorded,
    )
    .await?;
    touch(conn, r, "", Binds::None).await
}

/// A scheduled message that could not be delivered.
async fn schedule_failed(
    conn: &mut PgConnection,
    r: &Row<'_>,
    scheduled_id: String,
    code: String,
    reason: String,
    at: DateTime<Utc>,
) -> Result<u64, ProjectionError> {
    let Row {
        t, id, recorded, ..
    } = *r;
    sqlx::query(&format!(
        "UPDATE {} SET status = 'failed', failure_code = $3, failure = $4,
                failed_at = $5, updated_at = $6
          WHERE thread_id = $1::uuid AND id = $2",
        t.scheduled
    ))
    .bind(id)
    .bind(&scheduled_id)
    .bind(code)
    .bind(reason)
    .bind(at)
    .bind(recorded)
    .execute(&mut *conn)
    .await?;
    touch(conn, r, "", Binds::None).await
}

/// A scheduled message cancelled.
async fn schedule_cancelled(
    conn: &mut PgConnection,
    r: &Row<'_>,
    scheduled_id: String,
) -> Result<u64, ProjectionError> {
    let Row {
        t, id, recorded, ..
    } = *r;
    schedule_change(
        conn,
        t,
        id,
        &scheduled_id,
        "status = 'cancelled'",
        None,
        recorded,
    )
    .await?;
    touch(conn, r, "", Binds::None).await
}

/// Values an update of the thread row binds from `$4`.
enum Binds {
    None,
    Bool(bool),
    Time(DateTime<Utc>),
    Texts(Option<String>, Option<String>),
    Texts3(Option<String>, Option<String>, Option<String>),
    Tags(Vec<String>),
}

/// Sets `set` (a list of `column = …,` using `$4`…) and the version on the thread row;
/// answers the rows changed (1, or 0 when the row is missing).
async fn touch(
    conn: &mut PgConnection,
    r: &Row<'_>,
    set: &str,
    binds: Binds,
) -> Result<u64, ProjectionError> {
    let Row {
        t,
        id,
        version,
        recorded,
        ..
    } = *r;
    let sql = format!(
        "UPDATE {} SET {set} updated_at = $2, version = $3 WHERE id = $1::uuid",
        t.threads
    );
    let query = sqlx::query(&sql).bind(id).bind(recorded).bind(version);
    let query = match binds {
        Binds::None => query,
        Binds::Bool(b) => query.bind(b),
        Binds::Time(at) => query.bind(at),
        Binds::Texts(a, b) => query.bind(a).bind(b),
        Binds::Texts3(a, b, c) => query.bind(a).bind(b).bind(c),
        Binds::Tags(tags) => query.bind(tags),
    };
    Ok(query.execute(&mut *conn).await?.rows_affected())
}

/// Adds a participant (phone users and agents; others take no part).
async fn join(
    conn: &mut PgConnection,
    t: &Tables,
    id: &str,
    tenant: &str,
    party: &Party,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    if !matches!(party.kind, PartyKind::Phone | PartyKind::Agent) {
        return Ok(());
    }
    sqlx::query(&format!(
        "INSERT INTO {} (thread_id, user_id, tenant_id, kind, joined_at)
         VALUES ($1::uuid, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        t.participants
    ))
    .bind(id)
    .bind(&party.id)
    .bind(tenant)
    .bind(party.kind.as_str())
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Moves a reader's position forward (never back).
async fn read(
    conn: &mut PgConnection,
    t: &Tables,
    id: &str,
    tenant: &str,
    reader: &Party,
    number: u64,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    sqlx::query(&format!(
        "INSERT INTO {reads} (thread_id, reader_id, tenant_id, reader_kind, last_read, read_at)
         VALUES ($1::uuid, $2, $3, $4, $5, $6)
         ON CONFLICT (thread_id, reader_id) DO UPDATE
            SET last_read = greatest({reads}.last_read, EXCLUDED.last_read), read_at = EXCLUDED.read_at",
        reads = t.reads
    ))
    .bind(id)
    .bind(&reader.id)
    .bind(tenant)
    .bind(reader.kind.as_str())
    .bind(number as i64)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Changes one scheduled message (`set` may use `$3`).
async fn schedule_change(
    conn: &mut PgConnection,
    t: &Tables,
    id: &str,
    scheduled_id: &str,
    set: &str,
    due_at: Option<DateTime<Utc>>,
    recorded: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let sql = format!(
        "UPDATE {} SET {set}, updated_at = $4 WHERE thread_id = $1::uuid AND id = $2",
        t.scheduled
    );
    sqlx::query(&sql)
        .bind(id)
        .bind(scheduled_id)
        .bind(due_at)
        .bind(recorded)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Names a contact the read models still name by number (threads opened before contacts
/// were named by subject id, whose events the store's transform has renamed since, or not
/// yet) by their subject id, as a rebuild from the renamed events would: their number is
/// not left as an id once they are erased. `ids` are the subject's ids as customer.
async fn rename_numbers(
    conn: &mut PgConnection,
    tenant: &str,
    ids: &[String],
    subject: uuid::Uuid,
) -> Result<(), ProjectionError> {
    let numbers: Vec<&String> = ids
        .iter()
        .filter(|id| uuid::Uuid::try_parse(id).is_err())
        .collect();
    if numbers.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "WITH theirs AS (
             SELECT id FROM chat_threads WHERE tenant_id = $1 AND customer_id = ANY($2)),
         messages AS (
             UPDATE chat_messages SET author_id = $3
              WHERE thread_id IN (SELECT id FROM theirs) AND author_id = ANY($2)
             RETURNING thread_id),
         reads AS (
             DELETE FROM chat_reads
              WHERE thread_id IN (SELECT id FROM theirs) AND reader_id = ANY($2)
             RETURNING thread_id, reader_kind, last_read, read_at, tenant_id),
         moved AS (
             INSERT INTO chat_reads (thread_id, reader_id, tenant_id, reader_kind, last_read,
                                     read_at)
             SELECT thread_id, $3, tenant_id, reader_kind, last_read, read_at FROM reads
             ON CONFLICT (thread_id, reader_id) DO UPDATE
                SET last_read = greatest(chat_reads.last_read, EXCLUDED.last_read)
             RETURNING thread_id)
         UPDATE chat_threads SET
                customer_id = $3,
                last_message = CASE WHEN last_message->>'author_id' = ANY($2)
                                    THEN jsonb_set(last_message, '{author_id}', to_jsonb($3::text))
                                    ELSE last_message END
          WHERE id IN (SELECT id FROM theirs)",
    )
    .bind(tenant)
    .bind(&numbers)
    .bind(subject.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The ids subject `subject` of `tenant` (`kind` as `Erased` names it) has in the chat read
/// models: as the customer of threads (a contact by subject id, or by number in threads
/// opened before), and, for a staff member, as the author of messages in threads without a
/// customer.
async fn ids_of(
    conn: &mut PgConnection,
    subject: uuid::Uuid,
    tenant: &str,
    kind: &str,
) -> Result<(Vec<String>, Vec<String>), ProjectionError> {
    let is_subject = |id: &String| events::personal::subject_id(kind, tenant, id) == subject;
    let customers: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT customer_id FROM chat_threads
          WHERE tenant_id = $1 AND customer_id IS NOT NULL",
    )
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?;
    let customers: Vec<String> = customers.into_iter().filter(is_subject).collect();
    if kind != "admin_user" {
        return Ok((customers, Vec::new()));
    }
    let authors: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT m.author_id FROM chat_messages m
           JOIN chat_threads t ON t.id = m.thread_id
          WHERE t.customer_id IS NULL AND m.author_kind = 'agent'",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok((customers, authors.into_iter().filter(is_subject).collect()))
}

/// Overwrites with `[erased]` what the chat read models hold of erased subject `subject` of
/// `tenant` (`kind` as `Erased` names it; docs/privacy.md): every text, the subject line and
/// a contact's number of the threads whose customer they were (sealed for them, whoever
/// wrote in it), and, for
/// a staff member, the texts they wrote in threads without a customer. The live tables, in
/// the caller's transaction. Their events already read `[erased]` (the keys are gone), so a
/// rebuild gives the same.
pub async fn redact_subject(
    conn: &mut PgConnection,
    subject: uuid::Uuid,
    tenant: &str,
    kind: &str,
) -> Result<(), ProjectionError> {
    let (customers, authors) = ids_of(conn, subject, tenant, kind).await?;
    if customers.is_empty() && authors.is_empty() {
        return Ok(());
    }
    let erased = events::personal::ERASED;
    sqlx::query(
        "WITH theirs AS (
             SELECT id FROM chat_threads WHERE tenant_id = $1 AND customer_id = ANY($2)),
         messages AS (
             -- A file's name is theirs too (sealed as the text is).
             UPDATE chat_messages m
                SET text = CASE WHEN m.text <> '' THEN $4 ELSE m.text END,
                    attachment = CASE WHEN m.attachment->>'name' IS NOT NULL
                                      THEN jsonb_set(m.attachment, '{name}', to_jsonb($4::text))
                                      ELSE m.attachment END
               FROM chat_threads t
              WHERE t.id = m.thread_id AND (m.text <> '' OR m.attachment->>'name' IS NOT NULL)
                AND (t.id IN (SELECT id FROM theirs)
                     OR (t.customer_id IS NULL AND m.author_kind = 'agent'
                         AND m.author_id = ANY($3)))
             RETURNING m.thread_id),
         scheduled AS (
             UPDATE chat_scheduled s
                SET text = CASE WHEN s.text <> '' THEN $4 ELSE s.text END,
                    attachment = CASE WHEN s.attachment->>'name' IS NOT NULL
                                      THEN jsonb_set(s.attachment, '{name}', to_jsonb($4::text))
                                      ELSE s.attachment END
               FROM chat_threads t
              WHERE t.id = s.thread_id AND (s.text <> '' OR s.attachment->>'name' IS NOT NULL)
                AND (t.id IN (SELECT id FROM theirs)
                     OR (t.customer_id IS NULL AND s.author_id = ANY($3)))
             RETURNING s.thread_id)
         UPDATE chat_threads SET
                last_message = CASE WHEN last_message->>'text' <> ''
                                    THEN jsonb_set(last_message, '{text}', to_jsonb($4::text))
                                    ELSE last_message END,
                -- The subject line and a contact's number are the customer's too.
                subject = CASE WHEN id IN (SELECT id FROM theirs) AND subject IS NOT NULL
                               THEN $4 ELSE subject END,
                customer_address = CASE WHEN id IN (SELECT id FROM theirs)
                                             AND customer_address IS NOT NULL
                                        THEN $4 ELSE customer_address END
          WHERE id IN (SELECT id FROM theirs)
             OR (customer_id IS NULL AND last_message->>'author_kind' = 'agent'
                 AND last_message->>'author_id' = ANY($3)
                 AND last_message->>'text' <> '')",
    )
    .bind(tenant)
    .bind(&customers)
    .bind(&authors)
    .bind(erased)
    .execute(&mut *conn)
    .await?;
    rename_numbers(conn, tenant, &customers, subject).await
}

/// The context has no settings of its own.
pub use crate::context::NoSettings as Settings;

/// The chat context: threads and messages, the reassignment of threads whose agent or
/// department went away, and the delivery of scheduled messages.
pub struct Context;

impl crate::context::BoundedContext for Context {
    type Settings = Settings;

    fn projections(
        setup: &crate::context::Setup<'_>,
        _settings: &Settings,
    ) -> Vec<std::sync::Arc<dyn crate::projection::Projection>> {
        let mut all: Vec<std::sync::Arc<dyn crate::projection::Projection>> =
            vec![std::sync::Arc::new(ChatProjection)];
        if let (Some(pool), Some(client)) = (&setup.pool, setup.command_client("reassignment")) {
            all.push(std::sync::Arc::new(reassignment::Reassignment::new(
                pool.clone(),
                client,
            )));
        }
        all
    }

    /// The scheduler of due messages, and the sweeps of threads left with nobody.
    fn workers(
        running: &crate::context::Running<'_>,
        _settings: &Settings,
        tasks: &mut tokio::task::JoinSet<()>,
    ) {
        let scheduler = scheduler::Scheduler::new(
            running.pool.clone(),
            running.config.command_api_url.clone(),
            running.keys(),
            std::sync::Arc::new(events::clock::SystemClock),
        );
        tasks.spawn(async move { scheduler.run().await });
        let client = crate::command_client::CommandClient::new(
            &running.config.command_api_url,
            running.keys(),
            "reassignment",
        );
        let reassignment = reassignment::Reassignment::new(running.pool.clone(), client);
        tasks.spawn(std::sync::Arc::new(reassignment).run_sweeps());
    }
}
