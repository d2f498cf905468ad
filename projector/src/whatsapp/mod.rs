//! The WhatsApp read models, one projection per aggregate type (so each consumer filters
//! on its own subjects): sessions (`whatsapp_sessions`), and conversations
//! (`whatsapp_conversations`), every message either way (`whatsapp_messages`, also the
//! sender's queue) and contacts per tenant (`whatsapp_contacts`). A session's health is read
//! from its messages.

/// The context's settings.
pub mod settings;

pub use settings::Settings;

/// WhatsApp files refused for an expired token, fetched again when the session reconnects.
pub mod media;
/// Thread replies forwarded to WhatsApp.
pub mod outbox;
/// Sends due WhatsApp messages through the Cloud API or a bridge, at most once each.
pub mod sender;

use async_trait::async_trait;
use events::personal::ERASED;
use events::whatsapp::{
    attempt_lease, ConversationEvent, Outbound, SessionEvent, WHATSAPP_CONVERSATION,
    WHATSAPP_SESSION,
};
use events::Envelope;
use sqlx::PgConnection;

use crate::projection::{run, Projection, ProjectionError, RowQuery, RowUpdate, Target};

/// Sessions.
pub struct WhatsAppSessionsProjection;

/// Conversations, messages and contacts.
pub struct WhatsAppProjection;

fn decode<T: serde::de::DeserializeOwned>(e: &Envelope) -> Result<T, ProjectionError> {
    serde_json::from_value(e.payload.clone()).map_err(|err| ProjectionError::Undecodable {
        event_id: e.event_id(),
        reason: err.to_string(),
    })
}

/// What the messages list shows of an outbound message.
fn outbound_text(content: &Outbound) -> Option<String> {
    match content {
        Outbound::Text { body, .. } => Some(body.clone()),
        Outbound::Media { caption, .. } | Outbound::File { caption, .. } => caption.clone(),
        Outbound::Template { name, .. } => Some(format!("[template] {name}")),
    }
}

#[async_trait]
impl Projection for WhatsAppSessionsProjection {
    fn name(&self) -> &'static str {
        "whatsapp-sessions"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[WHATSAPP_SESSION]
    }

    fn tables(&self) -> &'static [&'static str] {
        &["whatsapp_sessions"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        target: &Target,
        e: &Envelope,
    ) -> Result<(), ProjectionError> {
        session(conn, target, e).await
    }
}

#[async_trait]
impl Projection for WhatsAppProjection {
    fn name(&self) -> &'static str {
        "whatsapp"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[WHATSAPP_CONVERSATION]
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "whatsapp_conversations",
            "whatsapp_messages",
            "whatsapp_contacts",
        ]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        target: &Target,
        e: &Envelope,
    ) -> Result<(), ProjectionError> {
        conversation(conn, target, e).await
    }
}

