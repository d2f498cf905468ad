//! The store's transform of staff e-mails (docs/privacy.md, "The existing store"): the login
//! e-mail an admin user's `Created` event holds, sealed for them (under their home tenant,
//! `platform` for a super admin) as the identity context now seals it; and the admin-user
//! snapshots that keep it take it as their event now holds it.

use events::identity::PLATFORM_TENANT;
use events::keyring::{KeyError, Keyring, Subject, SubjectKind};
use events::personal::ERASED;
use serde_json::Value;
use sqlx::PgPool;

use super::store::{in_clear, write_batch, TransformError, Transformed};

/// A stored `Created` event of an admin user.
#[derive(sqlx::FromRow)]
struct Row {
    global_position: i64,
    aggregate_id: String,
    payload: Value,
}

/// Seals the staff e-mails still in clear, `batch` events per transaction.
pub(super) async fn seal_staff(
    pool: &PgPool,
    keyring: &Keyring,
    batch: i64,
    done: &mut Transformed,
) -> Result<(), TransformError> {
    let mut after = 0_i64;
    loop {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT global_position, aggregate_id, payload FROM events
              WHERE aggregate_type = 'admin_user' AND event_type = 'Created'
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
            let created = &row.payload["Created"];
            let Some(email) = created["email"].as_str().and_then(|e| in_clear(Some(e))) else {
                continue;
            };
            let Ok(id) = uuid::Uuid::try_parse(&row.aggregate_id) else {
                continue;
            };
            let tenant = created["tenant_id"].as_str().unwrap_or(PLATFORM_TENANT);
            let subject = Subject {
                id,
                kind: SubjectKind::AdminUser,
                tenant_id: tenant,
            };
            let sealed = match keyring.seal(subject, email).await {
                Ok(sealed) => sealed,
                Err(KeyError::Erased) => {
                    done.erased += 1;
                    ERASED.to_owned()
                }
                Err(KeyError::OtherTenant) => {
                    done.refused += 1;
                    continue;
                }
                Err(e) => return Err(TransformError::Key(e)),
            };
            row.payload["Created"]["email"] = Value::String(sealed);
            positions.push(row.global_position);
            payloads.push(row.payload);
        }
        if !positions.is_empty() {
            done.events += write_batch(pool, &positions, &payloads).await?;
            tracing::info!(
                events = done.events,
                position = after,
                "sealing staff e-mails"
            );
        }
    }
    done.snapshots += sqlx::query(
        "UPDATE snapshots s SET payload = jsonb_set(s.payload, '{email}',
                                                    e.payload->'Created'->'email')
           FROM events e
          WHERE s.aggregate_type = 'admin_user' AND coalesce(s.payload->>'email', '') <> ''
            AND s.payload->>'email' NOT LIKE 'pii1.%' AND s.payload->>'email' <> '[erased]'
            AND e.aggregate_type = 'admin_user' AND e.aggregate_id = s.aggregate_id
            AND e.event_type = 'Created'
            AND (e.payload->'Created'->>'email' LIKE 'pii1.%'
                 OR e.payload->'Created'->>'email' = '[erased]')",
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(())
}
