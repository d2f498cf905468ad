//! Outbound messages. With no provider configured, a message is captured in
//! `outbound_messages` (status `captured`) and shown by query-api's dev inbox: never sent
//! silently nowhere. Messages are keyed by the event that caused them, so a retried step
//! cannot send twice.

use sqlx::PgPool;

/// Captures an SMS to `recipient`; a second capture for the same cause changes nothing.
pub async fn capture_sms(
    pool: &PgPool,
    tenant: &str,
    recipient: &str,
    body: &str,
    causation_id: &str,
) -> Result<(), sqlx::Error> {
    capture(pool, "sms", tenant, recipient, body, causation_id).await
}

/// Captures an e-mail to `recipient`; a second capture for the same cause changes nothing.
pub async fn capture_email(
    pool: &PgPool,
    tenant: &str,
    recipient: &str,
    body: &str,
    causation_id: &str,
) -> Result<(), sqlx::Error> {
    capture(pool, "email", tenant, recipient, body, causation_id).await
}

async fn capture(
    pool: &PgPool,
    channel: &str,
    tenant: &str,
    recipient: &str,
    body: &str,
    causation_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO outbound_messages (id, tenant_id, channel, recipient, body, causation_id, status)
         VALUES ($1, $2, $3, $4, $5, $6, 'captured')
         ON CONFLICT (causation_id) DO NOTHING",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(tenant)
    .bind(channel)
    .bind(recipient)
    .bind(body)
    .bind(causation_id)
    .execute(pool)
    .await?;
    Ok(())
}