async fn session(
    conn: &mut PgConnection,
    target: &Target,
    e: &Envelope,
) -> Result<(), ProjectionError> {
    let table = target.table("whatsapp_sessions");
    let (id, version, recorded) = (e.aggregate_id.as_str(), e.sequence as i64, e.recorded_at);
    match decode::<SessionEvent>(e)? {
        SessionEvent::Connected {
            tenant_id,
            transport,
            phone_number_id,
            business_account_id,
            display_phone_number,
            verified_name,
            credentials,
            verify_token_sha256,
            at,
        } => {
            // Connected again: new credentials, or another tenant after a disconnect.
            sqlx::query(&format!(
                "INSERT INTO {table} (id, tenant_id, transport, phone_number_id,
                        business_account_id, display_phone_number, verified_name, status,
                        credentials, verify_token_sha256, connected_at, updated_at, version)
                 VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, 'connected', $8, $9, $10, $11, $12)
                 ON CONFLICT (id) DO UPDATE SET
                    tenant_id = EXCLUDED.tenant_id,
                    transport = EXCLUDED.transport, phone_number_id = EXCLUDED.phone_number_id,
                    business_account_id = EXCLUDED.business_account_id,
                    display_phone_number = EXCLUDED.display_phone_number,
                    verified_name = EXCLUDED.verified_name, status = 'connected',
                    credentials = EXCLUDED.credentials,
                    verify_token_sha256 = EXCLUDED.verify_token_sha256,
                    connected_at = EXCLUDED.connected_at, disconnected_at = NULL,
                    updated_at = EXCLUDED.updated_at, version = EXCLUDED.version"
            ))
            .bind(id)
            .bind(tenant_id)
            .bind(transport.as_str())
            .bind(phone_number_id)
            .bind(business_account_id)
            .bind(display_phone_number)
            .bind(verified_name)
            .bind(credentials)
            .bind(verify_token_sha256)
            .bind(at)
            .bind(recorded)
            .bind(version)
            .execute(&mut *conn)
            .await?;
        }
        SessionEvent::Disconnected { at } => {
            sqlx::query(&format!(
                "UPDATE {table} SET status = 'disconnected', disconnected_at = $2,
                        updated_at = $3, version = $4
                  WHERE id = $1::uuid"
            ))
            .bind(id)
            .bind(at)
            .bind(recorded)
            .bind(version)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

async fn conversation(
    conn: &mut PgConnection,
    target: &Target,
    e: &Envelope,
) -> Result<(), ProjectionError> {
    let row = Row {
        conversations: target.table("whatsapp_conversations"),
        messages: target.table("whatsapp_messages"),
        contacts: target.table("whatsapp_contacts"),
        id: &e.aggregate_id,
        version: e.sequence as i64,
        recorded: e.recorded_at,
        message_rows: RowUpdate::new(target.table("whatsapp_messages"), e),
    };
    match decode::<ConversationEvent>(e)? {
        ConversationEvent::Started {
            tenant_id,
            session_id,
            wa_id,
            ..
        } => row.started(conn, &tenant_id, &session_id, &wa_id).await,
        received @ ConversationEvent::MessageReceived { .. } => row.received(conn, received).await,
        queued @ ConversationEvent::MessageQueued { .. } => row.queued(conn, queued).await,
        media @ (ConversationEvent::MediaStored { .. }
        | ConversationEvent::MediaFailed { .. }
        | ConversationEvent::StatusUpdated { .. }) => row.media_or_status(conn, media).await,
        // Every event is named, so a new one does not compile until it is given a home.
        sending @ (ConversationEvent::SendAttempted { .. }
        | ConversationEvent::SendAttemptFailed { .. }
        | ConversationEvent::MessageSent { .. }) => row.sending(conn, sending).await,
        change @ (ConversationEvent::MessageFailed { .. }
        | ConversationEvent::MessageRevised { .. }
        | ConversationEvent::ChangeNotDelivered { .. }) => {
            row.failed_or_revised(conn, change).await
        }
    }
}

/// Where one conversation event lands: its tables (live or rebuild), the conversation, and
/// the event's version and time.
struct Row<'a> {
    conversations: String,
    messages: String,
    contacts: String,
    id: &'a str,
    version: i64,
    recorded: chrono::DateTime<chrono::Utc>,
    /// Updates of one message row.
    message_rows: RowUpdate,
}

