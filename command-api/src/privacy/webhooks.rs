//! The store's transform of webhooks (docs/privacy.md, "The existing store"): what a
//! `Received` event kept of a provider's body about a person (a WhatsApp message or status,
//! a SignalWire callback) is sealed whole for them, as ingestion now seals it
//! ([`crate::webhooks::provider::WebhookProvider::data_subject`]); and the webhook
//! snapshots that keep it take the value their event now holds.

use events::keyring::{Keyring, Subject, SubjectKind};
use events::webhooks::Provider;
use serde_json::Value;
use sqlx::PgPool;

use super::store::{
    adopt_sealed, in_clear, seal_text, write_changed, Pages, TransformError, Transformed,
};

/// Seals the kept payloads about a person still in clear, `batch` events per transaction.
pub(super) async fn seal_webhooks(
    pool: &PgPool,
    keyring: &Keyring,
    batch: i64,
    done: &mut Transformed,
) -> Result<(), TransformError> {
    let mut pages = Pages::new(pool, &["webhook"], &["Received"], batch);
    while let Some(rows) = pages.next().await? {
        let mut changed = Vec::new();
        for mut row in rows {
            let received = &row.payload["Received"];
            // Sealed whole, a kept payload is a string; in clear, an object.
            if !received["payload"].is_object() {
                continue;
            }
            let Some((sealed, digest)) =
                sealed(pool, received, &row.tenant_id, keyring, done).await?
            else {
                continue;
            };
            row.payload["Received"]["payload"] = Value::String(sealed);
            if let Some(digest) = digest {
                row.payload["Received"]["body_sha256"] = Value::String(digest);
            }
            changed.push(row);
        }
        write_changed(pool, changed, done, "webhooks' personal payloads").await?;
    }
    // A webhook's snapshot keeps its payload as the state does.
    done.snapshots += adopt_sealed(
        pool,
        "webhook",
        &["received", "payload"],
        "Received",
        &["Received", "payload"],
    )
    .await?;
    Ok(())
}

/// The kept payload of `received` (a `Received` event's body) sealed for the person it is
/// about at `tenant`, or `[erased]`, with the body's digest sealed likewise (a guess of the
/// body's personal values could be checked against it); `None` when it is about nobody (or
/// its provider is not one this version knows).
async fn sealed(
    pool: &PgPool,
    received: &Value,
    tenant: &str,
    keyring: &Keyring,
    done: &mut Transformed,
) -> Result<Option<(String, Option<String>)>, TransformError> {
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
    let Some(sealed) = seal_text(keyring, contact, &payload.to_string(), done).await? else {
        return Ok(None);
    };
    let digest = match received["body_sha256"]
        .as_str()
        .and_then(|d| in_clear(Some(d)))
    {
        Some(digest) => seal_text(keyring, contact, digest, done).await?,
        None => None,
    };
    Ok(Some((sealed, digest)))
}
