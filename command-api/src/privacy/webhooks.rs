//! The store's transform of webhooks (docs/privacy.md, "The existing store"): what a
//! `Received` event kept of a provider's body about a person (a WhatsApp message or status,
//! a SignalWire callback) is sealed whole for them, as ingestion now seals it
//! ([`crate::webhooks::provider::WebhookProvider::data_subject`]); and the webhook
//! snapshots that keep it take the value their event now holds.

use events::keyring::{KeyError, Keyring, Subject, SubjectKind};
use events::personal::ERASED;
use events::webhooks::Provider;
use serde_json::Value;
use sqlx::PgPool;

use super::store::{write_batch, TransformError, Transformed};

/// A stored `Received` event kept in clear.
#[derive(sqlx::FromRow)]
struct Row {
    global_position: i64,
    payload: Value,
    tenant_id: String,
}

/// Seals the kept payloads about a person still in clear, `batch` events per transaction.
pub(super) async fn seal_webhooks(
    pool: &PgPool,
    keyring: &Keyring,
    batch: i64,
    done: &mut Transformed,
) -> Result<(), TransformError> {
    let mut after = 0_i64;
    loop {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT global_position, payload, metadata->>'tenant_id' AS tenant_id FROM events
              WHERE aggregate_type = 'webhook' AND event_type = 'Received'
                AND jsonb_typeof(payload->'Received'->'payload') = 'object'
                AND global_position > $1
              ORDER BY global_position
              LIMIT $2",
        )
        .bind(after)
        .bind(batch)
        .fetch_all(pool)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.global_position;
        let mut positions = Vec::new();
        let mut payloads = Vec::new();
        for mut row in rows {
            let kept = &mut row.payload["Received"];
            let Some(sealed) = sealed(pool, kept, &row.tenant_id, keyring, done).await? else {
                continue;
            };
            kept["payload"] = Value::String(sealed);
            positions.push(row.global_position);
            payloads.push(row.payload);
        }
        if !positions.is_empty() {
            done.events += write_batch(pool, &positions, &payloads).await?;
            tracing::info!(
                events = done.events,
                position = after,
                "sealing webhooks' personal payloads"
            );
        }
    }
    done.snapshots += seal_snapshots(pool).await?;
    Ok(())
}

/// The kept payload of `received` (a `Received` event's body) sealed for the person it is
/// about at `tenant`, or `[erased]`; `None` when it is about nobody (or its provider is not
/// one this version knows).
async fn sealed(
    pool: &PgPool,
    received: &Value,
    tenant: &str,
    keyring: &Keyring,
    done: &mut Transformed,
) -> Result<Option<String>, TransformError> {
    let provider: Option<Provider> = serde_json::from_value(received["provider"].clone()).ok();
    let Some(provider) = crate::Contexts::webhook_providers()
        .iter()
        .find(|p| Some(p.provider()) == provider)
    else {
        return Ok(None);
    };
    let payload = &received["payload"];
    let Some(subject) = provider.data_subject(pool, tenant, payload).await? else {
        return Ok(None);
    };
    let contact = Subject {
        id: subject,
        kind: SubjectKind::Contact,
        tenant_id: tenant,
    };
    match keyring.seal(contact, &payload.to_string()).await {
        Ok(sealed) => Ok(Some(sealed)),
        Err(KeyError::Erased) => {
            done.erased += 1;
            Ok(Some(ERASED.to_owned()))
        }
        Err(KeyError::OtherTenant) => {
            done.refused += 1;
            Ok(None)
        }
        Err(e) => Err(TransformError::Key(e)),
    }
}

/// Gives the webhook snapshots that keep a payload in clear which their `Received` event
/// no longer holds in clear the value it holds now; returns how many changed.
async fn seal_snapshots(pool: &PgPool) -> Result<u64, TransformError> {
    Ok(sqlx::query(
        "UPDATE snapshots s SET payload = jsonb_set(s.payload, '{received,payload}',
                                                    e.payload->'Received'->'payload')
           FROM events e
          WHERE s.aggregate_type = 'webhook'
            AND jsonb_typeof(s.payload->'received'->'payload') = 'object'
            AND e.aggregate_type = 'webhook' AND e.aggregate_id = s.aggregate_id
            AND e.sequence = 1
            AND jsonb_typeof(e.payload->'Received'->'payload') = 'string'",
    )
    .execute(pool)
    .await?
    .rows_affected())
}