impl Row<'_> {
    /// The statement that updates one message with `set` (its own placeholders from `$4`).
    fn update(&self, set: &str) -> String {
        self.message_rows.sql(set)
    }

    /// `sql` (from [`Row::update`]) bound to `message_id`, the time and the version.
    fn message<'q>(&self, sql: &'q str, message_id: &str) -> RowQuery<'q> {
        self.message_rows.query(sql, message_id)
    }

    async fn started(
        &self,
        conn: &mut PgConnection,
        tenant_id: &str,
        session_id: &str,
        wa_id: &str,
    ) -> Result<(), ProjectionError> {
        sqlx::query(&format!(
            "INSERT INTO {} (id, tenant_id, session_id, wa_id, version)
             VALUES ($1::uuid, $2, $3::uuid, $4, $5)",
            self.conversations
        ))
        .bind(self.id)
        .bind(tenant_id)
        .bind(session_id)
        .bind(wa_id)
        .bind(self.version)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// A contact's message: the conversation's window and thread, the message, the contact.
    async fn received(
        &self,
        conn: &mut PgConnection,
        event: ConversationEvent,
    ) -> Result<(), ProjectionError> {
        let ConversationEvent::MessageReceived {
            message_id,
            wamid,
            profile_name,
            kind,
            content,
            text,
            sent_at,
            thread_id,
            at,
            ..
        } = event
        else {
            return Ok(());
        };
        let (conversations, contacts) = (&self.conversations, &self.contacts);
        sqlx::query(&format!(
            "UPDATE {conversations} SET thread_id = $2::uuid,
                    last_inbound_at = GREATEST(last_inbound_at, $3), version = $4
              WHERE id = $1::uuid"
        ))
        .bind(self.id)
        .bind(&thread_id)
        .bind(sent_at)
        .bind(self.version)
        .execute(&mut *conn)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO {} (id, conversation_id, tenant_id, session_id, wa_id,
                    direction, kind, text, content, wamid, thread_id, status, created_at,
                    updated_at, version)
             SELECT $1::uuid, c.id, c.tenant_id, c.session_id, c.wa_id, 'in', $2, $3, $4,
                    $5, $6::uuid, 'received', $7, $8, $9
               FROM {conversations} c WHERE c.id = $10::uuid
             ON CONFLICT (id) DO NOTHING",
            self.messages
        ))
        .bind(&message_id)
        .bind(kind)
        .bind(text)
        .bind(events::whatsapp::received_content(content))
        .bind(wamid)
        .bind(&thread_id)
        .bind(sent_at)
        .bind(self.recorded)
        .bind(self.version)
        .bind(self.id)
        .execute(&mut *conn)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO {contacts} (tenant_id, wa_id, phone, profile_name, first_seen_at,
                                     last_inbound_at, updated_at)
             SELECT c.tenant_id, c.wa_id, '+' || c.wa_id, $2, $3, $3, $4
               FROM {conversations} c
              -- An erased contact is no one's contact (their id reads `[erased]`).
              WHERE c.id = $1::uuid AND c.wa_id <> '{ERASED}'
             ON CONFLICT (tenant_id, wa_id) DO UPDATE SET
                -- The newest message's name wins, whatever order sessions are replayed in.
                profile_name = CASE
                    WHEN EXCLUDED.last_inbound_at >= {contacts}.last_inbound_at
                      OR {contacts}.last_inbound_at IS NULL
                    THEN COALESCE(EXCLUDED.profile_name, {contacts}.profile_name)
                    ELSE {contacts}.profile_name END,
                first_seen_at = LEAST({contacts}.first_seen_at, EXCLUDED.first_seen_at),
                last_inbound_at = GREATEST({contacts}.last_inbound_at, EXCLUDED.last_inbound_at),
                updated_at = EXCLUDED.updated_at"
        ))
        .bind(self.id)
        .bind(profile_name)
        .bind(sent_at)
        .bind(at)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// A reply queued for sending.
    async fn queued(
        &self,
        conn: &mut PgConnection,
        event: ConversationEvent,
    ) -> Result<(), ProjectionError> {
        let ConversationEvent::MessageQueued {
            message_id,
            author,
            content,
            thread_id,
            at,
        } = event
        else {
            return Ok(());
        };
        let text = outbound_text(&content);
        let kind = content.kind();
        let content = serde_json::to_value(&content).unwrap_or_default();
        sqlx::query(&format!(
            "INSERT INTO {} (id, conversation_id, tenant_id, session_id, wa_id,
                    direction, kind, text, content, thread_id, author_id, status,
                    next_attempt_at, created_at, updated_at, version)
             SELECT $1::uuid, c.id, c.tenant_id, c.session_id, c.wa_id, 'out', $2, $3, $4,
                    $5::uuid, $6, 'queued', $7, $7, $8, $9
               FROM {} c WHERE c.id = $10::uuid
             ON CONFLICT (id) DO NOTHING",
            self.messages, self.conversations
        ))
        .bind(&message_id)
        .bind(kind)
        .bind(text)
        .bind(content)
        .bind(thread_id)
        .bind(author.id)
        .bind(at)
        .bind(self.recorded)
        .bind(self.version)
        .bind(self.id)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// What became of sending a reply, or of changing it.
    async fn sending(
        &self,
        conn: &mut PgConnection,
        event: ConversationEvent,
    ) -> Result<(), ProjectionError> {
        match event {
            ConversationEvent::SendAttempted {
                message_id,
                attempt,
                at,
            } => {
                // Looked at again when the lease runs out: the sender died or lost the answer.
                let sql = self.update("status = 'attempting', attempts = $4, next_attempt_at = $5");
                let q = self.message(&sql, &message_id);
                run(conn, q.bind(attempt as i32).bind(at + attempt_lease())).await
            }
            ConversationEvent::SendAttemptFailed {
                message_id,
                code,
                reason,
                retry_at,
                ..
            } => {
                let sql = self.update(
                    "status = 'retrying', error_code = $4, error = $5, next_attempt_at = $6",
                );
                let q = self.message(&sql, &message_id);
                run(conn, q.bind(code).bind(reason).bind(retry_at)).await
            }
            ConversationEvent::MessageSent {
                message_id,
                wamid,
                at,
                ..
            } => {
                // A status may have moved it on already (delivered before the acceptance was
                // recorded): only a message not yet further is marked sent.
                let sql = self.update(
                    "wamid = $4, sent_at = COALESCE(sent_at, $5), next_attempt_at = NULL,
                     error_code = NULL, error = NULL,
                     status = CASE WHEN status IN ('delivered', 'read') THEN status ELSE 'sent' END",
                );
                let q = self.message(&sql, &message_id);
                run(conn, q.bind(wamid).bind(at)).await
            }
            // Another group's: `conversation` sends it there.
            _ => Ok(()),
        }
    }

    /// A reply that failed, was revised, or whose change did not reach the contact.
    async fn failed_or_revised(
        &self,
        conn: &mut PgConnection,
        event: ConversationEvent,
    ) -> Result<(), ProjectionError> {
        match event {
            ConversationEvent::MessageFailed {
                message_id,
                code,
                reason,
                ..
            } => {
                // A reply the agent deleted keeps no text here either (as in the thread).
                let sql = self.update(
                    "status = 'failed', error_code = $4, error = $5, next_attempt_at = NULL,
                     text = CASE WHEN $4 = 'withdrawn' THEN NULL ELSE text END,
                     content = CASE WHEN $4 = 'withdrawn'
                         THEN jsonb_build_object('type', content->'type') ELSE content END",
                );
                run(
                    conn,
                    self.message(&sql, &message_id).bind(code).bind(reason),
                )
                .await
            }
            ConversationEvent::MessageRevised {
                message_id,
                content,
                ..
            } => {
                let text = outbound_text(&content);
                let content = serde_json::to_value(&content).unwrap_or_default();
                let sql = self.update("text = $4, content = $5");
                run(
                    conn,
                    self.message(&sql, &message_id).bind(text).bind(content),
                )
                .await
            }
            // The message stays as sent; the change that did not reach the contact shows as
            // its error, so the thread says it plainly.
            ConversationEvent::ChangeNotDelivered {
                message_id, change, ..
            } => {
                let (code, error) = not_delivered(&change);
                // Deleted by the agent: no text kept here either, though the contact has it.
                let sql = self.update(
                    "error_code = $4, error = $5,
                     text = CASE WHEN $4 = 'delete_not_delivered' THEN NULL ELSE text END,
                     content = CASE WHEN $4 = 'delete_not_delivered'
                         THEN jsonb_build_object('type', content->'type') ELSE content END",
                );
                run(conn, self.message(&sql, &message_id).bind(code).bind(error)).await
            }
            // Another group's: `conversation` sends it there.
            _ => Ok(()),
        }
    }

    /// A received file stored or not, or a status from WhatsApp.
    async fn media_or_status(
        &self,
        conn: &mut PgConnection,
        event: ConversationEvent,
    ) -> Result<(), ProjectionError> {
        match event {
            ConversationEvent::MediaStored {
                message_id,
                object_key,
                content_type,
                size_bytes,
                ..
            } => {
                let sql = self.update(
                    "media_status = 'stored', media_key = $4, media_type = $5, media_size = $6,
                     media_error = NULL, media_retryable = false",
                );
                let q = self.message(&sql, &message_id);
                run(
                    conn,
                    q.bind(object_key)
                        .bind(content_type)
                        .bind(size_bytes as i64),
                )
                .await
            }
            ConversationEvent::MediaFailed {
                message_id,
                reason,
                retryable,
            } => {
                let sql =
                    self.update("media_status = 'failed', media_error = $4, media_retryable = $5");
                run(
                    conn,
                    self.message(&sql, &message_id).bind(reason).bind(retryable),
                )
                .await
            }
            ConversationEvent::StatusUpdated {
                message_id,
                status,
                error_code,
                error_title,
                ..
            } => {
                let sql = self.update(
                    "status = $4, error_code = COALESCE($5, error_code), error = COALESCE($6, error)",
                );
                let q = self.message(&sql, &message_id);
                run(
                    conn,
                    q.bind(status.as_str()).bind(error_code).bind(error_title),
                )
                .await
            }
            // Another group's: `conversation` sends it there.
            _ => Ok(()),
        }
    }
}

/// The error code and text of a change to a reply that had already gone out.
pub fn not_delivered(change: &str) -> (String, String) {
    if change == "deleted" {
        (
            "delete_not_delivered".into(),
            "It was deleted after WhatsApp had taken it: the contact has it.".into(),
        )
    } else {
        (
            "edit_not_delivered".into(),
            "It was edited after WhatsApp had taken it: the contact has the original.".into(),
        )
    }
}

/// The WhatsApp context: sessions, conversations and contacts; the outbox of thread
/// replies, the re-fetch of files, and the sender of due messages.
pub struct Context;

impl crate::context::BoundedContext for Context {
    type Settings = Settings;

    fn projections(
        setup: &crate::context::Setup<'_>,
        _settings: &Settings,
    ) -> Vec<std::sync::Arc<dyn crate::projection::Projection>> {
        let mut all: Vec<std::sync::Arc<dyn crate::projection::Projection>> = vec![
            std::sync::Arc::new(WhatsAppSessionsProjection),
            std::sync::Arc::new(WhatsAppProjection),
        ];
        if let (Some(pool), Some(client)) =
            (&setup.pool, setup.command_client("whatsapp-media-refetch"))
        {
            all.push(std::sync::Arc::new(media::MediaRefetch::new(
                pool.clone(),
                client,
            )));
        }
        if let Some(client) = setup.command_client("whatsapp-outbox") {
            all.push(std::sync::Arc::new(outbox::WhatsAppOutbox::new(
                setup.pool.clone().zip(setup.keyring.clone()),
                client,
            )));
        }
        all
    }

    /// The sender of due messages (through the Cloud API or a bridge).
    fn workers(
        running: &crate::context::Running<'_>,
        settings: &Settings,
        tasks: &mut tokio::task::JoinSet<()>,
    ) {
        let sender = sender::Sender::new(
            running.pool.clone(),
            &running.config.command_api_url,
            running.keys(),
            sender::CloudApi {
                url: settings.whatsapp_api_url.clone(),
                version: settings.whatsapp_api_version.clone(),
            },
            running.config.sealing_key(running.secret),
            std::sync::Arc::new(events::clock::SystemClock),
        );
        // Bridge sessions' sends go to the bridge stream, made sure of in the background
        // (the bus may be down now): until it exists their sends fail and are retried.
        let sender = sender.with_bridge(sender::Bridge {
            js: running.js.clone(),
            prefix: settings.whatsapp_bridge_subject_prefix.clone(),
        });
        let (js, stream, prefix) = (
            running.js.clone(),
            settings.whatsapp_bridge_stream.clone(),
            settings.whatsapp_bridge_subject_prefix.clone(),
        );
        tasks.spawn(async move {
            let mut backoff = std::time::Duration::from_millis(200);
            while let Err(e) = sender::ensure_bridge_stream(&js, &stream, &prefix).await {
                tracing::warn!(error = %e, "no bridge stream yet: bridge sessions' sends are retried");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
            // Done: this task's work is over, but ending would end the projector.
            std::future::pending::<()>().await
        });
        tasks.spawn(async move { sender.run().await });
    }
}

/// Redacts what the WhatsApp read models hold of data subject `subject` of `tenant`, of kind
/// `kind`, in place (docs/privacy.md): a contact's conversations and messages keep their ids,
/// states and times, and their number, texts and messages read `[erased]`; their contact row
/// (number, profile name) goes. A rebuild gives the same by itself (the sealed fields open as
/// `[erased]`).
pub async fn redact_subject(
    conn: &mut PgConnection,
    subject: uuid::Uuid,
    tenant: &str,
    kind: &str,
) -> Result<(), ProjectionError> {
    if kind != "contact" {
        return Ok(());
    }
    let numbers: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT wa_id FROM whatsapp_conversations WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?;
    let theirs: Vec<String> = numbers
        .into_iter()
        .filter(|n| events::whatsapp::contact_subject(tenant, n) == Some(subject))
        .collect();
    if theirs.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "WITH messages AS (
             -- A template's name (an outbound template's text) is the tenant's.
             UPDATE whatsapp_messages SET wa_id = $3, content = to_jsonb($3::text),
                    text = CASE WHEN text IS NULL OR kind = 'template' THEN text ELSE $3 END
              WHERE tenant_id = $1 AND wa_id = ANY($2)),
         contacts AS (
             DELETE FROM whatsapp_contacts WHERE tenant_id = $1 AND wa_id = ANY($2))
         UPDATE whatsapp_conversations SET wa_id = $3
          WHERE tenant_id = $1 AND wa_id = ANY($2)",
    )
    .bind(tenant)
    .bind(&theirs)
    .bind(ERASED)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
